"""Peak memory of the student's training, the teacher's forward and the
distiller's training (each phase of its balancer), on CPU each in a forked
child with its own RSS high-water mark, on GPU with the allocator's peak."""
import ctypes
import gc
import json
import os
import traceback
import warnings

import torch

from .common.bench import DistillerBench, StudentBench
from .common.configs import build_cfgs
from .common.data import make_batches


class CPUMeter:
    """Peak RSS increase of this process (VmHWM reset via clear_refs)."""

    def __init__(self):
        self.resettable = True

    @staticmethod
    def _status(key):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        """A new high-water mark from now on; the base stays."""
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
        except OSError:
            self.resettable = False  # VmHWM then bounds from above

    def start(self):
        self.reset_peak()
        self.base = self._status('VmRSS')

    def peak(self) -> float:
        return float(self._status('VmHWM') - self.base)


class CUDAMeter:

    def __init__(self, device):
        self.device = device
        self.resettable = True

    def reset_peak(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def start(self):
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        self.reset_peak()
        self.base = torch.cuda.memory_allocated(self.device)

    def peak(self) -> float:
        torch.cuda.synchronize(self.device)
        return float(torch.cuda.max_memory_allocated(self.device) -
                     self.base)


def _nbytes(module) -> int:
    return sum(t.numel() * t.element_size()
               for t in list(module.parameters()) + list(module.buffers()))


def _distill_peaks(bench: DistillerBench, batches, steps, meter) -> dict:
    """Peaks over the phases in a run's order: calibration steps, one
    gradient-share step, steady steps; ``peak`` is the largest."""
    out = {}
    for phase, n in (('calibration', steps), ('share', 1),
                     ('steady', steps)):
        if phase not in bench.phases():
            continue
        meter.reset_peak()
        for i in range(n):
            bench.set_phase(phase)
            bench.step(batches[i % len(batches)])
        out[phase] = meter.peak()
    out['peak'] = max(out.values())
    return out


def measure_memory(name, mode, dcfg, batches, device, amp, steps, meter):
    """Peak memory increase (bytes) of one mode (see benchmarks/README)."""
    meter.start()
    if mode == 'student':
        bench = StudentBench(name, dcfg['student'], device, amp)
        for i in range(steps):
            bench.step(batches[i % len(batches)])
        return dict(peak=meter.peak())
    bench = DistillerBench(name, dcfg, device, amp)
    if mode == 'distill':
        return _distill_peaks(bench, batches, steps, meter)
    # teacher: weights + activations of the early-stopped no-grad forward
    weights = _nbytes(bench.distiller.teacher)
    meter.start()
    for i in range(steps):
        bench.teacher_fwd(batches[i % len(batches)])
    act = meter.peak()
    return dict(peak=weights + act, weights=float(weights), act=act)


def memory_per_mode(name, dcfg, batches, device, amp, steps,
                    mmap_threshold: int = 65536) -> dict:
    out = {}
    for mode in ('student', 'teacher', 'distill'):
        if device.type == 'cuda':
            out[mode] = measure_memory(name, mode, dcfg, batches, device,
                                       amp, steps, CUDAMeter(device))
            gc.collect()
            torch.cuda.empty_cache()
        else:
            out[mode] = _in_child(lambda: measure_memory(
                name, mode, dcfg, batches, device, amp, steps, CPUMeter()),
                mmap_threshold)
    return out


def _in_child(fn, mmap_threshold: int = 0) -> dict:
    """Run ``fn`` in a forked child with one thread; return its dict."""
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            torch.set_num_threads(1)
            if mmap_threshold:
                # a fixed threshold (glibc's default one adapts upwards)
                # returns freed tensors to the OS at once, so that VmHWM
                # follows the live tensors, not the heap's fragmentation
                ctypes.CDLL('libc.so.6').mallopt(-3, mmap_threshold)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                res = fn()
        except BaseException:  # report, never return into the parent code
            res = dict(error=traceback.format_exc())
            code = 1
        with os.fdopen(w, 'w') as f:
            json.dump(res, f)
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    res = json.loads(text) if text else dict(error='child died')
    if 'error' in res:
        raise RuntimeError(f'memory child failed:\n{res["error"]}')
    return res


def warm_up_runtime(name, devkit, device, cfg_of) -> None:
    """One step of every mode on a tiny version of the model (64 px,
    narrow), in this process: the lazy imports and one-time library set-up
    (oneDNN, the optimizer's first step: tens of MiB) then happen here, not
    in the memory children, which inherit them. ``cfg_of`` maps the recipe
    distiller config to the one measured."""
    dcfg, ds_cfg, pre_cfg, _, _ = build_cfgs(name, 64, True)
    dcfg = cfg_of(dcfg)
    batches = make_batches(name, ds_cfg, pre_cfg, devkit, 64, 2, 1, device)
    bench = DistillerBench(name, dcfg, device, False)
    StudentBench(name, dcfg['student'], device, False).step(batches[0])
    bench.teacher_fwd(batches[0])
    for phase in bench.phases():
        bench.set_phase(phase)
        bench.step(batches[0])
    del bench, batches
    gc.collect()


def memory_model(prep, args, device) -> None:
    prep['res']['memory'] = memory_per_mode(
        prep['name'], prep['dcfg'], prep['batches'], device, args.amp,
        args.mem_steps, 0 if args.malloc_default else 65536)

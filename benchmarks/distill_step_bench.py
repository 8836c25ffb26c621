"""Benchmark one LONDON distillation train step against its parts.

Times, side by side and interleaved, (a) the plain student's train step,
(b) the teacher's early-stopped no-grad forward and (c) the distiller's
train step, plus the distillation terms and the Lipschitz term alone, for
RetinaNet, Faster R-CNN and DeepLabV3+ (the recipes of ``configs/``, random
init), and prints ``overhead = t_distill / (t_student + t_teacher)``,
``memory = peak_distill / (peak_student + teacher_weights_and_activations)``
and a batch / image-size sweep of the terms' share of the step.
``benchmarks/README.md`` defines every mode and ratio and keeps the measured
tables.

Usage (with mmlckd installed, or ``PYTHONPATH=.`` from the repository
root)::

    python benchmarks/distill_step_bench.py                  # CPU, minutes
    python benchmarks/distill_step_bench.py --quick          # seconds (CI)
    python benchmarks/distill_step_bench.py --clock cpu --threads 1
    python benchmarks/distill_step_bench.py --device cuda [--amp]
    python benchmarks/distill_step_bench.py --models retinanet --no-sweep \\
        --json out.json
"""
import argparse
import copy
import ctypes
import gc
import importlib
import json
import math
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import nullcontext
from typing import Callable, Dict, List, Tuple

import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import DATASETS, MODELS, init_default_scope

from mmlckd.testing import (make_synthetic_voc, narrow_model_cfg,
                            tiny_model_cfg)
from mmlckd.utils import load_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MiB = 1024.0**2

MODEL_SPECS = {
    'retinanet': dict(
        title='RetinaNet R50 -> R18',
        scope='mmdet',
        recipe='configs/london/'
        'london_retinanet_r101_r18_fpn_8xb2-1x_voc0712.py',
        # the recipe's teacher is R-101: the R-50 teacher of this benchmark
        teacher='mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py'),
    'faster_rcnn': dict(
        title='Faster R-CNN R101 -> R18',
        scope='mmdet',
        recipe='configs/london/'
        'london_faster-rcnn_r101_r18_fpn_8xb2-1x_voc0712.py',
        teacher=None),
    'deeplabv3plus': dict(
        title='DeepLabV3+ R101-D8 -> R18-D8',
        scope='mmseg',
        recipe='configs/london/london_deeplabv3plus_r101-d8_r18-d8_'
        '4xb4-40k_voc12aug-512x512.py',
        teacher=None),
}
DATASET_TYPES = ('VOCDataset', 'PascalVOCDataset')


# --------------------------------------------------------------- configs
def build_cfgs(name: str, size: int, quick: bool):
    """(distiller cfg, dataset cfg, data preprocessor cfg, recipe used):
    the recipe's distiller built offline (:func:`tiny_model_cfg`: random
    init, BN, ``size`` x ``size`` segmentor input), narrow with
    ``--quick`` (same architectures and depths)."""
    spec = MODEL_SPECS[name]
    recipe = osp.join(ROOT, spec['recipe'])
    cfg = load_config(recipe)
    dcfg = copy.deepcopy(cfg.model)
    if spec['teacher']:
        dcfg['teacher']['config'] = spec['teacher']
    tiny_model_cfg(dcfg, size_hw=(size, size))
    dcfg['probe_input_size'] = (64, 64) if quick else (128, 128)
    if quick:
        narrow_model_cfg(dcfg['student'], base=8, width=16)
        narrow_model_cfg(dcfg['teacher']['config']['model'], base=16,
                         width=16)
    source = spec['recipe'] + (
        f' (teacher: {spec["teacher"]})' if spec['teacher'] else '')
    dataset = _find_dataset(cfg.train_dataloader.dataset)
    return dcfg, dataset, dcfg['student']['data_preprocessor'], source


def _find_dataset(cfg) -> dict:
    if cfg.get('type') in DATASET_TYPES:
        return copy.deepcopy(cfg)
    inner = cfg.get('dataset') or (cfg.get('datasets') or [None])[0]
    if inner is None:
        raise ValueError(f'no VOC dataset in {cfg}')
    return _find_dataset(inner)


# ------------------------------------------------------------------ data
def make_voc(root: str, num_images: int, img_size) -> str:
    """A synthetic VOCdevkit under ``root``; returns its path."""
    return make_synthetic_voc(
        root, num_trainval_07=num_images, num_test_07=0,
        num_trainval_12=num_images + 2, num_val_12=2, num_aug_extra_12=0,
        img_size=img_size, seed=0)['devkit']


def make_batches(name: str, dataset_cfg: dict, pre_cfg: dict, devkit: str,
                 size: int, batch: int, n_batches: int, device):
    """Preprocessed (inputs, data_samples) batches of size ``size``."""
    scope = MODEL_SPECS[name]['scope']
    init_default_scope(scope)
    ds = copy.deepcopy(dataset_cfg)
    ds.pop('_scope_', None)
    if scope == 'mmdet':
        ds['data_root'] = devkit + '/'
    else:
        ds['data_root'] = osp.join(devkit, 'VOC2012')
    pipeline = []
    for t in ds['pipeline']:
        t = dict(t)
        if t['type'] in ('Resize', 'RandomResize'):
            t = dict(type='Resize', scale=(size, size), keep_ratio=False)
        elif t['type'] == 'RandomCrop':
            t['crop_size'] = (size, size)
        elif t['type'] == 'Pad' and 'size' in t:
            t['size'] = (size, size)
        pipeline.append(t)
    ds['pipeline'] = pipeline
    dataset = DATASETS.build(ds)
    pre = copy.deepcopy(dict(pre_cfg))
    if 'size' in pre:
        pre['size'] = (size, size)
    preprocessor = MODELS.build(pre).to(device)
    batches = []
    for b in range(n_batches):
        items = [dataset[(b * batch + i) % len(dataset)]
                 for i in range(batch)]
        data = preprocessor(pseudo_collate(items), True)
        batches.append((data['inputs'], data['data_samples']))
    return batches


# ------------------------------------------------------------ the modes
class Bench:
    """Models, optimisers and the timed modes of one model."""

    def __init__(self, name: str, dcfg, device, amp: bool,
                 parts=('distiller', 'student')):
        self.name = name
        self.scope = MODEL_SPECS[name]['scope']
        self.device = torch.device(device)
        init_default_scope(self.scope)
        self.distiller = self.student = None
        if 'distiller' in parts:
            self.distiller = MODELS.build(copy.deepcopy(dcfg))
            self.distiller.to(self.device).train()
            self.opt_d = make_sgd(self.distiller)
        if 'student' in parts:
            self.student = MODELS.build(copy.deepcopy(dcfg['student']))
            if self.distiller is not None:  # same initial weights
                self.student.load_state_dict(
                    self.distiller.student.state_dict())
            self.student.to(self.device).train()
            self.opt_s = make_sgd(self.student)
        self.amp = amp
        dtype = torch.float16 if self.device.type == 'cuda' \
            else torch.bfloat16
        self.autocast = (lambda: torch.autocast(self.device.type,
                                                dtype=dtype)) \
            if amp else nullcontext
        self.scaler = torch.amp.GradScaler('cuda') \
            if amp and self.device.type == 'cuda' else None

    # train step shared by the student and the distiller
    def _train_step(self, model, opt, batch):
        inputs, samples = batch
        with self.autocast():
            losses = model(inputs, samples, mode='loss')
        loss, _ = model.parse_losses(losses)
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            opt.step()

    def student_step(self, batch):
        self._train_step(self.student, self.opt_s, batch)

    def distill_step(self, batch):
        self._train_step(self.distiller, self.opt_d, batch)

    def teacher_fwd(self, batch):
        d = self.distiller
        with torch.no_grad(), self.autocast(), d.teacher_recorder:
            d.teacher(batch[0], batch[1], mode='tensor')
        d.teacher_recorder.clear()

    def _record(self, batch):
        """Both forwards (no grad, public ``record``): the student's
        features as detached leaves, the teacher's."""
        with torch.no_grad(), self.autocast():
            _, s_feats, t_feats = self.distiller.record(batch[0], batch[1])
        leaves = {k: [x.detach().requires_grad_() for x in v]
                  if isinstance(v, list) else v.detach().requires_grad_()
                  for k, v in s_feats.items()}
        return leaves, t_feats

    def prepare_terms(self, batch) -> Callable[[], None]:
        d = self.distiller
        s_feats, t_feats = self._record(batch)

        def run():
            with self.autocast():
                distill, _ = d.distill_terms(s_feats, t_feats, batch[1])
            sum(distill.values()).backward()

        return run

    def prepare_guard(self, batch) -> Callable[[], None]:
        d = self.distiller
        s_feats, t_feats = self._record(batch)
        with self.autocast():
            guard, d.nan_guard = d.nan_guard, False
            try:
                distill, _ = d.distill_terms(s_feats, t_feats, batch[1])
            finally:
                d.nan_guard = guard
        distill = {k: v.detach() for k, v in distill.items()}
        return lambda: d.check_finite(distill, s_feats, t_feats)

    def prepare_lipschitz(self, batch, cold: bool = False):
        d = self.distiller
        if d.lipschitz_loss is None:
            return None
        # leaves: the Lipschitz term alone (d.terms['lipschitz'] wires them);
        # _record's student features already are
        s_feats, t_feats = self._record(batch)
        raw = [s_feats[p.student.key] for p in d.pairs]
        t_list = [t_feats[p.teacher.key] for p in d.pairs]
        with torch.no_grad(), self.autocast():
            s_conn = d.connect(raw)
        conn = [s.detach().requires_grad_() for s in s_conn]
        if cold:
            d.lipschitz_loss.reset_state()

        def run():
            with self.autocast():
                total, _ = d.terms['lipschitz'](raw, t_list, connected=conn)
            if torch.is_tensor(total):
                total.backward()

        return run


def make_sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9,
                           weight_decay=1e-4)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device) -> Tuple[float, float]:
    """(wall s, process CPU s) of ``fn()``."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def run_interleaved(modes: Dict[str, Callable], batches, warmup: int,
                    steps: int, device) -> Dict[str, Dict[str, list]]:
    """Each mode maps a batch to a callable to time (its preparation, if
    any, is done inside the mode function, outside the timer)."""
    names = list(modes)
    res = {m: {'wall': [], 'cpu': []} for m in names}
    for r in range(warmup + steps):
        batch = batches[r % len(batches)]
        order = names[r % len(names):] + names[:r % len(names)]
        for m in order:
            # the same random draws (samplers, dropout) for every mode of a
            # round: less variance between the modes of two-stage detectors
            torch.manual_seed(r)
            fn = modes[m](batch)
            w, c = timed(fn, device)
            if r >= warmup:
                res[m]['wall'].append(w)
                res[m]['cpu'].append(c)
            del fn
    return res


def med(xs):
    return statistics.median(xs) if xs else float('nan')


# ---------------------------------------------------------------- memory
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

    def start(self):
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
        except OSError:
            self.resettable = False  # VmHWM then bounds from above
        self.base = self._status('VmRSS')

    def peak(self) -> float:
        return float(self._status('VmHWM') - self.base)


class CUDAMeter:

    def __init__(self, device):
        self.device = device
        self.resettable = True

    def start(self):
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def peak(self) -> float:
        torch.cuda.synchronize(self.device)
        return float(torch.cuda.max_memory_allocated(self.device) -
                     self.base)


def _nbytes(module) -> int:
    return sum(t.numel() * t.element_size()
               for t in list(module.parameters()) + list(module.buffers()))


def measure_memory(name, mode, dcfg, batches, device, amp, steps, meter):
    """Peak memory increase (bytes) of one mode (see module docstring)."""
    meter.start()
    if mode == 'student':
        bench = Bench(name, dcfg, device, amp, parts=('student', ))
        for i in range(steps):
            bench.student_step(batches[i % len(batches)])
        return dict(peak=meter.peak())
    bench = Bench(name, dcfg, device, amp, parts=('distiller', ))
    if mode == 'distill':
        for i in range(steps):
            bench.distill_step(batches[i % len(batches)])
        return dict(peak=meter.peak())
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


# --------------------------------------------------------- early stop
def teacher_stop_check(bench: Bench, batch) -> dict:
    """Leaf-module calls of the teacher: full forward vs mode (b)."""
    teacher = bench.distiller.teacher
    count = [0]

    def hook(*_):
        count[0] += 1

    leaves = [m for m in teacher.modules() if not list(m.children())]
    handles = [m.register_forward_pre_hook(hook) for m in leaves]
    try:
        with torch.no_grad(), bench.autocast():
            teacher(batch[0], batch[1], mode='tensor')
        full = count[0]
        count[0] = 0
        bench.teacher_fwd(batch)
        early = count[0]
    finally:
        for h in handles:
            h.remove()
    last = bench.distiller.teacher_recorder.specs[-1].key
    return dict(full_calls=full, early_calls=early, last_recorded=last)


def count_syncs(fn: Callable[[], None]) -> List[str]:
    """Host-device syncs of ``fn()`` on CUDA (``set_sync_debug_mode``): one
    ``file:line`` per synchronising call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [f'{osp.basename(w.filename)}:{w.lineno}' for w in caught
            if 'synchroniz' in str(w.message)]


def sync_report(bench: Bench, batch) -> dict:
    """Syncs per student step, distill step, and in the distillation terms
    alone (forward + backward; the nan_guard one included)."""
    terms = bench.prepare_terms(batch)
    return dict(student=count_syncs(lambda: bench.student_step(batch)),
                distill=count_syncs(lambda: bench.distill_step(batch)),
                terms=count_syncs(terms))


def clone_cost(bench: Bench, batch) -> dict:
    """Profile one distiller step: time in aten::clone and the top ops."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU]
    if bench.device.type == 'cuda':
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts) as prof:
        bench.distill_step(batch)
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    clone = sum(e.cpu_time_total for e in ka if e.key == 'aten::clone')
    table = ka.table(sort_by='self_cpu_time_total', row_limit=15)
    return dict(clone_ms=clone / 1e3, total_ms=total / 1e3, table=table)


# ------------------------------------------------------------------ main
def env_info(device, threads) -> dict:
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or 'cpu'
        try:
            with open('/proc/cpuinfo') as f:
                for line in f:
                    if line.startswith('model name'):
                        name = line.split(':', 1)[1].strip()
                        break
        except OSError:
            pass
    return dict(device=str(device), device_name=name, threads=threads,
                cpus=os.cpu_count(), torch=torch.__version__,
                loadavg_start=list(os.getloadavg()))


def prepare_model(name, args, devkit, device) -> dict:
    """Configs and preprocessed batches of one model (no model built)."""
    # the model registries import their packages lazily, at the first
    # build: import them here, so that no memory child counts the import
    importlib.import_module(MODEL_SPECS[name]['scope'] + '.models')
    dcfg, ds_cfg, pre_cfg, source = build_cfgs(name, args.size, args.quick)
    batches = make_batches(name, ds_cfg, pre_cfg, devkit, args.size,
                           args.batch, args.n_batches, device)
    res = dict(model=name, title=MODEL_SPECS[name]['title'], config=source,
               size=args.size, batch=args.batch, warmup=args.warmup,
               steps=args.steps, amp=args.amp)
    return dict(name=name, dcfg=dcfg, batches=batches, res=res)


def warm_up_runtime(name, devkit, device) -> None:
    """One step of every mode on a tiny version of the model (64 px,
    narrow), in this process: the lazy imports and one-time library set-up
    (oneDNN, the optimizer's first step: tens of MiB) then happen here, not
    in the memory children, which inherit them."""
    dcfg, ds_cfg, pre_cfg, _ = build_cfgs(name, 64, True)
    batches = make_batches(name, ds_cfg, pre_cfg, devkit, 64, 2, 1, device)
    bench = Bench(name, dcfg, device, False)
    bench.student_step(batches[0])
    bench.teacher_fwd(batches[0])
    bench.distill_step(batches[0])
    del bench, batches
    gc.collect()


def memory_model(prep, args, device) -> None:
    prep['res']['memory'] = memory_per_mode(
        prep['name'], prep['dcfg'], prep['batches'], device, args.amp,
        args.mem_steps, 0 if args.malloc_default else 65536)


def bench_model(prep, args, device) -> dict:
    """The interleaved timings of one model (see the module docstring)."""
    name, dcfg, batches, res = (prep[k] for k in ('name', 'dcfg', 'batches',
                                                  'res'))
    bench = Bench(name, dcfg, device, args.amp)
    res['early_stop'] = teacher_stop_check(bench, batches[0])
    modes = {
        'student': lambda b: lambda: bench.student_step(b),
        'teacher': lambda b: lambda: bench.teacher_fwd(b),
        'distill': lambda b: lambda: bench.distill_step(b),
        'terms': bench.prepare_terms,
    }
    if bench.distiller.lipschitz_loss is not None:
        modes['lipschitz'] = bench.prepare_lipschitz
    if args.guard_ablation:
        def no_guard(b):
            def run():
                bench.distiller.nan_guard = False
                try:
                    bench.distill_step(b)
                finally:
                    bench.distiller.nan_guard = True
            return run
        modes['distill_noguard'] = no_guard
    times = run_interleaved(modes, batches, args.warmup, args.steps, device)
    res['times'] = {m: {c: med(v[c]) for c in ('wall', 'cpu')}
                    for m, v in times.items()}
    res['times_all'] = times
    # the nan_guard check alone (one prepared loss dict, repeated)
    guard = bench.prepare_guard(batches[0])
    g = [timed(guard, device) for _ in range(max(args.steps, 3))]
    res['times']['guard'] = {c: med([x[i] for x in g])
                             for i, c in enumerate(('wall', 'cpu'))}
    if args.profile:
        res['profile'] = clone_cost(bench, batches[0])
    if device.type == 'cuda':
        res['syncs'] = sync_report(bench, batches[0])
    bench = None  # free the models before the next one
    gc.collect()
    return res


def ratios(res, clock) -> dict:
    t = res['times']
    out = {}
    for c in ('wall', 'cpu'):
        out[f'overhead_{c}'] = t['distill'][c] / (t['student'][c] +
                                                   t['teacher'][c])
    out['overhead'] = out[f'overhead_{clock}']
    mem = res.get('memory')
    if mem:
        out['memory'] = mem['distill']['peak'] / (mem['student']['peak'] +
                                                  mem['teacher']['peak'])
    return out


def print_model(res, args, env):
    clock = args.clock
    t = res['times']
    r = res['ratios']
    es = res['early_stop']
    print(f"\n== {res['model']}: {res['title']} | image {res['size']}x"
          f"{res['size']}, batch {res['batch']}, {res['steps']} steps after "
          f"{res['warmup']} warm-up | {env['device_name']} | threads "
          f"{env['threads']}{' | amp' if res['amp'] else ''}")
    print(f"   config: {res['config']}")
    print(f"   teacher early stop: {es['early_calls']} of {es['full_calls']}"
          f" leaf-module calls of a full forward (stops after "
          f"{es['last_recorded']})"
          + ('' if es['early_calls'] < es['full_calls'] else
             '  << NOT STOPPED EARLY'))
    labels = [('student', '(a) student train step'),
              ('teacher', '(b) teacher fwd, no grad'),
              ('distill', '(c) distill train step'),
              ('distill_noguard', '    (c) with nan_guard off'),
              ('terms', '    distill terms fwd+bwd'),
              ('lipschitz', '    Lipschitz fwd+bwd'),
              ('guard', '    nan_guard check')]
    mem = res.get('memory', {})
    print(f"   {'mode':<28}{'wall ms':>10}{'cpu ms':>10}{'peak MiB':>11}")
    for key, label in labels:
        if key not in t:
            continue
        m = mem.get(key, {}).get('peak')
        m = f'{m / MiB:11.1f}' if m is not None else f"{'':>11}"
        print(f"   {label:<28}{t[key]['wall'] * 1e3:10.1f}"
              f"{t[key]['cpu'] * 1e3:10.1f}{m}")
    share = t['terms'][clock] / t['distill'][clock]
    print(f"   distill terms = {100 * share:.1f}% of the distill step "
          f"({clock})")
    print(f"   overhead = t_distill / (t_student + t_teacher) = "
          f"{r['overhead']:.3f}   [{clock}; wall {r['overhead_wall']:.3f}, "
          f"cpu {r['overhead_cpu']:.3f}]")
    if 'memory' in r:
        tm = mem['teacher']
        print(f"   memory = peak_distill / (peak_student + teacher_weights_"
              f"and_activations) = {r['memory']:.3f}   "
              f"[{mem['distill']['peak'] / MiB:.1f}"
              f" / ({mem['student']['peak'] / MiB:.1f} + "
              f"{tm['weights'] / MiB:.1f} + {tm['act'] / MiB:.1f}) MiB]")
    if 'syncs' in res:
        sy = res['syncs']
        where = ', '.join(sorted(set(sy['terms']))) or '-'
        print(f"   host-device syncs per step: student {len(sy['student'])}, "
              f"distill {len(sy['distill'])}; in the distillation terms "
              f"{len(sy['terms'])} ({where})")
    if 'profile' in res:
        p = res['profile']
        print(f"   profiled distill step: aten::clone {p['clone_ms']:.1f} ms"
              f" of {p['total_ms']:.1f} ms self CPU")
        if args.verbose:
            print(p['table'])


def sweep(args, devkit, device) -> dict:
    name = args.sweep_model
    rows = []
    dcfg = None
    bench = None
    for size in args.sizes:
        dcfg_s, ds_cfg, pre_cfg, _ = build_cfgs(name, size, args.quick)
        if bench is None:
            dcfg = dcfg_s
            bench = Bench(name, dcfg, device, args.amp,
                          parts=('distiller', ))
        for batch in args.batches:
            batches = make_batches(name, ds_cfg, pre_cfg, devkit, size, batch,
                                   1, device)
            try:
                # cold start: the first step after a reset of the vectors
                cold = bench.prepare_lipschitz(batches[0], cold=True)
                cold_t = timed(cold, device) if cold else (math.nan,
                                                           math.nan)
                modes = {'distill': lambda b: lambda: bench.distill_step(b),
                         'terms': bench.prepare_terms}
                if bench.distiller.lipschitz_loss is not None:
                    modes['lipschitz'] = bench.prepare_lipschitz
                times = run_interleaved(modes, batches, args.sweep_warmup,
                                        args.sweep_steps, device)
            except (RuntimeError, ValueError) as err:  # e.g. out of memory,
                # or batch 1 with BN over 1x1 maps (DeepLabV3+ image pool)
                print(f'   B={batch:<3d} {size:>4d}px  skipped: '
                      f'{str(err).splitlines()[0][:100]}', flush=True)
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
                continue
            t = {m: {c: med(v[c]) for c in ('wall', 'cpu')}
                 for m, v in times.items()}
            t['lipschitz_cold'] = dict(wall=cold_t[0], cpu=cold_t[1])
            rows.append(dict(batch=batch, size=size, times=t))
            c = args.clock
            d = t['distill'][c]
            print(f"   B={batch:<3d} {size:>4d}px  step {d * 1e3:9.1f} ms  "
                  f"terms {100 * t['terms'][c] / d:5.1f}%  Lipschitz warm "
                  f"{100 * t.get('lipschitz', {}).get(c, math.nan) / d:5.1f}%"
                  f"  cold {100 * t['lipschitz_cold'][c] / d:5.1f}%",
                  flush=True)
    bench = None
    gc.collect()
    return dict(model=name, rows=rows)


def print_sweep(sw, args):
    c = args.clock
    print(f"\n== scaling sweep: {MODEL_SPECS[sw['model']]['title']}, "
          f"distill train step ({c} clock, medians of {args.sweep_steps} "
          f"after {args.sweep_warmup} warm-up)")
    head = (f"   {'batch':>5}{'size':>6}{'step ms':>10}{'terms ms':>10}"
            f"{'terms %':>9}{'Lip ms':>9}{'Lip %':>7}{'Lip cold ms':>12}"
            f"{'cold %':>8}")
    print(head)
    worst = dict(terms=(0, None), lip=(0, None), cold=(0, None))
    for row in sw['rows']:
        t = row['times']
        d = t['distill'][c]
        tt = t['terms'][c]
        lp = t.get('lipschitz', {}).get(c, math.nan)
        lc = t['lipschitz_cold'][c]
        print(f"   {row['batch']:>5}{row['size']:>6}{d * 1e3:10.1f}"
              f"{tt * 1e3:10.1f}{100 * tt / d:9.1f}{lp * 1e3:9.1f}"
              f"{100 * lp / d:7.1f}{lc * 1e3:12.1f}{100 * lc / d:8.1f}")
        key = (row['batch'], row['size'])
        for k, v in (('terms', tt / d), ('lip', lp / d), ('cold', lc / d)):
            if not math.isnan(v) and v > worst[k][0]:
                worst[k] = (v, key)
    for k, label in (('terms', 'distill terms'),
                     ('lip', 'Lipschitz term (warm)'),
                     ('cold', 'Lipschitz term (cold first step)')):
        v, key = worst[k]
        if key is not None:
            print(f'   worst-case share of {label}: {100 * v:.1f}% '
                  f'(batch {key[0]}, {key[1]} px)')
    sw['worst'] = {k: dict(share=v, batch=key and key[0],
                           size=key and key[1])
                   for k, (v, key) in worst.items()}


def print_summary(out, args) -> None:
    print('\n== summary (' + args.clock + ' clock)')
    print(f"   {'model':<30}{'t_stu ms':>9}{'t_tea ms':>9}"
          f"{'t_dis ms':>9}{'overhead':>9}{'mem_stu':>9}{'mem_tea':>9}"
          f"{'mem_dis':>9}{'memory':>8}  (MiB)")
    for res in out['models']:
        t, r = res['times'], res['ratios']
        mem = res.get('memory')
        ms = (f"{mem['student']['peak'] / MiB:9.0f}"
              f"{mem['teacher']['peak'] / MiB:9.0f}"
              f"{mem['distill']['peak'] / MiB:9.0f}"
              f"{r['memory']:8.3f}") if mem else ''
        c = args.clock
        print(f"   {res['title']:<30}{t['student'][c] * 1e3:9.0f}"
              f"{t['teacher'][c] * 1e3:9.0f}{t['distill'][c] * 1e3:9.0f}"
              f"{r['overhead']:9.3f}{ms}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='CI mode: tiny widths, 64 px, 1 step, all paths')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--models', nargs='+', default=list(MODEL_SPECS),
                   choices=list(MODEL_SPECS))
    p.add_argument('--size', type=int, default=None,
                   help='image size of the main table (default: 320 on '
                   'CPU, 512 on GPU, 64 with --quick)')
    p.add_argument('--batch', type=int, default=None,
                   help='batch size of the main table (default 2)')
    p.add_argument('--steps', type=int, default=None,
                   help='timed rounds per model (default 5)')
    p.add_argument('--warmup', type=int, default=None,
                   help='untimed rounds first (default 2)')
    p.add_argument('--sizes', type=int, nargs='+', default=None,
                   help='sweep image sizes (default 128 256 384 512 on '
                   'CPU, 256 512 1024 on GPU)')
    p.add_argument('--batches', type=int, nargs='+', default=None,
                   help='sweep batch sizes (default 1 2 4 8)')
    p.add_argument('--sweep-model', default='retinanet',
                   choices=list(MODEL_SPECS))
    p.add_argument('--sweep-steps', type=int, default=None)
    p.add_argument('--sweep-warmup', type=int, default=None)
    p.add_argument('--no-sweep', action='store_true')
    p.add_argument('--sweep-only', action='store_true',
                   help='skip the per-model table')
    p.add_argument('--no-memory', action='store_true')
    p.add_argument('--malloc-default', action='store_true',
                   help="keep glibc's adaptive mmap threshold in the memory "
                   'children (RSS then includes heap fragmentation)')
    p.add_argument('--mem-steps', type=int, default=None,
                   help='steps per memory measurement (default 2)')
    p.add_argument('--n-batches', type=int, default=2,
                   help='distinct batches cycled in the main table')
    p.add_argument('--amp', action='store_true',
                   help='autocast (fp16 on GPU, bf16 on CPU) for student '
                   'and teacher; GradScaler on GPU')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (default: all usable cores; 1 '
                   'with --quick, whose tiny ops only lose with more)')
    p.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                   help='clock of the printed ratios and shares')
    p.add_argument('--guard-ablation', action='store_true',
                   help='also time the distill step with nan_guard off')
    p.add_argument('--profile', action='store_true',
                   help='profile one distill step per model (clone cost)')
    p.add_argument('--verbose', action='store_true')
    p.add_argument('--data-root', default=None,
                   help='where to generate the synthetic VOC (default: a '
                   'temporary folder, removed at the end)')
    p.add_argument('--json', default=None, help='save the results here')
    return _with_defaults(p.parse_args(argv))


def _with_defaults(args):
    """The defaults that depend on ``--device`` and ``--quick``."""
    gpu = args.device == 'cuda'
    defaults = dict(size=320, batch=2, steps=5, warmup=2,
                    sizes=[256, 512, 1024] if gpu else [128, 256, 384, 512],
                    batches=[1, 2, 4, 8], sweep_steps=3, sweep_warmup=1,
                    mem_steps=2)
    if gpu:
        defaults['size'] = 512
    if args.quick:
        defaults.update(size=64, batch=2, steps=1, warmup=1, sizes=[64],
                        batches=[1, 2], sweep_steps=1, sweep_warmup=0,
                        mem_steps=1)
        if args.n_batches == 2:
            args.n_batches = 1
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if gpu and args.clock == 'cpu':
        print('--clock cpu is meaningless on GPU: using the wall clock')
        args.clock = 'wall'
    return args


def run_all(args, devkit, device, env, out) -> None:
    """All data first, then every memory measurement (children forked from
    a process that has built no model yet, so that they all start from the
    same heap), then the timings; results are added to ``out``."""
    preps = [] if args.sweep_only else [
        prepare_model(name, args, devkit, device) for name in args.models]
    if preps and not args.no_memory:
        for name in args.models:
            warm_up_runtime(name, devkit, device)
        for prep in preps:
            memory_model(prep, args, device)
    for prep in preps:
        res = bench_model(prep, args, device)
        res['ratios'] = ratios(res, args.clock)
        out['models'].append(res)
        print_model(res, args, env)
        sys.stdout.flush()
    if preps:
        print_summary(out, args)
    if not args.no_sweep:
        print(f"\n== sweep {args.sweep_model} ...", flush=True)
        sw = sweep(args, devkit, device)
        print_sweep(sw, args)
        out['sweep'] = sw


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: CUDA is not available')
    threads = args.threads or (1 if args.quick else
                               len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    warnings.filterwarnings('ignore')
    env = env_info(device, threads)
    print(f"torch {env['torch']} | {env['device_name']} | threads {threads}"
          f" of {env['cpus']} CPUs | load average {env['loadavg_start']}"
          f" | clock {args.clock}", flush=True)
    n_img = max(args.batch * args.n_batches,
                max(args.batches) if not args.no_sweep else 0, 4)
    out = dict(env=env, args=vars(args), models=[])
    with tempfile.TemporaryDirectory(prefix='mmlckd_bench_') as tmp:
        devkit = make_voc(args.data_root or tmp, n_img, dict(
            min=64, max=96) if args.quick else dict(min=333, max=500))
        run_all(args, devkit, device, env, out)
    env['loadavg_end'] = list(os.getloadavg())
    print(f"\nload average at the end: {env['loadavg_end']}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1, default=str)
        print(f'results saved to {args.json}')
    return out


if __name__ == '__main__':
    main()

"""Clocks: one timed call, interleaved rounds of several modes, medians,
and the machine the numbers come from."""
import os
import platform
import statistics
import time
from typing import Callable, Dict, Tuple

import torch

CLOCKS = ('wall', 'cpu')


def sync(device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device) -> Tuple[float, float]:
    """(wall s, process CPU s) of ``fn()``."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def med(xs) -> float:
    return statistics.median(xs) if xs else float('nan')


def run_interleaved(modes: Dict[str, Callable], batches, warmup: int,
                    steps: int, device) -> Dict[str, Dict[str, list]]:
    """Every round runs each mode once, in an order rotated from round to
    round. A mode maps a batch to the callable to time; its preparation
    (outside the timer) happens in the mode function."""
    names = list(modes)
    res = {m: {c: [] for c in CLOCKS} for m in names}
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


def medians(times: Dict[str, Dict[str, list]]) -> Dict[str, Dict[str, float]]:
    """``mode -> clock -> median`` of :func:`run_interleaved`'s lists."""
    return {m: {c: med(v[c]) for c in CLOCKS} for m, v in times.items()}


def repeat_timed(fn: Callable[[], None], n: int, device) -> Dict[str, float]:
    """Medians of ``n`` timings of ``fn()``, per clock."""
    runs = [timed(fn, device) for _ in range(n)]
    return {c: med([r[i] for r in runs]) for i, c in enumerate(CLOCKS)}


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

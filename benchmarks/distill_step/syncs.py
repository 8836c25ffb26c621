"""Host-device syncs per step on CUDA, and a profile of one step."""
import os.path as osp
import warnings
from typing import Callable, List

import torch


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


def sync_report(bench, student, batch) -> dict:
    """Syncs of one student step, one distiller step of each phase, and of
    the distillation terms alone (forward + backward; the NaN guard's
    check included)."""
    out = dict(student=count_syncs(lambda: student.step(batch)))
    for phase in bench.phases():
        bench.set_phase(phase)
        out[phase] = count_syncs(lambda: bench.step(batch))
    out['terms'] = count_syncs(bench.prepare_terms(batch))
    return out


def clone_cost(bench, batch) -> dict:
    """Profile one steady distiller step: time in aten::clone and the top
    ops."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU]
    if bench.device.type == 'cuda':
        acts.append(ProfilerActivity.CUDA)
    bench.set_phase('steady')
    with profile(activities=acts) as prof:
        bench.step(batch)
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    clone = sum(e.cpu_time_total for e in ka if e.key == 'aten::clone')
    table = ka.table(sort_by='self_cpu_time_total', row_limit=15)
    return dict(clone_ms=clone / 1e3, total_ms=total / 1e3, table=table)

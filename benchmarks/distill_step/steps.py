"""The interleaved step timings of one family: for the default distiller
and for each of its terms alone (and the recipe's with ``--recipe``), the
student's train step (a), the teacher's forward as deep as that
distiller's recorded layers need (b) and the distiller's train step (c) in
each phase of its balancer, side by side; for the default also its parts
alone (terms, Lipschitz term, NaN guard)."""
import gc

import torch

from .common.bench import DistillerBench, StudentBench
from .common.clock import medians, repeat_timed, run_interleaved
from .common.configs import alone_cfg, task_aware_table
from .schedule import phase_counts
from .syncs import clone_cost, sync_report


def teacher_stop_check(bench: DistillerBench, batch) -> dict:
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
    rec = bench.distiller.teacher_recorder
    skipped = [n for n, m in teacher.named_modules() if m in rec.skipped]
    return dict(full_calls=full, early_calls=early,
                last_recorded=rec.specs[-1].key, skipped=skipped)


def time_variant(bench: DistillerBench, student: StudentBench, batches,
                 args, device, total_iters: int, extra=None,
                 calibrate: bool = True) -> dict:
    """Calibrate (unless told not to: the phases then run with weights 0,
    which cost the same), then time (a), (b) and every phase of (c) (and
    the ``extra`` modes) interleaved; medians, phase counts, early stop."""
    calibration_steps = bench.calibrate(batches) if calibrate else 0
    modes = {'student': lambda b: lambda: student.step(b),
             'teacher': lambda b: lambda: bench.teacher_fwd(b)}
    for phase in bench.phases():
        modes[phase] = bench.phase_mode(phase)
    modes.update(extra or {})
    times = run_interleaved(modes, batches, args.warmup, args.steps, device)
    return dict(times=medians(times), times_all=times,
                terms=list(bench.distiller.terms),
                early_stop=teacher_stop_check(bench, batches[0]),
                calibration_steps=calibration_steps,
                counts=phase_counts(total_iters, bench.balancer))


def _default_extras(bench: DistillerBench, args) -> dict:
    extra = {'terms': bench.prepare_terms,
             'teacher_skip': lambda b: lambda: bench.teacher_fwd(b, True)}
    if bench.distiller.lipschitz_loss is not None:
        extra['lipschitz'] = bench.prepare_lipschitz
    if args.guard_ablation:
        extra['distill_noguard'] = bench.no_guard_mode()
    return extra


def bench_model(prep, args, device) -> dict:
    """Every variant of one family, one after the other (one distiller in
    memory at a time, each timed side by side with the same student)."""
    name, batches, res = prep['name'], prep['batches'], prep['res']
    total = prep['schedule']['iters']
    bench = DistillerBench(name, prep['dcfg'], device, args.amp)
    student = StudentBench(name, prep['dcfg']['student'], device, args.amp,
                           init_from=bench.distiller.student)
    default = time_variant(bench, student, batches, args, device, total,
                           _default_extras(bench, args))
    # the NaN guard's check alone (one prepared loss dict, repeated)
    default['times']['guard'] = repeat_timed(
        bench.prepare_guard(batches[0]), max(args.steps, 3), device)
    if args.profile:
        res['profile'] = clone_cost(bench, batches[0])
    if device.type == 'cuda':
        res['syncs'] = sync_report(bench, student, batches[0])
    res['variants'] = {'default': default}
    b = bench.balancer
    res['schedule']['balance'] = 'none' if b is None else \
        f'{b.iters}, {b.log_interval}'
    bench = None  # free the models before the next variant
    gc.collect()
    others = {} if args.no_alone else {
        f'alone:{t}': alone_cfg(prep['dcfg'], t, task_aware_table())
        for t in default['terms']}
    if args.recipe:
        others['recipe'] = prep['recipe_dcfg']
    for key, dcfg in others.items():
        print(f'   ... {key}', flush=True)
        bench = DistillerBench(name, dcfg, device, args.amp)
        # --quick: only the default trains through its calibration (the
        # others' phases are set directly; 10 steps each would be most of
        # the CI run)
        res['variants'][key] = time_variant(bench, student, batches, args,
                                            device, total,
                                            calibrate=not args.quick)
        bench = None
        gc.collect()
    res['times'] = default['times']
    res['early_stop'] = default['early_stop']
    return res

"""Learning curves: how far a schedule is from convergence.

``python -m demo.curve`` trains a role (``student`` alone or ``teacher``)
of a task at several schedule lengths on one data seed, validates every
20% of each schedule with the task's real metric, and writes the curves
(``curve.json``, ``curve.md``, ``curve_<task>.png``) to its work dir. A
schedule of ``L`` iterations is *converged* when its last 20% change the
metric by less than ``--tolerance`` points (default 1) in every one of
its ``--seeds`` (one student seed cannot show that a schedule is stable):
the demo and the study use the shortest converged length of the grid, for
the teachers too.

Runs are resumable: a finished run keeps ``curve_run.json`` in its folder
and is not retrained.
"""
import argparse
import json
import os
import os.path as osp
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Dict, List

from mmengine.hooks import Hook

from mmlckd.checkpoint import atomic_write

__all__ = ['ValCurveHook', 'with_validation', 'converged_length', 'main']


class ValCurveHook(Hook):
    """Keeps ``(iteration, metrics)`` of every validation."""

    def __init__(self):
        self.points: List[dict] = []

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.points.append(dict(iter=runner.iter, metrics={
            k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float))}))


def with_validation(cfg, iters: int, points: int = 5):
    """Validate on the test split every ``iters / points`` iterations."""
    cfg.val_dataloader = dict(cfg.test_dataloader)
    cfg.val_evaluator = cfg.test_evaluator
    cfg.val_cfg = dict(type='ValLoop')
    cfg.train_cfg.val_interval = max(1, iters // points)
    return cfg


def _run(task_name: str, role: str, iters: int, data_root: str,
         work_dir: str, seed: int, label_fraction: float = 1.0) -> dict:
    import torch
    torch.set_num_threads(1)
    from mmlckd.testing import single_process_loaders
    from .runner import build_cfg, train_and_test
    from .tasks import TASKS
    path = osp.join(work_dir, 'curve_run.json')
    if osp.isfile(path):
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    task = TASKS[task_name]
    cfg = build_cfg(task, role, seed=seed, iters=iters, work_dir=work_dir,
                    data_root=data_root, log_interval=50)
    single_process_loaders(cfg)
    if role == 'student':
        from .study import _subset_train_data
        cfg.train_dataloader.batch_size = 4  # the study's student batch
        _subset_train_data(cfg, label_fraction, cfg.data_root)
    with_validation(cfg, iters)
    hook = ValCurveHook()
    out = train_and_test(cfg, extra_hooks=[hook])
    scale = task.metric_scale
    out.update(task=task_name, role=role, iters=iters, seed=seed,
               label_fraction=label_fraction, curve=[
        dict(iter=p['iter'], metric=p['metrics'][task.metric_key] * scale)
        for p in hook.points])
    text = json.dumps(out, indent=1).encode()
    atomic_write(path, lambda f: f.write(text))
    return out


def last_change(run: dict) -> float:
    """How much the last 20% of ``run``'s schedule moved its metric."""
    pts = run['curve']
    return pts[-1]['metric'] - pts[-2]['metric'] if len(pts) >= 2 \
        else float('inf')


def converged_length(runs: List[dict], tolerance: float = 1.0):
    """The shortest schedule whose last 20% moved the metric by less than
    ``tolerance`` points in every run of that length (every student seed),
    or None."""
    by_iters = _by_iters(runs)
    for iters in sorted(by_iters):
        if all(abs(last_change(r)) < tolerance for r in by_iters[iters]):
            return iters
    return None


def _by_iters(runs: List[dict]) -> Dict[int, List[dict]]:
    """``{schedule length: its runs}`` (one a student seed)."""
    out: Dict[int, List[dict]] = {}
    for run in runs:
        out.setdefault(run['iters'], []).append(run)
    return out


def _spread(rs: List[dict]) -> str:
    """Final metric over the student seeds of one schedule: mean ± SE
    (n), and the lowest run."""
    from .study import paired
    last = [r['curve'][-1]['metric'] for r in rs]
    stats = paired(last)
    return (f'{stats["mean"]:.1f} ± {stats["se"]:.1f} (n={stats["n"]}), '
            f'lowest {min(last):.1f}')


def _markdown(runs: List[dict], tolerance: float) -> str:
    lines = []
    by_key: Dict[tuple, List[dict]] = {}
    for r in runs:
        by_key.setdefault((r['task'], r['role'], r.get(
            'label_fraction', 1.0)), []).append(r)
    for (task, role, fraction), rs in sorted(by_key.items()):
        labels = '' if fraction >= 1 else f', {fraction:.0%} of the labels'
        lines += [f'### {task} {role}{labels}', '',
                  '| schedule (iters) | seed | metric at 20/40/60/80/100% '
                  '| last 20% change | train time (s) |',
                  '|---|---|---|---|---|']
        for r in sorted(rs, key=lambda r: (r['iters'], r.get(
                'data_seed', -1), r.get('seed', 0))):
            m = [p['metric'] for p in r['curve']]
            seed = f' (data seed {r["data_seed"]})' if 'data_seed' in r \
                else ''
            lines.append(
                f'| {r["iters"]}{seed} | {r.get("seed", 0)} | '
                f'{" / ".join(f"{x:.1f}" for x in m)} | '
                f'{last_change(r):+.1f} | {r["train_time_s"]:.0f} |')
        selection = [r for r in rs if 'data_seed' not in r]
        spread = [f'{n}: {_spread(v)}' for n, v in
                  sorted(_by_iters(selection).items()) if len(v) > 1]
        if spread:
            lines += ['', 'Final metric over the student seeds: ' +
                      '; '.join(spread) + '.']
        length = converged_length(selection, tolerance)
        lines += ['', f'Converged (last 20% < {tolerance} point in every '
                  f'seed): {length if length else "none of these"}.', '']
    return '\n'.join(lines)


def _plot(runs: List[dict], path: str, task: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in sorted(runs, key=lambda r: (r['role'], r['iters'])):
        if r['task'] != task:
            continue
        ax.plot([p['iter'] for p in r['curve']],
                [p['metric'] for p in r['curve']], marker='o',
                ls='-' if r['role'] == 'student' else '--',
                label=f'{r["role"]}'
                f'{"" if r.get("label_fraction", 1) >= 1 else " 25% labels"}'
                f' {r["iters"]} iters'
                f'{" seed %d" % r["seed"] if r.get("seed") else ""}'
                f'{" (data seed %d)" % r["data_seed"] if "data_seed" in r else ""}')
    ax.set_xlabel('iteration')
    ax.set_ylabel('test metric (%)')
    ax.set_title(f'{task}: learning curves (SYNTHETIC data)')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m demo.curve',
                                description=__doc__.split('\n\n')[1])
    p.add_argument('--task', choices=['det', 'seg'], nargs='+',
                   default=['det', 'seg'])
    p.add_argument('--role', choices=['student', 'teacher'], nargs='+',
                   default=['student', 'teacher'])
    p.add_argument('--iters-det', type=int, nargs='+',
                   default=[500, 1000, 2000])
    p.add_argument('--iters-seg', type=int, nargs='+',
                   default=[400, 800, 1600])
    p.add_argument('--teacher-factor', type=float, default=1.0,
                   help='teacher schedules = this x the student grid')
    p.add_argument('--label-fraction', type=float, default=1.0,
                   help='students train on this share of the labelled '
                   'images (0.25: the scarce-label regime)')
    p.add_argument('--data-seed', type=int, default=1,
                   help='the selection data seed (default 1)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0],
                   help='student seeds: a schedule is converged when every '
                   'seed\'s last 20%% moved less than --tolerance')
    p.add_argument('--tolerance', type=float, default=1.0)
    p.add_argument('--jobs', type=int, default=os.cpu_count() or 1)
    p.add_argument('--work-dir', default=osp.join('work_dirs', 'curve'))
    p.add_argument('--report', action='store_true',
                   help='train nothing: tabulate and plot every finished '
                   'run under --work-dir (and the teachers of --study-dir)')
    p.add_argument('--study-dir', default=None,
                   help='a `python -m demo` work dir whose teachers\' '
                   'curves join the report')
    return p.parse_args(argv)


def collect(work_dir: str, study_dir=None) -> List[dict]:
    """Every finished curve run under ``work_dir``, and the teachers of
    the study in ``study_dir`` (they record their curve too)."""
    import glob
    runs = []
    for path in sorted(glob.glob(osp.join(work_dir, '**', 'curve_run.json'),
                                 recursive=True)):
        with open(path, encoding='utf-8') as f:
            runs.append(json.load(f))
    if study_dir:
        pattern = osp.join(study_dir, 'data*', '*-teacher', 'result.json')
        for path in sorted(glob.glob(pattern)):
            with open(path, encoding='utf-8') as f:
                r = json.load(f)
            if r.get('curve'):
                job = r['job']
                runs.append(dict(r, task=job['task'], role='teacher',
                                 iters=r['train_iters'],
                                 data_seed=job['data_seed']))
    return runs


def report(runs: List[dict], work_dir: str, tolerance: float) -> str:
    """``curve.md``, ``curve.json`` and one ``curve_<task>.png`` per
    task in ``work_dir``; returns the Markdown."""
    md = _markdown(runs, tolerance)
    for task in sorted({r['task'] for r in runs}):
        _plot(runs, osp.join(work_dir, f'curve_{task}.png'), task)
    with open(osp.join(work_dir, 'curve.md'), 'w', encoding='utf-8') as f:
        f.write(md)
    with open(osp.join(work_dir, 'curve.json'), 'w', encoding='utf-8') as f:
        json.dump(runs, f, indent=1)
    return md


def main(argv=None) -> List[dict]:
    from .__main__ import prepare_process_env
    prepare_process_env()
    args = parse_args(argv)
    work_dir = osp.abspath(args.work_dir)
    if args.report:
        md = report(collect(work_dir, args.study_dir), work_dir,
                    args.tolerance)
        print(md, flush=True)
        return []
    from mmlckd.testing import make_synthetic_voc
    from .tasks import DATA_FULL
    root = osp.join(work_dir, f'data-seed{args.data_seed}')
    make_synthetic_voc(root,
                       **dict(DATA_FULL, seed=args.data_seed))
    jobs = []
    for task in args.task:
        grid = args.iters_det if task == 'det' else args.iters_seg
        for role in args.role:
            scale = args.teacher_factor if role == 'teacher' else 1.0
            for iters in grid:
                n = int(round(iters * scale))
                frac = args.label_fraction if role == 'student' else 1.0
                sub = '' if frac >= 1 else f'-labels{frac:g}'
                for seed in args.seeds:
                    jobs.append((task, role, n, root, osp.join(
                        work_dir, f'data{args.data_seed}',
                        f'{task}-{role}{sub}',
                        f'iters{n}' + (f'-seed{seed}' if seed else '')),
                        seed, frac))
    # longest first: the pool ends together
    jobs.sort(key=lambda j: -j[2] * (3 if j[1] == 'teacher' else 1))
    ctx = get_context('spawn')
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        runs = list(pool.map(_run, *zip(*jobs)))
    for r in runs:
        print(f'[curve] {r["task"]} {r["role"]} {r["iters"]}: ' + ' '.join(
            f'{p["metric"]:.1f}' for p in r['curve']), flush=True)
    print(report(runs, work_dir, args.tolerance), flush=True)
    return runs


if __name__ == '__main__':
    main(sys.argv[1:])

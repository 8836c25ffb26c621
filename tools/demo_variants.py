"""Compare variants of the demo's LONDON student on one synthetic dataset.

    python tools/demo_variants.py --data-seed 1 --seeds 0 1 2 3
    python tools/demo_variants.py --variants default lip_only --seeds 0 1

Trains the demo teacher once (seed 0), then for every seed the baseline
student and one LONDON student per variant (same schedule and seed as
``tools/demo.py``), tests each with VOCMetric, and prints the paired gain
(variant - baseline, mean ± sample std over seeds). Every result is
appended to ``<work-dir>/variants.jsonl`` as it arrives; a rerun skips the
(variant, seed) pairs already there, so an interrupted run resumes.

Use a ``--data-seed`` other than the one you report the demo on: choosing
settings on the data you report on inflates the result.
"""
import argparse
import json
import os.path as osp
import statistics

from demo import prepare_process_env  # tools/demo.py, beside this file

#: name -> (OFD loss weight or None to keep / 0 to drop, DistillWeightHook
#: kwargs or None)
VARIANTS = {
    'default': (None, None),
    'ofd_1e-5': (1e-5, None),
    'decay': (None, dict(decay='linear')),
    'ofd_1e-5_decay': (1e-5, dict(decay='linear')),
    'connector_warmup': (None, dict(connector_warmup=100)),
    'connector_warmup_decay': (None, dict(connector_warmup=100,
                                          decay='linear')),
    'lip_only': (0, None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--variants', nargs='+', default=list(VARIANTS),
                   choices=list(VARIANTS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--data-seed', type=int, default=1)
    p.add_argument('--iters', type=int, default=None,
                   help='default: the demo schedule (--quick: 2)')
    p.add_argument('--quick', action='store_true',
                   help='tiny data and 2 iterations (a smoke run)')
    p.add_argument('--work-dir', default=osp.join('work_dirs',
                                                  'demo_variants'))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    prepare_process_env('cpu')
    import torch

    from mmlckd.datasets import make_synthetic_voc
    from mmlckd.demo.pipeline import default_cpu_threads
    from mmlckd.demo.runner import build_cfg, train_and_test
    from mmlckd.demo.tasks import DATA_FULL, DATA_QUICK, TASKS

    torch.set_num_threads(default_cpu_threads())
    task = TASKS['det']
    iters = args.iters or (task.quick_iters if args.quick else task.iters)
    work = osp.abspath(args.work_dir)
    data = osp.join(work, f'data-seed{args.data_seed}')
    make_synthetic_voc(data, **dict(DATA_QUICK if args.quick else DATA_FULL,
                                    seed=args.data_seed))
    log_path = osp.join(work, 'variants.jsonl')
    done = {}
    if osp.exists(log_path):
        with open(log_path) as f:
            for line in f:
                r = json.loads(line)
                if (r['data_seed'], r['iters']) == (args.data_seed, iters):
                    done[(r['name'], r['seed'])] = r['map']

    def run(name, role, seed, teacher_ckpt=None, tweak=None):
        if (name, seed) in done:
            return done[(name, seed)]
        cfg = build_cfg(task, role, seed=seed, iters=iters,
                        work_dir=osp.join(work, f'{name}_seed{seed}'),
                        data_root=data, teacher_ckpt=teacher_ckpt,
                        quick=args.quick)
        if tweak:
            tweak(cfg)
        out = train_and_test(cfg)
        rec = dict(name=name, seed=seed, data_seed=args.data_seed,
                   iters=iters, map=100 * out['metrics'][task.metric_key])
        with open(log_path, 'a') as f:
            f.write(json.dumps(rec) + '\n')
        print(f'[variants] {name} seed {seed}: mAP {rec["map"]:.2f}',
              flush=True)
        done[(name, seed)] = rec['map']
        return rec['map']

    run('teacher', 'teacher', 0)
    ckpt = osp.join(work, 'teacher_seed0', f'iter_{iters}.pth')
    for seed in args.seeds:
        run('student', 'student', seed)
        for name in args.variants:
            ofd, hook = VARIANTS[name]

            def tweak(cfg, ofd=ofd, hook=hook):
                if ofd == 0:
                    cfg.model.feature_loss = None
                elif ofd is not None:
                    cfg.model.feature_loss.loss_weight = ofd
                if hook:
                    cfg.custom_hooks.append(
                        dict(type='mmlckd.DistillWeightHook', **hook))

            run(name, 'london', seed, ckpt, tweak)

    summary = {}
    print(f'\nsynthetic VOC, data seed {args.data_seed}, {iters} iterations;'
          f' teacher mAP {done[("teacher", 0)]:.1f}')
    print('| variant | mAP@0.5 (%) | gain vs baseline (paired) | per seed |')
    print('|---|---|---|---|')
    for name in ['student'] + list(args.variants):
        vals = [done[(name, s)] for s in args.seeds]
        gains = [done[(name, s)] - done[('student', s)] for s in args.seeds]
        sd = statistics.stdev(gains) if len(gains) > 1 else float('nan')
        summary[name] = dict(map=statistics.mean(vals),
                             gain=statistics.mean(gains), gain_std=sd)
        gain_txt = '' if name == 'student' else \
            f'{summary[name]["gain"]:+.1f} ± {sd:.1f}'
        per_seed = '' if name == 'student' else \
            ', '.join(f'{g:+.1f}' for g in gains)
        print(f'| {name} | {summary[name]["map"]:.1f} | {gain_txt} | '
              f'{per_seed} |')
    return summary


if __name__ == '__main__':
    main()

"""Plot a distillation run of your own: the figure of the demo.

    python tools/plot_run.py work_dirs/distill_retina
    python tools/plot_run.py work_dirs/distill_retina \\
        --baseline work_dirs/retinanet_student --out run.png

Reads ``<work_dir>/lipschitz.jsonl`` (written by
``mmlckd.LipschitzMonitorHook``) and draws three panels: the per-block
Lipschitz estimates of teacher and student (``sigma_*.<group>.<i>``), each
term's share of the gradient norm on the student (``gshare_*``, measured
after the balancer's calibration) and the task loss, next to the one of a
plain student run (``--baseline``, a run with the same hook) when given.
"""
import argparse
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dir', help='the work dir of a distillation run')
    parser.add_argument('--baseline', help='the work dir of a plain run')
    parser.add_argument('--history', default='lipschitz.jsonl',
                        help='the JSONL file in each work dir '
                        '(default: %(default)s)')
    parser.add_argument('--out', help='the PNG to write '
                        '(default: <work_dir>/run.png)')
    parser.add_argument('--title', help='figure title (default: work dir)')
    args = parser.parse_args(argv)
    path = osp.join(args.work_dir, args.history)
    if not osp.isfile(path):
        raise SystemExit(
            f'error: {path!r} not found: train with '
            "custom_hooks=[dict(type='mmlckd.LipschitzMonitorHook')] (the "
            'project\'s distillation configs have it), or pass --history')
    if REPO not in sys.path:  # the figure code lives in demo/
        sys.path.insert(0, REPO)
    from demo.report import plot_run
    out = plot_run(args.out or osp.join(args.work_dir, 'run.png'),
                   args.title or osp.basename(osp.normpath(args.work_dir)),
                   args.work_dir, args.baseline, history=args.history)
    print(f'figure written to {out}')
    return out


if __name__ == '__main__':
    main()

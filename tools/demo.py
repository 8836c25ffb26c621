"""End-to-end LONDON demo on a synthetic PASCAL VOC (no downloads).

    python tools/demo.py                 # detection (~7.5 min, 2 idle cores)
    python tools/demo.py --task seg      # segmentation (or --seg)
    python tools/demo.py --task both
    python tools/demo.py --quick         # smoke run, < 1 min
    python tools/demo.py --iters 300 --seeds 0 --work-dir work_dirs/demo300

Generates the data (``<work-dir>/data``), trains a teacher (first seed), and
for every seed (default 0 1 2) a baseline student and a LONDON-distilled
student (mmlckd.LipschitzDistiller), all with the same schedule, through
mmengine's Runner (configs in ``configs/demo/``), tests every model with
mmdet's VOCMetric (mAP@0.5 on VOC2007 test) or mmseg's IoUMetric (mIoU on
VOC2012 val), prints a table and writes ``results.md``, ``results.json`` and
``<task>_training.png`` to the work dir. ``OMP_WAIT_POLICY=PASSIVE`` is set
unless given (see below); ``--device cpu`` hides CUDA devices.
"""
import os
import os.path as osp
import sys


def _device_from_argv(argv):
    for i, arg in enumerate(argv):
        if arg == '--device' and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith('--device='):
            return arg.split('=', 1)[1]
    return 'cpu'


def prepare_process_env(device: str = 'cpu') -> None:
    """Process settings that must precede ``import torch`` (so also
    ``import mmlckd``); shared with ``tools/demo_variants.py``."""
    # GNU OpenMP's default busy-waiting makes 2 torch threads on a 2-core
    # machine 5-15x slower as soon as any other process wants a core;
    # passive waiting costs little when the machine is idle.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    if device == 'cpu':
        # hide GPUs before torch initialises CUDA, so mmengine uses the CPU
        os.environ['CUDA_VISIBLE_DEVICES'] = ''
    repo = osp.abspath(osp.join(osp.dirname(__file__), '..'))
    if repo not in sys.path:
        sys.path.insert(0, repo)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    prepare_process_env(_device_from_argv(argv))
    from mmlckd.demo import parse_args, run
    return run(parse_args(argv))


if __name__ == '__main__':
    main()

"""End-to-end LONDON demo on a synthetic PASCAL VOC (no downloads).

    python tools/demo.py            # make demo: the headline regime
    python tools/demo.py --study    # every regime, data seeds 0 and 2
    python tools/demo.py --quick    # smoke run, about a minute

Generates the data, trains the teachers, then the students with and without
distillation (paired by seed), tests every model with mmdet's VOCMetric or
mmseg's IoUMetric and writes ``results.md``, ``results.json`` and one
training plot per regime to the work dir. See ``mmlckd/demo/pipeline.py``.
"""
import os
import os.path as osp
import sys


def prepare_process_env() -> None:
    """Process settings that must precede ``import torch`` (so also
    ``import mmlckd``); the pool's worker processes inherit them."""
    # GNU OpenMP's default busy-waiting makes 2 torch threads on a 2-core
    # machine 5-15x slower as soon as any other process wants a core;
    # passive waiting costs little when the machine is idle.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    # the demo is a CPU demo: hide GPUs before torch initialises CUDA
    os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
    repo = osp.abspath(osp.join(osp.dirname(__file__), '..'))
    if repo not in sys.path:
        sys.path.insert(0, repo)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    prepare_process_env()
    from mmlckd.demo import parse_args, run
    return run(parse_args(argv))


if __name__ == '__main__':
    main()

"""``python -m demo``: see :mod:`demo`."""
import os
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    prepare_process_env()
    from .pipeline import parse_args, run
    return run(parse_args(argv))


if __name__ == '__main__':
    main()

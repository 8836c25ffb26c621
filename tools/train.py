"""Train a detector, a segmentor, or a LONDON-distilled student.

Same arguments as MMDetection's / MMSegmentation's ``tools/train.py``::

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [PATH]]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

What it adds to theirs, config rewrites (each logged) and checks: the
README's "What tools/train.py adds to mmdet's and mmseg's train.py".
"""
import argparse
import errno
from typing import List, Optional

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

# any mmlckd import registers mmlckd's modules and the torch.load
# allow-list that --resume / the checkpoint checks need
from mmlckd.compat import dist_teardown, init_cpu_dist
from mmlckd.checkpoint import CheckpointError
from mmlckd.cli.args import load_tool_cfg, parse_with_launcher_args
from mmlckd.cli.data_checks import check_empty_ann_files
from mmlckd.cli.resume import resolve_resume, warn_resume_lr_override
from mmlckd.cli.run_checks import check_distill_setup, check_finished
from mmlckd.cli.train_cfg import (check_relative_paths, check_train_length,
                                  complete_train_cfg)
from mmlckd.cli.work_dir import own_work_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train (or distil) a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training (needs a GPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or (no value) from the latest '
        'checkpoint in the work directory')
    return parse_with_launcher_args(parser, argv)


def build_cfg(args, notes: Optional[List[str]] = None) -> Config:
    """The config of the run; ``notes`` (when given) gets one line per
    rewrite of the config beyond ``--amp``/``--auto-scale-lr``/``--resume``
    (:func:`mmlckd.cli.train_cfg.complete_train_cfg`)."""
    cfg = load_tool_cfg(args)
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(
                '--amp needs a CUDA GPU (mmengine\'s AmpOptimWrapper); '
                'drop --amp on this machine.')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise SystemExit('--auto-scale-lr: the config has no '
                             'auto_scale_lr.base_batch_size')
    check_train_length(cfg)
    check_relative_paths(cfg, args.config)
    resolve_resume(cfg, args.resume)
    check_empty_ann_files(cfg)
    rewrites = complete_train_cfg(cfg)
    if notes is not None:
        notes += [f'tools/train.py: {n}' for n in rewrites]
    return cfg


def main(argv=None):
    args = parse_args(argv)
    rewrites: List[str] = []
    cfg = build_cfg(args, rewrites)
    init_cpu_dist(args.launcher)
    resume = bool(args.resume or cfg.get('resume', False))
    with dist_teardown(), own_work_dir(cfg, resume, args.config) as notes:
        try:
            if 'runner_type' not in cfg:
                runner = Runner.from_cfg(cfg)
            else:
                runner = RUNNERS.build(cfg)
            for note in rewrites:  # into the work dir's log too
                runner.logger.info(note)
            for note in notes:
                runner.logger.warning(note)
            warn_resume_lr_override(runner, args)
            check_distill_setup(runner)
            runner.train()
        except CheckpointError as e:  # a checkpoint that cannot be used
            raise SystemExit(f'error: {e}') from None
        except OSError as e:  # a full disk (a checkpoint, the config dump)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise SystemExit(f'error: {e.strerror}' if 'no space left on '
                             'device' in str(e.strerror) else
                             f'error: no space left on device in the work '
                             f'dir {cfg.work_dir} ({e}). Free space on that '
                             'disk, or pass --work-dir on another disk; '
                             'checkpoints already written are intact '
                             '(--resume continues).') from None
        check_finished(runner)
    return runner


if __name__ == '__main__':
    main()

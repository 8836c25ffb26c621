"""Train a detector, a segmentor, or a LONDON-distilled student.

Same arguments as MMDetection's / MMSegmentation's ``tools/train.py``::

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [PATH]]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

Differences: ``import mmlckd`` (registry, torch>=2.6 resume fix), gloo DDP on
machines without CUDA, distillation runs always export the student
(``<work_dir>/student_final.pth``) at the end, checkpoints are written by
``mmlckd.SafeCheckpointHook`` (atomic, SHA-256 sidecars), ``--resume``
with nothing to resume is an error, a work dir belongs to one run at a time
(a lock naming the other run's pid and host), a fresh run moves an earlier
run's checkpoints, config and history aside together
(``<work_dir>/previous_runs/<time>/``), and a run that ends with weights it
could not save exits non-zero.
"""
import argparse
import errno

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

# any mmlckd import registers mmlckd's modules and the torch.load
# allow-list that --resume / the checkpoint checks need
from mmlckd.compat import (adapt_cfg_for_cpu_dist, dist_teardown,
                           init_cpu_dist)
from mmlckd.checkpoint import CheckpointError
from mmlckd.utils.cli import (check_distill_setup, check_empty_ann_files,
                              check_finished, load_tool_cfg,
                              own_work_dir, parse_with_launcher_args,
                              prepare_distill_cfg, resolve_resume,
                              use_safe_checkpoints, warn_resume_lr_override)


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


def build_cfg(args) -> Config:
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
    resolve_resume(cfg, args.resume)
    check_empty_ann_files(cfg)
    use_safe_checkpoints(cfg)
    prepare_distill_cfg(cfg)
    adapt_cfg_for_cpu_dist(cfg)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_cfg(args)
    init_cpu_dist(args.launcher)
    resume = bool(args.resume or cfg.get('resume', False))
    with dist_teardown(), own_work_dir(cfg, resume, args.config) as notes:
        try:
            if 'runner_type' not in cfg:
                runner = Runner.from_cfg(cfg)
            else:
                runner = RUNNERS.build(cfg)
            for note in notes:  # into the work dir's log too
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

"""Command-line helpers of tools/train.py and tools/test.py (also used by
the demo): the shared arguments and the config adjustments."""
import argparse
import os
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, DictAction

__all__ = [
    'is_distill_cfg', 'prepare_distill_cfg', 'student_test_cfg',
    'parse_with_launcher_args', 'load_tool_cfg', 'use_safe_checkpoints',
    'resolve_resume'
]


def parse_with_launcher_args(parser: argparse.ArgumentParser,
                             argv: Optional[List[str]] = None):
    """Add the arguments every OpenMMLab tool shares (``--work-dir``,
    ``--cfg-options``, ``--launcher``, ``--local_rank``), parse, and export
    ``LOCAL_RANK`` as mmdet's tools do."""
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings in the config, key=value (see mmdet)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_tool_cfg(args) -> Config:
    """The config of ``args.config`` with ``--launcher``, ``--cfg-options``
    and ``--work-dir`` (default ``work_dirs/<config name>``) applied."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg

_DISTILLERS = ('LipschitzDistiller', 'mmlckd.LipschitzDistiller')


def is_distill_cfg(cfg: Config) -> bool:
    return cfg.get('model', {}).get('type', None) in _DISTILLERS


def prepare_distill_cfg(cfg: Config) -> None:
    """For distillation configs: export the student at the end of
    training (adds ``mmlckd.StudentExportHook`` unless present)."""
    if not is_distill_cfg(cfg):
        return
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any('StudentExportHook' in str(h.get('type', '')) for h in hooks):
        hooks.append(dict(type='mmlckd.StudentExportHook'))
    cfg.custom_hooks = hooks


_STOCK_CKPT_HOOKS = ('CheckpointHook', 'mmengine.CheckpointHook')


def use_safe_checkpoints(cfg: Config) -> bool:
    """Make the stock ``CheckpointHook`` of any config (a project recipe or
    a stock mmdet/mmseg one) a ``mmlckd.SafeCheckpointHook`` (same
    arguments): atomic writes, SHA-256 sidecars, old checkpoints deleted
    only after the new one is complete. Returns True if it changed."""
    hooks = cfg.get('default_hooks', None)
    ckpt = hooks.get('checkpoint', None) if hooks else None
    if not isinstance(ckpt, dict) or ckpt.get('type') not in \
            _STOCK_CKPT_HOOKS:
        return False
    ckpt['type'] = 'mmlckd.SafeCheckpointHook'
    return True


def resolve_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` (``'auto'`` or a path) into ``cfg.resume/load_from``.

    Raises SystemExit, naming the work dir or the path, when there is
    nothing to resume: mmengine would log "resumed from None" and train
    from scratch."""
    if resume is None:
        return
    if resume == 'auto':
        from mmengine.runner.checkpoint import find_latest_checkpoint
        work_dir = osp.abspath(cfg.work_dir)
        latest = find_latest_checkpoint(work_dir) if osp.isdir(
            work_dir) else None
        if latest is None:
            raise SystemExit(
                f'--resume: nothing to resume in the work dir {work_dir!r} '
                '(no "last_checkpoint" file; ' +
                ('the folder does not exist' if not osp.isdir(work_dir)
                 else 'no checkpoint was completed there') +
                '). Check --work-dir, pass the checkpoint explicitly '
                '(--resume PATH), or drop --resume to start afresh.')
        cfg.resume = True
        cfg.load_from = latest
        return
    if not osp.isfile(resume):
        raise SystemExit(f'--resume: checkpoint not found: {resume!r}')
    cfg.resume = True
    cfg.load_from = resume


def student_test_cfg(cfg: Config) -> bool:
    """Replace a distiller model by its student (in place) for testing, so
    no teacher (nor its checkpoint) is needed. Returns True if replaced."""
    if not is_distill_cfg(cfg):
        return False
    cfg.model = cfg.model.student
    cfg.custom_hooks = [
        h for h in (cfg.get('custom_hooks', None) or [])
        if not str(h.get('type', '')).startswith('mmlckd.')
    ]
    return True

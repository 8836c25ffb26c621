"""Config adjustments shared by tools/train.py, tools/test.py and the demo."""
import argparse
import os
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, DictAction

__all__ = [
    'is_distill_cfg', 'prepare_distill_cfg', 'student_test_cfg',
    'parse_with_launcher_args', 'load_tool_cfg'
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
    """For distillation configs: make sure ``mmlckd`` is imported by every
    worker and that the student is exported at the end of training."""
    if not is_distill_cfg(cfg):
        return
    imports = cfg.get('custom_imports', None) or dict(imports=[])
    if 'mmlckd' not in imports.get('imports', []):
        imports['imports'] = list(imports.get('imports', [])) + ['mmlckd']
    imports.setdefault('allow_failed_imports', False)
    cfg.custom_imports = imports
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any('StudentExportHook' in str(h.get('type', '')) for h in hooks):
        hooks.append(dict(type='mmlckd.StudentExportHook'))
    cfg.custom_hooks = hooks


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

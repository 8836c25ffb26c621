"""The arguments every tool shares, and reading the config they name."""
import argparse
import difflib
import os
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, DictAction

from mmlckd.utils.config import resolve_config_path

__all__ = ['parse_with_launcher_args', 'read_config', 'load_tool_cfg']


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


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``; a missing file, or a config that is not
    valid Python, is a one-line error naming the file (and the line:
    mmengine parses the top file as ``<unknown>`` and passes the
    ``SyntaxError`` on as a traceback)."""
    if not osp.isfile(path):
        near = osp.dirname(path) or '.'
        hint = ''
        if osp.isdir(near):
            close = difflib.get_close_matches(
                osp.basename(path), os.listdir(near), n=3)
            hint = f' Close names in {near}: {close}.' if close else ''
        raise SystemExit(
            f'error: config file not found: {path!r} (from {os.getcwd()}).'
            + hint)
    if path.endswith('.py'):
        with open(path, encoding='utf-8') as f:
            source = f.read()
        try:
            compile(source, path, 'exec')
        except SyntaxError as e:
            line = (e.text or '').strip()
            raise SystemExit(
                f'error: the config {path!r} is not valid Python: {e.msg} '
                f'(line {e.lineno}' + (f': {line}' if line else '') +
                '). Fix that line (a bracket or quote left open, a missing '
                'comma) and run again.') from None
    try:
        return Config.fromfile(path)
    except SyntaxError as e:  # in a _base_ file: mmengine names it
        raise SystemExit(f'error: {e}') from None


def load_tool_cfg(args) -> Config:
    """The config of ``args.config`` with ``--launcher``, ``--cfg-options``
    and ``--work-dir`` (default ``work_dirs/<config name>``) applied.

    ``args.config`` is a file, or a config shipped with an installed
    package, ``mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py`` /
    ``mmseg::deeplabv3plus/...`` (read from its ``.mim/configs``; the work
    dir is then ``work_dirs/retinanet_r50_fpn_1x_voc0712``)."""
    path = args.config
    if '::' in path:  # a package config; a local path is read_config's
        path = resolve_config_path(path)  # names close matches
    cfg = read_config(path)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg

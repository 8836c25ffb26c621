"""Config helpers: load local or ``package::`` configs without network."""
import difflib
import importlib.util
import os
import os.path as osp
from typing import List, Union

from mmengine.config import Config
from mmengine.logging import print_log

__all__ = ['load_config', 'resolve_config_path', 'sync_bn_to_bn',
           'nested_datasets']

#: norm layer types that synchronise over the processes (CUDA only)
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')


def resolve_config_path(path: str) -> str:
    """Resolve ``'mmdet::pascal_voc/x.py'`` (or a local path) to a file.

    Package configs are read from the installed wheel's ``.mim/configs``
    folder; unlike ``mmengine.hub.get_config`` nothing is ever pip-installed.

    Raises:
        FileNotFoundError: naming the path and, for package configs, close
            matches in that package's config folder.
    """
    if '::' not in path:
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'config file not found: {path!r} (cwd: {os.getcwd()!r}). '
                "For a config shipped with a package use 'mmdet::<rel path>' "
                "or 'mmseg::<rel path>'.")
        return path
    package, rel = path.split('::', 1)
    module = {'mmseg': 'mmseg', 'mmsegmentation': 'mmseg'}.get(package, package)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f'{path!r}: package {package!r} is not installed')
    root = osp.join(list(spec.submodule_search_locations)[0], '.mim',
                    'configs')
    full = osp.join(root, rel)
    if not osp.isfile(full):
        folder = osp.dirname(full)
        names = sorted(os.listdir(folder)) if osp.isdir(folder) else []
        close = difflib.get_close_matches(osp.basename(rel), names, n=5)
        raise FileNotFoundError(
            f'{path!r} not found in {root}. Close matches in '
            f'{osp.dirname(rel) or "."}: {close}')
    return full


def load_config(cfg: Union[str, dict, Config]) -> Config:
    """A :class:`Config` from a path, ``pkg::path``, dict or Config."""
    if isinstance(cfg, Config):
        return cfg
    if isinstance(cfg, dict):
        return Config(cfg)
    return Config.fromfile(resolve_config_path(str(cfg)))


def sync_bn_to_bn(cfg: Union[dict, Config], key: str = 'model') -> List[str]:
    """Replace every ``SyncBN``/``MMSyncBN`` norm layer under ``cfg[key]``
    by ``BN`` (in place), logging one line, and return the changed paths.

    For distributed runs without CUDA (gloo): torch's DDP refuses
    ``SyncBatchNorm`` on CPU modules ("SyncBatchNorm layers only work with
    GPU modules"), and every stock mmseg config uses it. Each process then
    normalises its own batch, as ``BN`` does on one GPU. A teacher config
    given as a path is built by the distiller in eval mode, where
    ``SyncBatchNorm`` does not synchronise, so it needs no change.
    """
    changed: List[str] = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get('type') in SYNC_BN_TYPES:
                node['type'] = 'BN'
                changed.append(path)
            for k, v in node.items():
                walk(v, f'{path}.{k}')
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f'{path}.{i}')

    if key in cfg:
        walk(cfg[key], key)
    if changed:
        print_log(
            f'SyncBN -> BN for this CPU distributed run (SyncBN needs CUDA; '
            f'each process normalises its own batch): {len(changed)} norm '
            f'configs, e.g. {changed[0]}', logger='current')
    return changed


def nested_datasets(dataset) -> list:
    """``dataset`` and the datasets it wraps, depth first, through
    ``dataset`` (``RepeatDataset``-style wrappers) and ``datasets``
    (``ConcatDataset``): keys of a dataset config, attributes of a built
    dataset. ``[]`` for None."""
    if dataset is None:
        return []
    is_cfg = isinstance(dataset, dict)

    def child(key):
        return dataset.get(key, None) if is_cfg else \
            getattr(dataset, key, None)

    out = [dataset]
    for d in [child('dataset')] + list(child('datasets') or []):
        if d is not None and (isinstance(d, dict) or not is_cfg):
            out += nested_datasets(d)
    return out

"""Config helpers: load local or ``package::`` configs without network."""
import difflib
import importlib.util
import os
import os.path as osp
from typing import Union

from mmengine.config import Config

__all__ = ['load_config', 'resolve_config_path']


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

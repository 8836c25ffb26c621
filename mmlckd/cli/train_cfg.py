"""The config rewrites of ``tools/train.py`` and ``tools/test.py``, and
the config checks before a run (the README's "What tools/train.py adds"
lists them)."""
import os
import os.path as osp
from typing import List

from mmengine.config import Config

__all__ = ['is_distill_cfg', 'DEFAULT_DISTILL_HOOKS', 'prepare_distill_cfg',
           'use_safe_checkpoints', 'complete_train_cfg', 'student_test_cfg',
           'check_train_length', 'check_relative_paths']

_DISTILLERS = ('LipschitzDistiller', 'mmlckd.LipschitzDistiller')


def is_distill_cfg(cfg: Config) -> bool:
    return cfg.get('model', {}).get('type', None) in _DISTILLERS


#: hooks every distillation run of tools/train.py gets unless its config
#: has them: the start line, short train lines, the shares only when
#: measured and ``lipschitz.jsonl`` (``LipschitzMonitorHook``; its
#: ``out_file=None`` keeps all but the file), the exported student
DEFAULT_DISTILL_HOOKS = ('LipschitzMonitorHook', 'StudentExportHook')


def prepare_distill_cfg(cfg: Config) -> List[str]:
    """Apply ``unlabelled_images = dict(...)``
    (:func:`mmlckd.datasets.add_unlabelled_images`; an error for a config
    that does not distil), and give a distillation config the hooks of
    :data:`DEFAULT_DISTILL_HOOKS` it does not have, so a config that only
    says ``model = dict(type='mmlckd.LipschitzDistiller', ...)`` logs as
    documented and exports the student. Returns one note per change."""
    from mmlckd.datasets import add_unlabelled_images
    notes = []
    if add_unlabelled_images(cfg):
        notes.append('unlabelled_images: the training set became '
                     'mmlckd.WithUnlabelledImages, its sampler '
                     'mmdet.MultiSourceSampler')
    if not is_distill_cfg(cfg):
        return notes
    hooks = list(cfg.get('custom_hooks', None) or [])
    added = [f'mmlckd.{name}' for name in DEFAULT_DISTILL_HOOKS
             if not any(str(h.get('type', '')).split('.')[-1] == name
                        for h in hooks)]
    cfg.custom_hooks = hooks + [dict(type=t) for t in added]
    if added:
        notes.append(f'custom_hooks: added {", ".join(added)}')
    return notes


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


def complete_train_cfg(cfg: Config) -> List[str]:
    """Every config rewrite of ``tools/train.py``, in place (the README's
    "What tools/train.py adds"): :func:`use_safe_checkpoints`,
    :func:`prepare_distill_cfg` and, for DDP without CUDA,
    :func:`mmlckd.compat.adapt_cfg_for_cpu_dist`. Returns one note per
    change made: none for the project's recipes, which carry them all."""
    from mmlckd.compat import adapt_cfg_for_cpu_dist
    notes = []
    if use_safe_checkpoints(cfg):
        notes.append("default_hooks.checkpoint: mmengine's CheckpointHook "
                     'became mmlckd.SafeCheckpointHook (same arguments)')
    notes += prepare_distill_cfg(cfg)
    if adapt_cfg_for_cpu_dist(cfg):
        notes.append('DDP without CUDA: gloo backend, '
                     'mmlckd.CPUAwareDistributedDataParallel, SyncBN as BN')
    return notes


def check_train_length(cfg: Config) -> None:
    """``train_cfg.max_iters`` / ``max_epochs`` of 0 (or less) is an error:
    mmengine trains nothing and ends with status 0, and a distillation run
    then exports its untrained student as ``student_final.pth``."""
    train_cfg = cfg.get('train_cfg', None) or {}
    for key in ('max_iters', 'max_epochs'):
        n = train_cfg.get(key, None)
        if isinstance(n, (int, float)) and n <= 0:
            raise SystemExit(
                f'error: train_cfg.{key}={n}: the run would train nothing '
                '(and a distillation run would export its untrained student '
                'as student_final.pth). Set train_cfg.' + key + ' to a '
                'positive number, e.g. --cfg-options train_cfg.' + key +
                '=12.')


def check_relative_paths(cfg: Config, config_path: str) -> None:
    """A relative ``teacher.checkpoint``, ``teacher.config`` or
    ``load_from`` is read from the current folder; one that is missing
    there but present next to the config (the tool run from another
    folder) is an error naming both places."""
    paths = [('load_from', cfg.get('load_from', None))]
    if is_distill_cfg(cfg):
        teacher = cfg.model.get('teacher', None) or {}
        paths += [(f'model.teacher.{k}', teacher.get(k, None))
                  for k in ('checkpoint', 'config')]
    here = osp.dirname(osp.abspath(config_path))
    for key, path in paths:
        if not isinstance(path, str) or not path or osp.isabs(path) or \
                '::' in path or '://' in path or osp.exists(path):
            continue
        beside = osp.join(here, path)
        if osp.exists(beside):
            raise SystemExit(
                f'error: {key}={path!r} is a relative path, read from the '
                f'current folder {os.getcwd()}, where it does not exist; '
                f'the config\'s folder has it: {beside}. Give the absolute '
                f'path (--cfg-options {key}={beside}) or run from the '
                'folder the path is relative to.')


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

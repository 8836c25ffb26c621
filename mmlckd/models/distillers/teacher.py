"""The teacher of :class:`LipschitzDistiller`: building, checkpoint loading
and teacher/student compatibility checks, with messages that name the
teacher, the file, the config and the fix."""
import copy
import logging
import warnings
from typing import Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope

from mmlckd.checkpoint import (compare_state_dicts, describe_mismatch,
                               is_distillation_state, load_checked)
from mmlckd.utils import load_config

__all__ = [
    'build_teacher', 'describe_config', 'load_teacher_checkpoint',
    'task_type', 'skip_unread_branches',
    'check_compatible', 'preprocessor_settings'
]


def describe_config(config) -> str:
    """A short name for a config given as a path, ``pkg::`` path, dict or
    Config."""
    if isinstance(config, str):
        return repr(config)
    filename = getattr(config, 'filename', None)
    if filename:
        return repr(filename)
    return 'the inline teacher.config dict'


def load_teacher_checkpoint(teacher: nn.Module, path: str,
                            allow_missing: bool = False,
                            config=None) -> None:
    """Load ``path`` into ``teacher`` or fail with one clear message.

    Size mismatches (another width, another ``num_classes``) are never
    allowed; missing/unexpected keys only with ``allow_missing``.
    The SHA-256 sidecar, when there is one, is verified first.
    """
    role = 'teacher checkpoint'
    cfg_name = describe_config(config) if config is not None else \
        'teacher.config'
    if '://' in str(path):
        raise FileNotFoundError(
            f'{role} {path!r} is a URL: mmlckd loads local files only (it '
            'does not fetch checkpoints, so that each one is checked, '
            'with its SHA-256 when there is one, before it is loaded). '
            'Download the file first (e.g. wget or curl, or mmengine\'s '
            'CheckpointLoader.load_checkpoint, which caches it under '
            '~/.cache/torch) and set teacher.checkpoint to the local path.')
    state = load_checked(path, role)
    if is_distillation_state(state) and not any(
            k.startswith('backbone.') for k in state):
        raise ValueError(
            f'{path!r} is a distillation checkpoint (keys "student.*"). '
            'Export the student first: python tools/export_student.py '
            f'{path} student.pth, then use student.pth as the teacher.')
    missing, unexpected, mismatched = compare_state_dicts(
        teacher.state_dict(), state)
    if mismatched:
        raise RuntimeError(
            f'the teacher checkpoint {path!r} does not fit the teacher '
            f'built from {cfg_name}: ' +
            describe_mismatch(missing, unexpected, mismatched) +
            '. The checkpoint was trained with another architecture '
            '(width, depth or num_classes). Set teacher.config to the '
            'config this checkpoint was trained with, or teacher.checkpoint '
            'to a checkpoint of this config.')
    if missing or unexpected:
        msg = (f'the teacher checkpoint {path!r} does not match the teacher '
               f'built from {cfg_name}: ' +
               describe_mismatch(missing, unexpected, mismatched) +
               '. Check that teacher.config is the config this checkpoint '
               'was trained with; set teacher.allow_missing_keys=True only '
               'if the mismatch is intended.')
        if not allow_missing:
            raise RuntimeError(msg)
        warnings.warn(msg)
    teacher.load_state_dict(state, strict=False)
    print_log(f'teacher checkpoint loaded from {path}', logger='current')


#: the settings of the distiller's ``teacher=`` dict
TEACHER_KEYS = ('config', 'checkpoint', 'allow_missing_keys',
                'check_num_classes', 'skip_unread')


def skip_unread_branches(distiller, cfg: dict, probe_size) -> list:
    """With ``cfg.get('skip_unread', True)`` (the distiller's ``teacher=``
    dict): the teacher's modules that nothing recorded depends on return
    zeros in the distiller's teacher forward instead of running
    (:func:`mmlckd.models.probe.skip_unread`: found on a probe forward,
    checked on a second one; a dense head's box branch when only its
    classifier is read, about a fifth of a RetinaNet R-50 teacher's
    forward at 320 px). The teacher's own ``predict`` and ``loss`` run
    everything. Returns the skipped module names, one log line names
    them."""
    if not cfg.get('skip_unread', True):
        return []
    from ..probe import skip_unread
    names = skip_unread(distiller.teacher, distiller.teacher_recorder,
                        probe_size)
    if names:
        print_log(f'teacher: {", ".join(names)} skipped in the distiller\'s '
                  'teacher forward (nothing recorded depends on them; '
                  'teacher.skip_unread=False runs them)', logger='current')
    return names


def build_teacher(cfg: dict) -> nn.Module:
    """The frozen teacher of ``cfg`` (the distiller's ``teacher=`` dict):
    built from ``cfg['config']`` in that config's default scope, loaded
    from ``cfg['checkpoint']`` (None keeps random weights, with a warning),
    SyncBN reverted to BN, in eval mode, without gradients."""
    if not isinstance(cfg, dict) or 'config' not in cfg:
        raise ValueError(
            'teacher must be dict(config=<path or mmdet::/mmseg:: path>, '
            f'checkpoint=<path>), got {cfg!r}')
    unknown = [k for k in cfg if k not in TEACHER_KEYS]
    if unknown:  # a typo ('checkpiont') left a random teacher, warned only
        from .validation import typo_hints
        did = typo_hints(unknown, TEACHER_KEYS)
        raise ValueError(
            f'teacher has no setting {unknown}' +
            (f' (a typo? {", ".join(did)})' if did else '') +
            f'; its settings are {list(TEACHER_KEYS)}.')
    tcfg = load_config(cfg['config'])
    model_cfg = tcfg.get('model', None) or tcfg
    if str(model_cfg.get('type', '')).split('.')[-1] == 'LipschitzDistiller':
        inner = model_cfg.get('teacher', None) or {}
        raise ValueError(
            f'teacher.config {describe_config(cfg["config"])} is a '
            'distillation config (model.type=LipschitzDistiller), not the '
            'config of a detector or segmentor: its keys ("student.*", '
            '"teacher.*") fit no teacher checkpoint. Set teacher.config to '
            'the plain config the teacher was trained with' +
            (f' (that distillation config\'s own teacher is '
             f'{describe_config(inner.get("config"))})'
             if isinstance(inner, dict) and inner.get('config') else '') +
            '; to distil from a distilled student, use its plain student '
            'config and its exported student (tools/export_student.py).')
    with DefaultScope.overwrite_default_scope(
            tcfg.get('default_scope', None)):
        teacher = ROOT_MODELS.build(copy.deepcopy(model_cfg))
    ckpt = cfg.get('checkpoint', None)
    if ckpt is None:
        msg = ('LipschitzDistiller: teacher.checkpoint is None, the teacher '
               'has RANDOM weights. Set teacher.checkpoint to a trained '
               'model unless this is a smoke test.')
        warnings.warn(msg)
        # the runner's logger (built before the model): the work dir's log
        print_log(msg, logger='current', level=logging.WARNING)
    else:
        load_teacher_checkpoint(teacher, ckpt,
                                cfg.get('allow_missing_keys', False),
                                config=cfg['config'])
    teacher = revert_sync_batchnorm(teacher)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def task_type(model: nn.Module) -> Optional[str]:
    """``'detector'`` (mmdet ``BaseDetector``), ``'segmentor'`` (mmseg
    ``BaseSegmentor``) or None when neither (or not installed)."""
    try:
        from mmdet.models.detectors import BaseDetector
        if isinstance(model, BaseDetector):
            return 'detector'
    except ImportError:
        pass
    try:
        from mmseg.models.segmentors import BaseSegmentor
        if isinstance(model, BaseSegmentor):
            return 'segmentor'
    except ImportError:
        pass
    return None


def preprocessor_settings(pre) -> dict:
    """What a data preprocessor does to the input, under one set of names.

    mmengine's ``ImgDataPreprocessor`` (and mmdet's) keep the BGR/RGB flip
    in ``_channel_conversion``, mmseg's ``SegDataPreProcessor`` in
    ``channel_conversion``: the same setting under two names."""
    def first(*names):
        for n in names:
            if hasattr(pre, n):
                return getattr(pre, n)
        return None
    enable = first('_enable_normalize')
    mean, std = first('mean'), first('std')
    if enable is None and mean is not None:
        enable = True
    return dict(mean=mean if enable is not False else None,
                std=std if enable is not False else None,
                bgr_to_rgb=bool(first('_channel_conversion',
                                      'channel_conversion')),
                normalize=enable)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if a is None or b is None:
            return a is None and b is None
        a, b = torch.as_tensor(a).flatten(), torch.as_tensor(b).flatten()
        return a.shape == b.shape and torch.allclose(a.float(), b.float())
    return a == b


def check_compatible(student: nn.Module, teacher: nn.Module,
                     check_num_classes: bool = True) -> None:
    """Same task type, same preprocessing (and classes) for teacher and
    student."""
    s_task, t_task = task_type(student), task_type(teacher)
    if s_task and t_task and s_task != t_task:
        raise ValueError(
            f'the teacher is a {t_task} ({type(teacher).__name__}) and the '
            f'student a {s_task} ({type(student).__name__}): a teacher must '
            f'solve the student\'s task. Set teacher.config to a {s_task} '
            f'config (and teacher.checkpoint to its weights).')
    s_set = preprocessor_settings(student.data_preprocessor)
    t_set = preprocessor_settings(teacher.data_preprocessor)
    for attr in ('mean', 'std', 'bgr_to_rgb', 'normalize'):
        s_val, t_val = s_set[attr], t_set[attr]
        if not _same(s_val, t_val):
            def show(v):
                return v.flatten().tolist() if isinstance(
                    v, torch.Tensor) else v
            raise ValueError(
                'teacher and student data preprocessors differ in '
                f'{attr}: teacher {show(t_val)} vs student '
                f'{show(s_val)}. The teacher sees the student\'s '
                'preprocessed inputs, so mean/std/bgr_to_rgb must match: '
                'copy the teacher\'s data_preprocessor into the student '
                'config.')
    if not check_num_classes:
        return
    s_cls = {n: m.num_classes for n, m in student.named_modules()
             if isinstance(getattr(m, 'num_classes', None), int)}
    t_cls = {n: m.num_classes for n, m in teacher.named_modules()
             if isinstance(getattr(m, 'num_classes', None), int)}
    for name in sorted(set(s_cls) & set(t_cls)):
        if s_cls[name] != t_cls[name]:
            raise ValueError(
                f'class counts differ: teacher {name}.num_classes='
                f'{t_cls[name]}, student {name}.num_classes='
                f'{s_cls[name]}. Train the teacher on the student\'s '
                'dataset, or set teacher.check_num_classes=False to '
                'distil features only (no response KD).')

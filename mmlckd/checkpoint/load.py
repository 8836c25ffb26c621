"""Reading checkpoints: every caller goes through :func:`load_checked`.

* :func:`check_checkpoint_file`: the reasons a file cannot be a checkpoint
  (missing, empty, text, cut off), in words, before any unpickler sees it.
* :func:`safe_torch_load`: ``torch.load`` with ``weights_only=True`` and
  the allow-list of :mod:`mmlckd.compat.safe_load`; never with it off.
* :func:`load_checked`: check the file, verify its SHA-256 sidecar, load
  it, and return its state dict (or the whole checkpoint).
* :func:`compare_state_dicts` / :func:`describe_mismatch`: missing,
  unexpected and size-mismatched keys as one message with counts and a few
  examples.
"""
import os
import os.path as osp
import pickle
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mmlckd.compat.safe_load import register_safe_globals
from .io import CheckpointError, verify_checksum

__all__ = [
    'check_checkpoint_file', 'checkpoints_in', 'safe_torch_load',
    'load_checked', 'state_dict_from', 'strip_prefix',
    'is_distillation_state', 'compare_state_dicts', 'describe_mismatch',
    'check_model_checkpoint'
]

_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTO = b'\x80'


def check_checkpoint_file(path: str, role: str = 'checkpoint') -> None:
    """Fail with the reason, in words, when ``path`` cannot be a PyTorch
    checkpoint: missing, a folder, empty, or not a ``torch.save`` file."""
    if not osp.exists(path):
        raise FileNotFoundError(
            f'{role} not found: {path!r}. Check the path (relative paths '
            f'are resolved from {os.getcwd()!r}).')
    if osp.isdir(path):
        raise CheckpointError(f'{role} {path!r} is a folder, not a file')
    size = osp.getsize(path)
    if size == 0:
        raise CheckpointError(
            f'{role} {path!r} is empty (0 bytes): its write was cut off (a '
            'killed run or a full disk). Use an earlier checkpoint' +
            _others_hint(path, resume='resume' in role) + '.')
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO):
        return
    sample = head[:32]
    texty = all(32 <= c < 127 or c in (9, 10, 13) for c in sample)
    what = ('a text file' if texty else 'not a PyTorch checkpoint') + \
        f' (it starts with {sample!r})'
    raise CheckpointError(
        f'{role} {path!r} is {what}, not a file written by torch.save. '
        'Check that the path names the .pth file itself (not a log, '
        'config or last_checkpoint file).')


def _others_hint(path: str, resume: bool = False) -> str:
    """Other checkpoints in ``path``'s folder; for a resume, only those of
    the training run (``iter_N``/``epoch_N``: a student export cannot
    resume a distillation run)."""
    try:
        others = [n for n in checkpoints_in(osp.dirname(osp.abspath(path)),
                                            resumable=resume)
                  if n != osp.basename(path)]
    except OSError:
        return ''
    if not others:
        return ''
    return f' (in that folder: {", ".join(others[-3:])})'


def checkpoints_in(folder: str, resumable: bool = True) -> List[str]:
    """The non-empty checkpoint files of ``folder``, oldest first: those of
    a training run (``iter_N.pth``/``epoch_N.pth``), or with
    ``resumable=False`` every ``.pth``."""
    pattern = r'(iter|epoch)_\d+\.pth' if resumable else r'.*\.pth'
    return sorted(
        (n for n in os.listdir(folder) if re.fullmatch(pattern, n)
         and osp.getsize(osp.join(folder, n)) > 0),
        key=lambda n: osp.getmtime(osp.join(folder, n)))


def state_dict_from(ckpt, path: str, role: str = 'checkpoint') -> dict:
    """The ``state_dict`` of a loaded checkpoint, or a clear error when the
    file holds something else (a bare tensor, a list...)."""
    import torch
    if isinstance(ckpt, dict):
        state = ckpt.get('state_dict', ckpt)
        if isinstance(state, dict) and all(
                isinstance(k, str) for k in state) and any(
                    isinstance(v, torch.Tensor) for v in state.values()):
            return state
        if isinstance(state, dict) and not state:
            raise CheckpointError(f'{role} {path!r} holds an empty state '
                                  'dict: there are no weights in it.')
    kind = (f'a bare tensor of shape {tuple(ckpt.shape)}'
            if isinstance(ckpt, torch.Tensor) else
            f'a {type(ckpt).__name__}' + (
                f' with keys {sorted(map(str, ckpt))[:5]}'
                if isinstance(ckpt, dict) else ''))
    raise CheckpointError(
        f'{role} {path!r} holds {kind}, not a model checkpoint '
        "(a dict of named tensors, or dict(state_dict=...) as mmengine "
        'writes). Save the model with torch.save(dict(state_dict='
        'model.state_dict()), path) or use a checkpoint of the training run.')


def compare_state_dicts(
        expected: Dict[str, 'object'], given: Dict[str, 'object'],
        ignore_unexpected: Sequence[str] = ()
) -> Tuple[List[str], List[str], List[Tuple[str, tuple, tuple]]]:
    """(missing, unexpected, size-mismatched (key, expected, given))."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected
                  and not k.startswith(tuple(ignore_unexpected))]
    mismatched = []
    for k, v in given.items():
        if k in expected and hasattr(v, 'shape') and hasattr(
                expected[k], 'shape') and tuple(v.shape) != tuple(
                    expected[k].shape):
            mismatched.append((k, tuple(expected[k].shape), tuple(v.shape)))
    return missing, unexpected, mismatched


def describe_mismatch(missing, unexpected, mismatched, n: int = 3) -> str:
    """One sentence: counts and the first ``n`` examples of each kind."""
    parts = []
    if mismatched:
        ex = ', '.join(f'{k} (model {e}, file {g})'
                       for k, e, g in mismatched[:n])
        parts.append(f'{len(mismatched)} size mismatches, e.g. {ex}')
    if missing:
        parts.append(f'{len(missing)} missing keys, e.g. '
                     f'{", ".join(missing[:n])}')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected keys, e.g. '
                     f'{", ".join(unexpected[:n])}')
    return '; '.join(parts)


def check_model_checkpoint(model, path: str, config: str,
                           distilled: bool = False) -> dict:
    """Check that ``path`` holds exactly ``model``'s weights (for
    ``tools/test.py``); returns the (prefix-stripped) state dict.

    ``distilled``: ``model`` is the student of the distillation config
    ``config``; a distillation checkpoint (``student.*``, ``connectors.*``)
    or an exported student both fit.

    Raises:
        CheckpointError naming the file, the config and the fix.
    """
    from mmengine.model import is_model_wrapper
    state = load_checked(path)
    is_kd = is_distillation_state(state)
    if is_kd and not distilled:
        raise CheckpointError(
            f'{path!r} is a distillation checkpoint (keys "student.*", '
            f'"connectors.*") and {config!r} is a plain model config. Export '
            'the student (python tools/export_student.py '
            f'{path} student.pth) and test student.pth with this config, or '
            'test with the distillation config.')
    if is_kd:
        state = strip_prefix(state, 'student.')
    if is_model_wrapper(model):
        model = model.module
    missing, unexpected, mismatched = compare_state_dicts(
        model.state_dict(), state)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f'checkpoint {path!r} does not fit the model of {config!r}: ' +
            describe_mismatch(missing, unexpected, mismatched) +
            '. Testing it would evaluate partly random weights. Test with '
            'the config this checkpoint was trained with (for a '
            'distillation run: the distillation config, or the exported '
            'student with the student config).')
    return state


def safe_torch_load(path: str, map_location: Any = 'cpu',
                    role: str = 'checkpoint') -> Any:
    """``torch.load`` with ``weights_only=True`` and mmengine's globals.

    Errors are reworded (``role`` names the file's purpose, e.g.
    ``'teacher checkpoint'``): torch's own messages suggest
    ``weights_only=False``, which this project never does.

    Raises:
        FileNotFoundError: with a message naming the path, when it is missing.
        CheckpointError (a ``pickle.UnpicklingError`` and ``ValueError``):
            an empty, text, truncated or corrupted file, or one that
            references a global outside the allow-list (the message says
            which).
    """
    check_checkpoint_file(path, role)
    register_safe_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r'(?:Unsupported global|GLOBAL) ?:? ?(?:GLOBAL )?'
                      r'([\w.]+)', msg)
        if 'mmlckd refuses' in msg:
            what = 'a getattr call outside the allow-list'
        elif m:
            what = f'the Python object {m.group(1)!r}'
        else:
            what = 'Python objects other than tensors and mmengine state'
        err = CheckpointError(
            f'{role} {path!r} refers to {what}, which mmlckd does not load: '
            'checkpoints are read with the weights-only unpickler so that '
            'opening a file cannot run code. If you made this file, save '
            'plain tensors: torch.save(dict(state_dict=model.state_dict()), '
            'path).')
    except (EOFError, RuntimeError, KeyError, ValueError, IndexError) as e:
        err = CheckpointError(
            f'{role} {path!r} is truncated or corrupted '
            f'({type(e).__name__} while reading it): its write was '
            'probably cut off (a killed run, a full disk or a partial '
            'copy). Use an earlier checkpoint or another copy.')
    raise err


def load_checked(path: str, role: str = 'checkpoint',
                 log: Optional[Callable[[str], None]] = None,
                 whole: bool = False) -> Any:
    """The one way this project reads a checkpoint: the file is checked
    (:func:`check_checkpoint_file`), its sidecar verified (``log`` gets the
    line for a file without one), it is loaded weights-only, and its state
    dict is returned with DDP's ``module.`` prefix removed
    (``whole=True``: ``(checkpoint, state dict)``). ``role`` names the
    file's purpose in every message."""
    check_checkpoint_file(path, role)
    if log is None:
        verify_checksum(path, role)
    else:
        verify_checksum(path, role, log=log)
    ckpt = safe_torch_load(path, role=role)
    state = {re.sub(r'^module\.', '', k): v
             for k, v in state_dict_from(ckpt, path, role).items()}
    return (ckpt, state) if whole else state


def strip_prefix(state: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    """The entries of ``state`` under ``prefix``, without it (e.g. a
    distillation checkpoint's ``student.`` weights)."""
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix)}


def is_distillation_state(state: Dict[str, Any]) -> bool:
    """Whether ``state`` is a distiller's (its student under ``student.``)."""
    return any(k.startswith('student.') for k in state)

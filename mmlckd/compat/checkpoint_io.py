"""Checkpoint files that survive crashes, say what is wrong with them, and
carry a checksum.

* :func:`atomic_write` / :func:`atomic_torch_save`: write to a temporary file
  in the destination folder, ``fsync``, then ``os.replace`` it into place
  (the folder is fsynced too), so a reader sees the old file or the complete
  new one, never a half-written one. A full disk raises
  :class:`OSError` ``ENOSPC`` with "no space left on device at <path>" and
  leaves no temporary file behind.
* SHA-256 sidecars (``<file>.sha256``, ``sha256sum`` format) for every file
  the project writes; :func:`verify_checksum` checks one when present and
  logs an info line for files from elsewhere (no sidecar).
* :func:`check_checkpoint_file`: the reasons a file cannot be a checkpoint
  (missing, empty, text, cut off), in words, before any unpickler sees it.
* :func:`compare_state_dicts`: missing / unexpected / size-mismatched keys as
  one message with counts and a few examples.
"""
import errno
import hashlib
import os
import os.path as osp
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    'CheckpointError', 'atomic_write', 'atomic_torch_save', 'sha256_file',
    'sidecar_path', 'write_checksum', 'verify_checksum',
    'check_checkpoint_file', 'compare_state_dicts', 'state_dict_from',
    'fsync_dir'
]

_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTO = b'\x80'
_CHUNK = 1 << 20


def _checkpoint_error_base():
    import pickle
    return pickle.UnpicklingError


class CheckpointError(_checkpoint_error_base(), ValueError):
    """A checkpoint that cannot be used, with the reason and the fix.

    A ``ValueError`` (tools report it as a plain error) and a
    ``pickle.UnpicklingError`` (what ``torch.load`` callers expect)."""


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _no_space(path: str, err: OSError) -> OSError:
    return OSError(errno.ENOSPC,
                   f'no space left on device at {path!r} (the file was not '
                   'written; nothing partial was left behind). Free space '
                   'on that disk or write elsewhere.')


def atomic_write(path: str, write: Callable[[object], None],
                 before_replace: Optional[Callable[[str], None]] = None
                 ) -> str:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the
    same folder, which is fsynced and renamed over ``path``
    (``before_replace(tmp_path)`` runs just before the rename).

    Returns ``path``. On any error the temporary file is removed and
    ``path`` is untouched.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(path)}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        full = _is_enospc(e, folder)  # before the tmp file frees the space
        try:
            os.remove(tmp)
        except OSError:
            pass
        if full:
            raise _no_space(path, e) from None
        raise
    fsync_dir(folder)
    return path


_DISK_FULL_BYTES = 1 << 20


def _disk_full(folder: str) -> bool:
    """Less than 1 MiB left for this user on ``folder``'s file system."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < _DISK_FULL_BYTES


def _is_enospc(e: BaseException, folder: str) -> bool:
    """The OS reports a full disk as ENOSPC; torch's zip writer as a
    RuntimeError (``unexpected pos`` / ``file write failed``), which is
    taken for a full disk only when the disk is in fact (nearly) full."""
    seen = e
    for _ in range(4):  # the cause chain
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC,
                                                        errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(e, RuntimeError):
        return False
    if 'No space left' in str(e):
        return True
    return ('unexpected pos' in str(e) or 'write failed' in str(e)) and \
        _disk_full(folder)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str) -> str:
    return path + '.sha256'


def write_checksum(path: str, digest: Optional[str] = None) -> str:
    """Write ``<path>.sha256`` (``sha256sum -c`` format); returns the
    digest."""
    digest = digest or sha256_file(path)
    line = f'{digest}  {osp.basename(path)}\n'.encode()
    atomic_write(sidecar_path(path), lambda f: f.write(line))
    return digest


def _read_sidecar(path: str) -> Optional[str]:
    side = sidecar_path(path)
    if not osp.isfile(side):
        return None
    with open(side, encoding='utf-8', errors='replace') as f:
        text = f.read().strip()
    return text.split()[0].lower() if text else ''


def verify_checksum(path: str, role: str = 'checkpoint',
                    log: Optional[Callable[[str], None]] = None) -> bool:
    """Check ``path`` against its ``.sha256`` sidecar.

    Returns True when verified, False when there is no sidecar (a file from
    elsewhere: loaded unverified, with an info line).

    Raises:
        CheckpointError: the file does not match its recorded checksum.
    """
    if log is None:
        from mmengine.logging import print_log

        def log(msg):
            print_log(msg, logger='current')
    want = _read_sidecar(path)
    if want is None:
        log(f'{role} {path}: no SHA-256 recorded (a file from elsewhere); '
            'loading it unverified.')
        return False
    if not re.fullmatch(r'[0-9a-f]{64}', want):
        raise CheckpointError(
            f'the SHA-256 sidecar {sidecar_path(path)!r} of {role} {path!r} '
            + ('is empty (0 bytes)' if not want else
               f'does not hold a SHA-256 (it starts with {want[:16]!r})') +
            ': the sidecar is broken (its write was cut off, or it was '
            'edited), so the checkpoint could not be checked; the '
            'checkpoint itself may be intact. Restore the sidecar from the '
            f'same copy, or delete {sidecar_path(path)} to load the '
            'checkpoint unverified.')
    got = sha256_file(path)
    if got != want:
        raise CheckpointError(
            f'{role} {path!r} does not match its recorded SHA-256 '
            f'({sidecar_path(path)}): recorded {want[:16]}..., the file '
            f'has {got[:16]}.... It was modified or corrupted after it was '
            'written (disk error, partial copy, edited). Use another copy '
            'or an earlier checkpoint; delete the .sha256 file only if you '
            'know the change is intended.')
    log(f'{role} {path}: SHA-256 verified.')
    return True


def atomic_torch_save(obj, path: str, checksum: bool = True) -> str:
    """``torch.save`` via :func:`atomic_write`, plus a SHA-256 sidecar.

    Order: the old sidecar is removed, the file is replaced, then the new
    sidecar written; a crash in between leaves a file without a sidecar
    (loads with an info line), never a sidecar that lies about its file.
    """
    import torch
    holder = {}

    def digest(tmp):
        if checksum:
            holder['digest'] = sha256_file(tmp)

    if checksum and osp.exists(sidecar_path(path)):
        os.remove(sidecar_path(path))
    atomic_write(path, lambda f: torch.save(obj, f), digest)
    if checksum:  # atomic_write reports a full disk with the sidecar's path
        write_checksum(path, holder['digest'])
    return path


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
    folder = osp.dirname(osp.abspath(path))
    pattern = r'(iter|epoch)_\d+\.pth' if resume else r'.*\.pth'
    try:
        others = sorted(
            (n for n in os.listdir(folder) if re.fullmatch(pattern, n)
             and n != osp.basename(path)
             and osp.getsize(osp.join(folder, n)) > 0),
            key=lambda n: osp.getmtime(osp.join(folder, n)))
    except OSError:
        return ''
    if not others:
        return ''
    return f' (in that folder: {", ".join(others[-3:])})'


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


__all__.append('describe_mismatch')


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
    import re

    from mmengine.model import is_model_wrapper

    from .safe_load import safe_torch_load
    role = 'checkpoint'
    check_checkpoint_file(path, role)
    verify_checksum(path, role)
    state = state_dict_from(safe_torch_load(path, role=role), path, role)
    state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
    is_kd = any(k.startswith('student.') for k in state)
    if is_kd and not distilled:
        raise CheckpointError(
            f'{path!r} is a distillation checkpoint (keys "student.*", '
            f'"connectors.*") and {config!r} is a plain model config. Export '
            'the student (python tools/export_student.py '
            f'{path} student.pth) and test student.pth with this config, or '
            'test with the distillation config.')
    if is_kd:
        state = {k[len('student.'):]: v for k, v in state.items()
                 if k.startswith('student.')}
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


__all__.append('check_model_checkpoint')

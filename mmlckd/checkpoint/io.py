"""Writing checkpoint files that survive crashes and carry a checksum.

* :func:`atomic_write` / :func:`atomic_torch_save`: write to a temporary file
  in the destination folder, ``fsync``, then ``os.replace`` it into place
  (the folder is fsynced too), so a reader sees the old file or the complete
  new one, never a half-written one. A full disk raises
  :class:`OSError` ``ENOSPC`` with "no space left on device at <path>" and
  leaves no temporary file behind.
* SHA-256 sidecars (``<file>.sha256``, ``sha256sum`` format) for every file
  the project writes; :func:`verify_checksum` checks one when present and
  logs an info line for files from elsewhere (no sidecar).
"""
import errno
import hashlib
import os
import os.path as osp
import re
from typing import Callable, Optional

__all__ = [
    'CheckpointError', 'atomic_write', 'atomic_torch_save', 'sha256_file',
    'sidecar_path', 'write_checksum', 'verify_checksum', 'fsync_dir'
]

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

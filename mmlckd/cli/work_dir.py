"""One run per work dir: the lock, and an earlier run moved aside."""
import contextlib
import errno
import fcntl
import os
import os.path as osp
import re
import shutil
import socket
import sys
import time
from typing import List, Optional, Tuple

from mmengine.config import Config

__all__ = ['LOCK_NAME', 'ARCHIVE_DIR', 'check_work_dir_path',
           'move_previous_run_aside', 'own_work_dir']

LOCK_NAME = '.mmlckd_run.lock'
ARCHIVE_DIR = 'previous_runs'
_RUN_FILES = re.compile(
    r'(.*\.pth|.*\.pth\.sha256|last_checkpoint|.*\.jsonl|.*\.py|'
    r'\d{8}_\d{6})$')


def check_work_dir_path(work_dir: str) -> None:
    """A work dir that exists as a file (not a folder), or a symlink to
    nothing, is an error."""
    if osp.islink(work_dir) and not osp.exists(work_dir):
        raise SystemExit(
            f'error: the work dir {work_dir!r} is a symlink to '
            f'{os.readlink(work_dir)!r}, which does not exist (a disk not '
            'mounted, or a folder moved?). Create or mount that folder, '
            'or pass another --work-dir.')
    if osp.exists(work_dir) and not osp.isdir(work_dir):
        raise SystemExit(
            f'error: the work dir {work_dir!r} is a file, not a folder. '
            'Pass another --work-dir (or set work_dir in the config), or '
            'move that file away.')


def _is_main_rank() -> bool:
    return int(os.environ.get('RANK', '0') or 0) == 0


def _lock_owner(path: str) -> str:
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            info = dict(line.rstrip('\n').split('=', 1) for line in f
                        if '=' in line)
    except OSError:
        info = {}
    return (f'pid {info.get("pid", "?")} on host {info.get("host", "?")}, '
            f'started {info.get("started", "?")}: '
            f'{info.get("command", "?")}')


def _previous_run_entries(work_dir: str) -> List[str]:
    """The outputs a run leaves in its work dir (checkpoints and their
    sidecars, last_checkpoint, the dumped config, histories, log
    folders). Anything else in the folder is not touched."""
    names = []
    for name in sorted(os.listdir(work_dir)):
        if name in (LOCK_NAME, ARCHIVE_DIR) or name.startswith('.'):
            continue
        path = osp.join(work_dir, name)
        is_log_dir = osp.isdir(path) and re.fullmatch(r'\d{8}_\d{6}', name)
        if is_log_dir or (osp.isfile(path) and _RUN_FILES.fullmatch(name)):
            names.append(name)
    return names


def _file_refs(cfg) -> List[Tuple[str, str]]:
    """(setting, path) of the files a config reads at start: load_from and
    a distiller's teacher.checkpoint."""
    refs = []
    if cfg is None:
        return refs
    if isinstance(cfg.get('load_from', None), str):
        refs.append(('load_from', cfg.load_from))
    teacher = (cfg.get('model', None) or {}).get('teacher', None)
    if isinstance(teacher, dict) and isinstance(
            teacher.get('checkpoint', None), str):
        refs.append(('model.teacher.checkpoint', teacher['checkpoint']))
    return refs


def move_previous_run_aside(work_dir: str, cfg: Optional[Config] = None,
                            config_path: Optional[str] = None
                            ) -> Optional[str]:
    """A fresh run in a work dir that holds an earlier run's checkpoints:
    move that run's checkpoints, config and history together into
    ``<work_dir>/previous_runs/<YYYYmmdd_HHMMSS>/`` (the time the earlier
    run last wrote), so nothing is overwritten and the kept history still
    describes the kept checkpoints. Returns the message, or None when the
    folder held no earlier run (no checkpoint, no last_checkpoint, no
    history).

    A file this run reads is followed: ``load_from`` or
    ``model.teacher.checkpoint`` of ``cfg`` naming a moved file is set to
    its new path; the config file being run (``config_path``) is copied,
    not moved."""
    if not osp.isdir(work_dir):
        return None
    names = _previous_run_entries(work_dir)
    if not any(n.endswith(('.pth', '.jsonl')) or n == 'last_checkpoint'
               for n in names):
        return None
    newest = max(osp.getmtime(osp.join(work_dir, n)) for n in names)
    stamp = time.strftime('%Y%m%d_%H%M%S', time.localtime(newest))
    dest, n = osp.join(work_dir, ARCHIVE_DIR, stamp), 1
    while osp.exists(dest):
        dest, n = osp.join(work_dir, ARCHIVE_DIR, f'{stamp}_{n}'), n + 1
    os.makedirs(dest)
    running = osp.abspath(config_path) if config_path else None
    for name in names:
        src = osp.join(work_dir, name)
        if src == running:
            shutil.copy2(src, osp.join(dest, name))
        else:
            os.replace(src, osp.join(dest, name))
    followed = []
    for key, path in _file_refs(cfg):
        if osp.dirname(osp.abspath(path)) == work_dir and \
                osp.basename(path) in names:
            new = osp.join(dest, osp.basename(path))
            if key == 'load_from':
                cfg.load_from = new
            else:
                cfg.model.teacher.checkpoint = new
            followed.append(f'{key} now reads {new}')
    ckpts = [n for n in names if n.endswith('.pth')]
    resumable = [n for n in ckpts if re.fullmatch(r'(iter|epoch)_\d+\.pth', n)]
    latest = _named_in_last_checkpoint(dest) or (
        max(resumable, key=lambda n: osp.getmtime(osp.join(dest, n)))
        if resumable else None)
    return (f'the work dir {work_dir} held an earlier run (' +
            (f'{len(ckpts)} checkpoints' if ckpts else 'its history') +
            '); this is a fresh run (no --resume), so that run\'s '
            f'checkpoints, config and history were moved together to {dest} '
            '(nothing was overwritten)' +
            (f'; {", ".join(followed)}' if followed else '') + '.' +
            (f' To continue that run instead: --resume '
             f'{osp.join(dest, latest)}' if latest else ''))


def _named_in_last_checkpoint(folder: str) -> Optional[str]:
    try:
        with open(osp.join(folder, 'last_checkpoint')) as f:
            name = osp.basename(f.read().strip())
    except OSError:
        return None
    return name if name and osp.isfile(osp.join(folder, name)) else None


@contextlib.contextmanager
def own_work_dir(cfg: Config, resume: bool,
                 config_path: Optional[str] = None):
    """Hold ``<work_dir>/.mmlckd_run.lock`` (``fcntl.flock``) for the whole
    run: a second run in the same work dir (fresh or ``--resume``) stops
    with the first run's pid and host instead of interleaving checkpoints
    and history. A fresh run then moves an earlier run's outputs aside
    (:func:`move_previous_run_aside`). Yields the notes to log (the
    runner's logger does not exist yet). Only rank 0 locks and moves."""
    work_dir = osp.abspath(cfg.work_dir)
    check_work_dir_path(work_dir)
    notes: List[str] = []
    if not _is_main_rank():
        yield notes
        return
    path = osp.join(work_dir, LOCK_NAME)
    try:
        os.makedirs(work_dir, exist_ok=True)
        f = open(path, 'a+', encoding='utf-8')
    except OSError as e:  # read-only disk, no permission
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise SystemExit(
            f'error: cannot write in the work dir {work_dir} ({e.strerror}'
            f': {e.filename}): checkpoints and logs go there. Pass a '
            '--work-dir on a writable disk (or fix its permissions); '
            'nothing was written.') from None
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SystemExit(
                f'error: the work dir {work_dir} is in use by another run '
                f'({_lock_owner(path)}). Two runs in one work dir overwrite '
                "each other's checkpoints and history. Wait for that run to "
                'end (or stop it), or pass another --work-dir.') from None
        f.seek(0)
        f.truncate()
        f.write(f'pid={os.getpid()}\nhost={socket.gethostname()}\n'
                f'started={time.strftime("%Y-%m-%d %H:%M:%S")}\n'
                f'command={" ".join(sys.argv)}\n')
        f.flush()
        if not resume:
            note = move_previous_run_aside(work_dir, cfg, config_path)
            if note:
                notes.append(note)
        yield notes
    finally:
        f.close()  # releases the lock

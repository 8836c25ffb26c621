"""Output paths of the project's hooks stay inside the work dir."""
import os.path as osp

__all__ = ['check_work_dir_relative']


def check_work_dir_relative(value: str, arg: str, hook: str) -> str:
    """``value`` as given, or a ValueError when it is absolute or climbs out
    of the work dir with ``..``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'{hook}({arg}=...) must be a non-empty file name, '
                         f'got {value!r}')
    norm = value.replace('\\', '/')
    if osp.isabs(value) or norm.startswith('/') or \
            '..' in norm.split('/'):
        raise ValueError(
            f'{hook}({arg}={value!r}): the file must stay inside the work '
            'dir: give a relative path without ".." (e.g. '
            f'{osp.basename(norm) or "out"!r}); set work_dir (or '
            '--work-dir) to write somewhere else.')
    return value

"""Student-only export: a checkpoint stock mmdet/mmseg tools load with the
plain student config."""
import os.path as osp
from typing import Optional

from mmlckd.checkpoint import atomic_torch_save, load_checked, strip_prefix

__all__ = ['save_student', 'export_student']


def _write_student(state: dict, meta: dict, path: str) -> str:
    """The one writer of student checkpoints: ``{'state_dict', 'meta'}``
    marked ``mmlckd_export``, written atomically with a SHA-256 sidecar
    (:func:`~mmlckd.checkpoint.atomic_torch_save`)."""
    atomic_torch_save(dict(state_dict=state,
                           meta=dict(meta, mmlckd_export=True)),
                      path, checksum=True)
    return path


def save_student(distiller, path: str, meta: Optional[dict] = None) -> str:
    """Save ``distiller.student_state_dict()`` as an mmengine checkpoint."""
    state = {k: v.detach().cpu() for k, v in
             distiller.student_state_dict().items()}
    return _write_student(state, meta or {}, path)


def export_student(checkpoint: str, out: str) -> str:
    """Extract the student from a distillation checkpoint.

    Args:
        checkpoint: a checkpoint written while training a
            ``LipschitzDistiller`` (keys ``student.*``).
        out: output path (must differ from ``checkpoint``).

    Raises:
        FileNotFoundError / ValueError with the reason and the fix.
    """
    if osp.abspath(checkpoint) == osp.abspath(out):
        raise ValueError('the output path must differ from the input '
                         'checkpoint (refusing to overwrite it)')
    ckpt, state = load_checked(checkpoint, 'distillation checkpoint',
                               whole=True)
    student = strip_prefix(state, 'student.')
    if not student:
        raise ValueError(
            f'{checkpoint!r} has no "student.*" keys: it is not a '
            'LipschitzDistiller checkpoint (a plain model checkpoint can be '
            'used directly).')
    meta = dict(ckpt.get('meta', {}) or {}) if isinstance(ckpt, dict) \
        else {}
    meta = {k: v for k, v in meta.items() if k in ('epoch', 'iter',
                                                   'dataset_meta', 'seed')}
    meta['source_checkpoint'] = osp.abspath(checkpoint)
    return _write_student(student, meta, out)

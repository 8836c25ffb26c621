"""Resume mmengine 0.10.x checkpoints under torch >= 2.6 with weights_only on.

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmengine 0.10.7
pickles its ``MessageHub`` (``HistoryBuffer`` objects holding numpy arrays
and references to ``HistoryBuffer.min/max/current/mean``) into every
checkpoint, so ``runner.resume`` fails with ``UnpicklingError``.

Instead of turning ``weights_only`` off (which would execute arbitrary
pickled code from a checkpoint), we allow-list exactly the globals that
mmengine's checkpoints reference:

* ``mmengine.logging.history_buffer.HistoryBuffer``
* numpy arrays, dtypes and scalars (``_reconstruct``, ``ndarray``, ``dtype``,
  ``scalar``) under both numpy 1.x (``numpy.core``) and 2.x (``numpy._core``)
  names,
* ``builtins.getattr`` -- mapped to :func:`_history_buffer_getattr`, which
  only resolves ``HistoryBuffer.{min,max,current,mean}`` and refuses
  everything else. A real ``getattr`` is never exposed to the unpickler.

Anything else in a checkpoint (an arbitrary class, ``os.system``...) is still
refused by torch's weights-only unpickler.
"""
import pickle
import re
from typing import Any, List, Tuple

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

__all__ = ['mmengine_safe_globals', 'register_safe_globals']

_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """The only ``getattr`` the unpickler may call: HistoryBuffer statistics
    methods referenced by ``HistoryBuffer._statistics_methods``."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'mmlckd refuses getattr({obj!r}, {name!r}) while loading a '
        'checkpoint with weights_only=True: only HistoryBuffer statistics '
        'methods are allow-listed.')


def _numpy_globals() -> List[Tuple[Any, str]]:
    try:  # numpy >= 2
        from numpy._core import multiarray as _ma
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray as _ma
    items = []
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        items.append((_ma._reconstruct, f'{mod}._reconstruct'))
        items.append((_ma.scalar, f'{mod}.scalar'))
    items.append((np.ndarray, 'numpy.ndarray'))
    items.append((np.dtype, 'numpy.dtype'))
    # numpy >= 1.25 may pickle dtypes through their classes
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                items.append((cls, f'numpy.dtypes.{name}'))
    return items


def mmengine_safe_globals() -> List[Tuple[Any, str]]:
    """The exact ``(object, 'module.name')`` pairs mmengine checkpoints need.

    The list is suitable for :func:`torch.serialization.add_safe_globals` and
    :class:`torch.serialization.safe_globals`.
    """
    return [(HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
            (_history_buffer_getattr, 'builtins.getattr')] + _numpy_globals()


_REGISTERED = False


def register_safe_globals() -> None:
    """Allow-list :func:`mmengine_safe_globals` process-wide (idempotent).

    Called on ``import mmlckd``. After it, mmengine's ``runner.resume`` and
    ``load_checkpoint`` work under torch >= 2.6 with the default
    ``weights_only=True``. No-op on torch versions without
    ``add_safe_globals`` (< 2.4), which do not default to weights-only.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(mmengine_safe_globals())
    _REGISTERED = True

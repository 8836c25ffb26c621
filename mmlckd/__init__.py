"""mmlckd: Lipschitz-continuity-guided knowledge distillation (LONDON) for
OpenMMLab.

Importing it (or any of its modules) registers the distiller, losses,
connectors and hooks in the ``mmlckd`` registry scope and makes mmengine
0.10.7 checkpoints resumable under torch >= 2.6 with ``weights_only=True``.
A config needs no ``custom_imports``: for a ``type='mmlckd.X'`` mmengine
imports :mod:`mmlckd.registry`, hence this package.
"""
from . import compat  # noqa: F401  (torch.load allow-list, CPU DDP)
from . import datasets, engine, models  # noqa: F401
from .version import __version__

__all__ = ['__version__']

"""mmlckd: Lipschitz-continuity-guided knowledge distillation (LONDON) for
OpenMMLab.

``import mmlckd`` (or ``custom_imports=dict(imports=['mmlckd'])`` in a
config) registers the distiller, losses, connectors and hooks in the
``mmlckd`` registry scope and makes mmengine 0.10.7 checkpoints resumable
under torch >= 2.6 with ``weights_only=True``.
"""
from . import compat  # noqa: F401  (torch.load allow-list, CPU DDP)
from . import engine, models  # noqa: F401
from .version import __version__

__all__ = ['__version__']

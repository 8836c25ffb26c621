"""mmlckd's registries: children of MMEngine's root registries.

Everything mmlckd provides lives in the ``mmlckd`` scope, so a stock
MMDetection / MMSegmentation config (``default_scope='mmdet'`` or ``'mmseg'``)
refers to it as ``type='mmlckd.LipschitzDistiller'``. That prefix is the one
registration mechanism: for a type of another scope mmengine imports
``<scope>.registry``, i.e. this module, whose package ``__init__`` registers
every module and the torch compatibility layer; ``locations`` then names
the modules each registry holds.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry


def _child(name: str, parent: Registry, location: str) -> Registry:
    """A registry of the ``mmlckd`` scope under mmengine's ``parent``."""
    return Registry(name, parent=parent, scope='mmlckd',
                    locations=[location])


MODELS = _child('model', MMENGINE_MODELS, 'mmlckd.models')
HOOKS = _child('hook', MMENGINE_HOOKS, 'mmlckd.engine.hooks')
MODEL_WRAPPERS = _child('model_wrapper', MMENGINE_MODEL_WRAPPERS,
                        'mmlckd.compat')
LOG_PROCESSORS = _child('log_processor', MMENGINE_LOG_PROCESSORS,
                        'mmlckd.engine')
DATASETS = _child('dataset', MMENGINE_DATASETS, 'mmlckd.datasets')
TRANSFORMS = _child('transform', MMENGINE_TRANSFORMS, 'mmlckd.datasets')

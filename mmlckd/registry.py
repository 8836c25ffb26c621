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

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmlckd',
    locations=['mmlckd.models'])
HOOKS = Registry(
    'hook',
    parent=MMENGINE_HOOKS,
    scope='mmlckd',
    locations=['mmlckd.engine.hooks'])
MODEL_WRAPPERS = Registry(
    'model_wrapper',
    parent=MMENGINE_MODEL_WRAPPERS,
    scope='mmlckd',
    locations=['mmlckd.compat'])
LOG_PROCESSORS = Registry(
    'log_processor',
    parent=MMENGINE_LOG_PROCESSORS,
    scope='mmlckd',
    locations=['mmlckd.engine'])
DATASETS = Registry(
    'dataset',
    parent=MMENGINE_DATASETS,
    scope='mmlckd',
    locations=['mmlckd.datasets'])
TRANSFORMS = Registry(
    'transform',
    parent=MMENGINE_TRANSFORMS,
    scope='mmlckd',
    locations=['mmlckd.datasets'])

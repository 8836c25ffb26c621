"""mmlckd's registries: children of MMEngine's root registries.

Everything mmlckd provides lives in the ``mmlckd`` scope, so a stock
MMDetection / MMSegmentation config (``default_scope='mmdet'`` or ``'mmseg'``)
refers to it as ``type='mmlckd.LipschitzDistiller'``. With ``locations`` the
registries import their modules on first use, so ``custom_imports`` is
optional (but recommended: it also registers the torch compatibility layer).
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmlckd',
    locations=['mmlckd.models'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='mmlckd', locations=['mmlckd.engine.hooks'])
MODEL_WRAPPERS = Registry(
    'model_wrapper',
    parent=MMENGINE_MODEL_WRAPPERS,
    scope='mmlckd',
    locations=['mmlckd.compat'])

"""Helpers for tests, benchmarks and the demo (not needed for training):

* :mod:`.configs`: config shrinking, from full-size recipes to configs that
  build offline and train a few iterations on a CPU;
* :mod:`.models`: tiny random-init detector / segmentor configs and fake
  batches for model-level tests;
* :mod:`.synthetic_voc`: a deterministic synthetic PASCAL VOC generator.
"""
from .configs import (DISTILLER_TYPES, drop_validation, iter_schedule,
                      narrow_model_cfg, set_voc_data_root,
                      single_process_loaders, strip_pretrained,
                      sync_bn_to_bn, tiny_model_cfg, tiny_voc_cfg)
from .models import det_batch, det_model, seg_batch, seg_model
from .synthetic_voc import (CLASS_STYLES, MANIFEST_NAME, SHAPES, VOC_CLASSES,
                            VOC_PALETTE, DatasetExistsError,
                            make_synthetic_voc, parse_voc_xml, voc_colormap)

__all__ = [
    'DISTILLER_TYPES', 'drop_validation', 'iter_schedule',
    'narrow_model_cfg', 'set_voc_data_root',
    'single_process_loaders', 'strip_pretrained', 'sync_bn_to_bn',
    'tiny_model_cfg', 'tiny_voc_cfg', 'det_batch', 'det_model', 'seg_batch',
    'seg_model', 'make_synthetic_voc', 'parse_voc_xml', 'voc_colormap',
    'VOC_CLASSES', 'VOC_PALETTE', 'CLASS_STYLES', 'SHAPES', 'MANIFEST_NAME',
    'DatasetExistsError'
]

"""Datasets helpers for mmlckd.

Only numpy + Pillow are imported here (no torch / OpenMMLab), so the synthetic
data generator can run before the training stack is importable.
"""
from .synthetic_voc import (CLASS_STYLES, MANIFEST_NAME, SHAPES, VOC_CLASSES,
                            VOC_PALETTE, DatasetExistsError,
                            make_synthetic_voc, parse_voc_xml, voc_colormap)

__all__ = [
    'make_synthetic_voc', 'parse_voc_xml', 'voc_colormap', 'VOC_CLASSES',
    'VOC_PALETTE', 'CLASS_STYLES', 'SHAPES', 'MANIFEST_NAME',
    'DatasetExistsError'
]

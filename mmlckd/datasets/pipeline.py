"""The labelled training pipeline, made for images without annotations."""
import copy
from typing import Sequence

import numpy as np
from mmcv.transforms import BaseTransform

from mmlckd.registry import TRANSFORMS

__all__ = ['LoadEmptySegMap', 'unlabelled_pipeline']


@TRANSFORMS.register_module()
class LoadEmptySegMap(BaseTransform):
    """mmseg's ``LoadAnnotations`` for an image without labels: a
    ``gt_seg_map`` of ``ignore_index`` everywhere (registered in
    ``seg_fields``, so resizing, cropping and flipping treat it as a
    label map). A plain segmentor ignores every pixel of it; the distiller
    never computes a task loss on it."""

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        results['gt_seg_map'] = np.full((h, w), self.ignore_index, np.uint8)
        results.setdefault('seg_fields', []).append('gt_seg_map')
        return results


def _type_name(t) -> str:
    typ = t.get('type', '') if isinstance(t, dict) else type(t).__name__
    typ = typ if isinstance(typ, str) else typ.__name__
    return typ.rsplit('.', 1)[-1]


#: detection transforms that need objects: left out for unlabelled images
_DROP = ('FilterAnnotations', )


def unlabelled_pipeline(pipeline: Sequence, task: str = 'det') -> list:
    """The labelled training ``pipeline`` for images without annotations
    (``task``: ``'det'`` or ``'seg'``): ``LoadAnnotations`` becomes mmdet's
    ``LoadEmptyAnnotations`` (detection, same fields) or
    :class:`LoadEmptySegMap` (segmentation); ``FilterAnnotations`` (which
    would drop every image) is left out; mmdet's ``RandomCrop`` may crop
    no object (``allow_negative_crop=True``); ``LoadImageFromFile``
    returns nothing for a file it cannot decode (the dataset then takes
    another image). Everything else, resizing and cropping included, is
    unchanged."""
    out = []
    for t in pipeline:
        name = _type_name(t)
        if name in _DROP:
            continue
        t = copy.deepcopy(t)
        if name == 'LoadImageFromFile' and isinstance(t, dict):
            t['ignore_empty'] = True
        elif name == 'LoadAnnotations':
            if task == 'seg':
                t = dict(type='mmlckd.LoadEmptySegMap')
            else:
                t = dict(type='mmdet.LoadEmptyAnnotations',
                         with_bbox=t.get('with_bbox', True),
                         with_label=t.get('with_label', True),
                         with_mask=t.get('with_mask', False),
                         with_seg=t.get('with_seg', False))
        elif name == 'RandomCrop' and task == 'det' and isinstance(t, dict):
            t['allow_negative_crop'] = True
        out.append(t)
    return out

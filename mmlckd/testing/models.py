"""Tiny random-init versions of the recipe models (stock configs, shrunk
by :mod:`mmlckd.testing.configs`), and fake batches, for fast model-level
tests. No downloads."""
import copy

import torch

from mmlckd.utils import load_config
from .configs import narrow_model_cfg, tiny_model_cfg

__all__ = ['DET_CFGS', 'SEG_CFG', 'det_model', 'seg_model', 'det_batch',
           'seg_batch']

DET_CFGS = {
    'retinanet': 'mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py',
    'faster_rcnn': 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py',
}
SEG_CFG = 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py'


def det_model(kind='retinanet', depth=18, base=16, width=32):
    """A tiny detector config dict (20 VOC classes)."""
    model = copy.deepcopy(load_config(DET_CFGS[kind]).model)
    tiny_model_cfg(model)
    return narrow_model_cfg(model, base=base, width=width, depth=depth)


def seg_model(depth=18, base=16, size=64):
    """A tiny DeepLabV3+ config dict (21 VOC classes, BN instead of SyncBN)."""
    model = copy.deepcopy(load_config(SEG_CFG).model)
    tiny_model_cfg(model, size_hw=(size, size))
    return narrow_model_cfg(model, base=base, width=16, depth=depth)


def det_batch(model, batch=2, size=64, num_classes=20, seed=0):
    """Preprocessed (inputs, data_samples) for a detector."""
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(seed)
    packed = demo_mm_inputs(batch, [[3, size, size]] * batch,
                            num_classes=num_classes)
    data = model.data_preprocessor(packed, True)
    return data['inputs'], data['data_samples']


def seg_batch(model, batch=2, size=64, num_classes=21, seed=0):
    """Preprocessed (inputs, data_samples) for a segmentor."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 255, (3, size, size), generator=g,
                                    dtype=torch.uint8))
        seg = torch.randint(0, num_classes, (1, size, size), generator=g)
        seg[:, :2] = 255  # ignore border
        ds = SegDataSample(metainfo=dict(img_shape=(size, size),
                                         ori_shape=(size, size),
                                         pad_shape=(size, size)))
        ds.gt_sem_seg = PixelData(data=seg)
        samples.append(ds)
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples),
                                   True)
    return data['inputs'], data['data_samples']

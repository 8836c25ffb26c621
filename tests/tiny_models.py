"""Tiny random-init versions of the recipe models (stock configs, shrunk),
and fake batches, for fast model-level tests. No downloads."""
import copy

import torch

from mmlckd.utils import load_config

DET_CFGS = {
    'retinanet': 'mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py',
    'faster_rcnn': 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py',
}
SEG_CFG = 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py'


def _resnet(backbone, depth, base):
    backbone.update(depth=depth, base_channels=base, init_cfg=None)
    if 'stem_channels' in backbone or backbone.get('type') == 'ResNetV1c':
        backbone['stem_channels'] = base
    expansion = 1 if depth in (18, 34) else 4
    return [base * expansion * 2**i for i in range(4)]


def det_model(kind='retinanet', depth=18, base=16, width=32):
    """A tiny detector config dict (20 VOC classes)."""
    model = copy.deepcopy(load_config(DET_CFGS[kind]).model)
    chans = _resnet(model.backbone, depth, base)
    model.neck.update(in_channels=chans, out_channels=width)
    if kind == 'retinanet':
        model.bbox_head.update(in_channels=width, feat_channels=width,
                               stacked_convs=1)
    else:
        model.rpn_head.update(in_channels=width, feat_channels=width)
        model.roi_head.bbox_roi_extractor.out_channels = width
        model.roi_head.bbox_head.update(in_channels=width,
                                        fc_out_channels=2 * width)
        model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        model.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    return model


def seg_model(depth=18, base=16, size=64):
    """A tiny DeepLabV3+ config dict (21 VOC classes, BN instead of SyncBN)."""
    cfg = load_config(SEG_CFG)
    model = copy.deepcopy(cfg.model)
    chans = _resnet(model.backbone, depth, base)
    model.backbone.norm_cfg = dict(type='BN', requires_grad=True)
    model.pretrained = None
    model.data_preprocessor.size = (size, size)
    model.decode_head.update(in_channels=chans[3], c1_in_channels=chans[0],
                             channels=16, c1_channels=8,
                             norm_cfg=dict(type='BN', requires_grad=True))
    model.auxiliary_head.update(in_channels=chans[2], channels=16,
                                norm_cfg=dict(type='BN', requires_grad=True))
    return model


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

# Baseline student: DeepLabV3+ MobileNetV2-D8, PASCAL VOC 2012 aug (backbone and
# head channels of mmseg's mobilenet-v2-d8_deeplabv3plus recipes, with the VOC
# data, schedule and 21 classes of the R-101 teacher); the student of
# configs/london/*_mobilenet-v2-d8_*.
_base_ = './deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py'

model = dict(
    pretrained='mmcls://mobilenet_v2',
    backbone=dict(
        _delete_=True,
        type='MobileNetV2',
        widen_factor=1.,
        strides=(1, 2, 2, 1, 1, 1, 1),
        dilations=(1, 1, 1, 2, 2, 4, 4),
        out_indices=(1, 2, 4, 6),
        norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(in_channels=320, c1_in_channels=24),
    auxiliary_head=dict(in_channels=96))

# atomic checkpoints with SHA-256 sidecars (docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

# Baseline student: Faster R-CNN R-18 FPN, PASCAL VOC 07+12 (stock mmdet VOC
# recipe, depth 18, ImageNet init); the student of configs/london/*faster-rcnn*.
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

model = dict(
    backbone=dict(
        depth=18,
        init_cfg=dict(type='Pretrained',
                      checkpoint='torchvision://resnet18')),
    neck=dict(in_channels=[64, 128, 256, 512]))

# atomic checkpoints with SHA-256 sidecars (docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

# Teacher: Faster R-CNN R-101 FPN, PASCAL VOC 07+12 (stock mmdet VOC recipe,
# depth 101, ImageNet init). Teacher of configs/london/*faster-rcnn*.
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained',
                      checkpoint='torchvision://resnet101')))

# atomic checkpoints with SHA-256 sidecars (docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

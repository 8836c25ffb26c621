# Faster R-CNN R-18 FPN on PASCAL VOC 07+12 -- BASELINE student (no
# distillation); also the student definition of the distillation configs.
#
# Data:     data/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}
#           data/VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}
#           train: VOC2007 trainval + VOC2012 trainval (x3, RepeatDataset);
#           val/test: VOC2007 test, mAP@0.5 ('11points').
# Schedule: 4 epochs over the 3x repeated set (= 12 epochs, "1x"), SGD lr
#           0.01, step at epoch 3; 8 GPUs x 2 images (as the stock
#           mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py).
# Init:     ImageNet torchvision://resnet18 (downloaded on first use).
#   bash tools/dist_train.sh configs/detection/faster-rcnn_r18_fpn_8xb2-1x_voc0712.py 8
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

model = dict(
    backbone=dict(
        depth=18,
        init_cfg=dict(type='Pretrained',
                      checkpoint='torchvision://resnet18')),
    neck=dict(in_channels=[64, 128, 256, 512]))

# crash-safe checkpoints (mmlckd.SafeCheckpointHook): atomic writes, SHA-256
# sidecars, old checkpoints deleted only after the new one is complete, and
# no NaN/Inf state ever saved; the stock hook's interval etc. are kept
custom_imports = dict(imports=['mmlckd'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

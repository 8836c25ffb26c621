# RetinaNet R-101 FPN on PASCAL VOC 07+12 -- TEACHER of the LONDON
# detection recipes in this folder.
#
# Data:     data/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}
#           data/VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}
#           train: VOC2007 trainval + VOC2012 trainval (x3, RepeatDataset);
#           val/test: VOC2007 test, mAP@0.5 ('11points'), as the stock
#           mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py.
# Schedule: 4 epochs over the 3x repeated set (= 12 epochs, "1x"), SGD lr
#           0.01, step at epoch 3; 8 GPUs x 2 images (lr is for batch 16;
#           use --auto-scale-lr on another total batch).
# Init:     ImageNet torchvision://resnet101 (downloaded on first use).
# Output:   work_dirs/retinanet_r101_fpn_8xb2-1x_voc0712/epoch_4.pth, the
#           teacher checkpoint of london_/ofd_retinanet_r101_r18_fpn_*.py.
#   bash tools/dist_train.sh configs/detection/retinanet_r101_fpn_8xb2-1x_voc0712.py 8
_base_ = 'mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py'

model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained',
                      checkpoint='torchvision://resnet101')))

# crash-safe checkpoints (mmlckd.SafeCheckpointHook): atomic writes, SHA-256
# sidecars, old checkpoints deleted only after the new one is complete, and
# no NaN/Inf state ever saved; the stock hook's interval etc. are kept
custom_imports = dict(imports=['mmlckd'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

# DeepLabV3+ MobileNetV2-D8 on PASCAL VOC 2012 aug -- BASELINE student (no
# distillation); also the student definition of the MobileNetV2
# distillation configs. Backbone and head channels as mmseg's stock
# mobilenet-v2-d8_deeplabv3plus_* recipes (ADE20K / Cityscapes), with the
# VOC data, schedule and 21 classes of the R-101 teacher config.
#
# Data:     data/VOCdevkit/VOC2012/JPEGImages, SegmentationClass, SegmentationClassAug
#           and ImageSets/Segmentation/{train,aug,val}.txt (SegmentationClassAug
#           and aug.txt: SBD converted by mmseg's
#           tools/dataset_converters/voc_aug.py). train: train + aug
#           ("train_aug", 10582 images); val/test: VOC2012 val (1449 images),
#           single-scale mIoU, as mmseg::_base_/datasets/pascal_voc12_aug.py.
# Schedule: 40k iterations, 4 GPUs x 4 images (512x512 crops), SGD lr 0.01
#           poly, as the stock
#           mmseg::deeplabv3plus/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py.
# Init:     ImageNet mmcls://mobilenet_v2 (downloaded on first use).
#   bash tools/dist_train.sh configs/segmentation/mobilenet-v2-d8_deeplabv3plus_4xb4-40k_voc12aug-512x512.py 4
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

# crash-safe checkpoints (mmlckd.SafeCheckpointHook): atomic writes, SHA-256
# sidecars, old checkpoints deleted only after the new one is complete, and
# no NaN/Inf state ever saved; the stock hook's interval etc. are kept
custom_imports = dict(imports=['mmlckd'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

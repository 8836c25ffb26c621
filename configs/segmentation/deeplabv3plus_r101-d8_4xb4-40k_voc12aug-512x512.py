# DeepLabV3+ R-101-D8 on PASCAL VOC 2012 aug -- TEACHER of the LONDON
# segmentation recipes in this folder (the stock mmseg recipe, unchanged).
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
# Init:     ImageNet open-mmlab://resnet101_v1c (downloaded on first use).
# Output:   work_dirs/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512/iter_40000.pth,
#           the teacher checkpoint of london_/ofd_deeplabv3plus_r101-d8_*.py.
#   bash tools/dist_train.sh configs/segmentation/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py 4
_base_ = 'mmseg::deeplabv3plus/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py'

# crash-safe checkpoints (mmlckd.SafeCheckpointHook): atomic writes, SHA-256
# sidecars, old checkpoints deleted only after the new one is complete, and
# no NaN/Inf state ever saved; the stock hook's interval etc. are kept
custom_imports = dict(imports=['mmlckd'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

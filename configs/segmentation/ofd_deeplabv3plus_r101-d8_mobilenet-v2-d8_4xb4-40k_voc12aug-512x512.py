# Ablation: OFD only (no Lipschitz term), DeepLabV3+ R-101-D8 -> MobileNetV2-D8 on
# PASCAL VOC 2012 aug: the OFD VOC segmentation setting (6 features,
# divisors [8, 4, 2, 1, 1, 16], sum/B * 1e-5). Identical to
# london_deeplabv3plus_r101-d8_mobilenet-v2-d8_4xb4-40k_voc12aug-512x512.py (data,
# schedule, teacher checkpoint, features) except lipschitz_loss=None.
#
# Data:     data/VOCdevkit/VOC2012 (train_aug), VOC2012 val mIoU.
# Schedule: 40k iterations, 4 GPUs x 4 images (512x512 crops).
# Teacher:  work_dirs/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512/iter_40000.pth
#           (train deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py first)
#           or --cfg-options model.teacher.checkpoint=<path>.
#   bash tools/dist_train.sh configs/segmentation/ofd_deeplabv3plus_r101-d8_mobilenet-v2-d8_4xb4-40k_voc12aug-512x512.py 4
_base_ = './london_deeplabv3plus_r101-d8_mobilenet-v2-d8_4xb4-40k_voc12aug-512x512.py'

model = dict(lipschitz_loss=None)

# Ablation: OFD only (no Lipschitz term), RetinaNet R-101 FPN -> R-18 FPN on
# PASCAL VOC 07+12. Identical to london_retinanet_r101_r18_fpn_8xb2-1x_voc0712.py
# (data, schedule, teacher checkpoint, features, OFD weight) except
# lipschitz_loss=None, so the difference to it is the LONDON term alone.
#
# Data:     data/VOCdevkit/VOC2007 + VOC2012 (trainval x3), VOC2007 test.
# Schedule: 4 epochs over the 3x repeated set (= 12 epochs); 8 GPUs x 2.
# Teacher:  work_dirs/retinanet_r101_fpn_8xb2-1x_voc0712/epoch_4.pth (train
#           retinanet_r101_fpn_8xb2-1x_voc0712.py first) or
#           --cfg-options model.teacher.checkpoint=<path>.
#   bash tools/dist_train.sh configs/detection/ofd_retinanet_r101_r18_fpn_8xb2-1x_voc0712.py 8
_base_ = './london_retinanet_r101_r18_fpn_8xb2-1x_voc0712.py'

model = dict(lipschitz_loss=None)

# LONDON: Faster R-CNN R-101 FPN (teacher) -> R-18 FPN (student) on PASCAL VOC
# 07+12 (Lipschitz term + OFD feature mimicking, as in the LONDON reference).
#
# Data:     data/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}
#           data/VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}
#           train: VOC2007 trainval + VOC2012 trainval (x3, RepeatDataset);
#           val/test: VOC2007 test, mAP@0.5 ('11points').
# Schedule: the student baseline's (faster-rcnn_r18_fpn_8xb2-1x_voc0712.py):
#           4 epochs over the 3x repeated set (= 12 epochs), SGD lr 0.01,
#           step at epoch 3; 8 GPUs x 2 images.
# Teacher:  train faster-rcnn_r101_fpn_8xb2-1x_voc0712.py first; its last
#           checkpoint is expected at
#           work_dirs/faster-rcnn_r101_fpn_8xb2-1x_voc0712/epoch_4.pth, or pass
#           --cfg-options model.teacher.checkpoint=<path>. Config.fromfile of
#           this file does not need the checkpoint; building the model does.
# Features: the pre-ReLU outputs of the 4 backbone stages (layer1..layer4) of
#           both nets (features='backbone'), as in the LONDON/OFD ImageNet
#           reference; student stages are mapped to the teacher's channels by
#           1x1 conv + BN connectors.
# Output:   work_dirs/<this config>/epoch_4.pth (student + connectors, no
#           teacher) and student_final.pth (student only, for the plain
#           student config and stock mmdet tools).
#   bash tools/dist_train.sh configs/detection/london_faster-rcnn_r101_r18_fpn_8xb2-1x_voc0712.py 8
_base_ = [
    './faster-rcnn_r18_fpn_8xb2-1x_voc0712.py',
    '../_base_/london_voc0712_detection.py'
]

student = _base_.model
model = dict(
    _delete_=True,
    type='mmlckd.LipschitzDistiller',
    student=student,
    teacher=dict(
        # relative to the repository root (run the tools from there)
        config='configs/detection/faster-rcnn_r101_fpn_8xb2-1x_voc0712.py',
        checkpoint='work_dirs/faster-rcnn_r101_fpn_8xb2-1x_voc0712/epoch_4.pth'),
    features='backbone',
    # weights: see configs/_base_/london_voc0712_detection.py (our choice,
    # no published detection weights)
    lipschitz_loss=_base_.london_lipschitz_loss,
    feature_loss=_base_.london_feature_loss)

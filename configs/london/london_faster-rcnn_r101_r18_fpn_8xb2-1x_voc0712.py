# LONDON: Faster R-CNN R-101 FPN (teacher) -> R-18 FPN (student), PASCAL VOC
# 07+12; Lipschitz term + OFD feature mimic on the pre-ReLU outputs of the 4
# backbone stages. Data, schedule, teacher first: configs/README.md.
_base_ = [
    '../baselines/faster-rcnn_r18_fpn_8xb2-1x_voc0712.py',
    '../_base_/distill/london_voc0712_detection.py'
]

__student = _base_.model  # "__": mmengine keeps it out of the config (no second copy of the model)
model = dict(
    _delete_=True,
    type='mmlckd.LipschitzDistiller',
    student=__student,
    teacher=dict(
        config='{{ fileDirname }}/../baselines/'
        'faster-rcnn_r101_fpn_8xb2-1x_voc0712.py',
        # or --cfg-options model.teacher.checkpoint=<path>
        checkpoint='work_dirs/faster-rcnn_r101_fpn_8xb2-1x_voc0712/epoch_4.pth'),
    features='backbone',
    lipschitz_loss=_base_.london_lipschitz_loss,
    feature_loss=_base_.london_feature_loss)

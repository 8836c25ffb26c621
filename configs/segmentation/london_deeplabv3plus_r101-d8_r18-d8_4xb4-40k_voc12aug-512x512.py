# LONDON: DeepLabV3+ R-101-D8 (teacher) -> DeepLabV3+ R-18-D8 (student) on
# PASCAL VOC 2012 aug (Lipschitz term + OFD feature mimicking).
#
# Data:     data/VOCdevkit/VOC2012/JPEGImages, SegmentationClass, SegmentationClassAug
#           and ImageSets/Segmentation/{train,aug,val}.txt (train_aug for
#           training, VOC2012 val for single-scale mIoU).
# Schedule: the student baseline's (deeplabv3plus_r18-d8_4xb4-40k_voc12aug-512x512.py):
#           40k iterations, 4 GPUs x 4 images (512x512 crops), SGD lr 0.01
#           poly; the connectors get 10x the lr (as in the OFD reference).
# Teacher:  train deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py first;
#           its last checkpoint is expected at
#           work_dirs/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512/iter_40000.pth,
#           or pass --cfg-options model.teacher.checkpoint=<path>.
#           Config.fromfile of this file does not need the checkpoint;
#           building the model does.
# Features: the six pre-ReLU features of the OFD VOC segmentation setting:
#           the 4 backbone stages, the ASPP output (mmseg's
#           decode_head.bottleneck: 3x3 conv + BN over the concatenated ASPP
#           branches, recorded at the input of its ReLU) and the decoder
#           output (decode_head.sep_bottleneck.1: the last conv + BN before
#           conv_seg, input of its ReLU). Teacher margins come from the BN
#           before each ReLU. The Lipschitz term chains the 4 backbone stages
#           (group 'backbone', as in LONDON); the ASPP and decoder features
#           are OFD-only (group=None, so the Lipschitz term
#           skips them).
# Output:   work_dirs/<this config>/iter_40000.pth (student + connectors, no
#           teacher) and student_final.pth (student only, for the plain
#           student config and stock mmseg tools).
#   bash tools/dist_train.sh configs/segmentation/london_deeplabv3plus_r101-d8_r18-d8_4xb4-40k_voc12aug-512x512.py 4
_base_ = [
    './deeplabv3plus_r18-d8_4xb4-40k_voc12aug-512x512.py',
    '../_base_/london_voc12aug_segmentation.py'
]

student = _base_.model
model = dict(
    _delete_=True,
    type='mmlckd.LipschitzDistiller',
    student=student,
    teacher=dict(
        # relative to the repository root (run the tools from there)
        config='configs/segmentation/'
        'deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py',
        checkpoint='work_dirs/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512/'
        'iter_40000.pth'),
    features=[
        # backbone stages 1-4 (teacher: input of the last block's final ReLU)
        dict(student=dict(path='backbone.layer1.1.relu', source='input'),
             teacher=dict(path='backbone.layer1.2.relu', source='input'),
             teacher_bn='backbone.layer1.2.bn3', group='backbone'),
        dict(student=dict(path='backbone.layer2.1.relu', source='input'),
             teacher=dict(path='backbone.layer2.3.relu', source='input'),
             teacher_bn='backbone.layer2.3.bn3', group='backbone'),
        dict(student=dict(path='backbone.layer3.1.relu', source='input'),
             teacher=dict(path='backbone.layer3.22.relu', source='input'),
             teacher_bn='backbone.layer3.22.bn3', group='backbone'),
        dict(student=dict(path='backbone.layer4.1.relu', source='input'),
             teacher=dict(path='backbone.layer4.2.relu', source='input'),
             teacher_bn='backbone.layer4.2.bn3', group='backbone'),
        # ASPP output (conv + BN, before ReLU)
        dict(student=dict(path='decode_head.bottleneck.activate',
                          source='input'),
             teacher=dict(path='decode_head.bottleneck.activate',
                          source='input'),
             teacher_bn='decode_head.bottleneck.bn', group=None),
        # decoder output (last conv + BN before the classifier, before ReLU)
        dict(student=dict(
                 path='decode_head.sep_bottleneck.1.pointwise_conv.activate',
                 source='input'),
             teacher=dict(
                 path='decode_head.sep_bottleneck.1.pointwise_conv.activate',
                 source='input'),
             teacher_bn='decode_head.sep_bottleneck.1.pointwise_conv.bn',
             group=None),
    ],
    # weights: see configs/_base_/london_voc12aug_segmentation.py
    lipschitz_loss=_base_.london_lipschitz_loss,
    feature_loss=_base_.london_feature_loss)

# OFD reference: connectors at 10x lr (the student keeps the baseline's lr)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'connectors': dict(lr_mult=10.0)}))

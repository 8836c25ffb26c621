# LONDON: DeepLabV3+ R-101-D8 (teacher) -> MobileNetV2-D8 (student), PASCAL
# VOC 2012 aug; Lipschitz term + OFD feature mimic on the six pre-ReLU
# features of the OFD VOC setting. Data, schedule, teacher first:
# configs/README.md.
_base_ = [
    '../baselines/mobilenet-v2-d8_deeplabv3plus_4xb4-40k_voc12aug-512x512.py',
    '../_base_/distill/london_voc12aug_segmentation.py'
]

__student = _base_.model  # "__": mmengine keeps it out of the config (no second copy of the model)
model = dict(
    _delete_=True,
    type='mmlckd.LipschitzDistiller',
    student=__student,
    teacher=_base_.london_teacher,
    # backbone stages 1-4; student: MobileNetV2 layer2/3/5/7 (out_indices 1,
    # 2, 4, 6), whose inverted residuals end linearly (pre-activation); then
    # the ASPP and decoder outputs of the base
    features=[
        dict(student='backbone.layer2',
             teacher=dict(path='backbone.layer1.2.relu', source='input'),
             teacher_bn='backbone.layer1.2.bn3', group='backbone'),
        dict(student='backbone.layer3',
             teacher=dict(path='backbone.layer2.3.relu', source='input'),
             teacher_bn='backbone.layer2.3.bn3', group='backbone'),
        dict(student='backbone.layer5',
             teacher=dict(path='backbone.layer3.22.relu', source='input'),
             teacher_bn='backbone.layer3.22.bn3', group='backbone'),
        dict(student='backbone.layer7',
             teacher=dict(path='backbone.layer4.2.relu', source='input'),
             teacher_bn='backbone.layer4.2.bn3', group='backbone'),
    ] + _base_.london_head_features,
    lipschitz_loss=_base_.london_lipschitz_loss,
    feature_loss=_base_.london_feature_loss,
    terms=_base_.london_terms)

# connectors at 10x lr as in the OFD reference (the student keeps its lr)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'connectors': dict(lr_mult=10.0)}))

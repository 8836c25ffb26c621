# Demo student (baseline): the teacher's detector at reduced width -- a
# quarter-width ResNet-18 (base_channels=16: stages 16/32/64/128 channels)
# and a 32-channel FPN and head (GN with 8 groups) instead of 64. Same data,
# schedule, anchors and seed as the teacher. Why the narrower head:
# docs/demo/configs.md.
_base_ = ['./retinanet_r18w32_synvoc_teacher.py']

backbone_channels = 16
model = dict(
    backbone=dict(base_channels=backbone_channels),
    neck=dict(
        in_channels=[backbone_channels * 2**i for i in range(4)],
        out_channels=32),
    bbox_head=dict(
        in_channels=32,
        feat_channels=32,
        norm_cfg=dict(type='GN', num_groups=8, requires_grad=True)))

# Segmentation demo student (baseline): the teacher's FCN with a
# quarter-width ResNet-18-V1c (stem and base 16 channels: 16/32/64/128).
_base_ = ['./fcn_r18w32_synvoc_teacher.py']

backbone_channels = 16
model = dict(
    backbone=dict(
        stem_channels=backbone_channels, base_channels=backbone_channels),
    decode_head=dict(in_channels=backbone_channels * 8))

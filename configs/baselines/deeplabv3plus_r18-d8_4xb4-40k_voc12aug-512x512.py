# Baseline student: DeepLabV3+ R-18-D8, PASCAL VOC 2012 aug (head widths of
# mmseg's R-18-D8 DeepLabV3+ recipes); the student of configs/london/*_r18-d8_*.
_base_ = 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-40k_voc12aug-512x512.py'

model = dict(
    pretrained='open-mmlab://resnet18_v1c',
    backbone=dict(depth=18),
    decode_head=dict(
        c1_in_channels=64,
        c1_channels=12,
        in_channels=512,
        channels=128,
    ),
    auxiliary_head=dict(in_channels=256, channels=64))

# atomic checkpoints with SHA-256 sidecars (docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

# Teacher: DeepLabV3+ R-101-D8, PASCAL VOC 2012 aug (the stock mmseg recipe,
# unchanged). Teacher of configs/london/*deeplabv3plus*.
_base_ = 'mmseg::deeplabv3plus/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py'

# atomic checkpoints with SHA-256 sidecars (docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='mmlckd.SafeCheckpointHook'))

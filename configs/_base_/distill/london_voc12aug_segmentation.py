# LONDON settings shared by the PASCAL VOC 2012 aug segmentation recipes
# (configs/london/*_voc12aug-512x512.py): teacher, the two OFD-only head
# features, loss weights and hooks. Not runnable alone:
# a recipe lists it in `_base_` next to its baseline student config.

# The DeepLabV3+ R-101-D8 teacher; train it first (configs/README.md).
london_teacher = dict(
    config='{{ fileDirname }}/../../baselines/'
    'deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py',
    checkpoint='work_dirs/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512/'
    'iter_40000.pth')

# Features 5 and 6 of the OFD VOC setting, the same modules in teacher and
# student: the ASPP output and the decoder output (conv + BN, recorded at
# the input of their ReLU). OFD-only: group=None keeps them out of the
# Lipschitz chain, which runs over the 4 backbone stages of each recipe.
london_head_features = [
    dict(student=dict(path='decode_head.bottleneck.activate',
                      source='input'),
         teacher=dict(path='decode_head.bottleneck.activate',
                      source='input'),
         teacher_bn='decode_head.bottleneck.bn', group=None),
    dict(student=dict(
             path='decode_head.sep_bottleneck.1.pointwise_conv.activate',
             source='input'),
         teacher=dict(
             path='decode_head.sep_bottleneck.1.pointwise_conv.activate',
             source='input'),
         teacher_bn='decode_head.sep_bottleneck.1.pointwise_conv.bn',
         group=None),
]

# Explicit weights (without them the distiller balances the terms itself);
# how they follow from the published settings: configs/london/README.md,
# "Loss weights". Lipschitz: 0.2 / b with b = 4 images per GPU. OFD: the
# reference's divisors [8, 4, 2, 1, 1, 16] of the six features.
london_lipschitz_loss = dict(type='mmlckd.LipschitzLoss', loss_weight=0.05)
# the task-aware term of a segmentor (prediction KD on decode_head.conv_seg),
# with an explicit weight: it has no connector, so during the recipe's
# connector warm-up it sends the student no gradient and the balancer could
# not calibrate it then. KL x T^2 per pixel at weight 1, as Hinton's KD.
london_terms = dict(preds=dict(type='mmlckd.PredictionKDTerm',
                               distance='kl', loss_weight=1.0))
london_feature_loss = dict(
    type='mmlckd.OFDLoss',
    loss_weight=1e-5,
    feat_weights=[1 / 8, 1 / 4, 1 / 2, 1, 1, 1 / 16])

custom_hooks = [
    # per-block sigma_s / sigma_t / ratio -> <work_dir>/lipschitz.jsonl
    dict(type='mmlckd.LipschitzMonitorHook', interval=50),
    # logs train/distill_weight (constant 1 here)
    dict(type='mmlckd.DistillWeightHook'),
    # the OFD reference trains only the connectors for one train_aug epoch
    # (10582 images / 16 = 661 iterations); here the distillation losses
    # train only the connectors that long, the student already learns
    dict(type='mmlckd.ConnectorWarmupHook', iters=661),
    # stops before training if the teacher scores < 5% mIoU on VOC12 val
    # (missing or wrong checkpoint); remove it to skip the check
    dict(type='mmlckd.TeacherSanityCheckHook', min_score=0.05,
         metric='mIoU'),
    # <work_dir>/student_final.pth, loadable with the plain student config
    dict(type='mmlckd.StudentExportHook'),
]


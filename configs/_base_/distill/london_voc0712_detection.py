# LONDON settings shared by the PASCAL VOC 07+12 detection recipes
# (configs/london/*_voc0712.py). Not runnable alone: a recipe lists it in
# `_base_` next to its baseline student config.

# Explicit weights (without them the distiller balances the terms itself);
# how they follow from the published settings: configs/london/README.md,
# "Loss weights". Lipschitz: 0.2 / b with b = 2 images per GPU.
london_lipschitz_loss = dict(type='mmlckd.LipschitzLoss', loss_weight=0.1)
london_feature_loss = dict(type='mmlckd.OFDLoss', loss_weight=1e-5)

custom_hooks = [
    # per-block sigma_s / sigma_t / ratio -> <work_dir>/lipschitz.jsonl
    dict(type='mmlckd.LipschitzMonitorHook', interval=50),
    # the stock VOC schedules have no lr warm-up and the connectors start
    # at random: the distillation terms ramp in over 500 iterations
    dict(type='mmlckd.DistillWeightHook', warmup=500, warmup_ratio=0.0),
    # stops before training if the teacher scores < 5% mAP on VOC07 test
    # (missing or wrong checkpoint); remove it to skip the check
    dict(type='mmlckd.TeacherSanityCheckHook', min_score=0.05,
         metric='pascal_voc/mAP'),
    # <work_dir>/student_final.pth, loadable with the plain student config
    dict(type='mmlckd.StudentExportHook'),
]

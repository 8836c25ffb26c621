# Shared LONDON settings of the PASCAL VOC 07+12 detection recipes
# (configs/detection/london_*.py and ofd_*.py). Not a runnable config: it
# holds no model or data; a distillation config lists it in `_base_` next to
# its student config.
# custom_imports (mmlckd) comes with the student config, which uses
# mmlckd.SafeCheckpointHook (mmengine refuses a key defined in two bases).

# Loss weights. These recipes reproduce the reference's weighting, so they
# set explicit numbers (without them the distiller balances the terms
# automatically). LONDON's and OFD's detection weights are not published;
# these are derived from the published settings:
# * Lipschitz term: the LONDON ImageNet script adds
#   alpha * loss.sum() / B / 1e4 with alpha = 2000, where .sum() adds the
#   batch-mean MSE of each of its G DataParallel replicas and B = G * b is
#   the total batch. Under DDP (gradients averaged over the G ranks) the
#   same gradient is loss_weight = alpha / (b * 1e4) = 0.2 / b per rank,
#   with LipschitzLoss's block_weights='reference' (the reference's pair
#   weights 1 / 2 ** (N - 1 - i), deepest pair 1/2). Here b = 2 images per
#   GPU, so 0.1.
# * OFD term: OFDLoss is already the per-image sum (sum / B). The ImageNet
#   reference weighs it 1e-4 (224 px), the VOC segmentation reference 1e-5
#   (513 px crops). At 1000x600 the four R-101 stages hold about as many
#   (level-weighted) activations per image as the VOC segmentation setting,
#   so we use 1e-5.
london_lipschitz_loss = dict(type='mmlckd.LipschitzLoss', loss_weight=0.1)
london_feature_loss = dict(type='mmlckd.OFDLoss', loss_weight=1e-5)

custom_hooks = [
    # per-block sigma_s / sigma_t / ratio history -> <work_dir>/lipschitz.jsonl
    dict(type='mmlckd.LipschitzMonitorHook', interval=50),
    # The stock VOC schedules have no lr warm-up and the connectors start at
    # random, so the distillation terms are ramped in linearly over the
    # first 500 iterations (our choice).
    dict(type='mmlckd.DistillWeightHook', warmup=500, warmup_ratio=0.0),
    # Evaluates the teacher on VOC07 test before training and stops if its
    # mAP is < 0.05 (wrong / missing checkpoint). Remove it to skip the check.
    dict(type='mmlckd.TeacherSanityCheckHook', min_score=0.05,
         metric='pascal_voc/mAP'),
    # <work_dir>/student_final.pth: the student alone, loadable with the
    # plain student config (tools/train.py adds this hook anyway).
    dict(type='mmlckd.StudentExportHook'),
]

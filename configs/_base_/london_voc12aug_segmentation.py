# Shared LONDON settings of the PASCAL VOC 2012 (aug) segmentation recipes
# (configs/segmentation/london_*.py and ofd_*.py). Not a runnable config: it
# holds no model or data; a distillation config lists it in `_base_` next to
# its student config.
# custom_imports (mmlckd) comes with the student config, which uses
# mmlckd.SafeCheckpointHook (mmengine refuses a key defined in two bases).

# Loss weights (explicit: these recipes reproduce the reference's weighting;
# without them the distiller balances the terms automatically).
# * OFD term -- from the OFD VOC segmentation reference: CE + sum/B * 1e-5,
#   the six distilled features divided by [8, 4, 2, 1, 1, 16] (backbone
#   stages 1-4, ASPP output, decoder output). OFDLoss already returns sum/B,
#   so loss_weight=1e-5 and feat_weights=[1/8, 1/4, 1/2, 1, 1, 1/16].
#   (The reference runs output stride 16; these recipes keep mmseg's stock
#   D8 models, whose last two stages and ASPP have 4x more positions, so the
#   term is somewhat larger than in the reference at the same weight.)
# * Lipschitz term -- LONDON's segmentation weight is not published; we
#   derive it from the ImageNet script, alpha * loss.sum() / B / 1e4 with
#   alpha = 2000, .sum() over the G DataParallel replicas' batch-mean MSEs
#   and B = G * b the total batch: under DDP the same gradient is
#   loss_weight = alpha / (b * 1e4) = 0.2 / b per rank with the reference
#   pair weights (block_weights='reference', deepest pair 1/2). Here b = 4
#   images per GPU, so 0.05.
london_lipschitz_loss = dict(type='mmlckd.LipschitzLoss', loss_weight=0.05)
london_feature_loss = dict(
    type='mmlckd.OFDLoss',
    loss_weight=1e-5,
    feat_weights=[1 / 8, 1 / 4, 1 / 2, 1, 1, 1 / 16])

custom_hooks = [
    # per-block sigma_s / sigma_t / ratio history -> <work_dir>/lipschitz.jsonl
    dict(type='mmlckd.LipschitzMonitorHook', interval=50),
    # The OFD reference trains only the connectors during the first epoch
    # (10582 train_aug images / 16 = 661 iterations). Here the distillation
    # losses train only the connectors for those iterations, while the
    # student already learns from its task loss (it is not frozen).
    dict(type='mmlckd.DistillWeightHook', connector_warmup=661),
    # Evaluates the teacher on VOC12 val before training and stops if its
    # mIoU is < 5 (wrong / missing checkpoint). Remove it to skip the check.
    dict(type='mmlckd.TeacherSanityCheckHook', min_score=0.05,
         metric='mIoU'),
    # <work_dir>/student_final.pth: the student alone, loadable with the
    # plain student config (tools/train.py adds this hook anyway).
    dict(type='mmlckd.StudentExportHook'),
]

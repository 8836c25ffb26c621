# Demo distilled student: the baseline student of
# retinanet_r18w16_synvoc_student.py trained by mmlckd.LipschitzDistiller
# with the demo teacher (retinanet_r18w32_synvoc_teacher.py) frozen.
#
# Distilled features: the pre-ReLU outputs of the four backbone stages of
# both nets (the distiller's default); the student's go through OFD
# connectors (1x1 conv + BN, 16/32/64/128 -> 32/64/128/256 channels).
#
# tools/demo.py trains the teacher first and sets teacher.checkpoint. The
# default below is where `python tools/demo.py` leaves the seed-0 teacher, so
# after a demo run this file also trains alone:
#   python tools/train.py configs/demo/retinanet_r18w16_synvoc_london.py
_base_ = ['./retinanet_r18w16_synvoc_student.py']

student = _base_.model
model = dict(
    _delete_=True,
    type='mmlckd.LipschitzDistiller',
    student=student,
    teacher=dict(
        config='{{ fileDirname }}/retinanet_r18w32_synvoc_teacher.py',
        checkpoint='work_dirs/demo/det/seed0/teacher/iter_600.pth'),
    features='backbone',
    # Loss weights. The reference ones (OFD 1e-4, LONDON 0.2 per batch) are
    # for ImageNet-scale ResNet features; here they are rescaled so that
    # each distillation term starts at about the size of the task loss.
    # Measured with loss_weight=1 at iteration 0 (random student, a trained
    # 600-iteration demo teacher, 3 batches of 8): task loss (focal + L1)
    # ~2.0, OFD partial-L2 sum ~2.3e4, LONDON MSE of the per-block sigmas
    # ~1.0e3-2.2e3 (student sigmas ~17/28/50 vs teacher ~16/22/29). Hence
    # 5e-5 (OFD ~1.2) and 1e-3 (LONDON ~1.0-2.2). Fixed before any
    # distilled student was evaluated; not tuned on the test split.
    lipschitz_loss=dict(type='mmlckd.LipschitzLoss', loss_weight=1e-3),
    feature_loss=dict(type='mmlckd.OFDLoss', loss_weight=5e-5),
    probe_input_size=(128, 128))

custom_hooks = [
    dict(type='mmlckd.LipschitzMonitorHook', interval=5),
    dict(type='mmlckd.StudentExportHook'),
]

# Demo distilled student: the baseline student of
# retinanet_r18w16_synvoc_student.py trained by mmlckd.LipschitzDistiller
# with the demo teacher (retinanet_r18w32_synvoc_teacher.py) frozen.
#
# Distilled features: the pre-ReLU outputs of the four backbone stages of
# both nets (the distiller's default); the student's go through OFD
# connectors (1x1 conv + BN, 16/32/64/128 -> 32/64/128/256 channels).
#
# python -m demo trains the teacher first and sets teacher.checkpoint. The
# default below is where `python -m demo` leaves the seed-0 teacher, so
# after a demo run this file also trains alone:
#   python tools/train.py configs/demo/retinanet_r18w16_synvoc_london.py
_base_ = ['./retinanet_r18w16_synvoc_student.py']

__student = _base_.model  # "__": mmengine keeps it out of the config (no second copy of the model)
model = dict(
    _delete_=True,
    type='mmlckd.LipschitzDistiller',
    student=__student,
    teacher=dict(
        config='{{ fileDirname }}/retinanet_r18w32_synvoc_teacher.py',
        checkpoint='work_dirs/demo/det/seed0/teacher/iter_600.pth'),
    features='backbone',
    # no loss_weight: balanced automatically (README, "Loss weights")
    lipschitz_loss=dict(type='mmlckd.LipschitzLoss'),
    feature_loss=dict(type='mmlckd.OFDLoss'),
    probe_input_size=(128, 128))

custom_hooks = [
    dict(type='mmlckd.LipschitzMonitorHook', interval=5),
    dict(type='mmlckd.StudentExportHook'),
]

# Segmentation demo distilled student: fcn_r18w16_synvoc_student.py trained
# by mmlckd.LipschitzDistiller with the frozen fcn_r18w32_synvoc_teacher.py
# (pre-ReLU outputs of the four backbone stages, OFD connectors).
# python -m demo sets teacher.checkpoint.
_base_ = ['./fcn_r18w16_synvoc_student.py']

__student = _base_.model  # "__": mmengine keeps it out of the config (no second copy of the model)
model = dict(
    _delete_=True,
    type='mmlckd.LipschitzDistiller',
    student=__student,
    teacher=dict(
        config='{{ fileDirname }}/fcn_r18w32_synvoc_teacher.py',
        checkpoint='work_dirs/demo/seg/seed0/teacher/iter_400.pth'),
    features='backbone',
    # no loss_weight: balanced automatically (README, "Loss weights")
    lipschitz_loss=dict(type='mmlckd.LipschitzLoss'),
    feature_loss=dict(type='mmlckd.OFDLoss'),
    probe_input_size=(128, 128))

custom_hooks = [
    dict(type='mmlckd.LipschitzMonitorHook', interval=5),
    dict(type='mmlckd.StudentExportHook'),
]

from .distill_weight_hook import DistillWeightHook
from .lipschitz_monitor_hook import LipschitzMonitorHook
from .safe_checkpoint_hook import SafeCheckpointHook
from .student_export_hook import StudentExportHook
from .teacher_check_hook import TeacherSanityCheckHook

__all__ = [
    'DistillWeightHook', 'LipschitzMonitorHook', 'SafeCheckpointHook',
    'StudentExportHook', 'TeacherSanityCheckHook'
]

from .connector_warmup_hook import ConnectorWarmupHook
from .distill_weight_hook import DistillWeightHook
from .lipschitz_monitor_hook import LipschitzMonitorHook
from .safe_checkpoint_hook import SafeCheckpointHook
from .student_export_hook import StudentExportHook
from .teacher_check_hook import TeacherSanityCheckHook

__all__ = [
    'ConnectorWarmupHook', 'DistillWeightHook', 'LipschitzMonitorHook',
    'SafeCheckpointHook', 'StudentExportHook', 'TeacherSanityCheckHook'
]

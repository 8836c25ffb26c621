"""What the end-to-end demo trains: one :class:`DemoTask` per task.

The models live in real config files under ``configs/demo/`` (they also run
with ``tools/train.py``); the demo only overrides paths, seed and schedule.
"""
import os.path as osp
from dataclasses import dataclass
from typing import Dict

from mmlckd.testing import VOC_CLASSES

__all__ = ['DemoTask', 'TASKS', 'DATA_FULL', 'DATA_QUICK', 'config_dir']

#: Synthetic VOC used by the default run (one dataset for both tasks): all
#: 20 VOC classes (20 colours, 5 shapes; classes sharing a shape whose hues
#: are 36 degrees apart make classification non-trivial), up to 6 objects per
#: 96..128 px image. Detection trains on VOC07 trainval + VOC12 trainval (640
#: images) and is tested on VOC07 test (192); segmentation trains on VOC12
#: train + SBD-style aug (256) and is tested on VOC12 val (64). With 5
#: classes and 4 objects the task saturated (teacher 92 vs student 91 mAP).
DATA_FULL = dict(
    num_trainval_07=320,
    num_test_07=192,
    num_trainval_12=320,
    num_val_12=64,
    img_size=dict(min=96, max=128),
    classes=VOC_CLASSES,
    seed=0,
    max_objects=6)

#: ``--quick``: a handful of images, same layout and classes.
DATA_QUICK = dict(DATA_FULL, num_trainval_07=8, num_test_07=4,
                  num_trainval_12=12, num_val_12=4)


@dataclass
class DemoTask:
    configs: Dict[str, str]  # role -> file name in configs/demo
    metric_key: str  # key in the test metrics
    metric_name: str  # column title
    metric_scale: float  # multiply to get percent


TASKS = {
    'det':
    DemoTask(
        configs=dict(
            teacher='retinanet_r18w32_synvoc_teacher.py',
            student='retinanet_r18w16_synvoc_student.py',
            london='retinanet_r18w16_synvoc_london.py'),
        metric_key='pascal_voc/mAP',
        metric_name='mAP@0.5 (%)',
        metric_scale=100.0),
    'seg':
    DemoTask(
        configs=dict(
            teacher='fcn_r18w32_synvoc_teacher.py',
            student='fcn_r18w16_synvoc_student.py',
            london='fcn_r18w16_synvoc_london.py'),
        metric_key='mIoU',
        metric_name='mIoU (%)',
        metric_scale=1.0),
}


def config_dir() -> str:
    """``configs/demo`` of the repository that holds this demo."""
    here = osp.dirname(osp.dirname(osp.abspath(__file__)))
    return osp.join(here, 'configs', 'demo')

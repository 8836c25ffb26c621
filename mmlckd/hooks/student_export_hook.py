import os.path as osp

from mmengine.dist import master_only
from mmengine.hooks import Hook

from mmlckd.registry import HOOKS
from .utils import get_distiller


@HOOKS.register_module()
class StudentExportHook(Hook):
    """Writes the student alone at the end of training.

    ``<work_dir>/<filename>`` holds ``{'state_dict': student weights,
    'meta': {...}}`` and loads with the plain student config in stock
    ``mmdet``/``mmseg`` ``tools/test.py``. ``tools/train.py`` adds this hook
    to every distillation run.
    """
    priority = 'VERY_LOW'

    def __init__(self, filename: str = 'student_final.pth'):
        self.filename = filename

    @master_only
    def after_train(self, runner) -> None:
        from mmlckd.apis import save_student
        model = get_distiller(runner, type(self).__name__)
        path = osp.join(runner.work_dir, self.filename)
        save_student(model, path, meta=dict(
            epoch=runner.epoch, iter=runner.iter,
            dataset_meta=getattr(runner.train_dataloader.dataset,
                                 'metainfo', None)))
        runner.logger.info(f'student exported to {path}')

import os.path as osp

from mmengine.dist import master_only
from mmengine.hooks import Hook

from mmlckd.registry import HOOKS
from .paths import check_work_dir_relative
from .utils import get_distiller, refuse_non_finite


@HOOKS.register_module()
class StudentExportHook(Hook):
    """Writes the student alone at the end of training.

    ``<work_dir>/<filename>`` holds ``{'state_dict': student weights,
    'meta': {...}}`` and loads with the plain student config in stock
    ``mmdet``/``mmseg`` ``tools/test.py``. ``tools/train.py`` adds this hook
    to every distillation run. The file is written atomically with a
    SHA-256 sidecar (``<filename>.sha256``); a student holding NaN/Inf is
    not written (an error is logged) unless ``save_non_finite=True``.

    Args:
        filename (str): relative to the work dir, without ``..``.
        save_non_finite (bool): export even a non-finite student.
    """
    priority = 'VERY_LOW'

    def __init__(self, filename: str = 'student_final.pth',
                 save_non_finite: bool = False):
        self.filename = check_work_dir_relative(filename, 'filename',
                                                type(self).__name__)
        self.save_non_finite = save_non_finite

    @master_only
    def after_train(self, runner) -> None:
        from mmlckd.apis import save_student
        model = get_distiller(runner, type(self).__name__)
        path = osp.join(runner.work_dir, self.filename)
        if refuse_non_finite(
                model.student_state_dict(), 'the student', runner.logger,
                self.save_non_finite,
                f'{path} NOT exported. Export an earlier finite checkpoint '
                'with tools/export_student.py, or set save_non_finite=True '
                'on StudentExportHook.'):
            return
        save_student(model, path, meta=dict(
            epoch=runner.epoch, iter=runner.iter,
            dataset_meta=getattr(runner.train_dataloader.dataset,
                                 'metainfo', None)))
        runner.logger.info(f'student exported to {path}')

"""The connector warm-up: the distillation terms first train only the
connectors."""
from mmengine.hooks import Hook

from mmlckd.registry import HOOKS
from .utils import get_distiller


@HOOKS.register_module()
class ConnectorWarmupHook(Hook):
    """During the first ``iters`` steps the distillation terms train the
    connectors only.

    The student's recorded features (and response-KD logits) are detached
    (``distill_to_student = False`` on the distiller), so the student learns
    from its task loss alone while the randomly initialised connectors learn
    to map it into the teacher's feature space. This is OFD's "epoch 0
    trains only the connectors", except that the student is not frozen. It
    is independent of the weight schedule of ``mmlckd.DistillWeightHook``.

    Args:
        iters (int): warm-up length, in iterations (or epochs with
            ``by_epoch=True``).
        by_epoch (bool): count epochs instead of iterations.
    """
    priority = 'NORMAL'

    def __init__(self, iters: int, by_epoch: bool = False):
        if not isinstance(iters, int) or iters < 0:
            raise ValueError(
                f'ConnectorWarmupHook(iters=...) must be an int >= 0, got '
                f'{iters!r}')
        self.iters = iters
        self.by_epoch = by_epoch

    def before_train_iter(self, runner, batch_idx: int, data_batch=None):
        model = get_distiller(runner, type(self).__name__)
        step = runner.epoch if self.by_epoch else runner.iter
        model.distill_to_student = step >= self.iters

"""The schedule of the distillation weight."""
import math
from dataclasses import dataclass
from typing import Optional

from mmengine.hooks import Hook

from mmlckd.registry import HOOKS
from .utils import get_distiller


@dataclass(frozen=True)
class WeightSchedule:
    """The weight at a step: warm-up, then decay, then off (see
    :class:`DistillWeightHook`)."""
    warmup: int = 0
    warmup_ratio: float = 0.0
    decay: Optional[str] = None
    min_ratio: float = 0.0
    stop_at: Optional[int] = None

    def __post_init__(self):
        if self.decay not in (None, 'linear', 'cosine'):
            raise ValueError("decay must be None, 'linear' or 'cosine', got "
                             f'{self.decay!r}')
        if self.warmup < 0 or (self.stop_at is not None and self.stop_at < 0):
            raise ValueError('warmup and stop_at must be >= 0')

    def __call__(self, step: int, total: int) -> float:
        """The weight at ``step`` (0-based) of ``total`` steps."""
        if self.stop_at is not None and step >= self.stop_at:
            return 0.0
        if step < self.warmup:
            return self.warmup_ratio + (1 - self.warmup_ratio) * (
                step / self.warmup)
        if self.decay is None or total <= self.warmup:
            return 1.0
        t = min(1.0, (step - self.warmup) / max(1, total - self.warmup))
        if self.decay == 'linear':
            f = 1 - t
        else:
            f = 0.5 * (1 + math.cos(math.pi * t))
        return self.min_ratio + (1 - self.min_ratio) * f


@HOOKS.register_module()
class DistillWeightHook(Hook):
    """Schedules the weight of all distillation losses.

    The weight multiplies every distillation term (``loss_feat``,
    ``loss_lipschitz``, ``loss_kd``); it is never skipped, so every
    parameter keeps receiving a (possibly zero) gradient and DDP works with
    ``find_unused_parameters=False``.

    Schedule, by iteration (or epoch with ``by_epoch=True``):

    * linear warm-up from ``warmup_ratio`` to 1 over ``warmup`` steps;
    * then ``decay``: ``None`` (constant), ``'linear'`` or ``'cosine'``
      towards ``min_ratio`` at the end of training;
    * zero from ``stop_at`` on (distillation switched off).

    Args:
        warmup (int): warm-up length. Default 0.
        warmup_ratio (float): starting weight. Default 0.
        decay (str, optional): ``'linear'`` or ``'cosine'``. Default None.
        min_ratio (float): final weight of the decay. Default 0.
        stop_at (int, optional): switch distillation off from this
            iteration/epoch (0-based). Default None.
        by_epoch (bool): count epochs instead of iterations.
    """
    priority = 'NORMAL'

    def __init__(self,
                 warmup: int = 0,
                 warmup_ratio: float = 0.0,
                 decay: Optional[str] = None,
                 min_ratio: float = 0.0,
                 stop_at: Optional[int] = None,
                 by_epoch: bool = False):
        self.schedule = WeightSchedule(warmup, warmup_ratio, decay, min_ratio,
                                       stop_at)
        self.by_epoch = by_epoch

    def weight(self, step: int, total: int) -> float:
        """The weight at ``step`` (0-based) of ``total`` steps."""
        return self.schedule(step, total)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None):
        model = get_distiller(runner, type(self).__name__)
        if self.by_epoch:
            step, total = runner.epoch, runner.max_epochs
        else:
            step, total = runner.iter, runner.max_iters
        model.distill_weight = float(self.weight(step, total))
        runner.message_hub.update_scalar('train/distill_weight',
                                         model.distill_weight)

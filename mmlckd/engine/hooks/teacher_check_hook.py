from typing import Optional

import torch
from mmengine.hooks import Hook

from mmlckd.registry import HOOKS
from .utils import get_distiller

_PERCENT_METRICS = ('IoU', 'Acc', 'Dice', 'Fscore', 'Precision', 'Recall')


@HOOKS.register_module()
class TeacherSanityCheckHook(Hook):
    """Evaluates the teacher once on the val set before training starts and
    fails loudly if it scores near zero (wrong checkpoint, wrong classes,
    wrong preprocessing): distilling from a broken teacher wastes a run.

    Args:
        min_score (float): the minimum acceptable score as a fraction of the
            metric's full scale (mmdet's mAP is in [0, 1], mmseg's
            IoU/Acc metrics are percentages). Default 0.05.
        metric (str, optional): the metric key to check (e.g.
            ``'pascal_voc/mAP'`` or ``'mIoU'``); default: the first one.
        max_batches (int, optional): evaluate on the first batches only.
    """
    priority = 'VERY_HIGH'

    def __init__(self,
                 min_score: float = 0.05,
                 metric: Optional[str] = None,
                 max_batches: Optional[int] = None):
        self.min_score = min_score
        self.metric = metric
        self.max_batches = max_batches
        self.result = None

    def before_train(self, runner) -> None:
        distiller = get_distiller(runner, type(self).__name__)
        loop = runner.val_loop
        if loop is None or not hasattr(loop, 'evaluator'):
            runner.logger.warning(
                'TeacherSanityCheckHook: no val_dataloader/val_evaluator; '
                'the teacher was not checked')
            return
        teacher = distiller.teacher
        dataset = loop.dataloader.dataset
        n_seen = 0
        with torch.no_grad():
            for i, data in enumerate(loop.dataloader):
                if self.max_batches is not None and i >= self.max_batches:
                    break
                outputs = teacher.val_step(data)
                loop.evaluator.process(data_samples=outputs, data_batch=data)
                n_seen += len(outputs)
        if self.max_batches is None:
            size = len(dataset)
        else:  # the evaluator gathers every rank's results: count them all
            from mmengine.dist import all_reduce
            seen = torch.tensor(n_seen, dtype=torch.long)
            all_reduce(seen)
            size = int(seen)
        metrics = loop.evaluator.evaluate(size)
        key = self.metric or next(
            (k for k, v in metrics.items() if isinstance(v, (int, float))),
            None)
        if key not in metrics:
            raise KeyError(f'TeacherSanityCheckHook: metric {key!r} not in '
                           f'{sorted(metrics)}')
        score = float(metrics[key])
        scale = 100.0 if any(m in key for m in _PERCENT_METRICS) else 1.0
        self.result = (key, score)
        runner.logger.info(f'teacher check: {key} = {score:.4f}')
        if score < self.min_score * scale:
            raise RuntimeError(
                f'the teacher scores {key}={score:.4f} on the validation set '
                f'(< {self.min_score * scale:g}): it looks untrained or '
                'mismatched. Check teacher.checkpoint, that the teacher was '
                'trained on these classes, and the data preprocessor. '
                'Remove TeacherSanityCheckHook from custom_hooks to skip '
                'this check.')

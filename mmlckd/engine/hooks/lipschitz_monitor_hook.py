"""A JSONL history of the Lipschitz estimates and distillation losses."""
import json
import os
import os.path as osp
import time
from typing import Optional, Sequence

from mmengine.dist import master_only
from mmengine.hooks import Hook

from mmlckd.registry import HOOKS
from .paths import check_work_dir_relative
from .utils import unwrap_model


@HOOKS.register_module()
class LipschitzMonitorHook(Hook):
    """Writes an exact history of the per-block Lipschitz estimates.

    The distiller already returns ``sigma_t.<group>.<i>``,
    ``sigma_s.<group>.<i>`` and their ratio ``sigma_ratio.<group>.<i>``
    with its losses, so mmengine's logger and every visualizer backend
    (TensorBoard, W&B, local ``scalars.json``) get them at the
    ``LoggerHook`` interval. This hook adds an exact, unsmoothed history of
    every ``interval`` iterations written as JSON lines to
    ``<work_dir>/<out_file>`` (iteration, epoch, sigmas, distillation
    losses, and the distillation schedule of that step: ``distill_weight``
    and ``distill_to_student``, False during a connector warm-up), e.g.
    for plotting. On a model that is not a distiller (the plain student of
    a comparison) it records that model's own outputs, so both sides of a
    comparison have one history format.

    The gradient shares of the loss balancer (``gnorm_*``, ``gshare_*``)
    are measured only at some steps: the record of such a step is always
    written (whatever ``interval``), and the hook removes the previous
    measurement from the message hub at the start of every iteration, so
    a log line shows shares only when they were measured at its step. It
    also makes the run's stock ``LogProcessor`` a
    ``mmlckd.DistillLogProcessor`` (weights printed as ``%.3e``).

    ``epoch`` counts from 1, as the console's ``Epoch(train) [1]``.

    A resumed run keeps the history up to its start iteration. A fresh run
    in a work dir that already holds a history never overwrites it: the old
    file is renamed ``<name>.<YYYYmmdd_HHMMSS>.<ext>`` first (logged).

    Args:
        interval (int): record every ``interval`` iterations. Default 1.
        out_file (str, optional): file name in the work dir (relative, no
            ``..``); None disables.
        keys (Sequence[str]): prefixes of the output keys to record.
    """
    priority = 'LOW'

    def __init__(self,
                 interval: int = 1,
                 out_file: Optional[str] = 'lipschitz.jsonl',
                 keys: Sequence[str] = ('sigma_', 'loss', 'distill_weight',
                                        'gshare_', 'gnorm_', 'weight_')):
        self.interval = interval
        if out_file:
            check_work_dir_relative(out_file, 'out_file',
                                    type(self).__name__)
        self.out_file = out_file
        self.keys = tuple(keys)
        self._path = None
        self._model = None  # the unwrapped model, set in before_train

    #: output keys measured only at some steps (see the class docstring)
    sparse_keys = ('gshare_', 'gnorm_')

    def before_run(self, runner) -> None:
        from mmengine.runner import LogProcessor

        from mmlckd.engine.log_processor import DistillLogProcessor
        if type(runner.log_processor) is LogProcessor:
            runner.log_processor.__class__ = DistillLogProcessor

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        scalars = runner.message_hub.log_scalars
        prefixes = tuple(f'train/{k}' for k in self.sparse_keys)
        for key in [k for k in scalars if k.startswith(prefixes)]:
            del scalars[key]

    def before_train(self, runner) -> None:
        self._model = unwrap_model(runner)
        if hasattr(self._model, 'pairs'):  # a distiller: what it records
            from mmlckd.engine.log_processor import describe_distiller
            runner.logger.info(describe_distiller(self._model))
        if self.out_file:
            self._path = osp.join(runner.work_dir, self.out_file)
            if runner.iter == 0:
                self._move_aside(runner)
            else:
                self._drop_stale(runner.iter)

    @master_only
    def _move_aside(self, runner) -> None:
        """A fresh run: keep an earlier run's history under a timestamped
        name (it belongs to that run's checkpoints)."""
        if not osp.isfile(self._path) or osp.getsize(self._path) == 0:
            return
        stem, ext = osp.splitext(self._path)
        stamp = time.strftime('%Y%m%d_%H%M%S',
                              time.localtime(osp.getmtime(self._path)))
        dest, n = f'{stem}.{stamp}{ext}', 1
        while osp.exists(dest):
            dest, n = f'{stem}.{stamp}_{n}{ext}', n + 1
        os.replace(self._path, dest)
        runner.logger.info(f'{self._path} holds an earlier run\'s history: '
                           f'kept as {dest}')

    @master_only
    def _drop_stale(self, start_iter: int) -> None:
        """Keep the history up to ``start_iter`` (what a resumed run has
        done), drop later records (those past the resumed checkpoint, which
        this run will redo)."""
        if not osp.isfile(self._path):
            return
        with open(self._path, encoding='utf-8') as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line)['iter'] <= start_iter:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a truncated last line of a killed run
        if len(keep) != len(lines):
            from mmlckd.checkpoint import atomic_write
            data = ''.join(keep).encode('utf-8')
            atomic_write(self._path, lambda f: f.write(data))

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not outputs:
            return
        if not self.every_n_train_iters(runner, self.interval) and not any(
                k.startswith(self.sparse_keys) for k in outputs):
            return
        model = self._model
        record = {'iter': runner.iter + 1, 'epoch': runner.epoch + 1}
        if hasattr(model, 'distill_weight'):  # a distiller
            record.update(distill_weight=float(model.distill_weight),
                          distill_to_student=bool(model.distill_to_student))
        for k, v in outputs.items():
            if k.startswith(self.keys):
                record[k] = float(v.item() if hasattr(v, 'item') else v)
        self._write(record)

    @master_only
    def _write(self, record: dict) -> None:
        if self._path:
            with open(self._path, 'a', encoding='utf-8') as f:
                f.write(json.dumps(record) + '\n')

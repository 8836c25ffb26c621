"""A CheckpointHook whose checkpoints survive a crash."""
import collections
import errno
import math
import os
import os.path as osp
from typing import Optional, Tuple

from mmengine.dist import is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.runner.checkpoint import find_latest_checkpoint

from mmlckd.checkpoint import (atomic_write, fsync_dir, sha256_file,
                               sidecar_path, write_checksum)
from mmlckd.checkpoint.io import _is_enospc
from mmlckd.models.distillers.guard import guard_optimizer_steps
from mmlckd.registry import HOOKS
from .checkpoint_checks import (check_load_from_checkpoint,
                                check_resume_checkpoint, checkpoint_meta)
from .utils import refuse_non_finite, unwrap_model

__all__ = ['SafeCheckpointHook', 'MMENGINE_PINNED']

#: the mmengine release whose private API this file follows, in two places
#: only: the ``CheckpointHook._save_checkpoint_with_step`` that
#: :meth:`SafeCheckpointHook._save_checkpoint_with_step` overrides, and the
#: ``Runner`` attributes :func:`_load_request` reads.
#: ``tests/engine/hooks/test_mmengine_pin.py`` fails on any other release.
MMENGINE_PINNED = '0.10.7'


def _load_request(runner) -> Tuple[bool, Optional[str]]:
    """``(resume, load_from)`` as ``Runner.load_or_resume`` reads them: a
    Runner keeps them in private attributes only (a Runner built without a
    config has neither in ``runner.cfg``)."""
    return bool(getattr(runner, '_resume', False)), \
        getattr(runner, '_load_from', None)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``, made crash-safe.

    * Each checkpoint is written to a temporary file in ``out_dir``,
      fsynced, and renamed into place; only then is ``last_checkpoint``
      updated (atomically too), and only then are checkpoints beyond
      ``max_keep_ckpts`` deleted. A kill at any point leaves the previous
      checkpoint and a ``last_checkpoint`` that names a complete file.
    * A SHA-256 sidecar (``<ckpt>.sha256``) is written next to each one.
    * ``load_from`` is checked the same way (readable, complete, SHA-256).
    * Before resuming, the checkpoint is checked: it must exist (``resume``
      with nothing to resume is an error naming the work dir), be a
      complete checkpoint, match its SHA-256, and hold this model's weights
      (keys and shapes).
    * A state holding NaN/Inf is never written (``save_non_finite=False``):
      an error is logged and the previous checkpoint stays the latest.
    * No non-finite update is applied (``guard_updates=True``): the NaN
      guard's gradient check
      (:func:`mmlckd.models.distillers.guard.guard_optimizer_steps`) runs
      right before each ``optimizer.step()``, for any model. Off when the
      model says ``nan_guard=False`` (``LipschitzDistiller``).

    Same arguments as ``CheckpointHook``, plus:

    Args:
        save_non_finite (bool): write checkpoints even when weights are
            NaN/Inf (with a warning). Default False.
        verify_resume (bool): check the checkpoint before resuming.
            Default True.
        guard_updates (bool): stop before an optimizer step with NaN/Inf
            gradients. Default True.
        spike_factor (float): a training loss above ``spike_factor`` times
            the median of the last 20 (at least 2) is a spike: checkpoints
            written then are marked (a warning), the last one written before
            the spike is kept beyond ``max_keep_ckpts`` and named by the
            NaN guard's messages. Default 10.
    """

    def __init__(self, *args, save_non_finite: bool = False,
                 verify_resume: bool = True, guard_updates: bool = True,
                 spike_factor: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_non_finite = save_non_finite
        self.verify_resume = verify_resume
        self.guard_updates = guard_updates
        self._handles = []
        self.non_finite_at = None  # the first step whose save was refused
        self.spike_factor = spike_factor
        self._losses = collections.deque(maxlen=20)
        self._spike = None  # this iteration's loss is a spike: its record
        self.last_normal_ckpt = None  # the last one written before a spike
        self._deferred = []  # kept past max_keep_ckpts: last_normal_ckpt

    # ------------------------------------------------------ guard, spikes
    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self._local() and is_main_process():
            self._remove_stale_tmp(runner)
        if self.guard_updates:
            self._handles = guard_optimizer_steps(
                unwrap_model(runner), runner.optim_wrapper,
                lambda: runner.iter + 1,
                'Set default_hooks.checkpoint.guard_updates=False to '
                'disable this check.')

    def _remove_stale_tmp(self, runner) -> None:
        """Temporary files of a write that a killed run left behind."""
        if not osp.isdir(self.out_dir):
            return
        head, _, tail = self.filename_tmpl.partition('{}')
        for name in os.listdir(self.out_dir):
            if name.startswith('.' + head) and name.endswith(tail + '.tmp'):
                os.remove(osp.join(self.out_dir, name))
                runner.logger.info(f'removed {name}, left by an interrupted '
                                   'checkpoint write')

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        self._track_loss(runner, outputs)
        super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def _track_loss(self, runner, outputs) -> None:
        """A short history of the training loss; ``self._spike`` is set
        while the loss is out of its recent range."""
        loss = (outputs or {}).get('loss', None) if isinstance(
            outputs, dict) else None
        if loss is None:
            return
        # the value only (mmengine's RuntimeInfoHook reads every log
        # value of the step the same way, so this adds no host sync)
        loss = float(loss.detach()) if hasattr(loss, 'detach') else \
            float(loss)
        hist = sorted(self._losses)
        median = hist[len(hist) // 2] if hist else None
        if median is not None and len(hist) >= 2 and (
                not math.isfinite(loss) or
                abs(loss) > self.spike_factor * abs(median)):
            self._spike = dict(iter=runner.iter + 1, loss=loss,
                               median=median)
            runner.message_hub.update_info('loss_spike', dict(self._spike))
        else:
            self._spike = None
            self._losses.append(loss)

    def after_train(self, runner) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        super().after_train(runner)

    # --------------------------------------------------------------- resume
    def before_run(self, runner) -> None:
        """Runs before ``runner.load_or_resume()``."""
        if not self.verify_resume:
            return
        resume, path = _load_request(runner)
        if not resume:
            if path and '://' not in path:  # load_from: a local file
                check_load_from_checkpoint(runner, path)
            return
        if path is None:
            path = find_latest_checkpoint(runner.work_dir)
            if path is None:
                raise FileNotFoundError(
                    f'resume requested but there is nothing to resume in the '
                    f'work dir {osp.abspath(runner.work_dir)!r} (no '
                    '"last_checkpoint" file there). Check --work-dir (or '
                    'work_dir in the config), pass the checkpoint '
                    'explicitly (--resume PATH), or drop --resume to start '
                    'a fresh run.')
        check_resume_checkpoint(runner, path)

    # ----------------------------------------------------------------- save
    def _local(self) -> bool:
        return isinstance(self.file_backend, LocalBackend)

    def _save_checkpoint_with_step(self, runner, step, meta):
        """Overrides mmengine's private method of that name
        (:data:`MMENGINE_PINNED`), with its effects on ``keep_ckpt_ids``,
        ``last_ckpt`` and the message hub, made crash-safe: a non-finite
        state is not written; the file is written atomically with its
        sidecar, then ``last_checkpoint``; old checkpoints go last."""
        if not self._local():  # remote storage: mmengine's behaviour
            return super()._save_checkpoint_with_step(runner, step, meta)
        if self._refuse(runner, step):
            return
        drop = self._rotate(runner, step)
        meta = checkpoint_meta(runner, meta)
        name = self.filename_tmpl.format(step)
        final = self.file_backend.join_path(self.out_dir, name)
        before = self._mark_latest(runner, final)
        try:
            self._write(runner, name, final, meta, previous=before[0])
        except BaseException:
            for key, value in zip(('last_ckpt', 'last_normal_ckpt'), before):
                setattr(self, key, value)
                runner.message_hub.update_info(key, value)
            raise
        if is_main_process():
            atomic_write(osp.join(runner.work_dir, 'last_checkpoint'),
                         lambda f: f.write(final.encode()))
            self._prune(drop, step, final)

    def _refuse(self, runner, step: int) -> bool:
        """Whether the model's state at ``step`` holds NaN/Inf and is not
        saved (an error logged, the step recorded in ``non_finite_at``)."""
        if not refuse_non_finite(
                unwrap_model(runner).state_dict(), f'the model at step {step}',
                runner.logger, self.save_non_finite,
                'checkpoint NOT saved; the last finite checkpoint is '
                f'{self.last_ckpt or "none"}. Set default_hooks.checkpoint.'
                'save_non_finite=True to save such states anyway.'):
            return False
        if self.non_finite_at is None:
            self.non_finite_at = step
        return True

    def _rotate(self, runner, step: int) -> list:
        """Record ``step`` in ``keep_ckpt_ids`` (as mmengine does); returns
        the steps beyond ``max_keep_ckpts``, deleted only once the new
        checkpoint is complete."""
        if self.max_keep_ckpts <= 0 or (
                self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []
        drop = []
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            drop.append(self.keep_ckpt_ids.popleft())
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids',
                                       list(self.keep_ckpt_ids))
        return drop

    def _mark_latest(self, runner, final: str) -> tuple:
        """Make ``final`` the latest checkpoint and, outside a loss spike,
        the last normal one; returns both as they were before."""
        before = (self.last_ckpt, self.last_normal_ckpt)
        self.last_ckpt = final
        runner.message_hub.update_info('last_ckpt', final)
        if self._spike is None:
            self.last_normal_ckpt = final
            runner.message_hub.update_info('last_normal_ckpt', final)
        else:
            runner.logger.warning(
                f'{final} is written during a loss spike (loss '
                f'{self._spike["loss"]:.4g} at iteration '
                f'{self._spike["iter"]}, {self.spike_factor:g}x above the '
                f'recent median {self._spike["median"]:.4g}); the last '
                'checkpoint before the spike, '
                f'{self.last_normal_ckpt or "(none in this run)"}, is kept.')
        return before

    def _write(self, runner, name: str, final: str, meta: dict,
               previous: Optional[str]) -> None:
        """``runner.save_checkpoint`` into a temporary file, committed as
        ``final`` (:meth:`_commit`). A failed write leaves no partial file;
        a full disk is an OSError saying that nothing was lost."""
        tmp_name = f'.{name}.tmp'
        tmp = osp.join(self.out_dir, tmp_name)
        try:
            runner.save_checkpoint(
                self.out_dir,
                tmp_name,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
            if is_main_process():
                self._commit(tmp, final)
        except BaseException as e:
            full = isinstance(e, Exception) and _is_enospc(e, self.out_dir)
            if is_main_process() and osp.exists(tmp):
                os.remove(tmp)
            if not full:
                raise
            raise OSError(
                errno.ENOSPC,
                f'no space left on device while writing the checkpoint '
                f'{final}. Nothing was lost: no partial file was left, '
                'and the previous checkpoint ' +
                (f'{previous} and last_checkpoint are intact'
                 if previous else '(none in this run yet) is unchanged')
                + '. Free space on that disk and continue with '
                '--resume, or train in a work dir on another disk '
                '(--work-dir).') from None

    def _prune(self, drop: list, step: int, final: str) -> None:
        """Delete the checkpoints of ``drop`` (and their sidecars), keeping
        the last one written before a loss spike until the loss is back in
        its range."""
        paths = [self.file_backend.join_path(self.out_dir,
                                             self.filename_tmpl.format(old))
                 for old in drop if old != step]
        if self._spike is None:  # a normal one again: drop the kept ones
            paths += [p for p in self._deferred if p != final]
            self._deferred = []
        for path in paths:
            if path == self.last_normal_ckpt and path != final:
                self._deferred.append(path)  # the one before the spike
                continue
            for p in (path, sidecar_path(path)):
                if osp.isfile(p):
                    os.remove(p)

    @staticmethod
    def _commit(tmp: str, final: str) -> None:
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        if osp.exists(sidecar_path(final)):
            os.remove(sidecar_path(final))
        digest = sha256_file(tmp)
        os.replace(tmp, final)
        fsync_dir(osp.dirname(osp.abspath(final)))
        write_checksum(final, digest)

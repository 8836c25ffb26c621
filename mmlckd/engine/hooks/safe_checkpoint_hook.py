"""A CheckpointHook whose checkpoints survive a crash."""
import collections
import errno
import math
import os
import os.path as osp

import torch
from mmengine.dist import get_world_size, is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.runner.checkpoint import find_latest_checkpoint

from mmlckd.checkpoint import (CheckpointError, atomic_write,
                               compare_state_dicts, describe_mismatch,
                               fsync_dir, is_distillation_state,
                               load_checked, sha256_file, sidecar_path,
                               write_checksum)
from mmlckd.checkpoint.io import _is_enospc
from mmlckd.registry import HOOKS
from .utils import unwrap_model

__all__ = ['SafeCheckpointHook', 'non_finite_tensors', 'refuse_non_finite']


def non_finite_tensors(state: dict) -> list:
    """Names of the floating-point tensors of ``state`` holding NaN/Inf."""
    bad = []
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and \
                not bool(torch.isfinite(v).all()):
            bad.append(k)
    return bad


def refuse_non_finite(state: dict, what: str, logger, allow: bool,
                      refused: str) -> bool:
    """True if ``state`` holds NaN/Inf and ``allow`` is False: logs the
    error ``'<what> holds non-finite values (...): <refused>'`` then. With
    ``allow`` a warning is logged and False returned (save anyway)."""
    bad = non_finite_tensors(state)
    if not bad:
        return False
    msg = (f'{what} holds non-finite values ({len(bad)} tensors, e.g. '
           f'{bad[:3]})')
    if not allow:
        logger.error(f'{msg}: {refused}')
        return True
    logger.warning(f'{msg}: saving it anyway (save_non_finite=True)')
    return False


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
    * No non-finite update is applied (``guard_updates=True``): right before
      each ``optimizer.step()`` the gradients are checked (one host sync)
      and a NaN/Inf gradient stops training with a FloatingPointError that
      names the parameters and the last finite checkpoint. Off when the
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

    # ---------------------------------------------------------- grad guard
    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self._local() and is_main_process():
            self._remove_stale_tmp(runner)
        model = unwrap_model(runner)
        if not self.guard_updates or getattr(model, 'nan_guard',
                                             True) is False:
            return
        wrapper = runner.optim_wrapper
        wrappers = wrapper.values() if hasattr(wrapper, 'values') \
            else [wrapper]
        names = {id(p): n for n, p in model.named_parameters()}
        for w in wrappers:
            self._handles.append(w.optimizer.register_step_pre_hook(
                self._make_grad_check(runner, names)))

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

    def _make_grad_check(self, runner, names: dict):
        def check(optimizer, args, kwargs):
            grads = [p.grad for g in optimizer.param_groups
                     for p in g['params'] if p.grad is not None]
            if not grads:
                return
            norms = torch.stack(torch._foreach_norm(grads))
            if bool(torch.isfinite(norms).all()):  # the one host sync
                return
            bad = [names.get(id(p), '?') for g in optimizer.param_groups
                   for p in g['params'] if p.grad is not None
                   and not bool(torch.isfinite(p.grad).all())]
            from mmlckd.models.distillers.guard import (
                RESTART_HINT, last_finite_checkpoint)
            raise FloatingPointError(
                f'non-finite gradients at iteration {runner.iter + 1} in '
                f'{len(bad)} parameters (e.g. {bad[:3]}): the optimizer step '
                'was stopped, so no non-finite update was applied and none '
                f'will be saved; {last_finite_checkpoint()}. Fixes: lower '
                'the learning rate, clip gradients '
                '(optim_wrapper.clip_grad=dict(max_norm=35)), check the '
                f'data; {RESTART_HINT}. Set '
                'default_hooks.checkpoint.guard_updates=False to disable '
                'this check.')
        return check

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
        loss = float(loss)
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
        if not getattr(runner, '_resume', False):
            path = getattr(runner, '_load_from', None)
            if path and '://' not in path:  # load_from: a local file
                check_load_from_checkpoint(runner, path)
            return
        path = runner._load_from
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
        if not self._local():  # remote storage: mmengine's behaviour
            return super()._save_checkpoint_with_step(runner, step, meta)
        model = unwrap_model(runner)
        if refuse_non_finite(
                model.state_dict(), f'the model at step {step}',
                runner.logger, self.save_non_finite,
                'checkpoint NOT saved; the last finite checkpoint is '
                f'{self.last_ckpt or "none"}. Set default_hooks.checkpoint.'
                'save_non_finite=True to save such states anyway.'):
            if self.non_finite_at is None:
                self.non_finite_at = step
            return

        drop = []
        if self.max_keep_ckpts > 0 and not (
                self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                drop.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        meta = dict(meta or {}, world_size=get_world_size(),
                    batch_size=_batch_size(runner))
        ckpt_filename = self.filename_tmpl.format(step)
        final = self.file_backend.join_path(self.out_dir, ckpt_filename)
        previous = self.last_ckpt
        self.last_ckpt = final
        runner.message_hub.update_info('last_ckpt', final)
        previous_normal = self.last_normal_ckpt
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

        tmp_name = f'.{ckpt_filename}.tmp'
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
            self.last_ckpt = previous
            runner.message_hub.update_info('last_ckpt', previous)
            self.last_normal_ckpt = previous_normal
            runner.message_hub.update_info('last_normal_ckpt',
                                           previous_normal)
            full = isinstance(e, Exception) and _is_enospc(e, self.out_dir)
            if is_main_process() and osp.exists(tmp):
                os.remove(tmp)
            if full:
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
            raise
        if not is_main_process():
            return
        line = final.encode()
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'),
                     lambda f: f.write(line))
        paths = [self.file_backend.join_path(self.out_dir,
                                             self.filename_tmpl.format(old))
                 for old in drop if old != step]
        if self._spike is None:  # a normal one again: drop the kept ones
            paths += [p for p in self._deferred if p != final]
            self._deferred = []
        for path in paths:  # only now that the new one is complete
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


def check_load_from_checkpoint(runner, path: str) -> None:
    """``load_from`` (weights only, non-strict as in mmengine): a readable,
    complete checkpoint that matches its SHA-256, and that loads something.

    * A plain student checkpoint given to a distillation model (keys
      ``backbone.*`` vs ``student.backbone.*``) is loaded into the student:
      the keys are mapped onto ``student.`` (one log line).
    * A distillation checkpoint given to a plain model, or any file of which
      no tensor matches the model, is a CheckpointError naming the prefix
      mismatch and the fix (mmengine only warns and trains from the
      initial weights).
    """
    import functools

    role = 'load_from checkpoint'
    state = load_checked(path, role, log=runner.logger.info)
    model = unwrap_model(runner)
    expected = model.state_dict()
    if any(k in expected for k in state):
        return
    student = getattr(model, 'student', None)
    if isinstance(student, torch.nn.Module):
        keys = student.state_dict()
        n = sum(k in keys for k in state)
        if n:
            load = runner.load_checkpoint
            runner.load_checkpoint = functools.partial(
                load, revise_keys=[(r'^module\.', ''), (r'^', 'student.')])
            runner.logger.info(
                f'load_from {path}: a plain student checkpoint ({n} of the '
                f"student's {len(keys)} tensors match); loading it into the "
                'student (keys mapped onto "student.").')
            return
    config = getattr(runner.cfg, 'filename', None) or 'in memory'
    if is_distillation_state(state):
        raise CheckpointError(
            f'{role} {path!r} is a distillation checkpoint (keys '
            f'"student.*") and the model of the config ({config}) is a plain '
            f'model: none of its {len(state)} tensors would load, and '
            'training would start from the initial weights. Export the '
            f'student (python tools/export_student.py {path} student.pth) '
            'and set load_from=student.pth, or train with the distillation '
            'config.')
    raise CheckpointError(
        f'{role} {path!r} matches none of the model\'s {len(expected)} '
        f'tensors (config {config}): {_prefix_mismatch(state, expected)}. '
        'Loading it would load nothing and train from the initial weights. '
        'Rename the keys of the file (torch.load it, rename, torch.save) or '
        'use a checkpoint of this model.')


def _prefix_mismatch(state: dict, expected: dict) -> str:
    """The file's and the model's keys, and the prefix between them when
    one is the other with a prefix."""
    fk, mk = next(iter(state)), next(iter(expected), '')
    for f in list(state)[:50]:
        for m in expected:
            if m.endswith('.' + f):
                return (f'a prefix mismatch: the model has "{m}" where the '
                        f'file has "{f}" (prefix "{m[:-len(f)]}" missing '
                        'in the file)')
            if f.endswith('.' + m):
                return (f'a prefix mismatch: the file has "{f}" where the '
                        f'model has "{m}" (extra prefix "{f[:-len(m)]}" in '
                        'the file)')
    return (f'its keys look like "{fk}", the model\'s like "{mk}" (another '
            'architecture or a prefix mismatch)')


def _batch_size(runner):
    """The per-process batch size of the training loader, or None."""
    try:
        loader = runner.train_dataloader
    except Exception:
        return None
    return getattr(loader, 'batch_size', None)


def warn_world_size_change(runner, ckpt: dict, path: str) -> None:
    """A resume with another number of processes than the run that wrote
    the checkpoint: the global batch (and with it what the lr was set for)
    changes; say so, with the numbers and the fix."""
    meta = ckpt.get('meta', None) if isinstance(ckpt, dict) else None
    then = (meta or {}).get('world_size', None)
    now = get_world_size()
    if not then or then == now:
        return
    per = _batch_size(runner)
    old_per = (meta or {}).get('batch_size', None) or per
    batch = (f': the global batch is now {per * now} instead of '
             f'{old_per * then}' if per and old_per else
             ': the global batch changed')
    runner.logger.warning(
        f'the resume checkpoint {path} was written by a run of {then} '
        f'processes; this run has {now}{batch}, while the learning rate and '
        'its schedule were set for the old one. Resume with the same '
        f'number of processes (tools/dist_train.sh CONFIG {then} --resume), '
        'or scale the lr (optim_wrapper.optimizer.lr, or --auto-scale-lr '
        'for a new run from load_from).')


def check_resume_checkpoint(runner, path: str) -> None:
    """Fail, in words, when ``path`` cannot resume ``runner``'s model."""
    role = 'resume checkpoint'
    ckpt, state = load_checked(path, role, log=runner.logger.info,
                               whole=True)
    warn_world_size_change(runner, ckpt, path)
    model = unwrap_model(runner)
    missing, unexpected, mismatched = compare_state_dicts(
        model.state_dict(), state)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f'{role} {path!r} was not written by this model (config '
            f'{getattr(runner.cfg, "filename", None) or "in memory"}): ' +
            describe_mismatch(missing, unexpected, mismatched) +
            '. Resume only from a checkpoint of the same config; to start '
            'from other weights use load_from (--cfg-options load_from=...) '
            'without --resume.')

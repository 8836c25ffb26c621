"""The checks of ``mmlckd.SafeCheckpointHook`` before a run loads weights:
``load_from`` (:func:`check_load_from_checkpoint`) and a resume
(:func:`check_resume_checkpoint`), and what a checkpoint records for them
(:func:`checkpoint_meta`)."""
import functools

import torch
from mmengine.dist import get_world_size

from mmlckd.checkpoint import (CheckpointError, compare_state_dicts,
                               describe_mismatch, is_distillation_state,
                               load_checked)
from .utils import unwrap_model

__all__ = ['check_load_from_checkpoint', 'check_resume_checkpoint',
           'checkpoint_meta', 'distill_losses']


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


def distill_losses(model):
    """The sorted distillation loss names of a distiller (``loss_feat``,
    ``loss_lipschitz``, ``loss_kd``, ``loss_<term>``), or None for a model
    that is not one."""
    if not hasattr(model, 'terms') or not hasattr(model, 'teacher'):
        return None
    # every term, built-in (feat, lipschitz, kd) or task-aware, is in
    # model.terms
    return sorted(f'loss_{k}' for k in model.terms)


def checkpoint_meta(runner, meta) -> dict:
    """``meta`` with what the resume checks compare: the number of
    processes, the per-process batch size and a distiller's loss names."""
    meta = dict(meta or {}, world_size=get_world_size(),
                batch_size=_batch_size(runner))
    losses = distill_losses(unwrap_model(runner))
    if losses is not None:
        meta['distill_losses'] = losses
    return meta


def warn_distill_losses_change(runner, ckpt: dict, path: str) -> None:
    """A resume whose distillation terms differ from those of the run that
    wrote the checkpoint (e.g. another ``terms=``): the run goes on with
    another loss under the old run's name, history and schedule; say so,
    with the two ways on."""
    meta = ckpt.get('meta', None) if isinstance(ckpt, dict) else None
    then = (meta or {}).get('distill_losses', None)
    now = distill_losses(unwrap_model(runner))
    if then is None or now is None or list(then) == now:
        return
    added = sorted(set(now) - set(then))
    removed = sorted(set(then) - set(now))
    runner.logger.warning(
        f'the resume checkpoint {path} was written by a run that distilled '
        f'{list(then)}; this run distils {now} (' + '; '.join(
            x for x in (f'added {added}' if added else '',
                        f'removed {removed}' if removed else '') if x) +
        '): --resume continues the old run\'s iterations, history and '
        'schedule with another loss. To continue that run, resume with its '
        'own config (the .py saved in its work dir); to train this setup '
        'from those weights, start a new run: --cfg-options '
        f'load_from={path} (without --resume).')


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
    warn_distill_losses_change(runner, ckpt, path)
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

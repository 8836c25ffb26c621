"""The NaN guard, the project's one mechanism for non-finite values: which
values went non-finite, why (the input, a task loss, a distillation term,
a gradient) and where the last finite checkpoint is.

The guard stops a step *before* the optimizer update, so the weights stay
those of the last finite step and no non-finite state is written:

* the distiller checks its losses in the forward (:func:`guarded_loss`,
  :func:`check_terms_finite`, naming the layers of the non-finite terms);
* :func:`guard_optimizer_steps` checks the gradients right before each
  ``optimizer.step`` (``mmlckd.SafeCheckpointHook`` installs it, for any
  model);
* :func:`non_finite` names the tensors of a state that a checkpoint or an
  export must not write.

``model.nan_guard=False`` turns the first two off.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

__all__ = ['last_finite_checkpoint', 'RESTART_HINT', 'check_inputs_finite',
           'check_losses_finite', 'check_terms_finite', 'guarded_loss',
           'guard_optimizer_steps', 'non_finite', 'non_finite_loss_error']

_DISABLE = 'Set model.nan_guard=False to disable this check.'


def _runtime_info() -> dict:
    try:
        from mmengine.logging import MessageHub
        return MessageHub.get_current_instance().runtime_info
    except Exception:  # no runner (model-level use)
        return {}


def last_finite_checkpoint() -> str:
    """The last checkpoint written in this process (SafeCheckpointHook
    writes finite states only), as words for a message; when it was written
    while the loss was far above its recent range (a spike, marked by
    SafeCheckpointHook), also the last one written before that."""
    info = _runtime_info()
    path = info.get('last_ckpt', None)
    if not path:
        return 'no checkpoint was written in this run yet'
    normal = info.get('last_normal_ckpt', None)
    spike = info.get('loss_spike', None) or {}
    if normal == path or not spike:
        return f'the last finite checkpoint is {path}'
    where = (f'the last one written before the losses left their normal '
             f'range is {normal}' if normal else
             'no checkpoint was written before the losses left their normal '
             'range')
    return (f'the last finite checkpoint is {path}, written during a loss '
            f'spike (loss {spike.get("loss", float("nan")):.4g} at iteration '
            f'{spike.get("iter", "?")}, recent median '
            f'{spike.get("median", float("nan")):.4g}): it is finite but '
            f'may already have diverged; {where}')


RESTART_HINT = (
    'restart from the checkpoint named above with a lower learning rate: '
    '--cfg-options load_from=<that checkpoint> '
    'optim_wrapper.optimizer.lr=<lower> (not --resume: it restores the '
    "checkpoint's optimizer state, its lr included, so the lower lr would "
    'be ignored)')


def check_inputs_finite(inputs) -> None:
    """Raise when the (preprocessed) input batch holds NaN/Inf."""
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        return
    finite = torch.isfinite(inputs)
    if bool(finite.all()):
        return
    n_bad = int((~finite).sum())
    per_image = (~finite).flatten(1).any(1).nonzero().flatten().tolist() \
        if inputs.dim() > 1 else []
    raise FloatingPointError(
        f'the input batch is non-finite: {n_bad} NaN/Inf values (images '
        f'{per_image[:8]} of the batch) after the data preprocessor. The '
        'model is fine; the data is not: check the images (a corrupted '
        'file, a NaN produced by a transform) and the data_preprocessor '
        'mean/std (a std of 0 divides by zero). The step was stopped '
        f'before the optimizer update; {last_finite_checkpoint()}. '
        + _DISABLE)


def non_finite_loss_error(kind: str, bad: List[str],
                          detail: str = '') -> FloatingPointError:
    return FloatingPointError(
        f'non-finite {kind} {bad}{detail}. The step was stopped before the '
        'optimizer update, so no non-finite update was applied; '
        f'{last_finite_checkpoint()}. Fixes: lower the learning rate or '
        'the distillation loss_weight, clip gradients '
        '(optim_wrapper.clip_grad=dict(max_norm=35)), check the teacher '
        f'checkpoint; {RESTART_HINT}. ' + _DISABLE)


def _tensors(value) -> List[torch.Tensor]:
    """The tensors of a logged value: a tensor, or a list/tuple of them."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, torch.Tensor)]


def _all_finite(values: Iterable[Any]) -> bool:
    """Whether every tensor of ``values`` is finite, with one host sync."""
    sums = [t.detach().float().sum() for v in values for t in _tensors(v)]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


def non_finite(named: Dict[str, Any]) -> List[str]:
    """The names of the values (tensors, or lists of them) holding NaN/Inf
    (a sync per value: called only once a check failed, or on a state
    about to be written)."""
    return [k for k, v in named.items()
            if any(not bool(torch.isfinite(t.detach()).all())
                   for t in _tensors(v))]


def check_terms_finite(terms: Dict[str, torch.Tensor],
                       features: Dict[str, Any]) -> None:
    """One host sync: every distillation term finite, else a
    FloatingPointError naming the non-finite terms and which of
    ``features`` (``'student <key>'``/``'teacher <key>'`` -> the map the
    terms were computed from) are non-finite."""
    if _all_finite(terms.values()):
        return
    bad_feats = non_finite(features)
    raise non_finite_loss_error(
        'distillation loss', non_finite(terms),
        f'; non-finite features: '
        f'{bad_feats or "none (the loss itself overflowed)"}')


def check_losses_finite(losses: Dict[str, torch.Tensor], inputs=None
                        ) -> None:
    """One host sync: every ``loss*`` value finite, else a
    FloatingPointError naming the non-finite ones (or the input, when
    the input batch itself is non-finite)."""
    named = {k: v for k, v in losses.items() if 'loss' in k}
    if _all_finite(named.values()):
        return
    check_inputs_finite(inputs)
    raise non_finite_loss_error('loss', non_finite(named),
                                ' (task or distillation)')


def _input_error(inputs) -> Optional[FloatingPointError]:
    """The guard's error for a non-finite input batch, or None."""
    try:
        check_inputs_finite(inputs)
    except FloatingPointError as e:
        return e
    return None


def guarded_loss(loss: Callable[..., dict], inputs, data_samples) -> dict:
    """``loss(inputs, data_samples)`` with every ``loss*`` value checked
    (:func:`check_losses_finite`); an error a term raised is reworded when
    the cause is the input batch."""
    try:
        losses = loss(inputs, data_samples)
    except FloatingPointError:
        better = _input_error(inputs)
        if better is not None:
            raise better from None
        raise
    check_losses_finite(losses, inputs)  # the task losses too
    return losses


def guard_optimizer_steps(model: torch.nn.Module, optim_wrapper,
                          iteration: Callable[[], int],
                          disable: str) -> list:
    """Check the gradients right before every ``optimizer.step()`` of
    ``optim_wrapper`` (one wrapper or a dict of them; one host sync per
    step): a NaN/Inf gradient raises a FloatingPointError naming the
    parameters of ``model``, the iteration (``iteration()``, 1-based) and
    the last finite checkpoint, and the step is not taken. ``disable``
    ends the message. Returns the hook handles (remove them at the end of
    training); none when ``model.nan_guard`` is False."""
    if getattr(model, 'nan_guard', True) is False:
        return []
    names = {id(p): n for n, p in model.named_parameters()}

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
        raise FloatingPointError(
            f'non-finite gradients at iteration {iteration()} in '
            f'{len(bad)} parameters (e.g. {bad[:3]}): the optimizer step '
            'was stopped, so no non-finite update was applied and none '
            f'will be saved; {last_finite_checkpoint()}. Fixes: lower '
            'the learning rate, clip gradients '
            '(optim_wrapper.clip_grad=dict(max_norm=35)), check the '
            f'data; {RESTART_HINT}. {disable}')

    wrappers = optim_wrapper.values() if hasattr(optim_wrapper, 'values') \
        else [optim_wrapper]
    return [w.optimizer.register_step_pre_hook(check) for w in wrappers]

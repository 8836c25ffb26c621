"""The probe: one dummy forward of a model, at build time, to see what its
modules return (feature shapes, how many outputs a part gives) before any
data is seen. Used by the distiller's pairing and by the terms."""
from typing import List, Optional, Set

import torch
import torch.nn as nn

from .recorders import FeatureRecorder, StopForward, get_module

__all__ = ['probe_input', 'probe_samples', 'probe_forward', 'probe',
           'count_outputs', 'unread_modules', 'skip_unread']


def probe_input(model: nn.Module, probe_size) -> torch.Tensor:
    """A fixed random image batch of one, with the channels of ``model``'s
    data preprocessor, on ``model``'s device."""
    mean = getattr(model.data_preprocessor, 'mean', None)
    channels = mean.numel() if isinstance(mean, torch.Tensor) else 3
    gen = torch.Generator().manual_seed(0)
    param = next(model.parameters(), None)
    return torch.randn(1, channels, *probe_size, generator=gen).to(
        param.device if param is not None else 'cpu')


def probe_samples(model: nn.Module, probe_size) -> Optional[list]:
    """One data sample with the image meta a ``mode='tensor'`` forward may
    read (a two-stage detector's RPN does), for mmdet / mmseg models; None
    for others."""
    size = tuple(probe_size)
    meta = dict(img_shape=size, ori_shape=size, pad_shape=size,
                batch_input_shape=size, scale_factor=(1.0, 1.0))
    module = type(model).__module__
    if module.startswith('mmdet.'):
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta)]
    if module.startswith('mmseg.'):
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta)]
    return None


def probe_forward(model: nn.Module, probe_size) -> Optional[Exception]:
    """One dummy forward (eval mode, no grad, train mode restored).

    Returns the exception a later part of the model raised (a head may
    need data samples; fine if everything recorded ran before it), or
    None. A :class:`StopForward` counts as success.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(probe_input(model, probe_size),
                  probe_samples(model, probe_size), mode='tensor')
    except StopForward:
        pass
    except Exception as e:
        return e
    finally:
        model.train(was_training)
    return None


def probe(model: nn.Module, recorder: FeatureRecorder, probe_size) -> dict:
    """Fill ``recorder`` by one probe forward, calibrate its call counts
    and return what it recorded; an error names what was not reached."""
    with recorder:
        error = probe_forward(model, probe_size)
    recorded = recorder.recorded(strict=False)
    missing = [s.key for s in recorder.specs if s.key not in recorded]
    if missing:
        raise RuntimeError(
            f'probing the {recorder.role} with a {tuple(probe_size)} '
            f'input did not reach {missing}' +
            (f' (forward failed: {error!r})' if error else ''))
    recorder.calibrate()
    recorder.clear()
    return recorded


def count_outputs(model: nn.Module, part: str, probe_size) -> int:
    """How many tensors ``model.<part>`` returns (one probe forward)."""
    seen = []

    def hook(module, args, output):
        seen.append(output)
        raise StopForward

    handle = get_module(model, part).register_forward_hook(hook)
    try:
        probe_forward(model, probe_size)
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f'could not probe the outputs of {part!r}')
    out = seen[0]
    return len(out) if isinstance(out, (tuple, list)) else 1


def _tensors(value) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _graph_parameters(tensors: List[torch.Tensor]) -> Set[int]:
    """ids of the leaf tensors ``tensors`` depend on through autograd."""
    found = {id(t) for t in tensors if t.requires_grad and t.grad_fn is None}
    stack, seen = [t.grad_fn for t in tensors if t.grad_fn is not None], set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, 'variable'):
            found.add(id(fn.variable))
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return found


def unread_modules(model: nn.Module, recorder: FeatureRecorder,
                   probe_size) -> List[str]:
    """The largest submodules of ``model`` that hold parameters none of
    which any tensor ``recorder`` records depends on: one probe forward
    with autograd on (every parameter made to require grad for it, then
    restored), then the parameters reachable from the recorded tensors'
    graph. E.g. a RetinaNet whose classifier is read: its box branch
    (``bbox_head.reg_convs``, ``bbox_head.retina_reg``)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    try:
        model.eval()  # first: eval() may freeze stages again (mmdet ResNet)
        for p in params:
            p.requires_grad_(True)
        with recorder, torch.enable_grad():
            model(probe_input(model, probe_size),
                  probe_samples(model, probe_size), mode='tensor')
        needed = _graph_parameters(_tensors(recorder.recorded(strict=False)))
    except Exception:  # a head that needs real data samples: skip nothing
        return []
    finally:
        recorder.clear()
        model.train(was_training)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    out: List[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f'{o}.') for o in out):
            continue
        own = list(module.parameters())
        # a ModuleList/ModuleDict is never called: its children are
        if own and not any(id(p) in needed for p in own) and \
                not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            out.append(name)
    return out


def skip_unread(model: nn.Module, recorder: FeatureRecorder,
                probe_size) -> List[str]:
    """Make the :func:`unread_modules` of ``model`` return zeros while
    ``recorder`` records (:meth:`FeatureRecorder.skip`), then check on a
    probe forward that every recorded tensor is unchanged; if one differs
    or the forward fails (a skipped module's output was used after all,
    e.g. through an index or under ``no_grad``), nothing is skipped.
    Returns the skipped module names."""
    with recorder:
        full_error = probe_forward(model, probe_size)
    full = {k: [t.clone() for t in _tensors(v)]
            for k, v in recorder.recorded(strict=False).items()}
    names = unread_modules(model, recorder, probe_size)
    if not names:
        return []
    recorder.skip([get_module(model, n) for n in names])
    # a module whose forward someone else already replaced is left alone
    names = [n for n in names if get_module(model, n) in recorder.skipped]
    with recorder:
        error = probe_forward(model, probe_size)
    got = recorder.recorded(strict=False)
    recorder.clear()
    same = type(error) is type(full_error) and set(got) == set(full) and all(
        len(full[k]) == len(_tensors(got[k])) and all(
            a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-6)
            for a, b in zip(full[k], _tensors(got[k]))) for k in full)
    if not same:
        recorder.unskip()
        return []
    return names

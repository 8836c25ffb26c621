"""The probe: one dummy forward of a model, at build time, to see what its
modules return (feature shapes, how many outputs a part gives) before any
data is seen. Used by the distiller's pairing and by the terms."""
from typing import Optional

import torch
import torch.nn as nn

from .recorders import FeatureRecorder, StopForward, get_module

__all__ = ['probe_input', 'probe_samples', 'probe_forward', 'probe',
           'count_outputs']


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

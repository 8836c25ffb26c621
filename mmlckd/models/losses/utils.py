"""Small helpers shared by the distillation losses (pure torch)."""
from contextlib import AbstractContextManager
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

LevelWeights = Union[str, Sequence[float]]


def fp32_guard(tensor: Tensor) -> AbstractContextManager:
    """Context that disables autocast on ``tensor``'s device type.

    Inside it, ops run in the dtype of their inputs, so callers combine it
    with :func:`upcast` to compute in float32 even when the surrounding code
    runs under ``torch.autocast``.
    """
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def upcast(tensor: Tensor) -> Tensor:
    """Return ``tensor`` as float32 unless it is float32 or float64 already.

    float64 is kept so that ``torch.autograd.gradcheck`` can be used.
    """
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.float()


def check_level_weights(weights: LevelWeights, arg_name: str) -> None:
    """Validate a level-weight spec at construction time.

    Args:
        weights: ``'reference'``, ``'uniform'`` or a sequence of numbers.
        arg_name: Name of the argument, used in error messages.
    """
    if isinstance(weights, str):
        if weights not in ('reference', 'uniform'):
            raise ValueError(f"{arg_name} must be 'reference', 'uniform' or "
                             f'a list of numbers, got {weights!r}')
    elif not all(isinstance(w, (int, float)) for w in weights):
        raise TypeError(f'{arg_name} must contain numbers, got {weights!r}')


def reference_level_weights(num: int) -> List[float]:
    """The reference codes' weights of ``num`` levels, shallow to deep:
    ``1 / 2 ** (num - 1 - i)`` for level ``i``, so the deepest level weighs 1
    and each shallower level half as much.

    OFD weights its ``N`` features so; LONDON weights pair ``i`` of ``N``
    features as level ``i`` of these ``N`` levels (pairs ``0 .. N-2``, so
    its deepest pair weighs 1/2).
    """
    return [1.0 / 2**(num - 1 - i) for i in range(num)]


def resolve_level_weights(weights: LevelWeights, num: int,
                          arg_name: str) -> List[float]:
    """Expand a level-weight spec to ``num`` weights.

    ``'reference'`` gives :func:`reference_level_weights`, ``'uniform'``
    gives ones; an explicit sequence must have exactly ``num`` entries.

    Args:
        weights: The spec (see :func:`check_level_weights`).
        num: Number of levels.
        arg_name: Name of the argument, used in error messages.

    Returns:
        list[float]: One weight per level, shallow to deep.
    """
    if weights == 'reference':
        return reference_level_weights(num)
    if weights == 'uniform':
        return [1.0] * num
    weights = [float(w) for w in weights]
    if len(weights) != num:
        raise ValueError(f'{arg_name} has {len(weights)} entries but there '
                         f'are {num} levels to weight; give one weight per '
                         "level or use 'reference' / 'uniform'")
    return weights


def resize_like(src: Tensor, ref: Tensor) -> Tensor:
    """Bilinearly resize 4-D ``src`` to ``ref``'s spatial size if needed."""
    if src.dim() == 4 and src.shape[-2:] != ref.shape[-2:]:
        src = F.interpolate(
            src, size=ref.shape[-2:], mode='bilinear', align_corners=False)
    return src


def check_logit_options(activation: str, temperature: float) -> None:
    """The options every logit distillation loss shares."""
    if activation not in ('softmax', 'sigmoid'):
        raise ValueError("activation must be 'softmax' or 'sigmoid', got "
                         f'{activation!r}')
    if temperature <= 0:
        raise ValueError(f'temperature must be > 0, got {temperature}')


def student_teacher_fp32(student: Tensor, teacher: Tensor
                         ) -> Tuple[Tensor, Tensor]:
    """The student upcast (:func:`upcast`) and resized to the teacher's
    spatial size, and the detached teacher in the student's dtype: the
    inputs of every distillation distance (call inside :func:`fp32_guard`;
    upcasting the student first keeps the target out of half precision
    under AMP)."""
    s = upcast(resize_like(student, teacher))
    return s, upcast(teacher.detach()).to(s)


def check_batch_channels(student: Tensor, teacher: Tensor, what: str,
                         fix: str) -> None:
    """A ValueError naming ``what`` (e.g. ``'OFDLoss: feature 2'``), both
    shapes and the ``fix`` unless student and teacher agree in batch size
    and channels."""
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f'{what}: student {tuple(student.shape)} and teacher '
            f'{tuple(teacher.shape)} differ in batch size or channels; '
            f'{fix}')

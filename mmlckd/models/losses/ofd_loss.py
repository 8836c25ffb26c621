"""OFD: margin ReLU targets and the partial L2 feature loss.

Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.
The LONDON reference code trains with this loss next to the Lipschitz term.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmlckd.registry import MODELS
from .utils import (LevelWeights, check_batch_channels, check_level_weights,
                    fp32_guard, resolve_level_weights, student_teacher_fp32)

__all__ = ['ofd_margin', 'OFDLoss']


def ofd_margin(
    bn: Union[nn.modules.batchnorm._BatchNorm, Tuple[Optional[Tensor],
                                                     Optional[Tensor]]]
) -> Tensor:
    """Per-channel OFD margin from the BN that precedes a teacher's ReLU.

    Modelling the pre-ReLU response of a channel as ``N(m, s^2)`` with
    ``s = |gamma|`` and ``m = beta``, the margin is the expectation of its
    negative part, ``E[x | x < 0] = m - s * phi(m / s) / Phi(-m / s)``, when
    ``Phi(-m / s) > 0.001``, and ``-3 s`` otherwise. A channel with ``s == 0``
    is the constant ``m``, whose limit is ``min(m, 0)``.

    Args:
        bn (_BatchNorm | tuple): A BN layer, or its ``(weight, bias)``. A BN
            without affine parameters counts as ``s = 1, m = 0``.

    Returns:
        Tensor: Shape (C,), float32, detached, on the parameters' device.
    """
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        weight, bias, channels = bn.weight, bn.bias, bn.num_features
    else:
        weight, bias = bn
        if weight is None and bias is None:
            raise ValueError('ofd_margin: give a BN layer or (weight, bias) '
                             'with at least one tensor')
        channels = (weight if weight is not None else bias).numel()
    params = [p for p in (weight, bias) if p is not None]
    device = params[0].device if params else torch.device('cpu')
    with torch.no_grad():
        s = (
            weight.detach().float().abs()
            if weight is not None else torch.ones(channels, device=device))
        m = (
            bias.detach().float() if bias is not None else torch.zeros(
                channels, device=device))
        safe_s = torch.where(s > 0, s, torch.ones_like(s))
        z = m / safe_s
        cdf = 0.5 * torch.erfc(z / math.sqrt(2.0))  # Phi(-z)
        pdf = torch.exp(-0.5 * z.square()) / math.sqrt(2.0 * math.pi)
        margin = torch.where(cdf > 0.001, m - s * pdf / cdf.clamp(min=0.001),
                             -3.0 * s)
        return torch.where(s > 0, margin, m.clamp(max=0.0))


class _PartialL2(torch.autograd.Function):
    """``sum(where((s > t) | (t > 0), s - t, 0) ** 2)`` for a target ``t``
    without grad, with the gradient ``2 * diff`` w.r.t. ``s``.

    The same values as the plain autograd expression, with fewer passes over
    the (teacher-sized) maps and only ``diff`` kept for backward (not the
    mask and ``diff`` as autograd would).
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, reuse_t: bool = False) -> Tensor:
        mask = torch.gt(s, t).logical_or_(t > 0)
        # reuse_t: ``t`` is a temporary of the caller; ``diff`` overwrites it
        # (if it has diff's dtype: s - t is computed in the promoted dtype)
        if reuse_t and t.dtype == s.dtype and t.shape == s.shape:
            diff = torch.sub(s, t, out=t)
        else:
            diff = s - t
        diff.masked_fill_(mask.logical_not_(), 0.0)
        del mask  # before the square's temporary: a lower peak
        ctx.save_for_backward(diff)
        return diff.square().sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        diff, = ctx.saved_tensors
        return diff * (2 * grad), None, None


@MODELS.register_module()
class OFDLoss(nn.Module):
    """OFD partial L2 distillation loss.

    For feature ``i`` with student map ``s`` (already through the
    connector) and teacher map ``t``: ``target = max(t, margin_i)`` and::

        loss_i = sum((s - target) ** 2 * [(s > target) | (target > 0)]) / B

    i.e. where the teacher's target is negative (it will be zeroed by the
    ReLU) the student is only penalised for being above it. A feature whose
    margin is None is not followed by a ReLU (FPN outputs, MobileNetV2's
    linear bottlenecks) or its BN is unknown: it gets the plain L2
    ``sum((s - t) ** 2) / B``, since no ReLU hides its negative part. The
    total is ``loss_weight * sum_i w_i * loss_i``. Student maps of another spatial
    size are bilinearly resized to the teacher's; teacher maps get no
    gradient. The reference ImageNet setting divides by ``1e4`` (set
    ``loss_weight=1e-4``).

    Args:
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        feat_weights (str | Sequence[float]): Per-feature weights;
            ``'reference'`` (OFD's, see
            :func:`~mmlckd.models.losses.utils.reference_level_weights`),
            ``'uniform'``, or one number per feature (e.g. the VOC
            segmentation setting ``[1/8, 1/4, 1/2, 1, 1, 1/16]``).
            Defaults to 'reference'.
    """

    def __init__(self,
                 loss_weight: float = 1.0,
                 feat_weights: LevelWeights = 'reference') -> None:
        super().__init__()
        check_level_weights(feat_weights, 'feat_weights')
        self.loss_weight = loss_weight
        self.feat_weights = feat_weights

    def forward(
            self,
            student_feats: Sequence[Tensor],
            teacher_feats: Sequence[Tensor],
            margins: Optional[Sequence[Optional[Tensor]]] = None) -> Tensor:
        """Compute the loss.

        Args:
            student_feats (Sequence[Tensor]): N maps (B, C_i, h, w), already
                in teacher channel space.
            teacher_feats (Sequence[Tensor]): N maps (B, C_i, H, W).
            margins (Sequence[Tensor | None], optional): One (C_i,) margin
                (see :func:`ofd_margin`) or None per feature.

        Returns:
            Tensor: Scalar loss (float32, or float64 for float64 inputs).
        """
        num = len(teacher_feats)
        if len(student_feats) != num:
            raise ValueError(f'OFDLoss: got {len(student_feats)} student and '
                             f'{num} teacher features')
        if margins is None:
            margins = [None] * num
        if len(margins) != num:
            raise ValueError(f'OFDLoss: got {len(margins)} margins for {num} '
                             'features')
        weights = resolve_level_weights(self.feat_weights, num, 'feat_weights')
        loss = 0.
        for i, (s, t, margin) in enumerate(
                zip(student_feats, teacher_feats, margins)):
            check_batch_channels(
                s, t, f'OFDLoss: feature {i}', 'pass the student feature '
                'through a connector to the teacher channels')
            with fp32_guard(s):
                s, t = student_teacher_fp32(s, t)
                if margin is not None:
                    if margin.numel() != t.size(1):
                        raise ValueError(
                            f'OFDLoss: margin {i} has {margin.numel()} '
                            f'entries for {t.size(1)} channels')
                    shape = (1, -1) + (1, ) * (t.dim() - 2)
                    t = torch.max(t, margin.detach().to(t).view(shape))
                    term = _PartialL2.apply(s, t, True)  # t: a new tensor
                else:
                    term = (s - t).square().sum()
                loss = loss + weights[i] * term / s.size(0)
        return loss * self.loss_weight

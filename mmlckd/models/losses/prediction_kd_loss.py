"""Prediction-level distillation with three distances: KL with temperature,
logit matching, and correlation distance.

Predictions are classification logits laid out as (B, K, ...) with the
class axis split out by ``num_classes`` (a dense detector's (B, A*C, H, W)
map holds A anchors of C classes; ``num_classes=C`` reads it as
(B, A, C, H, W)). ``activation`` says how the head turns logits into
probabilities:

* ``'softmax'``: one distribution over the classes at every position (a
  segmentation decode head, an RoI classifier);
* ``'sigmoid'``: every class is its own Bernoulli (RetinaNet, FCOS, ATSS
  and GFL classification branches, RPN objectness).

Distances, per position (then averaged over positions, or over the valid
positions when labels with ``ignore_index`` are given):

* ``'kl'``: ``T^2 * KL(teacher || student)`` on the tempered
  probabilities (per-class Bernoulli KLs summed for sigmoid);
* ``'logit'``: KD as logit matching, its infinite-temperature limit.
  Softmax: ``1 / (2C) * sum_c (s_c - mean(s) - t_c + mean(t))^2``: the MSE of
  the centred logits, halved; sigmoid: ``sum_c (s_c - t_c)^2 / 8`` (each
  class is a two-way softmax over the logits (z/2, -z/2)). Both are the
  ``T -> inf`` limits of the ``'kl'`` distance, which the tests check;
* ``'correlation'``: ``1 - r``, Pearson's correlation between the
  student's and the teacher's probabilities over the classes of a position
  (R2KD's correlation distance in place of KL).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmlckd.registry import MODELS
from .utils import (check_batch_channels, check_logit_options, fp32_guard,
                    student_teacher_fp32)

__all__ = ['PredictionKDLoss', 'split_classes', 'position_distance',
           'masked_mean']

DISTANCES = ('kl', 'logit', 'correlation')


def split_classes(logits: Tensor, num_classes: Optional[int]) -> Tensor:
    """(B, K, *S) -> (B * K // C, C, *S) with the classes on dim 1 (anchor
    major, as mmdet's dense heads lay them out); unchanged for None or
    ``K == C``."""
    if num_classes is None or logits.size(1) == num_classes:
        return logits
    b, k = logits.shape[:2]
    if k % num_classes:
        raise ValueError(
            f'PredictionKDLoss: {k} channels are not a multiple of '
            f'num_classes={num_classes}')
    rest = logits.shape[2:]
    return logits.reshape(b, k // num_classes, num_classes, *rest).reshape(
        b * (k // num_classes), num_classes, *rest)


class _SigmoidKL(torch.autograd.Function):
    """Per-class Bernoulli ``KL(sigmoid(t) || sigmoid(s))`` summed over dim
    1, (N, C, *S) -> (N, *S), for a teacher ``t`` without grad.

    Per element, mirrored so that the teacher's logit is ``y = -|t| <= 0``
    (``x = -s`` where ``t > 0``, else ``s``; ``q = sigmoid(y)``):
    ``softplus(x) - softplus(y) - q (x - y)``, the same value as
    ``p (log p - log p_s) + (1 - p)(log(1 - p) - log(1 - p_s))``, with no
    cancellation where both logits are far below zero (a dense head's
    background). The gradient ``sigmoid(s) - sigmoid(t)`` is the one tensor
    kept for backward. About two thirds of the time of the autograd
    expression (benchmarks/README.md).
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor) -> Tensor:
        x = torch.where(t > 0, -s, s)
        y = -t.abs()
        kl = F.softplus(x).sub_(F.softplus(y)).sub_(
            torch.sigmoid(y).mul_(x.sub_(y)))
        ctx.save_for_backward(torch.sigmoid(s).sub_(torch.sigmoid(t)))
        return kl.sum(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        diff, = ctx.saved_tensors
        return diff * grad.unsqueeze(1), None


def position_distance(s: Tensor, t: Tensor, distance: str, activation: str,
                      temperature: float = 1.0, eps: float = 1e-12
                      ) -> Tensor:
    """(N, C, *S) logits -> (N, *S) distances (the module docstring's
    definitions; KL already multiplied by ``temperature ** 2``)."""
    if distance == 'kl':
        s, t = s / temperature, t / temperature
        if activation == 'sigmoid':
            return _SigmoidKL.apply(s, t.detach()) * temperature**2
        log_p_t = F.log_softmax(t, dim=1)
        kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=1))).sum(1)
        return kl * temperature**2
    if distance == 'logit':
        if activation == 'softmax':
            diff = (s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))
            return diff.square().mean(1) / 2
        return (s - t).square().sum(1) / 8
    # correlation distance on the probabilities
    if activation == 'softmax':
        p_s, p_t = F.softmax(s, dim=1), F.softmax(t, dim=1)
    else:
        p_s, p_t = torch.sigmoid(s), torch.sigmoid(t)
    p_s = p_s - p_s.mean(1, keepdim=True)
    p_t = p_t - p_t.mean(1, keepdim=True)
    cov = (p_s * p_t).sum(1)
    norm = (p_s.square().sum(1) * p_t.square().sum(1)).clamp_min(eps).sqrt()
    return 1 - cov / norm


@MODELS.register_module()
class PredictionKDLoss(nn.Module):
    """Distillation of classification predictions (see the module
    docstring).

    Args:
        distance (str): ``'kl'``, ``'logit'`` or ``'correlation'``.
            Defaults to 'kl'.
        activation (str): ``'softmax'`` or ``'sigmoid'``. Defaults to
            'softmax'.
        temperature (float): T of the ``'kl'`` distance. Defaults to 1.0.
        num_classes (int, optional): classes per position when the logits
            hold several anchors (see :func:`split_classes`).
        ignore_index (int): label value excluded when labels are given.
            Defaults to 255.
        loss_weight (float): Defaults to 1.0.
        eps (float): guards the correlation's norm. Defaults to 1e-12.
    """

    def __init__(self,
                 distance: str = 'kl',
                 activation: str = 'softmax',
                 temperature: float = 1.0,
                 num_classes: Optional[int] = None,
                 ignore_index: int = 255,
                 loss_weight: float = 1.0,
                 eps: float = 1e-12) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f'distance must be one of {DISTANCES}, got '
                             f'{distance!r}')
        check_logit_options(activation, temperature)
        self.distance = distance
        self.activation = activation
        self.temperature = temperature
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self.eps = eps

    def forward(self, student: Tensor, teacher: Tensor,
                labels: Optional[Tensor] = None) -> Tensor:
        """``student``/``teacher``: logits (B, K, ...) of the same K;
        ``labels`` (B, H', W'), optional, for softmax dense predictions
        (positions at ``ignore_index`` are left out)."""
        check_batch_channels(
            student, teacher, 'PredictionKDLoss: logits', 'teacher and '
            'student must predict the same classes with the same anchors')
        with fp32_guard(student):
            s, t = student_teacher_fp32(student, teacher)
            if self.num_classes is not None and labels is not None:
                raise ValueError('PredictionKDLoss: labels are for one '
                                 'class distribution per position; give '
                                 'num_classes or labels, not both')
            s = split_classes(s, self.num_classes)
            t = split_classes(t, self.num_classes)
            dist = position_distance(s, t, self.distance, self.activation,
                                     self.temperature, self.eps)
            loss = masked_mean(dist, labels, self.ignore_index,
                               'PredictionKDLoss')
        return loss * self.loss_weight


def masked_mean(dist: Tensor, labels: Optional[Tensor], ignore_index: int,
                owner: str) -> Tensor:
    """The mean of the per-position ``dist`` (N, *S) over the positions
    whose label (nearest-resized to ``S``) is not ``ignore_index``; the
    plain mean without labels."""
    if labels is None:
        return dist.mean()
    if labels.dim() == 3 and labels.shape[-2:] != dist.shape[-2:]:
        labels = F.interpolate(labels[:, None].float(),
                               size=dist.shape[-2:], mode='nearest')[:, 0]
    if labels.shape != dist.shape:
        raise ValueError(
            f'{owner}: labels {tuple(labels.shape)} do not match the '
            f'predictions\' positions {tuple(dist.shape)}')
    valid = labels != ignore_index
    return torch.where(valid, dist, dist.new_zeros(())).sum() / \
        valid.sum().clamp(min=1)

"""Normalised feature imitation for neck levels (PKD's form).

Cao et al., "PKD: General Distillation Framework for Object Detectors via
Pearson Correlation Coefficient", NeurIPS 2022. Each map (N, C, H, W) is
read as C rows of N*H*W values; every row is standardised (mean 0, divided
by its standard deviation + eps) in both nets, then the two standardised
maps are compared by MSE, halved. Per channel this is an affine function of
``1 - r``, Pearson's correlation between the student's and the teacher's
channel (``tests/models/losses/test_pkd_prediction_losses.py`` checks it
against ``numpy.corrcoef``), so feature magnitudes, which differ between
nets and between levels, no longer decide which level owns the gradient.
"""
from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmlckd.registry import MODELS
from .utils import check_batch_channels, fp32_guard, upcast

__all__ = ['PKDLoss', 'channel_standardise', 'standardised_mse']


def channel_standardise(feat: Tensor, eps: float = 1e-6) -> Tensor:
    """(N, C, H, W) -> (C, N*H*W) rows of mean 0 and std 1 (unbiased std,
    ``+ eps`` in the denominator)."""
    rows = feat.transpose(0, 1).reshape(feat.size(1), -1)
    mean = rows.mean(dim=1, keepdim=True)
    # a single value per channel (batch 1, a 1x1 level): std 0, not NaN
    std = rows.std(dim=1, keepdim=True,
                   correction=1 if rows.size(1) > 1 else 0)
    return (rows - mean) / (std + eps)


def standardised_mse(s: Tensor, t: Tensor, eps: float = 1e-6) -> Tensor:
    """``F.mse_loss(channel_standardise(s), channel_standardise(t))``
    without forming the student's standardised map: per channel ``c`` of
    ``M = N*H*W`` values, with ``s_c`` centred, ``d_c = std(s_c) + eps`` and
    ``t'_c`` the teacher's standardised row,
    ``sum((s_c / d_c - t'_c) ** 2) = S_ss / d_c**2 - 2 S_st / d_c + S_tt``
    (``S_ss = sum(s_c ** 2)``, ``S_st = sum(s_c t'_c)``,
    ``S_tt = sum(t'_c ** 2)``). The same value, about half the passes over
    the maps forward and backward (no transposed copy, no standardised
    student map kept for backward). ``t`` gets no gradient."""
    dims = [0] + list(range(2, s.dim()))
    m = s.numel() // s.size(1)
    dof = m - 1 if m > 1 else 1  # one value per channel: std 0 (not NaN)
    with torch.no_grad():
        t_var, t_mean = torch.var_mean(t, dim=dims, keepdim=True,
                                       correction=1 if m > 1 else 0)
        t_std = (t_var.sqrt() + eps)
        t_n = (t - t_mean).div_(t_std)
        s_tt = t_var.flatten() * dof / t_std.flatten().square()
    s_c = s - s.mean(dim=dims, keepdim=True)
    s_ss = s_c.square().sum(dim=dims)
    s_st = (s_c * t_n).sum(dim=dims)
    # clamp: a constant channel (S_ss == 0) gets a zero gradient, not NaN
    d = (s_ss.clamp_min(1e-30) / dof).sqrt() + eps
    per_channel = s_ss / d.square() - 2 * s_st / d + s_tt
    return per_channel.sum() / s.numel()


@MODELS.register_module()
class PKDLoss(nn.Module):
    """PKD: MSE/2 between per-channel standardised student and teacher maps,
    summed over levels.

    Args:
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        resize_student (bool): Where the spatial sizes differ, resize the
            student's map to the teacher's (bilinear); False resizes the
            teacher's to the student's. Defaults to True.
        eps (float): Added to the standard deviation. Defaults to 1e-6.
    """

    def __init__(self, loss_weight: float = 1.0, resize_student: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.resize_student = resize_student
        self.eps = eps

    def level(self, s: Tensor, t: Tensor) -> Tensor:
        """The loss of one level (student and teacher of equal channels)."""
        check_batch_channels(
            s, t, 'PKDLoss', "map the student to the teacher's channels "
            'first (NeckPKDTerm adds a 1x1 conv connector where they '
            'differ)')
        if s.shape[-2:] != t.shape[-2:]:
            if self.resize_student:
                s = F.interpolate(s, size=t.shape[-2:], mode='bilinear',
                                  align_corners=False)
            else:
                t = F.interpolate(t, size=s.shape[-2:], mode='bilinear',
                                  align_corners=False)
        with fp32_guard(s):
            s = upcast(s)
            return standardised_mse(s, upcast(t.detach()).to(s), self.eps) / 2

    def forward(self, student: Union[Tensor, Sequence[Tensor]],
                teacher: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        """``student``/``teacher``: one map or one map per level."""
        if isinstance(student, Tensor):
            student, teacher = [student], [teacher]
        if len(student) != len(teacher):
            raise ValueError(f'PKDLoss: {len(student)} student levels and '
                             f'{len(teacher)} teacher levels')
        loss = sum(self.level(s, t) for s, t in zip(student, teacher))
        return loss * self.loss_weight

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

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmlckd.registry import MODELS
from .utils import check_batch_channels, fp32_guard, upcast

__all__ = ['PKDLoss', 'channel_standardise']


def channel_standardise(feat: Tensor, eps: float = 1e-6) -> Tensor:
    """(N, C, H, W) -> (C, N*H*W) rows of mean 0 and std 1 (unbiased std,
    ``+ eps`` in the denominator)."""
    rows = feat.transpose(0, 1).reshape(feat.size(1), -1)
    mean = rows.mean(dim=1, keepdim=True)
    # a single value per channel (batch 1, a 1x1 level): std 0, not NaN
    std = rows.std(dim=1, keepdim=True,
                   correction=1 if rows.size(1) > 1 else 0)
    return (rows - mean) / (std + eps)


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
            s = channel_standardise(upcast(s), self.eps)
            t = channel_standardise(upcast(t.detach()).to(s), self.eps)
            return F.mse_loss(s, t) / 2

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

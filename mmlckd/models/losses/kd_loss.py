"""Response (logit) distillation: pixel-wise KD and channel-wise (CWD) KD."""
from typing import Optional

import torch.nn as nn
from torch import Tensor

from mmlckd.registry import MODELS
from .prediction_kd_loss import masked_mean, position_distance
from .utils import check_logit_options, fp32_guard, student_teacher_fp32

__all__ = ['KDLoss']


@MODELS.register_module()
class KDLoss(nn.Module):
    """Knowledge distillation on logits, ``KL(teacher || student)``.

    Modes (logits (B, C) or (B, C, H, W), C = classes or channels):

    * ``mode='pixel'``, ``activation='softmax'``: softmax over the class dim
      at every position (Hinton et al. 2015 for (B, C); per pixel for dense
      prediction); the KL is averaged over the valid positions.
    * ``mode='pixel'``, ``activation='sigmoid'``: every class is an
      independent Bernoulli (for sigmoid classifiers such as RetinaNet); the
      per-position KL is the SUM of the per-class binary KLs.
    * ``mode='channel'``: channel-wise distillation (CWD, Shu et al. 2021):
      softmax over the spatial positions of each channel, KL averaged over
      ``B * C``. Needs 4-D logits and ``activation='softmax'``.

    Mapping to mmdet's ``KnowledgeDistillationKLDivLoss`` (softmax, used by
    ``LD``/``KnowledgeDistillationSingleStageDetector``): mmdet takes
    ``F.kl_div(..., reduction='none').mean(1)``, the mean of the per-class
    terms over the C classes of each position, where this loss sums them,
    so mmdet's ``loss_weight=w`` equals ``loss_weight=w / C`` here.

    Logits are divided by ``temperature`` and the loss is multiplied by
    ``temperature ** 2``, then by ``loss_weight``. Student logits of another
    spatial size are bilinearly resized to the teacher's. The teacher gets
    no gradient. Computation is in float32 (float64 stays float64).

    Args:
        temperature (float): Softening temperature T. Defaults to 1.0.
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        activation (str): ``'softmax'`` or ``'sigmoid'``. Defaults to
            'softmax'.
        mode (str): ``'pixel'`` or ``'channel'``. Defaults to 'pixel'.
        ignore_index (int): Label value excluded in pixel mode.
            Defaults to 255.
    """

    def __init__(self,
                 temperature: float = 1.0,
                 loss_weight: float = 1.0,
                 activation: str = 'softmax',
                 mode: str = 'pixel',
                 ignore_index: int = 255) -> None:
        super().__init__()
        check_logit_options(activation, temperature)
        if mode not in ('pixel', 'channel'):
            raise ValueError(
                f"mode must be 'pixel' or 'channel', got {mode!r}")
        if mode == 'channel' and activation != 'softmax':
            raise ValueError("mode='channel' (CWD) needs activation='softmax'")
        self.temperature = temperature
        self.loss_weight = loss_weight
        self.activation = activation
        self.mode = mode
        self.ignore_index = ignore_index

    def forward(self,
                student_logits: Tensor,
                teacher_logits: Tensor,
                labels: Optional[Tensor] = None) -> Tensor:
        """Compute the loss.

        Args:
            student_logits (Tensor): (B, C) or (B, C, H, W).
            teacher_logits (Tensor): Same number of classes (channels).
            labels (Tensor, optional): (B,) or (B, H', W') labels; positions
                equal to ``ignore_index`` are excluded (pixel mode only;
                resized to the logits with nearest interpolation). Ignored
                in channel mode.

        Returns:
            Tensor: Scalar loss.
        """
        if student_logits.size(1) != teacher_logits.size(1):
            raise ValueError(
                f'KDLoss: the student predicts {student_logits.size(1)} '
                f'classes (channels) but the teacher '
                f'{teacher_logits.size(1)}; teacher and student must predict '
                'the same classes')
        if (student_logits.dim() != teacher_logits.dim()
                or student_logits.size(0) != teacher_logits.size(0)):
            raise ValueError(
                f'KDLoss: student logits {tuple(student_logits.shape)} and '
                f'teacher logits {tuple(teacher_logits.shape)} are not '
                'compatible')
        T = self.temperature
        with fp32_guard(student_logits):
            s, t = student_teacher_fp32(student_logits, teacher_logits)
            if self.mode == 'channel':
                if s.dim() != 4:
                    raise ValueError("KDLoss: mode='channel' needs "
                                     '(B, C, H, W) logits')
                # softmax over H * W of every channel
                kl = position_distance(s.flatten(2).transpose(1, 2),
                                       t.flatten(2).transpose(1, 2), 'kl',
                                       'softmax', T)
                loss = kl.mean()
            else:
                kl = position_distance(s, t, 'kl', self.activation, T)
                loss = masked_mean(kl, labels, self.ignore_index, 'KDLoss')
        return loss * self.loss_weight

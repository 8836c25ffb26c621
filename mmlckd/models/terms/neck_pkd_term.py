"""PKD on the neck levels: per-channel standardised MSE of every FPN level
(:class:`~mmlckd.models.losses.PKDLoss`)."""
from typing import Optional, Sequence

import torch.nn as nn

from mmlckd.registry import MODELS
from ..probe import count_outputs
from ..losses import PKDLoss
from .base import DistillTerm, Read, as_list

__all__ = ['NeckPKDTerm']


@MODELS.register_module()
class NeckPKDTerm(DistillTerm):
    """Feature imitation on the neck levels, PKD's form.

    Every output of ``path`` (an FPN's levels) of the student is compared
    with the same level of the teacher: both are standardised per channel,
    then matched by MSE/2, summed over the levels. Where the channel counts
    differ, a 1x1 convolution per level (no norm: the standardisation
    follows) maps the student's level to the teacher's channels; where the
    spatial sizes differ, the student's level is resized to the teacher's.

    Args:
        path (str): the module whose outputs are the levels. Default
            ``'neck'``.
        levels (Sequence[int], optional): which outputs; default all.
        eps (float): PKD's epsilon. Default 1e-6.
        probe_input_size: (H, W) used to count the outputs. Default
            (128, 128).
    """

    def __init__(self, path: str = 'neck',
                 levels: Optional[Sequence[int]] = None, eps: float = 1e-6,
                 probe_input_size=(128, 128)) -> None:
        super().__init__()
        self.path = path
        self.levels = None if levels is None else list(levels)
        self.loss = PKDLoss(eps=eps)
        self.probe_input_size = tuple(probe_input_size)
        self.connectors = nn.ModuleList()

    def bind(self, student, teacher):
        levels = self.levels
        if levels is None:
            n_s = count_outputs(student, self.path, self.probe_input_size)
            n_t = count_outputs(teacher, self.path, self.probe_input_size)
            if n_s != n_t:
                raise ValueError(
                    f'NeckPKDTerm: the student {self.path} gives {n_s} '
                    f'levels and the teacher {n_t}; set levels=[...]')
            levels = range(n_s)
        return [Read.same(self.path, index=i, call='first') for i in levels]

    def build(self, student, teacher):
        for s, t in zip(student, teacher):
            c_s, c_t = s.size(1), t.size(1)
            self.connectors.append(
                nn.Identity() if c_s == c_t else nn.Conv2d(c_s, c_t, 1))

    def forward(self, student, teacher, data_samples=None):
        s = [conn(x) for conn, x in zip(self.connectors,
                                        (as_list(v)[0] for v in student))]
        t = [as_list(v)[0] for v in teacher]
        return self.loss(s, t)

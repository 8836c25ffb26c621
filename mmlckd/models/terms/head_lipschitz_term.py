"""LONDON inside the head: match the Lipschitz estimates of the blocks of a
head's tower, per FPN level, with the same estimator as the backbone's
term (:class:`~mmlckd.models.losses.LipschitzLoss`)."""
from typing import Optional, Sequence

import torch
import torch.nn as nn

from mmlckd.registry import MODELS
from ..losses import LipschitzLoss
from ..recorders import RecordSpec
from .base import DistillTerm, Read, as_list, head_of
from .prediction_kd_term import classifier_of

__all__ = ['HeadLipschitzTerm', 'tower_of']


def tower_of(model: nn.Module, tower: str) -> tuple:
    """``(specs, call)`` of a head tower's chain: the tower's input, every
    conv of the tower, then the head's classifier (classification tower
    only)."""
    name, head = head_of(model)
    convs = getattr(head, tower, None)
    if not isinstance(convs, (nn.ModuleList, nn.Sequential)) or \
            not len(convs):
        raise ValueError(
            f'HeadLipschitzTerm: {name} ({type(head).__name__}) has no '
            f'tower {tower!r}; give chain=[...] (module paths, shallow to '
            'deep)')
    call = 'last' if name == 'decode_head' else 'all'
    base = f'{name}.{tower}'
    specs = [RecordSpec(f'{base}.0', source='input', call=call)]
    specs += [RecordSpec(f'{base}.{i}', call=call) for i in range(len(convs))]
    if tower in ('cls_convs', 'convs'):
        specs.append(RecordSpec(classifier_of(model)['path'], call=call))
    return specs


@MODELS.register_module()
class HeadLipschitzTerm(DistillTerm):
    """LONDON's term between consecutive convolutions of a head tower.

    For every level (an FPN level of a dense detector head; the single map
    of a decode head) the maps ``[tower input, conv_1, ..., conv_n,
    classifier]`` form ``n + 1`` blocks; each block's transmitting matrix
    gives a per-sample Lipschitz estimate, and the student's are matched to
    the teacher's (MSE, LONDON's pair weights ``1/2^(N-i-1)`` within a
    level), summed over the levels. Both nets use their raw maps (no
    connectors: a transmitting matrix may differ in shape between them).

    Args:
        tower (str): the head's tower attribute: ``'cls_convs'`` (mmdet
            dense heads, default; ``'convs'`` is used for a decode head),
            ``'reg_convs'``, ...
        chain (Sequence[str], optional): explicit module paths instead
            (outputs, ``call='all'``).
        lipschitz_loss (dict): :class:`LipschitzLoss` arguments.
    """

    def __init__(self, tower: str = 'cls_convs',
                 chain: Optional[Sequence[str]] = None,
                 lipschitz_loss: Optional[dict] = None) -> None:
        super().__init__()
        self.tower = tower
        self.chain = chain
        self.loss = LipschitzLoss(**(lipschitz_loss or {}))

    def bind(self, student, teacher):
        if self.chain is not None:
            specs = [RecordSpec(p, call='all') for p in self.chain]
        else:
            tower = self.tower
            if tower == 'cls_convs' and head_of(student)[0] == 'decode_head':
                tower = 'convs'
            specs = tower_of(student, tower)
        if len(specs) < 2:
            raise ValueError('HeadLipschitzTerm needs two or more maps')
        return [Read(s, s) for s in specs]

    def build(self, student, teacher):
        s_levels = _levels(student)
        t_levels = _levels(teacher)
        if len(s_levels) != len(t_levels):
            raise ValueError(
                f'HeadLipschitzTerm: the student head runs on '
                f'{len(s_levels)} levels and the teacher\'s on '
                f'{len(t_levels)}')
        for level, (s_maps, t_maps) in enumerate(zip(s_levels, t_levels)):
            for net, maps in (('student', s_maps), ('teacher', t_maps)):
                self.loss.register_blocks(
                    f'head{level}', net,
                    [(a.size(1), b.size(1)) for a, b in zip(maps, maps[1:])])

    def forward(self, student, teacher, data_samples=None):
        total, ratios = None, []
        for level, (s_maps, t_maps) in enumerate(
                zip(_levels(student), _levels(teacher))):
            term, sigmas = self.loss(s_maps, t_maps, key=f'head{level}')
            total = term if total is None else total + term
            ratios += [sigmas[k] / sigmas['sigma_t' + k[len('sigma_s'):]]
                       for k in sigmas if k.startswith('sigma_s')]
        return total, {'sigma_ratio.head': torch.stack(ratios).mean()}


def _levels(recorded) -> list:
    """Per level, the chain's maps: ``recorded[i]`` is map ``i`` (a list
    over levels for ``call='all'``)."""
    per_map = [as_list(v) for v in recorded]
    return [list(maps) for maps in zip(*per_map)]

"""The built-in terms on the distiller's feature pairs (``features=``):
OFD's feature mimic (``loss_feat``) and LONDON's Lipschitz term
(``loss_lipschitz``), and the response KD of ``response=`` (``loss_kd``).

They have the shape of every other term (:class:`~.base.DistillTerm`);
the distiller builds them from its ``features=``, ``feature_loss=``,
``lipschitz_loss=``, ``lipschitz_on=`` and ``response=`` arguments (the
loss configs stay where users set them) and runs them with the others.
Both pair terms read the student's maps through the pairs' 1x1-conv + BN
connectors, which they share: the distiller owns them and computes their
outputs once a step (the ``connected`` context of :func:`~mmlckd.models.
distillers.term_runner.run_terms`).
"""
from typing import Dict, List, Optional, Sequence

import torch.nn as nn
from torch import Tensor

from mmlckd.registry import MODELS
from ..recorders import get_module
from .base import DistillTerm, Read, as_list
from .prediction_kd_term import seg_labels

__all__ = ['OFDTerm', 'LipschitzTerm', 'ResponseKDTerm', 'lipschitz_maps',
           'sigma_ratios']


def lipschitz_maps(s_raw: Sequence[Tensor], s_conn: Sequence[Tensor],
                   wiring: str):
    """The student's ``(outputs, inputs)`` maps of the Lipschitz term: the
    transmitting matrix of pair ``i`` is ``TM(inputs[i], outputs[i + 1])``.

    ``'reference'`` is LONDON's loop, ``TM(connector_i(s_i), s_{i+1})``: it
    replaces ``s_i`` by its connector output just before forming pair ``i``,
    so ``s_{i+1}`` is still raw there. ``'connector'`` uses the connector
    outputs on both sides, ``'raw'`` the raw maps on both sides.
    """
    if wiring == 'reference':
        return list(s_raw), list(s_conn)
    maps = list(s_conn if wiring == 'connector' else s_raw)
    return maps, maps


def sigma_ratios(sigmas: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``sigma_ratio.<group>.<i>`` = ``sigma_s.<group>.<i> /
    sigma_t.<group>.<i>`` for every student estimate of ``sigmas`` (inf
    where the teacher's estimate is 0). No name holds ``loss``, so mmengine
    logs them without adding them to the total loss."""
    return {'sigma_ratio.' + k[len('sigma_s.'):]:
            v / sigmas['sigma_t.' + k[len('sigma_s.'):]]
            for k, v in sigmas.items() if k.startswith('sigma_s.')}


class _PairTerm(DistillTerm):
    """A term on every feature pair: reads the pairs, gets the connector
    outputs as the ``connected`` context."""

    context = ('connected', )

    def __init__(self, pairs: Sequence) -> None:
        super().__init__()
        self.pairs = list(pairs)

    def bind(self, student, teacher):
        return [Read(p.student, p.teacher) for p in self.pairs]


@MODELS.register_module()
class OFDTerm(_PairTerm):
    """OFD's feature mimic of the connector outputs, per pair, against the
    teacher's maps with the margin of the pair's ``teacher_bn``.

    Args:
        pairs: the distiller's feature pairs.
        loss (nn.Module): the built ``mmlckd.OFDLoss`` (it applies its own
            ``loss_weight``).
    """

    def __init__(self, pairs: Sequence, loss: nn.Module) -> None:
        super().__init__(pairs)
        self.loss = loss
        self._margins: List[Optional[str]] = []

    def bind(self, student, teacher):
        from ..losses import ofd_margin
        for i, pair in enumerate(self.pairs):
            if pair.teacher_bn is None:
                self._margins.append(None)
                continue
            bn = get_module(teacher, pair.teacher_bn, 'teacher')
            name = f'_margin_{i}'
            self.register_buffer(name, ofd_margin(bn).detach().clone(),
                                 persistent=False)
            self._margins.append(name)
        return super().bind(student, teacher)

    def forward(self, student, teacher, data_samples=None, connected=None):
        margins = [getattr(self, m) if m else None for m in self._margins]
        return self.loss(connected, list(teacher), margins)


@MODELS.register_module()
class LipschitzTerm(_PairTerm):
    """LONDON's term: the weighted MSE of the student's and the teacher's
    per-block Lipschitz estimates, summed over the pair groups; logs
    ``sigma_s/sigma_t/sigma_ratio.<group>.<i>`` (``<i>``: the block, i.e.
    the pair index within its group).

    Args:
        pairs: the distiller's feature pairs.
        loss (nn.Module): the built ``mmlckd.LipschitzLoss``.
        groups (dict): ``group -> pair indices`` (two or more each).
        wiring (str): the distiller's ``lipschitz_on``
            (:func:`lipschitz_maps`).
    """

    def __init__(self, pairs: Sequence, loss: nn.Module,
                 groups: Dict[str, List[int]], wiring: str) -> None:
        super().__init__(pairs)
        self.loss = loss
        self.groups = dict(groups)
        self.wiring = wiring

    def register_blocks(self, block_shapes: dict) -> None:
        """Create the estimator's power-iteration state of every block
        (``(group, net) -> [(C_in, C_out)]``) before a checkpoint loads."""
        if hasattr(self.loss, 'register_blocks'):
            for (group, net), blocks in block_shapes.items():
                self.loss.register_blocks(group, net, blocks)

    def forward(self, student, teacher, data_samples=None, connected=None):
        s_raw = list(student)
        s_out, s_in = lipschitz_maps(
            s_raw, s_raw if connected is None else connected, self.wiring)
        total, sigmas = None, {}
        for group, idx in self.groups.items():
            term, group_sigmas = self.loss(
                [s_out[i] for i in idx], [teacher[i] for i in idx],
                key=group, student_inputs=[s_in[i] for i in idx])
            sigmas.update(group_sigmas)
            total = term if total is None else total + term
        sigmas.update(sigma_ratios(sigmas))
        return total, sigmas


@MODELS.register_module()
class ResponseKDTerm(DistillTerm):
    """The distiller's ``response=`` entries: each entry's loss averaged
    over its calls, summed over the entries.

    Args:
        entries (list[dict]): the parsed ``response=`` entries (with
            ``student_spec``, ``teacher_spec`` and ``use_labels``).
        losses (nn.ModuleList): one built loss per entry.
    """

    def __init__(self, entries: Sequence[dict], losses: nn.ModuleList
                 ) -> None:
        super().__init__()
        self.entries = list(entries)
        self.losses = losses

    def bind(self, student, teacher):
        return [Read(e['student_spec'], e['teacher_spec'])
                for e in self.entries]

    def forward(self, student, teacher, data_samples=None):
        total = None
        for entry, loss_fn, s, t in zip(self.entries, self.losses, student,
                                        teacher):
            s_list, t_list = as_list(s), as_list(t)
            if len(s_list) != len(t_list):
                raise ValueError(
                    f'response {entry["student"]!r}: the student gave '
                    f'{len(s_list)} outputs and the teacher {len(t_list)}')
            labels = seg_labels(data_samples) \
                if entry.get('use_labels', False) else None
            for s_i, t_i in zip(s_list, t_list):
                term = loss_fn(s_i, t_i, labels) / len(s_list)
                total = term if total is None else total + term
        return total


"""The shape every distillation term has.

A term is a registered ``nn.Module`` that says what it reads and returns its
unweighted loss; the distiller (:class:`~mmlckd.models.distillers.
LipschitzDistiller`, argument ``terms=``) does the rest:

1. :meth:`DistillTerm.bind` gets the student and the teacher and returns the
   :class:`Read`\\ s the term needs (a student and a teacher
   :class:`~mmlckd.models.recorders.RecordSpec` each). The distiller adds
   them to its forward-hook recorders, so the term never touches a model's
   ``forward``.
2. After the one probe forward at build time, :meth:`DistillTerm.build`
   gets the probed tensors of its reads and creates what depends on shapes
   (connectors, power-iteration states). They are submodules, so they reach
   the optimizer, checkpoints, DDP and ``.to()`` like the student.
3. Every training step :meth:`DistillTerm.forward` gets the recorded
   tensors of its reads, in order (a list per read recorded with
   ``call='all'``), and the batch's data samples, and returns its loss, or
   ``(loss, logs)`` where no log name contains ``loss``.

The distiller hands every term's unweighted loss to the balancer, as
``loss_<name>`` under the name the config gives it, and applies the NaN
guard and the connector warm-up to all of them.

Adding a term is one module and one config line::

    @MODELS.register_module()
    class MyTerm(DistillTerm):
        def bind(self, student, teacher):
            return [Read.same('neck', index=0, call='first')]
        def forward(self, s, t, data_samples=None):
            return (s[0] - t[0]).square().mean()

    model = dict(type='mmlckd.LipschitzDistiller', ...,
                 terms=dict(mine=dict(type='MyTerm')))
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from torch import Tensor

from ..recorders import RecordSpec, get_module

__all__ = ['Read', 'DistillTerm', 'TermOutput']

Recorded = Union[Tensor, List[Tensor]]
TermOutput = Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]


@dataclass(frozen=True)
class Read:
    """One thing a term reads: a student spec and its teacher
    counterpart."""
    student: RecordSpec
    teacher: RecordSpec

    @classmethod
    def same(cls, path: str, **kw) -> 'Read':
        """The same module path (and source/index/call) in both nets."""
        spec = RecordSpec(path, **kw)
        return cls(spec, spec)


class DistillTerm(nn.Module):
    """Base class of the distillation terms (see the module docstring).

    Subclasses implement :meth:`bind` and :meth:`forward`, and
    :meth:`build` where they own shape-dependent modules.
    """

    #: set by :meth:`attach`: what the term reads, in order
    reads: List[Read]

    def attach(self, student: nn.Module, teacher: nn.Module) -> List[Read]:
        """Called once by the distiller: checks and keeps :meth:`bind`'s
        reads (every path must name a module of its net)."""
        reads = list(self.bind(student, teacher))
        if not reads:
            raise ValueError(f'{type(self).__name__} reads nothing')
        for read in reads:
            get_module(student, read.student.path, 'student')
            get_module(teacher, read.teacher.path, 'teacher')
        self.reads = reads
        return reads

    def bind(self, student: nn.Module, teacher: nn.Module) -> Sequence[Read]:
        """What the term reads from these two nets."""
        raise NotImplementedError

    def build(self, student: Sequence[Recorded],
              teacher: Sequence[Recorded]) -> None:
        """Create shape-dependent submodules from the probe's tensors of
        :attr:`reads` (same layout as in :meth:`forward`)."""

    def forward(self, student: Sequence[Recorded],
                teacher: Sequence[Recorded],
                data_samples: Optional[list] = None) -> TermOutput:
        raise NotImplementedError


def as_list(value: Recorded) -> List[Tensor]:
    """A recorded value as a list of tensors (one per call)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def head_of(model: nn.Module, names: Sequence[str] = (
        'bbox_head', 'decode_head', 'rpn_head')) -> Tuple[str, nn.Module]:
    """``(path, module)`` of the first head ``model`` has among ``names``."""
    for name in names:
        head = getattr(model, name, None)
        if head is not None:
            return name, head
    raise ValueError(
        f'{type(model).__name__} has none of the heads {list(names)}; name '
        'the modules to read explicitly (the term\'s `student=`/`teacher=`)')

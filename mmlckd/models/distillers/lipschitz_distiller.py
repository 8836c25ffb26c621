"""LipschitzDistiller: drop-in teacher -> student distillation for any
MMDetection 3.x / MMSegmentation 1.x model (the config lines: README).

Design:

* Everything learnable (student, connectors) is a submodule, so the optimizer,
  param schedulers, DDP, AMP and resume work unchanged.
* The teacher is *not* a submodule (as in mmdet's ``KnowledgeDistillation``
  detectors): it is absent from ``state_dict`` (never in checkpoints), from
  ``parameters()`` (never in the optimizer, ignored by DDP) and from
  ``init_weights`` (its checkpoint is never overwritten). ``.to()/.cuda()``
  and dtype casts are forwarded to it through ``_apply``. It is frozen and in
  eval mode for its whole life.
* Features are captured by forward hooks (:mod:`mmlckd.models.recorders`);
  the teacher's forward stops right after the deepest recorded layer
  (``teacher_early_stop``) and skips the modules nothing recorded depends
  on (``teacher.skip_unread``: a dense head's box branch).
* A step is :meth:`LipschitzDistiller.record` (both forwards), then
  :meth:`LipschitzDistiller.distill_terms` (every term of ``terms``, built-in
  and task-aware, on the recorded features), then :meth:`loss` weights them
  (balancer, explicit weights, ``distill_weight``). The pairing lives in
  :mod:`.feature_pairs`, the probe in :mod:`mmlckd.models.probe`, the terms
  in :mod:`mmlckd.models.terms`, the teacher in :mod:`.teacher`, the NaN
  guard in :mod:`.guard`, the losses in :mod:`.loss_setup`, the automatic
  weights in :mod:`.balance`.
"""
import copy
import inspect
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS

from mmlckd.checkpoint import strip_prefix
from mmlckd.registry import MODELS
from ..recorders import FeatureRecorder
from .loss_setup import build_losses
from .term_runner import build_terms, run_terms
from ..terms.pair_terms import (LipschitzTerm, OFDTerm, ResponseKDTerm,
                                lipschitz_maps, sigma_ratios)
from .feature_pairs import (FeaturePair, feature_groups,
                            lipschitz_block_shapes, parse_features,
                            parse_response, probe_shapes,
                            warn_single_feature_groups)
from .guard import check_terms_finite, guarded_loss
from .teacher import build_teacher, check_compatible, skip_unread_branches
from .unlabelled import mixed_loss, split_batch
from .validation import (check_arguments, check_data_preprocessor,
                         validate_distiller)

__all__ = ['LipschitzDistiller', 'FeaturePair', 'lipschitz_maps',
           'sigma_ratios']

ForwardResults = Union[Dict[str, torch.Tensor], list, Tuple[torch.Tensor],
                       torch.Tensor]
Features = Dict[str, Union[torch.Tensor, List[torch.Tensor]]]


@MODELS.register_module()
class LipschitzDistiller(BaseModel):
    """LONDON distillation of a student by a frozen teacher, plus the
    task-aware terms.

    Every argument, its default and what it does is in the README's table
    ("Knobs"); the terms in "Distillation terms", the automatic weights in
    :class:`~mmlckd.models.distillers.balance.LossBalancer`. In short:
    ``student`` is a model config (built in the current scope);
    ``teacher`` is ``dict(config=..., checkpoint=...)`` (more: the table);
    ``features``, ``lipschitz_loss``, ``feature_loss``, ``lipschitz_on`` and
    ``response`` set the built-in
    terms (:mod:`mmlckd.models.terms.pair_terms`), ``terms`` the others;
    a loss without ``loss_weight`` is weighted by ``balance``;
    ``teacher_early_stop``, ``nan_guard``, ``probe_input_size`` and the
    ``allow_*`` switches as in the table. ``data_preprocessor`` is what
    mmengine's Runner passes from a config's top level: the student's own
    one wins, as for a stock model. The design is in the module
    docstring.
    """

    def __init__(self,
                 student: dict,
                 teacher: dict,
                 features: Union[str, Sequence] = 'backbone',
                 lipschitz_loss: Optional[dict] = dict(
                     type='mmlckd.LipschitzLoss'),
                 feature_loss: Optional[dict] = dict(type='mmlckd.OFDLoss'),
                 response: Optional[Sequence[dict]] = None,
                 terms: Union[str, dict, None] = 'auto',
                 lipschitz_on: str = 'reference',
                 balance: Optional[dict] = dict(),
                 teacher_early_stop: bool = True,
                 nan_guard: bool = True,
                 probe_input_size: Tuple[int, int] = (128, 128),
                 allow_empty_features: bool = False,
                 allow_negative_weights: bool = False,
                 allow_resize: bool = False,
                 data_preprocessor=None,
                 init_cfg=None,
                 **unexpected):
        check_arguments(unexpected, lipschitz_on, known=[
            p for p in inspect.signature(type(self).__init__).parameters
            if p not in ('self', 'unexpected')])
        student = check_data_preprocessor(data_preprocessor, student)
        student_model = ROOT_MODELS.build(copy.deepcopy(student))
        super().__init__(
            data_preprocessor=student_model.data_preprocessor,
            init_cfg=init_cfg)
        self.student = student_model
        object.__setattr__(self, 'teacher', build_teacher(teacher))
        check_compatible(self.student, self.teacher,
                         teacher.get('check_num_classes', True))
        self.lipschitz_on = lipschitz_on
        self.nan_guard = nan_guard
        self.distill_weight = 1.0  # set by mmlckd.DistillWeightHook
        # False during mmlckd.ConnectorWarmupHook's warm-up: the
        # distillation terms then train the connectors only
        self.distill_to_student = True
        self.pairs: List[FeaturePair] = parse_features(
            features, self.student, self.teacher, probe_input_size)
        #: ``group -> indices into pairs`` of the groups the Lipschitz term
        #: uses (those with two or more features)
        self.groups: Dict[str, List[int]] = {
            g: idx for g, idx in feature_groups(self.pairs).items()
            if len(idx) >= 2}
        self.response_cfgs = parse_response(response)
        loss_cfgs = self._build_terms(terms, lipschitz_loss, feature_loss,
                                      balance, lipschitz_on)
        self.student_recorder = self._recorder('student', False)
        self.teacher_recorder = self._recorder('teacher', teacher_early_stop)
        shapes = self._build_shapes(probe_input_size, lipschitz_on)
        skip_unread_branches(self, teacher, probe_input_size)
        if self.lipschitz_loss is not None:
            warn_single_feature_groups(self.pairs)
        validate_distiller(
            self, features=features, shapes=shapes, loss_cfgs=loss_cfgs,
            allow_empty_features=allow_empty_features,
            allow_negative_weights=allow_negative_weights,
            allow_resize=allow_resize)

    # ------------------------------------------------------------ building
    def _build_terms(self, terms, lipschitz_loss, feature_loss, balance,
                     lipschitz_on: str) -> dict:
        """:attr:`terms` (built-in first, then ``terms=``), their explicit
        weights and the balancer; returns every loss's weight config."""
        extra, self.term_weights, term_auto, term_cfgs = build_terms(
            terms, self.student, self.teacher)
        # the built-in terms' losses (LONDON, OFD, response KD), kept
        # unregistered here: their terms own them
        lip, feat, kd, self.balancer, loss_cfgs = build_losses(
            lipschitz_loss, feature_loss, self.response_cfgs, balance,
            term_auto)
        object.__setattr__(self, '_losses', dict(
            lipschitz=lip, feat=feat, kd=kd if self.response_cfgs else None))
        #: every term by name: the built-in ones (``feat``, ``lipschitz``,
        #: ``kd``) first, then those of ``terms=``; their explicit weights
        #: (``loss_<name> -> float``; the built-in losses apply their own)
        self.terms = self._builtin_terms(lipschitz_on)
        self.terms.update(extra)
        loss_cfgs.update(term_cfgs)
        return loss_cfgs

    def _build_shapes(self, probe_input_size, lipschitz_on: str) -> list:
        """The probe: every term's shape-dependent parts, the connectors
        and the Lipschitz blocks; returns the pairs' shapes."""
        shapes, s_probe, t_probe = probe_shapes(
            self.pairs, self.student, self.teacher, self.student_recorder,
            self.teacher_recorder, probe_input_size)
        for term in self.terms.values():
            term.build([s_probe[r.student.key] for r in term.reads],
                       [t_probe[r.teacher.key] for r in term.reads])
        self.connectors = nn.ModuleList()
        if self.feature_loss is not None or (
                self.lipschitz_loss is not None and lipschitz_on != 'raw'):
            connector = MODELS.get('OFDConnector')
            self.connectors.extend(connector(s[1], t[1]) for s, t in shapes)
        #: ``(group, 'student'|'teacher') -> [(C_in, C_out)]``: the shape of
        #: every transmitting matrix of the Lipschitz term
        self.block_shapes = lipschitz_block_shapes(shapes, self.groups,
                                                   lipschitz_on)
        if 'lipschitz' in self.terms:
            # its power-iteration state exists before a checkpoint loads
            self.terms['lipschitz'].register_blocks(self.block_shapes)
        return shapes

    def _recorder(self, role: str, stop_when_done: bool) -> FeatureRecorder:
        """The recorder of the ``role`` net: its side of every pair and of
        every term's reads."""
        specs = [getattr(p, role) for p in self.pairs] + [
            getattr(r, role) for t in self.terms.values() for r in t.reads]
        return FeatureRecorder(getattr(self, role), specs, role,
                               stop_when_done=stop_when_done)

    def _builtin_terms(self, lipschitz_on: str) -> nn.ModuleDict:
        """The terms of ``feature_loss=``, ``lipschitz_loss=`` and
        ``response=`` (:mod:`mmlckd.models.terms.pair_terms`), attached to
        both nets; a term with nothing to read is left out."""
        terms = nn.ModuleDict()
        losses = self._losses
        if losses['feat'] is not None and self.pairs:
            terms['feat'] = OFDTerm(self.pairs, losses['feat'])
        if losses['lipschitz'] is not None and self.groups:
            terms['lipschitz'] = LipschitzTerm(
                self.pairs, losses['lipschitz'], self.groups, lipschitz_on)
        if losses['kd'] is not None:
            terms['kd'] = ResponseKDTerm(self.response_cfgs, losses['kd'])
        for term in terms.values():
            term.attach(self.student, self.teacher)
        return terms

    @property
    def lipschitz_loss(self) -> Optional[nn.Module]:
        """The LONDON loss (``lipschitz_loss=``), None when off."""
        return self._losses['lipschitz']

    @property
    def feature_loss(self) -> Optional[nn.Module]:
        """The OFD loss (``feature_loss=``), None when off."""
        return self._losses['feat']

    @property
    def response_losses(self) -> nn.ModuleList:
        """The losses of the ``response=`` entries."""
        return self._losses['kd'] or nn.ModuleList()

    # ------------------------------------------------------ nn.Module glue
    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() reach the hidden teacher too
        self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> 'LipschitzDistiller':
        super().train(mode)
        self.teacher.eval()  # always
        return self

    def student_state_dict(self) -> Dict[str, torch.Tensor]:
        """The student's weights, loadable by the plain student config."""
        return strip_prefix(self.state_dict(), 'student.')

    # ------------------------------------------------------------ forward
    def forward(self, inputs: torch.Tensor, data_samples=None,
                mode: str = 'tensor') -> ForwardResults:
        if mode != 'loss':
            return self.student(inputs, data_samples, mode=mode)
        if not self.nan_guard:
            return self.loss(inputs, data_samples)
        return guarded_loss(self.loss, inputs, data_samples)

    def loss(self, inputs: torch.Tensor, data_samples) -> dict:
        """Student task losses + weighted distillation terms + logs
        (sigmas, their ratios, the balancer's gradient shares)."""
        split = split_batch(data_samples)
        if split is None:
            losses, s_feats, t_feats = self.record(inputs, data_samples)
            distill, logs = self.distill_terms(s_feats, t_feats, data_samples)
        else:  # images without labels: task loss on the labelled ones
            losses, distill, logs = mixed_loss(self, inputs, data_samples,
                                               split)
        clash = set(distill) & set(losses)
        if clash:
            raise KeyError(f'distillation loss names {sorted(clash)} clash '
                           'with the student\'s own loss names')
        weights = {}
        if self.balancer is not None:
            # this step's weights: those fixed by the previous steps (0
            # during the calibration, including its last step), also for a
            # loss computed outside training; the task total and the
            # parameters are built only at the steps that measure
            weights = self.balancer.weight_of()
            if self.training and torch.is_grad_enabled():
                logs.update(self.balancer(
                    lambda: self.parse_losses(losses)[0], distill,
                    self._student_params))
        w = self.distill_weight
        for k, v in distill.items():
            if k in weights:
                v = v * weights[k].to(v.dtype)
            elif k in self.term_weights:
                v = v * self.term_weights[k]
            losses[k] = v * w if w != 1.0 else v
        losses.update(logs)
        return losses

    def _student_params(self) -> List[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def record(self, inputs: torch.Tensor, data_samples,
               student_mode: str = 'loss'
               ) -> Tuple[dict, Features, Features]:
        """``(task losses, student features, teacher features)`` of one
        batch: the teacher's forward (no grad, cut after its deepest
        recorded layer with ``teacher_early_stop``) and the student's
        ``mode='loss'`` forward (``student_mode='tensor'``: the student's
        raw outputs in the first place, for images without labels).
        Features map ``spec.key`` to the recorded tensor (a list for
        ``call='all'``)."""
        try:
            with torch.no_grad(), self.teacher_recorder:
                self.teacher(inputs, data_samples, mode='tensor')
            with self.student_recorder:
                losses = self.student(inputs, data_samples,
                                      mode=student_mode)
            return (losses, self.student_recorder.recorded(),
                    self.teacher_recorder.recorded())
        finally:
            self.student_recorder.clear()
            self.teacher_recorder.clear()

    def distill_terms(self, student_feats: Features, teacher_feats: Features,
                      data_samples=None) -> Tuple[dict, dict]:
        """``(terms, logs)`` from recorded features (see :meth:`record`):
        ``loss_<name>`` of every term in :attr:`terms`, unweighted by the
        balancer and ``distill_weight``, and the terms' logs (the sigmas
        and their ratios). Checked by the NaN guard."""
        terms, logs = {}, {}
        context = {}
        if len(self.connectors):  # once a step, for every pair term
            s_raw = [student_feats[p.student.key] for p in self.pairs]
            if not self.distill_to_student:  # connector warm-up
                s_raw = [s.detach() for s in s_raw]
            context['connected'] = self.connect(s_raw)
        run_terms(self.terms, student_feats, teacher_feats, data_samples,
                  terms, logs, detach_student=not self.distill_to_student,
                  context=context)
        if self.nan_guard:
            self.check_finite(terms, student_feats, teacher_feats)
        return terms, logs

    def connect(self, s_raw: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The student's maps through their connectors (unchanged when the
        configured terms need none)."""
        if not len(self.connectors):
            return list(s_raw)
        return [c(s) for c, s in zip(self.connectors, s_raw)]

    def check_finite(self, terms: Dict[str, torch.Tensor],
                     student_feats: Features, teacher_feats: Features
                     ) -> None:
        """The NaN guard of the terms (:func:`.guard.check_terms_finite`),
        naming the non-finite paired features."""
        named = {}
        for pair in self.pairs:
            named[f'student {pair.student.key}'] = \
                student_feats[pair.student.key]
            named[f'teacher {pair.teacher.key}'] = \
                teacher_feats[pair.teacher.key]
        check_terms_finite(terms, named)

"""LipschitzDistiller: drop-in teacher -> student distillation for any
MMDetection 3.x / MMSegmentation 1.x model.

Add to a stock config::

    student = _base_.model
    student.backbone.depth = 18
    model = dict(
        _delete_=True,
        type='mmlckd.LipschitzDistiller',
        student=student,
        teacher=dict(config='mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py',
                     checkpoint='work_dirs/teacher/epoch_4.pth'))

With nothing else said, the backbone stages (``out_indices``) of both nets
are recorded (pre-activation outputs for ResNets, as in LONDON/OFD), the
student's are mapped to the teacher's channels by 1x1 conv + BN connectors,
and the loss is ``task + OFD feature mimic + LONDON Lipschitz term``.

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
  (``teacher_early_stop``).
* A step is :meth:`LipschitzDistiller.record` (both forwards) then
  :meth:`LipschitzDistiller.distill_terms` (the terms, on any given
  features); the pairing and the probe live in :mod:`.feature_pairs`, the
  teacher in :mod:`.teacher`, the NaN guard in :mod:`.guard`, the automatic
  weights in :mod:`.balance`.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS

from mmlckd.registry import MODELS
from ..recorders import FeatureRecorder, get_module
from .balance import build_losses
from .term_runner import build_terms, run_terms
from ..terms.pair_terms import (LipschitzTerm, OFDTerm, ResponseKDTerm,
                                lipschitz_maps, sigma_ratios)
from .feature_pairs import (FeaturePair, feature_groups,
                            lipschitz_block_shapes, parse_features,
                            parse_response, probe_shapes,
                            warn_single_feature_groups)
from .guard import (check_losses_finite, check_terms_finite,
                    reraise_for_input)
from .teacher import build_teacher, check_compatible
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
    """LONDON distillation of a student by a frozen teacher.

    Args:
        student (dict): the student model config (e.g. ``_base_.model``),
            built in the current default scope (mmdet / mmseg).
        teacher (dict): ``config`` (path, ``'mmdet::...'``/``'mmseg::...'``,
            dict or Config holding ``model``), ``checkpoint`` (path; ``None``
            keeps a random teacher and warns), ``allow_missing_keys``
            (default False: missing/unexpected checkpoint keys are an
            error), ``check_num_classes`` (default True: differing
            ``num_classes`` between teacher and student heads is an error).
        features (str | list): what to distil. ``'backbone'`` (default):
            the backbone stages of both nets; ``'backbone+neck'``: plus every
            neck output; or a list of ``dict(student=..., teacher=...,
            group=..., teacher_bn=...)`` where ``student``/``teacher`` are a
            module path (``'backbone.layer1'``, ``'neck'`` with
            ``index=2``...) or a dict with ``path``, ``source``
            (``'output'``/``'input'``), ``index`` and ``call``. Shared keys
            (``source``, ``index``, ``call``) may be given at the top level.
            ``group`` (default: the first path component) chains features
            for the Lipschitz term: consecutive features of one group form
            the blocks whose Lipschitz constants are matched;
            ``group=None`` makes a feature OFD-only (no Lipschitz term).
        lipschitz_loss (dict, optional): ``mmlckd.LipschitzLoss`` config;
            ``None`` disables the LONDON term. Without a ``loss_weight``
            (or with ``loss_weight='auto'``) its weight is fixed by the
            balancer (see ``balance``). Unless the config sets
            ``check_finite``, the loss's own per-feature NaN check is off
            (``check_finite=False``): ``nan_guard`` checks every term with
            one host sync instead.
        feature_loss (dict, optional): ``mmlckd.OFDLoss`` config; ``None``
            disables feature mimicking. Weight as for ``lipschitz_loss``.
        response (list[dict], optional): response (logit) distillation,
            each ``dict(student=<path>, teacher=<path>, call='last'|'all',
            loss=dict(type='mmlckd.KDLoss', ...), use_labels=False)``;
            ``use_labels=True`` passes the segmentation labels (ignore index)
            to the loss. If no response loss sets ``loss_weight``, the
            balancer weights ``loss_kd``.
        terms (str | dict, optional): the task-aware distillation terms.
            ``'auto'`` (default): those of
            :data:`~mmlckd.models.distillers.term_runner.TASK_AWARE` that
            apply to the student (chosen on the demo's selection data;
            README, "Distillation terms"); ``None``: none (the backbone
            terms only); or ``name -> term config``
            (:mod:`mmlckd.models.terms`), e.g.
            ``dict(neck=dict(type='mmlckd.NeckPKDTerm'),
            preds=dict(type='mmlckd.PredictionKDTerm', distance='kl'))``.
            Each term says what it reads (recorded by the distiller) and
            returns its unweighted loss, logged and balanced as
            ``loss_<name>``; ``loss_weight`` in a term's config (a number,
            or ``'auto'``, the default) is applied by the distiller. A term
            set to ``None`` is left out (so ``--cfg-options`` can remove
            one). ``lipschitz_loss``, ``feature_loss`` and ``response``
            build the built-in terms ``lipschitz``, ``feat`` and ``kd``
            (:mod:`mmlckd.models.terms.pair_terms`), which run with these.
        lipschitz_on (str): how the student's maps form its transmitting
            matrices (:func:`lipschitz_maps`): ``'reference'`` (default,
            LONDON's loop: ``TM(connector_i(s_i), s_{i+1})`` with the raw
            ``s_{i+1}``), ``'connector'`` (connector outputs on both sides)
            or ``'raw'`` (no connectors). The teacher's are always raw.
        balance (dict, optional): automatic weights of the distillation
            terms that do not set a ``loss_weight``
            (:class:`~mmlckd.models.distillers.balance.LossBalancer`):
            ``fraction`` (default 0.5: each such term starts at half the
            task's gradient norm on the student; a dict per term is
            accepted), ``iters`` (calibration steps, default 10, during
            which those terms are computed but weigh 0), ``by``
            (``'grad'``, default, or ``'loss'``) and ``log_interval``
            (gradient-share logging, default 50, 0 disables). ``None``
            turns both off: every term then needs an explicit weight.
        teacher_early_stop (bool): run the teacher only up to the deepest
            recorded layer. Default True.
        nan_guard (bool): raise a ``FloatingPointError``, *before* the
            optimizer step, when a distillation term (naming the offending
            layers), a task loss or the input batch is NaN/Inf; the message
            names the last finite checkpoint. Costs two host syncs per step
            (``mmlckd.SafeCheckpointHook`` adds a gradient check, also off
            when this is False).
        probe_input_size (tuple): (H, W) of the dummy input used once at
            build time to discover feature shapes.
        allow_empty_features (bool): accept ``features=[]`` while a
            feature or Lipschitz loss is set (those terms then do nothing);
            default False: an error.
        allow_negative_weights (bool): accept negative ``loss_weight`` values;
            default False: an error.
        allow_resize (bool): accept feature pairs whose student and teacher
            maps differ in spatial size at probe time (the losses then
            resize the student's); default False: an error, as it usually
            means stages paired one off (stride 4 vs 8).
        data_preprocessor: what mmengine's Runner passes from a config's
            top-level ``data_preprocessor``: as for a stock model, the
            student's own one (set in ``student=``, it preprocesses the
            batch for both nets) wins (a difference is logged); a student
            without one gets this one.
    """

    def __init__(self,
                 student: dict,
                 teacher: dict,
                 features: Union[str, Sequence] = 'backbone',
                 lipschitz_loss: Optional[dict] = dict(
                     type='mmlckd.LipschitzLoss', check_finite=False),
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
        check_arguments(unexpected, lipschitz_on)
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
        self.student_recorder = self._recorder('student', False)
        self.teacher_recorder = self._recorder('teacher', teacher_early_stop)
        shapes, s_probe, t_probe = probe_shapes(
            self.pairs, self.student, self.teacher, self.student_recorder,
            self.teacher_recorder, probe_input_size)
        for term in self.terms.values():
            term.build([s_probe[r.student.key] for r in term.reads],
                       [t_probe[r.teacher.key] for r in term.reads])
        loss_cfgs.update(term_cfgs)
        self.connectors = nn.ModuleList()
        if feat is not None or (lip is not None and lipschitz_on != 'raw'):
            connector = MODELS.get('OFDConnector')
            self.connectors.extend(connector(s[1], t[1]) for s, t in shapes)
        #: ``(group, 'student'|'teacher') -> [(C_in, C_out)]``: the shape of
        #: every transmitting matrix of the Lipschitz term
        self.block_shapes = lipschitz_block_shapes(shapes, self.groups,
                                                   lipschitz_on)
        if 'lipschitz' in self.terms:
            # its power-iteration state exists before a checkpoint loads
            self.terms['lipschitz'].register_blocks(self.block_shapes)
        if self.lipschitz_loss is not None:
            warn_single_feature_groups(self.pairs)
        validate_distiller(
            self, features=features, shapes=shapes, loss_cfgs=loss_cfgs,
            allow_empty_features=allow_empty_features,
            allow_negative_weights=allow_negative_weights,
            allow_resize=allow_resize)

    # ------------------------------------------------------------ building
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
        return self._losses['kd'] if self._losses['kd'] is not None \
            else nn.ModuleList()

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
        return {
            k[len('student.'):]: v
            for k, v in self.state_dict().items() if k.startswith('student.')
        }

    # ------------------------------------------------------------ forward
    def forward(self,
                inputs: torch.Tensor,
                data_samples=None,
                mode: str = 'tensor') -> ForwardResults:
        if mode != 'loss':
            return self.student(inputs, data_samples, mode=mode)
        if not self.nan_guard:
            return self.loss(inputs, data_samples)
        try:
            losses = self.loss(inputs, data_samples)
        except FloatingPointError as e:  # say so when the input is bad
            better = reraise_for_input(e, inputs)
            if better is not None:
                raise better from None
            raise
        check_losses_finite(losses, inputs)  # the task losses too
        return losses

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
            # loss computed outside training
            weights = self.balancer.weight_of()
            if self.training and torch.is_grad_enabled():
                logs.update(self.balancer(self.parse_losses(losses)[0],
                                          distill, self._student_params()))
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

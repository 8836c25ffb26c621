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
  the teacher's forward stops right after the deepest recorded layer.
"""
import copy
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope

from mmlckd.registry import MODELS
from mmlckd.utils import load_config
from ..recorders import FeatureRecorder, RecordSpec, StopForward, get_module
from .balance import LossBalancer

__all__ = ['LipschitzDistiller', 'FeaturePair', 'lipschitz_maps']

#: How the student's maps enter the Lipschitz term (see the class docstring).
LIPSCHITZ_WIRINGS = ('reference', 'connector', 'raw')


def lipschitz_maps(s_raw: Sequence[torch.Tensor],
                   s_conn: Sequence[torch.Tensor], wiring: str):
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


def _pop_weight(cfg: Optional[dict], what: str):
    """``(cfg with loss_weight=1.0, True)`` if ``cfg`` leaves its weight to
    the balancer (no ``loss_weight`` or ``'auto'``), else ``(cfg, False)``."""
    if cfg is None:
        return None, False
    cfg = dict(cfg)
    weight = cfg.get('loss_weight', 'auto')
    if weight == 'auto':
        cfg['loss_weight'] = 1.0
        return cfg, True
    if not isinstance(weight, (int, float)):
        raise TypeError(f'{what}.loss_weight must be a number or \'auto\', '
                        f'got {weight!r}')
    return cfg, False

ForwardResults = Union[Dict[str, torch.Tensor], list, Tuple[torch.Tensor],
                       torch.Tensor]


class FeaturePair:
    """A recorded student feature matched to a teacher feature."""

    def __init__(self, student: RecordSpec, teacher: RecordSpec,
                 group: str, teacher_bn: Optional[str] = None):
        self.student = student
        self.teacher = teacher
        self.group = group
        self.teacher_bn = teacher_bn

    def __repr__(self) -> str:
        return (f'FeaturePair(student={self.student.key!r}, '
                f'teacher={self.teacher.key!r}, group={self.group!r})')


def _to_spec(value, defaults: dict) -> RecordSpec:
    if isinstance(value, RecordSpec):
        return value
    if isinstance(value, str):
        return RecordSpec(path=value, **defaults)
    if isinstance(value, dict):
        kw = dict(defaults)
        kw.update(value)
        if 'path' not in kw:
            raise ValueError(f'feature spec {value!r} needs a `path`')
        return RecordSpec(**kw)
    raise TypeError(f'cannot read a feature spec from {value!r}')


def _resnet_stage_specs(model: nn.Module) -> Optional[List[tuple]]:
    """Pre-activation outputs of ResNet stages (mmdet/mmseg ResNet family):
    the input of the last block's final ReLU, and that block's last norm."""
    backbone = getattr(model, 'backbone', None)
    res_layers = getattr(backbone, 'res_layers', None)
    out_indices = getattr(backbone, 'out_indices', None)
    if not res_layers or out_indices is None:
        return None
    specs = []
    for i in out_indices:
        name = res_layers[i]
        stage = getattr(backbone, name)
        last = len(stage) - 1
        block = stage[last]
        norm_name = getattr(block, 'norm3_name', None) or getattr(
            block, 'norm2_name', None)
        if not isinstance(getattr(block, 'relu', None), nn.ReLU) \
                or norm_name is None:
            return None
        base = f'backbone.{name}.{last}'
        specs.append((RecordSpec(f'{base}.relu', source='input',
                                 call='last'), f'{base}.{norm_name}'))
    return specs


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
            balancer (see ``balance``).
        feature_loss (dict, optional): ``mmlckd.OFDLoss`` config; ``None``
            disables feature mimicking. Weight as for ``lipschitz_loss``.
        response (list[dict], optional): response (logit) distillation,
            each ``dict(student=<path>, teacher=<path>, call='last'|'all',
            loss=dict(type='mmlckd.KDLoss', ...), use_labels=False)``;
            ``use_labels=True`` passes the segmentation labels (ignore index)
            to the loss. If no response loss sets ``loss_weight``, the
            balancer weights ``loss_kd``.
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
        data_preprocessor: ignored (the student's is used), kept for config
            compatibility.
    """

    def __init__(self,
                 student: dict,
                 teacher: dict,
                 features: Union[str, Sequence] = 'backbone',
                 lipschitz_loss: Optional[dict] = dict(
                     type='mmlckd.LipschitzLoss'),
                 feature_loss: Optional[dict] = dict(type='mmlckd.OFDLoss'),
                 response: Optional[Sequence[dict]] = None,
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
        if unexpected:
            raise TypeError(
                'LipschitzDistiller got unexpected config keys '
                f'{sorted(unexpected)}. If these are your base model\'s keys '
                '(backbone, neck, bbox_head, ...), the distiller dict was '
                'merged into `_base_.model`: add `_delete_=True` to '
                '`model=dict(...)` and pass the base model as `student=`.')
        if lipschitz_on not in LIPSCHITZ_WIRINGS:
            raise ValueError(f'lipschitz_on must be one of {LIPSCHITZ_WIRINGS}'
                             f', got {lipschitz_on!r}')
        if not isinstance(teacher, dict) or 'config' not in teacher:
            raise ValueError(
                'teacher must be dict(config=<path or mmdet::/mmseg:: path>, '
                f'checkpoint=<path>), got {teacher!r}')
        student_model = ROOT_MODELS.build(copy.deepcopy(student))
        super().__init__(
            data_preprocessor=student_model.data_preprocessor,
            init_cfg=init_cfg)
        self.student = student_model
        object.__setattr__(self, 'teacher', self._build_teacher(teacher))
        self._check_compatible(teacher.get('check_num_classes', True))

        self.lipschitz_on = lipschitz_on
        self.nan_guard = nan_guard
        self.distill_weight = 1.0  # set by mmlckd.DistillWeightHook
        # False during DistillWeightHook's connector warm-up: the
        # distillation losses then train the connectors only
        self.distill_to_student = True
        self.pairs = self._parse_features(features, probe_input_size)
        self.response_cfgs = [dict(r) for r in (response or [])]
        for r in self.response_cfgs:
            if 'student' not in r or 'teacher' not in r or 'loss' not in r:
                raise ValueError(
                    'each response entry needs student=, teacher= and loss=, '
                    f'got {r!r}')
            r['student_spec'] = _to_spec(r['student'],
                                         dict(call=r.get('call', 'last')))
            r['teacher_spec'] = _to_spec(r['teacher'],
                                         dict(call=r.get('call', 'last')))

        s_specs = [p.student for p in self.pairs] + [
            r['student_spec'] for r in self.response_cfgs]
        t_specs = [p.teacher for p in self.pairs] + [
            r['teacher_spec'] for r in self.response_cfgs]
        self.student_recorder = FeatureRecorder(self.student, s_specs,
                                                'student')
        self.teacher_recorder = FeatureRecorder(
            self.teacher, t_specs, 'teacher',
            stop_when_done=teacher_early_stop)
        shapes = self._probe_shapes(probe_input_size)

        auto = []
        lipschitz_loss, is_auto = _pop_weight(lipschitz_loss,
                                              'lipschitz_loss')
        auto += ['loss_lipschitz'] if is_auto else []
        feature_loss, is_auto = _pop_weight(feature_loss, 'feature_loss')
        auto += ['loss_feat'] if is_auto else []
        response_auto = []
        for r in self.response_cfgs:
            r['loss'], is_auto = _pop_weight(r['loss'], 'response loss')
            response_auto.append(is_auto)
        if any(response_auto) and not all(response_auto):
            raise ValueError(
                'response losses: give every one a loss_weight or none (the '
                'balancer weights their sum, loss_kd, as one term)')
        auto += ['loss_kd'] if response_auto and all(response_auto) else []
        self.lipschitz_loss = MODELS.build(lipschitz_loss) \
            if lipschitz_loss else None
        self.feature_loss = MODELS.build(feature_loss) \
            if feature_loss else None
        self.response_losses = nn.ModuleList(
            MODELS.build(r['loss']) for r in self.response_cfgs)
        if balance is None and auto:
            raise ValueError(
                f'balance=None, but {auto} set no loss_weight: give them '
                'explicit weights or keep the balancer')
        self.balancer = None if balance is None else LossBalancer(
            auto, **balance)
        if self.lipschitz_loss is not None and hasattr(
                self.lipschitz_loss, 'check_finite'):
            # one guard for all terms (nan_guard) instead of a sync per term
            self.lipschitz_loss.check_finite = False
        need_conn = self.feature_loss is not None or (
            self.lipschitz_loss is not None and lipschitz_on != 'raw')
        self.connectors = nn.ModuleList()
        if need_conn:
            connector = MODELS.get('OFDConnector')
            for pair, (s_shape, t_shape) in zip(self.pairs, shapes):
                self.connectors.append(connector(s_shape[1], t_shape[1]))
        self._margins = self._teacher_margins()
        self._check_groups()
        self._register_lipschitz_blocks(shapes)
        from .validation import validate_distiller
        validate_distiller(
            self, features=features, shapes=shapes,
            loss_cfgs=dict(lipschitz_loss=lipschitz_loss,
                           feature_loss=feature_loss,
                           response=[r.get('loss') for r in
                                     self.response_cfgs]),
            allow_empty_features=allow_empty_features,
            allow_negative_weights=allow_negative_weights,
            allow_resize=allow_resize)

    # ------------------------------------------------------------ building
    def _build_teacher(self, cfg: dict) -> nn.Module:
        tcfg = load_config(cfg['config'])
        model_cfg = tcfg.get('model', None) or tcfg
        scope = tcfg.get('default_scope', None)
        with DefaultScope.overwrite_default_scope(scope):
            teacher = ROOT_MODELS.build(copy.deepcopy(model_cfg))
        ckpt = cfg.get('checkpoint', None)
        if ckpt is None:
            warnings.warn(
                'LipschitzDistiller: teacher.checkpoint is None, the teacher '
                'has RANDOM weights. Set teacher.checkpoint to a trained '
                'model unless this is a smoke test.')
        else:
            self._load_teacher_checkpoint(teacher, ckpt,
                                          cfg.get('allow_missing_keys', False),
                                          config=cfg['config'])
        from mmengine.model import revert_sync_batchnorm
        teacher = revert_sync_batchnorm(teacher)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    @staticmethod
    def _load_teacher_checkpoint(teacher: nn.Module, path: str,
                                 allow_missing: bool, config=None) -> None:
        from .teacher import load_teacher_checkpoint
        load_teacher_checkpoint(teacher, path, allow_missing, config=config)

    def _check_compatible(self, check_num_classes: bool) -> None:
        """Same task type, preprocessing (and classes) for teacher and
        student (see :func:`.teacher.check_compatible`)."""
        from .teacher import check_compatible
        check_compatible(self.student, self.teacher, check_num_classes)

    def _parse_features(self, features, probe_size) -> List[FeaturePair]:
        if isinstance(features, str):
            parts = features.split('+')
            bad = set(parts) - {'backbone', 'neck'}
            if bad:
                raise ValueError(
                    f"features={features!r}: use 'backbone', "
                    "'backbone+neck', 'neck' or a list of dict(student=..., "
                    'teacher=...)')
            pairs = []
            if 'backbone' in parts:
                pairs += self._auto_pairs('backbone', probe_size)
            if 'neck' in parts:
                pairs += self._auto_pairs('neck', probe_size)
            return pairs
        pairs = []
        for item in features:
            if isinstance(item, str):
                item = dict(student=item, teacher=item)
            item = dict(item)
            shared = {k: item.pop(k) for k in ('source', 'index', 'call')
                      if k in item}
            s = _to_spec(item.pop('student'), shared)
            t = _to_spec(item.pop('teacher'), shared)
            group = item.pop('group', s.path.split('.')[0])
            bn = item.pop('teacher_bn', None)
            if item:
                raise ValueError(f'unknown feature keys {sorted(item)}')
            get_module(self.student, s.path, 'student')
            get_module(self.teacher, t.path, 'teacher')
            if bn is not None:
                get_module(self.teacher, bn, 'teacher')
            pairs.append(FeaturePair(s, t, group, bn))
        if not pairs and not features == []:
            raise ValueError('features is empty')
        return pairs

    def _auto_pairs(self, part: str, probe_size) -> List[FeaturePair]:
        """Stages of the backbone (or outputs of the neck) of both nets."""
        sides = {}
        for role, model in (('student', self.student),
                            ('teacher', self.teacher)):
            if getattr(model, part, None) is None:
                raise ValueError(
                    f'features={part!r}: the {role} has no `{part}`; list '
                    'the modules to distil explicitly with features=[...]')
            specs = _resnet_stage_specs(model) if part == 'backbone' \
                else None
            if specs is None:  # generic: the tuple the part returns
                n = self._count_outputs(model, part, probe_size)
                specs = [(RecordSpec(part, index=i, call='first'), None)
                         for i in range(n)]
            sides[role] = specs
        if len(sides['student']) != len(sides['teacher']):
            raise ValueError(
                f'the student {part} gives {len(sides["student"])} features '
                f'and the teacher {part} {len(sides["teacher"])}; make '
                '`out_indices` select the same number of stages or list '
                'features explicitly')
        return [
            FeaturePair(s, t, part, t_bn)
            for (s, _), (t, t_bn) in zip(sides['student'], sides['teacher'])
        ]

    def _probe_input(self, model: nn.Module, probe_size) -> torch.Tensor:
        mean = getattr(model.data_preprocessor, 'mean', None)
        channels = mean.numel() if isinstance(mean, torch.Tensor) else 3
        gen = torch.Generator().manual_seed(0)
        param = next(model.parameters(), None)
        return torch.randn(1, channels, *probe_size, generator=gen).to(
            param.device if param is not None else 'cpu')

    def _probe_forward(self, model: nn.Module,
                       probe_size) -> Optional[Exception]:
        """One dummy forward (eval mode, no grad, train mode restored).

        Returns the exception a later part of the model raised (a head may
        need data samples; fine if everything recorded ran before it), or
        None. A :class:`StopForward` counts as success.
        """
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(self._probe_input(model, probe_size), None,
                      mode='tensor')
        except StopForward:
            pass
        except Exception as e:
            return e
        finally:
            model.train(was_training)
        return None

    def _probe(self, model: nn.Module, recorder: FeatureRecorder,
               probe_size) -> None:
        """Fill ``recorder`` once and calibrate its call counts."""
        with recorder:
            error = self._probe_forward(model, probe_size)
        missing = [s for s in recorder.specs if s.key not in recorder._records]
        if missing:
            raise RuntimeError(
                f'probing the {recorder.role} with a {tuple(probe_size)} '
                f'input did not reach {[s.key for s in missing]}' +
                (f' (forward failed: {error!r})' if error else ''))
        if recorder._expected is None:
            recorder._expected = dict(recorder._calls)

    def _count_outputs(self, model, part, probe_size) -> int:
        """How many tensors ``model.<part>`` returns (one probe forward)."""
        seen = []

        def hook(module, args, output):
            seen.append(output)
            raise StopForward

        handle = get_module(model, part).register_forward_hook(hook)
        try:
            self._probe_forward(model, probe_size)
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError(f'could not probe the outputs of {part!r}')
        out = seen[0]
        return len(out) if isinstance(out, (tuple, list)) else 1

    def _probe_shapes(self, probe_size) -> List[tuple]:
        self._probe(self.student, self.student_recorder, probe_size)
        self._probe(self.teacher, self.teacher_recorder, probe_size)
        shapes = []
        for pair in self.pairs:
            s = self.student_recorder.get(pair.student)
            t = self.teacher_recorder.get(pair.teacher)
            if s.dim() != 4 or t.dim() != 4:
                raise ValueError(
                    f'{pair}: features must be 4-D (B,C,H,W), got student '
                    f'{tuple(s.shape)} and teacher {tuple(t.shape)}')
            shapes.append((tuple(s.shape), tuple(t.shape)))
        self.student_recorder.clear()
        self.teacher_recorder.clear()
        return shapes

    def _teacher_margins(self) -> List[Optional[torch.Tensor]]:
        from ..losses import ofd_margin
        margins = []
        for i, pair in enumerate(self.pairs):
            if pair.teacher_bn is None:
                margins.append(None)
                continue
            bn = get_module(self.teacher, pair.teacher_bn, 'teacher')
            name = f'_margin_{i}'
            self.register_buffer(name, ofd_margin(bn).detach().clone(),
                                 persistent=False)
            margins.append(name)
        return margins

    def _check_groups(self) -> None:
        if self.lipschitz_loss is None:
            return
        for group, pairs in self._groups().items():
            if len(pairs) < 2:
                warnings.warn(
                    f'feature group {group!r} has a single feature: the '
                    'Lipschitz term needs two or more consecutive features '
                    'per group and ignores it')

    def _register_lipschitz_blocks(self, shapes: List[tuple]) -> None:
        """Create the Lipschitz loss's per-block state from the probed
        shapes, so that a resumed checkpoint loads into existing buffers."""
        if not hasattr(self.lipschitz_loss, 'register_blocks'):
            return
        s_chans = [s[1] for s, _ in shapes]
        t_chans = [t[1] for _, t in shapes]
        # a connector maps student channels to the teacher's
        conn_chans = t_chans if len(self.connectors) else s_chans
        s_out, s_in = lipschitz_maps(s_chans, conn_chans, self.lipschitz_on)
        for group, idx in self._groups().items():
            pairs = list(zip(idx[:-1], idx[1:]))  # none for a single feature
            self.lipschitz_loss.register_blocks(
                group, 'student', [(s_in[i], s_out[j]) for i, j in pairs])
            self.lipschitz_loss.register_blocks(
                group, 'teacher', [(t_chans[i], t_chans[j]) for i, j in pairs])

    def _groups(self) -> Dict[str, List[int]]:
        groups: Dict[str, List[int]] = {}
        for i, pair in enumerate(self.pairs):
            if pair.group is not None:
                groups.setdefault(pair.group, []).append(i)
        return groups

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
        if mode == 'loss':
            if not self.nan_guard:
                return self.loss(inputs, data_samples)
            from .guard import check_losses_finite, reraise_for_input
            try:
                losses = self.loss(inputs, data_samples)
            except FloatingPointError as e:  # say so when the input is bad
                better = reraise_for_input(e, inputs)
                if better is not None:
                    raise better from None
                raise
            check_losses_finite(losses, inputs)  # the task losses too
            return losses
        return self.student(inputs, data_samples, mode=mode)

    def loss(self, inputs: torch.Tensor, data_samples) -> dict:
        """Student task losses + distillation losses + logged sigmas."""
        with torch.no_grad(), self.teacher_recorder:
            self.teacher(inputs, data_samples, mode='tensor')
        with self.student_recorder:
            losses = self.student(inputs, data_samples, mode='loss')
        try:
            distill, logs = self._distill_losses(data_samples)
        finally:
            self.student_recorder.clear()
            self.teacher_recorder.clear()
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
            losses[k] = v * w if w != 1.0 else v
        losses.update(logs)
        return losses

    def _student_params(self) -> List[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def _distill_losses(self, data_samples):
        distill: Dict[str, torch.Tensor] = {}
        logs: Dict[str, torch.Tensor] = {}
        if self.pairs:
            s_raw = [self.student_recorder.get(p.student) for p in self.pairs]
            if not self.distill_to_student:  # connector warm-up
                s_raw = [s.detach() for s in s_raw]
            t_feats = [self.teacher_recorder.get(p.teacher)
                       for p in self.pairs]
            s_conn = [c(s) for c, s in zip(self.connectors, s_raw)] \
                if len(self.connectors) else s_raw
            if self.feature_loss is not None:
                margins = [getattr(self, m) if m else None
                           for m in self._margins]
                distill['loss_feat'] = self.feature_loss(
                    s_conn, t_feats, margins)
            if self.lipschitz_loss is not None:
                s_out, s_in = lipschitz_maps(s_raw, s_conn, self.lipschitz_on)
                total = None
                for group, idx in self._groups().items():
                    if len(idx) < 2:
                        continue
                    term, sigmas = self.lipschitz_loss(
                        [s_out[i] for i in idx], [t_feats[i] for i in idx],
                        key=group, student_inputs=[s_in[i] for i in idx])
                    total = term if total is None else total + term
                    logs.update(sigmas)
                if total is not None:
                    distill['loss_lipschitz'] = total
        if self.response_cfgs:
            total = None
            for cfg, loss_fn in zip(self.response_cfgs, self.response_losses):
                s = self.student_recorder.get(cfg['student_spec'])
                t = self.teacher_recorder.get(cfg['teacher_spec'])
                if not self.distill_to_student:  # connector warm-up
                    s = [x.detach() for x in s] if isinstance(s, list) \
                        else s.detach()
                labels = self._labels(data_samples) if cfg.get(
                    'use_labels', False) else None
                s_list = s if isinstance(s, list) else [s]
                t_list = t if isinstance(t, list) else [t]
                if len(s_list) != len(t_list):
                    raise ValueError(
                        f'response {cfg["student"]!r}: the student gave '
                        f'{len(s_list)} outputs and the teacher '
                        f'{len(t_list)}')
                for s_i, t_i in zip(s_list, t_list):
                    term = loss_fn(s_i, t_i, labels) / len(s_list)
                    total = term if total is None else total + term
            distill['loss_kd'] = total
        if self.nan_guard and distill:
            self._guard_finite(distill)
        return distill, logs

    @staticmethod
    def _labels(data_samples) -> Optional[torch.Tensor]:
        if not data_samples or not hasattr(data_samples[0], 'gt_sem_seg'):
            return None
        return torch.stack(
            [ds.gt_sem_seg.data.squeeze(0) for ds in data_samples]).long()

    def _guard_finite(self, distill: Dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float().sum() for v in
                              distill.values()])
        if bool(torch.isfinite(values).all()):  # the one host sync
            return
        bad_losses = [k for k, v in distill.items()
                      if not bool(torch.isfinite(v.detach()).all())]
        bad_feats = []
        for pair in self.pairs:
            for role, rec, spec in (
                    ('student', self.student_recorder, pair.student),
                    ('teacher', self.teacher_recorder, pair.teacher)):
                if not bool(torch.isfinite(rec.get(spec)).all()):
                    bad_feats.append(f'{role} {spec.key}')
        from .guard import non_finite_loss_error
        raise non_finite_loss_error(
            'distillation loss', bad_losses,
            f'; non-finite features: '
            f'{bad_feats or "none (the loss itself overflowed)"}')

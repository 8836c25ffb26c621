"""Which student features are matched to which teacher features.

Feature specs given in a config are parsed into :class:`FeaturePair`\\ s;
``features='backbone'``/``'neck'`` pairs the backbone stages / neck outputs
of both nets automatically. One dummy forward per net (the *probe*) checks
that every recorded module runs and gives the feature shapes that size the
connectors and the Lipschitz term's blocks.
"""
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..probe import count_outputs, probe
from ..recorders import FeatureRecorder, RecordSpec, get_module
from ..terms.pair_terms import lipschitz_maps

__all__ = [
    'FeaturePair', 'to_spec', 'parse_features', 'parse_response',
    'resnet_stage_specs', 'auto_pairs', 'probe_shapes', 'feature_groups',
    'warn_single_feature_groups', 'lipschitz_maps', 'lipschitz_block_shapes',
    'LIPSCHITZ_WIRINGS'
]

#: How the student's maps enter the Lipschitz term (:func:`lipschitz_maps`).
LIPSCHITZ_WIRINGS = ('reference', 'connector', 'raw')


@dataclass
class FeaturePair:
    """A recorded student feature matched to a teacher feature.

    ``group`` chains pairs for the Lipschitz term (None: OFD only);
    ``teacher_bn`` is the teacher norm layer that gives OFD's margin."""
    student: RecordSpec
    teacher: RecordSpec
    group: Optional[str]
    teacher_bn: Optional[str] = None

    def __repr__(self) -> str:
        return (f'FeaturePair(student={self.student.key!r}, '
                f'teacher={self.teacher.key!r}, group={self.group!r})')


def to_spec(value, defaults: dict) -> RecordSpec:
    """A :class:`RecordSpec` from a module path, a dict or a spec."""
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


def _parse_item(item, student: nn.Module, teacher: nn.Module) -> FeaturePair:
    if isinstance(item, str):
        item = dict(student=item, teacher=item)
    item = dict(item)
    shared = {k: item.pop(k) for k in ('source', 'index', 'call')
              if k in item}
    s = to_spec(item.pop('student'), shared)
    t = to_spec(item.pop('teacher'), shared)
    group = item.pop('group', s.path.split('.')[0])
    bn = item.pop('teacher_bn', None)
    if item:
        raise ValueError(f'unknown feature keys {sorted(item)}')
    get_module(student, s.path, 'student')
    get_module(teacher, t.path, 'teacher')
    if bn is not None:
        get_module(teacher, bn, 'teacher')
    return FeaturePair(s, t, group, bn)


def parse_features(features, student: nn.Module, teacher: nn.Module,
                   probe_size) -> List[FeaturePair]:
    """The pairs of the distiller's ``features`` argument (see
    :class:`LipschitzDistiller`)."""
    if isinstance(features, str):
        parts = features.split('+')
        bad = set(parts) - {'backbone', 'neck'}
        if bad:
            raise ValueError(
                f"features={features!r}: use 'backbone', "
                "'backbone+neck', 'neck' or a list of dict(student=..., "
                'teacher=...)')
        return [pair for part in ('backbone', 'neck') if part in parts
                for pair in auto_pairs(part, student, teacher, probe_size)]
    pairs = [_parse_item(item, student, teacher) for item in features]
    if not pairs and not features == []:
        raise ValueError('features is empty')
    return pairs


def parse_response(response: Optional[Sequence[dict]]) -> List[dict]:
    """The response (logit) entries, each completed with ``student_spec``
    and ``teacher_spec``."""
    cfgs = [dict(r) for r in (response or [])]
    for r in cfgs:
        if 'student' not in r or 'teacher' not in r or 'loss' not in r:
            raise ValueError(
                'each response entry needs student=, teacher= and loss=, '
                f'got {r!r}')
        call = dict(call=r.get('call', 'last'))
        r['student_spec'] = to_spec(r['student'], call)
        r['teacher_spec'] = to_spec(r['teacher'], call)
    return cfgs


def resnet_stage_specs(model: nn.Module) -> Optional[List[tuple]]:
    """Pre-activation outputs of ResNet stages (mmdet/mmseg ResNet family):
    ``(spec, norm path)`` of the input of each recorded stage's last block's
    final ReLU and that block's last norm; None for other backbones."""
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


def auto_pairs(part: str, student: nn.Module, teacher: nn.Module,
               probe_size) -> List[FeaturePair]:
    """Stages of the backbone (or outputs of the neck) of both nets."""
    sides = {}
    for role, model in (('student', student), ('teacher', teacher)):
        if getattr(model, part, None) is None:
            raise ValueError(
                f'features={part!r}: the {role} has no `{part}`; list '
                'the modules to distil explicitly with features=[...]')
        specs = resnet_stage_specs(model) if part == 'backbone' else None
        if specs is None:  # generic: the tuple the part returns
            n = count_outputs(model, part, probe_size)
            specs = [(RecordSpec(part, index=i, call='first'), None)
                     for i in range(n)]
        sides[role] = specs
    if len(sides['student']) != len(sides['teacher']):
        raise ValueError(
            f'the student {part} gives {len(sides["student"])} features '
            f'and the teacher {part} {len(sides["teacher"])}; make '
            '`out_indices` select the same number of stages or list '
            'features explicitly')
    return [FeaturePair(s, t, part, t_bn)
            for (s, _), (t, t_bn) in zip(sides['student'], sides['teacher'])]


def probe_shapes(pairs: Sequence[FeaturePair], student: nn.Module,
                 teacher: nn.Module, student_recorder: FeatureRecorder,
                 teacher_recorder: FeatureRecorder,
                 probe_size) -> Tuple[List[Tuple[tuple, tuple]], dict, dict]:
    """Probe both nets (calibrating their recorders) and return the
    ``(student shape, teacher shape)`` of every pair (features must be
    4-D), and what each recorder recorded."""
    s_feats = probe(student, student_recorder, probe_size)
    t_feats = probe(teacher, teacher_recorder, probe_size)
    shapes = []
    for pair in pairs:
        s, t = s_feats[pair.student.key], t_feats[pair.teacher.key]
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(
                f'{pair}: features must be 4-D (B,C,H,W), got student '
                f'{tuple(s.shape)} and teacher {tuple(t.shape)}')
        shapes.append((tuple(s.shape), tuple(t.shape)))
    return shapes, s_feats, t_feats


def feature_groups(pairs: Sequence[FeaturePair]) -> Dict[str, List[int]]:
    """``group -> indices of its pairs`` (shallow to deep), every group."""
    groups: Dict[str, List[int]] = {}
    for i, pair in enumerate(pairs):
        if pair.group is not None:
            groups.setdefault(pair.group, []).append(i)
    return groups


def warn_single_feature_groups(pairs: Sequence[FeaturePair]) -> None:
    """Warn about groups the Lipschitz term ignores (a single feature)."""
    for group, idx in feature_groups(pairs).items():
        if len(idx) < 2:
            warnings.warn(
                f'feature group {group!r} has a single feature: the '
                'Lipschitz term needs two or more consecutive features '
                'per group and ignores it')


def lipschitz_block_shapes(shapes: Sequence[Tuple[tuple, tuple]],
                           groups: Dict[str, List[int]], wiring: str
                           ) -> Dict[Tuple[str, str], List[Tuple[int, int]]]:
    """``(group, 'student'|'teacher') -> [(C_in, C_out)]``: the channel
    sizes of the transmitting matrix of every block of the Lipschitz term,
    from the probe's pair ``shapes`` and the student's ``wiring`` (a
    connector output has the teacher's channels)."""
    s_ch = [s[1] for s, _ in shapes]
    t_ch = [t[1] for _, t in shapes]
    conn = s_ch if wiring == 'raw' else t_ch
    s_out, s_in = lipschitz_maps(s_ch, conn, wiring)
    blocks = {}
    for group, idx in groups.items():
        pairs = list(zip(idx[:-1], idx[1:]))
        blocks[(group, 'student')] = [(s_in[a], s_out[b]) for a, b in pairs]
        blocks[(group, 'teacher')] = [(t_ch[a], t_ch[b]) for a, b in pairs]
    return blocks

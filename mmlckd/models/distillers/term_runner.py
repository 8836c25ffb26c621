"""The distiller's side of the pluggable terms (:mod:`mmlckd.models.terms`):
build them from ``terms=``, run them on the recorded features."""
import copy
import logging
from typing import Dict, List, Optional, Tuple

import torch.nn as nn

from mmlckd.registry import MODELS
from .loss_setup import auto_weight

__all__ = ['build_terms', 'run_terms', 'task_aware_terms', 'RESERVED',
           'TASK_AWARE']

#: loss names of the distiller's built-in terms
RESERVED = ('feat', 'lipschitz', 'kd')

#: ``terms='auto'``: the task-aware terms, each with the kind of model it
#: applies to (``'neck'``: a model with a neck, ``'head'``: any model with
#: a detection or decode head). Chosen on the demo's selection data seed 1,
#: scarce-label detection (docs/demo/selection.md): prediction KD (+14.4
#: mAP over the student alone there, KL the best of the three distances)
#: and the neck term (+10.8) each beat the old backbone-only default
#: (+4.2); the head Lipschitz term (``mmlckd.HeadLipschitzTerm``) did not
#: (-1.2 against the old default), so it stays an option and is not
#: listed here.
TASK_AWARE = {
    'neck': ('neck', dict(type='mmlckd.NeckPKDTerm')),
    'preds': ('head', dict(type='mmlckd.PredictionKDTerm', distance='kl')),
}


def task_aware_terms(student: nn.Module,
                     teacher: Optional[nn.Module] = None) -> dict:
    """The :data:`TASK_AWARE` terms that apply to ``student``: a detector
    with a neck gets all of them, a segmentor its head terms; a head
    without a classifier the term finds is skipped, and so is
    prediction KD when the teacher's classifier differs (other
    ``num_classes``, with ``teacher.check_num_classes=False``: features
    only), with a log line."""
    from ..terms.prediction_kd_term import classifier_mismatch, classifier_of
    out = {}
    for name, (needs, cfg) in TASK_AWARE.items():
        try:
            if needs == 'neck' and getattr(student, 'neck', None) is None:
                continue
            if needs == 'head':
                path = classifier_of(student)['path']
                why = teacher is not None and classifier_mismatch(
                    student, teacher, path)
                if why:
                    from mmengine.logging import print_log
                    print_log(f"terms='auto': {name} ({cfg['type']}) left "
                              f'out: {why}', logger='current',
                              level=logging.WARNING)
                    continue
        except ValueError:
            continue
        out[name] = copy.deepcopy(cfg)
    return out


def build_terms(cfgs: Optional[dict], student: nn.Module,
                teacher: nn.Module
                ) -> Tuple[nn.ModuleDict, Dict[str, float], List[str], dict]:
    """``(terms, explicit weights, auto-weighted names, weight configs)``
    of the distiller's ``terms=`` argument; every term is attached to the
    two nets (:meth:`~mmlckd.models.terms.DistillTerm.attach`)."""
    terms, weights, auto, weight_cfgs = nn.ModuleDict(), {}, [], {}
    if cfgs is None:
        return terms, weights, auto, weight_cfgs
    if cfgs == 'auto':
        cfgs = task_aware_terms(student, teacher)
    if not isinstance(cfgs, dict):
        raise TypeError("terms must be 'auto', None or a dict name -> term "
                        f'config, got {cfgs!r}')
    for name, cfg in cfgs.items():
        if cfg is None:  # removed, e.g. by --cfg-options
            continue
        if name in RESERVED or '.' in name:
            raise ValueError(
                f'terms: the name {name!r} is taken by a built-in term or '
                "holds a '.'; choose another")
        cfg, is_auto = auto_weight(copy.deepcopy(dict(cfg)),
                                   f'terms.{name}')
        weight = float(cfg.pop('loss_weight'))
        term = MODELS.build(cfg)
        from ..terms import DistillTerm
        if not isinstance(term, DistillTerm):
            raise TypeError(f'terms.{name}: {type(term).__name__} is not a '
                            'mmlckd DistillTerm')
        term.attach(student, teacher)
        terms[name] = term
        key = f'loss_{name}'
        if is_auto:
            auto.append(key)
        else:
            weights[key] = weight
        weight_cfgs[f'terms.{name}'] = dict(loss_weight=weight)
    return terms, weights, auto, weight_cfgs


def run_terms(terms: nn.ModuleDict, student_feats: dict, teacher_feats: dict,
              data_samples, out: dict, logs: dict,
              detach_student: bool = False,
              context: Optional[dict] = None) -> None:
    """Run every term on the recorded features: ``out['loss_<name>']`` its
    loss, ``logs`` its logs. ``detach_student`` (the connector warm-up)
    stops the terms' gradients at the student's features. A term whose
    class lists names in ``context`` (e.g. ``('connected',)``) gets those
    entries of ``context`` as keyword arguments."""
    context = context or {}
    for name, term in terms.items():
        s = [student_feats[r.student.key] for r in term.reads]
        t = [teacher_feats[r.teacher.key] for r in term.reads]
        if detach_student:
            s = [[x.detach() for x in v] if isinstance(v, list)
                 else v.detach() for v in s]
        kwargs = {k: context.get(k) for k in getattr(term, 'context', ())}
        result = term(s, t, data_samples, **kwargs)
        if isinstance(result, tuple):
            result, extra = result
            logs.update(extra)
        out[f'loss_{name}'] = result

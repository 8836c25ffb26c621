"""Prediction-level distillation of a head's classification outputs
(:class:`~mmlckd.models.losses.PredictionKDLoss`)."""
from typing import Optional

import torch
from mmengine.logging import print_log

from mmlckd.registry import MODELS
from mmlckd.structures import label_map
from ..losses import PredictionKDLoss
from .base import DistillTerm, Read, as_list, head_of

__all__ = ['PredictionKDTerm', 'classifier_of', 'classifier_mismatch']

#: classification convolutions of mmdet's dense heads, by attribute name
DENSE_CLASSIFIERS = ('retina_cls', 'conv_cls', 'atss_cls', 'gfl_cls',
                     'vfnet_cls', 'rpn_cls')


def classifier_of(model) -> dict:
    """What :class:`PredictionKDTerm` reads by default from ``model``: the
    path of its head's classifier, its call and how to read its logits."""
    name, head = head_of(model)
    if name == 'decode_head':  # mmseg: one softmax per pixel
        return dict(path=f'{name}.conv_seg', call='last',
                    activation='softmax', num_classes=None, labels=True)
    for attr in DENSE_CLASSIFIERS:
        if isinstance(getattr(head, attr, None), torch.nn.Module):
            sigmoid = bool(getattr(head, 'use_sigmoid_cls', True))
            return dict(path=f'{name}.{attr}', call='all',
                        activation='sigmoid' if sigmoid else 'softmax',
                        num_classes=int(head.cls_out_channels), labels=False)
    raise ValueError(
        f'PredictionKDTerm: {type(head).__name__} has none of the '
        f'classifiers {list(DENSE_CLASSIFIERS)}; give path=..., '
        'activation=... and num_classes=...')


def classifier_mismatch(student, teacher, path: str) -> Optional[str]:
    """Why the classifier ``path`` of ``student`` and ``teacher`` cannot be
    paired (their outputs differ in channels: other ``num_classes`` or
    anchors), or None."""
    from ..recorders import get_module
    s = getattr(get_module(student, path, 'student'), 'out_channels', None)
    t = getattr(get_module(teacher, path, 'teacher'), 'out_channels', None)
    if s is None or t is None or s == t:
        return None
    return (f'the student\'s {path} has {s} output channels and the '
            f'teacher\'s {t} (other num_classes or anchors), so their '
            'predictions cannot be distilled')


@MODELS.register_module()
class PredictionKDTerm(DistillTerm):
    """Distil the head's classification predictions.

    With nothing said, the classifier is found from the student:

    * a dense detector head (RetinaNet ``retina_cls``, FCOS ``conv_cls``,
      ATSS, GFL, VFNet, and a two-stage detector's RPN ``rpn_cls``): every
      FPN level, per-class sigmoid (softmax if the head uses it), the
      anchors split by the head's ``cls_out_channels``;
    * a segmentation decode head (``conv_seg``): softmax per pixel, pixels
      labelled ``ignore_index`` left out.

    The loss is the mean over the levels of the per-level loss. For a
    two-stage detector the default reads the RPN's objectness; its RoI
    classifier sees other proposals in the teacher than in the student,
    so it is not paired by default.

    Args:
        distance (str): ``'kl'``, ``'logit'`` or ``'correlation'``.
            Default ``'kl'``.
        temperature (float): of ``'kl'``. Default 1.0.
        path (str, optional): the classifier module (both nets).
        activation (str, optional), num_classes (int, optional): how its
            logits read (see :class:`PredictionKDLoss`); found with the
            classifier when ``path`` is not given.
        call: which calls of ``path`` (default ``'all'`` for a given
            path).
        use_labels (bool, optional): leave out ``ignore_index`` pixels of
            segmentation labels; default True for a decode head.
    """

    def __init__(self, distance: str = 'kl', temperature: float = 1.0,
                 path: Optional[str] = None,
                 activation: Optional[str] = None,
                 num_classes: Optional[int] = None, call='all',
                 use_labels: Optional[bool] = None,
                 ignore_index: int = 255) -> None:
        super().__init__()
        self.path, self.call, self.use_labels = path, call, use_labels
        #: the PredictionKDLoss arguments; activation and num_classes are
        #: found with the classifier when not given
        self.loss_cfg = dict(distance=distance, temperature=temperature,
                             activation=activation, num_classes=num_classes,
                             ignore_index=ignore_index)
        self.loss: Optional[PredictionKDLoss] = None

    def bind(self, student, teacher):
        cfg = self.loss_cfg
        if self.path is None:
            found = classifier_of(student)
            self.path, self.call = found['path'], found['call']
            for key in ('activation', 'num_classes'):
                if cfg[key] is None:
                    cfg[key] = found[key]
            if self.use_labels is None:
                self.use_labels = found['labels']
        why = classifier_mismatch(student, teacher, self.path)
        if why:
            raise ValueError(
                f'PredictionKDTerm: {why}. Leave the term out (terms=None, '
                'or a terms dict without it), or distil from a teacher '
                'that predicts the student\'s classes.')
        self.loss = PredictionKDLoss(**dict(
            cfg, activation=cfg['activation'] or 'softmax'))
        print_log(f'PredictionKDTerm: {self.path} ({self.loss.activation}, '
                  f'{self.loss.distance})', logger='current')
        return [Read.same(self.path, call=self.call)]

    def forward(self, student, teacher, data_samples=None):
        s_list, t_list = as_list(student[0]), as_list(teacher[0])
        if len(s_list) != len(t_list):
            raise ValueError(
                f'PredictionKDTerm {self.path}: the student gave '
                f'{len(s_list)} outputs and the teacher {len(t_list)}')
        labels = seg_labels(data_samples, self.loss.ignore_index) \
            if self.use_labels else None
        total = sum(self.loss(s, t, labels) for s, t in zip(s_list, t_list))
        return total / len(s_list)


def seg_labels(data_samples, ignore_index: int = 255
               ) -> Optional[torch.Tensor]:
    """The segmentation labels of a batch (None for detection); an
    unlabelled image counts every pixel inside the image
    (:func:`mmlckd.structures.label_map`)."""
    if not data_samples or not hasattr(data_samples[0], 'gt_sem_seg'):
        return None
    return torch.stack([label_map(ds, ignore_index)
                        for ds in data_samples]).long()

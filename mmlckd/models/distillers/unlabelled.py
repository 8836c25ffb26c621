"""Distillation on images without labels: the distiller's side.

A data sample whose metainfo holds ``unlabelled=True`` (set by
:class:`mmlckd.datasets.UnlabelledImageDataset` after its pipeline) has no
ground truth. In a batch holding such samples, :func:`mixed_loss` makes the
distiller's step:

* the labelled samples: the teacher's forward and the student's
  ``mode='loss'`` forward on them alone, so **the task loss is the loss of
  the labelled samples alone** (an unlabelled image with empty ground truth
  would otherwise teach RetinaNet's classifier, a two-stage detector's RPN
  and RoI head or a segmentor that everything is background; with
  batch-norm in train mode even the statistics of the task loss's
  features come from the labelled images only);
* the unlabelled samples: the teacher's forward and the student's
  ``mode='tensor'`` forward (no loss, no ground truth read), recording the
  same features (the teacher always runs ``mode='tensor'``, so whatever a
  term reads runs in that forward);
* every distillation term on each part, combined as the image-weighted
  mean ``(n_l * term_l + n_u * term_u) / (n_l + n_u)`` (the batch mean of a
  per-image term), which is what the balancer calibrates on and what is
  weighted and logged as ``loss_<term>``; the two parts are logged as
  ``<term>.labelled`` and ``<term>.unlabelled`` (unweighted).

Every image goes through each net once, as in an all-labelled step; the
student's forward is two calls (the labelled and the unlabelled part) of
the one student module inside the one distiller forward, so DDP (and
SyncBN, every rank making the same two calls when every rank has the same
mix: ``mmdet.MultiSourceSampler``) sees one forward and one backward.
A batch without unlabelled samples takes the unchanged all-labelled path.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mmlckd.structures import is_unlabelled
from .balance import short_name

__all__ = ['split_batch', 'mixed_loss']


def split_batch(data_samples) -> Optional[Tuple[List[int], List[int]]]:
    """``(labelled indices, unlabelled indices)`` of a batch, or None when
    every sample is labelled (or there are no data samples)."""
    if not data_samples:
        return None
    flags = [is_unlabelled(ds) for ds in data_samples]
    if not any(flags):
        return None
    labelled = [i for i, f in enumerate(flags) if not f]
    if not labelled:
        raise ValueError(
            f'a training batch of {len(flags)} images holds no labelled '
            'image, so there is no task loss to compute. Mix the labelled '
            'and the unlabelled images in every batch: set '
            '`unlabelled_images=dict(...)` in the config (README, '
            '"Distil on images without labels"), which uses '
            "mmdet's MultiSourceSampler with a fixed mix per batch")
    return labelled, [i for i, f in enumerate(flags) if f]


def _take(inputs, idx: Sequence[int]):
    if isinstance(inputs, torch.Tensor):
        return inputs[torch.as_tensor(idx, device=inputs.device)]
    return [inputs[i] for i in idx]


def _log_name(term: str, part: str) -> str:
    """``loss_feat`` -> ``feat.labelled``; never holding ``loss`` (mmengine
    would add it to the total loss)."""
    return f'{short_name(term).replace("loss", "term")}.{part}'


def mixed_loss(distiller, inputs, data_samples,
               split: Tuple[List[int], List[int]]
               ) -> Tuple[dict, Dict[str, torch.Tensor], dict]:
    """``(task losses, distillation terms, logs)`` of a batch with
    unlabelled samples (see the module docstring); the terms are
    unweighted, as :meth:`LipschitzDistiller.distill_terms` returns
    them."""
    lab, unlab = split
    ds_l = [data_samples[i] for i in lab]
    ds_u = [data_samples[i] for i in unlab]
    try:
        losses, s_l, t_l = distiller.record(_take(inputs, lab), ds_l)
        _, s_u, t_u = distiller.record(_take(inputs, unlab), ds_u,
                                       student_mode='tensor')
    except ValueError as e:
        if 'more than 1 value per channel' not in str(e):
            raise
        raise ValueError(
            f'{e}: the batch holds {len(lab)} labelled and {len(unlab)} '
            f'unlabelled image(s), and the student runs on each part '
            'separately; a batch norm over pooled features (e.g. '
            'DeepLabV3\'s image pooling) needs 2 or more images in each. '
            'Raise the batch size, or unlabelled_images\' ratio= / '
            'per_batch=') from None
    terms_l, logs_l = distiller.distill_terms(s_l, t_l, ds_l)
    terms_u, logs_u = distiller.distill_terms(s_u, t_u, ds_u)
    n_l, n_u = float(len(lab)), float(len(unlab))
    n = n_l + n_u
    terms = {k: (v * n_l + terms_u[k] * n_u) / n for k, v in terms_l.items()}
    logs = {}
    for k, v in logs_l.items():
        logs[k] = (v * n_l + logs_u[k] * n_u) / n if k in logs_u else v
    for k in terms_l:
        logs[_log_name(k, 'labelled')] = terms_l[k].detach()
        logs[_log_name(k, 'unlabelled')] = terms_u[k].detach()
    return losses, terms, logs

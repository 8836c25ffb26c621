"""Automatic weights for the distillation terms, and their gradient shares.

A distillation term's useful weight depends on the feature scales of the
teacher and the student, on the batch size and on the task loss, so a
number that works for ImageNet ResNets is off by orders of magnitude for a
detector (the LONDON term at the reference weight started at 30,000 times
the task loss of a RetinaNet). :class:`LossBalancer` measures instead:

* during the first ``iters`` training steps (the *calibration*) every term
  whose weight is ``'auto'`` is computed but added with weight 0 (its graph
  is kept, so DDP sees every parameter used), and the statistic ``by`` is
  averaged, over the second half of those steps (the task's gradient falls
  fast over the first steps of a random head), for the task loss and for
  every term:

  - ``by='grad'`` (default): the L2 norm of the term's gradient on the
    student's parameters (one extra backward per term and step, during the
    calibration only);
  - ``by='loss'``: the term's value;

* then each weight is fixed to ``fraction * task_stat / term_stat``, so the
  term starts at ``fraction`` of the task's gradient norm (or loss).

The statistics are averaged over the DDP ranks at every calibration step,
so all ranks fix the same weights. Weights, sums and counters are
persistent buffers: checkpoints hold them and a resumed run continues
exactly, also from the middle of the calibration.

Gradient shares: after the calibration, at every ``log_interval``-th step
(steps ``log_interval``, ``2 * log_interval``, ... counted from 1, the
iterations at which mmengine's ``LoggerHook`` with the same interval prints
a line), the balancer also measures the gradient norm on the student's
parameters of the task loss and of each weighted term and returns them for
the logs (``gnorm_<term>`` and ``gshare_<term>``, the norm divided by the
sum of all norms). Nothing is returned at the other steps, so a log line
carries shares only when they were measured at that step (the
``LipschitzMonitorHook`` drops the previous measurement from the message
hub), and none during the calibration, when the auto weights are still 0.
The names avoid the substring ``loss``, which mmengine would add to the
total loss.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.dist import all_reduce, get_world_size
from mmengine.logging import print_log

from mmlckd.registry import MODELS
from torch import Tensor

__all__ = ['LossBalancer', 'short_name', 'auto_weight', 'build_losses']

Fraction = Union[float, Dict[str, float]]


def short_name(term: str) -> str:
    """``'loss_lipschitz'`` -> ``'lipschitz'`` (for log keys)."""
    return term[len('loss_'):] if term.startswith('loss_') else term


#: the loss each of the distiller's loss arguments builds when its config
#: names no ``type``: ``--cfg-options model.lipschitz_loss.distance=l1``
#: or ``model.feature_loss.loss_weight=1e-5`` changes one field of the
#: default loss (mmengine merges the option into an empty dict when the
#: config leaves the argument to its default)
DEFAULT_LOSS_TYPES = {
    'lipschitz_loss': 'mmlckd.LipschitzLoss',
    'feature_loss': 'mmlckd.OFDLoss',
}


def with_default_type(cfg: Optional[dict], what: str) -> Optional[dict]:
    """``cfg`` with ``type`` set to the default loss of the argument
    ``what`` (:data:`DEFAULT_LOSS_TYPES`) when it names none."""
    if cfg is None or 'type' in cfg:
        return cfg
    return dict(type=DEFAULT_LOSS_TYPES[what], **cfg)


def auto_weight(cfg: Optional[dict], what: str
                ) -> Tuple[Optional[dict], bool]:
    """``(cfg with loss_weight=1.0, True)`` if the loss config ``cfg``
    leaves its weight to the balancer (no ``loss_weight`` or ``'auto'``),
    else ``(cfg, False)``; ``what`` names the config in errors."""
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
    if not math.isfinite(weight):
        raise ValueError(
            f'{what}.loss_weight={weight} is not a finite number: every '
            'step would stop on a non-finite loss. Give a finite weight '
            '(e.g. 1e-4; 0 switches the term off) or \'auto\'.')
    return cfg, False


BALANCE_KEYS = ('fraction', 'iters', 'by', 'log_interval')


def check_balance_keys(balance: dict) -> None:
    """An unknown ``balance`` setting (a typo such as ``iter``) is an error
    naming the settings there are, not a ``LossBalancer.__init__()``
    TypeError."""
    from .validation import typo_hints
    unknown = [k for k in balance if k not in BALANCE_KEYS]
    if unknown:
        did = typo_hints(unknown, BALANCE_KEYS)
        raise ValueError(
            f'model.balance has no setting {unknown}' +
            (f' ({", ".join(did)})' if did else '') +
            f'; its settings are {list(BALANCE_KEYS)} (balance=None turns '
            'the automatic weights off).')


def build_losses(lipschitz_loss: Optional[dict],
                 feature_loss: Optional[dict], response_cfgs: List[dict],
                 balance: Optional[dict],
                 term_auto: Sequence[str] = ()) -> tuple:
    """``(lipschitz loss, feature loss, response losses, balancer, loss
    configs)`` of the distiller's arguments: the balancer weights every
    term that sets no ``loss_weight`` (:func:`auto_weight`; the response
    losses as one term, ``loss_kd``). Completes ``response_cfgs[i]['loss']``
    in place.
    A loss config without ``type`` is one of the default loss
    (:func:`with_default_type`)."""
    lipschitz_loss = with_default_type(lipschitz_loss, 'lipschitz_loss')
    feature_loss = with_default_type(feature_loss, 'feature_loss')
    lipschitz_loss, lip_auto = auto_weight(lipschitz_loss, 'lipschitz_loss')
    feature_loss, feat_auto = auto_weight(feature_loss, 'feature_loss')
    response_auto = []
    for r in response_cfgs:
        r['loss'], is_auto = auto_weight(r['loss'], 'response loss')
        response_auto.append(is_auto)
    if any(response_auto) and not all(response_auto):
        raise ValueError(
            'response losses: give every one a loss_weight or none (the '
            'balancer weights their sum, loss_kd, as one term)')
    auto = [name for name, is_auto in (
        ('loss_lipschitz', lip_auto), ('loss_feat', feat_auto),
        ('loss_kd', bool(response_auto) and all(response_auto))) if is_auto]
    auto += list(term_auto)
    lip = MODELS.build(lipschitz_loss) if lipschitz_loss else None
    feat = MODELS.build(feature_loss) if feature_loss else None
    response = nn.ModuleList(MODELS.build(r['loss']) for r in response_cfgs)
    if balance is None and auto:
        raise ValueError(
            f'balance=None, but {auto} set no loss_weight: give them '
            'explicit weights or keep the balancer')
    if balance is not None:
        check_balance_keys(balance)
    balancer = None if balance is None else LossBalancer(auto, **balance)
    cfgs = dict(lipschitz_loss=lipschitz_loss, feature_loss=feature_loss,
                response=[r.get('loss') for r in response_cfgs])
    return lip, feat, response, balancer, cfgs


def grad_norms(outputs: Sequence[Tensor],
               params: Sequence[Tensor]) -> Tensor:
    """The L2 norm of the gradient of each of ``outputs`` on ``params``
    (graphs retained; nothing is accumulated into ``.grad``)."""
    norms = []
    for out in outputs:
        if not out.requires_grad:
            norms.append(out.new_zeros(()).float())
            continue
        grads = torch.autograd.grad(out, params, retain_graph=True,
                                    allow_unused=True)
        sq = [g.detach().float().square().sum() for g in grads
              if g is not None]
        norms.append(torch.stack(sq).sum().sqrt() if sq else
                     out.new_zeros(()).float())
    return torch.stack(norms)


class LossBalancer(nn.Module):
    """Fixes the weights of the ``'auto'`` distillation terms by measurement
    (see the module docstring).

    Args:
        terms (Sequence[str]): names of the auto-weighted terms, e.g.
            ``['loss_feat', 'loss_lipschitz']``.
        fraction (float | dict): the target ratio of a term's statistic to
            the task's; a dict maps term names (``'loss_feat'`` or
            ``'feat'``) to ratios, with ``'default'`` for the others.
        iters (int): calibration steps. Default 10.
        by (str): ``'grad'`` or ``'loss'``. Default ``'grad'``.
        log_interval (int): measure and log the gradient shares at every
            ``log_interval``-th step after the calibration; 0 disables.
            Default 50 (mmdet's and mmseg's ``LoggerHook`` interval: keep
            it a multiple of the logger's so that the lines show them).
    """

    def __init__(self,
                 terms: Sequence[str],
                 fraction: Fraction = 0.5,
                 iters: int = 10,
                 by: str = 'grad',
                 log_interval: int = 50):
        super().__init__()
        if by not in ('grad', 'loss'):
            raise ValueError(f"balance by must be 'grad' or 'loss', got {by!r}")
        if iters < 1 or log_interval < 0:
            raise ValueError('balance iters must be >= 1 and log_interval '
                             f'>= 0, got {iters} and {log_interval}')
        self.terms = list(terms)
        self.fractions = self._resolve_fractions(fraction)
        self.iters = int(iters)
        self.by = by
        self.log_interval = int(log_interval)
        n = len(self.terms)
        self.register_buffer('weights', torch.zeros(n))
        # [task, term_0, ...]; float64 so that long calibrations stay exact
        self.register_buffer('sums', torch.zeros(n + 1, dtype=torch.float64))
        self.register_buffer('count', torch.zeros((), dtype=torch.long))
        self.register_buffer('step', torch.zeros((), dtype=torch.long))
        # Python mirrors of ``count`` and ``step``, read every step without
        # a host-device sync; re-read from the buffers when a state loads
        self._count = 0
        self._step = 0

    def _resolve_fractions(self, fraction: Fraction) -> List[float]:
        if isinstance(fraction, (int, float)):
            table = {'default': float(fraction)}
        else:
            table = {k if k == 'default' or k.startswith('loss_') else
                     f'loss_{k}': float(v) for k, v in dict(fraction).items()}
            unknown = set(table) - set(self.terms) - {'default'}
            if unknown:
                raise ValueError(
                    f'balance fraction names unknown terms {sorted(unknown)}; '
                    f'the auto-weighted terms are {self.terms}')
        out = []
        for term in self.terms:
            if term not in table and 'default' not in table:
                raise ValueError(f'balance fraction: no value for {term!r} '
                                 "and no 'default'")
            value = table.get(term, table.get('default'))
            if not value > 0:
                raise ValueError(f'balance fraction of {term!r} must be > 0, '
                                 f'got {value}')
            out.append(value)
        return out

    @property
    def calibrated(self) -> bool:
        return self._count >= self.iters

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._count, self._step = int(self.count), int(self.step)

    def weight_of(self) -> Dict[str, Tensor]:
        """The current weight of every auto term (0 during calibration), as
        a copy that later calibration steps do not change."""
        weights = self.weights.detach().clone()
        return {t: weights[i] for i, t in enumerate(self.terms)}

    def forward(self, task: Tensor, terms: Dict[str, Tensor],
                params: Sequence[Tensor]) -> Dict[str, Tensor]:
        """One training step: calibrate if due, return the logs.

        Args:
            task (Tensor): the task loss total (with grad), as mmengine's
                ``parse_losses`` sums the student's losses.
            terms (dict): every distillation term (with grad), keyed by
                name; the auto ones unweighted, the others as applied.
            params (Sequence[Tensor]): the student's trainable parameters.
        """
        logs: Dict[str, Tensor] = {}
        weights = self.weight_of()  # the weights applied at this step
        step = self._step
        self.step += 1
        self._step += 1
        calibrating = not self.calibrated and bool(self.terms)
        share_due = (self.log_interval > 0 and not calibrating
                     and (step + 1) % self.log_interval == 0)
        names = ['task'] + list(terms)  # the rows of ``norms``
        norms = None
        if (calibrating and self.by == 'grad') or share_due:
            norms = grad_norms([task] + list(terms.values()), params)
        if share_due:
            # auto terms count as applied, i.e. times their current weight
            applied = norms * torch.stack(
                [weights.get(k, norms.new_ones(())) for k in names])
            total = applied.sum().clamp(min=1e-12)
            for k, norm in zip(names, applied):
                logs[f'gnorm_{short_name(k)}'] = norm
                logs[f'gshare_{short_name(k)}'] = norm / total
        if calibrating:
            if self.by == 'grad':
                stats = norms[[names.index(t) for t in ['task'] + self.terms]]
            else:
                stats = torch.stack([task.detach().float()] + [
                    terms[t].detach().float() for t in self.terms])
            self._accumulate(stats)
        for t, weight in weights.items():
            logs[f'weight_{short_name(t)}'] = weight
        return logs

    @property
    def _first_measured(self) -> int:
        """The calibration step from which statistics count: the second
        half, since the task's gradient falls fast over the first steps of
        a randomly initialised head and the weights must fit the moment the
        terms are switched on."""
        return self.iters // 2

    @torch.no_grad()
    def _accumulate(self, stats: Tensor) -> None:
        stats = stats.detach().to(self.sums)
        if get_world_size() > 1:
            all_reduce(stats, op='mean')
        if self._count >= self._first_measured:
            self.sums += stats
        self.count += 1
        self._count += 1
        if self._count == self.iters:
            self._fix_weights()

    def _fix_weights(self) -> None:
        steps = self.iters - self._first_measured
        mean = self.sums / steps
        task = float(mean[0])
        if not (task > 0 and torch.isfinite(mean).all()):
            raise FloatingPointError(
                f'loss balance: the task {self.by} statistic over the first '
                f'{self.iters} steps is {task}; cannot scale the '
                'distillation terms against it. Set explicit loss_weight '
                'values for the distillation losses.')
        parts = []
        for i, term in enumerate(self.terms):
            stat = float(mean[i + 1])
            if not stat > 0:
                raise ValueError(
                    f'loss balance: {term} had a zero {self.by} statistic '
                    f'during the first {self.iters} steps (no gradient on the '
                    'student, e.g. during a connector warm-up), so no weight '
                    'can be derived. Use balance=dict(by=\'loss\'), a '
                    'calibration after the warm-up, or an explicit '
                    'loss_weight.')
            self.weights[i] = self.fractions[i] * task / stat
            parts.append(f'{term}={float(self.weights[i]):.4g} '
                         f'({self.by} {stat:.4g} vs task {task:.4g}, '
                         f'fraction {self.fractions[i]:g})')
        print_log(f'loss balance: weights fixed after {self.iters} steps '
                  f'(statistics of the last {steps}): ' + '; '.join(parts) +
                  '. From the next step these terms count in the total '
                  '`loss` (they weighed 0 while calibrating), so it jumps '
                  'up once: expected, not a divergence.',
                  logger='current')

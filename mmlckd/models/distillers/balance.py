"""The automatic weights of the distillation terms, and their gradient
shares: :class:`LossBalancer` (the README's "Loss weights" says what it
does for users, the class docstring how)."""
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.dist import all_reduce, get_world_size
from mmengine.logging import print_log
from torch import Tensor

__all__ = ['LossBalancer', 'short_name', 'grad_norms', 'first_measured_step']

Fraction = Union[float, Dict[str, float]]


def short_name(term: str) -> str:
    """``'loss_lipschitz'`` -> ``'lipschitz'`` (for log keys)."""
    return term[len('loss_'):] if term.startswith('loss_') else term


def first_measured_step(iters: int) -> int:
    """The first calibration step (0-based) whose statistics count, of a
    calibration of ``iters`` steps: the second half. The one place this
    rule lives (the balancer, the calibration checks, the benchmark)."""
    return int(iters) // 2


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
    """Fixes the weights of the ``'auto'`` distillation terms by measurement.

    * Calibration: during the first ``iters`` steps every auto term weighs
      0 (its graph is kept, so DDP sees every parameter used); over the
      second half of them (:attr:`first_measured`: the task's gradient
      falls fast over the first steps of a random head) the statistic
      ``by`` of the task loss and of every term is summed: ``'grad'``, the
      L2 norm of its gradient on the student's parameters (one extra
      backward per term and measured step, :func:`grad_norms`; the first
      half measures nothing), or ``'loss'``, its value. Then each weight
      is fixed to ``fraction * task / term``.
    * The statistics are averaged over the DDP ranks at every step, so all
      ranks fix the same weights. Weights, sums and counters are
      persistent buffers (with Python mirrors, so a step reads them
      without a host sync): a resumed run continues exactly, also from the
      middle of the calibration.
    * Gradient shares: after the calibration, at every
      ``log_interval``-th step (counted from 1: the lines of a
      ``LoggerHook`` with the same interval) :meth:`forward` returns
      ``gnorm_<term>`` and ``gshare_<term>`` (the norm over the sum of all
      norms, auto terms times their weight); nothing at the other steps
      (``LipschitzMonitorHook`` drops the previous measurement from the
      message hub). No log name holds ``loss``, which mmengine would add
      to the total loss.

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
            Default 500: every tenth line of mmdet's and mmseg's
            ``LoggerHook`` (interval 50; keep it a multiple of the
            logger's so that the lines show them). A measurement costs
            one backward per term and the task (about 1.9 steady steps),
            so at every 50th step it added about 2% to a run
            (benchmarks/README.md), at every 500th about 0.2%.
    """

    def __init__(self,
                 terms: Sequence[str],
                 fraction: Fraction = 0.5,
                 iters: int = 10,
                 by: str = 'grad',
                 log_interval: int = 500):
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

    def forward(self, task: Union[Tensor, Callable[[], Tensor]],
                terms: Dict[str, Tensor],
                params: Union[Sequence[Tensor], Callable[[], Sequence[Tensor]]]
                ) -> Dict[str, Tensor]:
        """One training step: calibrate if due, return the logs.

        Args:
            task (Tensor | callable): the task loss total (with grad), as
                mmengine's ``parse_losses`` sums the student's losses, or a
                function returning it (called only at the steps that
                measure: a steady step does not build it).
            terms (dict): every distillation term (with grad), keyed by
                name; the auto ones unweighted, the others as applied.
            params (Sequence[Tensor] | callable): the student's trainable
                parameters, or a function returning them (called only
                where gradient norms are measured).
        """
        logs: Dict[str, Tensor] = {}
        weights = self.weight_of()  # the weights applied at this step
        step = self._step
        self.step += 1
        self._step += 1
        calibrating = not self.calibrated and bool(self.terms)
        share_due = (self.log_interval > 0 and not calibrating
                     and (step + 1) % self.log_interval == 0)
        # the first half of the calibration counts steps only: its
        # statistics are not used, so they are not measured either
        counted = calibrating and self._count >= self.first_measured
        names = ['task'] + list(terms)  # the rows of ``norms``
        norms = None
        if counted or share_due:
            task = task() if callable(task) else task
        if (counted and self.by == 'grad') or share_due:
            norms = grad_norms([task] + list(terms.values()),
                               params() if callable(params) else params)
        if share_due:
            # auto terms count as applied, i.e. times their current weight
            applied = norms * torch.stack(
                [weights.get(k, norms.new_ones(())) for k in names])
            total = applied.sum().clamp(min=1e-12)
            for k, norm in zip(names, applied):
                logs[f'gnorm_{short_name(k)}'] = norm
                logs[f'gshare_{short_name(k)}'] = norm / total
        if calibrating and not counted:
            self._accumulate(None)
        elif calibrating:
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
    def first_measured(self) -> int:
        """The calibration step (0-based) from which statistics count:
        the second half, so the weights fit the moment the terms are
        switched on. Steps before it cost a steady step."""
        return first_measured_step(self.iters)

    @torch.no_grad()
    def _accumulate(self, stats: Optional[Tensor]) -> None:
        """Count one calibration step; add ``stats`` (averaged over the
        ranks) from :attr:`first_measured` on, where it must be given."""
        if self._count >= self.first_measured:
            stats = stats.detach().to(self.sums)
            if get_world_size() > 1:
                all_reduce(stats, op='mean')
            self.sums += stats
        self.count += 1
        self._count += 1
        if self._count == self.iters:
            self._fix_weights()

    def _fix_weights(self) -> None:
        steps = self.iters - self.first_measured
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

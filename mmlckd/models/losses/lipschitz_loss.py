"""LONDON's loss: match the student's block Lipschitz estimates to the
teacher's (the estimates are explained in :mod:`.power_iteration`)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmlckd.registry import MODELS
from .power_iteration import (Products, _tm_factors, dense_products,
                              factored_products)
from .warm_start import PowerIterationState, tracked_top_singular_value
from .utils import (LevelWeights, check_level_weights, fp32_guard,
                    reference_level_weights, resolve_level_weights, upcast)

__all__ = ['LipschitzLoss']


@MODELS.register_module()
class LipschitzLoss(nn.Module):
    """LONDON loss: match the Lipschitz estimates of consecutive blocks.

    For each net, the ``N`` feature maps (shallow -> deep, e.g. the pre-ReLU
    outputs of the backbone stages) give ``N - 1`` transmitting matrices;
    their top singular values are the per-sample Lipschitz estimates
    ``sigma`` (:mod:`.power_iteration`). The loss is::

        loss_weight * sum_i w_i * mean_b distance(sigma_s[i, b], sigma_t[i, b])

    The teacher side runs under ``no_grad``; the student side is
    differentiable. Student and teacher may have different channel counts.

    Each block ``(key, net, i)`` (``net`` is ``'student'`` or ``'teacher'``)
    keeps its warm-start rows in a :class:`PowerIterationState` in
    :attr:`states`: ordinary buffers, so ``.to()`` moves them and a
    checkpoint resumes exactly. :meth:`register_blocks` creates them up front
    (then a checkpoint loads into existing modules); otherwise the first
    step creates them, and loading a state dict creates the ones it holds.
    A state whose shape no longer fits (another model under the same key)
    is replaced and starts cold. ``key`` may not contain ``'.'``.

    Args:
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        block_weights (str | Sequence[float]): Per-pair weights ``w_i``.
            ``'reference'``: LONDON's (see
            :func:`~mmlckd.models.losses.utils.reference_level_weights`;
            with 4 features: 1/8, 1/4, 1/2); ``'uniform'``: all 1; or a list
            with one weight per pair. Defaults to 'reference'.
        distance (str): ``'mse'``, ``'l1'``, ``'smooth_l1'`` (beta 1) or
            ``'log_ratio'`` (``(log(s + eps) - log(t + eps)) ** 2``).
            Defaults to 'mse'.
        n_iters (int): Power iterations per step when warm. Defaults to 2.
        cold_iters (int): Power iterations for a cold start. Defaults to 20.
        warm_start (bool): Keep the rows across steps. If False every step
            starts cold and no state is kept. Defaults to True.
        n_vectors (int): Rows iterated together, capped at the TM's smaller
            side; more than one copes with samples whose top directions
            differ (benchmarks/README.md). Defaults to 4.
        eps (float): Epsilon of the ``log_ratio`` distance. Defaults to 1e-6.
    """

    DISTANCES = ('mse', 'l1', 'smooth_l1', 'log_ratio')

    def __init__(self,
                 loss_weight: float = 1.0,
                 block_weights: LevelWeights = 'reference',
                 distance: str = 'mse',
                 n_iters: int = 2,
                 cold_iters: int = 20,
                 warm_start: bool = True,
                 n_vectors: int = 4,
                 eps: float = 1e-6) -> None:
        super().__init__()
        check_level_weights(block_weights, 'block_weights')
        if distance not in self.DISTANCES:
            raise ValueError(f'distance must be one of {self.DISTANCES}, '
                             f'got {distance!r}')
        if min(n_iters, cold_iters, n_vectors) < 1:
            raise ValueError('n_iters, cold_iters and n_vectors must be >= 1, '
                             f'got {n_iters}, {cold_iters} and {n_vectors}')
        self.loss_weight = loss_weight
        self.block_weights = block_weights
        self.distance = distance
        # the estimator (power_iteration.py, warm_start.py)
        self.n_iters, self.cold_iters = n_iters, cold_iters
        self.warm_start, self.n_vectors = warm_start, n_vectors
        self.eps = eps
        self.states = nn.ModuleDict()

    # ------------------------------------------------------------- state
    @staticmethod
    def state_name(key: str, net: str, index: int) -> str:
        """Name of block ``index`` of ``net`` in group ``key`` in
        :attr:`states`."""
        if '.' in key:
            raise ValueError(f"LipschitzLoss: the key {key!r} contains '.', "
                             'which state-dict names cannot hold')
        return f'{key}_{net}_{index}'

    def register_blocks(self, key: str, net: str,
                        shapes: Sequence[Tuple[int, int]]) -> None:
        """Create the states of a group's blocks before the first step.

        Args:
            key (str): The group (the ``key`` of :meth:`forward`).
            net (str): ``'student'`` or ``'teacher'``.
            shapes (Sequence[tuple[int, int]]): ``(C_in, C_out)``, the TM
                shape, of each pair ``i``.
        """
        for i, (m, n) in enumerate(shapes):
            self._state(key, net, i, m, n)

    def _state(self,
               key: str,
               net: str,
               index: int,
               m: int,
               n: int,
               like: Optional[Tensor] = None) -> PowerIterationState:
        """The fitting state of a block, (re)created if needed; with
        ``like``, on its device (and created in its dtype)."""
        name = self.state_name(key, net, index)
        k = min(self.n_vectors, m, n)
        state = self.states[name] if name in self.states else None
        if state is None or not state.fits(k, m, n):
            state = PowerIterationState(k, m, n)
            self.states[name] = state if like is None else state.to(like)
        elif like is not None and state.u.device != like.device:
            state.to(like.device)  # once: copying back each step would sync
        return state

    def reset_state(self) -> None:
        """Forget the rows of every block: the next steps start cold."""
        for state in self.states.values():
            state.reset()

    # -------------------------------------------------------- estimation
    def _estimate(self, products: Products, like: Tensor, m: int, n: int,
                  key: str, net: str, index: int) -> Tensor:
        k = min(self.n_vectors, m, n)
        state = self._state(key, net, index, m, n, like) \
            if self.warm_start else None
        return tracked_top_singular_value(products, like, k, state,
                                          self.n_iters, self.cold_iters)

    def estimate_sigma(self,
                       tm: Tensor,
                       key: str = 'default',
                       net: str = 'student',
                       index: int = 0) -> Tensor:
        """Per-sample top singular value of a formed TM (B, m, n), with the
        state of block ``(key, net, index)``; differentiable w.r.t. ``tm``.
        """
        with fp32_guard(tm):
            tm = upcast(tm)
            return self._estimate(dense_products(tm), tm, tm.size(1),
                                  tm.size(2), key, net, index)

    def lipschitz_constants(
            self,
            feats: Sequence[Tensor],
            key: str = 'default',
            net: str = 'student',
            inputs: Optional[Sequence[Tensor]] = None) -> List[Tensor]:
        """Per-sample Lipschitz estimates of the blocks between ``feats``.

        Args:
            feats (Sequence[Tensor]): N maps (B, C_i, H_i, W_i), shallow ->
                deep.
            key (str): Feature-group name (for the states).
            net (str): ``'student'`` or ``'teacher'`` (idem, and messages).
            inputs (Sequence[Tensor], optional): The input maps of the pairs
                (pair ``i`` is ``(inputs[i], feats[i + 1])``); default
                ``feats[:-1]``.

        Returns:
            list[Tensor]: N - 1 tensors of shape (B,).
        """
        sigmas = []
        for i in range(len(feats) - 1):
            f_in = feats[i] if inputs is None else inputs[i]
            with fp32_guard(f_in):
                try:
                    p, q, n = _tm_factors(f_in, feats[i + 1])
                except ValueError as err:
                    raise ValueError(
                        f'LipschitzLoss (key={key!r}): {net} '
                        f'features {i} and {i + 1}: {err}') from err
                sigmas.append(
                    self._estimate(
                        factored_products(p, q, n), p, p.size(1), q.size(1),
                        key, net, i))
        return sigmas

    # -------------------------------------------------------------- loss
    def _check_inputs(self, student_feats: Sequence[Tensor],
                      teacher_feats: Sequence[Tensor], key: str) -> None:
        if len(student_feats) != len(teacher_feats):
            raise ValueError(
                f'LipschitzLoss (key={key!r}): got {len(student_feats)} '
                f'student and {len(teacher_feats)} teacher features; the '
                'same number of stages is needed')
        if len(student_feats) < 2:
            raise ValueError(f'LipschitzLoss (key={key!r}) needs at least 2 '
                             f'feature maps per net, got {len(student_feats)}')
        if student_feats[0].size(0) != teacher_feats[0].size(0):
            raise ValueError(
                f'LipschitzLoss (key={key!r}): student batch size '
                f'{student_feats[0].size(0)} != teacher batch size '
                f'{teacher_feats[0].size(0)}')

    def _distance(self, sigma_s: Tensor, sigma_t: Tensor) -> Tensor:
        if self.distance == 'mse':
            return F.mse_loss(sigma_s, sigma_t)
        if self.distance == 'l1':
            return F.l1_loss(sigma_s, sigma_t)
        if self.distance == 'smooth_l1':
            return F.smooth_l1_loss(sigma_s, sigma_t)
        return ((sigma_s + self.eps).log() -
                (sigma_t + self.eps).log()).square().mean()

    def _pair_weights(self, num_pairs: int) -> List[float]:
        if self.block_weights == 'reference':
            # pair i of N = num_pairs + 1 features is level i of N levels
            return reference_level_weights(num_pairs + 1)[:num_pairs]
        return resolve_level_weights(self.block_weights, num_pairs,
                                     'block_weights')

    def forward(
        self,
        student_feats: Sequence[Tensor],
        teacher_feats: Sequence[Tensor],
        key: str = 'default',
        student_inputs: Optional[Sequence[Tensor]] = None
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_feats (Sequence[Tensor]): N student maps, shallow -> deep.
            teacher_feats (Sequence[Tensor]): N teacher maps, shallow -> deep.
            key (str): Name of the feature group (e.g. ``'backbone'``); keeps
                the states and logged estimates of several groups apart.
            student_inputs (Sequence[Tensor], optional): If given, the
                student TM of pair ``i`` is
                ``TM(student_inputs[i], student_feats[i + 1])`` instead of
                ``TM(student_feats[i], student_feats[i + 1])`` (the
                distiller's ``lipschitz_on``:
                :func:`mmlckd.models.terms.pair_terms.lipschitz_maps`).

        Returns:
            tuple[Tensor, dict[str, Tensor]]: The scalar loss in float32
            (float64 for float64 inputs), and the batch-mean estimates for
            logging, detached scalars under ``'sigma_s.<key>.<i>'``
            (student) and ``'sigma_t.<key>.<i>'`` (teacher) for pair ``i``.
        """
        self._check_inputs(student_feats, teacher_feats, key)
        num_pairs = len(student_feats) - 1
        weights = self._pair_weights(num_pairs)
        if student_inputs is not None and len(student_inputs) < num_pairs:
            raise ValueError(
                f'LipschitzLoss (key={key!r}): student_inputs needs one map '
                f'per pair ({num_pairs}), got {len(student_inputs)}')
        sigmas_s = self.lipschitz_constants(student_feats, key, 'student',
                                            inputs=student_inputs)
        with torch.no_grad():
            sigmas_t = self.lipschitz_constants(
                [f.detach() for f in teacher_feats], key, 'teacher')
        with fp32_guard(sigmas_s[0]):
            loss = sum(w * self._distance(s, t)
                       for w, s, t in zip(weights, sigmas_s, sigmas_t))
        logs = {}
        for i, (s, t) in enumerate(zip(sigmas_s, sigmas_t)):
            logs[f'sigma_s.{key}.{i}'] = s.detach().mean()
            logs[f'sigma_t.{key}.{i}'] = t.detach().mean()
        return loss * self.loss_weight, logs

"""The warm start of the block power iteration (the method is in
:mod:`.power_iteration`'s docstring): the per-block state of rows kept
across steps, and the tracked estimate that reads and updates it."""
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from .power_iteration import (Products, _block_power_iteration, _cold_start,
                              _orthonormalize)

__all__ = ['PowerIterationState', 'tracked_top_singular_value']


def _pool_basis(rows: Tensor, ref: Tensor) -> Tensor:
    """Batch-independent orthonormal basis (k, d) from rows (B, k, d).

    One step of subspace iteration on the mean projector of the samples,
    started from ``ref`` (k, d): ``orth(mean_b ref P_b)``. For ``k == 1``
    this is the mean of the per-sample vectors sign-aligned to ``ref``,
    weighted by their overlap with it. A degenerate result (e.g. after an
    all-zero batch) falls back to a uniform unit vector (k == 1; QR
    completes it for k > 1), without a host-device sync.
    """
    mean = (ref @ rows.transpose(-1, -2) @ rows).mean(0)  # (k, d)
    if mean.size(0) > 1:
        return _orthonormalize(mean, 1e-12)
    norm = mean.norm()
    uniform = torch.full_like(mean, mean.numel()**-0.5)
    return torch.where(norm > 1e-6, mean / norm.clamp(min=1e-6), uniform)


class PowerIterationState(nn.Module):
    """The warm-start rows of one block's power iteration (see the module
    docstring), kept like the ``u``/``v`` buffers of
    :func:`torch.nn.utils.parametrizations.spectral_norm`.

    Buffers: ``u`` (k, m) and ``v`` (k, n), updated in place, and
    ``initialized`` (bool), False until the first :meth:`update` (a cold
    start is needed then). ``initialized`` mirrors the Python flag
    :attr:`warm`, which the training step reads without a host-device sync;
    the buffer is read back only when a state dict is loaded.

    Args:
        k (int): Number of rows.
        m (int): Rows of the block's matrix (C_in of its TM).
        n (int): Columns of the block's matrix (C_out of its TM).
    """

    def __init__(self, k: int, m: int, n: int) -> None:
        super().__init__()
        self.register_buffer('u', torch.zeros(k, m))
        self.register_buffer('v', torch.zeros(k, n))
        self.register_buffer('initialized', torch.zeros((), dtype=torch.bool))
        self.warm = False

    def fits(self, k: int, m: int, n: int) -> bool:
        """Whether the buffers have the shapes for ``k`` rows of an m x n
        matrix."""
        return self.u.shape == (k, m) and self.v.shape == (k, n)

    @torch.no_grad()
    def update(self, u: Tensor, v: Tensor) -> None:
        """Store new rows (copied into the buffers, in their dtype)."""
        self.u.copy_(u)
        self.v.copy_(v)
        if not self.warm:
            self.initialized.fill_(True)
            self.warm = True

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the rows: the next use starts cold."""
        self.u.zero_()
        self.v.zero_()
        self.initialized.fill_(False)
        self.warm = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.warm = bool(self.initialized)

    def extra_repr(self) -> str:
        return f'k={self.u.size(0)}, m={self.u.size(1)}, n={self.v.size(1)}'


def tracked_top_singular_value(products: Products, like: Tensor, k: int,
                               state: Optional[PowerIterationState],
                               n_iters: int, cold_iters: int) -> Tensor:
    """Per-sample top singular value of a batch of matrices, warm-started
    from ``state`` (see the module docstring).

    A warm ``state`` gives ``n_iters`` iterations from its rows; otherwise a
    cold start with ``cold_iters``. Then ``state`` (if given) stores the
    pooled rows of this step.

    Args:
        products (Products): The matrices (B, m, n), see
            :func:`dense_products` and :func:`factored_products`.
        like (Tensor): Shape (B, ...), with the compute dtype and device
            (the matrices or their factor ``P``).
        k (int): Number of rows, at most ``min(m, n)``.
        state (PowerIterationState, optional): Fits ``(k, m, n)``; None
            for a cold start that keeps nothing.
        n_iters (int): Iterations of a warm step.
        cold_iters (int): Iterations of a cold start.

    Returns:
        Tensor: Shape (B,), differentiable through ``products``.
    """
    mul, mul_t, make_tm = products
    if state is None or not state.warm:
        with torch.no_grad():
            start = _cold_start(make_tm(), k, 1e-12)
        sigma, u, v = _block_power_iteration(mul, mul_t, start, None,
                                             cold_iters, 1e-12)
        ref_u, ref_v = u[0], v[0]
    else:
        ref_u, ref_v = state.u.to(like), state.v.to(like)
        sigma, u, v = _block_power_iteration(
            mul, mul_t, ref_u.expand(like.size(0), *ref_u.shape), None,
            n_iters, 1e-12)
    if state is not None:
        with torch.no_grad():
            state.update(_pool_basis(u, ref_u), _pool_basis(v, ref_v))
    return sigma

"""Lipschitz estimates of network blocks: transmitting matrices and their
top singular values by warm-started block power iteration.

LONDON (Shang et al., "Lipschitz Continuity Guided Knowledge Distillation",
ICCV 2021) estimates the Lipschitz constant of the block between two
consecutive feature maps by the largest singular value ``sigma`` of their
*transmitting matrix* (the FSP matrix of Yim et al. 2017, see
:func:`transmitting_matrix`). This module computes ``sigma`` for every sample
of a batch; :class:`~mmlckd.models.losses.LipschitzLoss` matches the
student's values to the teacher's.

The method, documented here once:

* **Reference.** The public LONDON code (``distiller_london.py``) forms
  ``K = TM TM^T`` and runs power iteration on it -- 5 iterations from a ones
  vector in the ImageNet script, 10 from a uniform-random vector in the
  CIFAR script -- and returns ``sqrt(||K v|| / ||v||)``, with its gradient
  flowing through the unrolled iterations.
* **Products with the factors.** ``TM = P Q^T / n`` (:func:`_tm_factors`:
  ``P`` the pooled input map, ``Q`` the output map, both flattened over the
  ``n = h w`` positions). The iteration only needs ``x @ TM`` and
  ``y @ TM^T``, taken as two products with the factors, so neither
  ``TM TM^T`` nor (in a warm step) ``TM`` itself is formed.
* **Block power iteration.** ``k`` orthonormal rows ``u`` (k, m) and ``v``
  (k, n) are iterated together, ``v = orth(u TM)``, ``u = orth(v TM^T)``,
  under ``no_grad``; ``sigma`` is the top singular value of the projected
  ``k x k`` matrix ``u TM v^T`` (Rayleigh-Ritz, :func:`_block_power_iteration`;
  ``k == 1`` is the plain power iteration). The last product is taken with
  grad, so ``d sigma / d TM = u_top v_top^T``, the gradient of the true top
  singular value once the iteration has converged (as in
  :func:`torch.nn.utils.parametrizations.spectral_norm`). As the rows are
  orthonormal, ``sigma <= ||TM||_2`` always. A block of ``k > 1`` rows copes
  with samples whose top singular directions differ, where one shared
  vector needs many more iterations.
* **Warm start.** Each block keeps its rows across training steps in a
  :class:`~.warm_start.PowerIterationState` (buffers, so they move with ``.to()`` and are
  saved in checkpoints). Every sample of the next batch starts from the
  stored ``u`` and runs a few iterations. The stored rows are
  batch-independent: after a step they become an orthonormal basis pooled
  over the samples' rows (:func:`~.warm_start._pool_basis`).
* **Cold start.** Without stored rows the iteration starts from the
  largest-norm columns of ``TM`` (:func:`_cold_start`; then ``TM`` is formed,
  under ``no_grad``) and runs more iterations.
* **Precision.** Everything runs in float32 (float64 inputs stay float64),
  also under ``torch.autocast``.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .utils import fp32_guard, upcast

__all__ = ['transmitting_matrix', 'dense_products', 'factored_products']

# A linear map given by its products with row blocks: x (..., k, m) ->
# x @ TM (..., k, n), or y (..., k, n) -> y @ TM^T (..., k, m).
RowProduct = Callable[[Tensor], Tensor]
# (x -> x @ TM, y -> y @ TM^T, () -> TM detached): how the iteration sees TM.
Products = Tuple[RowProduct, RowProduct, Callable[[], Tensor]]


def _window_mean(x: Tensor, kh: int, kw: int) -> Tensor:
    """``F.avg_pool2d(x, (kh, kw))`` (stride = kernel, ``H % kh == 0`` and
    ``W % kw == 0``) as ``kh - 1`` and ``kw - 1`` adds of strided slices:
    about 4x faster than the pooling kernel on a CPU for the 2x2 windows
    between ResNet stages (benchmarks/README.md); the values agree to the
    last bits (another order of the same four-term sums)."""
    if kh * kw == 1:
        return x
    b, c, H, W = x.shape
    rows = x.reshape(b, c, H // kh, kh, W)
    acc = rows[:, :, :, 0]
    for i in range(1, kh):
        acc = acc + rows[:, :, :, i]
    cols = acc.reshape(b, c, H // kh, W // kw, kw)
    out = cols[..., 0]
    for j in range(1, kw):
        out = out + cols[..., j]
    return out * (1.0 / (kh * kw))


class _AvgPool(torch.autograd.Function):
    """``F.avg_pool2d(x, (kh, kw))`` (stride = kernel, no padding) that keeps
    no tensor for backward: its gradient, ``grad / (kh kw)`` spread over each
    window (the same values as ``avg_pool2d``'s backward, and faster), needs
    only the shapes. Autograd would keep the full-size input alive until
    backward."""

    @staticmethod
    def forward(ctx, x: Tensor, kh: int, kw: int) -> Tensor:
        ctx.kernel = (kh, kw)
        return _window_mean(x, kh, kw)

    @staticmethod
    def backward(ctx, grad: Tensor):
        kh, kw = ctx.kernel
        b, c, h, w = grad.shape
        grad = (grad / (kh * kw))[:, :, :, None, :, None]
        grad = grad.expand(b, c, h, kh, w, kw).reshape(b, c, h * kh, w * kw)
        return grad, None, None


def _tm_factors(f_in: Tensor, f_out: Tensor) -> Tuple[Tensor, Tensor, int]:
    """``(P, Q, n)`` with ``transmitting_matrix(f_in, f_out) = P Q^T / n``.

    ``P`` (B, C_in, h*w) is ``f_in`` pooled to ``f_out``'s size, ``Q``
    (B, C_out, h*w) is ``f_out``, both flattened and cast to the compute
    dtype (float32, or float64 for float64 inputs); ``n = h * w``. Validates
    the shapes (see :func:`transmitting_matrix`). Call it under
    :func:`fp32_guard`.
    """
    if f_in.dim() != 4 or f_out.dim() != 4:
        raise ValueError('transmitting_matrix expects 4-D (B, C, H, W) '
                         f'feature maps, got shapes {tuple(f_in.shape)} and '
                         f'{tuple(f_out.shape)}')
    if f_in.size(0) != f_out.size(0):
        raise ValueError('transmitting_matrix: batch sizes differ, '
                         f'{tuple(f_in.shape)} vs {tuple(f_out.shape)}')
    (H, W), (h, w) = f_in.shape[-2:], f_out.shape[-2:]
    if H < h or W < w:
        raise ValueError(
            f'transmitting_matrix: the input map {tuple(f_in.shape)} is '
            f'spatially smaller than the output map {tuple(f_out.shape)}; '
            'the feature maps must be ordered shallow -> deep (non-increasing '
            'spatial size)')
    dtype = torch.promote_types(upcast(f_in).dtype, upcast(f_out).dtype)
    f_in, f_out = f_in.to(dtype), f_out.to(dtype)
    if (H, W) != (h, w):
        if H % h == 0 and W % w == 0:
            # the same bins as adaptive pooling, by a faster kernel
            f_in = _AvgPool.apply(f_in, H // h, W // w)
        else:
            f_in = F.adaptive_avg_pool2d(f_in, (h, w))
    return f_in.flatten(2), f_out.flatten(2), h * w


def transmitting_matrix(f_in: Tensor, f_out: Tensor) -> Tensor:
    """Transmitting (FSP) matrix between two feature maps.

    ``TM[b] = F_in[b] @ F_out[b]^T / (h * w)`` with both maps flattened over
    space. If ``f_in`` is spatially larger, it is first adaptive-average
    pooled to ``f_out``'s size ``(h, w)``. The product is computed in float32
    (float64 inputs stay float64) even under ``torch.autocast``.

    Args:
        f_in (Tensor): Shallower feature map, shape (B, C_in, H, W).
        f_out (Tensor): Deeper feature map, shape (B, C_out, h, w) with
            ``h <= H`` and ``w <= W``.

    Returns:
        Tensor: Shape (B, C_in, C_out).

    Raises:
        ValueError: If an input is not 4-D, the batch sizes differ, or
            ``f_in`` is spatially smaller than ``f_out`` in any dimension.
    """
    with fp32_guard(f_in):
        p, q, n = _tm_factors(f_in, f_out)
        return torch.bmm(p, q.transpose(1, 2)) / n


def dense_products(tm: Tensor) -> Products:
    """The :data:`Products` of a formed matrix ``tm`` (..., m, n)."""
    tm_t = tm.transpose(-1, -2)
    return lambda x: x @ tm, lambda y: y @ tm_t, tm.detach


def factored_products(p: Tensor, q: Tensor, n: int) -> Products:
    """The :data:`Products` of ``TM = P Q^T / n`` (see :func:`_tm_factors`)
    without forming it: O((C_in + C_out) h w) per row instead of the
    O(C_in C_out h w) needed to form TM (and twice that for its backward).
    TM itself is only formed, detached, on request (for a cold start)."""
    q_t = q.transpose(-1, -2)

    def mul(x: Tensor) -> Tensor:
        return (x @ p) @ q_t / n

    # y @ TM^T as (P @ (y Q)^T)^T: the gradient that reaches P (the pooled
    # map) is then contiguous; with (y Q) @ P^T it is a transposed
    # (channels-last) tensor, which makes the pooling's backward slower and
    # costs a full-size copy (benchmarks/README.md).
    def mul_t(y: Tensor) -> Tensor:
        return (p @ (y @ q).transpose(-1, -2)).transpose(-1, -2) / n

    def make_tm() -> Tensor:
        return (p.detach() @ q_t.detach()) / n

    return mul, mul_t, make_tm


def _orthonormalize(rows: Tensor, eps: float) -> Tensor:
    """Orthonormalise the rows of (..., k, d) (QR; a plain norm if k == 1).

    All-zero rows stay zero for ``k == 1``; for ``k > 1`` Householder QR
    completes them to an orthonormal set, which keeps them usable.
    """
    if rows.size(-2) == 1:
        return rows / rows.norm(dim=-1, keepdim=True).clamp(min=eps)
    return torch.linalg.qr(rows.transpose(-1, -2))[0].transpose(-1, -2)


def _cold_start(mat: Tensor, k: int, eps: float) -> Tensor:
    """Deterministic start rows (..., k, m) derived from ``mat`` (..., m, n).

    We start from the ``k`` columns of ``mat`` with the largest norms. With
    ``mat = sum_i s_i u_i v_i^T``, column ``j`` is ``sum_i s_i v_i[j] u_i``,
    so its overlap with the top left singular vector is ``s_1 v_1[j]``. It
    vanishes only if ``v_1[j] == 0`` exactly, which does not happen for real
    data, and the largest column is the one that carries the most energy, so
    it is usually well aligned with ``u_1`` (exactly so for a rank-1 matrix).
    The ones vector used by the reference code is fine for non-negative
    (post-ReLU) features, where Perron-Frobenius makes ``u_1`` non-negative,
    but it can be (nearly) orthogonal to ``u_1`` for mixed-sign pre-ReLU
    features, e.g. whenever the rows of the matrix sum to zero.
    """
    col_norms = torch.linalg.vector_norm(mat, dim=-2)  # (..., n)
    idx = col_norms.topk(k, dim=-1).indices  # (..., k)
    idx = idx.unsqueeze(-2).expand(*mat.shape[:-1], k)  # (..., m, k)
    return _orthonormalize(mat.gather(-1, idx).transpose(-1, -2), eps)


def _block_power_iteration(mul: RowProduct, mul_t: RowProduct, u: Tensor,
                           v: Optional[Tensor], n_iters: int,
                           eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Block power iteration with Rayleigh-Ritz (see the module docstring)
    on a matrix ``M`` seen through ``mul(x) = x @ M`` and
    ``mul_t(y) = y @ M^T``.

    Args:
        mul (RowProduct): ``x -> x @ M``.
        mul_t (RowProduct): ``y -> y @ M^T``.
        u (Tensor): Start rows (..., k, m), orthonormal.
        v (Tensor, optional): Rows (..., k, n); only used if ``n_iters == 0``.
        n_iters (int): Number of iterations.
        eps (float): Epsilon of the normalisations.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``sigma`` (...) and the detached Ritz
        vectors ``u`` (..., k, m) and ``v`` (..., k, n), the top pair first.
    """
    with torch.no_grad():
        for it in range(n_iters):
            v = _orthonormalize(mul(u), eps)
            if it < n_iters - 1:
                u = _orthonormalize(mul_t(v), eps)
        if v is None:  # n_iters == 0 without a given v
            v = _orthonormalize(mul(u), eps)
    # The last product is taken with grad and reused for the final u.
    mat_v = mul_t(v)  # (..., k, m)
    if n_iters > 0:
        u = _orthonormalize(mat_v.detach(), eps)
    s = u @ mat_v.transpose(-1, -2)  # (..., k, k) = u M v^T
    if s.size(-1) == 1:
        return s[..., 0, 0], u, v
    with torch.no_grad():
        # NaN/Inf inputs must propagate into sigma (the distiller's nan
        # guard names the layers), not stop svd with a LinAlgError.
        # Known cost: torch.linalg.svd syncs with the host on CUDA (one per
        # block and net); sync-free substitutes tried (power iteration or
        # repeated squaring on S^T S) lost much accuracy on flat spectra
        # because the block's other rows stop being coherent across samples
        # (benchmarks/README.md).
        left, ritz, right_h = torch.linalg.svd(torch.nan_to_num(s))
        # A zero matrix gives sigma == 0; make its gradient zero as well.
        a_top = left[..., :, :1] * (ritz[..., None, :1] > 0).to(s)
        b_top = right_h[..., :1, :].transpose(-1, -2)
        u, v = left.transpose(-1, -2) @ u, right_h @ v
    sigma = (a_top.transpose(-1, -2) @ s @ b_top)[..., 0, 0]
    return sigma, u, v

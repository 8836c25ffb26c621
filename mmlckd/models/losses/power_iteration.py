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
  :class:`PowerIterationState` (buffers, so they move with ``.to()`` and are
  saved in checkpoints). Every sample of the next batch starts from the
  stored ``u`` and runs a few iterations. The stored rows are
  batch-independent: after a step they become an orthonormal basis pooled
  over the samples' rows (:func:`_pool_basis`).
* **Cold start.** Without stored rows the iteration starts from the
  largest-norm columns of ``TM`` (:func:`_cold_start`; then ``TM`` is formed,
  under ``no_grad``) and runs more iterations.
* **Precision.** Everything runs in float32 (float64 inputs stay float64),
  also under ``torch.autocast``.
"""
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .utils import fp32_guard, upcast

__all__ = ['transmitting_matrix', 'top_singular_value', 'PowerIterationState']

# A linear map given by its products with row blocks: x (..., k, m) ->
# x @ TM (..., k, n), or y (..., k, n) -> y @ TM^T (..., k, m).
RowProduct = Callable[[Tensor], Tensor]
# (x -> x @ TM, y -> y @ TM^T, () -> TM detached): how the iteration sees TM.
Products = Tuple[RowProduct, RowProduct, Callable[[], Tensor]]


class _AvgPool(torch.autograd.Function):
    """``F.avg_pool2d(x, (kh, kw))`` (stride = kernel, no padding) that keeps
    no tensor for backward: its gradient, ``grad / (kh kw)`` spread over each
    window (the same values as ``avg_pool2d``'s backward, and faster), needs
    only the shapes. Autograd would keep the full-size input alive until
    backward."""

    @staticmethod
    def forward(ctx, x: Tensor, kh: int, kw: int) -> Tensor:
        ctx.kernel = (kh, kw)
        return F.avg_pool2d(x, (kh, kw))

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


def _prepare_vector(vec: Tensor, mat: Tensor, dim: int, name: str) -> Tensor:
    """Check a warm-start vector's shape and make it a (..., 1, size) row."""
    size = mat.size(dim)
    batch = mat.shape[:-2]
    if vec.shape not in (torch.Size([size]), batch + (size, )):
        raise ValueError(f'top_singular_value: {name} must have shape '
                         f'({size},) or {tuple(batch + (size, ))} for a '
                         f'matrix of shape {tuple(mat.shape)}, got '
                         f'{tuple(vec.shape)}')
    return vec.detach().to(mat).expand(*batch, size).unsqueeze(-2)


def top_singular_value(
    mat: Tensor,
    n_iters: int = 2,
    u: Optional[Tensor] = None,
    v: Optional[Tensor] = None,
    eps: float = 1e-12,
    exact: bool = False,
    return_vectors: bool = False
) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor]]:
    """Largest singular value of a batch of matrices by power iteration.

    The single-vector (``k == 1``) iteration of the module docstring on
    ``mat`` itself, from the given vectors or else from the cold start.

    Accuracy: ``sigma <= ||mat||_2`` always. With ``c = |cos(u_0, u_1)|``,
    ``t = tan(u_0, u_1)`` for the start ``u_0`` and the top left singular
    vector ``u_1``, and ``r = s_2 / s_1``, after ``k = n_iters >= 1``
    iterations the relative error is at most ``1 - c ** (1 / (2k - 1))``
    (whatever the spectrum) and at most ``t**2 * r ** (4k - 2) / 2``.

    Args:
        mat (Tensor): Shape (..., m, n), typically (B, m, n).
        n_iters (int): Number of power iterations (each one ``v`` and one
            ``u`` update). With 0 iterations both ``u`` and ``v`` should be
            given and ``sigma = u^T mat v`` is returned directly (a missing
            ``v`` is computed from ``u``). Defaults to 2.
        u (Tensor, optional): Warm-start left vector, shape (m,) (shared by
            the batch) or (..., m). The iteration starts from it.
        v (Tensor, optional): Warm-start right vector, shape (n,) or
            (..., n). Used when ``u`` is None (the start is then
            ``normalize(mat v)``) or when ``n_iters == 0``.
        eps (float): Epsilon of the normalisations. Defaults to 1e-12.
        exact (bool): Use an SVD instead (for checks; slow). Defaults to
            False.
        return_vectors (bool): Also return the final unit vectors ``u``
            (..., m) and ``v`` (..., n), detached. Defaults to False.

    Returns:
        Tensor | tuple[Tensor, Tensor, Tensor]: ``sigma`` of shape (...),
        or ``(sigma, u, v)`` if ``return_vectors``. A zero matrix gives
        ``sigma == 0`` with a zero (finite) gradient.
    """
    if mat.dim() < 2:
        raise ValueError('top_singular_value expects a (..., m, n) tensor, '
                         f'got shape {tuple(mat.shape)}')
    if n_iters < 0:
        raise ValueError(f'n_iters must be >= 0, got {n_iters}')
    with fp32_guard(mat):
        mat = upcast(mat)
        if exact:
            if not return_vectors:
                return torch.linalg.matrix_norm(mat, ord=2)
            U, S, Vh = torch.linalg.svd(mat, full_matrices=False)
            return S[..., 0], U[..., 0].detach(), Vh[..., 0, :].detach()
        mul, mul_t, _ = dense_products(mat)
        with torch.no_grad():
            if v is not None:
                v = _prepare_vector(v, mat, -1, 'v')
            if u is not None:
                u = _prepare_vector(u, mat, -2, 'u')
            elif v is not None:
                u = _orthonormalize(mul_t(v), eps)
            else:
                u = _cold_start(mat, 1, eps)
        sigma, u, v = _block_power_iteration(mul, mul_t, u, v, n_iters, eps)
    if return_vectors:
        return sigma, u.squeeze(-2), v.squeeze(-2)
    return sigma


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

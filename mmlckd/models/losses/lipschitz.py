"""LONDON: Lipschitz-continuity-guided distillation loss.

Shang et al., "Lipschitz Continuity Guided Knowledge Distillation", ICCV 2021.
For every pair of consecutive feature maps of a network the *transmitting
matrix* (the FSP matrix of Yim et al. 2017) is formed, and its largest
singular value serves as an estimate of the Lipschitz constant of the block
between the two maps. The student is trained to match the teacher's
estimates.

The reference code (``distiller_london.py`` of the public LONDON repository)
forms ``K = TM @ TM^T`` and runs power iteration on it -- 5 iterations from a
ones vector in the ImageNet script, 10 from a uniform-random vector in the
CIFAR script -- and returns ``sqrt(||K v|| / ||v||)``. In the current
reference the ``torch.no_grad()`` around that loop is commented out, so its
gradient flows through the unrolled iterations. Here the power iteration runs
on the matrix itself -- inside :class:`LipschitzLoss` on its factors, so that
the matrix is not even formed in a warm step --, is warm-started from vectors
kept from the previous step (like
:func:`torch.nn.utils.parametrizations.spectral_norm`), and the estimate's
gradient is the exact gradient of the top singular value,
``d sigma / d TM = u v^T``.
"""
import json
from typing import (Callable, Dict, Hashable, List, Optional, Sequence, Tuple,
                    Union)

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmlckd.registry import MODELS
from .utils import (LevelWeights, check_level_weights, fp32_guard,
                    resolve_level_weights, upcast)

__all__ = ['transmitting_matrix', 'spectral_norm', 'LipschitzLoss']

# A linear map given by its products with row blocks: x (..., k, m) ->
# x @ TM (..., k, n), or y (..., k, n) -> y @ TM^T (..., k, m).
RowProduct = Callable[[Tensor], Tensor]


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
    """Top singular value of a matrix ``M`` by (block) power iteration.

    ``M`` is only accessed through ``mul(x) = x @ M`` and
    ``mul_t(y) = y @ M^T`` on row blocks, so ``M M^T`` is never formed (and
    ``M`` itself need not be). The vectors are rows, ``u`` (..., k, m) and
    ``v`` (..., k, n); ``k == 1`` is the plain power iteration. Each
    iteration is ``v = orth(u M)``, ``u = orth(v M^T)``, run under
    ``no_grad``. The last product ``v M^T`` is taken with grad and ``sigma``
    is the top singular value of the projected ``k x k`` matrix
    ``S = u M v^T`` (Rayleigh-Ritz; ``S`` itself if ``k == 1``), so
    ``d sigma / d M = u_top v_top^T``. As ``u`` and ``v`` are orthonormal,
    ``sigma <= ||M||_2`` always.

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
        # repeated squaring on S^T S) lost 10-100x accuracy on flat spectra
        # because the block's other rows stop being coherent across samples.
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
        raise ValueError(f'spectral_norm: {name} must have shape ({size},) or '
                         f'{tuple(batch + (size, ))} for a matrix of shape '
                         f'{tuple(mat.shape)}, got {tuple(vec.shape)}')
    return vec.detach().to(mat).expand(*batch, size).unsqueeze(-2)


def spectral_norm(
    mat: Tensor,
    n_iters: int = 2,
    u: Optional[Tensor] = None,
    v: Optional[Tensor] = None,
    eps: float = 1e-12,
    exact: bool = False,
    return_vectors: bool = False
) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor]]:
    """Largest singular value of a batch of matrices by power iteration.

    The iteration alternates ``v = normalize(mat^T u)`` and
    ``u = normalize(mat v)`` on the matrix itself (``mat @ mat^T`` is never
    formed), under ``torch.no_grad()``. The result is ``sigma = u^T mat v``
    computed *with* grad, so ``d sigma / d mat = u v^T`` exactly as in
    :func:`torch.nn.utils.parametrizations.spectral_norm`; this is the
    gradient of the true top singular value once the iteration has converged.
    The computation runs in float32 (float64 stays float64) even for
    half-precision inputs or under ``torch.autocast``.

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
        or ``(sigma, u, v)`` if ``return_vectors``.

    Note:
        Without a warm start the iteration starts from the largest-norm
        column of ``mat`` (see ``_cold_start``). A zero matrix gives
        ``sigma == 0`` with a zero (finite) gradient.
    """
    if mat.dim() < 2:
        raise ValueError('spectral_norm expects a (..., m, n) tensor, got '
                         f'shape {tuple(mat.shape)}')
    if n_iters < 0:
        raise ValueError(f'n_iters must be >= 0, got {n_iters}')
    with fp32_guard(mat):
        mat = upcast(mat)
        if exact:
            if not return_vectors:
                return torch.linalg.matrix_norm(mat, ord=2)
            U, S, Vh = torch.linalg.svd(mat, full_matrices=False)
            return S[..., 0], U[..., 0].detach(), Vh[..., 0, :].detach()
        mat_t = mat.transpose(-1, -2)
        with torch.no_grad():
            if v is not None:
                v = _prepare_vector(v, mat, -1, 'v')
            if u is not None:
                u = _prepare_vector(u, mat, -2, 'u')
            elif v is not None:
                u = _orthonormalize(v @ mat_t, eps)
            else:
                u = _cold_start(mat, 1, eps)
        sigma, u, v = _block_power_iteration(lambda x: x @ mat,
                                             lambda y: y @ mat_t, u, v,
                                             n_iters, eps)
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


@MODELS.register_module()
class LipschitzLoss(nn.Module):
    """LONDON loss: match the Lipschitz constants of consecutive blocks.

    For each net, the ``N`` feature maps (shallow -> deep, e.g. the pre-ReLU
    outputs of the backbone stages) give ``N - 1`` transmitting matrices
    (:func:`transmitting_matrix`); their largest singular values are the
    per-sample Lipschitz estimates ``sigma``. The loss is::

        loss_weight * sum_i w_i * mean_b distance(sigma_s[i, b], sigma_t[i, b])

    The teacher side is computed under ``no_grad`` (no gradient reaches the
    teacher features); the student side is differentiable
    (``d sigma / d TM = u v^T``). Student and teacher may have different
    channel counts. All of it runs in float32 (float64 for float64 inputs),
    also under ``torch.autocast``.

    Power iteration: for every ``(key, net, pair)`` ``k = n_vectors`` unit
    vectors ``u`` (k, C_i) and ``v`` (k, C_{i+1}) are kept (orthonormal if
    ``k > 1``; batch-size independent). Each step starts every sample from
    the stored ``u`` and runs ``n_iters`` iterations on the TM's factors (the
    pooled, flattened maps), without forming the TM; afterwards the stored
    vectors become the (normalised) batch mean of the sign-aligned
    per-sample vectors (see :func:`_pool_basis`). Without stored vectors
    (first step, another model, or ``warm_start=False``) the TM is formed
    (under ``no_grad``) for a cold start (see :func:`spectral_norm`) and
    ``cold_iters`` iterations run. The vectors are saved with the module's
    ``state_dict`` (as its ``_extra_state``, see :meth:`get_extra_state`), so
    a resumed run continues from them exactly. One instance serves several
    feature groups through the ``key`` argument of :meth:`forward`.

    ``n_vectors > 1`` iterates a block of vectors and takes the top Ritz
    value (block power iteration with Rayleigh-Ritz). It is far more robust
    when the samples of a batch have different top singular directions or
    close top singular values, where one shared warm vector needs many more
    iterations (``benchmarks/lipschitz_bench.py --decay 0.9 --mean 0``). It
    costs a small QR per half-step (on CPU 1.1-2.5x the time of
    ``n_vectors=1``).

    Args:
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        block_weights (str | Sequence[float]): Per-pair weights ``w_i``.
            ``'reference'``: LONDON's ``1 / 2 ** (N - 1 - i)`` for pair ``i``
            of ``N`` features (pairs ``0 .. N-2``), so the deepest pair
            weighs 1/2 (with 4 features: 1/8, 1/4, 1/2); ``'uniform'``: all
            1; or a list with one weight per pair. Defaults to 'reference'.
        distance (str): ``'mse'``, ``'l1'``, ``'smooth_l1'`` (beta 1) or
            ``'log_ratio'`` (``(log(s + eps) - log(t + eps)) ** 2``).
            Defaults to 'mse'.
        n_iters (int): Power iterations per step when warm. Defaults to 2.
        cold_iters (int): Power iterations for a cold start. Defaults to 20.
        warm_start (bool): Keep vectors across steps. Defaults to True.
        n_vectors (int): Vectors iterated together (capped at the TM's
            smaller side). One stored vector is the batch mean of the
            samples' top vectors; when samples have different top directions
            (flat spectra) 2 warm iterations from it are not enough (39%
            error in ``benchmarks/lipschitz_bench.py --decay 0.9 --mean 0``),
            while a block of 4 (Rayleigh-Ritz) keeps the error < 1e-3 at
            1.1-2.5x the estimator's cost. Defaults to 4.
        check_finite (bool): Raise :class:`FloatingPointError` if an input
            feature contains NaN/Inf (costs a device sync per feature). If
            False, NaNs propagate into the loss. Defaults to True.
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
                 check_finite: bool = True,
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
        self.n_iters = n_iters
        self.cold_iters = cold_iters
        self.warm_start = warm_start
        self.n_vectors = n_vectors
        self.check_finite = check_finite
        self.eps = eps
        self._vectors: Dict[Hashable, Tuple[Tensor, Tensor]] = {}
        self._last_sigmas: Dict[str, Tensor] = {}

    # The power-iteration vectors travel with checkpoints (like the u/v
    # buffers of torch's spectral_norm), so a resumed run continues exactly.
    # ``<prefix>_extra_state`` is ONE float64 tensor -- [header length,
    # JSON header bytes, flattened vectors] -- because mmengine's Runner
    # broadcasts every state-dict entry as a tensor, and weights_only
    # loading accepts it.
    def get_extra_state(self) -> Tensor:
        header, chunks = [], []
        for (key, net, i), (u, v) in self._vectors.items():
            header.append([key, net, i, list(u.shape), list(v.shape)])
            chunks += [u.detach().double().cpu().flatten(),
                       v.detach().double().cpu().flatten()]
        raw = torch.tensor(list(json.dumps(header).encode()),
                           dtype=torch.float64)
        return torch.cat([torch.tensor([float(raw.numel())],
                                       dtype=torch.float64), raw] + chunks)

    def set_extra_state(self, state: Tensor) -> None:
        if not isinstance(state, Tensor) or state.numel() == 0:
            return
        state = state.detach().cpu()
        n = int(state[0])
        header = json.loads(bytes(state[1:1 + n].to(torch.uint8).tolist()))
        pos, vectors = 1 + n, {}
        for key, net, i, u_shape, v_shape in header:
            uv = []
            for shape in (u_shape, v_shape):
                size = int(torch.Size(shape).numel())
                uv.append(state[pos:pos + size].float().reshape(shape))
                pos += size
            vectors[(key, net, i)] = tuple(uv)
        self._vectors = vectors

    @property
    def last_sigmas(self) -> Dict[str, Tensor]:
        """Latest batch-mean estimates, for logging.

        Keys are ``'sigma_s.<key>.<i>'`` (student) and ``'sigma_t.<key>.<i>'``
        (teacher) for pair ``i``; values are detached scalar tensors.
        """
        return dict(self._last_sigmas)

    def reset_state(self) -> None:
        """Forget the power-iteration vectors and the logged estimates."""
        self._vectors.clear()
        self._last_sigmas.clear()

    def estimate_sigma(self, tm: Tensor, state_key: Hashable) -> Tensor:
        """Per-sample top singular value of ``tm`` with persistent vectors.

        Starts from the vectors stored under ``state_key`` (if their shapes
        match and ``warm_start`` is on) with ``n_iters`` iterations, else
        cold with ``cold_iters``, then updates the stored vectors.

        Args:
            tm (Tensor): Shape (B, m, n).
            state_key (Hashable): Identifies the matrix across steps.

        Returns:
            Tensor: Shape (B,), differentiable w.r.t. ``tm``.
        """
        with fp32_guard(tm):
            tm = upcast(tm)
            tm_t = tm.transpose(-1, -2)
            return self._estimate(lambda x: x @ tm, lambda y: y @ tm_t,
                                  tm.detach, tm, tm.shape, state_key)

    def _estimate_factored(self, p: Tensor, q: Tensor, n: int,
                           state_key: Hashable) -> Tensor:
        """:meth:`estimate_sigma` of ``TM = P Q^T / n`` (see
        :func:`_tm_factors`): every product with TM is taken as two products
        with the factors, O((C_in + C_out) h w) instead of the
        O(C_in C_out h w) needed to form TM (and twice that for its
        backward). TM is formed, under ``no_grad``, only for a cold start."""
        q_t = q.transpose(-1, -2)

        # y @ TM^T as (P @ (y Q)^T)^T: the gradient that reaches P (the
        # pooled map) is then contiguous; with (y Q) @ P^T it is a
        # transposed (channels-last) tensor, which makes the pooling's
        # backward ~3x slower and costs a full-size copy.
        def mul(x: Tensor) -> Tensor:
            return (x @ p) @ q_t / n

        def mul_t(y: Tensor) -> Tensor:
            return (p @ (y @ q).transpose(-1, -2)).transpose(-1, -2) / n

        def make_tm() -> Tensor:
            return (p.detach() @ q_t.detach()) / n

        return self._estimate(mul, mul_t, make_tm, p,
                              (p.size(0), p.size(1), q.size(1)), state_key)

    def _estimate(self, mul: RowProduct, mul_t: RowProduct,
                  make_tm: Callable[[], Tensor], like: Tensor,
                  shape: Sequence[int], state_key: Hashable) -> Tensor:
        """Shared body of :meth:`estimate_sigma` and
        :meth:`_estimate_factored`; ``like`` gives the dtype and device."""
        batch, m, n = shape
        k = min(self.n_vectors, m, n)
        stored = self._vectors.get(state_key) if self.warm_start else None
        if stored is not None and (stored[0].shape != (k, m)
                                   or stored[1].shape != (k, n)):
            stored = None  # another model: restart cold
        if stored is None:
            with torch.no_grad():
                start = _cold_start(make_tm(), k, 1e-12)
            sigma, u, v = _block_power_iteration(mul, mul_t, start, None,
                                                 self.cold_iters, 1e-12)
            ref_u, ref_v = u[0], v[0]
        else:
            ref_u, ref_v = (x.to(like) for x in stored)
            sigma, u, v = _block_power_iteration(mul, mul_t,
                                                 ref_u.expand(batch, k, m),
                                                 None, self.n_iters, 1e-12)
        if self.warm_start:
            with torch.no_grad():
                self._vectors[state_key] = (_pool_basis(u, ref_u),
                                            _pool_basis(v, ref_v))
        return sigma

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
            key (str): Feature-group name (for the stored vectors).
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
                sigmas.append(self._estimate_factored(p, q, n, (key, net, i)))
        return sigmas

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
        if not self.check_finite:
            return
        for net, feats in (('student', student_feats), ('teacher',
                                                        teacher_feats)):
            for i, feat in enumerate(feats):
                if not torch.isfinite(feat).all():
                    raise FloatingPointError(
                        f'LipschitzLoss (key={key!r}): the {net} feature {i} '
                        f'{tuple(feat.shape)} contains NaN/Inf. Try a lower '
                        'learning rate, gradient clipping, fp32 or bf16 '
                        'instead of fp16, or check the data and the '
                        f'{net} checkpoint; set check_finite=False to let '
                        'NaNs propagate instead.')

    def _distance(self, sigma_s: Tensor, sigma_t: Tensor) -> Tensor:
        if self.distance == 'mse':
            return F.mse_loss(sigma_s, sigma_t)
        if self.distance == 'l1':
            return F.l1_loss(sigma_s, sigma_t)
        if self.distance == 'smooth_l1':
            return F.smooth_l1_loss(sigma_s, sigma_t)
        return ((sigma_s + self.eps).log() -
                (sigma_t + self.eps).log()).square().mean()

    def forward(self,
                student_feats: Sequence[Tensor],
                teacher_feats: Sequence[Tensor],
                key: str = 'default',
                student_inputs: Optional[Sequence[Tensor]] = None) -> Tensor:
        """Compute the loss.

        Args:
            student_feats (Sequence[Tensor]): N student maps, shallow -> deep.
            teacher_feats (Sequence[Tensor]): N teacher maps, shallow -> deep.
            key (str): Name of the feature group (e.g. ``'backbone'``); keeps
                the state and logged estimates of several groups apart.
            student_inputs (Sequence[Tensor], optional): If given, the
                student TM of pair ``i`` is
                ``TM(student_inputs[i], student_feats[i + 1])`` instead of
                ``TM(student_feats[i], student_feats[i + 1])``. LONDON's
                wiring passes the connector outputs here and the raw student
                maps as ``student_feats``.

        Returns:
            Tensor: Scalar loss in float32 (float64 for float64 inputs).
        """
        self._check_inputs(student_feats, teacher_feats, key)
        num_pairs = len(student_feats) - 1
        if self.block_weights == 'reference':
            # LONDON divides pair i of N features by 2 ** (N - 1 - i)
            weights = [1.0 / 2**(num_pairs - i) for i in range(num_pairs)]
        else:
            weights = resolve_level_weights(self.block_weights, num_pairs,
                                            'block_weights')
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
        for i, (s, t) in enumerate(zip(sigmas_s, sigmas_t)):
            self._last_sigmas[f'sigma_s.{key}.{i}'] = s.detach().mean()
            self._last_sigmas[f'sigma_t.{key}.{i}'] = t.detach().mean()
        return loss * self.loss_weight

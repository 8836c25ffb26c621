"""``top_singular_value``: the single-vector power iteration of
:mod:`mmlckd.models.losses.power_iteration` on a formed matrix, with given
warm-start vectors, or the exact SVD. The package never needs it (its
estimator works on the factored products with tracked states); the tests
use it to check the iteration itself against the SVD."""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from mmlckd.models.losses.power_iteration import (_block_power_iteration,
                                                  _cold_start,
                                                  _orthonormalize,
                                                  dense_products)
from mmlckd.models.losses.utils import fp32_guard, upcast

__all__ = ['top_singular_value']


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

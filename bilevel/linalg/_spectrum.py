"""Extreme eigenvalues of a symmetric operator from a few matrix-vector products (Lanczos).

For a symmetric ``A`` given by ``matvec``, ``k`` Lanczos steps from a random unit vector
``q_1`` build an orthonormal basis ``Q_k`` of the Krylov space
``span(q_1, A q_1, ..., A^{k-1} q_1)`` and the tridiagonal ``T_k = Q_k^T A Q_k``; the
extreme eigenvalues of ``T_k`` (Ritz values) approach those of ``A`` from the inside::

    lambda_min(A) <= theta_min(T_k),      theta_max(T_k) <= lambda_max(A),

exactly (for every ``k``) because each Ritz value is a Rayleigh quotient ``u^T A u`` of a
unit Ritz vector ``u = Q_k s``, and the error decays like that of Chebyshev polynomials
(Kaniel-Paige-Saad). With ``k = n`` (or when the Krylov space becomes invariant) the Ritz
values are eigenvalues of ``A``. A negative ``theta_min`` therefore *certifies* negative
curvature, with ``u`` a direction of it. The basis is fully re-orthogonalised (``k`` is
small), so the estimates are free of the ghost eigenvalues of plain Lanczos.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bilevel.tree import PyTree, ravel


@dataclass(frozen=True)
class Spectrum:
    """Ritz estimates of the extreme eigenvalues of a symmetric operator.

    Attributes
    ----------
    smallest, largest:
        ``theta_min <= theta_max``, Rayleigh quotients of unit vectors, hence
        ``lambda_min(A) <= smallest`` and ``largest <= lambda_max(A)``.
    smallest_vector, largest_vector:
        The corresponding unit Ritz vectors, with the structure of the probe.
    matvecs:
        Products with ``A`` used.
    """

    smallest: float
    largest: float
    smallest_vector: PyTree
    largest_vector: PyTree
    matvecs: int


def hessian_matvec(
    fn: Callable[[PyTree], torch.Tensor], point: PyTree
) -> Callable[[PyTree], PyTree]:
    """``u -> d2 fn(point) u`` for a scalar ``fn`` of a pytree: one linearisation of the
    gradient (``create_graph=True``), one backward pass per product; the products are
    detached."""
    leaves, spec = torch.utils._pytree.tree_flatten(point)
    with torch.enable_grad():
        tracked = [leaf.detach().requires_grad_(True) for leaf in leaves]
        value = fn(torch.utils._pytree.tree_unflatten(tracked, spec))
        if not value.requires_grad:  # fn does not depend on point: a zero Hessian
            return lambda u: torch.utils._pytree.tree_map(torch.zeros_like, u)
        gradient = torch.autograd.grad(value, tracked, create_graph=True, allow_unused=True)
    pairs = [(g, t) for g, t in zip(gradient, tracked) if g is not None and g.requires_grad]

    def product(u: PyTree) -> PyTree:
        u_leaves = torch.utils._pytree.tree_leaves(u)
        by_id = {id(t): i for i, t in enumerate(tracked)}
        out = [torch.zeros_like(t) for t in tracked]
        if pairs:
            grads = torch.autograd.grad(
                [g for g, _ in pairs],
                tracked,
                grad_outputs=[u_leaves[by_id[id(t)]] for _, t in pairs],
                retain_graph=True,
                allow_unused=True,
            )
            out = [o if g is None else g.detach() for o, g in zip(out, grads)]
        return torch.utils._pytree.tree_unflatten(out, spec)

    return product


def hessian_spectrum(
    fn: Callable[[PyTree], torch.Tensor], point: PyTree, *, steps: int = 20
) -> Spectrum:
    """:func:`lanczos` on the Hessian of the scalar ``fn`` at ``point`` (exact products,
    :func:`hessian_matvec`): ``smallest < 0`` certifies a direction of negative curvature,
    ``smallest_vector``."""
    return lanczos(hessian_matvec(fn, point), point, steps=steps)


def lanczos(
    matvec: Callable[[PyTree], PyTree], like: PyTree, *, steps: int = 20, seed: int = 0
) -> Spectrum:
    """Extreme Ritz pairs of the symmetric operator ``matvec`` (see the module docstring).

    ``like`` gives the structure, dtype and device of the vectors; ``steps`` is capped by
    their total size ``n``. The start vector is drawn from a private generator seeded with
    ``seed``: the global RNG is untouched, and the result is deterministic. Stops early when
    the Krylov space is invariant (then the Ritz values are exact eigenvalues).
    """
    flat, raveler = ravel(like)
    n = flat.numel()
    if n == 0:
        raise ValueError("lanczos: the operator acts on an empty vector")
    steps = max(1, min(int(steps), n))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=flat.dtype, device=flat.device)
    q = q / torch.linalg.vector_norm(q)
    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for _ in range(steps):
        basis.append(q)
        w = raveler.ravel(matvec(raveler.unravel(q))).detach()
        alpha = float(torch.dot(q, w))
        alphas.append(alpha)
        Q = torch.stack(basis, dim=1)
        w = w - Q @ (Q.T @ w)  # full re-orthogonalisation, twice for stability
        w = w - Q @ (Q.T @ w)
        beta = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(alpha), beta)
        if len(basis) == steps or not math.isfinite(beta) or beta <= 1e-12 * max(scale, 1e-300):
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    theta, S = torch.linalg.eigh(T)
    Q = torch.stack(basis, dim=1)

    def ritz_vector(j: int) -> PyTree:
        u = Q @ S[:, j].to(dtype=Q.dtype, device=Q.device)
        return raveler.unravel(u / torch.linalg.vector_norm(u))

    return Spectrum(
        smallest=float(theta[0]),
        largest=float(theta[-1]),
        smallest_vector=ritz_vector(0),
        largest_vector=ritz_vector(k - 1),
        matvecs=k,
    )

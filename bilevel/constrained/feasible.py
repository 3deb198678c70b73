"""Euclidean projections onto the feasible sets of constrained bilevel problems.

Every projection solves ``P_C(v) = argmin_{w in C} 1/2 ||w - v||^2`` for a flat float
vector ``v``; the sets are

* a box ``{lower <= w <= upper}`` (:func:`project_box`, exact);
* an affine subspace ``{A w + c = 0}`` (:func:`project_affine`, exact: ``w = v - A^T (A
  A^T)^+ (A v + c)``);
* a polyhedron ``{A_eq w + c_eq = 0, A_in w + c_in <= 0, lower <= w <= upper}``
  (:func:`project_polyhedron`): without bounds, an exact primal-dual active-set method on
  the dual QP (warm-started); otherwise, or when that does not settle, it maximises the concave, continuously differentiable dual
  ``q(mu, nu) = min_{lower <= w <= upper} 1/2 ||w - v||^2 + mu^T (A_in w + c_in) + nu^T
  (A_eq w + c_eq)`` over ``mu >= 0`` with SciPy's L-BFGS-B, the inner minimiser being
  ``w(mu, nu) = clip(v - A_in^T mu - A_eq^T nu, lower, upper)``;
* a general convex set ``{h(w) = 0, g(w) <= 0, lower <= w <= upper}`` with smooth ``g``,
  ``h`` (:func:`project_nonlinear`: SciPy's SLSQP with Jacobians from :mod:`torch.func`);
  only sensible for moderate sizes (SLSQP is dense).

:func:`affine_coefficients` detects affine constraint functions, so that
:class:`~bilevel.constrained.LVHBA` can use the polyhedral projection. Infeasible sets raise
:class:`InfeasibleError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bilevel.errors import BilevelError
from bilevel.problem._constraints import jacobian

__all__ = [
    "InfeasibleError",
    "UnboundedError",
    "affine_coefficients",
    "jacobian",
    "project_affine",
    "project_box",
    "project_nonlinear",
    "project_polyhedron",
]


class InfeasibleError(BilevelError):
    """A feasible set (or a lower-level problem at the current ``x``) is empty."""


class UnboundedError(BilevelError):
    """A lower-level problem is unbounded below at the current ``x``."""


def project_box(v: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``clip(v, lower, upper)``: the projection onto ``{lower <= w <= upper}``."""
    return torch.minimum(torch.maximum(v, lower), upper)


def project_affine(
    v: torch.Tensor, A: torch.Tensor, c: torch.Tensor, *, tol: float = 1e-9
) -> torch.Tensor:
    """Projection onto ``{w : A w + c = 0}``: ``w = v - A^T (A A^T)^+ (A v + c)``.

    Rank-deficient ``A`` is fine when the system is consistent; an inconsistent one (empty
    set) raises :class:`InfeasibleError` (residual ``||A w + c||_inf`` above ``tol`` times
    the scale of ``c`` and ``A v``).
    """
    r = A @ v + c
    step = torch.linalg.lstsq(A @ A.T, r.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
    w = v - A.T @ step
    residual = float((A @ w + c).abs().max()) if c.numel() else 0.0
    scale = 1.0 + float(c.abs().max()) + float((A @ v).abs().max()) if c.numel() else 1.0
    if residual > tol * scale:
        raise InfeasibleError(
            f"the affine constraints A w + c = 0 are inconsistent (least-squares residual "
            f"{residual:.3e}): the feasible set is empty"
        )
    return w


@dataclass
class PolyhedronProjection:
    """Result of :func:`project_polyhedron`: the point, the dual variables (for warm starts)
    and the largest constraint violation at ``w``."""

    w: torch.Tensor
    ineq_dual: torch.Tensor
    eq_dual: torch.Tensor
    violation: float
    iterations: int


def project_polyhedron(
    v: torch.Tensor,
    *,
    A_eq: torch.Tensor | None = None,
    c_eq: torch.Tensor | None = None,
    A_in: torch.Tensor | None = None,
    c_in: torch.Tensor | None = None,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
    dual0: tuple[torch.Tensor, torch.Tensor] | None = None,
    tol: float = 1e-8,
    maxiter: int = 10000,
) -> PolyhedronProjection:
    """Projection onto ``{A_eq w + c_eq = 0, A_in w + c_in <= 0, lower <= w <= upper}``.

    Solves the dual (see the module docstring) with L-BFGS-B from ``dual0`` (zeros by
    default) in float64. The primal point is recovered in closed form; the result is
    accepted when its constraint violation is at most ``tol * (1 + ||c||_inf)``, else
    :class:`InfeasibleError` is raised (an empty polyhedron makes the dual unbounded, so
    L-BFGS-B cannot reach feasibility).
    """
    from scipy.optimize import minimize

    dtype, device = v.dtype, v.device
    n = v.numel()
    vv = v.detach().cpu().double().numpy()

    def as_np(t: torch.Tensor | None, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape) if t is None else t.detach().cpu().double().numpy()

    Ae, ce = as_np(A_eq, (0, n)), as_np(c_eq, (0,))
    Ai, ci = as_np(A_in, (0, n)), as_np(c_in, (0,))
    lo = np.full(n, -np.inf) if lower is None else as_np(lower, (n,))
    hi = np.full(n, np.inf) if upper is None else as_np(upper, (n,))
    m_in, m_eq = Ai.shape[0], Ae.shape[0]
    scale = 1.0 + max(np.abs(ci).max(initial=0.0), np.abs(ce).max(initial=0.0))

    def primal(dual: np.ndarray) -> np.ndarray:
        mu, nu = dual[:m_in], dual[m_in:]
        return np.clip(vv - Ai.T @ mu - Ae.T @ nu, lo, hi)

    def violation(w: np.ndarray) -> float:
        box = max(np.max(lo - w, initial=0.0), np.max(w - hi, initial=0.0))
        ineq = np.max(Ai @ w + ci, initial=0.0)
        eq = np.max(np.abs(Ae @ w + ce), initial=0.0)
        return float(max(box, ineq, eq, 0.0))

    if m_in + m_eq == 0 or violation(vv) <= 0.1 * tol * scale:  # v is (nearly) in the set
        w = np.clip(vv, lo, hi)
        return PolyhedronProjection(
            torch.as_tensor(w, dtype=dtype, device=device),
            v.new_zeros(m_in),
            v.new_zeros(m_eq),
            violation(w),
            0,
        )

    if dual0 is None:
        x0 = np.zeros(m_in + m_eq)
    else:
        x0 = np.concatenate([as_np(dual0[0], (m_in,)), as_np(dual0[1], (m_eq,))])
        x0[:m_in] = np.maximum(x0[:m_in], 0.0)
    if not (np.isfinite(lo).any() or np.isfinite(hi).any()):
        exact = _dual_active_set(vv, Ai, ci, Ae, ce, x0, tol * scale)
        if exact is not None:
            w = primal(exact)
            return PolyhedronProjection(
                torch.as_tensor(w, dtype=dtype, device=device),
                torch.as_tensor(exact[:m_in], dtype=dtype, device=device),
                torch.as_tensor(exact[m_in:], dtype=dtype, device=device),
                violation(w),
                0,
            )

    def negative_dual(dual: np.ndarray) -> tuple[float, np.ndarray]:
        w = primal(dual)
        mu, nu = dual[:m_in], dual[m_in:]
        r_in, r_eq = Ai @ w + ci, Ae @ w + ce
        q = 0.5 * np.dot(w - vv, w - vv) + mu @ r_in + nu @ r_eq
        return -q, -np.concatenate([r_in, r_eq])

    bounds = [(0.0, None)] * m_in + [(None, None)] * m_eq
    res = minimize(
        negative_dual,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": 0.0, "gtol": 0.1 * tol},
    )
    w = primal(res.x)
    viol = violation(w)
    if viol > 0.1 * tol * scale and np.isfinite(res.x).all():
        # polish: the equality-constrained projection on the active set read from the dual
        # (inequalities with a positive multiplier, equalities, coordinates at a bound)
        mu = res.x[:m_in]
        unclipped = vv - Ai.T @ mu - Ae.T @ res.x[m_in:]
        at_lo, at_hi = unclipped <= lo, unclipped >= hi
        rows = [Ai[mu > 0], Ae, np.eye(n)[at_lo], np.eye(n)[at_hi]]
        rhs = [-ci[mu > 0], -ce, lo[at_lo], hi[at_hi]]
        E, e = np.vstack(rows), np.concatenate(rhs)
        if E.shape[0]:
            step = np.linalg.lstsq(E @ E.T, E @ vv - e, rcond=None)[0]
            polished = vv - E.T @ step
            if violation(polished) < viol:
                w, viol = polished, violation(polished)
    if viol > tol * scale or not np.isfinite(res.x).all():
        raise InfeasibleError(
            f"projection onto the polyhedral feasible set failed: constraint violation "
            f"{viol:.3e} after {res.nit} dual L-BFGS-B iterations (the set is probably "
            f"empty; {res.message})"
        )
    return PolyhedronProjection(
        torch.as_tensor(w, dtype=dtype, device=device),
        torch.as_tensor(res.x[:m_in], dtype=dtype, device=device),
        torch.as_tensor(res.x[m_in:], dtype=dtype, device=device),
        viol,
        int(res.nit),
    )


def _dual_active_set(
    v: np.ndarray,
    Ai: np.ndarray,
    ci: np.ndarray,
    Ae: np.ndarray,
    ce: np.ndarray,
    dual0: np.ndarray,
    tol: float,
    maxiter: int = 50,
) -> np.ndarray | None:
    """Exact dual of the projection onto ``{Ai w + ci <= 0, Ae w + ce = 0}`` (no bounds) by a
    primal-dual active-set method on ``min 1/2 l^T Q l - q^T l`` (``Q = A A^T``, ``q = A v +
    c``, ``l = (mu >= 0, nu)``), warm-started from ``dual0``; ``None`` when it does not
    settle (the caller then falls back to L-BFGS-B)."""
    A = np.vstack([Ai, Ae])
    c = np.concatenate([ci, ce])
    Q, q = A @ A.T, A @ v + c
    m_in = Ai.shape[0]
    lam = dual0.copy()
    free = np.ones(len(lam), dtype=bool)
    free[:m_in] = lam[:m_in] > 0
    if not free[:m_in].any():  # cold start: rows violated at v
        free[:m_in] = (Ai @ v + ci) > 0
    for _ in range(maxiter):
        lam = np.zeros_like(lam)
        if free.any():
            sub = Q[np.ix_(free, free)]
            lam[free] = np.linalg.lstsq(sub, q[free], rcond=None)[0]
        slack = Q @ lam - q  # = -(A w + c); >= 0 required on the inequality rows
        new_free = np.ones_like(free)
        new_free[:m_in] = lam[:m_in] - slack[:m_in] > 0
        if np.array_equal(new_free, free):
            w = v - A.T @ lam
            ok_primal = np.max(Ai @ w + ci, initial=0.0) <= tol
            ok_eq = np.max(np.abs(Ae @ w + ce), initial=0.0) <= tol
            if ok_primal and ok_eq and np.min(lam[:m_in], initial=0.0) >= -tol:
                lam[:m_in] = np.maximum(lam[:m_in], 0.0)
                return lam
            return None
        free = new_free
    return None


def project_nonlinear(
    v: torch.Tensor,
    *,
    eq: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ineq: Callable[[torch.Tensor], torch.Tensor] | None = None,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
    tol: float = 1e-8,
    maxiter: int = 500,
) -> torch.Tensor:
    """Projection onto ``{eq(w) = 0, ineq(w) <= 0, lower <= w <= upper}`` by SLSQP.

    ``eq`` and ``ineq`` map a flat tensor to a 1-D tensor; the set should be convex (the
    projection is then unique and SLSQP's stationary point is it). Raises
    :class:`InfeasibleError` when SLSQP ends with a violation above ``tol`` (scaled).
    """
    from scipy.optimize import minimize

    dtype, device = v.dtype, v.device
    vv = v.detach().cpu().double().numpy()
    n = vv.size

    def wrap(fn: Callable[[torch.Tensor], torch.Tensor], sign: float) -> dict:
        def value(w: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(w, dtype=dtype, device=device)
            return sign * fn(t).detach().cpu().double().numpy()

        def jac(w: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(w, dtype=dtype, device=device)
            return sign * jacobian(fn, t).cpu().double().numpy()

        return {"fun": value, "jac": jac}

    constraints = []
    if eq is not None:
        constraints.append({"type": "eq", **wrap(eq, 1.0)})
    if ineq is not None:  # SciPy's convention: fun(w) >= 0
        constraints.append({"type": "ineq", **wrap(ineq, -1.0)})
    lo = None if lower is None else lower.detach().cpu().double().numpy()
    hi = None if upper is None else upper.detach().cpu().double().numpy()
    bounds = None
    if lo is not None or hi is not None:
        lo = np.full(n, -np.inf) if lo is None else lo
        hi = np.full(n, np.inf) if hi is None else hi
        bounds = [
            (None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
            for a, b in zip(lo, hi, strict=True)
        ]
    x0 = vv if bounds is None else np.clip(vv, lo, hi)
    res = minimize(
        lambda w: (0.5 * np.dot(w - vv, w - vv), w - vv),
        x0,
        jac=True,
        method="SLSQP",
        bounds=bounds,
        constraints=constraints,
        options={"maxiter": maxiter, "ftol": tol**2},
    )
    w = res.x
    viol = 0.0
    for con in constraints:
        val = con["fun"](w)
        viol = max(viol, float(np.max(np.abs(val) if con["type"] == "eq" else -val, initial=0.0)))
    if viol > 10 * tol * (1.0 + np.abs(vv).max(initial=0.0)):
        raise InfeasibleError(
            f"projection onto the feasible set failed: SLSQP ended with constraint violation "
            f"{viol:.3e} ({res.message}); the set may be empty"
        )
    return torch.as_tensor(w, dtype=dtype, device=device)


def affine_coefficients(
    fn: Callable[[torch.Tensor], torch.Tensor],
    w0: torch.Tensor,
    *,
    probes: int = 2,
    rtol: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A, c)`` with ``fn(w) = A w + c`` when ``fn`` is affine, else ``None``.

    The Jacobian ``A`` is taken at ``w0``; ``fn`` is declared affine when, at ``probes``
    random points ``w`` around ``w0`` (standard normal perturbations of unit scale), both
    the Jacobian and the value agree with the affine model to ``rtol`` (relative; default
    ``max(1e-10, 100 eps)`` of the dtype). A
    numerical test, not a proof: a function that is affine on every probe but not
    elsewhere would be misclassified (pass ``projection="nonlinear"`` to LV-HBA to avoid
    the test).
    """

    if rtol is None:  # 1e-10 in float64, about 1e-5 in float32
        rtol = max(1e-10, 100.0 * torch.finfo(w0.dtype).eps)

    def jac(w: torch.Tensor) -> torch.Tensor:
        return jacobian(fn, w)

    A = jac(w0)
    c = (fn(w0) - A @ w0).detach()
    scale = 1.0 + float(A.abs().max()) if A.numel() else 1.0
    for _ in range(probes):
        w = w0 + torch.randn(w0.shape, dtype=w0.dtype, generator=generator)
        if not torch.allclose(jac(w), A, rtol=rtol, atol=rtol * scale):
            return None
        value = fn(w)
        model = A @ w + c
        if not torch.allclose(value, model, rtol=rtol, atol=rtol * (scale + float(w.abs().max()))):
            return None
    return A, c

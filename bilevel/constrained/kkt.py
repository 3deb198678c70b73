"""Implicit differentiation of constrained lower levels through their reduced KKT system.

Lower level (``x`` fixed; ``g`` and ``h`` from :class:`~bilevel.BilevelProblem`, finite
``y_bounds`` added as rows ``y - u <= 0`` and ``l - y <= 0`` of ``g``, in the row order of
:class:`~bilevel.problem.LowerConstraints`)::

    y*(x) in argmin_y f(x, y)  s.t.  g(x, y) <= 0,  h(x, y) = 0.

At a KKT point with multipliers ``mu >= 0`` (inequalities) and ``nu`` (equalities) the
Lagrangian is ``L = f + mu^T g + nu^T h``. The active set is read from the multipliers:
``A = {i : mu_i > multiplier_tol}``; a constraint with ``|g_i| <= active_tol`` but
``mu_i <= multiplier_tol`` is *weakly active*: strict complementarity fails there, the
solution map is generally not differentiable, and the derivative returned is the one-sided
derivative of the branch on which that constraint stays inactive (it is reported in
``degenerate`` with a :class:`StrictComplementarityWarning`). With ``c_A = (h, g_A)`` and
``J = d c_A / dy``, differentiating ``grad_y L = 0, c_A = 0`` gives::

    [ H   J^T ] [ dy    ]     [ L_yx  ]
    [ J   0   ] [ dmu_A ] = - [ dc_A/dx ] dx,      H = grad^2_yy L,

non-singular under LICQ on the active set and second-order sufficiency on the null space of
``J``. The adjoint form gives the hypergradient of ``F(x, y*(x))`` with one solve::

    K [p; q] = [grad_y F; 0],    grad h(x) = grad_x F - L_xy p - (dc_A/dx)^T q.

Everything is dense (``torch.linalg``): meant for lower levels with up to a few thousand
variables and constraints. :func:`kkt_argmin` wraps a lower-level solve as a differentiable
function of ``x`` (autograd backward through the same adjoint system), so any gradient-based
outer loop can use it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from bilevel.constrained.feasible import InfeasibleError, UnboundedError
from bilevel.errors import BilevelError, ConvergenceWarning
from bilevel.implicit import root_jvp, root_vjp
from bilevel.linalg import dense, materialize
from bilevel.optimality import kkt_conditions
from bilevel.problem import BilevelProblem, LowerConstraints
from bilevel.problem._constraints import jacobian
from bilevel.tree import ravel

__all__ = [
    "KKTHypergradient",
    "LowerSolution",
    "StrictComplementarityWarning",
    "estimate_multipliers",
    "kkt_argmin",
    "kkt_hypergradient",
    "kkt_jvp",
    "kkt_vjp",
    "solve_lower",
]


class StrictComplementarityWarning(UserWarning):
    """An active lower-level constraint has a (numerically) zero multiplier."""


# ------------------------------------------------------------------ lower-level solve
@dataclass
class LowerSolution:
    """A lower-level KKT point from :func:`solve_lower`.

    ``ineq_multipliers`` covers the rows of ``g`` followed by the finite upper and lower
    bounds of ``y`` (see the module docstring); ``kkt_residual`` is the infinity norm of
    stationarity, primal infeasibility and complementarity.
    """

    y: torch.Tensor
    ineq_multipliers: torch.Tensor
    eq_multipliers: torch.Tensor
    kkt_residual: float
    converged: bool
    message: str


def solve_lower(
    problem: BilevelProblem,
    x: torch.Tensor,
    y0: torch.Tensor,
    *,
    tol: float = 1e-12,
    maxiter: int = 1000,
    unbounded_norm: float = 1e8,
) -> LowerSolution:
    """Solve the lower level at ``x`` with SciPy's SLSQP (exact gradients from torch).

    Dense SQP: for small and medium problems (up to a few hundred variables). Raises
    :class:`~bilevel.constrained.InfeasibleError` when SLSQP reports incompatible
    constraints or ends infeasible, :class:`~bilevel.constrained.UnboundedError` when the
    iterates exceed ``unbounded_norm`` while the objective decreases (unbounded lower level),
    and emits a :class:`~bilevel.errors.ConvergenceWarning` when the KKT residual stays above
    ``sqrt(tol)``. Multipliers are recovered by non-negative least squares on the
    stationarity condition (see :func:`estimate_multipliers`).
    """
    from scipy.optimize import minimize

    dtype = y0.dtype
    x = x.detach()
    rows = LowerConstraints(problem, x, y0.detach())
    m_in, m_eq = rows.n_ineq, rows.n_eq
    ys = y0.shape

    def fy(yf: torch.Tensor) -> torch.Tensor:
        return problem.lower_value(x.detach(), yf.reshape(ys))

    def np_fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.as_tensor(v, dtype=dtype).requires_grad_(True)
        with torch.enable_grad():
            value = fy(t)
            (g,) = torch.autograd.grad(value, t, allow_unused=True)
        g = torch.zeros_like(t) if g is None else g
        return float(value.detach()), g.detach().double().numpy()

    def wrap(fn: Callable, sign: float) -> dict:
        return {
            "fun": lambda v: sign * fn(x, torch.as_tensor(v, dtype=dtype)).detach().numpy(),
            "jac": lambda v: (
                sign
                * jacobian(lambda t: fn(x, t), torch.as_tensor(v, dtype=dtype)).double().numpy()
            ),
        }

    constraints = []
    if m_eq:
        constraints.append({"type": "eq", **wrap(rows.eq, 1.0)})
    if m_in:
        constraints.append({"type": "ineq", **wrap(rows.ineq, -1.0)})
    v0 = y0.detach().flatten().double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = minimize(
            np_fun,
            v0,
            jac=True,
            method="SLSQP",
            constraints=constraints,
            options={"maxiter": maxiter, "ftol": tol},
        )
    y = torch.as_tensor(res.x, dtype=dtype).reshape(ys)
    g_val = rows.ineq(x, y).detach()
    h_val = rows.eq(x, y).detach()
    violation = max(
        float(g_val.clamp(min=0).max()) if m_in else 0.0,
        float(h_val.abs().max()) if m_eq else 0.0,
    )
    norm = float(np.abs(res.x).max(initial=0.0)) if np.isfinite(res.x).all() else math.inf
    if norm > unbounded_norm or not math.isfinite(float(res.fun)):
        raise UnboundedError(
            f"the lower level appears unbounded below at the given x: SLSQP reached "
            f"|y|_inf = {norm:.3e} with f = {float(res.fun):.3e}"
        )
    feas_tol = 1e3 * math.sqrt(tol) * (1.0 + norm)
    if res.status == 4 or violation > feas_tol:
        raise InfeasibleError(
            f"the lower level is infeasible at the given x: SLSQP ended with constraint "
            f"violation {violation:.3e} ({res.message})"
        )
    grad_f = torch.as_tensor(np_fun(res.x)[1], dtype=dtype)
    mu, nu, residual = estimate_multipliers(problem, x.detach(), y, active_tol=feas_tol)
    converged = residual <= math.sqrt(tol) * (1.0 + float(grad_f.abs().max()))
    if not converged:
        warnings.warn(
            f"solve_lower: KKT residual {residual:.3e} after {res.nit} SLSQP iterations "
            f"({res.message})",
            ConvergenceWarning,
            stacklevel=2,
        )
    return LowerSolution(y, mu, nu, residual, converged, str(res.message))


def estimate_multipliers(
    problem: BilevelProblem, x: torch.Tensor, y: torch.Tensor, *, active_tol: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Multipliers of a (near) KKT point by bounded least squares.

    :meth:`LowerConstraints.multipliers <bilevel.problem.LowerConstraints.multipliers>` on
    the nearly active inequality rows ``N = {i : c_i >= -active_tol}`` (the others get
    ``mu_i = 0``): ``min ||grad_y f + J_h^T nu + J_N^T mu_N||^2 + ||mu_N c_N||^2`` over
    ``mu_N >= 0``. Returns ``(mu, nu, kkt_residual)`` with the residual the infinity norm of
    stationarity, infeasibility and complementarity
    (:meth:`~bilevel.problem.LowerConstraints.kkt_residual` with ``ord=inf``).
    """
    rows = LowerConstraints(problem, x.detach(), y.detach())
    mu, nu = rows.multipliers(active_tol)
    return mu, nu, rows.kkt_residual(mu, nu, ord=math.inf)


# ------------------------------------------------------------------ the KKT system
@dataclass
class KKTHypergradient:
    """Result of :func:`kkt_hypergradient` / :func:`kkt_vjp`.

    Attributes
    ----------
    grad:
        The hypergradient ``d F(x, y*(x)) / dx`` (or the VJP ``v^T dy*/dx``), shaped as
        ``x``; for :func:`kkt_jvp` the tangent ``dy*/dx x_dot``, shaped as ``y``.
    active:
        Boolean mask over the inequality rows (``g``, then finite upper and lower bounds of
        ``y``): strongly active constraints (multiplier above ``multiplier_tol``).
    degenerate:
        Indices of weakly active rows (``|g_i| <= active_tol``, multiplier ``<=
        multiplier_tol``): strict complementarity fails there.
    ineq_multipliers, eq_multipliers:
        The multipliers used (given or estimated).
    kkt_residual:
        Infinity norm of the KKT conditions at ``(y, mu, nu)``.
    condition_number:
        2-norm condition number of the reduced KKT matrix.
    """

    grad: torch.Tensor
    active: torch.Tensor
    degenerate: list[int]
    ineq_multipliers: torch.Tensor
    eq_multipliers: torch.Tensor
    kkt_residual: float
    condition_number: float
    strict_complementarity: bool = field(init=False)

    def __post_init__(self) -> None:
        self.strict_complementarity = not self.degenerate


def kkt_vjp(
    problem: BilevelProblem,
    x: torch.Tensor,
    y: torch.Tensor,
    v: torch.Tensor,
    *,
    ineq_multipliers: torch.Tensor | None = None,
    eq_multipliers: torch.Tensor | None = None,
    active_tol: float = 1e-7,
    multiplier_tol: float = 1e-8,
    kkt_tol: float | None = None,
) -> KKTHypergradient:
    """``v^T dy*/dx`` at a lower-level KKT point ``y`` (see the module docstring).

    The reduced KKT conditions ``R((y, lam_A), x) = (grad_y L, c_A) = 0``
    (:func:`bilevel.optimality.kkt_conditions` with the active rows as equalities) define
    ``(y*, lam_A)(x)``; :func:`bilevel.implicit.root_vjp` with ``solve="dense"`` solves
    ``K^T [p; q] = [v; 0]`` (``K = dR/d(y, lam_A)``, the reduced KKT matrix) and returns
    ``-(dR/dx)^T [p; q] = -(L_xy p + (dc_A/dx)^T q)``.

    Multipliers not given are estimated (:func:`estimate_multipliers`); given ones must
    cover every inequality row (``g`` and the finite bounds of ``y``) and every equality.
    Raises :class:`~bilevel.errors.BilevelError` when the reduced KKT matrix is singular
    (LICQ or second-order sufficiency fails), :class:`ValueError` for multipliers or
    vectors of the wrong shape; warns with :class:`StrictComplementarityWarning` for weakly
    active constraints, and with :class:`~bilevel.errors.ConvergenceWarning` when ``y`` is
    not a KKT point: ``kkt_residual > kkt_tol * max(1, |grad_y f|_inf)`` (default
    ``kkt_tol`` ``1e-6`` in float64, ``1e-3`` otherwise); the returned derivative is then
    that of a point which does not solve the lower level.
    """
    if not isinstance(v, torch.Tensor) or not isinstance(y, torch.Tensor) or v.shape != y.shape:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"kkt_vjp: v must have the shape of y, got {shape}")
    return _kkt_derivative(
        "kkt_vjp",
        problem,
        x,
        y,
        v,
        ineq_multipliers,
        eq_multipliers,
        active_tol,
        multiplier_tol,
        kkt_tol,
    )


def kkt_jvp(
    problem: BilevelProblem,
    x: torch.Tensor,
    y: torch.Tensor,
    x_dot: torch.Tensor,
    *,
    ineq_multipliers: torch.Tensor | None = None,
    eq_multipliers: torch.Tensor | None = None,
    active_tol: float = 1e-7,
    multiplier_tol: float = 1e-8,
    kkt_tol: float | None = None,
) -> KKTHypergradient:
    """``dy*/dx x_dot`` at a lower-level KKT point ``y``: forward mode of :func:`kkt_vjp`.

    :func:`bilevel.implicit.root_jvp` (``solve="dense"``) solves
    ``K [y_dot; lam_dot] = -(dR/dx) x_dot`` on the same reduced KKT conditions; the
    result's ``grad`` is ``y_dot``, shaped as ``y``.

    Multipliers not given are estimated (:func:`estimate_multipliers`); given ones must
    cover every inequality row (``g`` and the finite bounds of ``y``) and every equality.
    Raises :class:`~bilevel.errors.BilevelError` when the reduced KKT matrix is singular
    (LICQ or second-order sufficiency fails), :class:`ValueError` for multipliers or
    vectors of the wrong shape; warns with :class:`StrictComplementarityWarning` for weakly
    active constraints, and with :class:`~bilevel.errors.ConvergenceWarning` when ``y`` is
    not a KKT point: ``kkt_residual > kkt_tol * max(1, |grad_y f|_inf)`` (default
    ``kkt_tol`` ``1e-6`` in float64, ``1e-3`` otherwise); the returned derivative is then
    that of a point which does not solve the lower level.
    """
    if (
        not isinstance(x_dot, torch.Tensor)
        or not isinstance(x, torch.Tensor)
        or x_dot.shape != x.shape
    ):
        shape = tuple(x_dot.shape) if isinstance(x_dot, torch.Tensor) else type(x_dot).__name__
        raise ValueError(f"kkt_jvp: x_dot must have the shape of x, got {shape}")
    return _kkt_derivative(
        "kkt_jvp",
        problem,
        x,
        y,
        x_dot,
        ineq_multipliers,
        eq_multipliers,
        active_tol,
        multiplier_tol,
        kkt_tol,
    )


def _kkt_derivative(
    caller: str,
    problem: BilevelProblem,
    x: torch.Tensor,
    y: torch.Tensor,
    direction: torch.Tensor,
    ineq_multipliers: torch.Tensor | None,
    eq_multipliers: torch.Tensor | None,
    active_tol: float,
    multiplier_tol: float,
    kkt_tol: float | None,
) -> KKTHypergradient:
    """:func:`kkt_vjp` (``caller="kkt_vjp"``, ``direction`` a cotangent of ``y``) or
    :func:`kkt_jvp` (a tangent of ``x``)."""
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError(f"{caller}: x and y must be tensors")
    x, y, direction = x.detach(), y.detach(), direction.detach()
    xs, ys = x.shape, y.shape
    rows = LowerConstraints(problem, x, y)
    m_in, m_eq = rows.n_ineq, rows.n_eq
    if ineq_multipliers is None or eq_multipliers is None:
        mu_est, nu_est, _ = estimate_multipliers(problem, x, y, active_tol=active_tol)
        mu = mu_est if ineq_multipliers is None else ineq_multipliers.detach()
        nu = nu_est if eq_multipliers is None else eq_multipliers.detach()
    else:
        mu, nu = ineq_multipliers.detach(), eq_multipliers.detach()
    for name, mult, m in (("ineq_multipliers", mu, m_in), ("eq_multipliers", nu, m_eq)):
        if mult.shape != (m,):
            raise ValueError(
                f"{caller}: {name} must have shape ({m},) (lower_ineq rows, then finite upper "
                f"and lower bounds of y), got {tuple(mult.shape)}"
            )
    mu, nu = mu.to(y.dtype), nu.to(y.dtype)
    g_val = rows.values()[0]
    active = mu > multiplier_tol
    degenerate = torch.nonzero((~active) & (g_val.abs() <= active_tol)).flatten().tolist()
    if degenerate:
        warnings.warn(
            f"strict complementarity fails at lower-level inequality rows {degenerate} "
            "(active with zero multiplier): the solution map is not differentiable there; "
            "returning the derivative of the branch where they are inactive",
            StrictComplementarityWarning,
            stacklevel=3,
        )
    idx = torch.nonzero(active).flatten()

    def active_rows(y_: torch.Tensor, x_: torch.Tensor) -> torch.Tensor:
        """``c_A = (h, g_A)``: equalities, then the active inequality rows."""
        return torch.cat([rows.eq(x_, y_), rows.ineq(x_, y_)[idx]])

    optimality = kkt_conditions(
        lambda y_, x_: problem.lower_value(x_.reshape(xs), y_.reshape(ys)),
        eq_constraints=active_rows,
    )
    lam = torch.cat([nu, mu[idx]])
    empty = y.new_zeros(0)
    solver = _ConditionedDense(len(lam))
    if caller == "kkt_vjp":
        cotangent = (direction, torch.zeros_like(lam), empty)
        (out,) = root_vjp(optimality, (y, lam, empty), (x,), cotangent, solve=solver)
        out = out.reshape(xs)
    else:
        out = root_jvp(optimality, (y, lam, empty), (x,), (direction,), solve=solver)[0]
        out = out.reshape(ys)
    gfy = rows.objective_gradient()
    residual = rows.kkt_residual(mu, nu, ord=math.inf)
    tol = kkt_tol if kkt_tol is not None else (1e-6 if y.dtype == torch.float64 else 1e-3)
    scale = max(1.0, float(gfy.abs().max())) if gfy.numel() else 1.0
    if not residual <= tol * scale:
        warnings.warn(
            f"{caller}: y is not a KKT point of the lower level (KKT residual {residual:.3e} "
            f"> {tol:.1e} x {scale:.3g}); the derivative returned is not that of y*(x). Solve "
            "the lower level first (e.g. solve_lower) or pass its multipliers",
            ConvergenceWarning,
            stacklevel=3,
        )
    return KKTHypergradient(
        grad=out,
        active=active,
        degenerate=degenerate,
        ineq_multipliers=mu,
        eq_multipliers=nu,
        kkt_residual=residual,
        condition_number=solver.condition_number,
    )


class _ConditionedDense:
    """:func:`bilevel.linalg.dense` for the reduced KKT system that also records the 2-norm
    condition number of the matrix and refuses a numerically singular one
    (``cond >= 1 / (eps (n + m))``) with :class:`~bilevel.errors.BilevelError`: LU would
    otherwise return a meaningless solution for a nearly singular ``K``."""

    def __init__(self, n_active: int):
        self.n_active = n_active
        self.condition_number = math.nan

    def __call__(self, matvec, b, **options):
        b_flat, raveler = ravel(b)
        matrix = materialize(raveler.linear_map(matvec), b_flat.numel(), b_flat)
        sv = torch.linalg.svdvals(matrix)
        cond = float(sv[0] / sv[-1]) if sv.numel() and float(sv[-1]) > 0 else math.inf
        if not sv.numel():
            cond = 1.0
        self.condition_number = cond
        eps = torch.finfo(b_flat.dtype).eps
        if not cond < 1.0 / (eps * max(b_flat.numel(), 1)):
            raise BilevelError(
                f"the reduced KKT matrix is singular (condition number {cond:.3e}, "
                f"{self.n_active} active constraints): LICQ or second-order sufficiency "
                "fails at this lower-level solution, so y*(x) is not differentiable by the "
                "implicit function theorem"
            )
        return dense(lambda u: raveler.unravel(matrix @ raveler.ravel(u)), b, **options)


def kkt_hypergradient(
    problem: BilevelProblem,
    x: torch.Tensor,
    y: torch.Tensor,
    **kwargs,
) -> KKTHypergradient:
    """Hypergradient ``grad_x F + (dy*/dx)^T grad_y F`` of ``F(x, y*(x))`` at a lower-level
    KKT point ``y`` through the reduced KKT system; keyword arguments as :func:`kkt_vjp`.
    """
    with torch.enable_grad():
        xv = x.detach().clone().requires_grad_(True)
        yv = y.detach().clone().requires_grad_(True)
        value = problem.upper_value(xv, yv)
        gx, gy = torch.autograd.grad(value, (xv, yv), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gy = torch.zeros_like(y) if gy is None else gy
    out = kkt_vjp(problem, x, y, gy, **kwargs)
    out.grad = out.grad + gx
    return out


class _KKTArgmin(torch.autograd.Function):
    @staticmethod
    def forward(x, y, problem, options):
        return y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, problem, options = inputs
        ctx.problem, ctx.options = problem, options
        ctx.save_for_backward(x, y)

    @staticmethod
    def backward(ctx, grad_y):
        x, y = ctx.saved_tensors
        out = kkt_vjp(ctx.problem, x, y, grad_y, **ctx.options)
        return out.grad, None, None, None


def kkt_argmin(
    problem: BilevelProblem,
    x: torch.Tensor,
    y0: torch.Tensor,
    *,
    solve: Callable[[BilevelProblem, torch.Tensor, torch.Tensor], LowerSolution] | None = None,
    active_tol: float = 1e-7,
    multiplier_tol: float = 1e-8,
) -> tuple[torch.Tensor, LowerSolution]:
    """Differentiable lower-level solution ``y*(x)`` and the :class:`LowerSolution`.

    ``solve(problem, x, y0)`` defaults to :func:`solve_lower`; backward applies
    :func:`kkt_vjp` with the solution's multipliers (for forward mode call :func:`kkt_jvp`:
    it runs :func:`torch.func.jvp` inside, which cannot nest in a forward-AD level), so ``y*(x)`` composes with autograd
    (``F(x, kkt_argmin(problem, x, y0)[0]).backward()`` gives the hypergradient).
    """
    solution = (solve or solve_lower)(problem, x.detach(), y0.detach())
    options = {
        "ineq_multipliers": solution.ineq_multipliers,
        "eq_multipliers": solution.eq_multipliers,
        "active_tol": active_tol,
        "multiplier_tol": multiplier_tol,
    }
    y = _KKTArgmin.apply(x, solution.y, problem, options)
    return y, solution

r"""Exact adversary for a continuous (LP) recourse under right-hand-side uncertainty.

For a fixed first stage ``x`` the recourse is the LP

.. math::

    Q(x, \xi) = \min_y \{ d^T y : W y \le r(\xi),\ l \le y \le u \}, \qquad
    r(\xi) = h + H \xi - \Big(T + \sum_k \xi_k T^{\xi}_k\Big) x = r_0 + R \xi,

with ``r_0 = h - T x`` and ``R[:, k] = H[:, k] - T^xi_k x`` (the recourse matrix ``W`` and
the cost ``d`` do not depend on ``xi``; ``l``, ``u`` finite). The adversarial problem
``max_{xi in Xi} [c^T x + xi^T C x + Q(x, xi)]`` is solved as in Zeng and Zhao (2013),
"Solving two-stage robust optimization problems using a column-and-constraint generation
method", Oper. Res. Lett. 41(5): replace the inner LP by its KKT conditions and linearise
the complementarity conditions with binaries and big-M constants. Two MILPs are solved
(for boxes and integral budget sets, a stronger LP-duality form over the 0/1 vertices, see
the last section).

Phase 1: feasibility (exact, no user constant)
----------------------------------------------
.. math::

    \phi^* = \max_{\xi \in \Xi}\ \min_{y, s} \{ 1^T s : W y - s \le r(\xi),\
    l \le y \le u,\ s \ge 0 \}.

``phi(xi) = 0`` exactly when ``Y(x, xi)`` is nonempty. The KKT conditions of the inner LP,
with ``mu`` (rows), ``nu`` (``s >= 0``), ``alpha`` (``y <= u``), ``beta`` (``y >= l``):
``1 - mu - nu = 0`` and ``W^T mu + alpha - beta = 0``, all multipliers ``>= 0``, plus
complementarity. Hence ``0 <= mu <= 1`` and ``|alpha_j - beta_j| = |(W^T mu)_j| <=
sum_i |W_ij|`` (the column sums of ``|W|``). Any optimal dual can be replaced by one with
``alpha = max(0, -W^T mu)`` and ``beta = max(0, W^T mu)`` (the positive and negative
parts are below the original ``alpha``, ``beta``, so complementarity still holds), so the
bounds ``alpha_j, beta_j <= sum_i |W_ij|`` cut off no scenario: the MILP is exact. The
primal slacks are bounded by interval arithmetic over the boxes of ``y`` and ``xi``:
``s_i <= max(0, max (W_i y - r_i(xi)))`` and ``r_i(xi) - W_i y + s_i`` by the same bound
plus ``max (r_i(xi) - W_i y)``. When ``phi* > feas_tol`` the maximiser ``xi`` is checked with
:meth:`~bilevel.robust.model.TwoStageRobustProblem.second_stage_value`; if the recourse is
infeasible there, the worst case is ``+inf`` (returned with that scenario, status
``"optimal"``, as for integer recourse).

Phase 2: optimality (big-M on the duals of ``W y <= r``)
--------------------------------------------------------
.. math::

    \max_{\xi, y, \lambda, \alpha, \beta, z}\ c^T x + \xi^T C x + d^T y \quad
    \text{s.t.}\quad \xi \in \Xi,\ W y \le r(\xi),\ l \le y \le u,\
    d + W^T \lambda + \alpha - \beta = 0,

    0 \le \lambda_i \le \Lambda z_i,\ r_i(\xi) - W_i y \le M_i (1 - z_i),\
    0 \le \alpha_j \le A_j z^u_j,\ u_j - y_j \le (u_j - l_j)(1 - z^u_j),\
    0 \le \beta_j \le A_j z^l_j,\ y_j - l_j \le (u_j - l_j)(1 - z^l_j),

with binaries ``z``, ``z^u``, ``z^l``, ``M_i = max(0, max (r_i(xi) - W_i y))`` over the
boxes, ``A_j = |d_j| + Lambda sum_i |W_ij|`` (the positive/negative-part argument above)
and ``Lambda`` = ``dual_bound``. A feasible point is a KKT point of the inner LP, hence
``d^T y = Q(x, xi)``; the MILP is exact whenever, for every ``xi in Xi`` with a feasible
recourse, some optimal dual has ``max_i lambda_i <= Lambda``. No such bound holds for
general real data (the dual vertices are ratios of subdeterminants of ``W``), so
``Lambda`` is a user constant (default :func:`default_dual_bound`). After the solve, a
multiplier at the bound emits :class:`~bilevel.errors.ConvergenceWarning` (the bound may
cut off the true worst case; raise ``dual_bound``) unless the recourse LP at the returned
scenario has an optimal dual with ``max_i lambda_i`` below the bound (degenerate LPs, e.g.
a capacity exactly equal to a demand as CCG masters produce, have optimal duals along
unbounded rays, which the solver may push to the bound at no cost: checked by one LP,
:func:`_smallest_optimal_dual`). That check sees only the returned scenario: a bound that
cuts off the duals of another, worse scenario makes the MILP return a different scenario
whose duals fit. Phase 2 is therefore solved again with ten times the bound
(``check_dual_bound``); a larger value there is used, with a warning. A bound off by more
than that factor can still go unnoticed: the absence of a warning is no proof. The
returned scenario is always
re-evaluated exactly by :meth:`~bilevel.robust.model.TwoStageRobustProblem.second_stage_value`
(so ``cost`` is the exact value of that scenario, a valid lower bound on the worst case);
the MILP's proven bound is reported as ``upper_bound`` (an upper bound on the worst case
whenever ``Lambda`` is large enough in the sense above).

Exact complementarity despite the integrality tolerance
-------------------------------------------------------
A MILP solver accepts a binary within ``1e-6`` of an integer (HiGHS'
``mip_feasibility_tolerance``), so ``z_i = 1e-6`` lets ``lambda_i = 1e-6 Lambda`` sit on a
row with slack ``M_i``: the MILP value can exceed every true recourse value by up to
``1e-6 Lambda M_i`` per row (measured: 0.04 to 0.09 on unit-scale random instances with the
default ``Lambda``), and may then point to a wrong scenario. Both phases therefore treat
the MILP as a search over *complementarity patterns* (the rounded binaries): the pattern of
each MILP solution is fixed and the remaining LP over ``(xi, y, multipliers)`` is solved
exactly (no big-M slack left, its points are exact KKT points); the pattern is then cut
off by a no-good cut ``sum_{pi_b=0} z_b + sum_{pi_b=1} (1 - z_b) >= 1`` and the MILP
re-solved, until the MILP bound over the remaining patterns is within ``tol`` of the best
pattern value (phase 2), or decides ``phi* <= feas_tol`` (phase 1). Excluded patterns are
solved exactly, so the final bound is ``max(best, MILP bound)``. In practice one to five
MILPs per phase suffice (measured on the tests and the location-transportation runs).

Boxes and integral budget sets: LP duality over the 0/1 vertices
-----------------------------------------------------------------
``phi`` and ``Q(x, .)`` are convex in ``xi`` (LP values are convex in the right-hand side,
which is affine in ``xi``), so both maxima are attained at vertices of ``Xi``. For a box and
for ``{xi in [0, 1]^n : sum xi <= Gamma}`` with integer ``Gamma`` (totally unimodular;
both recognised from ``P, q, lb, ub``, whatever the set's ``kind``) the vertices are
``xi = base + delta * b`` with ``b`` binary, and both phases are solved as
``max`` over ``(b, dual)`` of the dual LP objective, whose products ``mu_i b_k`` /
``lambda_i b_k`` are linearised exactly (McCormick with a binary factor): phase 1 with
``mu in [0, 1]`` (still no user constant), phase 2 with ``lambda <= Lambda`` (a restricted
dual can only under-estimate ``Q``, so the exactness condition and the warning are the same
as for the KKT form). These MILPs have ``n_xi`` binaries instead of ``2 m_y + 2 n_y``
(KKT): on location-transportation instances the KKT feasibility MILP did not close its
bound in 60 s at 8 facilities x 8 customers, the vertex form takes 0.01 s. The pattern
search above applies to ``b`` in phase 2. General polytopes use the KKT forms.

Before phase 1, the LP :func:`_static_violation_bound` (one recourse ``y0`` for the whole
box of ``xi``) bounds ``phi*`` from above: ``0`` skips phase 1, otherwise it caps the
slacks of the KKT feasibility MILP.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from bilevel.errors import BilevelError, ConvergenceWarning
from bilevel.robust._deadline import Deadline
from bilevel.robust._milp import MilpSolution, solve_milp
from bilevel.robust.model import TwoStageRobustProblem, WorstCase

__all__ = ["default_dual_bound", "lp_worst_case", "lp_worst_case_supported"]

INF = math.inf
FEAS_TOL = 1e-6
AT_BOUND_RTOL = 1e-6
DUAL_BOUND_CHECK_FACTOR = 10.0  # phase 2 is re-solved with this multiple of dual_bound


def lp_worst_case_supported(problem: TwoStageRobustProblem) -> str | None:
    """``None`` when :func:`lp_worst_case` applies, else why not (a sentence).

    It applies to a continuous recourse (every ``y_types`` entry ``"C"``) whose
    constraint uncertainty is in the right-hand side only (``H`` and/or ``T_xi``), with no
    uncertain recourse matrix (``W_xi``) and no uncertain recourse cost (``D``).
    """
    integer = problem.y_integer
    if np.any(integer) and not np.all(integer):
        return (
            "mixed integer and continuous recourse under constraint uncertainty is not "
            "supported: the exact adversaries need all recourse variables integer "
            "(separation MILP) or all continuous (KKT reformulation with right-hand-side "
            "uncertainty)"
        )
    if np.all(integer):
        return "the recourse is integer (use the separation adversary)"
    if problem.W_xi is not None:
        return (
            "continuous recourse with an uncertain recourse matrix (W_xi) is not supported: "
            "the KKT adversary needs the uncertainty in the right-hand side only (H, T_xi)"
        )
    if problem.D is not None:
        return (
            "continuous recourse with an uncertain recourse cost (D) together with "
            "constraint uncertainty is not supported: the KKT adversary needs the recourse "
            "cost independent of xi (right-hand-side uncertainty H, T_xi only)"
        )
    return None


def default_dual_bound(problem: TwoStageRobustProblem) -> float:
    r"""Default bound ``Lambda`` on the multipliers of ``W y <= r`` in the phase-2 MILP.

    ``1e4 * max(1, ||d||_inf / w)`` with ``w`` the smallest row scale ``max_j |W_ij|`` over
    the nonzero rows of ``W``: a multiplier balances costs through stationarity
    ``d + W^T lambda + alpha - beta = 0``, so ``||d||_inf / w`` is its natural scale and the
    factor ``1e4`` leaves room for chains of rows. A heuristic, not a proof: see the module
    docstring.
    """
    row_scale = np.max(np.abs(problem.W), axis=1) if problem.W.size else np.zeros(0)
    row_scale = row_scale[row_scale > 0]
    w = float(np.min(row_scale)) if row_scale.size else 1.0
    d_scale = float(np.max(np.abs(problem.d))) if problem.d.size else 0.0
    return 1e4 * max(1.0, d_scale / w)


def _rhs_affine(problem: TwoStageRobustProblem, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``r(xi) = r0 + R xi`` for the fixed ``x``."""
    r0 = problem.h - problem.T @ x
    R = np.zeros((problem.m_y, problem.n_xi))
    if problem.H is not None:
        R += problem.H
    if problem.T_xi is not None:
        R -= (problem.T_xi @ x).T
    return r0, R


def _slack_range(
    problem: TwoStageRobustProblem, r0: np.ndarray, R: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of ``r_i(xi) - W_i y`` over the boxes of ``xi`` and ``y``."""
    lo_xi, hi_xi = problem.uncertainty.lb, problem.uncertainty.ub
    W, l, u = problem.W, problem.y_lb, problem.y_ub
    rx_lo = np.minimum(R * lo_xi, R * hi_xi).sum(axis=1)
    rx_hi = np.maximum(R * lo_xi, R * hi_xi).sum(axis=1)
    wy_lo = np.minimum(W * l, W * u).sum(axis=1)
    wy_hi = np.maximum(W * l, W * u).sum(axis=1)
    return r0 + rx_lo - wy_hi, r0 + rx_hi - wy_lo


@dataclass
class _KktMilp:
    """``max obj^T v`` s.t. ``lower <= A v <= upper``, ``lb <= v <= ub``; the last
    ``n_bin`` variables are the complementarity binaries."""

    obj: np.ndarray
    A: sp.csr_matrix
    lower: np.ndarray
    upper: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    n_bin: int


def _assemble(
    obj: np.ndarray,
    blocks: list[tuple[list[Any], np.ndarray, np.ndarray]],
    lb: np.ndarray,
    ub: np.ndarray,
    n_bin: int,
) -> _KktMilp:
    """Stack the row blocks ``(list of column blocks, lower, upper)``."""
    A = sp.bmat([row for row, _, _ in blocks], format="csr")
    lower = np.concatenate([lo for _, lo, _ in blocks])
    upper = np.concatenate([up for _, _, up in blocks])
    return _KktMilp(obj, A, lower, upper, lb, ub, n_bin)


def _solve_milp_with_cuts(
    model: _KktMilp, cuts: list[np.ndarray], time_limit: float | None, solver: str
) -> MilpSolution:
    """The MILP with a no-good cut per excluded binary pattern ``pi``:
    ``sum_{pi_b = 0} v_b + sum_{pi_b = 1} (1 - v_b) >= 1``."""
    n = model.obj.shape[0]
    A, lower, upper = model.A, model.lower, model.upper
    if cuts:
        pats = np.array(cuts, dtype=float)
        coef = np.zeros((len(cuts), n))
        coef[:, n - model.n_bin :] = 1.0 - 2.0 * pats
        A = sp.vstack([A, sp.csr_matrix(coef)], format="csr")
        lower = np.concatenate([lower, 1.0 - pats.sum(axis=1)])
        upper = np.concatenate([upper, np.full(len(cuts), INF)])
    integrality = np.zeros(n, dtype=bool)
    integrality[n - model.n_bin :] = True
    return solve_milp(
        model.obj,
        A,
        lower,
        upper,
        model.lb,
        model.ub,
        integrality,
        maximize=True,
        time_limit=time_limit,
        solver=solver,
    )


def _solve_pattern_lp(
    model: _KktMilp, pattern: np.ndarray, time_limit: float | None, solver: str
) -> MilpSolution:
    """The LP with the binaries fixed to ``pattern`` (exact complementarity)."""
    n = model.obj.shape[0]
    lb, ub = model.lb.copy(), model.ub.copy()
    lb[n - model.n_bin :] = pattern
    ub[n - model.n_bin :] = pattern
    return solve_milp(
        model.obj,
        model.A,
        model.lower,
        model.upper,
        lb,
        ub,
        maximize=True,
        time_limit=time_limit,
        solver=solver,
    )


@dataclass
class _Search:
    """Outcome of :func:`_pattern_search`: best exact point, proven bound, rounds, status."""

    x: np.ndarray | None
    value: float
    bound: float
    rounds: int
    status: str  # "optimal", "exhausted" (no pattern left), "time_limit", "max_rounds"


def _pattern_search(
    model: _KktMilp,
    done: Callable[[float, float], bool],
    deadline: Deadline,
    solver: str,
    max_rounds: int,
) -> _Search:
    """Maximise exactly over the binary patterns (the MILP solver's integrality tolerance
    lets a binary at ``1e-6`` carry a multiplier ``1e-6 * bound``; each MILP point is
    therefore re-solved as an LP with its pattern fixed, and the pattern is cut off until
    ``done(best exact value, MILP bound)``)."""
    cuts: list[np.ndarray] = []
    best_x, best = None, -INF
    bound = INF
    n = model.obj.shape[0]
    for rounds in range(1, max_rounds + 1):
        sol = _solve_milp_with_cuts(model, cuts, deadline.remaining(), solver)
        if sol.status == "infeasible":
            return _Search(best_x, best, best, rounds, "exhausted")
        if sol.status not in ("optimal", "time_limit"):
            raise BilevelError(f"a KKT MILP of the LP adversary ended with {sol.status!r}")
        if sol.x is None:
            return _Search(best_x, best, bound, rounds, "time_limit")
        pattern = np.round(sol.x[n - model.n_bin :])
        lp = _solve_pattern_lp(model, pattern, deadline.remaining(), solver)
        if lp.status == "optimal" and lp.objective > best:
            best_x, best = lp.x, lp.objective
        if math.isfinite(sol.bound):  # excluded patterns are worth at most ``best``
            bound = min(bound, max(best, sol.bound))
        if sol.status == "time_limit" or lp.status == "time_limit":
            return _Search(best_x, best, bound, rounds, "time_limit")
        if done(best, bound):
            return _Search(best_x, best, bound, rounds, "optimal")
        cuts.append(pattern)
    return _Search(best_x, best, bound, max_rounds, "max_rounds")


def _static_violation_bound(
    problem: TwoStageRobustProblem, r0: np.ndarray, R: np.ndarray, solver: str
) -> float:
    r"""An upper bound on ``phi* = max_xi phi(xi)`` from one recourse for all scenarios.

    For any ``y0`` in the box, ``phi(xi) <= sum_i max(0, W_i y0 - r_i(xi)) <= sum_i max(0,
    W_i y0 - r^lo_i)`` with ``r^lo_i`` the least ``r_i(xi)`` over the box of ``xi``; the LP
    ``min {1^T t : W y0 - t <= r^lo, t >= 0, y0 in [l, u]}`` gives the best such bound.
    ``0`` proves that every scenario has a feasible recourse (phase 1 is skipped);
    otherwise it caps ``1^T s`` and each ``s_i`` in the KKT feasibility MILP.
    """
    U = problem.uncertainty
    W, n, m = problem.W, problem.n_y, problem.m_y
    r_lo = r0 + np.minimum(R * U.lb, R * U.ub).sum(axis=1)
    obj = np.concatenate([np.zeros(n), np.ones(m)])
    A = sp.hstack([sp.csr_matrix(W), -sp.eye(m)], format="csr")
    lb = np.concatenate([problem.y_lb, np.zeros(m)])
    ub = np.concatenate([problem.y_ub, np.full(m, INF)])
    lp = solve_milp(obj, A, None, r_lo, lb, ub, solver=solver)
    if lp.status != "optimal":
        raise BilevelError(f"the static-recourse bound LP ended with {lp.status!r}")
    return max(float(lp.objective), 0.0)


def _zeros(rows: int, cols: int) -> sp.csr_matrix:
    """An all-zero sparse block."""
    return sp.csr_matrix((rows, cols))


def _lp_blocks(problem: TwoStageRobustProblem, R: np.ndarray) -> tuple:
    """Pieces shared by the KKT MILPs: ``(n, m, k, p, width, I_m, I_n, W, R)`` with the
    recourse sizes ``n, m``, the rows ``k`` of ``P``, ``p = n_xi``, the box widths
    ``u - l`` of ``y``, sparse identities and ``W``, ``R`` as sparse matrices."""
    n, m = problem.n_y, problem.m_y
    k, p = problem.uncertainty.P.shape[0], problem.n_xi
    width = problem.y_ub - problem.y_lb
    return n, m, k, p, width, sp.eye(m), sp.eye(n), sp.csr_matrix(problem.W), sp.csr_matrix(R)


def _feasibility_milp(problem, r0, R, phi_bound: float = INF) -> _KktMilp:
    """Phase 1: ``max_xi min {1^T s : W y - s <= r(xi), y in [l, u], s >= 0}`` (KKT MILP).

    Variables ``(xi, y, s, mu, alpha, beta, z, w, z_u, z_l)``. ``phi_bound`` (from
    :func:`_static_violation_bound`) caps ``1^T s`` and each ``s_i``: at an optimum of the
    inner LP ``s_i <= 1^T s = phi(xi) <= phi*``.
    """
    U = problem.uncertainty
    W, l, u = problem.W, problem.y_lb, problem.y_ub
    n, m, k, p, width, I_m, I_n, Wsp, Rsp = _lp_blocks(problem, R)
    slack_lo, slack_hi = _slack_range(problem, r0, R)
    s_max = np.minimum(np.maximum(0.0, -slack_lo), phi_bound)
    M = np.maximum(0.0, slack_hi) + s_max
    col = np.abs(W).sum(axis=0)
    z = _zeros

    #           xi          y            s            mu          alpha       beta
    #           z           w            z_u          z_l
    blocks = [
        (
            [sp.csr_matrix(U.P), z(k, n), z(k, m), z(k, m), z(k, n), z(k, n)]
            + [z(k, m), z(k, m), z(k, n), z(k, n)],
            np.full(k, -INF),
            U.q,
        ),
        # 1^T s <= phi_bound
        (
            [z(1, p), z(1, n), sp.csr_matrix(np.ones((1, m))), z(1, m), z(1, n), z(1, n)]
            + [z(1, m), z(1, m), z(1, n), z(1, n)],
            np.full(1, -INF),
            np.full(1, phi_bound),
        ),
        # W y - s - R xi <= r0
        (
            [-Rsp, Wsp, -I_m, z(m, m), z(m, n), z(m, n), z(m, m), z(m, m), z(m, n), z(m, n)],
            np.full(m, -INF),
            r0,
        ),
        # W^T mu + alpha - beta = 0
        (
            [z(n, p), z(n, n), z(n, m), Wsp.T, I_n, -I_n, z(n, m), z(n, m), z(n, n), z(n, n)],
            np.zeros(n),
            np.zeros(n),
        ),
        # mu <= z
        (
            [z(m, p), z(m, n), z(m, m), I_m, z(m, n), z(m, n), -I_m, z(m, m), z(m, n), z(m, n)],
            np.full(m, -INF),
            np.zeros(m),
        ),
        # r(xi) - W y + s <= M (1 - z)
        (
            [Rsp, -Wsp, I_m, z(m, m), z(m, n), z(m, n), sp.diags(M), z(m, m), z(m, n), z(m, n)],
            np.full(m, -INF),
            M - r0,
        ),
        # s <= s_max w
        (
            [z(m, p), z(m, n), I_m, z(m, m), z(m, n), z(m, n), z(m, m), -sp.diags(s_max)]
            + [z(m, n), z(m, n)],
            np.full(m, -INF),
            np.zeros(m),
        ),
        # nu = 1 - mu <= 1 - w
        (
            [z(m, p), z(m, n), z(m, m), -I_m, z(m, n), z(m, n), z(m, m), I_m, z(m, n), z(m, n)],
            np.full(m, -INF),
            np.zeros(m),
        ),
        # alpha <= col z_u ;  u - y <= (u - l)(1 - z_u)
        (
            [z(n, p), z(n, n), z(n, m), z(n, m), I_n, z(n, n), z(n, m), z(n, m)]
            + [-sp.diags(col), z(n, n)],
            np.full(n, -INF),
            np.zeros(n),
        ),
        (
            [z(n, p), -I_n, z(n, m), z(n, m), z(n, n), z(n, n), z(n, m), z(n, m)]
            + [sp.diags(width), z(n, n)],
            np.full(n, -INF),
            -l,
        ),
        # beta <= col z_l ;  y - l <= (u - l)(1 - z_l)
        (
            [z(n, p), z(n, n), z(n, m), z(n, m), z(n, n), I_n, z(n, m), z(n, m)]
            + [z(n, n), -sp.diags(col)],
            np.full(n, -INF),
            np.zeros(n),
        ),
        (
            [z(n, p), I_n, z(n, m), z(n, m), z(n, n), z(n, n), z(n, m), z(n, m)]
            + [z(n, n), sp.diags(width)],
            np.full(n, -INF),
            u,
        ),
    ]
    n_bin = 2 * m + 2 * n
    obj = np.concatenate([np.zeros(p + n), np.ones(m), np.zeros(m + 2 * n + n_bin)])
    lb = np.concatenate([U.lb, l, np.zeros(2 * m + 2 * n + n_bin)])
    ub = np.concatenate([U.ub, u, s_max, np.ones(m), col, col, np.ones(n_bin)])
    return _assemble(obj, blocks, lb, ub, n_bin)


def _binary_vertices(U) -> tuple[np.ndarray, np.ndarray] | None:
    """``(base, delta)`` with ``vert(Xi) = {base + delta * b : b in {0,1}^n, b in Xi}``, or
    ``None``.

    Recognised from the data, whatever ``kind`` says: a box (no rows ``P``), and a budget
    set ``{xi in [0, 1]^n : a 1^T xi <= q}`` with ``a > 0`` and ``q / a`` an integer (a
    totally unimodular system, so its vertices are 0/1).
    """
    if U.P.shape[0] == 0:
        return U.lb.copy(), U.ub - U.lb
    if U.P.shape[0] == 1 and np.all(U.lb == 0.0) and np.all(U.ub == 1.0):
        a = float(U.P[0, 0])
        budget = float(U.q[0]) / a if a > 0 else math.nan
        if a > 0 and np.all(U.P[0] == a) and abs(budget - round(budget)) <= 1e-12:
            return np.zeros(U.dim), np.ones(U.dim)
    return None


def _feasibility_vertex_milp(
    problem: TwoStageRobustProblem,
    r0: np.ndarray,
    R: np.ndarray,
    base: np.ndarray,
    delta: np.ndarray,
    deadline: Deadline,
    solver: str,
) -> _Search:
    r"""Phase 1 over the 0/1 vertices ``xi = base + delta * b`` by LP duality (no KKT).

    ``phi`` is convex in ``xi``, so ``phi* = max`` over the vertices of ``Xi``, and by LP
    duality ``phi(xi) = max {-mu^T r(xi) - alpha^T u + beta^T l : W^T mu + alpha - beta = 0,
    0 <= mu <= 1, alpha, beta >= 0}``. The products ``p_ik = mu_i b_k`` are linearised
    exactly (McCormick with ``b_k`` binary and ``mu_i in [0, 1]``): ``p <= mu``, ``p <= b``,
    ``p >= mu + b - 1``, ``p >= 0``; only ``n_xi`` binaries, and no big-M from the data.
    The bounds ``alpha_j, beta_j <= sum_i |W_ij|`` are valid as in the KKT phase 1.
    """
    U = problem.uncertainty
    W, l, u = problem.W, problem.y_lb, problem.y_ub
    n, m, pdim = problem.n_y, problem.m_y, problem.n_xi
    Rd = R * delta  # r(xi) = r0 + R base + Rd b
    rb = r0 + R @ base
    rows_i, cols_k = np.nonzero(Rd)
    q = rows_i.shape[0]
    col = np.abs(W).sum(axis=0)
    # variables (b, mu, alpha, beta, p)
    n_var = pdim + m + 2 * n + q
    o_mu, o_al, o_be, o_p = pdim, pdim + m, pdim + m + n, pdim + m + 2 * n
    obj = np.zeros(n_var)
    obj[o_mu : o_mu + m] = -rb
    obj[o_al : o_al + n] = -u
    obj[o_be : o_be + n] = l
    obj[o_p:] = -Rd[rows_i, cols_k]
    I_q = sp.eye(q, format="csr")
    B = sp.csr_matrix((np.ones(q), (np.arange(q), cols_k)), shape=(q, pdim))
    Mu = sp.csr_matrix((np.ones(q), (np.arange(q), rows_i)), shape=(q, m))

    z = _zeros

    k = U.P.shape[0]
    blocks = [
        # Xi at the vertex: P (base + delta b) <= q
        (
            [sp.csr_matrix(U.P * delta), z(k, m), z(k, n), z(k, n), z(k, q)],
            np.full(k, -INF),
            U.q - U.P @ base,
        ),
        # W^T mu + alpha - beta = 0
        (
            [z(n, pdim), sp.csr_matrix(W.T), sp.eye(n), -sp.eye(n), z(n, q)],
            np.zeros(n),
            np.zeros(n),
        ),
        # p <= mu, p <= b, p >= mu + b - 1
        ([z(q, pdim), -Mu, z(q, n), z(q, n), I_q], np.full(q, -INF), np.zeros(q)),
        ([-B, z(q, m), z(q, n), z(q, n), I_q], np.full(q, -INF), np.zeros(q)),
        ([-B, -Mu, z(q, n), z(q, n), I_q], np.full(q, -1.0), np.full(q, INF)),
    ]
    A = sp.bmat([row for row, _, _ in blocks], format="csr")
    lower = np.concatenate([lo for _, lo, _ in blocks])
    upper = np.concatenate([up for _, _, up in blocks])
    lb = np.zeros(n_var)
    ub = np.concatenate([np.ones(pdim + m), col, col, np.ones(q)])
    integrality = np.zeros(n_var, dtype=bool)
    integrality[:pdim] = True
    sol = solve_milp(
        obj,
        A,
        lower,
        upper,
        lb,
        ub,
        integrality,
        maximize=True,
        time_limit=deadline.remaining(),
        solver=solver,
    )
    if sol.status not in ("optimal", "time_limit"):
        raise BilevelError(f"the feasibility MILP of the LP adversary ended with {sol.status!r}")
    bound = sol.bound if math.isfinite(sol.bound) else INF
    if sol.x is None:
        return _Search(None, -INF, bound, 1, "time_limit")
    xi = base + delta * np.round(sol.x[:pdim])
    return _Search(xi, sol.objective, max(bound, sol.objective), 1, sol.status)


def _optimality_milp(problem, x, r0, R, dual_bound) -> _KktMilp:
    """Phase 2: ``max c^T x + xi^T C x + d^T y`` over the KKT points of the recourse LP.

    Variables ``(xi, y, lambda, alpha, beta, z, z_u, z_l)``; the objective omits ``c^T x``.
    """
    U = problem.uncertainty
    W, d, l, u = problem.W, problem.d, problem.y_lb, problem.y_ub
    n, m, k, p, width, I_m, I_n, Wsp, Rsp = _lp_blocks(problem, R)
    _, slack_hi = _slack_range(problem, r0, R)
    M = np.maximum(0.0, slack_hi)
    A_bound = np.abs(d) + dual_bound * np.abs(W).sum(axis=0)
    z = _zeros

    #           xi          y            lambda       alpha       beta
    #           z           z_u          z_l
    blocks = [
        (
            [sp.csr_matrix(U.P), z(k, n), z(k, m), z(k, n), z(k, n), z(k, m), z(k, n), z(k, n)],
            np.full(k, -INF),
            U.q,
        ),
        # W y - R xi <= r0
        ([-Rsp, Wsp, z(m, m), z(m, n), z(m, n), z(m, m), z(m, n), z(m, n)], np.full(m, -INF), r0),
        # W^T lambda + alpha - beta = -d
        ([z(n, p), z(n, n), Wsp.T, I_n, -I_n, z(n, m), z(n, n), z(n, n)], -d, -d),
        # lambda <= Lambda z
        (
            [z(m, p), z(m, n), I_m, z(m, n), z(m, n), -dual_bound * I_m, z(m, n), z(m, n)],
            np.full(m, -INF),
            np.zeros(m),
        ),
        # r(xi) - W y <= M (1 - z)
        (
            [Rsp, -Wsp, z(m, m), z(m, n), z(m, n), sp.diags(M), z(m, n), z(m, n)],
            np.full(m, -INF),
            M - r0,
        ),
        # alpha <= A z_u ;  u - y <= (u - l)(1 - z_u)
        (
            [z(n, p), z(n, n), z(n, m), I_n, z(n, n), z(n, m), -sp.diags(A_bound), z(n, n)],
            np.full(n, -INF),
            np.zeros(n),
        ),
        (
            [z(n, p), -I_n, z(n, m), z(n, n), z(n, n), z(n, m), sp.diags(width), z(n, n)],
            np.full(n, -INF),
            -l,
        ),
        # beta <= A z_l ;  y - l <= (u - l)(1 - z_l)
        (
            [z(n, p), z(n, n), z(n, m), z(n, n), I_n, z(n, m), z(n, n), -sp.diags(A_bound)],
            np.full(n, -INF),
            np.zeros(n),
        ),
        (
            [z(n, p), I_n, z(n, m), z(n, n), z(n, n), z(n, m), z(n, n), sp.diags(width)],
            np.full(n, -INF),
            u,
        ),
    ]
    Cx = problem.C @ x if problem.C is not None else np.zeros(p)
    n_bin = m + 2 * n
    obj = np.concatenate([Cx, d, np.zeros(m + 2 * n + n_bin)])
    lb = np.concatenate([U.lb, l, np.zeros(m + 2 * n + n_bin)])
    ub = np.concatenate([U.ub, u, np.full(m, dual_bound), A_bound, A_bound, np.ones(n_bin)])
    return _assemble(obj, blocks, lb, ub, n_bin)


def _optimality_vertex_milp(
    problem: TwoStageRobustProblem,
    x: np.ndarray,
    r0: np.ndarray,
    R: np.ndarray,
    base: np.ndarray,
    delta: np.ndarray,
    dual_bound: float,
) -> _KktMilp:
    r"""Phase 2 over the 0/1 vertices ``xi = base + delta * b`` by LP duality.

    ``Q(x, .)`` is convex, so its maximum over ``Xi`` is at a vertex, and there ``Q`` is the
    dual LP ``max {-lambda^T r(xi) - alpha^T u + beta^T l : W^T lambda + alpha - beta = -d,
    lambda, alpha, beta >= 0}``. With ``lambda <= Lambda`` (``dual_bound``) the products
    ``p_ik = lambda_i b_k`` are linearised exactly: ``p <= lambda``, ``p <= Lambda b``,
    ``p >= lambda - Lambda (1 - b)``, ``p >= 0``; ``alpha, beta <= |d| + Lambda sum_i |W_i.|``
    as in the KKT form. Variables ``(lambda, alpha, beta, p, b)`` (binaries last); the
    objective omits ``c^T x + (C x)^T base``. A restricted dual (``Lambda`` too small) only
    under-estimates ``Q``: the same exactness condition as the KKT form.
    """
    U = problem.uncertainty
    W, d, l, u = problem.W, problem.d, problem.y_lb, problem.y_ub
    n, m, pdim = problem.n_y, problem.m_y, problem.n_xi
    Rd = R * delta
    rb = r0 + R @ base
    rows_i, cols_k = np.nonzero(Rd)
    q = rows_i.shape[0]
    A_bound = np.abs(d) + dual_bound * np.abs(W).sum(axis=0)
    Cx = problem.C @ x if problem.C is not None else np.zeros(pdim)
    obj = np.concatenate([-rb, -u, l, -Rd[rows_i, cols_k], Cx * delta])
    I_q = sp.eye(q, format="csr")
    B = sp.csr_matrix((np.ones(q), (np.arange(q), cols_k)), shape=(q, pdim))
    Lm = sp.csr_matrix((np.ones(q), (np.arange(q), rows_i)), shape=(q, m))

    z = _zeros

    k = U.P.shape[0]
    blocks = [
        (
            [z(k, m), z(k, n), z(k, n), z(k, q), sp.csr_matrix(U.P * delta)],
            np.full(k, -INF),
            U.q - U.P @ base,
        ),
        ([sp.csr_matrix(W.T), sp.eye(n), -sp.eye(n), z(n, q), z(n, pdim)], -d, -d),
        ([-Lm, z(q, n), z(q, n), I_q, z(q, pdim)], np.full(q, -INF), np.zeros(q)),
        ([z(q, m), z(q, n), z(q, n), I_q, -dual_bound * B], np.full(q, -INF), np.zeros(q)),
        ([-Lm, z(q, n), z(q, n), I_q, -dual_bound * B], np.full(q, -dual_bound), np.full(q, INF)),
    ]
    lb = np.zeros(m + 2 * n + q + pdim)
    ub = np.concatenate(
        [np.full(m, dual_bound), A_bound, A_bound, np.full(q, dual_bound), np.ones(pdim)]
    )
    return _assemble(obj, blocks, lb, ub, pdim)


def _smallest_optimal_dual(
    problem: TwoStageRobustProblem, x: np.ndarray, xi: np.ndarray, value: float, solver: str
) -> float | None:
    r"""``min max_i lambda_i`` over the optimal duals of the recourse LP at ``xi``.

    The LP ``min t`` s.t. ``W^T lambda + alpha - beta = -d``, ``0 <= lambda_i <= t``,
    ``alpha, beta >= 0`` and dual objective ``-lambda^T r - alpha^T u + beta^T l >= value -
    1e-7 max(1, |value|)`` (``value`` = the primal optimum); ``None`` if it fails.
    """
    _, W, r = problem.recourse_data(x, xi)
    l, u, d = problem.y_lb, problem.y_ub, problem.d
    n, m = problem.n_y, problem.m_y
    # variables (lambda, alpha, beta, t)
    obj = np.zeros(m + 2 * n + 1)
    obj[-1] = 1.0
    A = sp.bmat(
        [
            [sp.csr_matrix(W.T), sp.eye(n), -sp.eye(n), sp.csr_matrix((n, 1))],
            [
                sp.eye(m),
                sp.csr_matrix((m, n)),
                sp.csr_matrix((m, n)),
                sp.csr_matrix(-np.ones((m, 1))),
            ],
            [
                sp.csr_matrix(-r[None, :]),
                sp.csr_matrix(-u[None, :]),
                sp.csr_matrix(l[None, :]),
                sp.csr_matrix((1, 1)),
            ],
        ],
        format="csr",
    )
    lower = np.concatenate([-d, np.full(m, -INF), [value - 1e-7 * max(1.0, abs(value))]])
    upper = np.concatenate([-d, np.zeros(m), [INF]])
    lp = solve_milp(obj, A, lower, upper, np.zeros(m + 2 * n + 1), None, solver=solver)
    return float(lp.objective) if lp.status == "optimal" else None


def lp_worst_case(
    problem: TwoStageRobustProblem,
    x: Any,
    *,
    dual_bound: float | None = None,
    time_limit: float | None = None,
    feas_tol: float = FEAS_TOL,
    tol: float = 1e-7,
    max_rounds: int = 50,
    solver: str = "highs",
    check_dual_bound: bool = True,
) -> WorstCase:
    r"""Exact ``max_{xi in Xi} [c^T x + xi^T C x + Q(x, xi)]`` for LP recourse, rhs uncertainty.

    Two KKT MILPs (module docstring): phase 1 decides whether some scenario leaves the
    recourse infeasible (then the worst case is ``+inf``), phase 2 maximises the recourse
    value over the KKT points of the inner LP.

    Parameters
    ----------
    problem:
        A problem for which :func:`lp_worst_case_supported` returns ``None``, with finite
        recourse bounds ``y_lb``, ``y_ub``.
    x:
        The first-stage decision (checked with ``problem.check_first_stage``).
    dual_bound:
        ``Lambda``, the big-M on the multipliers of ``W y <= r(xi)`` in phase 2 (default
        :func:`default_dual_bound`). The result is exact when every scenario with a
        feasible recourse has an optimal dual with ``max_i lambda_i <= Lambda``; a
        multiplier at the bound in the solution emits
        :class:`~bilevel.errors.ConvergenceWarning` (see also ``check_dual_bound``).
    time_limit:
        Seconds for both MILPs and the evaluations (``None``: no limit). When it is
        reached the result has status ``"time_limit"``, ``cost`` the best scenario value
        found (``-inf`` if none) and ``upper_bound`` the proven bound (``inf`` if none).
    feas_tol:
        Scenarios whose least total constraint violation ``phi(xi)`` is at most
        ``feas_tol`` count as feasible (phase 1).
    tol:
        Phase 2 stops when ``MILP bound - best exact pattern value <= tol * max(1, |bound|)``.
    max_rounds:
        Most MILPs per phase (one per complementarity pattern cut off; module docstring).
        Reaching it emits :class:`~bilevel.errors.ConvergenceWarning`; the result then
        keeps the gap in ``upper_bound``.
    solver:
        ``"highs"`` or ``"scip"`` (MILPs and evaluations).
    check_dual_bound:
        Solve phase 2 again with ``10 Lambda``: a larger value there means that
        ``Lambda`` cut off a worse scenario (which the multipliers of the returned one
        cannot show); the larger result is then used, with a
        :class:`~bilevel.errors.ConvergenceWarning`. It doubles phase 2's cost and
        catches bounds off by up to a factor of ten.

    Returns
    -------
    WorstCase
        ``cost`` (exact value of the returned scenario ``xi``, recomputed by
        ``problem.second_stage_value``; ``+inf`` with the infeasible scenario when phase 1
        finds one), ``upper_bound`` the phase-2 MILP's proven bound (cost form), ``y`` an
        optimal recourse at ``xi``, ``n_iter`` the number of MILPs solved (both phases).

    Raises
    ------
    NotImplementedError
        For the combinations :func:`lp_worst_case_supported` refuses.
    ValueError
        When a recourse bound is infinite (the big-M constants need finite bounds), or
        ``dual_bound`` is not a positive finite number.
    BilevelError
        When phase 2 has no feasible point: no scenario has an optimal dual within
        ``dual_bound`` (raise it).
    """
    reason = lp_worst_case_supported(problem)
    if reason is not None:
        raise NotImplementedError(reason)
    if not (np.all(np.isfinite(problem.y_lb)) and np.all(np.isfinite(problem.y_ub))):
        raise ValueError(
            "the exact adversary for continuous recourse under constraint uncertainty needs "
            "finite bounds on the recourse variables (y_lb, y_ub): they set the big-M "
            "constants of the KKT reformulation (interval arithmetic over the box of y)"
        )
    if dual_bound is None:
        dual_bound = default_dual_bound(problem)
    dual_bound = float(dual_bound)
    if not (math.isfinite(dual_bound) and dual_bound > 0):
        raise ValueError(f"dual_bound must be a positive finite number, got {dual_bound}")
    if not (math.isfinite(feas_tol) and feas_tol > 0):
        raise ValueError(f"feas_tol must be a positive finite number, got {feas_tol}")
    x = problem.check_first_stage(x)
    x = np.where(problem.x_integer, np.round(x), x)
    deadline = Deadline(time_limit)
    U = problem.uncertainty
    p, n, m = problem.n_xi, problem.n_y, problem.m_y
    r0, R = _rhs_affine(problem, x)
    const = float(problem.c @ x)

    # Phase 1: is there a scenario without a feasible recourse?
    vertices = _binary_vertices(U)
    phi_bound = _static_violation_bound(problem, r0, R, solver)
    if phi_bound <= feas_tol:  # one recourse is feasible for every scenario
        phase1 = _Search(None, 0.0, phi_bound, 0, "optimal")
    elif vertices is not None:
        phase1 = _feasibility_vertex_milp(problem, r0, R, *vertices, deadline, solver)
    else:
        # Stop at a clear infeasibility, a proof of feasibility, or the maximiser of phi
        # (then a scenario that HiGHS still calls feasible is feasible within tolerances,
        # and so is every other one).
        phase1 = _pattern_search(
            _feasibility_milp(problem, r0, R, phi_bound),
            lambda best, bound: (
                best > 1e3 * feas_tol
                or bound <= feas_tol
                or bound - best <= tol * max(1.0, abs(bound))
            ),
            deadline,
            solver,
            max_rounds,
        )
    if phase1.x is not None and phase1.value > feas_tol:
        xi = np.clip(phase1.x[:p], U.lb, U.ub)
        sol = problem.second_stage_value(x, xi, time_limit=deadline.remaining(), solver=solver)
        if sol.status == "infeasible":
            return WorstCase.from_cost(problem, INF, xi, None, "optimal", INF, phase1.rounds)
        if vertices is None and phase1.bound - phase1.value > tol * max(1.0, abs(phase1.bound)):
            # the early stop trusted a "clear" infeasibility that HiGHS calls feasible (bad
            # scaling): search on to the maximiser of phi before concluding feasibility
            rounds_before = phase1.rounds
            phase1 = _pattern_search(
                _feasibility_milp(problem, r0, R, phi_bound),
                lambda best, bound: bound <= feas_tol or bound - best <= tol * max(1.0, abs(bound)),
                deadline,
                solver,
                max_rounds,
            )
            phase1 = _Search(
                phase1.x, phase1.value, phase1.bound, rounds_before + phase1.rounds, phase1.status
            )
            if phase1.x is not None and phase1.value > feas_tol:
                xi = np.clip(phase1.x[:p], U.lb, U.ub)
                sol = problem.second_stage_value(
                    x, xi, time_limit=deadline.remaining(), solver=solver
                )
                if sol.status == "infeasible":
                    return WorstCase.from_cost(
                        problem, INF, xi, None, "optimal", INF, phase1.rounds
                    )
    if phase1.status == "time_limit":
        return WorstCase.from_cost(
            problem, -INF, U.interior_point(), None, "time_limit", INF, phase1.rounds
        )
    if phase1.status == "max_rounds":
        warnings.warn(
            f"the feasibility phase of the KKT adversary stopped after {max_rounds} rounds "
            f"with its bound {phase1.bound:.3g} above feas_tol={feas_tol:g}: a scenario with "
            "a slightly infeasible recourse may be missed",
            ConvergenceWarning,
            stacklevel=3,
        )

    # Phase 2: maximise the recourse value (dual over the vertices, or KKT points).
    done = lambda best, bound: bound - best <= tol * max(1.0, abs(bound))
    if vertices is not None:
        base, delta = vertices
        const += float((problem.C @ x) @ base) if problem.C is not None else 0.0

    def phase_two(bound: float) -> _Search:
        if vertices is not None:
            model = _optimality_vertex_milp(problem, x, r0, R, base, delta, bound)
        else:
            model = _optimality_milp(problem, x, r0, R, bound)
        return _pattern_search(model, done, deadline, solver, max_rounds)

    phase2 = phase_two(dual_bound)
    rounds = phase1.rounds + phase2.rounds
    if check_dual_bound and phase2.status == "optimal" and phase2.x is not None:
        # a bound that cuts off a worse scenario's duals leaves no trace in the solution
        # returned (another scenario wins): compare with a ten times larger bound
        wider = phase_two(DUAL_BOUND_CHECK_FACTOR * dual_bound)
        rounds += wider.rounds
        if wider.x is not None and wider.value > phase2.value + tol * max(1.0, abs(wider.value)):
            warnings.warn(
                f"dual_bound={dual_bound:g} cut off a worse scenario of the KKT adversary "
                f"(value {const + phase2.value:.6g} within it, {const + wider.value:.6g} with "
                f"{DUAL_BOUND_CHECK_FACTOR:g} times the bound, which is used): pass a larger "
                "dual_bound to worst_case / solve_ccg",
                ConvergenceWarning,
                stacklevel=3,
            )
            phase2, dual_bound = wider, DUAL_BOUND_CHECK_FACTOR * dual_bound
    if phase2.x is None:
        if phase2.status == "exhausted":
            raise BilevelError(
                f"the KKT adversary has no feasible point with dual_bound={dual_bound:g}: no "
                "scenario has an optimal dual of the recourse LP within that bound; raise "
                "dual_bound"
            )
        upper = const + phase2.bound
        return WorstCase.from_cost(
            problem, -INF, U.interior_point(), None, "time_limit", upper, rounds
        )
    upper = const + phase2.bound
    if vertices is not None:
        xi = base + delta * np.round(phase2.x[-p:])
        lam = phase2.x[:m]
    else:
        xi = np.clip(phase2.x[:p], U.lb, U.ub)
        lam = phase2.x[p + n : p + n + m]
    if phase2.status == "max_rounds":
        warnings.warn(
            f"the KKT adversary stopped after {max_rounds} rounds with a gap of "
            f"{phase2.bound - phase2.value:.3g} between its bound and the best scenario",
            ConvergenceWarning,
            stacklevel=3,
        )
    sol = problem.second_stage_value(x, xi, time_limit=deadline.remaining(), solver=solver)
    if sol.status == "time_limit":
        return WorstCase.from_cost(problem, -INF, xi, None, "time_limit", upper, rounds)
    if sol.status == "infeasible":  # within the tolerance of phase 1: report it
        return WorstCase.from_cost(problem, INF, xi, None, "optimal", INF, rounds)
    at_bound = dual_bound * (1.0 - AT_BOUND_RTOL)
    if lam.size and float(np.max(lam)) >= at_bound:
        # Degenerate LPs (e.g. a capacity exactly equal to a demand) have optimal duals
        # on unbounded rays: the MILP may put lambda at the bound for free. Warn only when
        # no optimal dual of the scenario returned stays below the bound.
        smallest = _smallest_optimal_dual(problem, x, xi, sol.value, solver)
        if smallest is None or smallest >= at_bound:
            warnings.warn(
                f"a multiplier of the recourse constraints sits at dual_bound={dual_bound:g} "
                "in the KKT adversary: the bound may cut off the true worst case (the value "
                "returned is exact for its scenario but may be below the worst case); pass "
                "a larger dual_bound to worst_case / solve_ccg",
                ConvergenceWarning,
                stacklevel=3,
            )
    cost = problem.first_stage_cost(x, xi) + sol.value
    status = "time_limit" if phase2.status == "time_limit" else "optimal"
    return WorstCase.from_cost(problem, cost, xi, sol.y, status, max(upper, cost), rounds)

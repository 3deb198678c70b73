r"""Exact column-and-constraint generation (Zeng and Zhao 2013).

Master problem (cost form) over the scenarios ``S`` generated so far, with one copy
``y^s`` of the recourse per scenario:

.. math::

    \min_{x \in X,\ \eta,\ y^s} c^T x + \eta \quad \text{s.t.} \quad
    \eta \ge \xi_s^T C x + d(\xi_s)^T y^s,\quad
    W(\xi_s) y^s + T(\xi_s) x \le h(\xi_s),\quad y^s \in Y \ \ (s \in S).

Its optimum is a lower bound (cost form). The master's ``x`` is then evaluated *exactly* by
the adversarial problem ``max_{xi in Xi} [first-stage cost + Q(x, xi)]`` (:func:`worst_case`),
which gives an upper bound and the next scenario. The loop stops when the relative gap
``(UB - LB) / max(1, |UB|)`` is at most ``gap_tol``. Masters are solved to optimality (the
bound used is HiGHS's dual bound) and start from the incumbent with its optimal recourse in
every scenario (a MIP start).

Adversarial problems (:func:`worst_case`)
-----------------------------------------
(a) *Objective uncertainty* (``Y(x, xi) = Y(x)``). With a continuous (LP) recourse the
    inner LP is dualised, ``Q(x, xi) = max {-g^T lam : G^T lam = -d(xi), lam >= 0}``, and
    ``max_xi`` becomes one LP over ``(xi, lam)``. Otherwise ``Q(x, .)`` is the minimum of
    the affine functions ``xi -> cost(x, xi, y)`` over ``y in Y(x)``: the LP
    ``max {theta : theta <= cost(x, xi, y^j), xi in Xi}`` over the recourse columns found so
    far gives an upper bound and a candidate ``xi*``; pricing (the recourse MILP at ``xi*``)
    either proves ``Q(x, xi*) >= theta - tol`` (exact) or returns a new column.
(b) *Constraint uncertainty* (``Y`` depends on ``xi``; integer recourse with finite
    bounds). For the columns ``y^1..y^K`` found so far the separation MILP (as in
    k-adaptability, Subramanyam, Gounaris and Wiesemann 2020) maximises ``theta`` over
    ``xi in Xi`` such that each ``y^j`` either has cost ``>= theta`` or violates some
    ``xi``-dependent row by at least ``epsilon`` (binary choice per column and row, big-M
    from interval bounds over the box of ``Xi``). Pricing at ``xi*`` then either closes the
    gap or returns a new column; an infeasible recourse at ``xi*`` proves a worst case of
    ``+inf``. ``epsilon`` (default ``1e-4``) must stay above HiGHS's feasibility tolerance
    (``1e-6``; with ``epsilon = 1e-6`` the separation accepts columns that are feasible
    within tolerance and loops): scenarios where every cheaper column is violated by less
    than ``epsilon`` are not separated, which is the only approximation.

(c) *Constraint uncertainty, continuous (LP) recourse* with the uncertainty in the
    right-hand side only (``H``, ``T_xi``; no ``W_xi``, no ``D``; finite recourse bounds):
    the KKT reformulation of Zeng and Zhao (2013), two MILPs (a feasibility phase, exact,
    then an optimality phase with the big-M ``dual_bound`` on the duals; each MILP point is
    re-solved as an LP with its complementarity pattern fixed, so the solver's integrality
    tolerance cannot inflate the value; for boxes and integral budget sets the dual LP over
    the 0/1 vertices with exact McCormick products, ``n_xi`` binaries), in
    :mod:`bilevel.robust.lp_adversary`. An uncertain recourse matrix or cost, and a mixed
    integer/continuous recourse, under constraint uncertainty are not supported
    (``NotImplementedError`` saying which part).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from bilevel.errors import BilevelError, ConvergenceWarning
from bilevel.robust._highs import solve_milp
from bilevel.robust.lp_adversary import lp_worst_case, lp_worst_case_supported
from bilevel.robust.model import (
    RobustResult,
    TwoStageRobustProblem,
    UnboundedRecourseError,
    WorstCase,
)

__all__ = ["solve_ccg", "worst_case"]

INF = math.inf


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.perf_counter(), 0.0)


def _timed_out(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def _column_affine(problem: TwoStageRobustProblem, x: np.ndarray, y: np.ndarray):
    """``cost(x, xi, y) = g^T xi + g0`` for fixed ``(x, y)``."""
    g = np.zeros(problem.n_xi)
    if problem.C is not None:
        g += problem.C @ x
    if problem.D is not None:
        g += problem.D @ y
    g0 = float(problem.c @ x + problem.d @ y)
    return g, g0


def _evaluate(problem, x, xi, deadline, solver):
    """Exact total cost at ``xi`` and its recourse; ``(None, None)`` when the deadline has
    passed or is reached during the solve (``INF, None`` for an infeasible recourse)."""
    if _timed_out(deadline):
        return None, None
    sol = problem.second_stage_value(x, xi, time_limit=_remaining(deadline), solver=solver)
    if sol.status == "infeasible":
        return INF, None
    if sol.status == "time_limit":
        return None, None
    return problem.first_stage_cost(x, xi) + sol.value, sol.y


def worst_case(
    problem: TwoStageRobustProblem,
    x: Any,
    *,
    time_limit: float | None = None,
    epsilon: float = 1e-4,
    tol: float = 1e-7,
    max_iter: int = 100_000,
    solver: str = "highs",
    dual_bound: float | None = None,
) -> WorstCase:
    r"""Exact ``max_{xi in Xi} [c^T x + xi^T C x + Q(x, xi)]`` for a fixed first stage ``x``.

    See the module docstring for the algorithms. ``tol`` is the relative tolerance
    (``max(1, |value|) * tol``) on ``upper bound - value`` at which the column generation
    stops; ``epsilon`` the violation margin of the constraint-uncertainty separation;
    ``solver`` the MILP solver (``"highs"``, or ``"scip"`` when PySCIPOpt is installed);
    ``dual_bound`` the big-M on the recourse duals of the KKT adversary for continuous
    recourse under constraint uncertainty (default
    :func:`bilevel.robust.lp_adversary.default_dual_bound`; a multiplier of the returned
    scenario at the bound, or a larger value with ten times the bound, emits
    :class:`~bilevel.errors.ConvergenceWarning`; a bound off by more than ten times can go
    unnoticed; ignored by the other cases).
    """
    if epsilon < 1e-4:
        raise ValueError(
            f"epsilon={epsilon} is below 1e-4: HiGHS's feasibility tolerance (1e-6) would make "
            "the separation accept columns that are only feasible within tolerance"
        )
    x = problem.check_first_stage(x)
    x = np.where(problem.x_integer, np.round(x), x)
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    if not problem.has_constraint_uncertainty:
        if not np.any(problem.y_integer):
            return _worst_case_lp_dual(problem, x, deadline, solver)
        return _worst_case_objective(problem, x, deadline, tol, max_iter, solver)
    if not np.all(problem.y_integer):
        reason = lp_worst_case_supported(problem)
        if reason is not None:
            raise NotImplementedError(reason)
        return lp_worst_case(
            problem,
            x,
            dual_bound=dual_bound,
            time_limit=_remaining(deadline),
            tol=tol,
            solver=solver,
        )
    if not (np.all(np.isfinite(problem.y_lb)) and np.all(np.isfinite(problem.y_ub))):
        raise ValueError(
            "the exact adversary for constraint uncertainty needs finite bounds on the "
            "recourse variables (they set the big-M constants of the separation MILP)"
        )
    return _worst_case_constraint(problem, x, deadline, epsilon, tol, max_iter, solver)


def _worst_case_lp_dual(problem, x, deadline, solver) -> WorstCase:
    """(a) with LP recourse: one LP over ``(xi, lam)`` by LP duality."""
    U = problem.uncertainty
    n_xi, n_y = problem.n_xi, problem.n_y
    # Recourse polyhedron G y <= g, bounds included as rows.
    _, W, r = problem.recourse_data(x, U.lb)
    rows, rhs = [W], [r]
    finite_ub = np.isfinite(problem.y_ub)
    finite_lb = np.isfinite(problem.y_lb)
    rows.append(np.eye(n_y)[finite_ub])
    rhs.append(problem.y_ub[finite_ub])
    rows.append(-np.eye(n_y)[finite_lb])
    rhs.append(-problem.y_lb[finite_lb])
    G = np.vstack(rows)
    g = np.concatenate(rhs)
    # Feasibility of Y(x) (independent of xi here).
    feas = solve_milp(
        np.zeros(n_y), G, None, g, np.full(n_y, -INF), np.full(n_y, INF), solver=solver
    )
    if feas.status == "infeasible":
        xi0 = U.interior_point()
        return WorstCase.from_cost(problem, INF, xi0, None, "optimal", INF, 1)
    m = G.shape[0]
    D = problem.D if problem.D is not None else np.zeros((n_xi, n_y))
    Cx = problem.C @ x if problem.C is not None else np.zeros(n_xi)
    # variables (xi, lam); maximise Cx^T xi - g^T lam s.t. G^T lam + D^T xi = -d, P xi <= q
    obj = np.concatenate([Cx, -g])
    A_eq = np.hstack([D.T, G.T])
    A_xi = np.hstack([U.P, np.zeros((U.P.shape[0], m))])
    A = np.vstack([A_eq, A_xi])
    lo = np.concatenate([-problem.d, np.full(U.P.shape[0], -INF)])
    up = np.concatenate([-problem.d, U.q])
    lb = np.concatenate([U.lb, np.zeros(m)])
    ub = np.concatenate([U.ub, np.full(m, INF)])
    sol = solve_milp(
        obj, A, lo, up, lb, ub, maximize=True, time_limit=_remaining(deadline), solver=solver
    )
    if sol.status == "infeasible":
        raise UnboundedRecourseError(
            "the LP recourse is unbounded below for every scenario (its dual is infeasible)"
        )
    if sol.status == "unbounded":  # cannot happen with Y(x) nonempty and bounded Xi
        raise BilevelError("the dualised adversarial LP is unbounded")
    if sol.status != "optimal":
        xi0 = U.interior_point()
        return WorstCase.from_cost(problem, -INF, xi0, None, "time_limit", INF, 1)
    xi = np.clip(sol.x[:n_xi], U.lb, U.ub)
    value, y = _evaluate(problem, x, xi, None, solver)
    # Strong duality: the primal value at xi equals the dual LP's optimum (up to tolerances).
    ub_cost = float(problem.c @ x + sol.objective)
    return WorstCase.from_cost(problem, value, xi, y, "optimal", max(ub_cost, value), 1)


def _worst_case_objective(problem, x, deadline, tol, max_iter, solver="highs") -> WorstCase:
    """(a) with integer recourse: LP over xi with recourse columns plus pricing."""
    U = problem.uncertainty
    n_xi = problem.n_xi
    xi = U.interior_point()
    value, y = _evaluate(problem, x, xi, deadline, solver)
    if value is None:
        return WorstCase.from_cost(problem, -INF, xi, None, "time_limit", INF, 0)
    if value == INF:  # Y(x) does not depend on xi: empty for all scenarios
        return WorstCase.from_cost(problem, INF, xi, None, "optimal", INF, 1)
    best_value, best_xi, best_y = value, xi, y
    cols_g, cols_g0 = [], []
    seen: set[bytes] = set()
    n_iter = 0
    ub = INF
    while n_iter < max_iter:
        n_iter += 1
        key = np.round(y, 9).tobytes()
        if key not in seen:
            seen.add(key)
            g, g0 = _column_affine(problem, x, y)
            cols_g.append(g)
            cols_g0.append(g0)
        # max theta s.t. theta - g_j^T xi <= g0_j, P xi <= q; variables (xi, theta)
        K = len(cols_g)
        A = sp.vstack(
            [
                sp.hstack([sp.csr_matrix(-np.array(cols_g)), sp.csr_matrix(np.ones((K, 1)))]),
                sp.hstack([sp.csr_matrix(U.P), sp.csr_matrix((U.P.shape[0], 1))]),
            ]
        )
        up = np.concatenate([cols_g0, U.q])
        obj = np.zeros(n_xi + 1)
        obj[-1] = 1.0
        lb = np.concatenate([U.lb, [-INF]])
        ub_vars = np.concatenate([U.ub, [INF]])
        sol = solve_milp(
            obj,
            A,
            None,
            up,
            lb,
            ub_vars,
            maximize=True,
            time_limit=_remaining(deadline),
            solver=solver,
        )
        if sol.status != "optimal":
            return WorstCase.from_cost(
                problem, best_value, best_xi, best_y, "time_limit", ub, n_iter
            )
        theta = sol.objective
        ub = min(ub, theta)
        xi = np.clip(sol.x[:n_xi], U.lb, U.ub)
        value, y = _evaluate(problem, x, xi, deadline, solver)
        if value is None:
            return WorstCase.from_cost(
                problem, best_value, best_xi, best_y, "time_limit", ub, n_iter
            )
        if value > best_value:
            best_value, best_xi, best_y = value, xi, y
        if ub - best_value <= tol * max(1.0, abs(ub)):
            return WorstCase.from_cost(problem, best_value, best_xi, best_y, "optimal", ub, n_iter)
        if np.round(y, 9).tobytes() in seen:
            warnings.warn(
                f"objective-uncertainty adversary stalled with gap {ub - best_value:.3g} "
                "(pricing returned a known column; numerical tolerance)",
                ConvergenceWarning,
                stacklevel=3,
            )
            return WorstCase.from_cost(problem, best_value, best_xi, best_y, "optimal", ub, n_iter)
    raise BilevelError(f"objective-uncertainty adversary did not converge in {max_iter} steps")


def _interval_min(a: np.ndarray, b: float, lo: np.ndarray, hi: np.ndarray) -> float:
    return float(b + np.sum(np.minimum(a * lo, a * hi)))


def _uncertain_rows(problem) -> np.ndarray:
    rows = np.zeros(problem.m_y, dtype=bool)
    if problem.W_xi is not None:
        rows |= np.any(problem.W_xi != 0, axis=(0, 2))
    if problem.T_xi is not None:
        rows |= np.any(problem.T_xi != 0, axis=(0, 2))
    if problem.H is not None:
        rows |= np.any(problem.H != 0, axis=1)
    return np.flatnonzero(rows)


def _row_affine(problem, x, y, rows):
    """Violation ``(W(xi) y + T(xi) x - h(xi))_l = a_l^T xi + b_l`` of the given rows."""
    n_xi = problem.n_xi
    a = np.zeros((len(rows), n_xi))
    if problem.W_xi is not None:
        a += (problem.W_xi[:, rows, :] @ y).T
    if problem.T_xi is not None:
        a += (problem.T_xi[:, rows, :] @ x).T
    if problem.H is not None:
        a -= problem.H[rows, :]
    b = (problem.W @ y + problem.T @ x - problem.h)[rows]
    return a, b


def _worst_case_constraint(problem, x, deadline, epsilon, tol, max_iter, solver) -> WorstCase:
    """(b) constraint uncertainty, integer recourse: separation MILP plus pricing."""
    U = problem.uncertainty
    n_xi = problem.n_xi
    lo, hi = U.lb, U.ub
    rows = _uncertain_rows(problem)
    # theta_max: above any finite cost(x, xi, y) over the boxes of xi and y.
    ymag = np.maximum(np.abs(problem.y_lb), np.abs(problem.y_ub))
    ximag = np.maximum(np.abs(lo), np.abs(hi))
    D = problem.D if problem.D is not None else np.zeros((n_xi, problem.n_y))
    Cx = problem.C @ x if problem.C is not None else np.zeros(n_xi)
    cost_bound = (
        abs(float(problem.c @ x))
        + float(np.abs(Cx) @ ximag)
        + float(ymag @ (np.abs(problem.d) + np.abs(D).T @ ximag))
    )
    theta_max = cost_bound + 1.0

    xi = U.interior_point()
    value, y = _evaluate(problem, x, xi, deadline, solver)
    if value is None:
        return WorstCase.from_cost(problem, -INF, xi, None, "time_limit", INF, 0)
    if value == INF:
        return WorstCase.from_cost(problem, INF, xi, None, "optimal", INF, 1)
    best_value, best_xi, best_y = value, xi, y
    columns: list[tuple[np.ndarray, float, np.ndarray, np.ndarray]] = []
    seen: set[bytes] = set()
    ub = INF
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        key = np.round(y).tobytes()
        if key not in seen:
            seen.add(key)
            g, g0 = _column_affine(problem, x, y)
            a, b = _row_affine(problem, x, y, rows)
            columns.append((g, g0, a, b))
        sol = _separation_milp(U, columns, theta_max, epsilon, lo, hi, _remaining(deadline), solver)
        if sol is None:
            return WorstCase.from_cost(
                problem, best_value, best_xi, best_y, "time_limit", ub, n_iter
            )
        theta, xi = sol
        ub = min(ub, theta) if theta < theta_max - 0.5 else ub
        value, y = _evaluate(problem, x, xi, deadline, solver)
        if value is None:
            return WorstCase.from_cost(
                problem, best_value, best_xi, best_y, "time_limit", ub, n_iter
            )
        if value == INF:
            return WorstCase.from_cost(problem, INF, xi, None, "optimal", INF, n_iter)
        if value > best_value:
            best_value, best_xi, best_y = value, xi, y
        if theta < theta_max - 0.5 and theta - best_value <= tol * max(1.0, abs(theta)):
            return WorstCase.from_cost(problem, best_value, best_xi, best_y, "optimal", ub, n_iter)
        if np.round(y).tobytes() in seen:
            warnings.warn(
                "constraint-uncertainty separation returned a scenario where a known column is "
                f"optimal (gap {theta - best_value:.3g}); stopping (numerical tolerance)",
                ConvergenceWarning,
                stacklevel=3,
            )
            return WorstCase.from_cost(problem, best_value, best_xi, best_y, "optimal", ub, n_iter)
    raise BilevelError(f"constraint-uncertainty adversary did not converge in {max_iter} steps")


def _separation_milp(U, columns, theta_max, epsilon, lo, hi, time_limit, solver):
    """``max theta`` s.t. every column is epsilon-infeasible in a row or costs ``>= theta``."""
    n_xi = U.dim
    n_rows_unc = columns[0][2].shape[0]
    per_col = 1 + n_rows_unc  # z_j0 (cost) and one z per uncertain row
    K = len(columns)
    n_var = n_xi + 1 + K * per_col
    theta_idx = n_xi
    rows_i, cols_i, vals = [], [], []
    lo_r, up_r = [], []
    r = 0

    def add(entries, lower, upper):
        nonlocal r
        for j, v in entries:
            rows_i.append(r)
            cols_i.append(j)
            vals.append(v)
        lo_r.append(lower)
        up_r.append(upper)
        r += 1

    for k in range(U.P.shape[0]):
        add([(j, U.P[k, j]) for j in range(n_xi) if U.P[k, j] != 0], -INF, U.q[k])
    for jcol, (g, g0, a, b) in enumerate(columns):
        base = n_xi + 1 + jcol * per_col
        # theta - g^T xi + M0 z0 <= g0 + M0
        M0 = max(theta_max - _interval_min(g, g0, lo, hi), 0.0)
        entries = [(theta_idx, 1.0)] + [(j, -g[j]) for j in range(n_xi) if g[j] != 0]
        add(entries + [(base, M0)], -INF, g0 + M0)
        for l in range(n_rows_unc):
            # a^T xi + b >= eps - M (1 - z)  <=>  -a^T xi + M z <= b - eps + M
            M = max(epsilon - _interval_min(a[l], b[l], lo, hi), 0.0)
            entries = [(j, -a[l, j]) for j in range(n_xi) if a[l, j] != 0]
            add(entries + [(base + 1 + l, M)], -INF, b[l] - epsilon + M)
        add([(base + t, 1.0) for t in range(per_col)], 1.0, INF)
    A = sp.csr_matrix((vals, (rows_i, cols_i)), shape=(r, n_var))
    obj = np.zeros(n_var)
    obj[theta_idx] = 1.0
    lb = np.concatenate([lo, [-INF], np.zeros(K * per_col)])
    ub = np.concatenate([hi, [theta_max], np.ones(K * per_col)])
    integrality = np.concatenate([np.zeros(n_xi + 1, bool), np.ones(K * per_col, bool)])
    sol = solve_milp(
        obj,
        A,
        np.array(lo_r),
        np.array(up_r),
        lb,
        ub,
        integrality,
        maximize=True,
        time_limit=time_limit,
        solver=solver,
    )
    if sol.status != "optimal":
        if sol.status == "time_limit":
            return None
        raise BilevelError(f"separation MILP ended with status {sol.status!r}")
    xi = np.clip(sol.x[:n_xi], lo, hi)
    return float(sol.bound if math.isfinite(sol.bound) else sol.objective), xi


# --------------------------------------------------------------------------------------
# Column-and-constraint generation
# --------------------------------------------------------------------------------------


def _master(problem, scenarios, time_limit, mip_rel_gap, solver, initial=None):
    """Solve the master over the given scenarios; variables ``(x, eta, y^1, ..., y^S)``."""
    n_x, n_y, S = problem.n_x, problem.n_y, len(scenarios)
    n_var = n_x + 1 + S * n_y
    blocks_A, lo_r, up_r = [], [], []
    if problem.A.shape[0]:
        blocks_A.append(
            sp.hstack([sp.csr_matrix(problem.A), sp.csr_matrix((problem.A.shape[0], n_var - n_x))])
        )
        lo_r.append(np.full(problem.A.shape[0], -INF))
        up_r.append(problem.b)
    for s, xi in enumerate(scenarios):
        d_s, W_s, _ = problem.recourse_data(np.zeros(n_x), xi)
        T_s = problem.T if problem.T_xi is None else problem.T + np.tensordot(xi, problem.T_xi, 1)
        h_s = problem.h if problem.H is None else problem.h + problem.H @ xi
        cx = problem.C.T @ xi if problem.C is not None else np.zeros(n_x)
        left = sp.csr_matrix((1, s * n_y))
        right = sp.csr_matrix((1, (S - s - 1) * n_y))
        # xi^T C x + d_s^T y^s - eta <= 0
        blocks_A.append(
            sp.hstack(
                [
                    sp.csr_matrix(cx[None, :]),
                    sp.csr_matrix([[-1.0]]),
                    left,
                    sp.csr_matrix(d_s[None, :]),
                    right,
                ]
            )
        )
        lo_r.append([-INF])
        up_r.append([0.0])
        m = problem.m_y
        blocks_A.append(
            sp.hstack(
                [
                    sp.csr_matrix(T_s),
                    sp.csr_matrix((m, 1 + s * n_y)),
                    sp.csr_matrix(W_s),
                    sp.csr_matrix((m, (S - s - 1) * n_y)),
                ]
            )
        )
        lo_r.append(np.full(m, -INF))
        up_r.append(h_s)
    A = sp.vstack(blocks_A).tocsc()
    obj = np.concatenate([problem.c, [1.0], np.zeros(S * n_y)])
    lb = np.concatenate([problem.x_lb, [-INF], np.tile(problem.y_lb, S)])
    ub = np.concatenate([problem.x_ub, [INF], np.tile(problem.y_ub, S)])
    integrality = np.concatenate([problem.x_integer, [False], np.tile(problem.y_integer, S)])
    return solve_milp(
        obj,
        A,
        np.concatenate(lo_r),
        np.concatenate(up_r),
        lb,
        ub,
        integrality,
        time_limit=time_limit,
        mip_rel_gap=mip_rel_gap,
        solver=solver,
        initial=initial,
    )


def _master_start(problem, x, scenarios, recourse):
    """Master point ``(x, eta, y^1..y^S)`` of the incumbent ``x`` (a MIP start), or ``None``."""
    if any(y is None for y in recourse):
        return None
    costs = [
        (float(xi @ (problem.C @ x)) if problem.C is not None else 0.0)
        + float(problem.recourse_data(x, xi)[0] @ y)
        for xi, y in zip(scenarios, recourse)
    ]
    return np.concatenate([x, [max(costs)], *recourse])


def _gap(lower: float, upper: float) -> float:
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return INF
    return max(upper - lower, 0.0) / max(1.0, abs(upper))


def solve_ccg(
    problem: TwoStageRobustProblem,
    *,
    time_limit: float | None = None,
    gap_tol: float = 1e-6,
    max_iter: int = 1000,
    epsilon: float = 1e-4,
    callback: Callable[[dict[str, float]], None] | None = None,
    solver: str = "highs",
    warm_start: bool = True,
    dual_bound: float | None = None,
) -> RobustResult:
    r"""Solve ``min_x max_xi min_y`` exactly by column-and-constraint generation.

    Parameters
    ----------
    problem:
        The two-stage robust problem.
    time_limit:
        Seconds for the whole run (master problems and adversaries); ``None`` for none.
        When it is reached the result has status ``"time_limit"`` and the current gap.
    gap_tol:
        Stop when ``(UB - LB) / max(1, |UB|) <= gap_tol`` (cost form).
    max_iter:
        Maximum number of master problems.
    epsilon:
        Violation margin of the constraint-uncertainty separation (``>= 1e-4``).
    callback:
        Called after each iteration with ``{"iteration", "lower_bound", "upper_bound",
        "gap", "time"}`` (bounds in the instance's own sense).
    solver:
        MILP solver for masters and adversaries: ``"highs"`` (default) or ``"scip"``
        (optional dependency ``pyscipopt``).
    warm_start:
        Give each master the incumbent (with its optimal recourse in every scenario) as a
        MIP start (HiGHS).
    dual_bound:
        Continuous recourse under right-hand-side uncertainty only: the big-M on the
        duals of the recourse constraints in the KKT adversary
        (:mod:`bilevel.robust.lp_adversary`; default ``1e4 * max(1, ||d||_inf / w)``,
        ``w`` the smallest row scale of ``W``). Exact when every scenario has an optimal
        dual within it; a multiplier of the returned scenario at the bound, or a larger
        value with ten times the bound (phase 2 is solved twice), emits
        :class:`~bilevel.errors.ConvergenceWarning` (raise it then). A bound off by more
        than ten times can go unnoticed. Ignored otherwise.

    Returns
    -------
    RobustResult
        ``x`` the best first-stage decision found, ``objective`` its exact worst-case value
        (instance's own sense), bounds, gap and per-iteration history. ``status`` is
        ``"optimal"``, ``"time_limit"``, ``"max_iterations"``, ``"infeasible"`` (no
        first-stage decision keeps the recourse feasible in every scenario),
        ``"unbounded"`` or ``"stalled"`` (the adversary returned a known scenario before
        the gap closed: numerical tolerances; ``info["message"]`` says so). Non-optimal
        stops emit :class:`~bilevel.errors.ConvergenceWarning`.
    """
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    scenarios = [problem.uncertainty.interior_point()]
    lb_cost, ub_cost = -INF, INF
    incumbent: np.ndarray | None = None
    incumbent_wc: WorstCase | None = None
    history: dict[str, list[float]] = {
        "iteration": [],
        "lower_bound": [],
        "upper_bound": [],
        "gap": [],
        "time": [],
    }
    status = "max_iterations"
    message = ""
    n_iter = 0

    def own_bounds(lo: float, up: float) -> tuple[float, float]:
        if problem.sense == "max":
            return -up, -lo
        return lo, up

    # Masters are solved to optimality (relative MIP gap 1e-9): inexact masters (gap
    # following the CCG gap) were measured slower, their x's giving weaker scenarios.
    master_gap = 1e-9
    evaluated: dict[bytes, WorstCase] = {}
    inc_recourse: list[np.ndarray | None] = []
    while n_iter < max_iter:
        if _timed_out(deadline):
            status = "time_limit"
            break
        n_iter += 1
        start_point = None
        if warm_start and incumbent_wc is not None and len(inc_recourse) == len(scenarios):
            start_point = _master_start(problem, incumbent, scenarios, inc_recourse)
        sol = _master(problem, scenarios, _remaining(deadline), master_gap, solver, start_point)
        if sol.status == "infeasible":
            status = "infeasible"
            message = (
                "no first-stage decision is feasible with a feasible recourse in every "
                f"generated scenario ({len(scenarios)} scenarios)"
            )
            break
        if sol.status == "unbounded":
            status = "unbounded"
            message = "the master problem is unbounded: the recourse cost is unbounded below"
            break
        if sol.status == "time_limit" and sol.x is None:
            status = "time_limit"
            break
        if sol.status not in ("optimal", "time_limit"):
            raise BilevelError(f"master problem ended with status {sol.status!r}")
        lb_cost = max(lb_cost, sol.bound)
        x = sol.x[: problem.n_x].copy()
        x[problem.x_integer] = np.round(x[problem.x_integer])
        x += 0.0  # no negative zeros
        key = x.tobytes()
        repeated = key in evaluated
        if repeated:
            wc = evaluated[key]
        else:
            try:
                wc = worst_case(
                    problem,
                    x,
                    time_limit=_remaining(deadline),
                    epsilon=epsilon,
                    solver=solver,
                    dual_bound=dual_bound,
                )
            except UnboundedRecourseError as err:
                status = "unbounded"
                message = str(err)
                break
            if wc.status == "optimal":
                evaluated[key] = wc
        if wc.status == "optimal" and wc.cost < ub_cost:
            ub_cost, incumbent, incumbent_wc = wc.cost, x, wc
            if warm_start:  # recourse of the new incumbent in every scenario (MIP start)
                inc_recourse = [
                    problem.second_stage_value(x, xi_s, solver=solver).y for xi_s in scenarios
                ]
        elif incumbent is None and wc.status != "optimal":
            incumbent, incumbent_wc = x, wc
        elapsed = time.perf_counter() - start
        gap = _gap(lb_cost, ub_cost)
        lo_own, up_own = own_bounds(lb_cost, ub_cost)
        row = {
            "iteration": n_iter,
            "lower_bound": lo_own,
            "upper_bound": up_own,
            "gap": gap,
            "time": elapsed,
        }
        for k, v in row.items():
            history[k].append(v)
        if callback is not None:
            callback(row)
        if sol.status == "time_limit" or wc.status != "optimal":
            status = "time_limit"
            break
        if gap <= gap_tol:
            status = "optimal"
            break
        if repeated or any(np.allclose(wc.xi, s, atol=1e-9) for s in scenarios):
            # Cannot happen with exact masters beyond tolerances: the master's value at x
            # already covers the worst case of x.
            status = "stalled"
            message = f"the adversary returned a known scenario with gap {gap:.3g}"
            break
        scenarios.append(wc.xi)
        if warm_start and incumbent is not None:
            inc_recourse.append(
                wc.y
                if incumbent is x
                else problem.second_stage_value(incumbent, wc.xi, solver=solver).y
            )

    elapsed = time.perf_counter() - start
    if status in ("time_limit", "max_iterations", "stalled"):
        warnings.warn(
            f"CCG stopped with status {status!r}, gap {_gap(lb_cost, ub_cost):.3g}",
            ConvergenceWarning,
            stacklevel=2,
        )
    lo_own, up_own = own_bounds(lb_cost, ub_cost)
    if incumbent is not None and incumbent_wc is not None:
        exact = incumbent_wc.status == "optimal"
        info: dict[str, Any] = {
            "xi": incumbent_wc.xi,
            "y": incumbent_wc.y,
            "objective_exact": exact,
        }
        if exact:
            objective = incumbent_wc.objective
        else:  # the time ran out while evaluating the only candidate: bounds, no value
            objective = math.nan
            info["objective_bounds"] = own_bounds(incumbent_wc.cost, incumbent_wc.upper_bound)
    else:
        objective = math.nan
        info = {}
    if status in ("infeasible", "unbounded"):
        incumbent, objective = None, math.nan
    info.update(n_scenarios=len(scenarios), message=message, cost_bounds=(lb_cost, ub_cost))
    return RobustResult(
        x=incumbent,
        objective=float(objective),
        status=status,
        lower_bound=lo_own,
        upper_bound=up_own,
        gap=_gap(lb_cost, ub_cost),
        n_iter=n_iter,
        time=elapsed,
        history=history,
        info=info,
        method="exact",
    )

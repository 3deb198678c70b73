r"""Exact adversarial problems: the worst case of a fixed first-stage decision.

:func:`worst_case` computes ``max_{xi in Xi} [c^T x + xi^T C x + Q(x, xi)]`` exactly for a
fixed ``x`` (cost form, see :mod:`bilevel.robust.model`); column-and-constraint generation
(:mod:`bilevel.robust.ccg`) calls it for the upper bound and the next scenario, and every
heuristic's returned decision is evaluated by it.

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
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from bilevel.errors import BilevelError, ConvergenceWarning
from bilevel.robust._deadline import Deadline
from bilevel.robust._milp import solve_milp
from bilevel.robust.lp_adversary import lp_worst_case, lp_worst_case_supported
from bilevel.robust.model import TwoStageRobustProblem, UnboundedRecourseError, WorstCase

__all__ = ["worst_case"]

INF = math.inf


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
    if deadline.expired():
        return None, None
    sol = problem.second_stage_value(x, xi, time_limit=deadline.remaining(), solver=solver)
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
    deadline = Deadline(time_limit)
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
            time_limit=deadline.remaining(),
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
        obj, A, lo, up, lb, ub, maximize=True, time_limit=deadline.remaining(), solver=solver
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
    value, y = _evaluate(problem, x, xi, Deadline(), solver)
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
            time_limit=deadline.remaining(),
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
        sol = _separation_milp(U, columns, theta_max, epsilon, lo, hi, deadline.remaining(), solver)
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

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

The adversarial problems and their algorithms are in :mod:`bilevel.robust.adversary`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from bilevel.errors import BilevelError
from bilevel.robust._deadline import Deadline
from bilevel.robust._milp import solve_milp
from bilevel.robust.adversary import worst_case
from bilevel.robust.model import (
    RobustResult,
    TwoStageRobustProblem,
    UnboundedRecourseError,
    WorstCase,
    cost_gap,
    own_bounds,
)

__all__ = ["solve_ccg"]

INF = math.inf
HISTORY_KEYS = ("iteration", "lower_bound", "upper_bound", "gap", "time")


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
    initial_x: Any = None,
    progress: bool = False,
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
    initial_x:
        A first-stage decision to start from (e.g. Neur2RO's): it is evaluated exactly
        first, becomes the incumbent (its worst-case cost the first upper bound) and its
        worst-case scenario joins the first master. Must lie in ``X``.
    progress:
        A tqdm bar (stderr, rate and ETA against ``max_iter``) over the iterations, with the
        current bounds; it appears after 2 s.

    Returns
    -------
    RobustResult
        ``x`` the best first-stage decision found, ``objective`` its exact worst-case value
        (instance's own sense), ``xi``/``y`` its worst-case scenario and recourse there,
        bounds, gap and per-iteration history. ``status`` is
        ``"optimal"``, ``"time_limit"``, ``"max_iterations"``, ``"infeasible"`` (no
        first-stage decision keeps the recourse feasible in every scenario),
        ``"unbounded"`` or ``"stalled"`` (the adversary returned a known scenario before
        the gap closed: numerical tolerances; ``info["message"]`` says so). Non-optimal
        stops emit :class:`~bilevel.errors.ConvergenceWarning`.
    """
    deadline = Deadline(time_limit)
    scenarios = [problem.uncertainty.interior_point()]
    lb_cost, ub_cost = -INF, INF
    incumbent: np.ndarray | None = None
    incumbent_wc: WorstCase | None = None
    history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
    status = "max_iterations"
    message = ""
    n_iter = 0
    bar = _progress_bar(progress, max_iter)

    # Masters are solved to optimality (relative MIP gap 1e-9): inexact masters (gap
    # following the CCG gap) were measured slower, their x's giving weaker scenarios.
    master_gap = 1e-9
    evaluated: dict[bytes, WorstCase] = {}
    inc_recourse: list[np.ndarray | None] = []
    if initial_x is not None:  # a warm start: the given decision's exact worst case first
        x0 = problem.check_first_stage(initial_x)
        x0 = np.where(problem.x_integer, np.round(x0), x0) + 0.0
        wc0 = worst_case(
            problem,
            x0,
            time_limit=deadline.remaining(),
            epsilon=epsilon,
            solver=solver,
            dual_bound=dual_bound,
        )
        if wc0.status == "optimal":
            evaluated[x0.tobytes()] = wc0
            scenarios.append(wc0.xi)  # cuts x0 off when its recourse is infeasible there
            if math.isfinite(wc0.cost):
                incumbent, incumbent_wc, ub_cost = x0, wc0, wc0.cost
                if warm_start:
                    inc_recourse = [
                        problem.second_stage_value(x0, xi_s, solver=solver).y for xi_s in scenarios
                    ]
    while n_iter < max_iter:
        if deadline.expired():
            status = "time_limit"
            break
        n_iter += 1
        start_point = None
        if warm_start and incumbent_wc is not None and len(inc_recourse) == len(scenarios):
            start_point = _master_start(problem, incumbent, scenarios, inc_recourse)
        sol = _master(problem, scenarios, deadline.remaining(), master_gap, solver, start_point)
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
                    time_limit=deadline.remaining(),
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
        gap = cost_gap(lb_cost, ub_cost)
        lo_own, up_own = own_bounds(lb_cost, ub_cost, problem.sense)
        row = {
            "iteration": n_iter,
            "lower_bound": lo_own,
            "upper_bound": up_own,
            "gap": gap,
            "time": deadline.elapsed(),
        }
        for k, v in row.items():
            history[k].append(v)
        if bar is not None:
            bar.set_postfix_str(f"LB {lo_own:.6g} UB {up_own:.6g} gap {gap:.2e}", refresh=False)
            bar.update(1)
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
    if bar is not None:
        bar.close()
    if status in ("infeasible", "unbounded"):
        incumbent = None
    return RobustResult.from_cost_bounds(
        lb_cost,
        ub_cost,
        problem.sense,
        x=incumbent,
        worst=incumbent_wc,
        status=status,
        n_iter=n_iter,
        time=deadline.elapsed(),
        history=history,
        info={"n_scenarios": len(scenarios), "message": message, "cost_bounds": (lb_cost, ub_cost)},
        method="exact",
        warning=f"CCG stopped with status {status!r}, gap {cost_gap(lb_cost, ub_cost):.3g}",
    )


def _progress_bar(progress: bool, total: int):
    """A tqdm bar on stderr over CCG iterations (``None`` when ``progress`` is false)."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="CCG", unit="it", leave=False, delay=2.0)

"""One entry point to the LP/MILP solvers of :mod:`bilevel.robust`: HiGHS, or SCIP (optional).

:func:`solve_milp` solves ``min/max c^T z`` subject to ``row_lower <= A z <= row_upper``,
``lb <= z <= ub`` and ``z_j`` integer where ``integrality[j]``; it returns a
:class:`MilpSolution` with a plain status string instead of solver enums. The backends
(:mod:`bilevel.robust._highs`, :mod:`bilevel.robust._scip`) are leaves: they take the
normalised arrays and return ``(status, x, objective, bound)``; both separate "infeasible"
from "unbounded" when the solver only says "infeasible or unbounded".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bilevel.robust import _highs, _scip

__all__ = ["SOLVERS", "MilpSolution", "solve_milp"]

INF = math.inf
SOLVERS = ("highs", "scip")


@dataclass
class MilpSolution:
    """Outcome of :func:`solve_milp`.

    Attributes
    ----------
    status:
        ``"optimal"``, ``"infeasible"``, ``"unbounded"``, ``"time_limit"`` or ``"error"``.
    x:
        The best solution found (``None`` when there is none).
    objective:
        ``c^T x`` of that solution (``nan`` when there is none).
    bound:
        The best proven bound on the optimum (dual bound; equal to ``objective`` for an LP
        solved to optimality).
    """

    status: str
    x: np.ndarray | None
    objective: float
    bound: float


def solve_milp(
    c: np.ndarray,
    A: np.ndarray | sp.spmatrix | None = None,
    row_lower: np.ndarray | None = None,
    row_upper: np.ndarray | None = None,
    lb: np.ndarray | None = None,
    ub: np.ndarray | None = None,
    integrality: np.ndarray | None = None,
    *,
    maximize: bool = False,
    time_limit: float | None = None,
    mip_rel_gap: float = 1e-9,
    mip_abs_gap: float = 1e-9,
    solver: str = "highs",
    initial: np.ndarray | None = None,
) -> MilpSolution:
    """Solve ``min`` (or ``max``) ``c^T z`` s.t. ``row_lower <= A z <= row_upper``, bounds.

    Parameters
    ----------
    c:
        Objective vector, shape ``(n,)``.
    A, row_lower, row_upper:
        Constraint matrix ``(m, n)`` (dense or scipy sparse) and row bounds (``-inf`` /
        ``inf`` for one-sided rows). ``A=None`` means no rows.
    lb, ub:
        Variable bounds (default ``0`` and ``inf``).
    integrality:
        Boolean mask of integer variables (default: none, an LP).
    maximize:
        Maximise instead of minimise.
    time_limit:
        Seconds; ``None`` for no limit (values below ``1e-3`` are raised to ``1e-3``: the
        solvers refuse zero).
    mip_rel_gap, mip_abs_gap:
        MIP termination gaps (tight by default: the callers need exact optima).
    solver:
        ``"highs"`` (default, ``highspy``) or ``"scip"`` (optional, ``pyscipopt``).
    initial:
        A feasible point given to the MIP solver as a starting incumbent (HiGHS only).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    c = np.asarray(c, dtype=float)
    n = c.shape[0]
    lb = np.zeros(n) if lb is None else np.asarray(lb, dtype=float)
    ub = np.full(n, INF) if ub is None else np.asarray(ub, dtype=float)
    if A is None:
        A = sp.csc_matrix((0, n))
        row_lower = np.zeros(0)
        row_upper = np.zeros(0)
    A = sp.csc_matrix(A)
    m = A.shape[0]
    row_lower = np.full(m, -INF) if row_lower is None else np.asarray(row_lower, dtype=float)
    row_upper = np.full(m, INF) if row_upper is None else np.asarray(row_upper, dtype=float)
    integer = None if integrality is None else np.asarray(integrality, dtype=bool)
    limit = None if time_limit is None else max(float(time_limit), 1e-3)
    backend = _highs.solve_milp_highs if solver == "highs" else _scip.solve_milp_scip
    status, x, objective, bound = backend(
        c,
        A,
        row_lower,
        row_upper,
        lb,
        ub,
        integer,
        maximize=maximize,
        time_limit=limit,
        mip_rel_gap=float(mip_rel_gap),
        mip_abs_gap=float(mip_abs_gap),
        initial=initial,
    )
    return MilpSolution(status=status, x=x, objective=objective, bound=bound)

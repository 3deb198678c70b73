"""SCIP (``pyscipopt``) backend of :func:`bilevel.robust._milp.solve_milp` (optional)."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

__all__ = ["solve_milp_scip"]


def solve_milp_scip(
    c: np.ndarray,
    A: sp.csr_matrix,
    row_lower: np.ndarray,
    row_upper: np.ndarray,
    lb: np.ndarray,
    ub: np.ndarray,
    integrality: np.ndarray | None,
    *,
    maximize: bool,
    time_limit: float | None,
    mip_rel_gap: float,
    mip_abs_gap: float,
    initial: np.ndarray | None = None,
) -> tuple[str, np.ndarray | None, float, float]:
    """Same contract as :func:`~bilevel.robust._highs.solve_milp_highs`, solved by SCIP
    (``initial`` is ignored)."""
    try:
        import pyscipopt
    except ImportError as err:
        raise ImportError(
            "solver='scip' needs PySCIPOpt: pip install 'bilevel[scip]' (pyscipopt)"
        ) from err
    n = c.shape[0]
    model = pyscipopt.Model()
    model.hideOutput()
    integer = np.zeros(n, bool) if integrality is None else np.asarray(integrality, bool)
    xs = [
        model.addVar(
            vtype="I" if integer[j] else "C",
            lb=None if math.isinf(lb[j]) else float(lb[j]),
            ub=None if math.isinf(ub[j]) else float(ub[j]),
        )
        for j in range(n)
    ]
    A = sp.csr_matrix(A)
    for i in range(A.shape[0]):
        start, end = A.indptr[i], A.indptr[i + 1]
        if start == end:  # empty row: 0 must lie in [lower, upper]
            if row_lower[i] > 0 or row_upper[i] < 0:
                return "infeasible", None, math.nan, math.nan
            continue
        expr = pyscipopt.quicksum(
            float(v) * xs[j] for j, v in zip(A.indices[start:end], A.data[start:end])
        )
        if not math.isinf(row_lower[i]):
            model.addCons(expr >= float(row_lower[i]))
        if not math.isinf(row_upper[i]):
            model.addCons(expr <= float(row_upper[i]))
    model.setObjective(
        pyscipopt.quicksum(float(c[j]) * xs[j] for j in range(n) if c[j] != 0),
        sense="maximize" if maximize else "minimize",
    )
    model.setParam("limits/gap", float(mip_rel_gap))
    model.setParam("limits/absgap", float(mip_abs_gap))
    if time_limit is not None:
        model.setParam("limits/time", float(time_limit))
    model.optimize()
    status = model.getStatus()
    if status == "inforunbd":
        # Decide with a feasibility problem (zero objective).
        return _disambiguate(c, A, row_lower, row_upper, lb, ub, integrality, time_limit)
    name = {
        "optimal": "optimal",
        "gaplimit": "optimal",
        "infeasible": "infeasible",
        "unbounded": "unbounded",
        "timelimit": "time_limit",
        "userinterrupt": "time_limit",
    }.get(status, "error")
    x, objective = None, math.nan
    if name in ("optimal", "time_limit") and model.getNSols() > 0:
        sol = model.getBestSol()
        x = np.array([model.getSolVal(sol, v) for v in xs])
        objective = float(c @ x)
    if name == "optimal" and x is None:
        name = "error"
    bound = float(model.getDualbound()) if name in ("optimal", "time_limit") else math.nan
    return name, x, objective, bound


def _disambiguate(c, A, row_lower, row_upper, lb, ub, integrality, time_limit):
    feas = solve_milp_scip(
        np.zeros_like(c),
        A,
        row_lower,
        row_upper,
        lb,
        ub,
        integrality,
        maximize=False,
        time_limit=time_limit,
        mip_rel_gap=0.0,
        mip_abs_gap=0.0,
    )
    status = "unbounded" if feas[0] == "optimal" else feas[0]
    return status, None, math.nan, math.nan

"""HiGHS (``highspy``) backend of :func:`bilevel.robust._milp.solve_milp`, and the one place
where :mod:`bilevel.robust` creates a ``highspy.Highs`` object (:func:`new_highs`: silent,
banner included)."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import scipy.sparse as sp

__all__ = ["new_highs", "solve_milp_highs"]

_BANNER_SILENCED = False


def _highspy():
    try:
        import highspy
    except ImportError as err:  # pragma: no cover - highspy is a dependency of the extra
        raise ImportError(
            "bilevel.robust needs HiGHS: pip install 'bilevel[robust]' (highspy)"
        ) from err
    return highspy


def new_highs():
    """A ``highspy.Highs`` with ``output_flag`` off.

    HiGHS prints its copyright banner on the process's first ``Highs()``, from C++ to file
    descriptor 1, before any option can be set; that first construction runs with fd 1
    pointed at ``/dev/null`` (the banner is written once per process, so later ones are
    silent by themselves).
    """
    global _BANNER_SILENCED
    highspy = _highspy()
    if _BANNER_SILENCED:
        h = highspy.Highs()
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _BANNER_SILENCED = True
    h.setOptionValue("output_flag", False)
    return h


def solve_milp_highs(
    c: np.ndarray,
    A: sp.csc_matrix,
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
    """Normalised problem (see :func:`~bilevel.robust._milp.solve_milp`) ->
    ``(status, x, objective, bound)``."""
    highspy = _highspy()
    n, m = c.shape[0], A.shape[0]
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = m
    lp.col_cost_ = c
    lp.col_lower_ = np.where(np.isneginf(lb), -highspy.kHighsInf, lb)
    lp.col_upper_ = np.where(np.isposinf(ub), highspy.kHighsInf, ub)
    lp.row_lower_ = np.where(np.isneginf(row_lower), -highspy.kHighsInf, row_lower)
    lp.row_upper_ = np.where(np.isposinf(row_upper), highspy.kHighsInf, row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data.astype(float)
    lp.a_matrix_.num_col_ = n
    lp.a_matrix_.num_row_ = m
    is_mip = integrality is not None and bool(np.any(integrality))
    if integrality is not None and is_mip:
        lp.integrality_ = [
            highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous
            for flag in integrality
        ]
    lp.sense_ = highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize

    h = new_highs()
    h.setOptionValue("mip_rel_gap", mip_rel_gap)
    h.setOptionValue("mip_abs_gap", mip_abs_gap)
    h.setOptionValue("allow_unbounded_or_infeasible", False)
    if time_limit is not None:
        h.setOptionValue("time_limit", time_limit)
    h.passModel(lp)
    if initial is not None and is_mip:
        start = highspy.HighsSolution()
        start.col_value = np.asarray(initial, dtype=float).tolist()
        start.value_valid = True
        h.setSolution(start)
    h.run()
    status = h.getModelStatus()
    S = highspy.HighsModelStatus
    info = h.getInfo()
    has_solution = info.primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value, dtype=float) if has_solution else None
    objective = float(info.objective_function_value) if has_solution else math.nan
    bound = float(info.mip_dual_bound) if is_mip else objective
    if status == S.kOptimal:
        name = "optimal"
    elif status == S.kInfeasible:
        name = "infeasible"
    elif status == S.kUnbounded:
        name = "unbounded"
    elif status == S.kUnboundedOrInfeasible:
        # Decide with a feasibility problem (zero objective).
        feas = solve_milp_highs(
            np.zeros(n),
            A,
            row_lower,
            row_upper,
            lb,
            ub,
            integrality,
            maximize=False,
            time_limit=time_limit,
            mip_rel_gap=1e-9,
            mip_abs_gap=1e-9,
        )
        name = "unbounded" if feas[0] == "optimal" else feas[0]
    elif status in (S.kTimeLimit, S.kInterrupt, S.kIterationLimit, S.kSolutionLimit):
        name = "time_limit"
    else:
        name = "error"
    if name != "optimal" and name != "time_limit":
        x, objective = None, math.nan
    return name, x, objective, bound

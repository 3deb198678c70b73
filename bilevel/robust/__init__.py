"""Two-stage robust optimization (min-max-min): column-and-constraint generation and Neur2RO.

``min_{x in X} max_{xi in Xi} min_{y in Y(x, xi)} c(xi)^T x + d(xi)^T y`` with integer or
continuous ``x`` and ``y`` and a polytope ``Xi``; see :mod:`bilevel.robust.model` for the
model and its API, :mod:`bilevel.robust.adversary` for the exact worst case of a decision,
:mod:`bilevel.robust.ccg` for the exact method and :mod:`bilevel.robust.neur2ro` for the
learned one. Layers, bottom up: ``_deadline``, ``_highs``/``_scip`` (leaf MILP backends),
``_milp`` (dispatch), ``model``, ``lp_adversary``, ``adversary``, ``ccg``, ``neur2ro``.
"""

from __future__ import annotations

from typing import Any

from bilevel.robust.adversary import worst_case
from bilevel.robust.ccg import solve_ccg
from bilevel.robust.datasets import (
    PublishedResult,
    load_published_knapsack,
    published_knapsack_names,
    published_knapsack_result,
)
from bilevel.robust.enumeration import brute_force
from bilevel.robust.generators import (
    KNAPSACK_TYPES,
    generate_capital_budgeting,
    generate_knapsack,
)
from bilevel.robust.instances import (
    InstanceFormatError,
    load_instance,
    read_instance,
    read_knapsack_instance,
    write_instance,
)
from bilevel.robust.model import (
    RobustResult,
    SecondStageSolution,
    TwoStageRobustProblem,
    UnboundedRecourseError,
    UncertaintySet,
    WorstCase,
)
from bilevel.robust.problems import capital_budgeting_problem, knapsack_problem

__all__ = [
    "KNAPSACK_TYPES",
    "METHODS",
    "InstanceFormatError",
    "PublishedResult",
    "RobustResult",
    "SecondStageSolution",
    "TwoStageRobustProblem",
    "UnboundedRecourseError",
    "UncertaintySet",
    "WorstCase",
    "brute_force",
    "capital_budgeting_problem",
    "generate_capital_budgeting",
    "generate_knapsack",
    "knapsack_problem",
    "load_instance",
    "load_published_knapsack",
    "published_knapsack_names",
    "published_knapsack_result",
    "read_instance",
    "read_knapsack_instance",
    "solve",
    "solve_ccg",
    "worst_case",
    "write_instance",
]

METHODS = ("exact", "neur2ro")


def solve(problem: TwoStageRobustProblem, method: str = "exact", **options: Any) -> RobustResult:
    """Solve a two-stage robust problem.

    Parameters
    ----------
    problem:
        The problem (:class:`TwoStageRobustProblem`).
    method:
        ``"exact"``: column-and-constraint generation (:func:`bilevel.robust.ccg.solve_ccg`;
        options ``time_limit``, ``gap_tol``, ``max_iter``, ``epsilon``, ``callback``,
        ``solver`` (``"highs"`` or ``"scip"``), ``warm_start``, ``initial_x``, ``progress``,
        and ``dual_bound`` for a
        continuous recourse under constraint uncertainty, see
        :mod:`bilevel.robust.lp_adversary`).
        ``"neur2ro"``: the learned method of :mod:`bilevel.robust.neur2ro` (options: see
        ``solve_neur2ro``).

    Returns
    -------
    RobustResult
        ``.x`` the first-stage decision and ``.objective`` its exact worst-case value in the
        instance's own sense (profit for the knapsack).
    """
    if not isinstance(problem, TwoStageRobustProblem):
        raise TypeError(f"problem must be a TwoStageRobustProblem, got {type(problem).__name__}")
    if method == "exact":
        return solve_ccg(problem, **options)
    if method == "neur2ro":
        from bilevel.robust.neur2ro import solve_neur2ro

        return solve_neur2ro(problem, **options)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")

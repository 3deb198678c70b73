"""Exact CCG and the adversarial problems of bilevel.robust.

Oracle: brute force (bilevel.robust.enumeration), which enumerates every first-stage decision
and every recourse decision and solves only the maximisation over xi with scipy's LP/MILP,
independently of the CCG master, the column generation and the HiGHS wrapper.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from bilevel.errors import ConvergenceWarning
from bilevel.robust import (
    RobustResult,
    TwoStageRobustProblem,
    UnboundedRecourseError,
    UncertaintySet,
    brute_force,
    generate_capital_budgeting,
    generate_knapsack,
    solve,
    worst_case,
)
from bilevel.robust._deadline import Deadline
from bilevel.robust.adversary import _worst_case_objective
from bilevel.robust.enumeration import brute_force_worst_case


def _check_against_brute_force(problem):
    result = solve(problem)
    oracle = brute_force(problem)
    assert isinstance(result, RobustResult)
    assert result.status == "optimal"
    scale = max(1.0, abs(oracle.objective))
    assert result.objective == pytest.approx(oracle.objective, abs=1e-6 * scale)
    # The returned x is optimal: its brute-force worst case equals the optimum.
    own = problem.to_objective(oracle.values[tuple(result.x)])
    assert own == pytest.approx(oracle.objective, abs=1e-6 * scale)
    # Bounds bracket the optimum and the history is consistent.
    assert result.lower_bound <= oracle.objective + 1e-6 * scale
    assert result.upper_bound >= oracle.objective - 1e-6 * scale
    assert result.gap <= 1e-6
    assert len(result.history["gap"]) == result.n_iter
    assert result.method == "exact"
    return result, oracle


@pytest.mark.parametrize("correlation", ["UN", "WC", "ASC", "SC"])
def test_knapsack_ccg_equals_brute_force(correlation):
    for seed, (n, dev) in enumerate([(6, 0.3), (5, 0.4)]):
        p = generate_knapsack(n, correlation, dev=dev, delta=1.0 if seed else 0.5, seed=seed)
        _check_against_brute_force(p)


def test_knapsack_tight_capacity_needs_several_iterations():
    # Low capacity ratio: the worst case changes the recourse; CCG needs > 1 scenario.
    iterations = []
    for seed in range(2):
        p = generate_knapsack(5, "ASC", dev=0.5, delta=1.0, h=40, seed=10 + seed)
        result, oracle = _check_against_brute_force(p)
        iterations.append(result.n_iter)
        # Without the incumbent MIP start: same optimum.
        cold = solve(p, warm_start=False)
        assert cold.status == "optimal"
        assert cold.objective == pytest.approx(oracle.objective, rel=1e-9)
    assert max(iterations) > 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_capital_budgeting_ccg_equals_brute_force(seed):
    """Constraint uncertainty: the separation MILP path."""
    p = generate_capital_budgeting(4, seed=seed)
    _result, oracle = _check_against_brute_force(p)
    # Some first-stage decisions are not robustly feasible (worst case +inf).
    assert any(math.isinf(v) for v in oracle.values.values())


def test_worst_case_of_fixed_decisions_matches_brute_force():
    rng = np.random.default_rng(0)
    for p in (generate_knapsack(6, "WC", dev=0.5, seed=3), generate_capital_budgeting(5, seed=7)):
        for _ in range(3):
            x = rng.integers(0, 2, p.n_x).astype(float)
            wc = worst_case(p, x)
            ref = brute_force_worst_case(p, x)
            if math.isinf(ref):
                assert math.isinf(wc.cost)
                continue
            assert wc.status == "optimal"
            assert wc.cost == pytest.approx(ref, abs=1e-6 * max(1, abs(ref)))
            # The reported scenario attains the value.
            assert p.uncertainty.contains(wc.xi)
            assert p.total_cost(x, wc.xi) == pytest.approx(wc.cost, abs=1e-6 * max(1, abs(ref)))
            assert wc.objective == pytest.approx(p.to_objective(wc.cost))


def _lp_recourse_problem(seed):
    """Objective uncertainty with continuous recourse: transport-like LP second stage."""
    rng = np.random.default_rng(seed)
    n_x, n_y, n_xi = 3, 4, 3
    W = np.vstack([-np.ones((1, n_y)), np.eye(n_y)])
    T = np.vstack([-np.ones((1, n_x)), np.zeros((n_y, n_x))])
    return TwoStageRobustProblem(
        c=rng.uniform(1, 2, n_x),
        x_types="B" * n_x,
        uncertainty=UncertaintySet.budget(n_xi, 1.5),
        d=rng.uniform(1, 3, n_y),
        D=rng.uniform(0, 2, (n_xi, n_y)),
        y_types="C" * n_y,
        # demand 2.5 covered by first stage (x_i units) plus recourse y <= 1.5 each
        W=W,
        T=T,
        h=np.concatenate([[-2.5], np.full(n_y, 1.5)]),
    )


def test_lp_recourse_duality_matches_column_generation():
    for seed in range(3):
        p = _lp_recourse_problem(seed)
        for x in ([0, 0, 0], [1, 0, 1], [1, 1, 1]):
            x = np.array(x, dtype=float)
            dual = worst_case(p, x)
            colgen = _worst_case_objective(p, x, Deadline(), 1e-9, 10_000)
            assert dual.cost == pytest.approx(colgen.cost, rel=1e-7)
            assert p.total_cost(x, dual.xi) == pytest.approx(dual.cost, rel=1e-7)
        result = solve(p)
        assert result.status == "optimal"
        # Optimal over all 8 first-stage decisions evaluated by column generation.
        values = [
            _worst_case_objective(p, np.array(b, float), Deadline(), 1e-9, 10_000).cost
            for b in np.ndindex(2, 2, 2)
        ]
        assert result.objective == pytest.approx(min(values), rel=1e-7)


def test_infeasible_first_stage():
    U = UncertaintySet.box([0.0], [1.0])
    p = TwoStageRobustProblem(
        c=[1.0, 1.0],
        x_types="BB",
        A=[[1.0, 1.0]],
        b=[-1.0],
        uncertainty=U,
        d=[1.0],
        y_types="B",
        W=[[1.0]],
        T=[[0.0, 0.0]],
        h=[1.0],
    )
    result = solve(p)
    assert result.status == "infeasible" and result.x is None and math.isnan(result.objective)
    assert "no first-stage decision" in result.info["message"]


def test_no_robustly_feasible_first_stage():
    # y <= xi - 0.5 - x with y >= 0: infeasible for xi < 0.5 whatever x.
    U = UncertaintySet.box([0.0], [1.0])
    p = TwoStageRobustProblem(
        c=[1.0],
        x_types="B",
        uncertainty=U,
        d=[1.0],
        y_types="B",
        W=[[1.0]],
        T=[[1.0]],
        h=[-0.5],
        H=[[1.0]],
    )
    assert math.isinf(worst_case(p, [0.0]).cost)
    result = solve(p)
    assert result.status == "infeasible"


@pytest.mark.parametrize("y_type", ["C", "I"])
def test_unbounded_recourse(y_type):
    U = UncertaintySet.budget(2, 1.0)
    p = TwoStageRobustProblem(
        c=[1.0],
        x_types="B",
        uncertainty=U,
        d=[-1.0],
        D=[[0.5], [0.25]],
        y_types=y_type,
        y_ub=[math.inf],
        W=[[-1.0]],
        T=[[0.0]],
        h=[0.0],
    )
    with pytest.raises(UnboundedRecourseError):
        worst_case(p, [1.0])
    result = solve(p)
    assert result.status == "unbounded" and result.x is None


def test_time_limit_reports_status_and_gap():
    p = generate_knapsack(14, "ASC", dev=0.3, delta=1.0, seed=5)
    with pytest.warns(ConvergenceWarning, match="time_limit"):
        result = solve(p, time_limit=0.3)
    assert result.status == "time_limit"
    assert result.time < 5.0
    if result.x is not None and result.info.get("objective_exact"):
        assert result.objective == pytest.approx(p.to_objective(worst_case(p, result.x).cost))


def test_epsilon_below_highs_tolerance_is_refused():
    p = generate_capital_budgeting(3, seed=0)
    with pytest.raises(ValueError, match="1e-4"):
        worst_case(p, np.zeros(3), epsilon=1e-6)


def test_solve_dispatch_errors():
    p = generate_knapsack(3, "UN", seed=0)
    with pytest.raises(ValueError, match="unknown method"):
        solve(p, method="heuristic")
    with pytest.raises(TypeError):
        solve("not a problem")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solve(p).status == "optimal"


def test_scip_backend_matches_brute_force():
    pytest.importorskip("pyscipopt")
    for p in (
        generate_knapsack(5, "ASC", dev=0.5, delta=1.0, seed=1),
        generate_capital_budgeting(4, seed=1),
    ):
        result = solve(p, solver="scip")
        oracle = brute_force(p)
        assert result.status == "optimal"
        assert result.objective == pytest.approx(oracle.objective, rel=1e-6)


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(generate_knapsack(3, "UN", seed=0), solver="cplex")


def test_neur2ro_dispatch_is_lazy_and_passes_options(monkeypatch):
    import bilevel.robust.neur2ro as neur2ro_module

    calls = []

    def fake(problem, **options):
        calls.append((problem, options))
        return "sentinel"

    monkeypatch.setattr(neur2ro_module, "solve_neur2ro", fake)
    p = generate_knapsack(3, "UN", seed=0)
    assert solve(p, method="neur2ro", n_first_stage=7) == "sentinel"
    assert calls == [(p, {"n_first_stage": 7})]

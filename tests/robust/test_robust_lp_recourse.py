"""Continuous (LP) recourse under right-hand-side uncertainty: the KKT adversary.

Oracle: for a fixed ``x`` the recourse value ``Q(x, .)`` is convex in ``xi`` (an LP value is
convex in its right-hand side, which is affine in ``xi``; ``xi^T C x`` is linear), so the
worst case over a polytope is attained at a vertex. For boxes and budget sets with an
integer budget in ``[0, 1]^n`` (vertices: the 0/1 vectors with at most ``Gamma`` ones) the
tests enumerate every vertex and solve each LP with :func:`scipy.optimize.linprog` (not the
HiGHS wrapper of :mod:`bilevel.robust`); whole problems are checked against brute force
over every binary ``x`` with the same vertex oracle, or against the extensive form over all
vertices solved by :func:`scipy.optimize.milp`.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from bilevel.errors import BilevelError, ConvergenceWarning
from bilevel.robust import (
    TwoStageRobustProblem,
    UncertaintySet,
    read_instance,
    solve,
    worst_case,
    write_instance,
)
from bilevel.robust import lp_adversary as la
from bilevel.robust._deadline import Deadline
from bilevel.robust.lp_adversary import default_dual_bound, lp_worst_case


def _vertices(U: UncertaintySet) -> list[np.ndarray]:
    """Vertices of the sets used here: boxes and ``{xi in [0, 1]^n : sum xi <= Gamma}`` with
    integer Gamma, possibly with redundant extra rows (which send the adversary to its KKT
    path): every vertex is a corner of the box, so the corners inside the set."""
    corners = (np.array(v, dtype=float) for v in itertools.product(*zip(U.lb, U.ub)))
    return [v for v in corners if np.all(U.P @ v <= U.q + 1e-12)]


def _recourse_lp(problem, x, xi):
    d, W, r = problem.recourse_data(x, xi)
    res = linprog(d, A_ub=W, b_ub=r, bounds=list(zip(problem.y_lb, problem.y_ub)), method="highs")
    assert res.status in (0, 2), res.message
    return math.inf if res.status == 2 else float(res.fun)


def _oracle_worst_case(problem, x):
    """``max`` over the vertices of ``Xi`` of ``first-stage cost + Q`` (scipy LPs)."""
    return max(
        problem.first_stage_cost(x, v) + _recourse_lp(problem, x, v)
        for v in _vertices(problem.uncertainty)
    )


def _random_problem(
    seed, *, n_x=3, n_y=4, m=5, n_xi=4, t_xi=False, box=False, gamma=2, polytope=False
):
    """Random instance; ``polytope=True`` adds a redundant row to the box or budget set,
    which the adversary does not recognise: it then uses its KKT forms."""
    rng = np.random.default_rng(seed)
    if box and polytope:  # sum xi <= n is redundant on [-1, 1]^n
        U = UncertaintySet.polytope(np.ones((1, n_xi)), [n_xi], -np.ones(n_xi), np.ones(n_xi))
    elif box:
        U = UncertaintySet.box(-np.ones(n_xi), np.ones(n_xi))
    elif polytope:  # xi_0 + xi_1 <= 2 is redundant on [0, 1]^n
        P = np.vstack([np.ones(n_xi), np.eye(n_xi)[0] + np.eye(n_xi)[1]])
        U = UncertaintySet.polytope(P, [gamma, 2.0], np.zeros(n_xi), np.ones(n_xi))
    else:
        U = UncertaintySet.budget(n_xi, gamma)
    W = rng.normal(size=(m, n_y))
    return TwoStageRobustProblem(
        c=rng.normal(size=n_x),
        x_types="B" * n_x,
        uncertainty=U,
        d=rng.normal(size=n_y),
        y_types="C" * n_y,
        W=W,
        T=rng.normal(size=(m, n_x)),
        h=rng.uniform(0, 3, size=m) + 0.5 * np.abs(W).sum(axis=1),
        H=rng.normal(size=(m, n_xi)),
        T_xi=0.3 * rng.normal(size=(n_xi, m, n_x)) if t_xi else None,
        C=rng.normal(size=(n_xi, n_x)),
        y_lb=-2 * np.ones(n_y),
        y_ub=2 * np.ones(n_y),
    )


def _close(a, b, rel=1e-7):
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(1.0, abs(b))


# seeds 1, 24, 29, 33 and 38 leave the recourse infeasible at some vertex
CASES = [(s, s % 2 == 1, s % 3 == 0) for s in [*range(16), 24, 29, 33, 38]]


@pytest.mark.parametrize("polytope", [False, True], ids=["vertex-dual", "kkt"])
def test_worst_case_equals_vertex_enumeration(polytope):
    """Random budget/box instances, with and without T_xi, several infeasible for some xi;
    box and budget sets use the 0/1-vertex formulations, the same sets given as general
    polytopes the KKT formulations."""
    n_inf = n_finite = 0
    for seed, t_xi, box in CASES:
        problem = _random_problem(seed, t_xi=t_xi, box=box, polytope=polytope)
        assert (la._binary_vertices(problem.uncertainty) is None) == polytope
        x = np.random.default_rng(seed + 100).integers(0, 2, size=problem.n_x).astype(float)
        wc = worst_case(problem, x)
        oracle = _oracle_worst_case(problem, x)
        assert wc.status == "optimal"
        assert _close(wc.cost, oracle), (seed, wc.cost, oracle)
        assert wc.objective == wc.cost  # sense "min"
        assert problem.uncertainty.contains(wc.xi)
        # The returned scenario realises the value (independent LP at that xi).
        at_xi = problem.first_stage_cost(x, wc.xi) + _recourse_lp(problem, x, wc.xi)
        assert _close(at_xi, wc.cost)
        if math.isinf(oracle):
            n_inf += 1
            assert wc.y is None and wc.upper_bound == math.inf
        else:
            n_finite += 1
            assert _close(wc.upper_bound, oracle)  # the MILP bound is tight
            d, W, r = problem.recourse_data(x, wc.xi)
            assert np.all(W @ wc.y <= r + 1e-7)
            assert _close(problem.first_stage_cost(x, wc.xi) + d @ wc.y, wc.cost)
    assert n_inf >= 4 and n_finite >= 10  # both regimes are exercised


@pytest.mark.parametrize("polytope", [False, True], ids=["vertex-dual", "kkt"])
def test_larger_instance_with_t_xi(polytope):
    problem = _random_problem(
        1007, n_x=4, n_y=6, m=8, n_xi=6, gamma=3, t_xi=True, polytope=polytope
    )
    for x in ([1, 0, 1, 1], [0, 1, 0, 0]):
        x = np.array(x, dtype=float)
        assert _close(worst_case(problem, x).cost, _oracle_worst_case(problem, x))


def test_time_limit_keeps_valid_bounds():
    problem = _random_problem(1007, n_x=4, n_y=6, m=8, n_xi=6, gamma=3, t_xi=True, polytope=True)
    x = np.array([1.0, 0.0, 1.0, 1.0])
    oracle = _oracle_worst_case(problem, x)
    statuses = []
    for limit in (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 30.0):  # the last one finishes
        wc = worst_case(problem, x, time_limit=limit)
        statuses.append(wc.status)
        assert wc.status in ("time_limit", "optimal")
        # whatever stopped, the scenario value is a lower and upper_bound an upper bound
        assert wc.cost <= oracle + 1e-7 * max(1.0, abs(oracle))
        assert wc.upper_bound >= oracle - 1e-7 * max(1.0, abs(oracle))
        if wc.status == "time_limit" and math.isfinite(wc.cost):
            at_xi = problem.first_stage_cost(x, wc.xi) + _recourse_lp(problem, x, wc.xi)
            assert _close(at_xi, wc.cost)  # a time-limited incumbent is exact for its xi
    assert statuses[0] == "time_limit" and statuses[-1] == "optimal", statuses
    assert _close(wc.cost, oracle)


@pytest.mark.parametrize("polytope", [False, True], ids=["vertex-dual", "kkt"])
def test_infeasible_vertex_is_reported_with_its_scenario(polytope):
    # y in [0, 1], y >= 0.2 + xi_0 + 0.3 xi_1: infeasible exactly when xi_0 + 0.3 xi_1 > 0.8.
    if polytope:  # the budget set with a redundant row xi_0 <= 1
        U = UncertaintySet.polytope([[1.0, 1.0], [1.0, 0.0]], [1.0, 1.0], np.zeros(2), np.ones(2))
    else:
        U = UncertaintySet.budget(2, 1)
    problem = TwoStageRobustProblem(
        c=np.zeros(1),
        x_types="B",
        uncertainty=U,
        d=np.array([1.0]),
        y_types="C",
        W=np.array([[-1.0]]),
        T=np.zeros((1, 1)),
        h=np.array([-0.2]),
        H=np.array([[-1.0, -0.3]]),
        y_lb=np.zeros(1),
        y_ub=np.ones(1),
    )
    wc = worst_case(problem, np.zeros(1))
    assert wc.cost == math.inf and wc.status == "optimal" and wc.y is None
    assert wc.xi[0] + 0.3 * wc.xi[1] > 0.8 + 1e-6
    assert _recourse_lp(problem, np.zeros(1), wc.xi) == math.inf
    # Loosen the bound on y: now feasible everywhere, worst case at xi = (1, 0).
    problem.y_ub = np.array([2.0])
    wc = worst_case(problem, np.zeros(1))
    assert wc.cost == pytest.approx(1.2, abs=1e-9)
    np.testing.assert_allclose(wc.xi, [1.0, 0.0], atol=1e-9)


def _least_violation(problem, x, xi):
    """``phi(xi) = min {1^T s : W y - s <= r(xi), y in [l, u], s >= 0}`` by scipy."""
    _, W, r = problem.recourse_data(x, xi)
    n, m = problem.n_y, problem.m_y
    res = linprog(
        np.concatenate([np.zeros(n), np.ones(m)]),
        A_ub=np.hstack([W, -np.eye(m)]),
        b_ub=r,
        bounds=list(zip(problem.y_lb, problem.y_ub)) + [(0, None)] * m,
        method="highs",
    )
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("seed", [1, 24, 29, 33, 38, 2, 5])
def test_feasibility_phase_values_equal_vertex_enumeration(seed):
    """phi* = max_xi phi(xi) from the vertex-dual MILP and from the KKT pattern search."""
    problem = _random_problem(seed, t_xi=seed % 2 == 1, box=seed % 3 == 0)
    x = np.random.default_rng(seed + 100).integers(0, 2, size=problem.n_x).astype(float)
    phis = [_least_violation(problem, x, v) for v in _vertices(problem.uncertainty)]
    oracle = max(phis)
    r0, R = la._rhs_affine(problem, x)
    static = la._static_violation_bound(problem, r0, R, "highs")
    assert static >= oracle - 1e-9  # a valid upper bound
    vertex = la._feasibility_vertex_milp(
        problem, r0, R, *la._binary_vertices(problem.uncertainty), Deadline(), "highs"
    )
    assert vertex.value == pytest.approx(oracle, abs=1e-7)
    assert _least_violation(problem, x, vertex.x) == pytest.approx(oracle, abs=1e-7)
    kkt = la._pattern_search(
        la._feasibility_milp(problem, r0, R, static),
        lambda best, bound: bound - best <= 1e-9 * max(1.0, abs(bound)),
        Deadline(),
        "highs",
        50,
    )
    assert kkt.value == pytest.approx(oracle, abs=1e-7)
    assert kkt.bound >= oracle - 1e-7


def _brute_force_binary(problem):
    values = {}
    for bits in itertools.product([0.0, 1.0], repeat=problem.n_x):
        x = np.array(bits)
        if problem.A.shape[0] and np.any(problem.A @ x > problem.b + 1e-9):
            continue
        values[bits] = _oracle_worst_case(problem, x)
    best = min(values.values())
    return best, values


@pytest.mark.parametrize(
    "seed, t_xi, polytope", [(10, False, False), (0, True, False), (0, True, True)]
)
def test_ccg_equals_brute_force(seed, t_xi, polytope):
    problem = _random_problem(seed, n_x=5, t_xi=t_xi, polytope=polytope)
    best, values = _brute_force_binary(problem)
    assert math.isfinite(best) and any(math.isinf(v) for v in values.values())
    result = solve(problem)
    assert result.status == "optimal"
    assert _close(result.objective, best)
    assert _close(values[tuple(result.x)], best)
    assert result.lower_bound <= best + 1e-7 * max(1, abs(best))
    assert result.upper_bound >= best - 1e-7 * max(1, abs(best))


def test_ccg_reports_no_robustly_feasible_first_stage():
    # y in [0, 1], y >= 0.2 + xi_0 + 0.3 xi_1 - 0.05 x: feasible at the first scenario (the
    # centre of Xi) for both x, infeasible at xi = (1, 0) for both: the adversary's
    # infeasible scenario must make the next master infeasible.
    problem = TwoStageRobustProblem(
        c=np.array([1.0]),
        x_types="B",
        uncertainty=UncertaintySet.budget(2, 1),
        d=np.array([1.0]),
        y_types="C",
        W=np.array([[-1.0]]),
        T=np.array([[-0.05]]),
        h=np.array([-0.2]),
        H=np.array([[-1.0, -0.3]]),
        y_lb=np.zeros(1),
        y_ub=np.ones(1),
    )
    centre = problem.uncertainty.interior_point()
    assert all(_recourse_lp(problem, [x], centre) < math.inf for x in (0.0, 1.0))
    result = solve(problem)
    assert result.status == "infeasible" and result.x is None
    assert result.n_iter == 2 and result.info["n_scenarios"] == 2


def _duplicated_row_problem(polytope=False):
    # min -y s.t. y <= 1 + xi and 2 y <= 2 + 2 xi, y in [0, 10], xi in [0, 1]:
    # Q = -(1 + xi), worst case xi = 0 with duals lambda_1 + 2 lambda_2 = 1.
    if polytope:  # [0, 1] with a redundant row 2 xi <= 3: not recognised as a box/budget
        U = UncertaintySet.polytope([[2.0]], [3.0], [0.0], [1.0])
    else:
        U = UncertaintySet.box([0.0], [1.0])
    return TwoStageRobustProblem(
        c=np.zeros(1),
        x_types="B",
        uncertainty=U,
        d=np.array([-1.0]),
        y_types="C",
        W=np.array([[1.0], [2.0]]),
        T=np.zeros((2, 1)),
        h=np.array([1.0, 2.0]),
        H=np.array([[1.0], [2.0]]),
        y_lb=np.zeros(1),
        y_ub=np.full(1, 10.0),
    )


@pytest.mark.parametrize("polytope", [False, True], ids=["vertex-dual", "kkt"])
def test_dual_bound_at_bound_warns(polytope):
    problem = _duplicated_row_problem(polytope)
    # The optimal duals at xi = 0 are lambda_1 + 2 lambda_2 = 1: the smallest max-norm one
    # is (1/3, 1/3). A bound above 1/3 (the default, or 0.4) leaves one inside: no warning,
    # even if the solver picks a dual at the bound. A bound of exactly 1/3 binds: warning.
    for bound in (None, 0.4):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            wc = worst_case(problem, np.zeros(1), dual_bound=bound)
        assert wc.cost == pytest.approx(-1.0, abs=1e-9)
    with pytest.warns(ConvergenceWarning, match="dual_bound=0.3333.*larger dual_bound"):
        wc = worst_case(problem, np.zeros(1), dual_bound=1 / 3)
    assert wc.cost == pytest.approx(-1.0, abs=1e-9)  # still exact for its scenario


def test_dual_bound_too_small_for_every_scenario():
    # KKT form: no KKT point within the bound at all -> a clear error.
    with pytest.raises(BilevelError, match="raise dual_bound"):
        worst_case(_duplicated_row_problem(polytope=True), np.zeros(1), dual_bound=0.2)
    # Vertex-dual form: the restricted dual under-estimates Q; the multiplier sits at the
    # bound, so the warning fires, and the value is still exact for the scenario returned.
    problem = _duplicated_row_problem()
    with pytest.warns(ConvergenceWarning, match="dual_bound=0.2"):
        wc = worst_case(problem, np.zeros(1), dual_bound=0.2)
    assert wc.cost == pytest.approx(-1.0 - wc.xi[0], abs=1e-9)
    with pytest.raises(ValueError, match="dual_bound"):
        worst_case(problem, np.zeros(1), dual_bound=-1.0)


def test_dual_bound_warning_passes_through_solve_ccg():
    problem = _duplicated_row_problem()
    with pytest.warns(ConvergenceWarning, match="dual_bound"):
        result = solve(problem, dual_bound=1 / 3)
    assert result.objective == pytest.approx(-1.0, abs=1e-9)


def test_default_dual_bound_scales_with_the_data():
    problem = _duplicated_row_problem()
    assert default_dual_bound(problem) == 1e4
    problem.d = np.array([-50.0])
    problem.W = np.array([[0.5], [2.0]])
    assert default_dual_bound(problem) == pytest.approx(1e4 * 50 / 0.5)


def _base_kwargs():
    return {
        "c": np.zeros(1),
        "x_types": "B",
        "uncertainty": UncertaintySet.box([0.0], [1.0]),
        "d": np.array([1.0, 1.0]),
        "W": np.array([[-1.0, -1.0]]),
        "T": np.zeros((1, 1)),
        "h": np.array([-1.0]),
        "H": np.array([[-1.0]]),
        "y_lb": np.zeros(2),
        "y_ub": np.full(2, 5.0),
    }


@pytest.mark.parametrize(
    "change, message",
    [
        ({"y_types": "CC", "W_xi": np.array([[[1.0, 0.0]]])}, "uncertain recourse matrix"),
        ({"y_types": "CC", "D": np.array([[1.0, 0.0]])}, "uncertain recourse cost"),
        ({"y_types": "CI"}, "mixed integer and continuous recourse"),
    ],
)
def test_unsupported_combinations_raise(change, message):
    problem = TwoStageRobustProblem(**{**_base_kwargs(), **change})
    with pytest.raises(NotImplementedError, match=message):
        worst_case(problem, np.zeros(1))
    with pytest.raises(NotImplementedError, match=message):
        lp_worst_case(problem, np.zeros(1))


def test_infinite_recourse_bound_is_refused():
    kwargs = _base_kwargs()
    kwargs["y_ub"] = np.array([5.0, math.inf])
    problem = TwoStageRobustProblem(y_types="CC", **kwargs)
    with pytest.raises(ValueError, match="finite bounds on the recourse"):
        worst_case(problem, np.zeros(1))


def test_instance_file_round_trip(tmp_path):
    problem = _random_problem(5, t_xi=True)
    path = write_instance(problem, tmp_path / "lp_rhs.json")
    again = read_instance(path)
    np.testing.assert_array_equal(again.T_xi, problem.T_xi)
    x = np.array([1.0, 0.0, 1.0])
    assert _close(worst_case(again, x).cost, worst_case(problem, x).cost)


# ---------------------------------------------------------------------------------------
# Location-transportation instance of Zeng and Zhao (2013, Section 5): 3 facilities and 3
# customers; first stage: open y_i (binary) and capacity z_i <= 800 y_i; recourse: flows
# x_ij >= 0 with sum_j x_ij <= z_i and sum_i x_ij >= 206 + 40 g_1, 274 + 40 g_2,
# 220 + 40 g_3, g in [0, 1]^3, g_1 + g_2 <= 1.2, g_1 + g_2 + g_3 <= 1.8.
# Oracle: the extensive form over every vertex of the uncertainty set, one scipy MILP.
# ---------------------------------------------------------------------------------------
FIXED = np.array([400.0, 414.0, 326.0])
UNIT = np.array([18.0, 25.0, 20.0])
TRANSPORT = np.array([[22.0, 33.0, 24.0], [33.0, 23.0, 30.0], [20.0, 25.0, 27.0]])
BASE = np.array([206.0, 274.0, 220.0])
CAPACITY = 800.0


def _location_transportation():
    P = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    U = UncertaintySet.polytope(P, [1.2, 1.8], np.zeros(3), np.ones(3))
    n_x, n_y = 6, 9  # x = (open_1..3, capacity_1..3); y_ij at 3 i + j
    W = np.zeros((6, n_y))
    T = np.zeros((6, n_x))
    for i in range(3):
        W[i, 3 * i : 3 * i + 3] = 1.0  # sum_j y_ij - z_i <= 0
        T[i, 3 + i] = -1.0
        W[3 + i, i::3] = -1.0  # -sum_i y_ij <= -(base_j + 40 g_j)
    A = np.hstack([-CAPACITY * np.eye(3), np.eye(3)])  # z_i <= 800 open_i
    return TwoStageRobustProblem(
        c=np.concatenate([FIXED, UNIT]),
        x_types="BBBCCC",
        x_ub=np.concatenate([np.ones(3), np.full(3, CAPACITY)]),
        A=A,
        b=np.zeros(3),
        uncertainty=U,
        d=TRANSPORT.ravel(),
        y_types="C" * n_y,
        W=W,
        T=T,
        h=np.concatenate([np.zeros(3), -BASE]),
        H=np.vstack([np.zeros((3, 3)), -40.0 * np.eye(3)]),
        y_lb=np.zeros(n_y),
        y_ub=np.full(n_y, CAPACITY),
        name="zeng_zhao_2013_location_transportation",
    )


def _polytope_vertices(P, q, lb, ub):
    n = P.shape[1]
    G = np.vstack([P, np.eye(n), -np.eye(n)])
    g = np.concatenate([q, ub, -lb])
    out: list[np.ndarray] = []
    for rows in itertools.combinations(range(G.shape[0]), n):
        M = G[list(rows)]
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        v = np.linalg.solve(M, g[list(rows)])
        if np.all(G @ v <= g + 1e-9) and not any(np.allclose(v, u) for u in out):
            out.append(v)
    return out


def _extensive_form_optimum(vertices):
    """``min f^T open + a^T z + eta`` with a flow copy per vertex (scipy MILP)."""
    V = len(vertices)
    n = 7 + 9 * V  # open(3), z(3), eta, flows
    c = np.zeros(n)
    c[:3], c[3:6], c[6] = FIXED, UNIT, 1.0
    rows, lo, up = [], [], []
    for i in range(3):
        r = np.zeros(n)
        r[i], r[3 + i] = -CAPACITY, 1.0
        rows.append(r), lo.append(-np.inf), up.append(0.0)
    for k, g in enumerate(vertices):
        base = 7 + 9 * k
        r = np.zeros(n)
        r[6] = -1.0
        r[base : base + 9] = TRANSPORT.ravel()
        rows.append(r), lo.append(-np.inf), up.append(0.0)
        for i in range(3):
            r = np.zeros(n)
            r[base + 3 * i : base + 3 * i + 3] = 1.0
            r[3 + i] = -1.0
            rows.append(r), lo.append(-np.inf), up.append(0.0)
        for j in range(3):
            r = np.zeros(n)
            r[base + j : base + 9 : 3] = 1.0
            rows.append(r), lo.append(BASE[j] + 40.0 * g[j]), up.append(np.inf)
    integrality = np.zeros(n)
    integrality[:3] = 1
    ub = np.full(n, np.inf)
    ub[:3] = 1.0
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lo, up),
        integrality=integrality,
        bounds=Bounds(np.zeros(n), ub),
        options={"mip_rel_gap": 1e-12},
    )
    assert res.status == 0, res.message
    return float(res.fun)


def test_location_transportation_of_zeng_and_zhao():
    problem = _location_transportation()
    U = problem.uncertainty
    vertices = _polytope_vertices(U.P, U.q, U.lb, U.ub)
    assert len(vertices) >= 6
    expected = _extensive_form_optimum(vertices)
    result = solve(problem)
    assert result.status == "optimal"
    assert result.objective == pytest.approx(expected, rel=1e-8)
    # The returned plan's worst case by vertex enumeration equals its reported value.
    worst = max(
        problem.first_stage_cost(result.x, v) + _recourse_lp(problem, result.x, v) for v in vertices
    )
    assert worst == pytest.approx(result.objective, rel=1e-8)


def test_cli_solves_a_location_transportation_file(tmp_path):
    from typer.testing import CliRunner

    from bilevel.cli._app import app

    problem = _location_transportation()
    path = write_instance(problem, tmp_path / "lt.json")
    out = tmp_path / "result.json"
    res = CliRunner().invoke(
        app, ["robust", "solve", str(path), "--quiet", "--out", str(out)], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert payload["status"] == "optimal"
    U = problem.uncertainty
    expected = _extensive_form_optimum(_polytope_vertices(U.P, U.q, U.lb, U.ub))
    assert float(payload["objective"]) == pytest.approx(expected, rel=1e-8)


def test_box_and_budget_are_recognised_from_the_data():
    n = 4
    assert la._binary_vertices(UncertaintySet.budget(n, 2)) is not None
    assert la._binary_vertices(UncertaintySet.box(-np.ones(n), np.ones(n))) is not None
    # The same budget set written as a polytope (scaled row) is recognised too ...
    U = UncertaintySet.polytope(3 * np.ones((1, n)), [6.0], np.zeros(n), np.ones(n))
    base, delta = la._binary_vertices(U)
    np.testing.assert_array_equal(base, 0.0)
    np.testing.assert_array_equal(delta, 1.0)
    # ... but not a fractional budget (vertices are not 0/1) nor other polytopes.
    assert la._binary_vertices(UncertaintySet.budget(n, 1.5)) is None
    assert la._binary_vertices(UncertaintySet.polytope([[1.0, 2.0]], [2.0], [0, 0], [1, 1])) is None


def test_cli_dual_bound_option_and_warning(tmp_path):
    from typer.testing import CliRunner

    from bilevel.cli._app import app

    path = write_instance(_duplicated_row_problem(), tmp_path / "dup.json")
    runner = CliRunner()
    res = runner.invoke(app, ["robust", "solve", str(path), "--quiet", "--dual-bound", "0.3334"])
    assert res.exit_code == 0 and "warning" not in res.output
    res = runner.invoke(app, ["robust", "solve", str(path), "--quiet", "--dual-bound", "0.2"])
    # a convergence warning: exit 3 (CLI conventions: not converged), result still printed
    assert res.exit_code == 3 and "warning    " in res.output and "dual_bound=0.2" in res.output
    assert "status     optimal" in res.output
    for bad in ("-1", "inf"):
        res = runner.invoke(app, ["robust", "solve", str(path), "--dual-bound", bad])
        assert res.exit_code == 2 and "--dual-bound must be a positive finite" in res.output
    # KKT form with a bound admitting no KKT point at all: a clean error, exit 1
    kkt = write_instance(_duplicated_row_problem(polytope=True), tmp_path / "kkt.json")
    res = runner.invoke(app, ["robust", "solve", str(kkt), "--quiet", "--dual-bound", "0.2"])
    assert res.exit_code == 1 and "raise dual_bound" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        app, ["robust", "solve", str(path), "--method", "neur2ro", "--dual-bound", "1"]
    )
    assert res.exit_code == 2 and "--method exact only" in res.output


@pytest.mark.parametrize("polytope", [False, True], ids=["vertex-dual", "kkt"])
def test_scip_backend_equals_vertex_enumeration(polytope):
    pytest.importorskip("pyscipopt")
    for seed, t_xi, box in CASES[:6]:
        problem = _random_problem(seed, t_xi=t_xi, box=box, polytope=polytope)
        x = np.random.default_rng(seed + 100).integers(0, 2, size=problem.n_x).astype(float)
        wc = worst_case(problem, x, solver="scip")
        assert wc.status == "optimal"
        assert _close(wc.cost, _oracle_worst_case(problem, x), rel=1e-6), seed


def test_feasibility_phase_searches_on_when_the_check_disagrees(monkeypatch):
    """KKT form: phase 1 may stop early at a 'clear' infeasibility (bound not yet tight) and
    confirm it with the recourse LP. If that check calls the scenario feasible (tolerances,
    bad scaling), the search must go on to the maximiser instead of trusting it. Forced
    here: the first search reports a loose bound, the first check says 'feasible'; the
    worst case must still come out infinite."""
    from bilevel.robust.model import SecondStageSolution, TwoStageRobustProblem

    real_value = TwoStageRobustProblem.second_stage_value
    real_search = la._pattern_search
    for seed, t_xi, box in CASES:
        problem = _random_problem(seed, t_xi=t_xi, box=box, polytope=True)
        x = np.random.default_rng(seed + 100).integers(0, 2, size=problem.n_x).astype(float)
        if not math.isinf(_oracle_worst_case(problem, x)):
            continue
        calls, searches = [], []

        def lying(self, x_, xi_, calls=calls, **kw):
            calls.append(1)
            if len(calls) == 1:
                return SecondStageSolution(0.0, np.zeros(self.n_y), "optimal")
            return real_value(self, x_, xi_, **kw)

        def loose_first(*args, searches=searches, **kw):
            out = real_search(*args, **kw)
            searches.append(out)
            if len(searches) == 1:  # an early stop: the bound is not tight yet
                return la._Search(out.x, out.value, out.bound + 10.0, out.rounds, out.status)
            return out

        monkeypatch.setattr(TwoStageRobustProblem, "second_stage_value", lying)
        monkeypatch.setattr(la, "_pattern_search", loose_first)
        wc = worst_case(problem, x)
        monkeypatch.setattr(TwoStageRobustProblem, "second_stage_value", real_value)
        monkeypatch.setattr(la, "_pattern_search", real_search)
        assert wc.cost == math.inf and len(calls) >= 2 and len(searches) >= 2, seed
        return
    pytest.fail("no instance with an infeasible vertex")


@pytest.mark.parametrize("polytope", [False, True], ids=["vertex-dual", "kkt"])
def test_dual_bound_cutting_off_another_scenario_is_caught(polytope):
    """The returned scenario's duals fit the bound, the worse scenario's do not: only the
    re-solve with ten times the bound can tell. y >= 5 - 4 xi and 0.001 y >= 0.001 (1 + 9 xi)
    (dual 1000 at xi = 1): worst case 10 at xi = 1, but 5 at xi = 0 within dual_bound=100."""
    U = (
        UncertaintySet.polytope([[1.0]], [2.0], [0.0], [1.0])
        if polytope
        else UncertaintySet.box([0.0], [1.0])
    )
    problem = TwoStageRobustProblem(
        c=np.zeros(1),
        x_types="C",
        x_lb=np.zeros(1),
        x_ub=np.ones(1),
        uncertainty=U,
        d=np.ones(1),
        y_types="C",
        W=np.array([[-1.0], [-0.001]]),
        T=np.zeros((2, 1)),
        h=np.array([-5.0, -0.001]),
        H=np.array([[4.0], [-0.009]]),
        y_lb=np.zeros(1),
        y_ub=np.full(1, 20.0),
    )
    x = np.zeros(1)
    with pytest.warns(ConvergenceWarning) as record:  # (also: the duals sit at 10x the bound)
        wc = worst_case(problem, x, dual_bound=100.0)
    assert any("dual_bound=100 cut off a worse scenario" in str(w.message) for w in record)
    assert wc.cost == pytest.approx(10.0, rel=1e-9) and wc.xi[0] == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert worst_case(problem, x).cost == pytest.approx(10.0, rel=1e-9)  # default bound
    # without the check, the answer within the bound is silently below the worst case
    assert lp_worst_case(problem, x, dual_bound=100.0, check_dual_bound=False).cost == (
        pytest.approx(5.0, rel=1e-9)
    )

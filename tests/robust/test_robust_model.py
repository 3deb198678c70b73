"""bilevel.robust model, instance files and generators.

Oracles: the second-stage value by HiGHS against enumeration of every recourse decision;
JSON round trips against the original arrays; the knapsack reader against the documented
file format; generator outputs against the documented procedure.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from bilevel.robust import (
    InstanceFormatError,
    TwoStageRobustProblem,
    UncertaintySet,
    generate_capital_budgeting,
    generate_knapsack,
    knapsack_problem,
    load_instance,
    read_instance,
    read_knapsack_instance,
    write_instance,
)

KNAPSACK_FILE = """5 1200 2
 645 334 221 546 827
 788 408 271 688 1159
 303 153 97 203 385
 120 50 30 100 150
 410 200 150 300 500
"""


def _second_stage_by_enumeration(problem, x, xi):
    best = math.inf
    d, W, rhs = problem.recourse_data(x, xi)
    for y in itertools.product([0.0, 1.0], repeat=problem.n_y):
        y = np.array(y)
        if np.all(W @ y <= rhs + 1e-9):
            best = min(best, float(d @ y))
    return best


def test_knapsack_costs_match_the_profit_model():
    """cost = -(profit): kept unrepaired pbar - phat xi, repaired pbar, outsourced pbar - f."""
    p = knapsack_problem(
        pbar=[10.0, 20.0],
        phat=[4.0, 6.0],
        t=[1.0, 1.0],
        c=[2.0, 3.0],
        f=[5.0, 7.0],
        capacity=10.0,
        gamma=1.0,
    )
    x = np.array([1.0, 1.0])
    xi = np.array([0.5, 0.5])
    # Both kept, item 0 repaired, item 1 not: profit 10 + (20 - 3) = 27.
    y = np.array([1.0, 1.0, 1.0, 0.0])
    d, W, rhs = p.recourse_data(x, xi)
    assert np.all(W @ y <= rhs)
    cost = p.first_stage_cost(x, xi) + d @ y
    assert p.to_objective(cost) == pytest.approx(27.0, abs=1e-12)
    # Item 1 outsourced: profit 10 + (20 - 7) with item 0 repaired.
    y = np.array([1.0, 0.0, 1.0, 0.0])
    assert p.to_objective(p.first_stage_cost(x, xi) + d @ y) == pytest.approx(23.0, abs=1e-12)
    # Best recourse repairs both (capacity 2 + 3 + 1 + 1 <= 10): profit 30.
    assert p.to_objective(p.total_cost(x, xi)) == pytest.approx(30.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["knapsack", "capital_budgeting"])
def test_second_stage_value_matches_enumeration(kind):
    rng = np.random.default_rng(3)
    for seed in range(3):
        if kind == "knapsack":
            p = generate_knapsack(5, "UN", dev=0.4, seed=seed)
        else:
            p = generate_capital_budgeting(5, seed=seed)
        for _ in range(4):
            x = rng.integers(0, 2, p.n_x).astype(float)
            xi = p.uncertainty.sample(1, rng)[0]
            sol = p.second_stage_value(x, xi)
            exact = _second_stage_by_enumeration(p, x, xi)
            if math.isinf(exact):
                assert sol.status == "infeasible" and math.isinf(sol.value)
            else:
                assert sol.value == pytest.approx(exact, rel=1e-9, abs=1e-9)
                _d, W, rhs = p.recourse_data(x, xi)
                assert np.all(W @ sol.y <= rhs + 1e-7)


def test_uncertainty_sets():
    U = UncertaintySet.budget(4, 1.5)
    pts = U.sample(200, 0)
    assert all(U.contains(p) for p in pts)
    assert pts.sum(axis=1).max() <= 1.5 + 1e-9
    assert not U.contains(np.array([1.0, 1.0, 0.0, 0.0]))
    # Chebyshev centre of the budget set {xi in [0,1]^4, sum xi <= 1.5}: xi = t 1 with
    # 4 t + 2 t = 1.5 (row norm 2), i.e. t = 0.25.
    np.testing.assert_allclose(U.interior_point(), np.full(4, 0.25), atol=1e-9)
    # General polytope: bounds computed by LPs.
    P = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    V = UncertaintySet.polytope(P, [2.0, 0.0, 0.0])
    np.testing.assert_allclose(V.lb, [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(V.ub, [2.0, 2.0], atol=1e-9)
    with pytest.raises(ValueError, match="unbounded"):
        UncertaintySet.polytope(np.array([[1.0, 1.0]]), [1.0])
    with pytest.raises(ValueError, match="empty"):
        UncertaintySet.polytope(np.array([[1.0], [-1.0]]), [0.0, -1.0])


def test_problem_validation_errors():
    U = UncertaintySet.box([0.0], [1.0])
    base = {
        "c": [1.0],
        "x_types": "B",
        "uncertainty": U,
        "d": [1.0],
        "y_types": "B",
        "W": [[1.0]],
        "T": [[0.0]],
        "h": [1.0],
    }
    TwoStageRobustProblem(**base)
    with pytest.raises(ValueError, match="x_types"):
        TwoStageRobustProblem(**{**base, "x_types": "Z"})
    with pytest.raises(ValueError, match="T must have shape"):
        TwoStageRobustProblem(**{**base, "T": [[0.0, 1.0]]})
    with pytest.raises(ValueError, match="NaN"):
        TwoStageRobustProblem(**{**base, "h": [math.nan]})
    with pytest.raises(ValueError, match="sense"):
        TwoStageRobustProblem(**{**base, "sense": "maximize"})
    with pytest.raises(ValueError, match="D must have shape"):
        TwoStageRobustProblem(**{**base, "D": [[1.0, 2.0]]})
    p = TwoStageRobustProblem(**base)
    with pytest.raises(ValueError, match="integral"):
        p.check_first_stage([0.5])


@pytest.mark.parametrize(
    "make",
    [
        lambda: generate_knapsack(6, "WC", dev=0.2, seed=1),
        lambda: generate_capital_budgeting(4, seed=2),
        lambda: TwoStageRobustProblem(
            c=[1.0, -2.0],
            x_types="BI",
            x_ub=[1.0, 3.0],
            A=[[1.0, 1.0]],
            b=[3.0],
            C=[[0.5, 0.0], [0.0, 0.0]],
            uncertainty=UncertaintySet.polytope([[1.0, 1.0]], [1.0], [0.0, 0.0], [1.0, 1.0]),
            d=[1.0, 0.5],
            D=[[0.0, 1.0], [1.0, 0.0]],
            y_types="CB",
            y_lb=[-math.inf, 0.0],
            y_ub=[2.0, 1.0],
            W=[[-1.0, 1.0]],
            T=[[1.0, 0.0]],
            h=[1.0],
            H=[[0.0, 1.0]],
            sense="min",
            name="general",
        ),
    ],
)
def test_json_round_trip(tmp_path, make):
    p = make()
    path = write_instance(p, tmp_path / "inst.json")
    q = read_instance(path)
    for key in ("c", "d", "W", "T", "h", "x_lb", "x_ub", "y_lb", "y_ub", "A", "b"):
        np.testing.assert_array_equal(getattr(p, key), getattr(q, key))
    for key in ("C", "D", "W_xi", "T_xi", "H"):
        a, b = getattr(p, key), getattr(q, key)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert (p.x_types, p.y_types, p.sense, p.name) == (q.x_types, q.y_types, q.sense, q.name)
    np.testing.assert_array_equal(p.uncertainty.P, q.uncertainty.P)
    np.testing.assert_array_equal(p.uncertainty.lb, q.uncertainty.lb)
    np.testing.assert_array_equal(p.uncertainty.ub, q.uncertainty.ub)
    with pytest.raises(FileExistsError):
        write_instance(p, path)  # never overwrites


def test_knapsack_file(tmp_path):
    path = tmp_path / "RKP_test"
    path.write_text(KNAPSACK_FILE)
    p = read_knapsack_instance(path)
    assert p.sense == "max" and p.n_x == 5 and p.n_y == 10
    np.testing.assert_array_equal(p.metadata["items"]["pbar"], [645, 788, 303, 120, 410])
    np.testing.assert_array_equal(p.metadata["items"]["f"], [827, 1159, 385, 150, 500])
    assert p.metadata["capacity"] == 1200 and p.uncertainty.gamma == 2
    np.testing.assert_array_equal(
        p.c, np.array([827, 1159, 385, 150, 500.0]) - [645, 788, 303, 120, 410]
    )
    assert p.W[0].tolist() == [546, 688, 203, 100, 300, 221, 271, 97, 30, 150]
    assert load_instance(path).name == "RKP_test"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("5 1200\n", "first line"),
        ("2 10 1\n1 1 1 1 1\n", "expected 2 item lines"),
        ("2 10 1\n1 1 1 1 1\n1 1 1 1\n", "expected 5 numbers"),
        ("2 10 1\n1 1 1 1 1\n1 1 x 1 1\n", "expected numbers"),
        ("2.5 10 1\n1 1 1 1 1\n1 1 1 1 1\n", "positive integer"),
        ("2 10 1\n1 1 1 1 1\n1 -1 1 1 1\n", "nonnegative"),
        ("2 10 1\n1 1 1 1 1\n1 nan 1 1 1\n", "non-finite"),
    ],
)
def test_malformed_knapsack_files(tmp_path, text, message):
    path = tmp_path / "bad"
    path.write_text(text)
    with pytest.raises(InstanceFormatError, match=message):
        read_knapsack_instance(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(problem="tsp"), "'problem' must be"),
        (lambda d: d.update(capcity=3), "unknown keys"),
        (lambda d: d.pop("gamma"), "missing keys"),
        (lambda d: d["items"].update(pbar=[1, 2]), "items.phat must be a list of length 2"),
        (lambda d: d["items"].update(c=["a"] * 4), "expected a number"),
        (lambda d: d.update(capacity=None), "expected numbers"),
        (lambda d: d["items"].update(c=[1, -1, 1, 1]), "nonnegative"),
    ],
)
def test_malformed_json(tmp_path, mutate, message):
    p = generate_knapsack(4, "UN", seed=0)
    good = tmp_path / "good.json"
    write_instance(p, good)
    data = json.loads(good.read_text())
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InstanceFormatError, match=message):
        read_instance(bad)
    bad.write_text("{not json")
    with pytest.raises(InstanceFormatError, match="not valid JSON"):
        read_instance(bad)


def test_knapsack_generator_follows_the_documented_procedure():
    R = 1000
    for typ in ("UN", "WC", "ASC", "SC"):
        for seed in range(3):
            p = generate_knapsack(40, typ, dev=0.15, delta=0.5, h=80, seed=seed)
            it = {k: np.array(v) for k, v in p.metadata["items"].items()}
            for v in it.values():
                assert np.all(v >= 1) and np.all(v == np.floor(v))
            assert p.metadata["capacity"] == math.floor(80 / 101 * it["c"].sum())
            assert p.uncertainty.gamma == pytest.approx(40 * 0.15)
            diff = it["pbar"] - it["c"]
            if typ == "WC":
                assert np.all(np.abs(diff) <= R / 20 + 1)
            if typ == "ASC":
                assert np.all((diff >= R / 10 - 2) & (diff <= R / 10 + 1))
            if typ == "SC":
                np.testing.assert_array_equal(diff, R / 10)
                np.testing.assert_array_equal(
                    it["t"], np.maximum(np.floor(it["phat"] / 2 + it["c"] / 10), 1)
                )
            ratio = it["phat"] / it["pbar"]
            big = it["pbar"] >= 100  # rounding distorts ratios of tiny profits
            assert np.all(ratio[big] >= 0.25 - 0.01) and np.all(ratio[big] <= 0.75)
            fr = it["f"] / it["pbar"]
            assert np.all(fr[big] >= 1.1 - 0.01) and np.all(fr[big] <= 1.5)
    with pytest.raises(ValueError, match="correlation"):
        generate_knapsack(5, "XX")


def test_capital_budgeting_generator():
    p = generate_capital_budgeting(30, seed=4)
    m = p.metadata
    cbar, rbar = np.array(m["cbar"]), np.array(m["rbar"])
    np.testing.assert_allclose(rbar, cbar / 5)
    assert m["budget"] == pytest.approx(cbar.sum() / 2)
    for key in ("Phi", "Psi"):
        F = np.array(m[key])
        assert F.shape == (30, 4) and np.all(F >= 0)
        np.testing.assert_allclose(F.sum(axis=1), 1.0, atol=1e-12)
    # Costs c_i(xi) = (1 + Phi_i xi / 2) cbar_i in the budget row.
    xi = np.array([0.3, -1.0, 0.5, 1.0])
    x = np.zeros(30)
    y = np.zeros(30)
    y[:3] = 1
    _, W, rhs = p.recourse_data(x, xi)
    cost = (1 + np.array(m["Phi"]) @ xi / 2) * cbar
    assert W[0] @ y == pytest.approx(cost[:3].sum(), rel=1e-12)
    assert rhs[0] == pytest.approx(m["budget"])
    # Profit r_i(xi) (x_i + theta y_i): cost form is its negative.
    r = (1 + np.array(m["Psi"]) @ xi / 2) * rbar
    x[5] = 1
    d, _, _ = p.recourse_data(x, xi)
    assert p.first_stage_cost(x, xi) + d @ y == pytest.approx(-(r[5] + 0.8 * r[:3].sum()))

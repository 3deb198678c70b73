"""The layering of ``bilevel.robust`` (issue 15 item 5) and the helpers it introduced:
no import circles, one ``Deadline``, ``RobustResult.from_cost_bounds``, parallel labelling,
progress bars and CCG warm starts."""

from __future__ import annotations

import ast
import math
import time
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from bilevel import robust
from bilevel.errors import ConvergenceWarning
from bilevel.robust import brute_force, generate_knapsack, solve_ccg
from bilevel.robust._deadline import Deadline
from bilevel.robust.model import RobustResult, WorstCase, cost_gap, own_bounds

PACKAGE = Path(robust.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every ``bilevel.robust`` module that ``path`` imports, at any depth of the file
    (function-level imports included: they are dependencies too)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def test_no_import_circles_below_the_package_facades():
    """The graph of module-to-module imports inside bilevel.robust (package __init__
    facades excluded: they only re-export) has no cycle."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    graph = {
        name: {m for m in _imports(path, name) if m in files and m != name}
        for name, path in files.items()
    }
    # the circles of issue 15 are gone
    assert "bilevel.robust._milp" not in graph["bilevel.robust._highs"]
    assert "bilevel.robust._highs" not in graph["bilevel.robust._scip"]
    assert not any("bilevel.robust" in m for m in graph["bilevel.robust._highs"])
    assert not graph["bilevel.robust.model"] - {"bilevel.robust._milp"}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_deadline():
    unlimited = Deadline()
    assert unlimited.remaining() is None and unlimited.remaining(5.0) == 5.0
    assert not unlimited.expired()
    d = Deadline(0.05)
    assert 0.0 < d.remaining() <= 0.05 and d.remaining(0.01) == 0.01
    time.sleep(0.06)
    assert d.expired() and d.remaining() == 0.0 and d.remaining(3.0) == 0.0
    assert d.elapsed() >= 0.06


@pytest.mark.parametrize("sense", ["min", "max"])
def test_from_cost_bounds_converts_sense_and_gap_once(sense):
    problem = generate_knapsack(3, "UN", seed=0)
    object.__setattr__(problem, "sense", sense)
    worst = WorstCase.from_cost(
        problem, 10.0, np.zeros(3), np.zeros(problem.n_y), "optimal", 10.0, 1
    )
    r = RobustResult.from_cost_bounds(
        8.0, 10.0, sense, x=np.ones(3), worst=worst, status="optimal", n_iter=2, time=0.1
    )
    assert r.gap == pytest.approx(0.2) == cost_gap(8.0, 10.0)
    assert (r.lower_bound, r.upper_bound) == own_bounds(8.0, 10.0, sense)
    assert (r.lower_bound, r.upper_bound) == ((8.0, 10.0) if sense == "min" else (-10.0, -8.0))
    assert r.objective == problem.to_objective(10.0)
    assert r.xi is worst.xi and r.info["xi"] is worst.xi
    with pytest.warns(ConvergenceWarning, match="time_limit"):
        t = RobustResult.from_cost_bounds(
            -math.inf, math.inf, sense, x=None, worst=None, status="time_limit", n_iter=0, time=0.0
        )
    assert t.gap == math.inf and math.isnan(t.objective)
    partial = WorstCase.from_cost(problem, 9.0, np.zeros(3), None, "time_limit", 12.0, 1)
    with pytest.warns(ConvergenceWarning):
        p = RobustResult.from_cost_bounds(
            8.0,
            math.inf,
            sense,
            x=np.ones(3),
            worst=partial,
            status="time_limit",
            n_iter=1,
            time=0.0,
        )
    assert math.isnan(p.objective)
    assert p.info["objective_bounds"] == own_bounds(9.0, 12.0, sense)


def test_parallel_labelling_equals_sequential():
    """loky workers (n_jobs=2) label exactly the pairs the sequential loop labels."""
    from bilevel.robust.neur2ro import generate_dataset

    problems = [generate_knapsack(6, t, seed=s) for s, t in enumerate(("UN", "WC", "SC"))]
    kw = {"n_first_stage": 4, "n_scenarios": 5, "seed": 3}
    one = generate_dataset(problems, n_jobs=1, **kw)
    two = generate_dataset(problems, n_jobs=2, **kw)
    assert len(one) == len(two) == 60 - one.n_infeasible
    np.testing.assert_array_equal(one.label, two.label)
    np.testing.assert_array_equal(one.instance, two.instance)
    np.testing.assert_array_equal(one.group, two.group)
    for a, b in zip(one.x + one.xi, two.x + two.xi, strict=True):
        np.testing.assert_array_equal(a, b)
    # the labels are the exact second-stage values (independent recomputation)
    k, x, xi = one.instance[7], one.x[7], one.xi[7]
    p = problems[k]
    assert one.label[7] == pytest.approx(
        p.first_stage_cost(x, xi) - p.c @ x + p.second_stage_value(x, xi).value, abs=1e-9
    )


class _Bar:
    """A stand-in for tqdm that records totals and updates."""

    made: ClassVar[list[_Bar]] = []

    def __init__(self, total=None, desc="", **kw):
        self.total, self.desc, self.n, self.kw = total, desc, 0, kw
        _Bar.made.append(self)

    def update(self, k=1):
        self.n += k

    def set_postfix_str(self, *a, **k):
        pass

    def close(self):
        self.closed = True


def test_progress_bars_over_labelling_training_and_iterations(monkeypatch):
    import tqdm.auto

    from bilevel.robust.neur2ro import solve_neur2ro

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made = []
    problem = generate_knapsack(5, "UN", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = solve_neur2ro(
            problem,
            n_first_stage=3,
            n_scenarios=3,
            max_iterations=3,
            model_params={"n_epochs": 4},
            progress=True,
        )
    bars = {b.desc: b for b in _Bar.made}
    assert bars["labelling"].n == bars["labelling"].total == 9
    assert bars["training"].n == bars["training"].total == 4
    assert 1 <= bars["Neur2RO"].n == result.n_iter <= bars["Neur2RO"].total == 3
    _Bar.made = []
    ccg = solve_ccg(problem, progress=True)
    assert _Bar.made[0].desc == "CCG" and _Bar.made[0].n == ccg.n_iter
    assert all(b.kw.get("delay", 0) >= 2.0 for b in _Bar.made)  # only phases over ~2 s
    _Bar.made = []
    solve_ccg(problem)
    assert _Bar.made == []  # off by default in the library


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ccg_warm_start_from_any_first_stage_keeps_the_optimum(seed):
    problem = generate_knapsack(6, "WC", dev=0.4, h=40, seed=seed)
    oracle = brute_force(problem)
    cold = solve_ccg(problem)
    for x0 in (oracle.x, np.zeros(problem.n_x)):
        warm = solve_ccg(problem, initial_x=x0)
        assert warm.status == "optimal"
        assert warm.objective == pytest.approx(oracle.objective, rel=1e-9)
    from_optimum = solve_ccg(problem, initial_x=oracle.x)
    assert from_optimum.n_iter <= cold.n_iter
    with pytest.raises(ValueError, match="x violates"):
        solve_ccg(problem, initial_x=np.full(problem.n_x, 2.0))

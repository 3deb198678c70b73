"""The CLI conventions on every ``bilevel robust`` subcommand, and the issue-14 robust items.

Exit codes: 0 success, 1 infeasible/failure, 2 usage, 3 not converged, 4 time limit. Values
are checked against independent oracles: :func:`bilevel.robust.brute_force` (enumeration of
every first stage, scenario vertex and recourse) and the second-stage MILP at the reported
scenario.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bilevel.cli._app import app
from bilevel.robust import brute_force, load_instance

ROOT = Path(__file__).resolve().parents[2]


def _infeasible_instance(path: Path) -> Path:
    """x, y binary and y + x <= -0.5 + xi: at xi = 0 no (x, y) is feasible, so every first
    stage has an infeasible recourse in some scenario (status infeasible)."""
    from bilevel.robust import TwoStageRobustProblem, UncertaintySet, write_instance

    problem = TwoStageRobustProblem(
        c=[1.0], x_types="B", uncertainty=UncertaintySet.box([0.0], [1.0]), d=[1.0],
        y_types="B", W=[[1.0]], T=[[1.0]], h=[-0.5], H=[[1.0]],
    )  # fmt: skip
    return write_instance(problem, path)


def _train_args(model: Path, kind: str, *extra: object) -> list[object]:
    """A tiny ``robust train`` run: 2 instances x 3 decisions x 3 scenarios, 2 epochs."""
    return ["train", "-o", model, "--n", 4, "--type", kind, "--instances", 2,
            "--n-first-stage", 3, "--n-scenarios", 3, "--epochs", 2, *extra]  # fmt: skip


def _run(*args: object):
    return CliRunner().invoke(app, ["robust", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def knapsack(tmp_path_factory) -> Path:
    """A 6-item knapsack whose exact solve takes several CCG iterations."""
    path = tmp_path_factory.mktemp("inst") / "kp6.json"
    res = _run(
        "generate", "knapsack", "--n", 6, "--type", "ASC", "--dev", 0.4, "--seed", 3, "-o", path
    )
    assert res.exit_code == 0, res.output
    return path


# ----------------------------------------------------------------------------- -o, --force


def test_output_json_has_metrics_and_force_policy(knapsack, tmp_path):
    out = tmp_path / "r.json"
    res = _run("solve", knapsack, "-o", out, "--quiet")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    oracle = brute_force(load_instance(knapsack))
    metrics = data["metrics"]
    assert metrics["status"] == "optimal" and metrics["converged"] is True
    assert metrics["objective"] == pytest.approx(oracle.objective, rel=1e-9)
    assert metrics["n_iter"] == data["n_iter"] >= 2
    assert set(metrics) >= {"lower_bound", "upper_bound", "gap", "time"}
    before = out.read_text()
    res = _run("solve", knapsack, "--output", out)  # exists, no --force: usage error
    assert res.exit_code == 2 and "--output" in res.output and "--force" in res.output
    assert out.read_text() == before
    out.write_text("stale")
    res = _run("solve", knapsack, "-o", out, "--force", "--quiet")
    assert res.exit_code == 0 and json.loads(out.read_text())["status"] == "optimal"


def test_generate_force_and_seed(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        res = _run("generate", "capital-budgeting", "--n", 3, "--seed", seed, "-o", path)
        assert res.exit_code == 0, res.output
    assert a.read_text() == b.read_text() != c.read_text()  # --seed decides the instance
    res = _run("generate", "capital-budgeting", "--n", 3, "--seed", 2, "-o", a)
    assert res.exit_code == 2 and "pass --force" in res.output
    res = _run(
        "generate", "capital-budgeting", "--n", 3, "--seed", 2, "-o", a, "--force", "--quiet"
    )
    assert res.exit_code == 0 and res.output == "" and a.read_text() == c.read_text()


def test_train_force_seed_quiet_metrics_and_recorded_settings(tmp_path):
    from bilevel.robust.neur2ro import Neur2ROValueModel

    model, metrics = tmp_path / "m.pt", tmp_path / "m.json"
    args = _train_args(model, "UN", "--seed", 5)
    res = _run(*args, "--metrics", metrics, "--quiet")
    assert res.exit_code == 0, res.output
    assert "labelling" not in res.output  # --quiet: no chatter, results still printed
    record = json.loads(metrics.read_text())["metrics"]
    loaded = Neur2ROValueModel.load(model)
    assert loaded.training_info_["seed"] == 5 == record["seed"]
    assert loaded.training_info_["problem"] == "knapsack" and loaded.training_info_["type"] == "UN"
    assert record["n_samples"] == loaded.n_samples_ == 18 - record["n_infeasible_samples"]
    res = _run(*args)
    assert res.exit_code == 2 and "--output" in res.output and "pass --force" in res.output
    res = _run(*args, "--force", "--metrics", tmp_path / "missing" / "m.json")
    assert res.exit_code == 2 and "--metrics" in res.output
    res = _run(*args, "--force", "--quiet", "--jobs", 0)
    assert res.exit_code == 2 and "--jobs" in res.output


# ----------------------------------------------------------------------------- exit codes


def test_exit_codes_0_1_2_3_4(knapsack, tmp_path):
    assert _run("solve", knapsack, "--quiet").exit_code == 0
    infeasible = _infeasible_instance(tmp_path / "infeasible.json")
    assert _run("solve", infeasible, "--quiet").exit_code == 1
    assert _run("solve", knapsack, "--time-limit", "-1").exit_code == 2
    # one CCG iteration cannot close this knapsack's gap: not converged (3), result written
    out = tmp_path / "partial.json"
    res = _run("solve", knapsack, "--max-iter", 1, "--quiet", "-o", out)
    assert res.exit_code == 3, res.output
    assert json.loads(out.read_text())["status"] == "max_iterations"
    assert json.loads(out.read_text())["metrics"]["converged"] is False
    # a time limit far too short for anything: 4, result written with status time_limit
    out = tmp_path / "timed.json"
    res = _run("solve", knapsack, "--time-limit", 1e-6, "--quiet", "-o", out)
    assert res.exit_code == 4, res.output
    assert json.loads(out.read_text())["status"] == "time_limit"


def test_boolean_flags_have_no_forms(knapsack):
    on = _run("solve", knapsack, "--warm-start", "--no-quiet")
    off = _run("solve", knapsack, "--no-warm-start", "--quiet")
    assert on.exit_code == off.exit_code == 0
    assert any(line.startswith("iter ") for line in on.output.splitlines())
    assert not any(line.startswith("iter ") for line in off.output.splitlines())
    objective = [line for line in on.output.splitlines() if line.startswith("objective")]
    assert objective == [line for line in off.output.splitlines() if line.startswith("objective")]


def test_progress_is_on_by_default_and_off_with_quiet(knapsack, monkeypatch):
    from bilevel import robust

    seen = []
    real = robust.solve

    def spy(problem, method="exact", **options):
        seen.append(options["progress"])
        return real(problem, method=method, **options)

    monkeypatch.setattr(robust, "solve", spy)
    assert _run("solve", knapsack).exit_code == 0
    assert _run("solve", knapsack, "-q").exit_code == 0
    assert seen == [True, False]


# ----------------------------------------------------------------------------- results


def test_result_reports_worst_case_scenario_and_recourse(knapsack, tmp_path):
    """xi is in Xi, y is an optimal recourse of x at xi (the second-stage MILP's value),
    and the total cost there equals the reported worst case (brute force)."""
    problem = load_instance(knapsack)
    out = tmp_path / "r.json"
    res = _run("solve", knapsack, "-o", out, "--quiet")
    assert res.exit_code == 0
    assert "worst xi" in res.output and "recourse y" in res.output
    data = json.loads(out.read_text())
    x, xi, y = (np.array(data[k]) for k in ("x", "xi", "y"))
    assert problem.uncertainty.contains(xi)
    d, W, rhs = problem.recourse_data(x, xi)
    assert np.all(W @ y <= rhs + 1e-6) and np.all(y >= problem.y_lb - 1e-9)
    second = problem.second_stage_value(x, xi)
    assert float(d @ y) == pytest.approx(second.value, abs=1e-6)
    total = problem.first_stage_cost(x, xi) + second.value
    assert problem.to_objective(total) == pytest.approx(brute_force(problem).objective, rel=1e-9)


def test_plot_bounds_has_labels_and_legend(knapsack, tmp_path):
    svg = tmp_path / "bounds.svg"
    res = _run("solve", knapsack, "--plot", svg, "--quiet")
    assert res.exit_code == 0, res.output
    text = svg.read_text()
    for label in (
        "iteration",
        "worst-case profit",
        "upper bound",
        "lower bound",
        "exact worst case of returned x",
    ):
        assert label in text, label
    png = tmp_path / "bounds.png"
    assert _run("solve", knapsack, "--plot", png, "--quiet").exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an unsupported extension is a usage error before any work: nothing is written
    out = tmp_path / "never.json"
    res = _run("solve", knapsack, "--plot", tmp_path / "b.gif", "-o", out)
    assert res.exit_code == 2 and "--plot" in res.output and not out.exists()


def test_iteration_lines_never_print_nan():
    from bilevel.cli._robust import _iteration_line

    line = _iteration_line(
        {
            "iteration": 3,
            "lower_bound": math.nan,
            "upper_bound": math.nan,
            "gap": 0.25,
            "time": 1.0,
            "predicted_adversarial": 7.5,
        }
    )
    assert "nan" not in line and "LB" not in line and "predicted 7.5" in line


def test_saved_model_prints_no_training_time(tmp_path):
    model, inst = tmp_path / "m.pt", tmp_path / "i.json"
    args = _train_args(model, "SC", "--quiet")
    assert _run(*args).exit_code == 0
    assert _run("generate", "knapsack", "--n", 4, "--type", "SC", "-o", inst).exit_code == 0
    res = _run("solve", inst, "--method", "neur2ro", "--model", model, "--quiet")
    assert res.exit_code == 0, res.output
    assert "training time" not in res.output and "data generation time" not in res.output
    assert "model " in res.output and "n_samples" in res.output


def test_highs_banner_is_silenced_from_python():
    """HiGHS writes its banner from C++ to fd 1 on the process's first Highs(): a fresh
    interpreter solving through the library must print only what it prints itself."""
    code = (
        "from bilevel.robust import generate_knapsack, solve\n"
        "r = solve(generate_knapsack(5, 'UN', seed=0))\n"
        "print('status', r.status)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "status optimal\n"
    assert "HiGHS" not in out.stderr

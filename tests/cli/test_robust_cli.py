"""``bilevel robust`` commands (typer CliRunner).

Oracle for the solved values: :func:`bilevel.robust.brute_force` on the same instance file.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bilevel.cli._app import app
from bilevel.robust import brute_force, load_instance, worst_case

KNAPSACK_FILE = """4 900 1
 300 150 100 250 400
 350 120 80 300 420
 200 100 60 150 260
 280 140 90 260 330
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner, *args):
    return runner.invoke(app, ["robust", *args], catch_exceptions=False)


def test_generate_then_solve_knapsack(runner, tmp_path):
    inst = tmp_path / "inst.json"
    res = _invoke(
        runner,
        "generate",
        "knapsack",
        "--n",
        "5",
        "--type",
        "ASC",
        "--dev",
        "0.4",
        "--seed",
        "3",
        "--out",
        str(inst),
    )
    assert res.exit_code == 0, res.output
    assert "Gamma=2" in res.output
    out = tmp_path / "result.json"
    res = _invoke(runner, "solve", str(inst), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "iter    1" in res.output and "LB" in res.output and "gap" in res.output
    assert "status     optimal" in res.output
    data = json.loads(out.read_text())
    oracle = brute_force(load_instance(inst))
    assert data["objective"] == pytest.approx(oracle.objective, rel=1e-9)
    assert data["status"] == "optimal" and data["method"] == "exact"
    assert len(data["history"]["gap"]) == data["n_iter"]
    # Never overwrites: neither the result nor the instance.
    before = out.read_text()
    res = _invoke(runner, "solve", str(inst), "--out", str(out))
    assert res.exit_code == 2 and "pass --force to overwrite" in res.output
    assert out.read_text() == before
    res = _invoke(runner, "generate", "knapsack", "--n", "5", "--out", str(inst))
    assert res.exit_code == 2 and "pass --force to overwrite" in res.output


def test_solve_knapsack_text_file(runner, tmp_path):
    path = tmp_path / "RKP_tiny"
    path.write_text(KNAPSACK_FILE)
    res = _invoke(runner, "solve", str(path), "--time-limit", "60")
    assert res.exit_code == 0, res.output
    oracle = brute_force(load_instance(path))
    line = next(x for x in res.output.splitlines() if x.startswith("objective"))
    assert float(line.split()[1]) == pytest.approx(oracle.objective, rel=1e-5)


def test_generate_capital_budgeting_and_solve(runner, tmp_path):
    inst = tmp_path / "cb.json"
    res = _invoke(
        runner, "generate", "capital-budgeting", "--n", "3", "--seed", "1", "--out", str(inst)
    )
    assert res.exit_code == 0, res.output
    res = _invoke(runner, "solve", str(inst), "--quiet")
    assert res.exit_code == 0, res.output
    assert not any(line.startswith("iter ") for line in res.output.splitlines())
    assert "status     optimal" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["solve", "missing.json"], "no instance file"),
        (["solve", "{bad}", "--method", "magic"], "unknown method"),
        (["solve", "{bad}"], "malformed instance"),
        (["solve", "{bad}", "--time-limit", "-1"], "--time-limit must be positive"),
        (["solve", "{good}", "--solver", "gurobi"], "--solver must be highs or scip"),
        (["generate", "knapsack", "--type", "XX", "--out", "{new}"], "--type must be one of"),
        (["generate", "knapsack", "--dev", "2", "--out", "{new}"], "dev must lie in"),
    ],
)
def test_bad_input_fails_clearly(runner, tmp_path, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "bilevel.robust/1", "problem": "knapsack"}')
    good = tmp_path / "good"
    good.write_text(KNAPSACK_FILE)
    args = [
        a.replace("{bad}", str(bad))
        .replace("{new}", str(tmp_path / "new.json"))
        .replace("{good}", str(good))
        for a in args
    ]
    res = _invoke(runner, *args)
    assert res.exit_code == 2
    assert message in res.output
    assert not (tmp_path / "new.json").exists()


def test_infeasible_instance_exits_nonzero(runner, tmp_path):
    inst = tmp_path / "infeasible.json"
    inst.write_text(
        json.dumps(
            {
                "format": "bilevel.robust/1",
                "problem": "general",
                "c": [1.0],
                "x_types": "B",
                "d": [1.0],
                "y_types": "B",
                "W": [[1.0]],
                "T": [[1.0]],
                "h": [-0.5],
                "H": [[1.0]],
                "uncertainty": {"kind": "box", "lb": [0.0], "ub": [1.0]},
            }
        )
    )
    res = _invoke(runner, "solve", str(inst))
    assert res.exit_code == 1
    assert "status     infeasible" in res.output and "no first-stage decision" in res.output


def test_solve_neur2ro_method_prints_its_rows_and_times(runner, tmp_path, monkeypatch):
    import math

    import numpy as np

    import bilevel.robust.neur2ro as neur2ro_module
    from bilevel.robust import RobustResult

    def fake(problem, *, callback=None, **options):
        callback({"iteration": 1.0, "gap": 0.5, "time": 0.1, "predicted_adversarial": 12.0})
        x = np.zeros(problem.n_x)
        value = worst_case(problem, x).objective
        return RobustResult(
            x=x,
            objective=value,
            status="heuristic",
            lower_bound=value,
            upper_bound=math.nan,
            gap=math.nan,
            n_iter=1,
            time=0.1,
            info={"data_generation_time": 1.5, "training_time": 2.5},
            method="neur2ro",
        )

    monkeypatch.setattr(neur2ro_module, "solve_neur2ro", fake)
    path = tmp_path / "RKP_tiny"
    path.write_text(KNAPSACK_FILE)
    res = _invoke(runner, "solve", str(path), "--method", "neur2ro")
    assert res.exit_code == 0, res.output
    assert "predicted 12" in res.output
    assert "data generation time: 1.50s" in res.output and "training time: 2.50s" in res.output


@pytest.mark.parametrize("h", ["0", "101", "-40"])
def test_generate_knapsack_rejects_a_capacity_ratio_outside_1_to_H(runner, tmp_path, h):
    """--h is Pisinger's instance number: C = h / (H + 1) sum c needs 1 <= h <= H = 100.
    The generator validates it; the CLI prints its message (exit 2, no traceback: the
    runner does not catch exceptions) and writes nothing."""
    new = tmp_path / "new.json"
    res = _invoke(runner, "generate", "knapsack", "--n", "5", "--h", h, "--out", str(new))
    assert res.exit_code == 2
    assert "h must be an integer with 1 <= h <= H = 100" in res.output
    assert "Traceback" not in res.output and not new.exists()


@pytest.mark.parametrize("h", [1, 40, 80, 100])
def test_generate_knapsack_capacity_follows_h(runner, tmp_path, h):
    """Every integer 1 <= h <= 100 is a valid instance: the written capacity is
    floor(h / 101 * sum c) of the written weights (the published files' rule)."""
    import math

    inst = tmp_path / "inst.json"
    res = _invoke(runner, "generate", "knapsack", "--n", "6", "--h", str(h), "--out", str(inst))
    assert res.exit_code == 0, res.output
    meta = load_instance(inst).metadata
    assert meta["capacity"] == math.floor(h / 101 * sum(meta["items"]["c"]))
    assert 0 < meta["capacity"] < sum(meta["items"]["c"])


@pytest.mark.parametrize("h, H", [(40.5, 100), (True, 100), (5, 4), (1, 0)])
def test_generate_knapsack_h_validation_in_the_generator(h, H):
    from bilevel.robust import generate_knapsack

    with pytest.raises(ValueError, match=r"\bh must be an integer|H must be a positive"):
        generate_knapsack(4, h=h, H=H, seed=0)


def test_instances_lists_bundled_set_and_solve_accepts_a_name(runner, tmp_path):
    from bilevel.robust import published_knapsack_result

    res = _invoke(runner, "instances", "--type", "UN", "--h", "80")
    assert res.exit_code == 0, res.output
    listed = [line.split()[0] for line in res.output.splitlines() if line.startswith("RKP_")]
    assert len(listed) == 9 and all("_UN_" in n and "_h80_" in n for n in listed)
    name = "RKP_UN_n20_R1000_H100_h80_dev0.1_d0.5"
    out = tmp_path / "r.json"
    res = _invoke(runner, "solve", name, "--quiet", "--out", str(out))
    assert res.exit_code == 0, res.output
    published = published_knapsack_result(name).objective
    assert f"published  {published:.6g}" in res.output
    # the solved value (exact CCG) equals the published branch-and-price optimum
    assert float(f"{json.loads(out.read_text())['objective']:.6g}") == published
    res = runner.invoke(app, ["robust", "instances", "--type", "XX"])
    assert res.exit_code == 2 and "--type must be one of" in res.output
    res = runner.invoke(app, ["robust", "solve", "RKP_nothing"])
    assert res.exit_code == 2 and "bundled instance" in res.output


def test_train_then_solve_with_the_saved_model(runner, tmp_path):
    model = tmp_path / "kp5.pt"
    args = ["train", "--out", str(model), "--n", "5", "--type", "SC", "--instances", "3"]
    res = _invoke(runner, *args, "--n-first-stage", "4", "--n-scenarios", "3", "--epochs", "5")
    assert res.exit_code == 0, res.output
    assert model.is_file() and "wrote" in res.output
    res = runner.invoke(app, ["robust", *args])  # never overwrites
    assert res.exit_code == 2 and "pass --force to overwrite" in res.output
    inst = tmp_path / "inst.json"
    for n, path in ((5, inst), (6, tmp_path / "inst6.json")):
        gen = ["generate", "knapsack", "--n", str(n), "--type", "SC", "--out", str(path)]
        assert _invoke(runner, *gen).exit_code == 0
    out = tmp_path / "r.json"
    res = _invoke(
        runner,
        "solve",
        str(inst),
        "--method",
        "neur2ro",
        "--model",
        str(model),
        "--quiet",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert payload["info"]["model_path"] == str(model)
    # the reported objective is the exact worst case of the returned decision
    problem = load_instance(inst)
    exact = worst_case(problem, payload["x"]).objective
    assert payload["objective"] == pytest.approx(exact, rel=1e-9)
    assert payload["objective"] <= brute_force(problem).objective + 1e-6
    for extra, message in (
        (["--method", "exact", "--model", str(model)], "--method neur2ro only"),
        (["--method", "neur2ro", "--model", str(tmp_path / "none.pt")], "no model file"),
    ):
        res = runner.invoke(app, ["robust", "solve", str(inst), *extra])
        assert res.exit_code == 2 and message in res.output
    res = runner.invoke(
        app,
        [
            "robust",
            "solve",
            str(tmp_path / "inst6.json"),
            "--method",
            "neur2ro",
            "--model",
            str(model),
        ],
    )
    assert res.exit_code == 2 and "sizes" in res.output
    res = runner.invoke(app, ["robust", "train", "--out", str(tmp_path / "x.pt"), "--type", "XX"])
    assert res.exit_code == 2 and "--type must be one of" in res.output
    res = runner.invoke(
        app,
        [
            "robust",
            "train",
            "--out",
            str(tmp_path / "y.pt"),
            "--problem",
            "capital-budgeting",
            "--encoder",
            "joint",
            "--n",
            "4",
            "--instances",
            "1",
            "--n-first-stage",
            "2",
            "--n-scenarios",
            "2",
            "--epochs",
            "1",
        ],
    )
    assert res.exit_code == 2 and "aligned" in res.output

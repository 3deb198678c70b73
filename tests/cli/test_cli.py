"""The ``bilevel`` command line: run folders, result.json, convergence.png, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer

pytest.importorskip("typer")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from typer.testing import CliRunner

from bilevel.cli import _output, app, load_config_file, parse_recipe_options
from bilevel.recipes import ConfigError, HyperCleaningConfig

FAST = ["--size", "fast", "--no-progress"]
# a shorter run where only the files matter
TINY = ["--size", "fast", "--outer-steps", "1", "--no-tune-baseline", "--no-progress"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fixed_stamp(monkeypatch) -> str:
    """Every run gets the same timestamp, as if started within one second."""
    monkeypatch.setattr(_output, "timestamp", lambda now=None: "20240101-000000")
    return "20240101-000000"


def _invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_run_writes_result_json_and_plot_into_a_new_folder(runner, tmp_path):
    out = tmp_path / "runs"
    result = _invoke(runner, "run", "hyper_cleaning", *FAST, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    folders = list(out.iterdir())
    assert len(folders) == 1
    folder = folders[0]
    assert folder.name.startswith("hyper_cleaning-")
    assert sorted(p.name for p in folder.iterdir()) == ["convergence.png", "result.json"]
    payload = json.loads((folder / "result.json").read_text())
    assert payload["recipe"] == "hyper_cleaning"
    assert payload["config"] == HyperCleaningConfig(size="fast").to_dict()
    metrics = payload["metrics"]
    a, b, c = (
        metrics["test_accuracy_corrupted"],
        metrics["test_accuracy_cleaned"],
        metrics["test_accuracy_oracle"],
    )
    assert b - a >= 0.5 * (c - a)
    steps = payload["config"]["outer_steps"]
    assert payload["history"]["iteration"] == list(range(steps + 1))
    assert len(payload["history"]["val_loss"]) == steps + 1
    assert payload["versions"]["torch"] and payload["versions"]["bilevel"]
    assert payload["options_given"] == {"config_file": None, "command_line": ["--size", "fast"]}
    png = (folder / "convergence.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    # the final metrics are printed
    assert "test_accuracy_cleaned" in result.output
    assert f"{b:.6g}" in result.output


def test_runs_never_overwrite(runner, tmp_path, fixed_stamp):
    out = tmp_path / "runs"
    taken = out / f"hyper_cleaning-{fixed_stamp}"
    taken.mkdir(parents=True)
    (taken / "result.json").write_text("do not touch")

    first = _invoke(runner, "run", "hyper_cleaning", *TINY, "--output-dir", str(out))
    assert first.exit_code == 0, first.output
    first_dir = out / f"hyper_cleaning-{fixed_stamp}-1"
    first_json = (first_dir / "result.json").read_bytes()
    first_png = (first_dir / "convergence.png").read_bytes()

    second = _invoke(runner, "run", "hyper_cleaning", *TINY, "--seed", "1", "--output-dir", str(out))
    assert second.exit_code == 0, second.output
    second_dir = out / f"hyper_cleaning-{fixed_stamp}-2"
    assert json.loads((second_dir / "result.json").read_text())["config"]["seed"] == 1

    assert (taken / "result.json").read_text() == "do not touch"
    assert (first_dir / "result.json").read_bytes() == first_json
    assert (first_dir / "convergence.png").read_bytes() == first_png
    assert json.loads(first_json)["config"]["seed"] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        taken.name,
        first_dir.name,
        second_dir.name,
    ]


def test_make_run_dir_and_files_are_exclusive(tmp_path):
    a = _output.make_run_dir(tmp_path, "r", "stamp")
    b = _output.make_run_dir(tmp_path, "r", "stamp")
    assert (a.name, b.name) == ("r-stamp", "r-stamp-1")
    _output.write_json(a / "result.json", {"x": 1})
    with pytest.raises(typer.Exit) as exc:  # a usage error naming the option, file kept
        _output.write_json(a / "result.json", {"x": 2})
    assert exc.value.exit_code == _output.EXIT_USAGE
    assert json.loads((a / "result.json").read_text()) == {"x": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "hyper_cleaning", "--sise", "fast"], "unknown option --sise; did you mean --size"),
        (["run", "hyper_cleaning", "--lr", "abc"], "option --lr must be a number, got 'abc'"),
        (["run", "hyper_cleaning", "--outer-steps", "-3"], "--outer-steps must be >= 0"),
        (["run", "hyper_cleaning", "--size", "huge"], "--size must be one of"),
        (["run", "hyper_cleaning", "--tune-baseline", "maybe"], "unexpected argument 'maybe'"),
        (["run", "hyper_cleaning", "--lr"], "option --lr needs a value"),
        (["run", "hyper_cleaning", "fast"], "unexpected argument 'fast'"),
        (["run", "hyper_cleaning", "--lr", "1", "--lr", "2"], "given twice"),
        (["run", "nope"], "unknown recipe 'nope'; available: architecture_search, data_mixing, distillation, hyper_cleaning"),
        (["run", "hyperparameter", "--config", "missing.toml"], "does not exist"),
    ],
)
def test_bad_options_fail_clearly(runner, tmp_path, args, message):
    out = tmp_path / "runs"
    result = runner.invoke(app, [*args, "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())  # nothing was written


def test_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('size = "fast"\nouter-steps = 3\nlr = 0.5\n')
    assert load_config_file(toml, "hyper_cleaning") == {"size": "fast", "outer_steps": 3, "lr": 0.5}
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"recipe": "hyper_cleaning", "config": {"seed": 4}}))
    assert load_config_file(js, "hyper_cleaning") == {"seed": 4}  # a previous result.json
    with pytest.raises(ConfigError, match="is for recipe 'hyper_cleaning', not 'hyperparameter'"):
        load_config_file(js, "hyperparameter")
    bad = tmp_path / "c.yaml"
    bad.write_text("size: fast")
    with pytest.raises(ConfigError, match=r"must end in \.json or \.toml"):
        load_config_file(bad, "hyper_cleaning")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(broken, "hyper_cleaning")
    opts = parse_recipe_options(
        ["--size=fast", "--no-tune-baseline", "--lr", "-0.5", "--n_train", "100"],
        HyperCleaningConfig,
    )
    assert opts == {"size": "fast", "tune_baseline": False, "lr": "-0.5", "n_train": "100"}


def test_config_file_with_command_line_override(runner, tmp_path, fixed_stamp):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('size = "fast"\nouter_steps = 1\ntune_baseline = false\nseed = 7\n')
    out = tmp_path / "runs"
    result = _invoke(
        runner, "run", "hyper_cleaning", "--config", str(cfg), "--seed", "2", "--no-progress",
        "--output-dir", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads((out / f"hyper_cleaning-{fixed_stamp}" / "result.json").read_text())
    assert payload["config"]["seed"] == 2  # the command line wins
    assert payload["config"]["outer_steps"] == 1 and payload["config"]["tune_baseline"] is False
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = -1\n")
    result = runner.invoke(app, ["run", "hyper_cleaning", "--config", str(bad), "-o", str(out)])
    assert result.exit_code == 2 and "--lr must be > 0" in result.output


def test_list_and_demo(runner):
    result = _invoke(runner, "list")
    assert result.exit_code == 0
    assert "hyperparameter" in result.output and "hyper_cleaning" in result.output
    result = _invoke(runner, "list", "--options")
    assert "--outer-steps" in result.output and "--inner-solver" in result.output
    result = _invoke(runner, "demo", "--fast")
    assert result.exit_code == 0, result.output
    assert "grid_val_loss" in result.output and "test_accuracy" in result.output
    assert "hyperparameter: verdict" in result.output and "validation loss: per-feature" in (
        result.output
    )


def test_python_dash_m_bilevel():
    proc = subprocess.run(
        [sys.executable, "-m", "bilevel", "list"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "hyper_cleaning" in proc.stdout


def test_a_result_with_extra_plots_writes_them_into_the_run_folder(tmp_path, capsys):
    """The optional ``extra_plots(run_dir)`` hook of any recipe's result."""
    from bilevel.cli._app import execute
    from bilevel.recipes import RECIPES, Recipe

    base = RECIPES["hyper_cleaning"]

    def extra_plots(self, run_dir):
        path = run_dir / "extra.png"
        path.write_bytes(PNG_MAGIC)
        return [path]

    def runner(config, progress=False):
        result = base.runner(config, progress=progress)
        result.__class__ = type("WithExtra", (type(result),), {"extra_plots": extra_plots})
        return result

    recipe = Recipe(name=base.name, summary=base.summary, config_cls=base.config_cls, runner=runner)
    run_dir = execute(recipe, {"size": "fast", "outer_steps": 1, "tune_baseline": False}, tmp_path, False)
    assert sorted(p.name for p in run_dir.iterdir()) == ["convergence.png", "extra.png", "result.json"]
    assert "(result.json, convergence.png, extra.png)" in capsys.readouterr().out


def test_a_run_with_convergence_warnings_exits_3(monkeypatch, tmp_path, runner):
    """Nothing silent: a recipe run that emits a ConvergenceWarning (here injected into the
    hyperparameter recipe's runner) still prints and saves its results, records the warning
    in result.json, and exits with code 3 instead of 0."""
    import dataclasses
    import warnings

    from bilevel.cli import _app
    from bilevel.errors import ConvergenceWarning
    from bilevel.recipes import RECIPES

    recipe = RECIPES["hyperparameter"]
    real = recipe.runner

    def warning_runner(config, progress=False):
        result = real(config, progress=progress)
        warnings.warn("inner solver stopped at maxiter", ConvergenceWarning, stacklevel=1)
        return result

    monkeypatch.setitem(
        RECIPES, "hyperparameter", dataclasses.replace(recipe, runner=warning_runner)
    )
    result = _invoke(
        runner,
        "run",
        "hyperparameter",
        "--size",
        "fast",
        "--outer-steps",
        "1",
        "--output-dir",
        str(tmp_path),
    )
    assert result.exit_code == _app.EXIT_NOT_CONVERGED == 3, result.output
    assert "test_accuracy" in result.output
    (saved,) = tmp_path.glob("hyperparameter-*/result.json")
    assert json.loads(saved.read_text())["convergence_warnings"] == [
        "inner solver stopped at maxiter"
    ]

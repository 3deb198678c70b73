"""The conventions every computing command shares (``run``, ``demo``, ``dag fit``):
``-o/--output``, ``--force``, ``--seed``, ``--quiet``, ``--flag/--no-flag``, exit codes 0/2/3/4,
error messages in option names, lazy imports. A stand-in recipe (instant, with a chosen
status) isolates the command line from the experiments; one real run checks the wiring."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("typer")
pytest.importorskip("matplotlib")

from typer.testing import CliRunner

from bilevel.cli import _app, _output, app
from bilevel.errors import ConvergenceWarning
from bilevel.recipes import RECIPES, Recipe, RecipeConfig
from bilevel.recipes._config import option


@dataclass(frozen=True)
class StubConfig(RecipeConfig):
    seed: int = option(0, "seed", minimum=0)
    status: str = option("converged", "status the stub reports")
    warn: bool = option(False, "emit a ConvergenceWarning")


@dataclass
class StubResult:
    config: StubConfig
    status: str
    history: dict[str, list[float]] = field(default_factory=dict)
    PLOT: ClassVar[tuple[str, ...]] = ("val_accuracy", ("val_loss", "test_loss"))

    def metrics(self) -> dict[str, Any]:
        return {"seed": self.config.seed, "value": 1.5}

    def reference_lines(self) -> dict[str, dict[str, float]]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "metrics": self.metrics(),
                "history": self.history}  # fmt: skip


def _stub_runner(config: StubConfig, progress: bool = False) -> StubResult:
    if config.warn:
        warnings.warn("stub did not converge", ConvergenceWarning, stacklevel=1)
    history = {"iteration": [0, 1], "val_accuracy": [0.5, 0.6], "val_loss": [1.0, 0.5],
               "test_loss": [1.1, 0.6]}  # fmt: skip
    return StubResult(config, config.status, history)


@pytest.fixture
def stub(monkeypatch) -> str:
    monkeypatch.setitem(RECIPES, "stub", Recipe("stub", "a stand-in", StubConfig, _stub_runner))
    return "stub"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _run(runner: CliRunner, *args: Any):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_output_folder_and_the_overwrite_policy(runner, stub, tmp_path):
    out = tmp_path / "my-run"
    first = _run(runner, "run", stub, "-o", out, "--seed", 3)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == ["convergence.png", "result.json"]
    payload = json.loads((out / "result.json").read_text())
    assert payload["config"]["seed"] == 3 and payload["metrics"] == {"seed": 3, "value": 1.5}

    again = _run(runner, "run", stub, "-o", out, "--seed", 4)
    assert again.exit_code == 2 and "--force" in again.output
    assert json.loads((out / "result.json").read_text())["config"]["seed"] == 3  # untouched

    forced = _run(runner, "run", stub, "-o", out, "--seed", 4, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "result.json").read_text())["config"]["seed"] == 4

    both = _run(runner, "run", stub, "-o", tmp_path / "x", "--output-dir", tmp_path / "y")
    assert both.exit_code == 2 and "not both" in both.output
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert _run(runner, "run", stub, "-o", a_file, "--force").exit_code == 2


def test_every_axis_of_the_convergence_plot_is_labelled(tmp_path):
    from matplotlib.figure import Figure

    captured: list[Figure] = []
    real_savefig = Figure.savefig

    def savefig(self, *args, **kwargs):
        captured.append(self)
        return real_savefig(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", savefig)
        _output.plot_convergence(tmp_path / "c.png", "t", _stub_runner(StubConfig()).history,
                                 StubResult.PLOT)  # fmt: skip
    axes = captured[0].axes
    assert [ax.get_ylabel() for ax in axes] == ["val accuracy", "loss"]
    assert all(ax.get_xlabel() == "outer iteration" for ax in axes)
    assert _output.axis_label(["a_b", "c_d"]) == "a_b, c_d"


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        ([], 0, None),
        (["--warn", "true"], 3, "did not converge"),
        (["--status", "time_limit"], 4, "time limit"),
        (["--status", "time_limit", "--warn"], 4, "time limit"),
    ],
)
def test_exit_codes(runner, stub, tmp_path, options, code, message):
    result = _run(runner, "run", stub, *options, "--output-dir", tmp_path)
    assert result.exit_code == code, result.output
    assert "value" in result.output  # the metrics are printed whatever the code
    assert len(list(tmp_path.iterdir())) == 1  # ... and written
    if message:
        assert message in result.output


def test_exit_code_rule():
    assert _output.exit_code() == _output.EXIT_OK == 0
    assert _output.exit_code("converged", True) == 0
    assert _output.exit_code("max_iterations", False) == _output.EXIT_NOT_CONVERGED == 3
    assert _output.exit_code(None, None, ["inner solve"]) == 3
    assert _output.exit_code("time_limit", False, ["x"]) == _output.EXIT_TIME_LIMIT == 4


def test_boolean_options_take_flag_no_flag_and_values(stub):
    cls = RECIPES[stub].config_cls
    for args, expected in [
        (["--warn"], True),
        (["--no-warn"], False),
        (["--warn", "false"], False),
        (["--warn", "TRUE"], True),
        (["--warn=no"], False),
    ]:
        options = _app.parse_recipe_options(args, cls)
        assert cls.from_options(options).warn is expected, args
    # a non-boolean word after a flag is not swallowed
    with pytest.raises(ValueError, match="unexpected argument 'maybe'"):
        _app.parse_recipe_options(["--warn", "maybe"], cls)


def test_errors_name_command_line_options(runner, stub, tmp_path):
    result = runner.invoke(app, ["run", stub, "--sed", "1", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown option --sed; did you mean --seed?" in result.output
    assert "(valid options: --size, --seed, --status, --warn)" in result.output
    result = runner.invoke(app, ["run", stub, "--seed", "-1", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--seed must be >= 0" in result.output
    assert "'seed'" not in result.output
    result = runner.invoke(app, ["run", "hyper_cleaning", "--n-train", "x", "-o", str(tmp_path)])
    assert "option --n-train must be an integer" in result.output and "n_train" not in result.output


def test_quiet_keeps_results_and_drops_chatter(runner, stub, tmp_path):
    loud = _run(runner, "run", stub, "--output-dir", tmp_path / "a")
    quiet = _run(runner, "run", stub, "--output-dir", tmp_path / "b", "--quiet")
    assert "running stub" in loud.output and "results written" in loud.output
    assert "running stub" not in quiet.output and "results written" not in quiet.output
    assert "value" in quiet.output and (next((tmp_path / "b").iterdir()) / "result.json").exists()


def test_seed_needs_a_recipe_with_a_seed(runner, monkeypatch, tmp_path):
    @dataclass(frozen=True)
    class NoSeed(RecipeConfig):
        pass

    monkeypatch.setitem(RECIPES, "noseed", Recipe("noseed", "", NoSeed, _stub_runner))
    result = runner.invoke(app, ["run", "noseed", "--seed", "1", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--seed: recipe 'noseed' has no seed option" in result.output


def test_demo_saves_by_default_and_follows_the_conventions(runner, monkeypatch, tmp_path):
    hyper = RECIPES["hyperparameter"]
    seen: list[Any] = []

    def fake(config, progress=False):
        seen.append((config, progress))
        return _stub_runner(StubConfig(seed=config.seed))

    monkeypatch.setitem(RECIPES, "hyperparameter", dataclasses.replace(hyper, runner=fake))
    monkeypatch.chdir(tmp_path)
    result = _run(runner, "demo", "--fast", "--seed", 5, "--quiet")
    assert result.exit_code == 0, result.output
    (folder,) = Path("runs").iterdir()
    assert json.loads((folder / "result.json").read_text())["metrics"]["seed"] == 5
    config, progress = seen[0]
    assert config.size == "fast" and config.seed == 5 and progress is False
    out = tmp_path / "demo-out"
    assert _run(runner, "demo", "-o", out).exit_code == 0
    assert _run(runner, "demo", "-o", out).exit_code == 2
    assert _run(runner, "demo", "-o", out, "--force").exit_code == 0


def test_list_shows_the_options_by_default(runner):
    full = _run(runner, "list")
    assert "--outer-steps" in full.output and "--tune-baseline" in full.output
    brief = _run(runner, "list", "--no-options")
    assert "hyper_cleaning" in brief.output and "--outer-steps" not in brief.output


def test_help_does_not_import_torch():
    """``bilevel --help`` (and importing the package or its CLI) loads no PyTorch; the
    recipes are imported inside the commands."""
    code = (
        "import sys, bilevel, bilevel.cli\n"
        "from bilevel.cli import app\n"
        "print(sorted(m for m in ('torch', 'scipy', 'sklearn', 'bilevel.recipes') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert proc.stdout.strip() == "[]"
    proc = subprocess.run([sys.executable, "-m", "bilevel", "--help"], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0 and "run" in proc.stdout and "dag" in proc.stdout


def test_lazy_top_level_names():
    import bilevel

    assert bilevel.solve is bilevel.methods.solve
    assert bilevel.BilevelResult.__name__ == "BilevelResult"
    assert {"dag", "solve", "BilevelProblem"} <= set(dir(bilevel))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bilevel.nope  # noqa: B018


def test_bilevel_result_repr_is_a_summary():
    import torch

    from bilevel.problem import BilevelResult

    r = BilevelResult(
        x={"a": torch.zeros(300, dtype=torch.float32), "b": torch.ones(2)},
        y=torch.zeros(5, 5, dtype=torch.float64),
        status="max_iterations",
        message="stopped",
        n_iter=500,
        history={"iteration": list(range(501)), "upper_value": [0.25] * 501},
        info={"gap": 1.0},
    )
    text = repr(r)
    assert len(text) < 400, text
    for part in ("status='max_iterations'", "n_iter=500", "tensor(shape=(300,), float32)",
                 "tensor([1, 1])", "tensor(shape=(5, 5), float64)", "501 records",
                 "upper_value=0.25", "['gap']"):  # fmt: skip
        assert part in text, (part, text)


# ------------------------------------------------------------------------------------------
# dag fit
# ------------------------------------------------------------------------------------------


def _data(tmp_path: Path, sep: str) -> Path:
    from bilevel.dag.simulate import simulate_dag, simulate_linear_sem, simulate_parameter

    rng = np.random.default_rng(1)
    B = simulate_dag(4, 3, "ER", rng)
    X = simulate_linear_sem(simulate_parameter(B, rng=rng), 300, "gauss", rng=rng)
    path = tmp_path / f"data-{ord(sep)}.csv"
    np.savetxt(path, X, delimiter=sep, header=sep.join("abcd"), comments="")
    return path


@pytest.mark.parametrize("sep", [",", ";", "\t", " "])
def test_dag_fit_sniffs_the_separator_and_writes_json_and_lf_csv(runner, tmp_path, sep):
    data = _data(tmp_path, sep)
    out, graph = tmp_path / "r.json", tmp_path / "g.csv"
    result = _run(runner, "dag", "fit", data, "-o", out, "--graph", graph, "--quiet")
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["nodes"] == list("abcd") and "converged" in payload["metrics"]
    assert b"\r" not in graph.read_bytes()
    # the same table read with the separator given explicitly
    name = {",": ",", ";": ";", "\t": "tab", " ": "space"}[sep]
    again = _run(runner, "dag", "fit", data, "-o", out, "--delimiter", name, "--force", "-q")
    assert again.exit_code == 0 and json.loads(out.read_text())["edges"] == payload["edges"]


def test_dag_fit_output_rules(runner, tmp_path, monkeypatch):
    data = _data(tmp_path, ",")
    monkeypatch.chdir(tmp_path)
    assert _run(runner, "dag", "fit", data, "-q").exit_code == 0
    assert Path("graph.csv").exists()  # the default when nothing else is asked for
    out = tmp_path / "r.json"
    wrong = _run(runner, "dag", "fit", data, "-o", out, "--plot", tmp_path / "g.xyz")
    assert wrong.exit_code == 2 and "--plot: unsupported format '.xyz'" in wrong.output
    assert not out.exists()  # checked before anything is computed or written
    bad = _run(runner, "dag", "fit", data, "-o", out, "--delimiter", "x")
    assert bad.exit_code == 2 and "--delimiter must be one of" in bad.output
    assert _run(runner, "dag", "fit", data, "-o", out, "-q").exit_code == 0
    again = _run(runner, "dag", "fit", data, "-o", out, "-q")
    assert again.exit_code == 2 and "--output" in again.output and "--force" in again.output


def test_dag_simulate_writes_lf_line_endings(runner, tmp_path):
    data, true = tmp_path / "d.csv", tmp_path / "t.csv"
    result = _run(runner, "dag", "simulate", "--out", data, "--graph-out", true, "-d", 3, "-s", 2)
    assert result.exit_code == 0, result.output
    assert b"\r" not in data.read_bytes() and b"\r" not in true.read_bytes()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--graph", "er"], "--graph"),
        (["--graph", "SF", "--nodes", "3", "--edges", "9"], "--graph SF"),
        (["--nodes", "4", "--edges", "7"], "--edges 7"),
        (["--noise", "cauchy"], "--noise"),
        (["--sem", "gp"], "--sem"),
        (["--nodes", "1"], "--nodes"),
    ],
)
def test_dag_simulate_errors_use_option_names(runner, tmp_path, args, option):
    result = runner.invoke(app, ["dag", "simulate", "--out", str(tmp_path / "d.csv"),
                                 "--graph-out", str(tmp_path / "t.csv"), *args])  # fmt: skip
    assert result.exit_code == 2 and option in result.output, result.output
    for internal in ("s0", "graph_type", "noise_type", "sem_type", "Traceback"):
        assert internal not in result.output

"""``bilevel dag simulate`` and ``bilevel dag fit`` end to end on tiny data (typer CliRunner)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from bilevel.cli import app
from bilevel.cli._dag import read_data_csv, read_matrix_csv
from bilevel.dag.metrics import count_accuracy
from bilevel.dag.simulate import simulate_dag, simulate_linear_sem, simulate_parameter


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _ok(runner: CliRunner, *args: str):
    result = runner.invoke(app, ["dag", *args])
    assert result.exit_code == 0, result.output
    return result


def _error(runner: CliRunner, message: str, *args: str) -> None:
    result = runner.invoke(app, ["dag", *args])
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and message in result.output, result.output
    assert "Traceback" not in result.output


def test_simulate_then_fit_recovers_graph(runner, tmp_path):
    data, true, out, png = (tmp_path / n for n in ("d.csv", "t.csv", "g.csv", "g.png"))
    _ok(runner, "simulate", "--out", str(data), "--graph-out", str(true), "-d", "6", "-s", "6",
        "-n", "500", "--seed", "1")  # fmt: skip
    X, names = read_data_csv(data)
    assert X.shape == (500, 6) and names == [f"X{k}" for k in range(6)]
    W_true = read_matrix_csv(true, names)
    # the written files are the library's simulation with the same seed, digit for digit
    rng = np.random.default_rng(1)
    W_lib = simulate_parameter(simulate_dag(6, 6, "ER", rng), rng=rng)
    np.testing.assert_array_equal(W_true, W_lib)
    np.testing.assert_array_equal(X, simulate_linear_sem(W_lib, 500, rng=rng))

    result = _ok(runner, "fit", str(data), "--out", str(out), "--plot", str(png), "--truth",
                 str(true), "--no-progress")  # fmt: skip
    W = read_matrix_csv(out, names)
    acc = count_accuracy(W_true, W)
    assert f"SHD {acc['shd']}," in result.output
    assert acc["shd"] == 0  # easy instance: equal variances, n = 500, d = 6
    assert png.stat().st_size > 1000
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == ["", *names]


def test_fit_header_detection_and_names(runner, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    X[:, 1] += 1.5 * X[:, 0]
    X[:, 2] -= 1.2 * X[:, 1]
    bare, named = tmp_path / "bare.csv", tmp_path / "named.csv"
    np.savetxt(bare, X, delimiter=",")
    np.savetxt(named, X, delimiter=",", header="a,b,c", comments="")
    _ok(runner, "fit", str(bare), "--out", str(tmp_path / "g1.csv"), "--no-progress")
    _ok(runner, "fit", str(named), "--out", str(tmp_path / "g2.csv"), "--no-progress")
    W1 = read_matrix_csv(tmp_path / "g1.csv", ["X0", "X1", "X2"])
    W2 = read_matrix_csv(tmp_path / "g2.csv", ["a", "b", "c"])
    np.testing.assert_array_equal(W1, W2)
    assert np.count_nonzero(W1) == 2
    # --no-header on a file with names: the names are not numbers
    _error(runner, "is not a number", "fit", str(named), "--no-header", "--out",
           str(tmp_path / "g3.csv"))  # fmt: skip


def test_fit_never_overwrites(runner, tmp_path):
    data = tmp_path / "d.csv"
    np.savetxt(data, np.random.default_rng(0).normal(size=(50, 3)), delimiter=",")
    out = tmp_path / "g.csv"
    out.write_text("keep me")
    _error(runner, "--force", "fit", str(data), "--out", str(out))
    assert out.read_text() == "keep me"
    png = tmp_path / "g.png"
    png.write_text("keep me too")
    _error(runner, "exists", "fit", str(data), "--out", str(tmp_path / "new.csv"), "--plot",
           str(png))  # fmt: skip
    assert not (tmp_path / "new.csv").exists()  # refused before fitting anything
    _ok(runner, "fit", str(data), "--out", str(out), "--force", "--no-progress")
    assert out.read_text().startswith(",X0,X1,X2")
    _error(runner, "different files", "fit", str(data), "--out", str(out), "--plot", str(out),
           "--force")  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n3,nan\n", "NaN or inf"),
        ("a,b\n1,2\n3\n", "1 fields, expected 2"),
        ("a,b\n1,2\n3,x\n", "'x' is not a number"),
        ("a,a\n1,2\n3,4\n", "distinct"),
        ("a,b\n", "no data rows"),
    ],
)
def test_fit_bad_csv(runner, tmp_path, content, message):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    _error(runner, message, "fit", str(data), "--out", str(tmp_path / "g.csv"))
    assert not (tmp_path / "g.csv").exists()


def test_fit_bad_options_and_data(runner, tmp_path):
    data = tmp_path / "d.csv"
    X = np.random.default_rng(0).normal(size=(30, 3))
    X[:, 2] = 1.0
    np.savetxt(data, X, delimiter=",")
    out = str(tmp_path / "g.csv")
    _error(runner, "--score", "fit", str(data), "--out", out, "--score", "l0")
    _error(runner, "--w-threshold", "fit", str(data), "--out", out, "--w-threshold", "-1")
    _error(runner, "exactly one", "fit", "--out", out)
    _error(runner, "exactly one", "fit", str(data), "--sachs", "--out", out)
    _error(runner, "constant", "fit", str(data), "--out", out, "--standardize")
    # the estimator's own checks reach the user as one line (constant column)
    _error(runner, "constant", "fit", str(data), "--out", out)
    # logistic score on non-binary data
    np.savetxt(data, np.random.default_rng(1).normal(size=(30, 3)), delimiter=",")
    _error(runner, "binary", "fit", str(data), "--out", out, "--score", "logistic")
    _error(runner, "--sem", "simulate", "--out", str(tmp_path / "x.csv"), "--sem", "gp")


def test_fit_sachs(runner, tmp_path):
    out = tmp_path / "sachs.csv"
    result = _ok(runner, "fit", "--sachs", "--out", str(out), "--no-progress")
    assert "against the 18-edge consensus network: SHD" in result.output
    names = ["praf", "pmek", "plcg", "PIP2", "PIP3", "p44/42", "pakts473", "PKA", "PKC", "P38",
             "pjnk"]  # fmt: skip
    W = read_matrix_csv(out, names)
    from bilevel.dag.datasets import load_sachs

    X, B, _ = load_sachs(standardize=False)
    shd = count_accuracy(B, W)["shd"]
    assert f"SHD {shd}," in result.output
    # the default is the raw data (the equal-variance score's assumption is about units)
    from bilevel.dag.topo import TopoSearch

    np.testing.assert_allclose(W, TopoSearch(random_state=0).fit(X).adjacency_)


def test_output_may_not_replace_the_input_data_even_with_force(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1.0,2.0\n2.0,3.5\n3.0,1.0\n4.0,7.0\n")
    before = data.read_text()
    result = CliRunner().invoke(app, ["dag", "fit", str(data), "--out", str(data), "--force"])
    assert result.exit_code == 2
    assert "must differ from the DATA file" in result.output
    assert data.read_text() == before


def test_score_penalties_from_the_command_line(tmp_path):
    """--l2 reaches the score: the ridge weights differ from the unpenalised ones and are
    smaller in norm; a penalty the score does not have is refused before any output."""
    runner = CliRunner()
    data, truth = tmp_path / "d.csv", tmp_path / "t.csv"
    sim = ["dag", "simulate", "--out", str(data), "--graph-out", str(truth)]
    assert runner.invoke(app, sim).exit_code == 0
    outs = {}
    for label, extra in (("plain", []), ("ridge", ["--l2", "1.0"])):
        outs[label] = tmp_path / f"{label}.csv"
        cmd = ["dag", "fit", str(data), "--out", str(outs[label]), "--no-progress", *extra]
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, result.output
    names = [f"X{i}" for i in range(10)]
    plain, ridge = (read_matrix_csv(outs[k], names) for k in ("plain", "ridge"))
    assert np.abs(ridge).sum() < np.abs(plain).sum()
    bad_out = tmp_path / "h.csv"
    bad = runner.invoke(
        app, ["dag", "fit", str(data), "--out", str(bad_out), "--score", "nv", "--l2", "0.1"]
    )
    assert bad.exit_code == 2
    assert "--l2" in bad.output and not bad_out.exists()


def _small_data(tmp_path, seed=0, n=300):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    X[:, 1] += 1.5 * X[:, 0]
    X[:, 2] -= 1.2 * X[:, 1]
    X[:, 3] += 0.9 * X[:, 0]
    data = tmp_path / "d.csv"
    np.savetxt(data, X, delimiter=",", header="a,b,c,e", comments="")
    return data


def test_fit_json_result_with_metrics_and_stability(runner, tmp_path):
    import json

    data = _small_data(tmp_path)
    truth = tmp_path / "t.csv"
    truth.write_text(",a,b,c,e\na,0,1.5,0,0.9\nb,0,0,-1.2,0\nc,0,0,0,0\ne,0,0,0,0\n")
    out, js = tmp_path / "g.csv", tmp_path / "g.json"
    result = _ok(runner, "fit", str(data), "--out", str(out), "--json", str(js), "--truth",
                 str(truth), "--bootstrap", "3", "--jobs", "1", "--no-progress")  # fmt: skip
    payload = json.loads(js.read_text())
    W = read_matrix_csv(out, ["a", "b", "c", "e"])
    assert {(e["source"], e["target"]) for e in payload["edges"]} == {
        ("abce"[i], "abce"[j]) for i, j in zip(*np.nonzero(W), strict=True)
    }
    m = payload["metrics"]
    for key in ("shd", "shd_cpdag", "tpr", "fdr", "fpr", "nnz", "score", "converged", "time_s"):
        assert key in m
    assert m["shd"] == count_accuracy(read_matrix_csv(truth, list("abce")), W)["shd"]
    assert all(0 <= e["stability"] <= 1 for e in payload["edges"])
    assert "CPDAG-level SHD" in result.output and "bootstrap stability (3 fits)" in result.output
    assert payload["settings"]["standardize"] is False


def test_fit_prior_knowledge_from_the_command_line(runner, tmp_path):
    data = _small_data(tmp_path)
    out = tmp_path / "g.csv"
    _ok(runner, "fit", str(data), "--out", str(out), "--forbid", "a->b", "--require", "c->e",
        "--no-progress")  # fmt: skip
    W = read_matrix_csv(out, list("abce"))
    assert W[0, 1] == 0 and W[2, 3] != 0
    _ok(runner, "fit", str(data), "--out", str(out), "--tier", "c", "--tier", "a,b",
        "--no-progress", "--force")  # fmt: skip
    W = read_matrix_csv(out, list("abce"))
    assert W[0, 2] == 0 and W[1, 2] == 0  # no edge into the first tier
    g = str(tmp_path / "h.csv")
    _error(runner, "--require", "fit", str(data), "--out", g, "--require", "a-b")
    _error(runner, "unknown node 'z'", "fit", str(data), "--out", g, "--forbid", "a->z")
    _error(runner, "--tier", "fit", str(data), "--out", g, "--tier", "a", "--tier", "a")
    _error(runner, "both required and forbidden", "fit", str(data), "--out", g, "--require",
           "a->b", "--forbid", "a->b")  # fmt: skip
    _error(runner, "cycle", "fit", str(data), "--out", g, "--require", "a->b,b->a")
    _error(runner, "--prune bic", "fit", str(data), "--out", g, "--prune", "bic", "--score",
           "mlp")  # fmt: skip
    _error(runner, "--plot", "fit", str(data), "--out", g, "--plot", str(tmp_path / "p.xyz"))
    assert not (tmp_path / "h.csv").exists()


def test_standardizing_for_an_equal_variance_score_warns(runner, tmp_path):
    data = _small_data(tmp_path)
    result = _ok(runner, "fit", str(data), "--out", str(tmp_path / "g.csv"), "--standardize",
                 "--no-progress")  # fmt: skip
    assert "Warning: the 'ls' score assumes equal noise variances" in result.output


def test_simulate_errors_name_the_options(runner, tmp_path):
    out = ["--out", str(tmp_path / "x.csv"), "--graph-out", str(tmp_path / "y.csv")]
    _error(runner, "--edges 50 exceeds", "simulate", *out, "-d", "5", "-s", "50")
    _error(runner, "--graph must be ER or SF", "simulate", *out, "--graph", "BA")
    _error(runner, "--graph SF", "simulate", *out, "--graph", "SF", "-d", "5", "-s", "40")
    result = runner.invoke(app, ["dag", "simulate", *out, "-d", "5", "-s", "50"])
    assert "s0" not in result.output and "graph_type" not in result.output


def test_mlp_progress_advances_and_exit_code_on_stalled_search(runner, tmp_path, monkeypatch):
    from bilevel.cli import _dag

    seen = []
    original = _dag._Progress.__call__

    def spy(self, phase, done, total):
        seen.append((phase, done))
        return original(self, phase, done, total)

    monkeypatch.setattr(_dag._Progress, "__call__", spy)
    data = _small_data(tmp_path, n=120)
    _ok(runner, "fit", str(data), "--out", str(tmp_path / "g.csv"), "--score", "mlp")
    fits = [done for phase, done in seen if phase == "search"]
    assert fits and fits[-1] > 1 and fits == sorted(fits)  # the counter advances
    # a search stopped at its iteration limit: results written, warning, exit status 3
    from bilevel.dag import topo

    monkeypatch.setattr(topo.TopoSearch, "__init__", _with_max_iter(topo.TopoSearch.__init__))
    result = runner.invoke(app, ["dag", "fit", str(data), "--out", str(tmp_path / "h.csv"),
                                 "--no-progress"])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "Warning:" in result.output and (tmp_path / "h.csv").exists()


def _with_max_iter(init):
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.max_iter = 1
        self.init = "random"

    return wrapped


def test_plot_has_a_legend_metrics_in_the_title_and_fitting_labels():
    from bilevel.dag.plotting import plot_graph

    W = np.array([[0, 1.0, 0], [0, 0, -0.5], [0, 0, 0]])
    B = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]])
    fig = plot_graph(W, ["first_long_name", "b", "c"], B_true=B, title="t",
                     stability=np.full((3, 3), 0.5))  # fmt: skip
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"correct edge", "reversed edge", "extra edge", "missing true edge"} <= set(labels)
    assert any(label.startswith("|weight|") for label in labels)
    assert "SHD" in ax.get_title() and "TPR" in ax.get_title()
    # every label is inside its node circle
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    nodes = [c for c in ax.collections if c.get_zorder() == 3][0]
    diameter_px = 2 * np.sqrt(nodes.get_sizes()[0]) / 2 * fig.dpi / 72
    for text in ax.texts:
        if text.get_text() in ("first_long_name", "b", "c"):
            assert text.get_window_extent(renderer).width < diameter_px

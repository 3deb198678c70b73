"""The self_tuning and architecture_search recipes: the issue's STN target at the default
settings on two seeds (benchmarks/self_tuning.py records five), the metric contracts, the
architecture search's derived and random cells, and bad input."""

from __future__ import annotations

import math

import pytest

from bilevel.nn.darts import Genotype
from bilevel.recipes import RECIPES, ConfigError


@pytest.mark.parametrize("seed", [0, 1])
def test_self_tuning_meets_its_target_from_log_weight_decay_three(seed: int) -> None:
    result = RECIPES["self_tuning"](seed=seed)
    m = result.metrics()
    assert result.config.start_log_weight_decay == 3.0
    assert m["val_loss"] <= 1.03 * m["grid_best_val_loss"]
    assert m["random_search_best_val_loss"] >= m["grid_best_val_loss"] * 0.5  # same-compute baselines ran
    assert m["test_accuracy"] >= 0.94
    # the three hyperparameters moved online, as lists (the first entry is after one hyper step)
    for key in ("weight_decay_schedule", "dropout_schedule", "input_noise_schedule"):
        assert isinstance(m[key], list) and len(m[key]) == len(m["schedule_steps"])
        assert all(math.isfinite(v) for v in m[key])
    assert m["weight_decay_schedule"][0] == pytest.approx(math.exp(3.0), rel=0.05)
    assert m["weight_decay_schedule"][-1] < math.exp(3.0) / 4  # far from its start
    assert m["steps_per_trial"] * 27 <= m["budget_steps"]
    d = result.to_dict()
    assert set(d["metrics"]) >= {"val_loss", "test_accuracy", "grid_best_val_loss", "random_search_best_val_loss"}
    assert len(d["details"]["grid"]) == 27 and len(d["details"]["random_search"]) == 27


@pytest.mark.parametrize("method", ["first_order", "rarts"])
def test_architecture_search_reports_a_cell_and_a_random_cell_of_its_size(method: str) -> None:
    result = RECIPES["architecture_search"](size="fast", method=method, n_random=2, retrain_seeds=1)
    m = result.metrics()
    assert set(m) >= {"architecture", "test_accuracy", "search_time", "random_architecture_test_accuracy"}
    assert isinstance(result.genotype, Genotype) and m["architecture"] == str(result.genotype)
    assert m["test_accuracy"] >= 0.9 and m["random_architecture_test_accuracy"] >= 0.5
    assert m["random_parameters"] == m["parameters"]  # the same size, exactly
    assert m["search_time"] > 0
    assert len(result.history["iteration"]) == result.config.search_steps


def test_architecture_search_second_order_runs() -> None:
    m = RECIPES["architecture_search"](
        size="fast", method="second_order", search_steps=3, retrain_steps=3, n_random=1, retrain_seeds=1
    ).metrics()
    assert m["method"] == "second_order" and m["search_time"] > 0


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("self_tuning", {"n_train": 1500}, "exceeds the 1797"),
        ("self_tuning", {"start_dropout": 0.95}, "'start_dropout' must be <= 0.9"),
        ("self_tuning", {"grid_points": 1}, "'grid_points' must be >= 2"),
        ("architecture_search", {"method": "enas"}, "'method' must be one of"),
        ("architecture_search", {"batch_size": 600}, "'batch_size'"),
        ("architecture_search", {"n_train": 1500}, "exceeds the 1797"),
    ],
)
def test_bad_options_name_the_option(name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RECIPES[name](options)


def test_plot_cell_draws_a_png(tmp_path) -> None:
    from bilevel.recipes.architecture_search import plot_cell

    genotype = Genotype(3, ((1, 0, "relu"), (2, 0, "skip_connect"), (2, 1, "tanh"), (3, 0, "linear"), (3, 2, "sigmoid")))
    path = tmp_path / "cell.png"
    plot_cell(genotype, path, "a cell")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        plot_cell(genotype, path)

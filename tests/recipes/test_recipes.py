"""Recipes: hyper-cleaning gap recovery, hyperparameter optimisation, configs, registry."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("sklearn")

from bilevel.recipes import (
    RECIPES,
    ConfigError,
    HyperCleaningConfig,
    HyperCleaningResult,
    HyperparameterConfig,
    HyperparameterResult,
    get_recipe,
)
from bilevel.recipes import hyper_cleaning as hc
from bilevel.recipes import hyperparameter as hp
from bilevel.recipes._common import torch_threads


@pytest.fixture(scope="module")
def cleaning() -> HyperCleaningResult:
    return RECIPES["hyper_cleaning"]({"size": "fast"})


@pytest.fixture(scope="module")
def hpo() -> HyperparameterResult:
    return RECIPES["hyperparameter"]({"size": "fast"})


# --------------------------------------------------------------------------------------
# Hyper-cleaning
# --------------------------------------------------------------------------------------


def test_hyper_cleaning_recovers_most_of_the_gap(cleaning):
    a = cleaning.test_accuracy_corrupted
    b = cleaning.test_accuracy_cleaned
    c = cleaning.test_accuracy_oracle
    assert c - a >= 0.05, (a, c)  # the corruption costs accuracy
    assert b - a >= 0.5 * (c - a), (a, b, c)
    assert cleaning.gap_recovered == pytest.approx((b - a) / (c - a))
    # the stronger baseline (noisy labels, penalty tuned on validation accuracy) loses too
    assert b > cleaning.test_accuracy_corrupted_tuned


def test_hyper_cleaning_learns_to_down_weight_corrupted_examples(cleaning):
    m = cleaning.metrics()
    assert m["weight_corrupted_mean"] < 0.5 < m["weight_clean_mean"]
    assert m["detection_auc"] > 0.85
    h = cleaning.history
    steps = cleaning.config.outer_steps
    assert all(len(v) == steps + 1 for v in h.values())
    assert h["iteration"] == list(range(steps + 1))
    assert h["val_loss"][-1] < 0.5 * h["val_loss"][0]
    assert h["val_loss"][0] == pytest.approx(m["val_loss_corrupted"], rel=0.3)
    assert all(t1 >= t0 for t0, t1 in zip(h["time"], h["time"][1:]))
    assert len(cleaning.weights) == len(cleaning.corrupted) == cleaning.config.n_train
    assert sum(cleaning.corrupted) == cleaning.config.n_train // 2


def test_hyper_cleaning_result_is_json(cleaning):
    d = json.loads(json.dumps(cleaning.to_dict(), allow_nan=False))
    assert d["config"]["size"] == "fast"
    assert d["metrics"]["test_accuracy_cleaned"] == cleaning.test_accuracy_cleaned
    assert set(d["history"]) >= {"iteration", "val_loss", "hypergrad_norm", "time"}


def test_corruption_is_seeded_and_always_wrong():
    d1 = hc.load_data(200, 50, 50, corruption=0.5, seed=3)
    d2 = hc.load_data(200, 50, 50, corruption=0.5, seed=3)
    assert torch.equal(d1["y_train_noisy"], d2["y_train_noisy"])
    mask = d1["corrupted"]
    assert int(mask.sum()) == 100
    assert bool((d1["y_train_noisy"][mask] != d1["y_train"][mask]).all())
    assert torch.equal(d1["y_train_noisy"][~mask], d1["y_train"][~mask])
    d3 = hc.load_data(200, 50, 50, corruption=0.5, seed=4)
    assert not torch.equal(d1["corrupted"], d3["corrupted"])


def test_hyper_cleaning_with_gradient_descent_inner_solver():
    result = RECIPES["hyper_cleaning"](
        size="fast",
        n_train=120,
        n_val=60,
        n_test=100,
        outer_steps=2,
        inner_solver="gd",
        inner_tol=1e-6,
        tune_baseline=False,
    )
    h = result.history["val_loss"]
    assert len(h) == 3 and h[-1] < h[0]
    assert math.isnan(result.test_accuracy_corrupted_tuned)


# --------------------------------------------------------------------------------------
# Hyperparameter optimisation
# --------------------------------------------------------------------------------------


def test_hpo_beats_the_grid_on_validation(hpo):
    assert hpo.val_loss <= hpo.grid_val_loss + 1e-3
    assert hpo.history["val_loss"][0] == pytest.approx(hpo.grid_val_loss, rel=1e-6)
    assert len(hpo.history["val_loss"]) == hpo.config.outer_steps + 1
    cfg = hpo.config
    assert all(
        cfg.min_strength * (1 - 1e-9) <= s <= cfg.max_strength * (1 + 1e-9) for s in hpo.strengths
    )
    assert len(hpo.strengths) == 30 + cfg.noise_features
    assert 0.9 <= hpo.test_accuracy <= 1.0 and 0.9 <= hpo.grid_test_accuracy <= 1.0
    assert json.loads(json.dumps(hpo.to_dict(), allow_nan=False))["metrics"]["val_loss"] > 0


def test_default_demo_shows_which_approach_wins():
    """The settings of `make demo` (60 noise features, 20% training data): the per-feature
    strengths win on validation loss, test loss and test accuracy, the grid's best shared
    strength is interior to its grid, the noise features get larger strengths than the
    real ones, and the summary says so in words."""
    result = RECIPES["hyperparameter"]({})
    m = result.metrics()
    assert result.grid_interior and m["grid_best_interior"] == 1.0
    assert result.val_loss < result.grid_val_loss
    assert result.test_loss < result.grid_test_loss
    assert result.test_accuracy > result.grid_test_accuracy
    assert m["noise_strength_median"] > 5 * m["real_strength_median"]
    summary = result.summary()
    assert "interior to its grid" in summary[0]
    assert [line.endswith("per-feature strengths wins") for line in summary[2:]] == [True] * 3


def test_summary_reports_a_grid_optimum_on_its_edge():
    config = HyperparameterConfig(
        size="fast", grid_min_strength=1.0, min_strength=1.0, outer_steps=1, grid_size=3
    )
    result = hp.run(config)
    assert not result.grid_interior and result.grid_strength == pytest.approx(1.0)
    assert "ON THE EDGE of its grid [1, 1000]" in result.summary()[0]


def _newton_val_loss(theta, data, init):
    """Validation loss at the inner solution polished by Newton's method (machine precision)."""
    X, y = data["X_train"], data["y_train"]
    grad = torch.func.grad(hp.train_loss)
    hess = torch.func.jacrev(grad)
    w = init.clone()
    for _ in range(5):
        w = w - torch.linalg.solve(hess(w, theta, X, y), grad(w, theta, X, y))
    assert float(grad(w, theta, X, y).norm()) < 1e-12
    return float(hp.cross_entropy(w, data["X_val"], data["y_val"]))


def test_hpo_hypergradient_matches_central_finite_difference():
    data = hp.load_data(0)
    gen = torch.Generator().manual_seed(0)
    theta = math.log(0.1) + 2.0 * torch.rand(30, generator=gen, dtype=torch.float64)
    config = HyperparameterConfig(size="fast")
    solver = hp.make_solver(config.inner_tol, config.inner_maxiter, config.linear_tol)
    with torch_threads(1):
        _, grad, w = hp.hypergradient(theta, data, solver)
        assert grad.dtype == torch.float64
        for j in (int(grad.abs().argmax()), 0):  # largest component and the first one
            h = 1e-4
            e = torch.zeros(30, dtype=torch.float64)
            e[j] = h
            fd = (_newton_val_loss(theta + e, data, w) - _newton_val_loss(theta - e, data, w)) / (
                2 * h
            )
            assert abs(float(grad[j]) - fd) <= 1e-5 * abs(fd), (j, float(grad[j]), fd)


# --------------------------------------------------------------------------------------
# Configs and registry
# --------------------------------------------------------------------------------------


def test_registry():
    assert set(RECIPES) == {
        "hyperparameter", "hyper_cleaning", "svm_hyperparameters", "reweighting", "data_mixing",
        "pruning", "distillation", "self_tuning", "architecture_search", "trigger",
    }
    assert get_recipe("hyper-cleaning") is RECIPES["hyper_cleaning"]
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; available: architecture_search, data_mixing, distillation"):
        get_recipe("nope")
    for recipe in RECIPES.values():
        assert recipe.summary
        recipe.config_cls()  # defaults are valid
        recipe.config_cls(size="fast")


def test_presets_and_overrides():
    assert HyperCleaningConfig().n_train == 800
    fast = HyperCleaningConfig(size="fast")
    assert (fast.n_train, fast.outer_steps) == (300, 12)
    assert HyperCleaningConfig(size="fast", outer_steps=3).outer_steps == 3
    cfg = RECIPES["hyper_cleaning"].config({"size": "fast", "outer-steps": "4"}, lr="0.25")
    assert (cfg.outer_steps, cfg.lr, cfg.n_train) == (4, 0.25, 300)
    assert cfg.replace(seed=2).seed == 2 and cfg.seed == 0
    assert HyperCleaningConfig.from_options({"tune_baseline": "false"}).tune_baseline is False
    assert RECIPES["hyper_cleaning"].config(cfg) is cfg


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (HyperCleaningConfig, {"sise": "fast"}, r"unknown option 'sise'; did you mean 'size'\?"),
        (HyperCleaningConfig, {"size": "huge"}, r"'size' must be one of \['default', 'fast'\]"),
        (HyperCleaningConfig, {"lr": "fast"}, r"'lr' must be a number, got 'fast'"),
        (HyperCleaningConfig, {"lr": 0}, r"'lr' must be > 0"),
        (HyperCleaningConfig, {"outer_steps": 2.5}, r"'outer_steps' must be an integer"),
        (HyperCleaningConfig, {"seed": True}, r"'seed' must be an integer"),
        (HyperCleaningConfig, {"corruption": 1.5}, r"'corruption' must be <= 1.0"),
        (HyperCleaningConfig, {"inner_solver": "sgd"}, r"'inner_solver' must be one of 'lbfgs'"),
        (HyperCleaningConfig, {"tune_baseline": "maybe"}, r"'tune_baseline' must be a boolean"),
        (HyperCleaningConfig, {"reg": "nan"}, r"'reg' must be finite"),
        (HyperCleaningConfig, {"n_train": 1500}, r"exceeds the 1797 digits images"),
        (HyperparameterConfig, {"max_strength": 1e-3}, r"'max_strength' .* must exceed"),
        (HyperparameterConfig, {"grid_size": 0}, r"'grid_size' must be >= 1"),
    ],
)
def test_invalid_options_are_rejected_clearly(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        cls.from_options(options)


def test_recipe_rejects_a_config_of_another_recipe():
    with pytest.raises(ConfigError, match="takes a HyperCleaningConfig"):
        RECIPES["hyper_cleaning"](HyperparameterConfig())
    with pytest.raises(ConfigError, match="options must be a mapping"):
        RECIPES["hyper_cleaning"](["size", "fast"])


def test_torch_threads_restores_the_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before

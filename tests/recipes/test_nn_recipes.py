"""The deep-learning recipes: targets of the issue at their default settings on two seeds
(the benchmark, benchmarks/nn_recipes.py, records ten), mechanics, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bilevel.recipes import RECIPES, ConfigError
from bilevel.recipes.data_mixing import MarkovSource
from bilevel.recipes.reweighting import corrupt_labels, long_tail


@pytest.mark.parametrize("seed", [0, 1])
def test_reweighting_meets_its_target_at_40_percent_noise(seed: int) -> None:
    m = RECIPES["reweighting"](seed=seed).metrics()
    assert m["test_accuracy"] >= 0.93
    assert m["test_accuracy"] > m["baseline_test_accuracy"] + 0.15
    assert m["clean_weight_mean"] >= m["noisy_weight_mean"] + 0.5
    assert m["clean_test_accuracy"] >= m["test_accuracy"] - 0.05


def test_reweighting_network_and_imbalance_variants_run() -> None:
    m = RECIPES["reweighting"](weighting="network").metrics()
    assert m["clean_weight_mean"] > m["noisy_weight_mean"]
    m = RECIPES["reweighting"](size="fast", imbalance=10.0, noise=0.0).metrics()
    assert np.isnan(m["noisy_weight_mean"])
    assert m["minority_weight_mean"] > m["majority_weight_mean"]


def test_label_noise_and_long_tail_are_exact() -> None:
    rng = np.random.default_rng(0)
    y = torch.arange(1000) % 10
    noisy = corrupt_labels(y, 0.4, rng)
    changed = (noisy != y).float().mean().item()
    assert 0.32 < changed < 0.40  # 40% resampled uniformly: 9/10 of them change
    index, minority = long_tail(y, 10.0, np.random.default_rng(1))
    counts = torch.bincount(y[index], minlength=10)
    assert counts.max().item() == 100 and counts.min().item() == 10
    assert minority.sum().item() == counts.sort().values[:5].sum().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_data_mixing_finds_the_matching_source(seed: int) -> None:
    m = RECIPES["data_mixing"](size="fast", seed=seed).metrics()
    assert m["source_weights"][m["target_source"]] >= 0.8
    assert abs(sum(m["source_weights"]) - 1) < 1e-6
    assert m["val_loss"] <= m["uniform_val_loss"]


def test_markov_source_statistics_match_its_table() -> None:
    rng = np.random.default_rng(0)
    src = MarkovSource(5, 1, rng)
    seqs = src.sample(4000, 12, np.random.default_rng(1)).numpy()
    counts = np.zeros((5, 5))
    for a, b in zip(seqs[:, :-1].ravel(), seqs[:, 1:].ravel()):
        counts[a, b] += 1
    empirical = counts / counts.sum(1, keepdims=True)
    assert np.abs(empirical - src.table).max() < 0.03


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("reweighting", {"noise": 1.5}, "'noise' must be <= 1.0"),
        ("reweighting", {"weighting": "magic"}, "'weighting' must be one of"),
        ("reweighting", {"n_train": 1500}, "exceeds the 1797"),
        ("data_mixing", {"target_source": 7}, "'target_source' must be < n_sources"),
        ("data_mixing", {"alpha": 0}, "'alpha' must be > 0"),
    ],
)
def test_bad_options_name_the_option(name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RECIPES[name](options)

"""Digits data and small networks shared by the deep-learning recipes.

scikit-learn's 8x8 ``digits`` (1797 images, 10 classes, bundled with the package: nothing
is downloaded) split with a fixed seed, stratified, and standardised with the training
part's statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

N_CLASSES = 10
N_DIGITS = 1797
DTYPE = torch.float32


@dataclass(frozen=True)
class Split:
    """Standardised features ``X_*`` (float32) and labels ``y_*`` (int64)."""

    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor


def load_digits_split(n_train: int, n_val: int, n_test: int, seed: int) -> Split:
    """Stratified split of digits into ``n_train`` / ``n_val`` / ``n_test`` images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if n_train + n_val + n_test > N_DIGITS:
        raise ValueError(
            f"n_train + n_val + n_test = {n_train + n_val + n_test} exceeds the {N_DIGITS} "
            "digits images"
        )
    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, train_size=n_train, random_state=seed, stratify=y
    )
    X_val, X_test, y_val, y_test = train_test_split(
        X_rest, y_rest, train_size=n_val, test_size=n_test, random_state=seed, stratify=y_rest
    )
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0

    def features(A: np.ndarray) -> Tensor:
        return torch.tensor((A - mean) / std, dtype=DTYPE)

    def labels(v: np.ndarray) -> Tensor:
        return torch.tensor(v, dtype=torch.int64)

    return Split(
        features(X_train), labels(y_train), features(X_val), labels(y_val),
        features(X_test), labels(y_test),
    )


def mlp(hidden: int, seed: int, n_in: int = 64, n_out: int = N_CLASSES) -> nn.Sequential:
    """``Linear(n_in, hidden) - ReLU - Linear(hidden, n_out)``, initialised from ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out)).to(DTYPE)
    finally:
        torch.random.set_rng_state(generator_state)


@torch.no_grad()
def accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    """Fraction of ``argmax model(X) == y``."""
    return float((model(X).argmax(dim=1) == y).float().mean())


def train(
    model: nn.Module, loss: Callable[[nn.Module], Tensor], steps: int, lr: float, momentum: float
) -> nn.Module:
    """``steps`` full-batch SGD steps on ``loss(model)`` (the recipes' baselines)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss(model).backward()
        opt.step()
    return model

"""L2 strength of logistic regression on breast_cancer: hypergradient descent through
implicit differentiation vs a fine grid search (issue oracle: within 0.5 % of the grid)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from bilevel.recipes._common import torch_threads
from bilevel.solvers import LBFGS


def _data():
    X, y = load_breast_cancer(return_X_y=True)
    # a small training set, so that the best strength is interior to the grid
    X_train, X_val, y_train, y_val = train_test_split(
        X, y, train_size=80, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(X_train)

    def design(A):
        return torch.tensor(np.hstack([scaler.transform(A), np.ones((len(A), 1))]))

    return (
        design(X_train),
        torch.tensor(y_train, dtype=torch.float64),
        design(X_val),
        torch.tensor(y_val, dtype=torch.float64),
    )


def test_hypergradient_descent_matches_fine_grid_search():
    X_train, y_train, X_val, y_val = _data()
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def train_loss(w, log_strength, X, y):
        return bce(X @ w, y) + 0.5 * torch.exp(log_strength) * (w[:-1] ** 2).sum()

    inner = LBFGS(train_loss, tol=1e-8)

    def validation_loss(log_strength):
        w, _ = inner.run(torch.zeros(X_train.shape[1]), log_strength, X_train, y_train)
        return bce(X_val @ w, y_val)

    with torch_threads(1):
        grid = torch.linspace(-8.0, 3.0, 111)  # log-strength step 0.1
        with torch.no_grad():
            grid_losses = torch.stack([validation_loss(g) for g in grid])
        best = int(grid_losses.argmin())
        assert 0 < best < len(grid) - 1, (
            "the grid optimum must be interior for this test to mean anything"
        )

        log_strength = torch.tensor(0.0, requires_grad=True)
        optimizer = torch.optim.Adam([log_strength], lr=0.2)
        for _ in range(100):
            optimizer.zero_grad()
            validation_loss(log_strength).backward()
            optimizer.step()
        final = float(validation_loss(log_strength.detach()))
    assert final <= 1.005 * float(grid_losses[best])
    assert abs(float(log_strength.detach()) - float(grid[best])) <= 0.2

"""Recipe: per-feature L2 regularisation of logistic regression by implicit hypergradients.

Problem: the breast_cancer data bundled with scikit-learn (30 features) with
``noise_features`` irrelevant columns of standard Gaussian noise appended (60 by default),
split into training, validation and test parts (``train_fraction``, then halves of the
rest; stratified, fixed seed), standardised on the training part::

    min_theta  L_val(w*(theta))          (validation cross-entropy)
    s.t.       w*(theta) = argmin_w L_train(w) + 1/2 sum_j exp(theta_j) w_j^2

with one L2 strength ``exp(theta_j)`` per feature (the intercept is unpenalised), each kept
in ``[min_strength, max_strength]`` by projection. The inner problem is solved by L-BFGS
(:class:`bilevel.solvers.LBFGS`, SciPy's L-BFGS-B on PyTorch gradients); the hypergradient
``d L_val / d theta`` comes from the implicit function theorem (conjugate gradient on the
Hessian), so no inner iteration is differentiated. The outer optimiser is projected Adam on
``theta``, started from the best shared strength of a grid search, which is also the
baseline: one strength for all features, chosen on the validation loss over
``[grid_min_strength, max_strength]`` (by default ten times wider at the bottom than the
per-feature box ``[min_strength, max_strength]``, so the baseline gets the wider search;
the result records whether the grid's best is interior; when it lies below
``min_strength`` the per-feature search starts from ``min_strength``).

Why per-feature strengths matter here: a single strength must both leave the 30 real
features free and shrink the noise ones, which a small training set (20% of 569 samples
by default) lets overfit; per-feature strengths can do both. The result compares the two
approaches on validation and test loss and accuracy, and :meth:`HyperparameterResult.summary`
says which wins on each.

Use :func:`run` (or ``bilevel.recipes.RECIPES["hyperparameter"]``) with a
:class:`HyperparameterConfig`; ``size="fast"`` is a shorter run for tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from bilevel.recipes._common import (
    BestIterate,
    Progress,
    conjugate_gradient,
    jsonable,
    torch_threads,
)
from bilevel.recipes._config import ConfigError, RecipeConfig, option
from bilevel.solvers import LBFGS

__all__ = [
    "LOG_STRENGTH_MAX",
    "LOG_STRENGTH_MIN",
    "HyperparameterConfig",
    "HyperparameterResult",
    "accuracy",
    "cross_entropy",
    "hypergradient",
    "load_data",
    "run",
    "train_loss",
]

DTYPE = torch.float64
#: breast_cancer's own features (the noise features follow them).
N_REAL_FEATURES = 30
LOG_STRENGTH_MIN, LOG_STRENGTH_MAX = float(np.log(1e-2)), float(np.log(1e2))


# --------------------------------------------------------------------------------------
# Data and objectives
# --------------------------------------------------------------------------------------


def load_data(
    seed: int = 0, noise_features: int = 0, train_fraction: float = 0.6
) -> dict[str, torch.Tensor]:
    """breast_cancer with ``noise_features`` standard Gaussian columns appended (drawn from
    ``numpy.random.default_rng(seed)``), split ``train_fraction`` / rest halved into
    validation and test (stratified, ``random_state=seed``), standardised on the training
    part, with a column of ones appended (intercept); float64 tensors."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    if noise_features:
        noise = np.random.default_rng(seed).standard_normal((len(X), noise_features))
        X = np.hstack([X, noise])
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, train_size=train_fraction, random_state=seed, stratify=y
    )
    X_val, X_test, y_val, y_test = train_test_split(
        X_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest
    )
    scaler = StandardScaler().fit(X_train)

    def design(A: np.ndarray) -> torch.Tensor:
        A = scaler.transform(A)
        return torch.tensor(np.hstack([A, np.ones((len(A), 1))]), dtype=DTYPE)

    def target(v: np.ndarray) -> torch.Tensor:
        return torch.tensor(v, dtype=DTYPE)

    return {
        "X_train": design(X_train),
        "y_train": target(y_train),
        "X_val": design(X_val),
        "y_val": target(y_val),
        "X_test": design(X_test),
        "y_test": target(y_test),
    }


def train_loss(
    w: torch.Tensor, log_strength: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Mean logistic loss + 1/2 sum_j exp(theta_j) w_j^2 (intercept unpenalised)."""
    data = torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y)
    return data + 0.5 * (torch.exp(log_strength) * w[:-1] ** 2).sum()


def cross_entropy(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss of the linear model ``X @ w``."""
    return torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y)


def accuracy(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct predictions ``X @ w > 0``."""
    return float(((X @ w > 0).to(DTYPE) == y).to(DTYPE).mean())


def make_solver(tol: float = 1e-7, maxiter: int = 2000, linear_tol: float = 1e-10) -> LBFGS:
    """The inner solver: L-BFGS on :func:`train_loss`, implicit differentiation by CG."""
    return LBFGS(train_loss, tol=tol, maxiter=maxiter, linear_solve=conjugate_gradient(linear_tol))


def hypergradient(
    log_strength: torch.Tensor,
    data: dict[str, torch.Tensor],
    solver: LBFGS,
    init: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """``(L_val(w*(theta)), d L_val / d theta, w*(theta))`` by implicit differentiation."""
    theta = log_strength.detach().clone().requires_grad_(True)
    if init is None:
        init = torch.zeros(data["X_train"].shape[1], dtype=DTYPE)
    w, _ = solver.run(init.detach(), theta, data["X_train"], data["y_train"])
    loss = cross_entropy(w, data["X_val"], data["y_val"])
    (grad,) = torch.autograd.grad(loss, theta)
    return float(loss.detach()), grad, w.detach()


# --------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HyperparameterConfig(RecipeConfig):
    """Options of the per-feature L2 hyperparameter-optimisation recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"outer_steps": 30, "grid_size": 31},
        "fast": {"outer_steps": 10, "grid_size": 16},
    }

    seed: int = option(0, "seed of the split and of the noise features", minimum=0)
    noise_features: int = option(
        60, "irrelevant Gaussian features appended to the 30 of breast_cancer", minimum=0
    )
    train_fraction: float = option(
        0.2,
        "training fraction of the 569 samples (the rest: validation and test halves)",
        minimum=0.05,
        maximum=0.9,
    )
    outer_steps: int = option(None, "hypergradient (Adam) steps", minimum=0)
    lr: float = option(
        0.3, "Adam learning rate on the log-strengths", minimum=0.0, exclusive_minimum=True
    )
    grid_size: int = option(None, "shared-strength grid-search points", minimum=1)
    min_strength: float = option(
        1e-2, "lower bound of each L2 strength", minimum=0.0, exclusive_minimum=True
    )
    max_strength: float = option(1e3, "upper bound of each L2 strength and of the grid")
    grid_min_strength: float = option(
        1e-3,
        "lower end of the grid (below min_strength: a wider search for the baseline)",
        minimum=0.0,
        exclusive_minimum=True,
    )
    inner_tol: float = option(
        1e-7, "L-BFGS tolerance on the gradient norm", minimum=0.0, exclusive_minimum=True
    )
    inner_maxiter: int = option(2000, "L-BFGS iteration budget", minimum=1)
    linear_tol: float = option(
        1e-10, "relative tolerance of CG in the implicit backward pass", minimum=0.0
    )
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        for low in ("min_strength", "grid_min_strength"):
            if not self.max_strength > getattr(self, low):
                raise ConfigError(
                    f"option 'max_strength' ({self.max_strength}) must exceed "
                    f"'{low}' ({getattr(self, low)})"
                )


@dataclass
class HyperparameterResult:
    """Outcome of the hyperparameter recipe.

    ``val_loss``/``test_loss``/``test_accuracy`` are those of the per-feature strengths
    learned by hypergradient descent, at the outer iterate of lowest validation loss
    (early stopping: ``best_iteration``; ``last_val_loss`` is the last iterate's, and a
    last iterate more than 1 % worse than the best is a ConvergenceWarning and
    ``converged: False``); ``grid_*`` those of the best shared strength
    (``grid_interior``: whether it lies strictly inside the grid). ``strengths`` lists the
    30 real features first, then the noise ones. ``history`` has one
    entry per outer iterate ``theta_0 .. theta_K`` (``theta_0``: the grid's best), with the
    validation loss, the norm of its hypergradient ``g``, the projected-gradient norm
    ``||theta - P(theta - g)||`` (zero at a stationary point of the box-constrained
    problem; strengths held at a bound keep ``||g||`` away from zero) and the seconds since
    the outer loop started.
    """

    config: HyperparameterConfig
    val_loss: float
    test_loss: float
    test_accuracy: float
    grid_val_loss: float
    grid_test_loss: float
    grid_test_accuracy: float
    grid_strength: float
    grid_interior: bool
    strengths: list[float]
    history: dict[str, list[float]]
    grid: dict[str, list[float]] = field(default_factory=dict)
    best_iteration: int = 0
    last_val_loss: float = math.nan
    converged: bool = True
    runtime: float = 0.0

    #: panels of the convergence plot (history keys; a tuple shares one panel)
    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = (
        "val_loss",
        ("hypergrad_norm", "projected_hypergrad_norm"),
    )

    def metrics(self) -> dict[str, float]:
        s = np.asarray(self.strengths)
        real, noise = s[:N_REAL_FEATURES], s[N_REAL_FEATURES:]
        lo, hi = self.config.min_strength, self.config.max_strength
        return {
            "val_loss": self.val_loss,
            "best_iteration": self.best_iteration,
            "last_val_loss": self.last_val_loss,
            "converged": self.converged,
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "grid_val_loss": self.grid_val_loss,
            "grid_test_loss": self.grid_test_loss,
            "grid_test_accuracy": self.grid_test_accuracy,
            "grid_strength": self.grid_strength,
            "grid_best_interior": float(self.grid_interior),
            "strength_min": float(s.min()),
            "strength_median": float(np.median(s)),
            "strength_max": float(s.max()),
            "real_strength_median": float(np.median(real)),
            "noise_strength_median": float(np.median(noise)) if noise.size else math.nan,
            "strengths_at_lower_bound": float(np.sum(s <= lo * (1 + 1e-6))),
            "strengths_at_upper_bound": float(np.sum(s >= hi * (1 - 1e-6))),
            "final_hypergrad_norm": self.history["hypergrad_norm"][-1],
            "final_projected_hypergrad_norm": self.history["projected_hypergrad_norm"][-1],
            "runtime_s": self.runtime,
        }

    def summary(self) -> list[str]:
        """Plain sentences: which approach wins on validation and on test."""

        def verdict(tuned: float, grid: float, lower_is_better: bool) -> str:
            if tuned == grid:
                return "tie"
            better = tuned < grid if lower_is_better else tuned > grid
            return "per-feature strengths" if better else "grid search"

        n = len(self.strengths)
        m = self.metrics()
        grid_place = "interior to" if self.grid_interior else "ON THE EDGE of"
        lines = [
            (
                f"grid search: one shared strength for all {n} features ({N_REAL_FEATURES} "
                f"real, {n - N_REAL_FEATURES} noise), best {self.grid_strength:.3g}, "
                f"{grid_place} its grid "
                f"[{self.config.grid_min_strength:g}, {self.config.max_strength:g}]"
            ),
            (
                f"per-feature: {n} strengths in [{self.config.min_strength:g}, "
                f"{self.config.max_strength:g}], median {m['real_strength_median']:.3g} on "
                f"the real features and {m['noise_strength_median']:.3g} on the noise ones; "
                f"{m['strengths_at_lower_bound']:.0f} at the lower bound, "
                f"{m['strengths_at_upper_bound']:.0f} at the upper one"
            ),
        ]
        for label, tuned, grid, lower in (
            ("validation loss", self.val_loss, self.grid_val_loss, True),
            ("test loss      ", self.test_loss, self.grid_test_loss, True),
            ("test accuracy  ", self.test_accuracy, self.grid_test_accuracy, False),
        ):
            lines.append(
                f"{label}: per-feature {tuned:.4f} vs grid {grid:.4f} -> "
                f"{verdict(tuned, grid, lower)} wins"
            )
        return lines

    def reference_lines(self) -> dict[str, dict[str, float]]:
        """Horizontal lines for the convergence plot: the grid-search baseline."""
        return {"val_loss": {"grid search (shared strength)": self.grid_val_loss}}

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {"strengths": self.strengths, "grid": self.grid},
            }
        )


# --------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------


def run(
    config: HyperparameterConfig | None = None, *, progress: bool = False
) -> HyperparameterResult:
    """Grid search over a shared strength, then per-feature hypergradient descent."""
    config = config if config is not None else HyperparameterConfig()
    if not isinstance(config, HyperparameterConfig):
        raise TypeError(f"expected a HyperparameterConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _run(config: HyperparameterConfig, progress: bool) -> HyperparameterResult:
    start_all = time.perf_counter()
    torch.manual_seed(config.seed)
    data = load_data(config.seed, config.noise_features, config.train_fraction)
    n_features = data["X_train"].shape[1]
    lo, hi = math.log(config.min_strength), math.log(config.max_strength)
    inner = make_solver(config.inner_tol, config.inner_maxiter, config.linear_tol)

    def solve(theta: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        return inner.run(init.detach(), theta, data["X_train"], data["y_train"])[0]

    def val_loss(w: torch.Tensor) -> torch.Tensor:
        return cross_entropy(w, data["X_val"], data["y_val"])

    # Baseline: one shared strength chosen by grid search on the validation loss (warm
    # started along the grid), then re-solved from zero at the best value.
    grid = torch.linspace(math.log(config.grid_min_strength), hi, config.grid_size, dtype=DTYPE)
    w = torch.zeros(n_features, dtype=DTYPE)
    grid_losses = []
    desc = "hyperparameter: grid search (shared strength)"
    with torch.no_grad(), Progress(config.grid_size, desc, progress) as grid_bar:
        for log_lam in grid:
            w = solve(torch.full((n_features - 1,), float(log_lam), dtype=DTYPE), w)
            grid_losses.append(float(val_loss(w)))
            grid_bar.update(val_loss=grid_losses[-1])
        best = int(np.argmin(grid_losses))
        w_grid = solve(
            torch.full((n_features - 1,), float(grid[best]), dtype=DTYPE),
            torch.zeros(n_features, dtype=DTYPE),
        )
    grid_val = float(val_loss(w_grid))
    grid_acc = accuracy(w_grid, data["X_test"], data["y_test"])
    grid_test = float(cross_entropy(w_grid, data["X_test"], data["y_test"]))

    # Bilevel: one strength per feature, projected Adam on the log-strengths.
    start = min(max(float(grid[best]), lo), hi)  # the grid may extend below the box
    theta = torch.full((n_features - 1,), start, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    history: dict[str, list[float]] = {
        "iteration": [],
        "val_loss": [],
        "hypergrad_norm": [],
        "projected_hypergrad_norm": [],
        "time": [],
    }
    w = w_grid.detach()
    early = BestIterate()  # early stopping on the validation loss
    start = time.perf_counter()
    with Progress(config.outer_steps, "hyperparameter: hypergradient descent", progress) as bar:
        for k in range(config.outer_steps + 1):
            optimizer.zero_grad()
            w = solve(theta, w)
            loss = val_loss(w)
            loss.backward()  # implicit differentiation through the L-BFGS solution
            w = w.detach()
            grad_norm = float(theta.grad.norm())
            with torch.no_grad():  # stationarity on the box: || theta - P(theta - grad) ||
                moved = (theta - theta.grad).clamp(lo, hi)
                projected_norm = float((theta - moved).norm())
            history["iteration"].append(k)
            history["val_loss"].append(float(loss.detach()))
            history["hypergrad_norm"].append(grad_norm)
            history["projected_hypergrad_norm"].append(projected_norm)
            history["time"].append(time.perf_counter() - start)
            early.update(k, history["val_loss"][-1], lambda w=w: (theta.detach().clone(), w))
            if k == config.outer_steps:
                break
            optimizer.step()
            with torch.no_grad():  # projection onto the box of strengths
                theta.clamp_(lo, hi)
            bar.update(val_loss=float(loss.detach()), hypergrad=grad_norm)

    settled = not early.warn_if_unsettled("hyperparameter (hypergradient descent)")
    theta_best, w = early.state
    return HyperparameterResult(
        config=config,
        val_loss=early.value,
        test_loss=float(cross_entropy(w, data["X_test"], data["y_test"])),
        test_accuracy=accuracy(w, data["X_test"], data["y_test"]),
        grid_val_loss=grid_val,
        grid_test_loss=grid_test,
        grid_test_accuracy=grid_acc,
        grid_strength=float(math.exp(float(grid[best]))),
        grid_interior=0 < best < config.grid_size - 1,
        strengths=torch.exp(theta_best).tolist(),
        history=history,
        grid={"strength": torch.exp(grid).tolist(), "val_loss": grid_losses},
        best_iteration=early.iteration,
        last_val_loss=history["val_loss"][-1],
        converged=settled,
        runtime=time.perf_counter() - start_all,
    )

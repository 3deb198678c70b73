"""Recipe: data hyper-cleaning of noisy labels by implicit hypergradients.

Setting (scikit-learn's 8x8 ``digits``, 10 classes, 64 pixels standardised on the training
part, with a constant feature for the intercept). A stratified split with a fixed seed
gives ``n_train`` training, ``n_val`` validation and ``n_test`` test images. A fraction
``corruption`` (default 50%) of the training examples, drawn with the same seed, get a
*wrong* label: one of the nine other classes uniformly at random (so exactly that fraction
of the training labels is wrong). Validation and test labels are clean.

Bilevel problem, one weight per training example, ``omega_i = sigmoid(a_i)`` in (0, 1)::

    min_a   CE_val(W*(a))                                      (validation cross-entropy)
    s.t.    W*(a) = argmin_W  1/n sum_i sigmoid(a_i) CE(x_i^T W, y~_i) + reg/2 ||W||^2

``W`` is a 65 x 10 multinomial logistic regression (linear model, intercept included in the
penalty so the inner problem is strongly convex). The inner problem is solved by L-BFGS (or
accelerated gradient descent, ``inner_solver="gd"``) warm-started from the previous outer
step; ``d CE_val / d a`` comes from the implicit function theorem (CG on the Hessian). The
outer loop is Adam on the logits ``a`` (started at 0, every weight 1/2).

Reported test accuracies, all with the same ``reg`` and inner solver:

(a) ``test_accuracy_corrupted``: every training example, weight 1, noisy labels;
(b) ``test_accuracy_cleaned``: weights learned by hyper-cleaning, noisy labels;
(c) ``test_accuracy_oracle``: every training example with its *correct* label (clean-label
    oracle); ``test_accuracy_clean_subset`` also reports training only on the examples
    whose label was not corrupted.

The default ``reg = 0.03`` is the value of the grid ``BASELINE_REGS`` with the lowest
validation cross-entropy for (a) at both sizes, so (a) is not handicapped by too weak a
penalty. As a stronger reference, ``test_accuracy_corrupted_tuned`` trains on the noisy
labels with the ``reg`` of ``BASELINE_REGS`` of best *validation accuracy*
(``tune_baseline``; typically a much larger penalty).

``gap_recovered = (b - a) / (c - a)``. The corruption mask is never seen by the algorithm;
it only serves the diagnostics (mean weight of clean/corrupted examples, ``detection_auc``:
probability that a clean example outweighs a corrupted one).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from bilevel.recipes._common import (
    BestIterate,
    Progress,
    conjugate_gradient,
    jsonable,
    torch_threads,
)
from bilevel.recipes._config import ConfigError, RecipeConfig, option
from bilevel.solvers import LBFGS, GradientDescent

__all__ = [
    "HyperCleaningConfig",
    "HyperCleaningResult",
    "accuracy",
    "detection_auc",
    "load_data",
    "make_solver",
    "make_weighted_train_loss",
    "run",
]

DTYPE = torch.float64
N_CLASSES = 10
N_DIGITS = 1797  # images in scikit-learn's digits
BASELINE_REGS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def load_data(
    n_train: int, n_val: int, n_test: int, corruption: float = 0.5, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Split digits (stratified, ``random_state=seed``), standardise on the training part and
    corrupt ``round(corruption * n_train)`` training labels (see the module docstring).

    Returns float64 design matrices ``X_*`` (with a column of ones), int64 labels ``y_*``,
    the noisy training labels ``y_train_noisy`` and the boolean mask ``corrupted``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, train_size=n_train, random_state=seed, stratify=y
    )
    X_val, X_test, y_val, y_test = train_test_split(
        X_rest, y_rest, train_size=n_val, test_size=n_test, random_state=seed, stratify=y_rest
    )
    scaler = StandardScaler().fit(X_train)

    def design(A: np.ndarray) -> torch.Tensor:
        A = scaler.transform(A)
        return torch.tensor(np.hstack([A, np.ones((len(A), 1))]), dtype=DTYPE)

    rng = np.random.default_rng(seed)
    n_corrupt = round(corruption * n_train)
    corrupted_idx = rng.permutation(n_train)[:n_corrupt]
    noisy = y_train.copy()
    noisy[corrupted_idx] = (
        y_train[corrupted_idx] + rng.integers(1, N_CLASSES, size=n_corrupt)
    ) % N_CLASSES
    corrupted = np.zeros(n_train, dtype=bool)
    corrupted[corrupted_idx] = True

    def labels(v: np.ndarray) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int64)

    return {
        "X_train": design(X_train),
        "y_train": labels(y_train),
        "y_train_noisy": labels(noisy),
        "corrupted": torch.tensor(corrupted),
        "X_val": design(X_val),
        "y_val": labels(y_val),
        "X_test": design(X_test),
        "y_test": labels(y_test),
    }


def make_weighted_train_loss(reg: float) -> Any:
    """``(W, logits, X, y) -> 1/n sum_i sigmoid(logits_i) CE(X_i W, y_i) + reg/2 ||W||^2``."""

    def weighted_train_loss(
        W: torch.Tensor, logits: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        losses = F.cross_entropy(X @ W, y, reduction="none")
        return (torch.sigmoid(logits) * losses).mean() + 0.5 * reg * (W * W).sum()

    return weighted_train_loss


def accuracy(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct predictions ``argmax(X @ W)``."""
    return float(((X @ W).argmax(dim=1) == y).to(DTYPE).mean())


def detection_auc(weights: torch.Tensor, corrupted: torch.Tensor) -> float:
    """P(weight of a clean example > weight of a corrupted one) (ties count 1/2)."""
    clean, bad = weights[~corrupted], weights[corrupted]
    if len(clean) == 0 or len(bad) == 0:
        return math.nan
    diff = clean[:, None] - bad[None, :]
    return float(((diff > 0).to(DTYPE) + 0.5 * (diff == 0).to(DTYPE)).mean())


# --------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HyperCleaningConfig(RecipeConfig):
    """Options of the data hyper-cleaning recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"n_train": 800, "n_val": 400, "n_test": 597, "outer_steps": 40, "lr": 0.5},
        "fast": {"n_train": 300, "n_val": 150, "n_test": 400, "outer_steps": 12, "lr": 1.0},
    }

    seed: int = option(0, "seed of the split and of the label corruption", minimum=0)
    n_train: int = option(None, "training examples", minimum=10)
    n_val: int = option(None, "clean validation examples", minimum=10)
    n_test: int = option(None, "clean test examples", minimum=10)
    corruption: float = option(
        0.5, "fraction of training labels replaced by a wrong class", minimum=0.0, maximum=1.0
    )
    reg: float = option(
        3e-2, "L2 strength of the inner problem", minimum=0.0, exclusive_minimum=True
    )
    tune_baseline: bool = option(
        True, "also report noisy training with reg tuned on validation accuracy"
    )
    outer_steps: int = option(None, "hypergradient (Adam) steps", minimum=0)
    lr: float = option(
        None, "Adam learning rate on the weight logits", minimum=0.0, exclusive_minimum=True
    )
    inner_solver: str = option(
        "lbfgs", "inner solver: 'lbfgs' or 'gd' (accelerated GD)", choices=("lbfgs", "gd")
    )
    inner_tol: float = option(
        1e-7, "inner tolerance on the gradient norm", minimum=0.0, exclusive_minimum=True
    )
    inner_maxiter: int = option(5000, "inner iteration budget", minimum=1)
    linear_tol: float = option(
        1e-6, "relative tolerance of CG in the implicit backward pass", minimum=0.0
    )
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        total = self.n_train + self.n_val + self.n_test
        if total > N_DIGITS:
            raise ConfigError(
                f"n_train + n_val + n_test = {total} exceeds the {N_DIGITS} digits images"
            )


@dataclass
class HyperCleaningResult:
    """Outcome of the hyper-cleaning recipe (see the module docstring for (a), (b), (c)).

    ``history`` has one entry per outer iterate ``a_0 .. a_K``: validation loss and
    accuracy, hypergradient norm, mean weight of clean and of corrupted training examples,
    and seconds since the outer loop started. ``weights`` are the ``sigmoid(a_i)`` of the
    outer iterate of lowest validation loss (early stopping: ``best_iteration``; the
    cleaned model and ``val_loss`` are that iterate's, ``last_val_loss`` the last one's; a
    last iterate more than 1 % worse than the best is a ConvergenceWarning and
    ``converged: False``); ``corrupted`` is the ground-truth corruption mask.
    """

    config: HyperCleaningConfig
    test_accuracy_corrupted: float
    test_accuracy_cleaned: float
    test_accuracy_oracle: float
    test_accuracy_clean_subset: float
    test_accuracy_corrupted_tuned: float
    reg_corrupted_tuned: float
    val_loss: float
    val_loss_corrupted: float
    weights: list[float]
    corrupted: list[bool]
    history: dict[str, list[float]]
    runtime: float = 0.0
    inner_iterations: list[int] = field(default_factory=list)
    best_iteration: int = 0
    last_val_loss: float = math.nan
    converged: bool = True

    #: panels of the convergence plot (history keys; a tuple shares one panel)
    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = (
        "val_loss",
        "hypergrad_norm",
        "val_accuracy",
        ("weight_clean", "weight_corrupted"),
    )

    @property
    def gap_recovered(self) -> float:
        """``(b - a) / (c - a)``: the share of the corruption gap closed by hyper-cleaning."""
        gap = self.test_accuracy_oracle - self.test_accuracy_corrupted
        if gap == 0:
            return math.nan
        return (self.test_accuracy_cleaned - self.test_accuracy_corrupted) / gap

    def metrics(self) -> dict[str, float]:
        w = torch.tensor(self.weights, dtype=DTYPE)
        mask = torch.tensor(self.corrupted, dtype=torch.bool)
        return {
            "test_accuracy_corrupted": self.test_accuracy_corrupted,
            "test_accuracy_cleaned": self.test_accuracy_cleaned,
            "test_accuracy_oracle": self.test_accuracy_oracle,
            "test_accuracy_clean_subset": self.test_accuracy_clean_subset,
            "test_accuracy_corrupted_tuned": self.test_accuracy_corrupted_tuned,
            "reg_corrupted_tuned": self.reg_corrupted_tuned,
            "gap_recovered": self.gap_recovered,
            "val_loss": self.val_loss,
            "best_iteration": self.best_iteration,
            "last_val_loss": self.last_val_loss,
            "converged": self.converged,
            "val_loss_corrupted": self.val_loss_corrupted,
            "weight_clean_mean": float(w[~mask].mean()) if (~mask).any() else math.nan,
            "weight_corrupted_mean": float(w[mask].mean()) if mask.any() else math.nan,
            "detection_auc": detection_auc(w, mask),
            "final_hypergrad_norm": self.history["hypergrad_norm"][-1],
            "runtime_s": self.runtime,
        }

    def reference_lines(self) -> dict[str, dict[str, float]]:
        """Horizontal lines for the convergence plot: the unweighted (corrupted) baseline."""
        return {"val_loss": {"(a) unweighted noisy training": self.val_loss_corrupted}}

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {
                    "weights": self.weights,
                    "corrupted": self.corrupted,
                    "inner_iterations": self.inner_iterations,
                },
            }
        )


# --------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------


def make_solver(config: HyperCleaningConfig) -> LBFGS | GradientDescent:
    """The inner solver of ``config``, differentiable by implicit differentiation (CG)."""
    objective = make_weighted_train_loss(config.reg)
    linear_solve = conjugate_gradient(config.linear_tol)
    if config.inner_solver == "lbfgs":
        return LBFGS(
            objective, tol=config.inner_tol, maxiter=config.inner_maxiter, linear_solve=linear_solve
        )
    return GradientDescent(
        objective, tol=config.inner_tol, maxiter=config.inner_maxiter, linear_solve=linear_solve
    )


def run(
    config: HyperCleaningConfig | None = None, *, progress: bool = False
) -> HyperCleaningResult:
    """Train the three baselines, then hyper-clean by hypergradient descent."""
    config = config if config is not None else HyperCleaningConfig()
    if not isinstance(config, HyperCleaningConfig):
        raise TypeError(f"expected a HyperCleaningConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _run(config: HyperCleaningConfig, progress: bool) -> HyperCleaningResult:
    start_all = time.perf_counter()
    torch.manual_seed(config.seed)
    data = load_data(config.n_train, config.n_val, config.n_test, config.corruption, config.seed)
    X_train, y_noisy, corrupted = data["X_train"], data["y_train_noisy"], data["corrupted"]
    X_val, y_val, X_test, y_test = data["X_val"], data["y_val"], data["X_test"], data["y_test"]
    n, d = X_train.shape
    inner = make_solver(config)
    zeros = torch.zeros(d, N_CLASSES, dtype=DTYPE)
    # weight 1 for every example: sigmoid(logit) = 1 in floating point
    ones = torch.full((n,), 40.0, dtype=DTYPE)

    def fit(logits: torch.Tensor, X: torch.Tensor, y: torch.Tensor, init: torch.Tensor) -> Any:
        W, info = inner.run(init.detach(), logits, X, y)
        return W, info

    n_baselines = 3 + (len(BASELINE_REGS) if config.tune_baseline else 0)
    baseline_bar = Progress(n_baselines, "hyper_cleaning: baselines", progress)
    with torch.no_grad():
        W_noisy, _ = fit(ones, X_train, y_noisy, zeros)  # (a)
        baseline_bar.update()
        W_oracle, _ = fit(ones, X_train, data["y_train"], zeros)  # (c)
        baseline_bar.update()
        keep = ~corrupted  # clean-subset reference (none when every label is corrupted)
        W_subset = (
            fit(ones[keep], X_train[keep], data["y_train"][keep], zeros)[0] if keep.any() else None
        )
        baseline_bar.update()
    val_noisy = float(F.cross_entropy(X_val @ W_noisy, y_val))
    tuned_acc, tuned_reg = math.nan, math.nan
    if config.tune_baseline:  # (a'): noisy training, reg chosen on validation accuracy
        best = -1.0
        for reg in BASELINE_REGS:
            with torch.no_grad():
                W_reg, _ = make_solver(config.replace(reg=reg)).run(zeros, ones, X_train, y_noisy)
            baseline_bar.update()
            val_acc = accuracy(W_reg, X_val, y_val)
            if val_acc > best:
                best, tuned_reg, tuned_acc = val_acc, reg, accuracy(W_reg, X_test, y_test)
    baseline_bar.close()

    logits = torch.zeros(n, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=config.lr)
    history: dict[str, list[float]] = {
        key: []
        for key in (
            "iteration",
            "val_loss",
            "val_accuracy",
            "hypergrad_norm",
            "weight_clean",
            "weight_corrupted",
            "time",
        )
    }
    inner_iterations: list[int] = []
    W = W_noisy.detach()
    early = BestIterate()  # early stopping on the validation loss
    start = time.perf_counter()
    with Progress(config.outer_steps, "hyper_cleaning: hypergradient descent", progress) as bar:
        for k in range(config.outer_steps + 1):
            optimizer.zero_grad()
            W, info = fit(logits, X_train, y_noisy, W)
            inner_iterations.append(int(info.iterations))
            loss = F.cross_entropy(X_val @ W, y_val)
            loss.backward()  # implicit differentiation through the inner solution
            W = W.detach()
            with torch.no_grad():
                weights = torch.sigmoid(logits)
                grad_norm = float(logits.grad.norm())
                history["iteration"].append(k)
                history["val_loss"].append(float(loss.detach()))
                history["val_accuracy"].append(accuracy(W, X_val, y_val))
                history["hypergrad_norm"].append(grad_norm)
                history["weight_clean"].append(
                    float(weights[~corrupted].mean()) if (~corrupted).any() else math.nan
                )
                history["weight_corrupted"].append(
                    float(weights[corrupted].mean()) if corrupted.any() else math.nan
                )
                history["time"].append(time.perf_counter() - start)
                early.update(
                    k, history["val_loss"][-1], lambda weights=weights, W=W: (weights.clone(), W)
                )
            if k == config.outer_steps:
                break
            optimizer.step()
            bar.update(val_loss=float(loss.detach()), hypergrad=grad_norm)

    settled = not early.warn_if_unsettled("hyper_cleaning (hypergradient descent)")
    best_weights, W = early.state
    return HyperCleaningResult(
        config=config,
        test_accuracy_corrupted=accuracy(W_noisy, X_test, y_test),
        test_accuracy_cleaned=accuracy(W, X_test, y_test),
        test_accuracy_oracle=accuracy(W_oracle, X_test, y_test),
        test_accuracy_clean_subset=(
            accuracy(W_subset, X_test, y_test) if W_subset is not None else math.nan
        ),
        test_accuracy_corrupted_tuned=tuned_acc,
        reg_corrupted_tuned=tuned_reg,
        val_loss=early.value,
        val_loss_corrupted=val_noisy,
        weights=best_weights.tolist(),
        corrupted=corrupted.tolist(),
        history=history,
        runtime=time.perf_counter() - start_all,
        inner_iterations=inner_iterations,
        best_iteration=early.iteration,
        last_val_loss=history["val_loss"][-1],
        converged=settled,
    )

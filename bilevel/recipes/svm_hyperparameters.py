"""Recipe: one regularisation weight per training sample of a linear SVM, by LV-HBA.

The SVM hyperparameter experiment of Yao et al. (ICLR 2024), on scikit-learn's
``breast_cancer`` (standardised on the training part; stratified split with a fixed seed
into ``n_train`` training, ``n_val`` validation and the rest test samples; labels ``+-1``).

Bilevel problem, with ``x = c`` (``C_i = exp(c_i)``, one per training sample) and lower
variables ``y = (w, b, xi)``::

    min_c   F = 1/n_val sum_j leaky_relu(2 sigmoid(-kappa m_j / ||w||) - 1)
    s.t.    (w, b, xi) in argmin 1/2 ||w||^2 + 1/2 sum_i exp(c_i) xi_i^2
                         s.t.  1 - xi_i - t_i (w^T z_i + b) <= 0      (i = 1..n_train)

``m_j = t_j (w^T z_j + b)`` is the margin of validation sample ``j``; ``F`` is a smoothed
0-1 validation error (the leaky ReLU, slope 0.01, and ``kappa = 5`` as in the official
script, averaged instead of summed). The lower level is the squared-hinge (L2-loss) SVM
with per-sample weights; its constraints are affine, so LV-HBA projects onto them exactly
(dual L-BFGS-B, :func:`bilevel.constrained.project_polyhedron`).

LV-HBA (:class:`bilevel.constrained.LVHBA`) runs with the official SVM script's step-size
convention (``gamma_convention="multiply"``, ``gamma1 = gamma2 = 0.1``, the upper gradient
scaled by ``1/sqrt(k)``: ``c0 = 1``, ``p = 0.5``). Unlike the official script, whose
``C.add(...)`` is not in place so that ``C`` never changes, ``c`` is updated here;
``c_change`` (the largest ``|c_i - c_i^0|``) and the upper-objective history show it.

Early stopping: the validation objective ``F`` is evaluated at the start and after every
iteration, and the iterate of lowest ``F`` is returned (``best_iteration``; 0 is the
initial point); the last iterate's figures are reported as ``last_*``. LV-HBA is not a
descent method on ``F``: when the last iterate's ``F`` exceeds the best by more than 1 %,
the iterates have not converged, and the recipe says so with a
:class:`~bilevel.errors.ConvergenceWarning` and ``converged: False``.

Baselines (reported with the same test split):

* ``cv``: one ``C`` for all samples chosen by 5-fold cross-validation on the training part
  (scikit-learn ``LinearSVC``, squared hinge, grid ``CV_GRID``);
* ``default``: ``LinearSVC`` with ``C = 1``;
* ``initial``: the lower-level solution at the initial ``c`` (all ``C_i = exp(c_init)``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

import bilevel
from bilevel.constrained import LVHBA, solve_lower
from bilevel.recipes._common import BestIterate, Progress, jsonable, torch_threads
from bilevel.recipes._config import ConfigError, RecipeConfig, option

__all__ = [
    "CV_GRID",
    "SVMHyperparametersConfig",
    "SVMHyperparametersResult",
    "load_data",
    "make_problem",
    "run",
    "test_accuracy",
]

DTYPE = torch.float64
CV_GRID = tuple(float(c) for c in np.logspace(-3, 3, 13))
N_SAMPLES = 569  # breast_cancer


def load_data(n_train: int, n_val: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Stratified split of breast_cancer (``random_state=seed``) into ``n_train`` /
    ``n_val`` / rest, standardised on the training part; labels in ``{-1, +1}``."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, t = load_breast_cancer(return_X_y=True)
    t = 2.0 * t - 1.0
    X_tr, X_rest, t_tr, t_rest = train_test_split(
        X, t, train_size=n_train, random_state=seed, stratify=t
    )
    X_val, X_te, t_val, t_te = train_test_split(
        X_rest, t_rest, train_size=n_val, random_state=seed, stratify=t_rest
    )
    scaler = StandardScaler().fit(X_tr)
    as_t = lambda a: torch.as_tensor(a, dtype=DTYPE)
    return {
        "X_train": as_t(scaler.transform(X_tr)),
        "t_train": as_t(t_tr),
        "X_val": as_t(scaler.transform(X_val)),
        "t_val": as_t(t_val),
        "X_test": as_t(scaler.transform(X_te)),
        "t_test": as_t(t_te),
    }


def _split(y: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return y[:d], y[d], y[d + 1 :]


def make_problem(data: dict[str, torch.Tensor], kappa: float = 5.0) -> bilevel.BilevelProblem:
    """The bilevel problem of the module docstring; ``y = (w, b, xi)`` flattened."""
    X, t = data["X_train"], data["t_train"]
    Xv, tv = data["X_val"], data["t_val"]
    d = X.shape[1]

    def upper(c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w, b, _ = _split(y, d)
        margin = tv * (Xv @ w + b) / torch.linalg.vector_norm(w).clamp(min=1e-12)
        smoothed = 2 * torch.sigmoid(-kappa * margin) - 1
        return torch.nn.functional.leaky_relu(smoothed, 0.01).mean()

    def lower(c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w, _, xi = _split(y, d)
        return 0.5 * (w @ w) + 0.5 * (torch.exp(c) * xi**2).sum()

    def margin_constraints(c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w, b, xi = _split(y, d)
        return 1 - xi - t * (X @ w + b)

    return bilevel.BilevelProblem(upper=upper, lower=lower, lower_ineq=margin_constraints)


def test_accuracy(y: torch.Tensor, data: dict[str, torch.Tensor], split: str = "test") -> float:
    """Accuracy of ``sign(w^T z + b)`` on ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
    d = data["X_train"].shape[1]
    w, b, _ = _split(y, d)
    X, t = data[f"X_{split}"], data[f"t_{split}"]
    return float(((X @ w + b) * t > 0).to(DTYPE).mean())


test_accuracy.__test__ = False  # type: ignore[attr-defined]  # tells pytest: not a test


@dataclass(frozen=True)
class SVMHyperparametersConfig(RecipeConfig):
    """Options of the per-sample SVM hyperparameter recipe (LV-HBA)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"iterations": 400, "n_train": 300, "n_val": 130},
        "fast": {"iterations": 30, "n_train": 120, "n_val": 80},
    }

    seed: int = option(0, "seed of the train/validation/test split", minimum=0)
    n_train: int = option(None, "training samples (one C_i each)", minimum=10)
    n_val: int = option(None, "validation samples", minimum=10)
    iterations: int = option(None, "LV-HBA iterations", minimum=1)
    c_init: float = option(0.0, "initial log C_i (all samples)")
    step_size: float = option(
        0.01, "LV-HBA step sizes alpha = eta", minimum=0.0, exclusive_minimum=True
    )
    center_step_size: float = option(
        0.1, "LV-HBA step size beta of z", minimum=0.0, exclusive_minimum=True
    )
    gamma: float = option(
        0.1, "gamma1 = gamma2 (multiply convention)", minimum=0.0, exclusive_minimum=True
    )
    kappa: float = option(5.0, "sharpness of the smoothed 0-1 loss", minimum=0.0)
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        if (
            self.n_train is not None
            and self.n_val is not None
            and self.n_train + self.n_val > N_SAMPLES - 50
        ):
            raise ConfigError(
                f"n_train + n_val = {self.n_train + self.n_val} leaves fewer than 50 "
                f"of the {N_SAMPLES} samples for testing"
            )


@dataclass
class SVMHyperparametersResult:
    """Outcome of the SVM recipe: the accuracies of LV-HBA's best validation iterate
    (``best_iteration``) and of its last one (``last_*``), the baselines', the learned
    ``C_i``, and the history (upper objective, validation/test accuracy per recorded
    iteration)."""

    config: SVMHyperparametersConfig
    test_accuracy: float
    val_accuracy: float
    upper_value: float
    initial_upper_value: float
    initial_test_accuracy: float
    cv_test_accuracy: float
    cv_C: float
    default_test_accuracy: float
    c_change: float
    log_C: list[float]
    history: dict[str, list[float]]
    status: str
    best_iteration: int = 0
    last_test_accuracy: float = math.nan
    last_val_accuracy: float = math.nan
    last_upper_value: float = math.nan
    converged: bool = True
    runtime: float = 0.0

    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = (
        "upper_value",
        ("val_accuracy", "test_accuracy"),
    )

    def metrics(self) -> dict[str, float]:
        return {
            "test_accuracy": self.test_accuracy,
            "val_accuracy": self.val_accuracy,
            "upper_value": self.upper_value,
            "initial_upper_value": self.initial_upper_value,
            "initial_test_accuracy": self.initial_test_accuracy,
            "cv_test_accuracy": self.cv_test_accuracy,
            "cv_C": self.cv_C,
            "default_test_accuracy": self.default_test_accuracy,
            "c_change": self.c_change,
            "best_iteration": self.best_iteration,
            "last_test_accuracy": self.last_test_accuracy,
            "last_val_accuracy": self.last_val_accuracy,
            "last_upper_value": self.last_upper_value,
            "converged": self.converged,
            "runtime_s": self.runtime,
        }

    def reference_lines(self) -> dict[str, dict[str, float]]:
        """The initial point and the returned best iterate on the objective panel; the
        cross-validated single ``C`` on the accuracy panel."""
        return {
            "upper_value": {
                "initial C": self.initial_upper_value,
                f"best iterate ({self.best_iteration}, returned)": self.upper_value,
            },
            "test_accuracy": {f"cross-validated C = {self.cv_C:.3g} (test)": self.cv_test_accuracy},
        }

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {"log_C": self.log_C, "status": self.status},
            }
        )


def run(
    config: SVMHyperparametersConfig | None = None, *, progress: bool = False
) -> SVMHyperparametersResult:
    """Baselines, then LV-HBA on the per-sample ``C_i`` (see the module docstring)."""
    config = config if config is not None else SVMHyperparametersConfig()
    if not isinstance(config, SVMHyperparametersConfig):
        raise TypeError(f"expected a SVMHyperparametersConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _sklearn_baselines(data: dict[str, torch.Tensor], seed: int) -> tuple[float, float, float]:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC

    X, t = data["X_train"].numpy(), data["t_train"].numpy()
    Xt, tt = data["X_test"].numpy(), data["t_test"].numpy()
    svc = LinearSVC(loss="squared_hinge", dual=False, max_iter=100000)
    cv = GridSearchCV(
        svc,
        {"C": list(CV_GRID)},
        cv=StratifiedKFold(5, shuffle=True, random_state=seed),
    ).fit(X, t)
    default = LinearSVC(loss="squared_hinge", dual=False, C=1.0, max_iter=100000).fit(X, t)
    return float(cv.score(Xt, tt)), float(cv.best_params_["C"]), float(default.score(Xt, tt))


def _run(config: SVMHyperparametersConfig, progress: bool) -> SVMHyperparametersResult:
    start = time.perf_counter()
    data = load_data(config.n_train, config.n_val, config.seed)
    with Progress(1, "svm_hyperparameters: cross-validated baseline", progress) as bar:
        cv_acc, cv_C, default_acc = _sklearn_baselines(data, config.seed)
        bar.update()
    problem = make_problem(data, config.kappa)
    n, d = data["X_train"].shape
    c0 = torch.full((n,), config.c_init, dtype=DTYPE)
    # start the lower variables at the lower-level solution for c0 (a feasible point)
    y_init = torch.cat([torch.zeros(d + 1, dtype=DTYPE), torch.ones(n, dtype=DTYPE)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.errors.ConvergenceWarning)
        y0 = solve_lower(problem, c0, y_init, tol=1e-10).y
    initial_upper = float(problem.upper_value(c0, y0))
    initial_acc = test_accuracy(y0, data)

    history: dict[str, list[float]] = {
        "iteration": [],
        "upper_value": [],
        "val_accuracy": [],
        "test_accuracy": [],
        "time": [],
    }
    record_every = max(1, config.iterations // 40)
    best = BestIterate()  # early stopping on the validation objective, start included
    best.update(0, initial_upper, lambda: (c0.clone(), y0.clone()))

    def callback(k: int, state: Any) -> None:
        value = float(problem.upper_value(state.x, state.y))
        best.update(k, value, lambda: (state.x.detach().clone(), state.y.detach().clone()))
        if k % record_every == 0 or k == config.iterations:
            history["iteration"].append(k)
            history["upper_value"].append(value)
            history["val_accuracy"].append(test_accuracy(state.y, data, "val"))
            history["test_accuracy"].append(test_accuracy(state.y, data))
            history["time"].append(time.perf_counter() - start)

    method = LVHBA(
        outer_step_size=config.step_size,
        inner_step_size=config.step_size,
        center_step_size=config.center_step_size,
        gamma1=config.gamma,
        gamma2=config.gamma,
        gamma_convention="multiply",
        c0=1.0,
        p=0.5,
        lam0=1.0,
        z0=1.0,
    )
    with warnings.catch_warnings():  # a fixed iteration budget: no stopping test
        warnings.simplefilter("ignore", bilevel.errors.ConvergenceWarning)
        result = bilevel.solve(
            problem,
            c0,
            y0,
            method,
            maxiter=config.iterations,
            tol=0.0,
            callback=callback,
            progress=progress,
            record_every=config.iterations,
        )
    settled = not best.warn_if_unsettled("svm_hyperparameters (LV-HBA)")
    if result.status == "diverged":
        settled = False
        warnings.warn(f"svm_hyperparameters (LV-HBA) diverged: {result.message}; the best "
                      "iterate before it is returned", bilevel.errors.ConvergenceWarning,
                      stacklevel=2)  # fmt: skip
    x_best, y_best = best.state
    return SVMHyperparametersResult(
        config=config,
        test_accuracy=test_accuracy(y_best, data),
        val_accuracy=test_accuracy(y_best, data, "val"),
        upper_value=best.value,
        initial_upper_value=initial_upper,
        initial_test_accuracy=initial_acc,
        cv_test_accuracy=cv_acc,
        cv_C=cv_C,
        default_test_accuracy=default_acc,
        c_change=float((x_best - c0).abs().max()),
        log_C=x_best.tolist(),
        history=history,
        status=result.status,
        best_iteration=min(best.iteration, config.iterations),
        last_test_accuracy=test_accuracy(result.y, data),
        last_val_accuracy=test_accuracy(result.y, data, "val"),
        last_upper_value=float(problem.upper_value(result.x, result.y)),
        converged=settled,
        runtime=time.perf_counter() - start,
    )

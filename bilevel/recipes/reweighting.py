"""Recipe: learning to reweight noisy (or imbalanced) training data, Meta-Weight-Net style.

Setting. scikit-learn's digits (8x8, 10 classes), a stratified split with a fixed ``seed``
into ``n_train`` training, ``n_val`` validation and ``n_test`` test images, standardised on
the training part. A fraction ``noise`` of the training labels is replaced by *uniform
noise*: a class drawn uniformly from the ten (Shu et al. 2019's uniform noise; about
``0.9 * noise`` of the labels end up wrong). With ``imbalance = r > 1`` the training set
is first made long-tailed: class ``c`` keeps a fraction ``r^(-rank(c)/9)`` of its images
(the class order is a seeded permutation), so the rarest class has ``r`` times fewer
images than the most frequent. The validation set is small, clean and balanced.

Bilevel problem. A multilayer perceptron ``theta`` (64-``hidden``-10, ReLU) and weights
``w_i in (0, 1)`` on the training examples::

    min_w  CE_val(theta*(w))
    s.t.   theta*(w) = argmin_theta  1/n sum_i w_i CE(theta; x_i, y~_i) + wd/2 ||theta||^2

with ``w_i = sigmoid(a_i)``, one logit per example (``weighting="example"``), or
``w_i = sigmoid(V(CE_i))`` for a small weighting network ``V`` of the example's loss
(``weighting="network"``, Shu et al.'s Meta-Weight-Net: 1-100-1, ReLU). It is solved by
:class:`bilevel.nn.BilevelTrainer`: ``inner_steps`` full-batch SGD-momentum steps on the
weighted loss per outer step, then one Adam step on the weights along the hypergradient of
:func:`bilevel.nn.hypergradient` (``method``; by default the implicit hypergradient with a
20-term Neumann series). At ``restart`` (a fraction of the outer steps) the network is
re-initialised and trained on under the weights learnt so far: noisy examples the first
network memorised before their weights fell give no signal any more (their loss gradient
is zero), and a fresh network lets their weights fall further.

Reported test accuracies, all with the same network, optimizer and number of inner steps:
the reweighted network (``test_accuracy``), plain training on the noisy labels
(``baseline_test_accuracy``) and training on the correct labels
(``clean_test_accuracy``). ``clean_weight_mean`` and ``noisy_weight_mean`` are the mean
learnt weights of the examples whose label is correct and wrong; the noise mask is never
seen by the algorithm. With ``imbalance > 1``, ``minority_weight_mean`` and
``majority_weight_mean`` are the mean weights of the rarer and the more frequent half of
the classes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bilevel.nn as bnn
from bilevel.recipes._common import Progress, jsonable, torch_threads
from bilevel.recipes._config import ConfigError, RecipeConfig, option
from bilevel.recipes._digits import N_CLASSES, N_DIGITS, accuracy, load_digits_split, mlp, train

__all__ = ["ReweightingConfig", "ReweightingResult", "corrupt_labels", "long_tail", "run"]


@dataclass(frozen=True)
class ReweightingConfig(RecipeConfig):
    """Options of the reweighting recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"outer_steps": 200},
        "fast": {"outer_steps": 40},
    }

    seed: int = option(0, "seed of the split, the noise and the initialisation", minimum=0)
    noise: float = option(
        0.4, "fraction of training labels replaced by a uniformly random class",
        minimum=0.0, maximum=1.0,
    )
    imbalance: float = option(
        1.0, "ratio of the largest to the smallest training class (1: balanced)", minimum=1.0
    )
    weighting: str = option(
        "example", "'example' (one weight per example) or 'network' (Meta-Weight-Net)",
        choices=("example", "network"),
    )
    method: str = option(
        "neumann", "hypergradient mode of bilevel.nn.hypergradient",
        choices=("neumann", "cg", "fd", "unrolled", "penalty"),
    )
    n_train: int = option(900, "training images (before the long tail)", minimum=20)
    n_val: int = option(400, "clean validation images", minimum=10)
    n_test: int = option(497, "test images", minimum=10)
    hidden: int = option(128, "hidden units of the network", minimum=1)
    outer_steps: int = option(None, "hyperparameter (Adam) steps", minimum=1)
    inner_steps: int = option(3, "SGD steps on the network per outer step", minimum=1)
    inner_lr: float = option(0.1, "SGD learning rate (momentum 0.9)", minimum=0.0, exclusive_minimum=True)
    outer_lr: float | None = option(
        None, "Adam learning rate on the weights (default 0.3; 1e-3 for 'network')",
        minimum=0.0, exclusive_minimum=True,
    )
    weight_decay: float = option(1e-3, "L2 strength of the inner loss", minimum=0.0)
    neumann_steps: int = option(20, "terms of the Neumann series", minimum=1)
    restart: float = option(
        0.5, "fraction of the outer steps after which the network is re-initialised (0: never)",
        minimum=0.0, maximum=1.0,
    )
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        total = self.n_train + self.n_val + self.n_test
        if total > N_DIGITS:
            raise ConfigError(
                f"n_train + n_val + n_test = {total} exceeds the {N_DIGITS} digits images"
            )

    @property
    def adam_lr(self) -> float:
        if self.outer_lr is not None:
            return self.outer_lr
        return 0.3 if self.weighting == "example" else 1e-3


@dataclass
class ReweightingResult:
    """Outcome of the reweighting recipe (see the module docstring)."""

    config: ReweightingConfig
    test_accuracy: float
    baseline_test_accuracy: float
    clean_test_accuracy: float
    weights: list[float]
    noisy: list[bool]
    minority: list[bool]
    history: dict[str, list[float]]
    runtime: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = (
        "val_loss",
        "val_accuracy",
        ("weight_clean", "weight_noisy"),
        "hypergrad_norm",
    )

    def _mean(self, mask: list[bool], invert: bool = False) -> float:
        w = torch.tensor(self.weights, dtype=torch.float64)
        m = torch.tensor(mask, dtype=torch.bool)
        m = ~m if invert else m
        return float(w[m].mean()) if m.any() else math.nan

    def metrics(self) -> dict[str, float]:
        return {
            "test_accuracy": self.test_accuracy,
            "baseline_test_accuracy": self.baseline_test_accuracy,
            "clean_test_accuracy": self.clean_test_accuracy,
            "clean_weight_mean": self._mean(self.noisy, invert=True),
            "noisy_weight_mean": self._mean(self.noisy),
            "minority_weight_mean": self._mean(self.minority) if self.config.imbalance > 1 else math.nan,
            "majority_weight_mean": (
                self._mean(self.minority, invert=True) if self.config.imbalance > 1 else math.nan
            ),
            "final_val_loss": self.history["val_loss"][-1],
            "runtime_s": self.runtime,
            **{f"{k}_time_s": v for k, v in self.timings.items()},
        }

    def reference_lines(self) -> dict[str, dict[str, float]]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {"weights": self.weights, "noisy": self.noisy, "minority": self.minority},
            }
        )


def corrupt_labels(y: Tensor, noise: float, rng: np.random.Generator) -> Tensor:
    """Replace a fraction ``noise`` of the labels (chosen by ``rng``) by uniform classes."""
    y = y.clone()
    n_noisy = round(noise * len(y))
    idx = torch.as_tensor(rng.permutation(len(y))[:n_noisy])
    y[idx] = torch.as_tensor(rng.integers(0, N_CLASSES, size=n_noisy))
    return y


def long_tail(y: Tensor, ratio: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Indices keeping a fraction ``ratio^(-rank(c)/9)`` of each class ``c`` (ranks a seeded
    permutation of the classes), and a mask of the examples of the rarer half of the classes."""
    ranks = rng.permutation(N_CLASSES)
    keep = []
    for c in range(N_CLASSES):
        members = torch.nonzero(y == c).flatten()
        count = max(1, round(len(members) * ratio ** (-ranks[c] / (N_CLASSES - 1))))
        keep.append(members[torch.as_tensor(rng.permutation(len(members))[:count])])
    index = torch.sort(torch.cat(keep)).values
    minority_classes = torch.as_tensor(np.flatnonzero(ranks >= N_CLASSES // 2))
    return index, torch.isin(y[index], minority_classes)


class WeightNet(nn.Module):
    """Meta-Weight-Net: ``w = sigmoid(V(loss))``, ``V`` a 1-100-1 ReLU network."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses.detach().unsqueeze(-1))).squeeze(-1)


def run(config: ReweightingConfig | None = None, *, progress: bool = False) -> ReweightingResult:
    """Train the two baselines, then reweight by hypergradient descent."""
    config = config if config is not None else ReweightingConfig()
    if not isinstance(config, ReweightingConfig):
        raise TypeError(f"expected a ReweightingConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _run(config: ReweightingConfig, progress: bool) -> ReweightingResult:
    started = time.perf_counter()
    data = load_digits_split(config.n_train, config.n_val, config.n_test, config.seed)
    rng = np.random.default_rng(config.seed)
    X, y_true = data.X_train, data.y_train
    if config.imbalance > 1:
        index, minority = long_tail(y_true, config.imbalance, rng)
        X, y_true = X[index], y_true[index]
    else:
        minority = torch.zeros(len(y_true), dtype=torch.bool)
    y = corrupt_labels(y_true, config.noise, rng)
    noisy = y != y_true
    n = len(y)
    idx = torch.arange(n)
    val = (data.X_val, data.y_val)
    budget = config.outer_steps * config.inner_steps

    def make_model() -> nn.Module:
        return mlp(config.hidden, config.seed)

    def weights_of(
        model: nn.Module, hparams: Any, batch: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        xb, yb, ib = batch
        losses = F.cross_entropy(model(xb), yb, reduction="none")
        w = hparams(losses) if isinstance(hparams, nn.Module) else torch.sigmoid(hparams["logits"][ib])
        return w, losses

    def inner_loss(model: nn.Module, hparams: Any, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        w, losses = weights_of(model, hparams, batch)
        decay = sum((p * p).sum() for p in model.parameters())
        return (w * losses).mean() + 0.5 * config.weight_decay * decay

    def outer_loss(model: nn.Module, hparams: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    def plain_loss(labels: Tensor) -> Any:
        def loss(model: nn.Module) -> Tensor:
            decay = sum((p * p).sum() for p in model.parameters())
            return F.cross_entropy(model(X), labels) + 0.5 * config.weight_decay * decay

        return loss

    timings: dict[str, float] = {}
    t = time.perf_counter()
    baseline = train(make_model(), plain_loss(y), budget, config.inner_lr, 0.9)
    timings["baseline"] = time.perf_counter() - t
    t = time.perf_counter()
    clean = train(make_model(), plain_loss(y_true), budget, config.inner_lr, 0.9)
    timings["clean"] = time.perf_counter() - t

    torch.manual_seed(config.seed)
    model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    if config.weighting == "example":
        hparams: Any = {"logits": torch.zeros(n, dtype=torch.float32, requires_grad=True)}
        hparam_tensors = [hparams["logits"]]
    else:
        hparams = WeightNet().float()
        hparam_tensors = list(hparams.parameters())
    inner_opt = torch.optim.SGD(model.parameters(), lr=config.inner_lr, momentum=0.9)
    options: dict[str, Any] = {}
    if config.method == "neumann":
        options = {"steps": config.neumann_steps, "alpha": config.inner_lr}
    elif config.method == "cg":
        options = {"maxiter": config.neumann_steps, "ridge": 1e-2, "tol": 1e-4}
    elif config.method == "fd":
        options = {"xi": config.inner_lr}
    elif config.method == "penalty":
        options = {"lr": config.inner_lr}
    train_batch = (X, y, idx)
    trainer = bnn.BilevelTrainer(
        model,
        hparams,
        inner_loss,
        outer_loss,
        inner_optimizer=inner_opt,
        outer_optimizer=torch.optim.Adam(hparam_tensors, lr=config.adam_lr),
        inner_data=[train_batch],
        outer_data=[val],
        inner_steps=config.inner_steps,
        method=config.method,
        method_options=options,
    )
    history: dict[str, list[float]] = {
        k: [] for k in ("iteration", "inner_loss", "val_loss", "val_accuracy", "hypergrad_norm", "weight_clean", "weight_noisy", "time")
    }
    restart_at = round(config.restart * config.outer_steps) if config.restart > 0 else -1

    def record(tr: bnn.BilevelTrainer, rec: dict[str, Any]) -> None:
        with torch.no_grad():
            w, _ = weights_of(model, hparams, train_batch)
        history["iteration"].append(rec["step"])
        history["inner_loss"].append(rec["inner_loss"])
        history["val_loss"].append(rec["outer_loss"])
        history["val_accuracy"].append(accuracy(model, *val))
        history["hypergrad_norm"].append(rec["hypergrad_norm"])
        history["weight_clean"].append(float(w[~noisy].mean()) if (~noisy).any() else math.nan)
        history["weight_noisy"].append(float(w[noisy].mean()) if noisy.any() else math.nan)
        history["time"].append(rec["time"])
        bar.update(val_loss=rec["outer_loss"], val_acc=history["val_accuracy"][-1])
        if rec["step"] == restart_at and rec["step"] < config.outer_steps:
            model.load_state_dict(initial)
            inner_opt.state.clear()

    t = time.perf_counter()
    with Progress(config.outer_steps, "reweighting", progress) as bar:
        trainer.fit(config.outer_steps, callbacks=[record])
    timings["reweighting"] = time.perf_counter() - t
    with torch.no_grad():
        final_weights, _ = weights_of(model, hparams, train_batch)
    return ReweightingResult(
        config=config,
        test_accuracy=accuracy(model, data.X_test, data.y_test),
        baseline_test_accuracy=accuracy(baseline, data.X_test, data.y_test),
        clean_test_accuracy=accuracy(clean, data.X_test, data.y_test),
        weights=final_weights.tolist(),
        noisy=noisy.tolist(),
        minority=minority.tolist(),
        history=history,
        runtime=time.perf_counter() - started,
        timings=timings,
    )

"""Recipe: Self-Tuning Networks -- weight decay, dropout and input noise tuned online.

Setting. scikit-learn's digits, a stratified split with a fixed ``seed`` into ``n_train``
training, ``n_val`` validation and ``n_test`` test images, standardised on the training
part. A multilayer perceptron 64-``hidden``-10 (ReLU) is trained with three
hyperparameters, all tuned at once:

* ``weight_decay`` ``lambda_wd``, the precision of a Gaussian prior on the weights: the
  training loss is the mean cross-entropy plus ``lambda_wd ||W||^2 / (2 n_train)`` (``W``
  the two weight matrices; biases are not decayed). Searched on a log scale.
* ``dropout``, the drop rate of the hidden units, in ``(0, 0.9)``;
* ``input_noise``, the standard deviation of Gaussian noise added to the (standardised)
  inputs, in ``(0, 1)``.

Self-Tuning Network (:mod:`bilevel.nn.self_tuning`). Both layers are
:class:`~bilevel.nn.self_tuning.BestResponseLinear` (``w(u) = W0 + (A u) . Wh``), the
hyperparameters perturbed per example, ``u ~ N(u_bar, sigma)``; ``warmup_steps`` Adam steps
on the weights, then ``hyper_steps`` rounds of ``train_steps`` Adam steps on the training
loss at perturbed hyperparameters and one Adam step on ``(u_bar, sigma)`` along the
validation loss (no dropout, no noise) minus ``entropy_weight`` times the perturbation's
entropy, every step on the whole training (validation) set. The run starts far from the
optimum, at ``log weight_decay = start_log_weight_decay`` (3 by default, about 20 times the
best value on this data) with ``dropout = input_noise = 0.05``.

Baselines under the same compute. The budget is the number of optimizer steps of the STN
run, ``warmup_steps + hyper_steps (train_steps + 1)``. Grid search: ``grid_points`` values
per hyperparameter over the box ``log weight_decay in [-4, 4]``, ``dropout in [0, 0.75]``,
``input_noise in [0, 1]`` (endpoints included), ``grid_points^3`` plain networks (the same
64-``hidden``-10 MLP with ``nn.Dropout``, same optimizer, the same initial weights in every trial) each trained
for ``budget // grid_points^3`` steps; random search: as many configurations drawn uniformly
from the box (log-uniform weight decay), the same steps each.

Reported: ``val_loss`` (the STN's validation cross-entropy at ``u_bar``, regularisers off),
``test_accuracy``, ``grid_best_val_loss``, ``random_search_best_val_loss`` (and the test
accuracies of those best networks), the final hyperparameters, and the schedules as lists:
``weight_decay_schedule``, ``dropout_schedule``, ``input_noise_schedule`` sampled at the
hyper steps ``schedule_steps`` (every step is in the history). The issue's target is
``val_loss <= 1.03 grid_best_val_loss`` from the default start.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.nn.self_tuning import (
    BestResponseLinear,
    HyperparameterSpec,
    PerturbedHyperparameters,
    SelfTuningTrainer,
    per_example_dropout,
)
from bilevel.recipes._common import Progress, jsonable, torch_threads
from bilevel.recipes._config import ConfigError, RecipeConfig, option
from bilevel.recipes._digits import DTYPE, N_CLASSES, N_DIGITS, Split, accuracy, load_digits_split

__all__ = ["SEARCH_BOX", "SelfTuningConfig", "SelfTuningResult", "STNMLP", "run"]

#: The baselines' search box: (low, high) of log weight decay, dropout, input noise.
SEARCH_BOX: dict[str, tuple[float, float]] = {
    "log_weight_decay": (-4.0, 4.0),
    "dropout": (0.0, 0.75),
    "input_noise": (0.0, 1.0),
}
HPARAMS = ("weight_decay", "dropout", "input_noise")


@dataclass(frozen=True)
class SelfTuningConfig(RecipeConfig):
    """Options of the self-tuning recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"hyper_steps": 600, "warmup_steps": 100},
        "fast": {"hyper_steps": 150, "warmup_steps": 50},
    }

    seed: int = option(0, "seed of the split, the initialisation and the perturbations", minimum=0)
    n_train: int = option(800, "training images", minimum=20)
    n_val: int = option(400, "validation images (hyper steps)", minimum=10)
    n_test: int = option(597, "test images", minimum=10)
    hidden: int = option(64, "hidden units", minimum=1)
    hyper_steps: int = option(None, "hyper steps (one per train_steps training steps)", minimum=1)
    warmup_steps: int = option(None, "training steps before the first hyper step", minimum=0)
    train_steps: int = option(2, "training steps per hyper step", minimum=1)
    lr: float = option(3e-3, "Adam learning rate of the weights", minimum=0.0, exclusive_minimum=True)
    hyper_lr: float = option(0.01, "Adam learning rate of u_bar", minimum=0.0, exclusive_minimum=True)
    scale_lr: float = option(0.01, "Adam learning rate of the perturbation scales", minimum=0.0, exclusive_minimum=True)
    perturb_scale: float = option(0.5, "initial perturbation scale sigma", minimum=0.0, exclusive_minimum=True)
    entropy_weight: float = option(1e-5, "weight tau of the entropy term", minimum=0.0)
    start_log_weight_decay: float = option(3.0, "initial log weight decay (far from the optimum)")
    start_dropout: float = option(0.05, "initial dropout rate", minimum=0.0, maximum=0.9, exclusive_minimum=True)
    start_input_noise: float = option(0.05, "initial input-noise std", minimum=0.0, maximum=1.0, exclusive_minimum=True)
    grid_points: int = option(3, "grid values per hyperparameter (grid of grid_points^3)", minimum=2)
    random_trials: int = option(0, "random-search trials (0: as many as the grid)", minimum=0)
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        total = self.n_train + self.n_val + self.n_test
        if total > N_DIGITS:
            raise ConfigError(
                f"n_train + n_val + n_test = {total} exceeds the {N_DIGITS} digits images"
            )
        if self.start_dropout >= 0.9 or self.start_input_noise >= 1.0:
            raise ConfigError("options 'start_dropout' < 0.9 and 'start_input_noise' < 1 are required")

    @property
    def budget(self) -> int:
        """Optimizer steps of the STN run (the baselines' total)."""
        return self.warmup_steps + self.hyper_steps * (self.train_steps + 1)

    @property
    def trials(self) -> int:
        return self.grid_points**3

    @property
    def n_random(self) -> int:
        return self.random_trials or self.trials


class STNMLP(nn.Module):
    """64-``hidden``-10 perceptron of two best-response layers; per-example dropout of the
    hidden units at rates ``p`` when given."""

    def __init__(self, hidden: int, n_hparams: int, n_in: int = 64, n_out: int = N_CLASSES) -> None:
        super().__init__()
        self.fc1 = BestResponseLinear(n_in, hidden, n_hparams)
        self.fc2 = BestResponseLinear(hidden, n_out, n_hparams)

    def forward(self, x: Tensor, u: Tensor, p: Tensor | None = None) -> Tensor:
        h = F.relu(self.fc1(x, u))
        if p is not None:
            h = per_example_dropout(h, p)
        return self.fc2(h, u)

    def weight_sq_norm(self, u: Tensor) -> Tensor:
        """``||W1(u_i)||^2 + ||W2(u_i)||^2`` per example."""
        return self.fc1.weight_sq_norm(u) + self.fc2.weight_sq_norm(u)


@dataclass
class SelfTuningResult:
    """Outcome of the self-tuning recipe (see the module docstring)."""

    config: SelfTuningConfig
    val_loss: float
    test_accuracy: float
    grid_best_val_loss: float
    random_search_best_val_loss: float
    grid_test_accuracy: float
    random_search_test_accuracy: float
    hyperparameters: dict[str, float]
    grid_best: dict[str, float]
    random_search_best: dict[str, float]
    grid: list[dict[str, float]]
    random_search: list[dict[str, float]]
    history: dict[str, list[float]]
    runtime: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = (
        "val_loss",
        "log_weight_decay",
        ("dropout", "input_noise"),
        ("weight_decay_scale", "dropout_scale", "input_noise_scale"),
    )

    def schedule_indices(self) -> list[int]:
        """Indices of the history entries the metrics' schedules sample (about 20, plus the last)."""
        n = len(self.history["iteration"])
        every = max(1, n // 20)
        picked = list(range(0, n, every))
        if picked[-1] != n - 1:
            picked.append(n - 1)
        return picked

    def metrics(self) -> dict[str, Any]:
        idx = self.schedule_indices()

        def schedule(key: str) -> list[float]:
            return [float(f"{self.history[key][i]:.4g}") for i in idx]

        return {
            "val_loss": self.val_loss,
            "test_accuracy": self.test_accuracy,
            "grid_best_val_loss": self.grid_best_val_loss,
            "random_search_best_val_loss": self.random_search_best_val_loss,
            "val_loss_over_grid_best": self.val_loss / self.grid_best_val_loss,
            "grid_test_accuracy": self.grid_test_accuracy,
            "random_search_test_accuracy": self.random_search_test_accuracy,
            **{f"final_{k}": v for k, v in self.hyperparameters.items()},
            "budget_steps": self.config.budget,
            "steps_per_trial": self.config.budget // self.config.trials,
            "schedule_steps": [int(self.history["iteration"][i]) for i in idx],
            "weight_decay_schedule": schedule("weight_decay"),
            "dropout_schedule": schedule("dropout"),
            "input_noise_schedule": schedule("input_noise"),
            "runtime_s": self.runtime,
            **{f"{k}_time_s": v for k, v in self.timings.items()},
        }

    def reference_lines(self) -> dict[str, dict[str, float]]:
        return {
            "val_loss": {
                "grid best (same compute)": self.grid_best_val_loss,
                "random best (same compute)": self.random_search_best_val_loss,
            }
        }

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {
                    "grid": self.grid,
                    "random_search": self.random_search,
                    "grid_best": self.grid_best,
                    "random_search_best": self.random_search_best,
                },
            }
        )


def run(config: SelfTuningConfig | None = None, *, progress: bool = False) -> SelfTuningResult:
    """Tune the three hyperparameters by STN, then run the grid and random searches."""
    config = config if config is not None else SelfTuningConfig()
    if not isinstance(config, SelfTuningConfig):
        raise TypeError(f"expected a SelfTuningConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _specs(config: SelfTuningConfig) -> list[HyperparameterSpec]:
    return [
        HyperparameterSpec("weight_decay", "log", math.exp(config.start_log_weight_decay)),
        HyperparameterSpec("dropout", "interval", config.start_dropout, 0.0, 0.9),
        HyperparameterSpec("input_noise", "interval", config.start_input_noise, 0.0, 1.0),
    ]


def _run(config: SelfTuningConfig, progress: bool) -> SelfTuningResult:
    started = time.perf_counter()
    data = load_digits_split(config.n_train, config.n_val, config.n_test, config.seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    model, hparams, history = _self_tune(config, data, progress)
    timings["stn"] = time.perf_counter() - t
    with torch.no_grad():
        u_val = hparams.mean.expand(len(data.X_val), -1)
        val_loss = float(F.cross_entropy(model(data.X_val, u_val), data.y_val))
        u_test = hparams.mean.expand(len(data.X_test), -1)
        test_accuracy = float((model(data.X_test, u_test).argmax(1) == data.y_test).float().mean())

    steps = config.budget // config.trials
    grid_axes = [np.linspace(*SEARCH_BOX[k], config.grid_points) for k in SEARCH_BOX]
    grid_configs = [dict(zip(SEARCH_BOX, map(float, c))) for c in itertools.product(*grid_axes)]
    rng = np.random.default_rng(config.seed)
    random_configs = [
        {k: float(rng.uniform(*SEARCH_BOX[k])) for k in SEARCH_BOX} for _ in range(config.n_random)
    ]
    t = time.perf_counter()
    grid = [_trial(config, data, c, steps) for c in grid_configs]
    timings["grid"] = time.perf_counter() - t
    t = time.perf_counter()
    random_search = [_trial(config, data, c, steps) for c in random_configs]
    timings["random_search"] = time.perf_counter() - t
    grid_best = min(grid, key=lambda r: r["val_loss"])
    random_best = min(random_search, key=lambda r: r["val_loss"])
    return SelfTuningResult(
        config=config,
        val_loss=val_loss,
        test_accuracy=test_accuracy,
        grid_best_val_loss=grid_best["val_loss"],
        random_search_best_val_loss=random_best["val_loss"],
        grid_test_accuracy=grid_best["test_accuracy"],
        random_search_test_accuracy=random_best["test_accuracy"],
        hyperparameters=hparams.values(),
        grid_best=grid_best,
        random_search_best=random_best,
        grid=grid,
        random_search=random_search,
        history=history,
        runtime=time.perf_counter() - started,
        timings=timings,
    )


def _self_tune(
    config: SelfTuningConfig, data: Split, progress: bool
) -> tuple[STNMLP, PerturbedHyperparameters, dict[str, list[float]]]:
    torch.manual_seed(config.seed)
    specs = _specs(config)
    model = STNMLP(config.hidden, len(specs)).to(DTYPE)
    hparams = PerturbedHyperparameters(specs, scale=config.perturb_scale).to(DTYPE)
    n = config.n_train

    def train_loss(m: STNMLP, values: dict[str, Tensor], u: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        x = x + values["input_noise"].unsqueeze(1) * torch.randn_like(x)
        ce = F.cross_entropy(m(x, u, values["dropout"]), y, reduction="none")
        return (ce + values["weight_decay"] * m.weight_sq_norm(u) / (2 * n)).mean()

    def val_loss(m: STNMLP, values: dict[str, Tensor], u: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(m(x, u), y)

    stn = SelfTuningTrainer(
        model,
        hparams,
        train_loss,
        val_loss,
        optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
        hyper_optimizer=torch.optim.Adam(
            [{"params": [hparams.mean], "lr": config.hyper_lr},
             {"params": [hparams.raw_scale], "lr": config.scale_lr}]
        ),
        train_data=[(data.X_train, data.y_train)],
        val_data=[(data.X_val, data.y_val)],
        train_steps=config.train_steps,
        warmup_steps=config.warmup_steps,
        entropy_weight=config.entropy_weight,
        seed=config.seed,
    )
    keys = ("iteration", "train_loss", "val_loss", "log_weight_decay", *HPARAMS,
            *(f"{k}_scale" for k in HPARAMS), "time")
    history: dict[str, list[float]] = {k: [] for k in keys}

    def record(_: Any, rec: dict[str, Any]) -> None:
        with torch.no_grad():
            u = hparams.mean.expand(len(data.X_val), -1)
            loss = float(F.cross_entropy(model(data.X_val, u), data.y_val))
        history["iteration"].append(rec["step"])
        history["train_loss"].append(rec["inner_loss"])
        history["val_loss"].append(loss)
        history["log_weight_decay"].append(math.log(rec["weight_decay"]))
        for k in (*HPARAMS, *(f"{k}_scale" for k in HPARAMS)):
            history[k].append(rec[k])
        history["time"].append(rec["time"])
        bar.update(val_loss=loss, log_wd=history["log_weight_decay"][-1])

    with Progress(config.hyper_steps, "self-tuning", progress) as bar:
        stn.fit(config.hyper_steps, callbacks=[record])
    return model, hparams, history


def _trial(config: SelfTuningConfig, data: Split, hp: dict[str, float], steps: int) -> dict[str, float]:
    """Train the plain network at fixed hyperparameters for ``steps`` Adam steps."""
    torch.manual_seed(config.seed)
    model = nn.Sequential(
        nn.Linear(64, config.hidden), nn.ReLU(), nn.Dropout(hp["dropout"]),
        nn.Linear(config.hidden, N_CLASSES),
    ).to(DTYPE)
    wd = math.exp(hp["log_weight_decay"])
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    weights = [model[0].weight, model[3].weight]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        x = data.X_train + hp["input_noise"] * torch.randn_like(data.X_train)
        decay = sum((w * w).sum() for w in weights)
        loss = F.cross_entropy(model(x), data.y_train) + wd * decay / (2 * config.n_train)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val = float(F.cross_entropy(model(data.X_val), data.y_val))
    return {**hp, "val_loss": val, "test_accuracy": accuracy(model, data.X_test, data.y_test)}

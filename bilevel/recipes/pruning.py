"""Recipe: pruning an MLP on digits by bi-level optimization (BiP) against magnitude pruning.

Setting. scikit-learn's digits (8x8, 10 classes), a stratified split with a fixed ``seed``
into ``n_train`` training, ``n_val`` validation (only recorded, never used for a decision)
and ``n_test`` test images, standardised on the training part. A multilayer perceptron
64-``hidden``-10 (ReLU; default three hidden layers of 128) is trained densely for
``epochs`` epochs of mini-batch SGD (momentum 0.9, weight decay ``weight_decay``); the
weights after ``rewind_epochs`` epochs are kept for rewinding.

Every method then prunes the trained network to the same ``sparsity`` and gets the same
training budget per pruning run (``epochs`` epochs of the same SGD, mini-batches drawn from
its own seeded stream):

* ``bip`` (``test_accuracy``): :class:`bilevel.nn.pruning.BiP` -- per mini-batch one SGD
  step on the weights under the current mask (the lower level, ``gamma = weight_decay``),
  then one SGD step (``score_lr``) on the scores along BiP's implicit gradient
  (``hypergradient="bilinear"``; or an engine mode), the mask being the top-k of the scores;
  no fine-tuning afterwards;
* ``one_shot``: global magnitude pruning of the dense network, no retraining;
* ``magnitude_finetune``: the same mask, then ``epochs`` epochs of training under it;
* ``imp``: iterative magnitude pruning with rewinding to the early weights, ``imp_rate`` of
  the remaining weights per round (``ceil(log(1 - sparsity) / log(1 - imp_rate))`` rounds
  of ``epochs`` epochs each).

``granularity="weight"`` prunes individual weights of all layers (global top-k);
``"neuron"`` prunes hidden units (a fraction ``sparsity`` of each hidden layer's units, the
magnitude of a unit being the L2 norm of its incoming weights). ``density`` is the exact
fraction of the network's weights that remain: for neuron pruning, those of the compacted
network (a removed unit takes its incoming row and its outgoing column with it).

Reported: the test accuracies, the densities, the wall time of each method
(``<method>_time_s``; the dense training is shared), and BiP's per-epoch history
(training loss, validation accuracy, fraction of the mask changed, implicit-gradient norm).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.nn import pruning
from bilevel.recipes._common import Progress, jsonable, torch_threads
from bilevel.recipes._config import ConfigError, RecipeConfig, option
from bilevel.recipes._digits import DTYPE, N_CLASSES, N_DIGITS, Split, load_digits_split

__all__ = ["PruningConfig", "PruningResult", "compact_density", "make_mlp", "run"]


@dataclass(frozen=True)
class PruningConfig(RecipeConfig):
    """Options of the pruning recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"epochs": 30},
        "fast": {"epochs": 8},
    }

    seed: int = option(0, "seed of the split, the initialisation and the mini-batches", minimum=0)
    sparsity: float = option(
        0.95, "fraction of the weights (or of each hidden layer's units) removed",
        minimum=0.0, maximum=0.999,
    )
    granularity: str = option(
        "weight", "'weight' (unstructured, global) or 'neuron' (hidden units, per layer)",
        choices=pruning.GRANULARITIES,
    )
    hidden: str = option("128,128,128", "hidden layer widths, comma-separated")
    n_train: int = option(1000, "training images", minimum=20)
    n_val: int = option(297, "validation images (recorded only)", minimum=10)
    n_test: int = option(500, "test images", minimum=10)
    epochs: int = option(
        None, "epochs of dense training, and of every pruning method's training (per IMP round)",
        minimum=1,
    )
    batch_size: int = option(64, "mini-batch size", minimum=1)
    lr: float = option(0.05, "SGD learning rate of the weights (momentum 0.9)", minimum=0.0, exclusive_minimum=True)
    weight_decay: float = option(
        1e-4, "L2 strength of every training run; BiP's lower-level gamma", minimum=0.0, exclusive_minimum=True
    )
    score_lr: float = option(0.1, "SGD learning rate of BiP's scores (momentum 0.9)", minimum=0.0, exclusive_minimum=True)
    hypergradient: str = option(
        "bilinear", "BiP's implicit gradient: 'bilinear' (closed form) or an engine mode",
        choices=("bilinear", "neumann", "cg"),
    )
    imp: bool = option(True, "run iterative magnitude pruning (the slowest baseline)")
    imp_rate: float = option(0.2, "fraction of the remaining weights IMP removes per round", minimum=0.01, maximum=0.99)
    rewind_epochs: int = option(1, "epoch of dense training IMP rewinds to", minimum=0)
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        total = self.n_train + self.n_val + self.n_test
        if total > N_DIGITS:
            raise ConfigError(
                f"n_train + n_val + n_test = {total} exceeds the {N_DIGITS} digits images"
            )
        self.widths()
        if self.rewind_epochs > self.epochs:
            raise ConfigError(f"option 'rewind_epochs' must be <= epochs ({self.epochs}), got {self.rewind_epochs}")

    def widths(self) -> list[int]:
        try:
            widths = [int(w) for w in self.hidden.split(",")]
        except ValueError:
            widths = []
        if not widths or min(widths) < 1:
            raise ConfigError(
                f"option 'hidden' must be comma-separated positive integers, got {self.hidden!r}"
            )
        return widths


@dataclass
class PruningResult:
    """Outcome of the pruning recipe (see the module docstring)."""

    config: PruningConfig
    test_accuracy: float
    density: float
    dense_test_accuracy: float
    one_shot_test_accuracy: float
    magnitude_finetune_test_accuracy: float
    imp_test_accuracy: float
    imp_density: float
    imp_rounds: int
    val_accuracy: dict[str, float]
    layer_density: dict[str, float]
    history: dict[str, list[float]]
    runtime: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = (
        "train_loss",
        "val_accuracy",
        "mask_change",
        "hypergrad_norm",
    )

    def metrics(self) -> dict[str, float]:
        return {
            "test_accuracy": self.test_accuracy,
            "density": self.density,
            "dense_test_accuracy": self.dense_test_accuracy,
            "one_shot_test_accuracy": self.one_shot_test_accuracy,
            "magnitude_finetune_test_accuracy": self.magnitude_finetune_test_accuracy,
            "imp_test_accuracy": self.imp_test_accuracy,
            "imp_density": self.imp_density,
            "imp_rounds": self.imp_rounds,
            "runtime_s": self.runtime,
            **{f"{k}_time_s": v for k, v in self.timings.items()},
        }

    def reference_lines(self) -> dict[str, dict[str, float]]:
        names = {"dense": "dense", "one_shot": "one-shot", "magnitude_finetune": "magnitude + fine-tune", "imp": "IMP"}
        return {"val_accuracy": {names[k]: v for k, v in self.val_accuracy.items() if k in names}}

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {"val_accuracy": self.val_accuracy, "layer_density": self.layer_density},
            }
        )


def make_mlp(widths: list[int], seed: int, n_in: int = 64, n_out: int = N_CLASSES) -> nn.Sequential:
    """``Linear - ReLU - ... - Linear`` with the given hidden widths, initialised from ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: list[nn.Module] = []
        for a, b in zip([n_in, *widths], widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1] if widths else n_in, n_out))
        return nn.Sequential(*layers).to(DTYPE)
    finally:
        torch.random.set_rng_state(generator_state)


def compact_density(model: nn.Sequential, masks: Mapping[str, Tensor]) -> float:
    """Fraction of the ``Linear`` weights of ``model`` left in the compacted network: a weight
    survives if its mask entry (weight masks) or its output unit and its input unit
    (neuron masks, the input units of a layer being the previous layer's outputs) are kept."""
    kept = total = 0
    alive_in: Tensor | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        key = f"{name}.weight"
        w = module.weight
        mask = masks.get(key)
        if mask is not None and mask.shape == w.shape:
            kept += int(mask.count_nonzero())
            alive_in = None
        else:
            rows = int(mask.count_nonzero()) if mask is not None else w.shape[0]
            cols = int(alive_in.count_nonzero()) if alive_in is not None else w.shape[1]
            kept += rows * cols
            alive_in = mask if mask is not None else None
        total += w.numel()
    return kept / total


@torch.no_grad()
def _accuracy(model: nn.Module, masks: Mapping[str, Tensor] | None, X: Tensor, y: Tensor) -> float:
    out = pruning.masked_call(model, masks, X) if masks else model(X)
    return float((out.argmax(1) == y).float().mean())


class _Batches:
    """Shuffled mini-batches of the training set from a seeded generator."""

    def __init__(self, data: Split, batch_size: int, seed: int) -> None:
        self.X, self.y, self.batch_size = data.X_train, data.y_train, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> list[tuple[Tensor, Tensor]]:
        perm = torch.randperm(len(self.y), generator=self.generator)
        return [
            (self.X[idx], self.y[idx])
            for idx in perm.split(self.batch_size)
        ]


def _train(
    model: nn.Module, masks: Mapping[str, Tensor] | None, batches: _Batches, epochs: int, config: PruningConfig
) -> float:
    """``epochs`` epochs of SGD on the (masked) model; returns the last epoch's mean loss."""
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    mean = math.nan
    for _ in range(epochs):
        losses = []
        for x, y in batches.epoch():
            opt.zero_grad(set_to_none=True)
            out = pruning.masked_call(model, masks, x) if masks else model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        mean = sum(losses) / len(losses)
    return mean


def run(config: PruningConfig | None = None, *, progress: bool = False) -> PruningResult:
    """Train the dense network, prune it by every method, report test accuracies and times."""
    config = config if config is not None else PruningConfig()
    if not isinstance(config, PruningConfig):
        raise TypeError(f"expected a PruningConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _run(config: PruningConfig, progress: bool) -> PruningResult:
    started = time.perf_counter()
    data = load_digits_split(config.n_train, config.n_val, config.n_test, config.seed)
    test, val = (data.X_test, data.y_test), (data.X_val, data.y_val)
    epochs, per_tensor = config.epochs, config.granularity == "neuron"
    timings: dict[str, float] = {}
    val_acc: dict[str, float] = {}

    def stream(tag: int) -> _Batches:
        return _Batches(data, config.batch_size, 1000 * config.seed + tag)

    # the first optimizer imports torch._dynamo (seconds): not a cost of the first method timed
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    # dense training, with a checkpoint to rewind to
    t = time.perf_counter()
    dense = make_mlp(config.widths(), config.seed)
    batches = stream(0)
    _train(dense, None, batches, config.rewind_epochs, config)
    rewind = copy.deepcopy(dense.state_dict())
    _train(dense, None, batches, epochs - config.rewind_epochs, config)
    timings["dense"] = time.perf_counter() - t
    val_acc["dense"] = _accuracy(dense, None, *val)

    # one-shot magnitude pruning, then fine-tuning under the same mask
    t = time.perf_counter()
    one_shot = pruning.topk_mask(pruning.magnitude_scores(dense, config.granularity), config.sparsity, per_tensor=per_tensor)
    timings["one_shot"] = time.perf_counter() - t
    val_acc["one_shot"] = _accuracy(dense, one_shot, *val)
    t = time.perf_counter()
    finetuned = copy.deepcopy(dense)
    _train(finetuned, one_shot, stream(1), epochs, config)
    timings["magnitude_finetune"] = time.perf_counter() - t
    val_acc["magnitude_finetune"] = _accuracy(finetuned, one_shot, *val)

    # iterative magnitude pruning with rewinding
    imp_acc = imp_density = math.nan
    rounds = 0
    if config.imp:
        t = time.perf_counter()
        imp_model = copy.deepcopy(dense)
        imp_batches = stream(2)
        done: list[int] = []
        imp_masks = pruning.iterative_magnitude_pruning(
            imp_model, config.sparsity, lambda m, masks: _train(m, masks, imp_batches, epochs, config),
            rewind, rate=config.imp_rate, granularity=config.granularity,
            callback=lambda r, masks: done.append(r),
        )
        timings["imp"] = time.perf_counter() - t
        rounds = len(done)
        imp_acc = _accuracy(imp_model, imp_masks, *test)
        imp_density = compact_density(imp_model, imp_masks)
        val_acc["imp"] = _accuracy(imp_model, imp_masks, *val)
    else:
        timings["imp"] = math.nan

    # BiP
    history: dict[str, list[float]] = {
        k: [] for k in ("iteration", "train_loss", "val_accuracy", "mask_change", "hypergrad_norm", "time")
    }
    t = time.perf_counter()
    model = copy.deepcopy(dense)
    bip = pruning.BiP(
        model, config.sparsity, granularity=config.granularity, gamma=config.weight_decay,
        lr=config.lr, score_lr=config.score_lr, hypergradient=config.hypergradient,
    )
    lower, upper = stream(3), stream(4)
    previous = bip.masks()
    with Progress(epochs, "pruning (BiP)", progress) as bar:
        for epoch in range(1, epochs + 1):
            records = [bip.step(a, b) for a, b in zip(lower.epoch(), upper.epoch())]
            masks = bip.masks()
            changed = sum(int((masks[n] != previous[n]).sum()) for n in masks)
            kept = sum(int(masks[n].sum()) for n in masks)
            previous = masks
            history["iteration"].append(epoch)
            history["train_loss"].append(sum(r["lower_loss"] for r in records) / len(records))
            history["val_accuracy"].append(_accuracy(model, masks, *val))
            history["mask_change"].append(changed / (2 * kept))
            history["hypergrad_norm"].append(sum(r["hypergrad_norm"] for r in records) / len(records))
            history["time"].append(time.perf_counter() - t)
            bar.update(train_loss=history["train_loss"][-1], val_acc=history["val_accuracy"][-1])
    masks = bip.prune_()
    timings["bip"] = time.perf_counter() - t
    layer_density = {n: float(m.float().mean()) for n, m in masks.items()}
    return PruningResult(
        config=config,
        test_accuracy=_accuracy(model, None, *test),
        density=compact_density(model, masks),
        dense_test_accuracy=_accuracy(dense, None, *test),
        one_shot_test_accuracy=_accuracy(dense, one_shot, *test),
        magnitude_finetune_test_accuracy=_accuracy(finetuned, one_shot, *test),
        imp_test_accuracy=imp_acc,
        imp_density=imp_density,
        imp_rounds=rounds,
        val_accuracy=val_acc,
        layer_density=layer_density,
        history=history,
        runtime=time.perf_counter() - started,
        timings=timings,
    )

"""Recipe: distilling digits into a few synthetic images per class.

Setting. scikit-learn's digits (8x8, 10 classes), a stratified split with a fixed ``seed``
into ``n_train`` training, ``n_val`` validation (recorded only) and ``n_test`` test images,
standardised on the training part.

Method (:func:`bilevel.nn.distillation.distill`). ``images_per_class`` synthetic images per
class, initialised from a random subset of the training set, are learnt by Adam so that a
model fitted on them alone fits the whole training set:

* ``inner_solver="kip"`` (default): kernel ridge regression with the neural tangent kernel
  of an infinitely wide ReLU network (``kernel``, ``depth``; relative ridge ``reg``), in
  closed form; the labels are learnt too (``learn_labels``); float32;
* ``inner_solver="logistic"``: L2-regularised multinomial logistic regression (``l2``) on
  the pixels, solved by L-BFGS, with the implicit hypergradient of
  :func:`bilevel.nn.hypergradient` (conjugate gradients); fixed labels; float64 (the
  conjugate-gradient solve on the Hessian of a 10-example logistic regression loses its
  positive definiteness to float32 rounding).

Reported test accuracies, all of the same model (kernel ridge regression with the same
kernel, or the same logistic regression) fitted on ``images_per_class`` images per class
only: on the distilled images (``test_accuracy``), on a random subset
(``random_subset_test_accuracy``, the distillation's starting point), on the greedy
k-center coreset (``kcenter_test_accuracy``) and on the herding coreset
(``herding_test_accuracy``). ``converged`` is false (and a ConvergenceWarning is raised)
if an inner solve or a linear solve of the logistic route stopped short of its tolerance.
The run folder also holds ``distilled_images.png`` (the initial and the distilled images).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from bilevel.nn import distillation
from bilevel.recipes._common import Progress, jsonable, torch_threads
from bilevel.recipes._config import ConfigError, RecipeConfig, option
from bilevel.recipes._digits import N_CLASSES, N_DIGITS, load_digits_split

__all__ = ["DistillationConfig", "DistillationResult", "run"]

_DEFAULT_STEPS = {"kip": 300, "logistic": 100}
_DEFAULT_LR = {"kip": 0.01, "logistic": 0.05}


@dataclass(frozen=True)
class DistillationConfig(RecipeConfig):
    """Options of the distillation recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "fast": {}}

    seed: int = option(0, "seed of the split and of the initial random subset", minimum=0)
    images_per_class: int = option(1, "synthetic images per class", minimum=1)
    inner_solver: str = option(
        "kip", "'kip' (kernel ridge regression) or 'logistic' (implicit differentiation)",
        choices=distillation.INNER_SOLVERS,
    )
    kernel: str = option("ntk", "KIP's kernel: 'ntk' (ReLU network NTK) or 'rbf'", choices=distillation.KERNELS)
    depth: int = option(1, "hidden layers of the NTK", minimum=1)
    reg: float = option(1e-6, "KIP's ridge, relative to the kernel's mean diagonal", minimum=0.0, exclusive_minimum=True)
    l2: float = option(1e-2, "L2 strength of the logistic regression", minimum=0.0, exclusive_minimum=True)
    learn_labels: bool | None = option(None, "learn the labels too (default: yes for kip; kip only)")
    steps: int | None = option(None, "Adam steps (default 300 for kip, 100 for logistic; fast: a third)", minimum=0)
    lr: float | None = option(
        None, "Adam learning rate (default 0.01 for kip, 0.05 for logistic)", minimum=0.0, exclusive_minimum=True
    )
    batch_size: int = option(0, "training images per step (0: all)", minimum=0)
    n_train: int = option(1200, "training images (the set distilled)", minimum=20)
    n_val: int = option(97, "validation images (recorded only)", minimum=10)
    n_test: int = option(500, "test images", minimum=10)
    record_every: int = option(10, "steps between history records", minimum=1)
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        total = self.n_train + self.n_val + self.n_test
        if total > N_DIGITS:
            raise ConfigError(f"n_train + n_val + n_test = {total} exceeds the {N_DIGITS} digits images")
        if self.learn_labels and self.inner_solver == "logistic":
            raise ConfigError("option 'learn_labels' is only supported with inner_solver 'kip'")
        if self.images_per_class * N_CLASSES > self.n_train // 2:
            raise ConfigError(
                f"option 'images_per_class' must be at most n_train / 20 = {self.n_train // 20}, "
                f"got {self.images_per_class}"
            )

    @property
    def n_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        base = _DEFAULT_STEPS[self.inner_solver]
        return base if self.size == "default" else base // 3

    @property
    def adam_lr(self) -> float:
        return self.lr if self.lr is not None else _DEFAULT_LR[self.inner_solver]

    @property
    def labels_learnt(self) -> bool:
        return self.inner_solver == "kip" if self.learn_labels is None else self.learn_labels


@dataclass
class DistillationResult:
    """Outcome of the distillation recipe (see the module docstring)."""

    config: DistillationConfig
    test_accuracy: float
    random_subset_test_accuracy: float
    kcenter_test_accuracy: float
    herding_test_accuracy: float
    images: list[list[float]]
    labels: list[Any]
    classes: list[int]
    initial_images: list[list[float]]
    val_accuracy: dict[str, float]
    history: dict[str, list[float]]
    warnings: list[str] = field(default_factory=list)
    runtime: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = ("outer_loss", "val_accuracy")

    def metrics(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.test_accuracy,
            "random_subset_test_accuracy": self.random_subset_test_accuracy,
            "kcenter_test_accuracy": self.kcenter_test_accuracy,
            "herding_test_accuracy": self.herding_test_accuracy,
            "converged": not self.warnings,
            "runtime_s": self.runtime,
            **{f"{k}_time_s": v for k, v in self.timings.items()},
        }

    def reference_lines(self) -> dict[str, dict[str, float]]:
        names = {"random_subset": "random subset", "kcenter": "k-center", "herding": "herding"}
        return {"val_accuracy": {names[k]: v for k, v in self.val_accuracy.items()}}

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {
                    "images": self.images,
                    "labels": self.labels,
                    "classes": self.classes,
                    "initial_images": self.initial_images,
                    "val_accuracy": self.val_accuracy,
                    "warnings": self.warnings,
                },
            }
        )

    def extra_plots(self, run_dir: Path) -> list[Path]:
        """Write ``distilled_images.png``: the initial (random subset) and the distilled
        images, one column per class (8x8 standardised pixels, each image on its own grey
        scale); returns the paths written."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        k = self.config.images_per_class
        order = sorted(range(len(self.classes)), key=lambda i: (self.classes[i], i))
        fig = Figure(figsize=(1.1 * N_CLASSES, 1.25 * 2 * k + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2 * k, N_CLASSES, squeeze=False)
        for column, i in enumerate(order):
            row, c = column % k, column // k
            for block, (images, title) in enumerate(((self.initial_images, "initial"), (self.images, "distilled"))):
                ax = axes[block * k + row][c]
                ax.imshow(torch.tensor(images[i]).reshape(8, 8).numpy(), cmap="gray_r")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{title} {self.classes[i]}", fontsize="small")
        fig.suptitle(f"distillation ({self.config.inner_solver}), test accuracy {self.test_accuracy:.3f}")
        path = run_dir / "distilled_images.png"
        with open(path, "xb") as f:
            fig.savefig(f, format="png", dpi=110)
        return [path]


def run(config: DistillationConfig | None = None, *, progress: bool = False) -> DistillationResult:
    """Distil the training set, then compare with the coreset baselines."""
    config = config if config is not None else DistillationConfig()
    if not isinstance(config, DistillationConfig):
        raise TypeError(f"expected a DistillationConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _run(config: DistillationConfig, progress: bool) -> DistillationResult:
    started = time.perf_counter()
    data = load_digits_split(config.n_train, config.n_val, config.n_test, config.seed)
    dtype = torch.float32 if config.inner_solver == "kip" else torch.float64
    X, y = data.X_train.to(dtype), data.y_train
    X_val, X_test = data.X_val.to(dtype), data.X_test.to(dtype)
    k = config.images_per_class
    solver_options = {"kernel": config.kernel, "depth": config.depth, "reg": config.reg, "l2": config.l2}

    def accuracy(X_s: Tensor, labels: Tensor, X_eval: Tensor, y_eval: Tensor) -> float:
        pred = distillation.predict(config.inner_solver, X_s, labels, X_eval, n_classes=N_CLASSES, **solver_options)
        return float((pred == y_eval).float().mean())

    timings: dict[str, float] = {}
    t = time.perf_counter()
    subsets = {
        "random_subset": distillation.random_subset(y, k, torch.Generator().manual_seed(config.seed)),
        "kcenter": distillation.kcenter(X, y, k),
        "herding": distillation.herding(X, y, k),
    }
    test_acc = {name: accuracy(X[idx], y[idx], X_test, data.y_test) for name, idx in subsets.items()}
    val_acc = {name: accuracy(X[idx], y[idx], X_val, data.y_val) for name, idx in subsets.items()}
    timings["baselines"] = time.perf_counter() - t

    steps = config.n_steps
    with Progress(steps // config.record_every + 1, "distillation", progress) as bar:

        def record(step: int, images: Tensor, labels: Tensor) -> dict[str, float]:
            value = accuracy(images, labels, X_val, data.y_val)
            bar.update(val_acc=value)
            return {"val_accuracy": value}

        t = time.perf_counter()
        result = distillation.distill(
            X, y, k, inner_solver=config.inner_solver, learn_labels=config.labels_learnt,
            steps=steps, lr=config.adam_lr, batch_size=config.batch_size or None, seed=config.seed,
            init=subsets["random_subset"], record_every=config.record_every, callback=record,
            **solver_options,
        )
        timings["distill"] = time.perf_counter() - t
    history = {"iteration": result.history["step"], **{k_: v for k_, v in result.history.items() if k_ != "step"}}
    labels = result.labels.tolist()
    init = X[subsets["random_subset"]]
    return DistillationResult(
        config=config,
        test_accuracy=accuracy(result.images, result.labels, X_test, data.y_test),
        random_subset_test_accuracy=test_acc["random_subset"],
        kcenter_test_accuracy=test_acc["kcenter"],
        herding_test_accuracy=test_acc["herding"],
        images=result.images.tolist(),
        labels=labels,
        classes=result.classes.tolist(),
        initial_images=init.tolist(),
        val_accuracy=val_acc,
        history=history,
        warnings=result.warnings,
        runtime=time.perf_counter() - started,
        timings=timings,
    )

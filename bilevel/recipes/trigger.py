"""Recipe: bi-level trigger optimization (BLTO) against contrastive learning, and the
detection of the poisoned data -- a red-teaming exercise for one's own self-supervised
pipeline.

Purpose. This recipe lets the owner of a self-supervised (contrastive) training pipeline
measure how far a small amount of poisoned, unlabelled data can plant a backdoor in it, and
whether scaled-prediction-consistency detection would find the poisoned images. It works on
scikit-learn's bundled digits only; use it on pipelines and data you are responsible for.

Setting. The 8x8 digits (1797 images, bundled with scikit-learn: nothing downloads),
scaled to ``[0, 1]`` and upsampled bilinearly to ``resolution`` x ``resolution``, split
(stratified, ``seed``) into ``n_train`` training images (the victim's unlabelled set; their
labels feed only the downstream probe) and the rest for testing. The attacker poisons
``round(poison_rate * n_train)`` training images, all of class ``target`` (drawn from the
seed), by applying the trigger to them -- no label is touched.

Attack (:func:`bilevel.nn.backdoor.optimize_trigger`). A trigger generator ``g_psi`` with
``||g_psi(x) - x||_inf <= budget`` (``generator="pattern"``: one learnt pattern for every
image; ``"conditional"``: the pattern plus an input-dependent convolutional correction, closer
to the paper's generator network but less stable here -- at the defaults it found no
trigger on seed 1, see benchmarks/trigger.md) is optimised against a surrogate victim, an MLP encoder
trained by SimCLR (NT-Xent, random affine crops and intensity jitter, all in torch and
differentiable) on the poisoned set: ``outer_steps`` times, ``inner_steps`` Adam steps of
the surrogate then one Adam step on ``psi`` maximising the similarity of augmented
triggered images of the other classes to augmented target-class images, along the
hypergradient through ``unroll_steps`` look-ahead steps of the surrogate (``method=
"unrolled"``) or with the surrogate fixed (``"first_order"``); the surrogate restarts from
a new initialisation every ``reinit_every`` outer steps.

Victim evaluation. A fresh encoder (its own seed) is trained by plain SimCLR for
``victim_steps`` steps on the poisoned set, then a linear probe (multinomial logistic
regression) on the clean labelled training images. ``attack_success_rate``: the fraction of
non-target test images that the probe assigns to ``target`` once triggered;
``clean_accuracy``: its accuracy on clean test images. The same pipeline (same encoder
initialisation, same batches and views) is run with no poisoning
(``unpoisoned_clean_accuracy``; ``unpoisoned_attack_success_rate`` applies the learnt
trigger to this clean victim: the part of the attack that does not need the poisoning,
the trigger acting as a transferable adversarial perturbation), and with two fixed
triggers of the same ``l_inf`` budget: a 4x4 checkerboard patch and uniform random
``+-budget`` noise (``patch_trigger_attack_success_rate``,
``random_trigger_attack_success_rate``).

Detection. On the BLTO victim's classifier (encoder + probe) and its poisoned training set,
``spc_auroc`` is the AUROC of scaled prediction consistency (SCALE-UP's SPC, scales 2..12)
for telling the poisoned images from the clean ones, and ``optimized_spc_auroc`` that of
the bi-level optimised masked SPC of Pal et al. (ICLR 2024)
(:func:`bilevel.nn.backdoor.optimized_spc`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bilevel.nn import backdoor as bd
from bilevel.recipes._common import Progress, jsonable, torch_threads
from bilevel.recipes._config import ConfigError, RecipeConfig, option

__all__ = ["TriggerConfig", "TriggerResult", "digit_images", "run"]

N_DIGITS = 1797
N_CLASSES = 10
MIN_TEST = 100


@dataclass(frozen=True)
class TriggerConfig(RecipeConfig):
    """Options of the trigger recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"outer_steps": 100, "victim_steps": 150},
        "fast": {"outer_steps": 50, "victim_steps": 100},
    }

    seed: int = option(0, "seed of the split, the poisoned images and every initialisation", minimum=0)
    poison_rate: float = option(
        0.01, "fraction of the training set poisoned (target-class images carrying the trigger), in (0, 1)"
    )
    budget: float = option(
        0.25, "l_inf budget of every trigger (pixels in [0, 1])", minimum=0.0, exclusive_minimum=True,
        maximum=1.0,
    )
    target: int = option(0, "target class of the backdoor", minimum=0, maximum=N_CLASSES - 1)
    generator: str = option(
        "pattern", "'pattern' (one learnt pattern) or 'conditional' (pattern + input-dependent correction)",
        choices=("conditional", "pattern"),
    )
    method: str = option(
        "unrolled", "trigger hypergradient: 'unrolled' (through the surrogate's steps) or 'first_order'",
        choices=("unrolled", "first_order"),
    )
    unroll_steps: int = option(1, "surrogate steps differentiated through (method 'unrolled')", minimum=1)
    truncate: int | None = option(None, "differentiate only the last steps of the unroll (None: all)", minimum=1)
    outer_steps: int = option(None, "trigger (Adam) steps", minimum=1)
    inner_steps: int = option(2, "surrogate SimCLR steps per trigger step", minimum=1)
    reinit_every: int = option(50, "re-initialise the surrogate every this many trigger steps", minimum=1)
    victim_steps: int = option(None, "SimCLR steps of each victim encoder", minimum=1)
    batch_size: int = option(256, "SimCLR batch size", minimum=4)
    temperature: float = option(0.5, "NT-Xent temperature", minimum=0.0, exclusive_minimum=True)
    lr: float = option(1e-3, "Adam learning rate of the encoders", minimum=0.0, exclusive_minimum=True)
    trigger_lr: float = option(0.05, "Adam learning rate of the trigger generator", minimum=0.0, exclusive_minimum=True)
    resolution: int = option(16, "side of the upsampled images", minimum=8, maximum=64)
    n_train: int = option(1200, "training images (the rest is the test set)", minimum=100)
    detection_rounds: int = option(4, "rounds of the optimised SPC (mask / selection)", minimum=0)
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        if not 0 < self.poison_rate < 1:
            raise ConfigError(f"option 'poison_rate' must lie in (0, 1), got {self.poison_rate!r}")
        if self.n_train > N_DIGITS - MIN_TEST:
            raise ConfigError(
                f"option 'n_train' must be <= {N_DIGITS - MIN_TEST} (at least {MIN_TEST} of the "
                f"{N_DIGITS} digits images are kept for testing), got {self.n_train}"
            )
        if self.truncate is not None and self.truncate > self.unroll_steps:
            raise ConfigError(
                f"option 'truncate' ({self.truncate}) must be <= unroll_steps ({self.unroll_steps})"
            )
        n_poison = self.n_poisoned
        if n_poison < 1:
            raise ConfigError(
                f"option 'poison_rate' = {self.poison_rate} poisons no image: "
                f"round({self.poison_rate} * {self.n_train}) = 0; use at least {1 / self.n_train:.2g}"
            )
        available = _target_count(self.n_train, self.target, self.seed)
        if n_poison > available:
            raise ConfigError(
                f"option 'poison_rate' = {self.poison_rate} needs {n_poison} target-class images "
                f"but the training split has only {available} images of class {self.target} "
                f"(too few target-class images); use poison_rate <= {available / self.n_train:.3g}"
            )

    @property
    def n_poisoned(self) -> int:
        """Number of poisoned training images, ``round(poison_rate * n_train)``."""
        return round(self.poison_rate * self.n_train)


def _labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def _split(n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the stratified training and test parts."""
    from sklearn.model_selection import train_test_split

    y = _labels()
    return train_test_split(np.arange(len(y)), train_size=n_train, random_state=seed, stratify=y)


def _target_count(n_train: int, target: int, seed: int) -> int:
    train, _ = _split(n_train, seed)
    return int((_labels()[train] == target).sum())


def digit_images(n_train: int, seed: int, resolution: int = 16) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(X_train, y_train, X_test, y_test)``: digits in ``[0, 1]`` (float32, ``(n, 1, r, r)``
    with ``r = resolution``, bilinear upsampling of the 8x8 images) and int64 labels, split
    stratified with ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = _split(n_train, seed)

    def images(index: np.ndarray) -> Tensor:
        x = torch.tensor(digits.images[index] / 16.0, dtype=torch.float32).unsqueeze(1)
        return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(0, 1)

    def labels(index: np.ndarray) -> Tensor:
        return torch.tensor(digits.target[index], dtype=torch.int64)

    return images(train), labels(train), images(test), labels(test)


@dataclass
class TriggerResult:
    """Outcome of the trigger recipe (see the module docstring)."""

    config: TriggerConfig
    attack_success_rate: float
    random_trigger_attack_success_rate: float
    patch_trigger_attack_success_rate: float
    unpoisoned_attack_success_rate: float
    clean_accuracy: float
    unpoisoned_clean_accuracy: float
    random_trigger_clean_accuracy: float
    patch_trigger_clean_accuracy: float
    spc_auroc: float
    optimized_spc_auroc: float
    poisoned_index: list[int]
    history: dict[str, list[float]]
    examples: dict[str, Tensor] = field(default_factory=dict, repr=False)
    runtime: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = ("similarity", "inner_loss", "hypergrad_norm")

    def metrics(self) -> dict[str, float]:
        return {
            "attack_success_rate": self.attack_success_rate,
            "random_trigger_attack_success_rate": self.random_trigger_attack_success_rate,
            "patch_trigger_attack_success_rate": self.patch_trigger_attack_success_rate,
            "unpoisoned_attack_success_rate": self.unpoisoned_attack_success_rate,
            "clean_accuracy": self.clean_accuracy,
            "unpoisoned_clean_accuracy": self.unpoisoned_clean_accuracy,
            "random_trigger_clean_accuracy": self.random_trigger_clean_accuracy,
            "patch_trigger_clean_accuracy": self.patch_trigger_clean_accuracy,
            "spc_auroc": self.spc_auroc,
            "optimized_spc_auroc": self.optimized_spc_auroc,
            "n_poisoned": len(self.poisoned_index),
            "final_similarity": self.history["similarity"][-1],
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
                "details": {"poisoned_index": self.poisoned_index},
            }
        )

    def extra_plots(self, run_dir: str | os.PathLike[str]) -> list[str]:
        """Write ``triggers.png`` (the learnt trigger next to the baselines) into ``run_dir``
        and return its path."""
        path = Path(run_dir) / "triggers.png"
        plot_triggers(path, self.examples, self.config.budget)
        return [str(path)]


def plot_triggers(path: Path, examples: dict[str, Tensor], budget: float) -> None:
    """One row per example test image: the clean image, then for each trigger (learnt,
    patch, random) the triggered image and its perturbation (diverging colours,
    ``+-budget``); saved as PNG by Matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    clean = examples["clean"]
    names = [("learnt", "BLTO (learnt)"), ("patch", "patch"), ("random", "random noise")]
    rows, cols = len(clean), 1 + 2 * len(names)
    fig = Figure(figsize=(1.6 * cols, 1.7 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    for r in range(rows):
        panels = [(clean[r, 0], "clean", "gray", 0.0, 1.0)]
        for key, label in names:
            triggered = examples[key][r, 0]
            panels.append((triggered, f"{label}", "gray", 0.0, 1.0))
            panels.append((triggered - clean[r, 0], f"{label}: x' - x", "RdBu_r", -budget, budget))
        for c, (image, title, cmap, lo, hi) in enumerate(panels):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(image.numpy(), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"triggers of l_inf budget {budget:g}")
    with open(path, "xb") as f:
        fig.savefig(f, format="png", dpi=110)


def run(config: TriggerConfig | None = None, *, progress: bool = False) -> TriggerResult:
    """Optimise the trigger, then train and evaluate the four victims and run detection."""
    config = config if config is not None else TriggerConfig()
    if not isinstance(config, TriggerConfig):
        raise TypeError(f"expected a TriggerConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _encoder(shape: tuple[int, ...], seed: int) -> bd.ContrastiveEncoder:
    """A fresh encoder initialised from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return bd.ContrastiveEncoder(shape).float()


def _run(config: TriggerConfig, progress: bool) -> TriggerResult:
    started = time.perf_counter()
    X, y, X_test, y_test = digit_images(config.n_train, config.seed, config.resolution)
    shape = tuple(X.shape[1:])
    rng = np.random.default_rng(config.seed)
    candidates = np.flatnonzero(y.numpy() == config.target)
    poisoned = torch.as_tensor(np.sort(rng.choice(candidates, config.n_poisoned, replace=False)))
    augmentation = bd.Augmentation()
    base = 1000 * (config.seed + 1)  # encoder seeds: base + k surrogates, base - 1 victims
    timings: dict[str, float] = {}

    # ---- the attack: bi-level trigger optimization against a surrogate victim
    t = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = bd.TriggerGenerator(shape, config.budget, conditional=config.generator == "conditional").float()
    with Progress(config.outer_steps, "trigger", progress) as bar:
        optimized = bd.optimize_trigger(
            generator,
            lambda k: _encoder(shape, base + k),
            X,
            poisoned,
            reference=X[y == config.target],
            attack_images=X[y != config.target],
            outer_steps=config.outer_steps,
            inner_steps=config.inner_steps,
            reinit_every=config.reinit_every,
            method=config.method,
            unroll_steps=config.unroll_steps,
            truncate=config.truncate,
            batch_size=config.batch_size,
            lr=config.lr,
            trigger_lr=config.trigger_lr,
            temperature=config.temperature,
            augmentation=augmentation,
            seed=config.seed,
            progress=lambda rec: bar.update(similarity=rec["similarity"], inner=rec["inner_loss"]),
        )
    generator.eval().requires_grad_(False)
    timings["trigger"] = time.perf_counter() - t

    # ---- the victims: plain SimCLR on the poisoned set, linear probe on clean labels
    g = torch.Generator().manual_seed(config.seed)
    triggers: dict[str, Any] = {
        "learnt": generator,
        "patch": bd.FixedTrigger.patch(shape, config.budget).float(),
        "random": bd.FixedTrigger.random(shape, config.budget, g).float(),
    }

    def victim(trigger: Any) -> bd.LinearProbe:
        encoder = _encoder(shape, base - 1)
        batches = bd.ContrastiveBatches(
            X, config.batch_size, augmentation, poison_index=poisoned, seed=base - 1
        )
        bd.train_contrastive(
            encoder, batches, config.victim_steps, augmentation=augmentation,
            temperature=config.temperature, lr=config.lr, trigger=trigger,
        )
        return bd.fit_linear_probe(encoder, X, y, n_classes=N_CLASSES)

    def accuracy(classifier: Any) -> float:
        with torch.no_grad():
            return float((classifier(X_test).argmax(dim=1) == y_test).float().mean())

    t = time.perf_counter()
    clean_victim = victim(None)
    victims = {name: victim(trigger) for name, trigger in triggers.items()}
    timings["victims"] = time.perf_counter() - t
    asr = {
        name: bd.attack_success_rate(victims[name], X_test, y_test, trigger, config.target)
        for name, trigger in triggers.items()
    }

    # ---- detection of the poisoned training images on the BLTO victim
    t = time.perf_counter()
    with torch.no_grad():
        X_poisoned = X.index_put((poisoned,), generator(X[poisoned]))
    is_poisoned = torch.zeros(len(X), dtype=torch.bool)
    is_poisoned[poisoned] = True
    spc = bd.scaled_prediction_consistency(victims["learnt"], X_poisoned)
    mspc = bd.optimized_spc(victims["learnt"], X_poisoned, rounds=config.detection_rounds)
    timings["detection"] = time.perf_counter() - t

    shown = torch.nonzero(y_test != config.target).flatten()[:3]
    with torch.no_grad():
        examples = {"clean": X_test[shown]} | {k: trig(X_test[shown]) for k, trig in triggers.items()}
    history = {k: v for k, v in optimized.history.items() if k != "reinitialized"}
    return TriggerResult(
        config=config,
        attack_success_rate=asr["learnt"],
        random_trigger_attack_success_rate=asr["random"],
        patch_trigger_attack_success_rate=asr["patch"],
        unpoisoned_attack_success_rate=bd.attack_success_rate(
            clean_victim, X_test, y_test, generator, config.target
        ),
        clean_accuracy=accuracy(victims["learnt"]),
        unpoisoned_clean_accuracy=accuracy(clean_victim),
        random_trigger_clean_accuracy=accuracy(victims["random"]),
        patch_trigger_clean_accuracy=accuracy(victims["patch"]),
        spc_auroc=bd.auroc(spc, is_poisoned),
        optimized_spc_auroc=bd.auroc(mspc.scores, is_poisoned),
        poisoned_index=poisoned.tolist(),
        history=history,
        examples=examples,
        runtime=time.perf_counter() - started,
        timings=timings,
    )

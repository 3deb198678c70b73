"""Bounded triggers and their bi-level optimization against contrastive learning (BLTO)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bilevel.errors import NonFiniteError
from bilevel.nn._trainer import BilevelTrainer
from bilevel.nn.backdoor._contrastive import (
    Augmentation,
    ContrastiveBatches,
    _features,
    contrastive_loss,
)

__all__ = [
    "AttackBatch",
    "AttackBatches",
    "FixedTrigger",
    "TriggerGenerator",
    "TriggerOptimization",
    "attack_success_rate",
    "optimize_trigger",
    "project_linf",
    "target_similarity",
]

#: Hypergradient modes of :func:`optimize_trigger` and the engine mode each one uses.
TRIGGER_METHODS = {"unrolled": "unrolled", "first_order": "fd"}


def project_linf(z: Tensor, x: Tensor, budget: float, low: float = 0.0, high: float = 1.0) -> Tensor:
    r"""Euclidean projection of ``z`` onto the images within ``budget`` of ``x`` in the
    ``l_inf`` norm that stay in the pixel range:

    .. math::

        \Pi(z) = \arg\min_{v}\ \|v - z\|_2 \ \ \text{s.t.}\ \ \|v - x\|_\infty \le \epsilon,
        \ \ low \le v \le high,

    the intersection of two boxes, a box, so coordinate-wise
    ``clamp(z, max(x - eps, low), min(x + eps, high))`` (``x`` must lie in the pixel range).
    """
    if not budget > 0:
        raise ValueError(f"project_linf: budget must be > 0, got {budget}")
    lower = torch.clamp(x - budget, min=low)
    upper = torch.clamp(x + budget, max=high)
    return torch.minimum(torch.maximum(z, lower), upper)


class TriggerGenerator(nn.Module):
    r"""The trigger generator ``g_psi`` of BLTO: an ``l_inf``-bounded perturbation,

    .. math::

        g_\psi(x) = \Pi\big(x + \epsilon \tanh(u + c_\phi(x))\big), \qquad \psi = (u, \phi),

    with ``u`` a learnt pattern (one value per pixel), ``c_phi`` an optional input-dependent
    correction (``conditional=True``: two 3x3 convolutions, the last initialised to zero)
    and ``Pi`` :func:`project_linf` (here only the pixel range can bind: ``|eps tanh| <=
    eps``). ``u = 0`` at the start: no trigger.
    """

    def __init__(self, shape: Sequence[int], budget: float, *, conditional: bool = False, channels: int = 8) -> None:
        super().__init__()
        if not budget > 0:
            raise ValueError(f"TriggerGenerator: budget must be > 0, got {budget}")
        self.budget = float(budget)
        self.pattern = nn.Parameter(torch.zeros(*shape))
        self.correction: nn.Module | None = None
        if conditional:
            c = shape[0]
            last = nn.Conv2d(channels, c, 3, padding=1)
            for param in last.parameters():  # weight and bias: the correction starts at 0
                nn.init.zeros_(param)
            self.correction = nn.Sequential(nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), last)

    def perturbation(self, x: Tensor) -> Tensor:
        """``eps tanh(u + c_phi(x))``, shaped like ``x``."""
        logits = self.pattern.expand_as(x)
        if self.correction is not None:
            logits = logits + self.correction(x)
        return self.budget * torch.tanh(logits)

    def forward(self, x: Tensor) -> Tensor:
        return project_linf(x + self.perturbation(x), x, self.budget)


class FixedTrigger(nn.Module):
    """A fixed additive trigger ``Pi(x + delta)`` (:func:`project_linf`), ``delta`` clipped
    to the budget: the baselines of the same budget as the learnt trigger."""

    delta: Tensor  # a buffer

    def __init__(self, delta: Tensor, budget: float) -> None:
        super().__init__()
        if not budget > 0:
            raise ValueError(f"FixedTrigger: budget must be > 0, got {budget}")
        self.budget = float(budget)
        self.register_buffer("delta", delta.clamp(-budget, budget))

    @classmethod
    def patch(cls, shape: Sequence[int], budget: float, size: int = 4) -> FixedTrigger:
        """A ``size x size`` checkerboard of ``+-budget`` in the bottom-right corner, one
        pixel in from the border (BadNets-style patch, bounded like the learnt trigger)."""
        c, h, w = shape
        if not 1 <= size <= min(h, w) - 1:
            raise ValueError(f"FixedTrigger.patch: size must be in [1, {min(h, w) - 1}], got {size}")
        delta = torch.zeros(c, h, w)
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        delta[:, h - 1 - size : h - 1, w - 1 - size : w - 1] = budget * (1 - 2 * ((ii + jj) % 2)).float()
        return cls(delta, budget)

    @classmethod
    def random(cls, shape: Sequence[int], budget: float, generator: torch.Generator) -> FixedTrigger:
        """Uniform random signs times ``budget`` on every pixel (noise using the full budget)."""
        signs = torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1
        return cls(budget * signs, budget)

    def perturbation(self, x: Tensor) -> Tensor:
        return self.delta.to(x.dtype).expand_as(x)

    def forward(self, x: Tensor) -> Tensor:
        return project_linf(x + self.perturbation(x), x, self.budget)


@torch.no_grad()
def attack_success_rate(
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    trigger: Callable[[Tensor], Tensor],
    target: int,
) -> float:
    """Fraction of the images *not* of class ``target`` that ``classifier`` assigns to
    ``target`` once ``trigger`` is applied."""
    keep = labels != target
    if not keep.any():
        raise ValueError("attack_success_rate: every image is of the target class")
    predicted = classifier(trigger(images[keep])).argmax(dim=1)
    return float((predicted == target).float().mean())


class AttackBatch(NamedTuple):
    """The outer loss's batch: images to trigger with their views, and reference images of
    the target class with theirs."""

    images: Tensor
    views: Tensor
    reference: Tensor
    reference_views: Tensor


class AttackBatches:
    """Endless batches of ``batch_size`` images from ``images`` and ``reference_size`` from
    ``reference``, drawn with replacement, each with one random view, from a generator
    seeded with ``seed`` (an epoch is ``epoch_length`` batches)."""

    def __init__(
        self,
        images: Tensor,
        reference: Tensor,
        augmentation: Augmentation,
        *,
        batch_size: int = 256,
        reference_size: int = 128,
        seed: int = 0,
        epoch_length: int = 100,
    ) -> None:
        if len(images) == 0 or len(reference) == 0:
            raise ValueError("AttackBatches: images and reference must be non-empty")
        self.images, self.reference, self.augmentation = images, reference, augmentation
        self.batch_size, self.reference_size, self.epoch_length = batch_size, reference_size, epoch_length
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[AttackBatch]:
        g, dtype = self.generator, self.images.dtype
        for _ in range(self.epoch_length):
            i = torch.randint(len(self.images), (self.batch_size,), generator=g)
            j = torch.randint(len(self.reference), (self.reference_size,), generator=g)
            yield AttackBatch(
                self.images[i], self.augmentation.sample(len(i), g, dtype),
                self.reference[j], self.augmentation.sample(len(j), g, dtype),
            )


def target_similarity(
    encoder: nn.Module,
    trigger: Callable[[Tensor], Tensor],
    batch: AttackBatch,
    *,
    augmentation: Augmentation,
    representation: str = "projection",
) -> Tensor:
    r"""BLTO's outer objective on a batch: the mean cosine similarity between views of
    triggered images and views of target-class reference images,

    .. math::

        S(\psi, \theta) = \frac{1}{m r} \sum_{i, j}
        \cos\big(f_\theta(t_i(g_\psi(x_i))),\ f_\theta(t'_j(x^r_j))\big),

    ``f_theta`` the encoder's projection (``representation="projection"``) or its
    ``features``."""
    if representation not in ("projection", "features"):
        raise ValueError(f"representation must be 'projection' or 'features', got {representation!r}")
    embed = encoder if representation == "projection" else functools.partial(_features, encoder)
    a = nn.functional.normalize(embed(augmentation(trigger(batch.images), batch.views)), dim=1)
    b = nn.functional.normalize(embed(augmentation(batch.reference, batch.reference_views)), dim=1)
    return a.mean(0) @ b.mean(0)


@dataclass
class TriggerOptimization:
    """Outcome of :func:`optimize_trigger`: the trained ``generator`` and ``history`` with one
    record per outer step: ``step``, ``inner_loss`` (NT-Xent of the surrogate on the poisoned
    set), ``similarity`` (the outer objective ``S`` at the hypergradient's end point),
    ``hypergrad_norm``, ``reinitialized`` (the surrogate was re-initialised after this step)
    and ``time``."""

    generator: TriggerGenerator
    history: dict[str, list[float]] = field(repr=False)
    status: str = "completed"


def optimize_trigger(
    generator: TriggerGenerator,
    surrogate: Callable[[int], nn.Module],
    images: Tensor,
    poison_index: Tensor,
    reference: Tensor,
    attack_images: Tensor,
    *,
    outer_steps: int = 150,
    inner_steps: int = 2,
    reinit_every: int = 50,
    method: str = "unrolled",
    unroll_steps: int = 1,
    truncate: int | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    trigger_lr: float = 0.05,
    temperature: float = 0.5,
    augmentation: Augmentation | None = None,
    representation: str = "projection",
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TriggerOptimization:
    r"""Bi-level trigger optimization (Sun et al., ICLR 2024) against SimCLR-style training.

    .. math::

        \max_\psi\ \mathbb{E}\, S\big(f_{\theta^*(\psi)}(t(g_\psi(x))),\ f_{\theta^*(\psi)}(t'(x^r))\big)
        \quad \text{s.t.}\quad \theta^*(\psi) \in \arg\min_\theta
        \mathcal{L}_{\mathrm{NT\text{-}Xent}}\big(\theta;\ D \setminus D_p \cup g_\psi(D_p)\big),

    ``D`` the victim's unlabelled training set ``images``, ``D_p`` its rows ``poison_index``
    (target-class images, which carry the trigger), ``x^r`` ``reference`` target-class images
    and ``x`` ``attack_images`` (images of other classes). The surrogate victim
    ``surrogate(k)`` (a fresh encoder from seed ``k``) trains on the poisoned set while the
    trigger is optimised, by :class:`bilevel.nn.BilevelTrainer`: each outer step takes
    ``inner_steps`` Adam steps on the surrogate, then one Adam step on ``psi`` along the
    hypergradient of ``-S``:

    * ``method="unrolled"``: reverse mode through ``unroll_steps`` further (look-ahead) steps
      of the surrogate's Adam, on the poisoned set, from its current parameters
      (:func:`bilevel.nn.hypergradient`, ``method="unrolled"``; ``truncate`` differentiates
      only the last steps): the trigger's effect on the surrogate's training is part of the
      gradient;
    * ``method="first_order"``: the surrogate held fixed (engine mode ``"fd"`` with
      ``xi = 0``): only the direct effect of the trigger on the triggered embeddings.

    Every ``reinit_every`` outer steps the surrogate is re-initialised from a new seed (the
    paper's periodic re-initialisation: the trigger must work along the whole of a victim's
    training, from scratch, not against one late-stage encoder).
    """
    if method not in TRIGGER_METHODS:
        raise ValueError(f"optimize_trigger: method must be one of {sorted(TRIGGER_METHODS)}, got {method!r}")
    for name, value in (("outer_steps", outer_steps), ("inner_steps", inner_steps),
                        ("reinit_every", reinit_every), ("unroll_steps", unroll_steps)):
        if value < 1:
            raise ValueError(f"optimize_trigger: {name} must be >= 1, got {value}")
    if len(poison_index) == 0:
        raise ValueError("optimize_trigger: poison_index is empty (nothing carries the trigger)")
    augmentation = augmentation or Augmentation()
    model = surrogate(seed)
    inner_opt = torch.optim.Adam(model.parameters(), lr=lr)
    outer_opt = torch.optim.Adam(generator.parameters(), lr=trigger_lr)

    def inner_loss(encoder: nn.Module, trigger: Any, batch: Any) -> Tensor:
        return contrastive_loss(encoder, trigger, batch, augmentation=augmentation, temperature=temperature)

    def outer_loss(encoder: nn.Module, trigger: Any, batch: AttackBatch) -> Tensor:
        return -target_similarity(
            encoder, trigger, batch, augmentation=augmentation, representation=representation
        )

    options: dict[str, Any] = (
        {"steps": unroll_steps, "truncate": truncate} if method == "unrolled" else {"xi": 0.0}
    )
    trainer = BilevelTrainer(
        model,
        generator,
        inner_loss,
        outer_loss,
        inner_optimizer=inner_opt,
        outer_optimizer=outer_opt,
        inner_data=ContrastiveBatches(images, batch_size, augmentation, poison_index=poison_index, seed=seed),
        outer_data=AttackBatches(attack_images, reference, augmentation, batch_size=batch_size,
                                 reference_size=max(2, batch_size // 2), seed=seed + 1),
        inner_steps=inner_steps,
        method=TRIGGER_METHODS[method],
        method_options=options,
    )
    history: dict[str, list[float]] = {
        k: [] for k in ("iteration", "inner_loss", "similarity", "hypergrad_norm", "reinitialized", "time")
    }
    started = time.perf_counter()

    def record(tr: BilevelTrainer, rec: dict[str, Any]) -> None:
        step = rec["step"]
        history["iteration"].append(step)
        history["inner_loss"].append(rec["inner_loss"])
        history["similarity"].append(-rec["outer_loss"])
        history["hypergrad_norm"].append(rec["hypergrad_norm"])
        reinit = step % reinit_every == 0 and step < outer_steps
        history["reinitialized"].append(float(reinit))
        history["time"].append(time.perf_counter() - started)
        if reinit:
            model.load_state_dict(surrogate(seed + step).state_dict())
            inner_opt.state.clear()
        if progress is not None:
            progress({k: v[-1] for k, v in history.items()})
        if not math.isfinite(rec["outer_loss"]):
            raise NonFiniteError(
                f"optimize_trigger: the outer objective became {rec['outer_loss']}"
            )

    result = trainer.fit(outer_steps, callbacks=[record])
    return TriggerOptimization(generator=generator, history=history, status=result.status)

"""SimCLR-style contrastive learning on small images: differentiable augmentations, the
NT-Xent loss, a small encoder, batches that carry their random views, the training loop and
the linear probe (the victim pipeline of :mod:`bilevel.nn.backdoor`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.errors import ConvergenceWarning

__all__ = [
    "Augmentation",
    "ContrastiveBatch",
    "ContrastiveBatches",
    "ContrastiveEncoder",
    "LinearProbe",
    "contrastive_loss",
    "fit_linear_probe",
    "nt_xent",
    "train_contrastive",
]


@dataclass(frozen=True)
class Augmentation:
    r"""Random views of images ``(n, C, H, W)``, differentiable in the images.

    Each view draws, per image, a zoom ``s ~ U(scale)``, a rotation ``a ~ U(-rotation,
    rotation)`` (radians), a shift ``t ~ U(-translation, translation)^2`` (in units of half
    the image), a contrast ``c ~ U(contrast)`` and a brightness ``b ~ U(-brightness,
    brightness)``; the view is

    .. math::

        v(p) = c \cdot x\big(s R(a) p + t\big) + b

    at each output location ``p`` (normalised coordinates in ``[-1, 1]``), ``x(.)`` the
    bilinear interpolation of the image with zeros outside it (``grid_sample``). ``s < 1``
    zooms in (a random crop resized to the full image). The parameters are drawn by
    :meth:`sample` and passed explicitly to :meth:`__call__`, so a batch's views are fixed
    once drawn: the loss is a deterministic function of the images, which is what the
    unrolled hypergradient and the finite-difference tests need.
    """

    scale: tuple[float, float] = (0.75, 1.1)
    rotation: float = 0.3
    translation: float = 0.15
    contrast: tuple[float, float] = (0.6, 1.4)
    brightness: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"Augmentation: scale must satisfy 0 < low <= high, got {self.scale}")
        lo, hi = self.contrast
        if not 0 <= lo <= hi:
            raise ValueError(f"Augmentation: contrast must satisfy 0 <= low <= high, got {self.contrast}")
        for name in ("rotation", "translation", "brightness"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Augmentation: {name} must be >= 0, got {getattr(self, name)}")

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(n, 6)`` view parameters ``(s, a, t_x, t_y, c, b)`` drawn from ``generator``."""
        u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
        lo = torch.tensor(
            [self.scale[0], -self.rotation, -self.translation, -self.translation,
             self.contrast[0], -self.brightness], dtype=torch.float64,
        )
        hi = torch.tensor(
            [self.scale[1], self.rotation, self.translation, self.translation,
             self.contrast[1], self.brightness], dtype=torch.float64,
        )
        return (lo + (hi - lo) * u).to(dtype)

    def __call__(self, images: Tensor, params: Tensor) -> Tensor:
        """The views of ``images`` for the parameters ``params`` (see :meth:`sample`)."""
        if images.ndim != 4 or params.shape != (images.shape[0], 6):
            raise ValueError(
                f"Augmentation: need images (n, C, H, W) and params (n, 6), got "
                f"{tuple(images.shape)} and {tuple(params.shape)}"
            )
        p = params.to(images.dtype)
        s, a, tx, ty, c, b = p.unbind(1)
        cos, sin = s * torch.cos(a), s * torch.sin(a)
        theta = torch.stack(
            [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        views = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return views * c.view(-1, 1, 1, 1) + b.view(-1, 1, 1, 1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    r"""SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020).

    With ``u_k = z_k / ||z_k||`` for the ``2n`` rows of ``[z1; z2]``, ``s_ik = u_i . u_k``
    and ``j(i)`` the other view of the same image (``i +- n``),

    .. math::

        \ell = \frac{1}{2n} \sum_{i=1}^{2n}
        -\log \frac{\exp(s_{i j(i)} / \tau)}{\sum_{k \ne i} \exp(s_{ik} / \tau)} .
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent: need two (n, d) tensors, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (u @ u.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
    return F.cross_entropy(logits, positives)


class ContrastiveEncoder(nn.Module):
    """A small encoder for contrastive learning: ``features`` (flatten, two ReLU layers) for
    the downstream probe and a projection ``head`` (one hidden ReLU layer) for the loss.

    ``encoder(x) = head(features(x))``; :meth:`features` is the representation the linear
    probe reads (SimCLR discards the head after training).
    """

    def __init__(
        self, in_shape: Sequence[int], hidden: int = 256, features: int = 128, projection: int = 64
    ) -> None:
        super().__init__()
        n_in = math.prod(in_shape)
        self.in_shape = tuple(in_shape)
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, projection))

    def features(self, x: Tensor) -> Tensor:
        """The representation ``(n, features)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _features(encoder: nn.Module, x: Tensor) -> Tensor:
    """``encoder.features(x)``, the representation before the projection head, of any
    encoder that defines it (such as :class:`ContrastiveEncoder`)."""
    method = getattr(encoder, "features", None)
    if not callable(method):
        raise TypeError(f"the encoder ({type(encoder).__name__}) needs a features(x) method")
    return method(x)


class ContrastiveBatch(NamedTuple):
    """Images ``(n, C, H, W)``, the rows ``poisoned`` that carry the trigger (``None``: none),
    and the two views' parameters ``views`` (``(n, 6)`` each, :meth:`Augmentation.sample`)."""

    images: Tensor
    poisoned: Tensor | None
    views: tuple[Tensor, Tensor]


class ContrastiveBatches:
    """Epochs of shuffled minibatches of ``images`` with freshly drawn views.

    Iterating yields one epoch (a permutation in batches of ``batch_size``; the last one
    may be smaller). The shuffles and views come from a ``torch.Generator`` seeded with
    ``seed`` when the object is built, so two objects with the same arguments yield the
    same batches (the victims of different triggers see identical data streams). Rows listed
    in ``poison_index`` are marked in each batch's ``poisoned`` so that a loss can apply a
    trigger to them.
    """

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        augmentation: Augmentation,
        *,
        poison_index: Tensor | None = None,
        seed: int = 0,
    ) -> None:
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"ContrastiveBatches: images must be (n, C, H, W), got {tuple(images.shape)}")
        if batch_size < 2:
            raise ValueError(f"ContrastiveBatches: batch_size must be >= 2, got {batch_size}")
        self.images = images
        self.batch_size = min(batch_size, len(images))
        self.augmentation = augmentation
        self.is_poisoned = torch.zeros(len(images), dtype=torch.bool)
        if poison_index is not None:
            self.is_poisoned[poison_index] = True
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[ContrastiveBatch]:
        order = torch.randperm(len(self.images), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            if len(index) < 2:
                continue  # a contrastive batch needs a negative
            rows = torch.nonzero(self.is_poisoned[index]).flatten()
            n, dtype = len(index), self.images.dtype
            views = (
                self.augmentation.sample(n, self.generator, dtype),
                self.augmentation.sample(n, self.generator, dtype),
            )
            yield ContrastiveBatch(self.images[index], rows if self.is_poisoned.any() else None, views)


def contrastive_loss(
    encoder: nn.Module,
    trigger: Callable[[Tensor], Tensor] | None,
    batch: ContrastiveBatch,
    *,
    augmentation: Augmentation,
    temperature: float,
) -> Tensor:
    """NT-Xent of ``encoder`` on two views of ``batch.images``, the rows ``batch.poisoned``
    first passed through ``trigger`` (the victim's training loss on the poisoned set; as a
    function of the trigger's parameters it is the lower level of BLTO)."""
    x = batch.images
    if trigger is not None and batch.poisoned is not None and len(batch.poisoned):
        x = x.index_put((batch.poisoned,), trigger(x[batch.poisoned]))
    z1 = encoder(augmentation(x, batch.views[0]))
    z2 = encoder(augmentation(x, batch.views[1]))
    return nt_xent(z1, z2, temperature)


def train_contrastive(
    encoder: nn.Module,
    batches: Iterable[ContrastiveBatch],
    steps: int,
    *,
    augmentation: Augmentation,
    temperature: float = 0.5,
    lr: float = 1e-3,
    trigger: Callable[[Tensor], Tensor] | None = None,
) -> list[float]:
    """``steps`` Adam steps of :func:`contrastive_loss` on ``batches`` (re-iterated at the end
    of each epoch); returns the losses. With ``trigger`` the poisoned rows are triggered (a
    fixed trigger: its parameters are not trained)."""
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    fixed = None if trigger is None else _frozen(trigger)
    losses: list[float] = []
    while len(losses) < steps:
        for batch in batches:
            loss = contrastive_loss(encoder, fixed, batch, augmentation=augmentation, temperature=temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=list(encoder.parameters()))
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                from bilevel.errors import DivergenceError

                raise DivergenceError(f"train_contrastive: the loss became {value} at step {len(losses)}")
            losses.append(value)
            if len(losses) == steps:
                break
    return losses


def _frozen(trigger: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def apply(x: Tensor) -> Tensor:
        with torch.no_grad():
            return trigger(x)

    return apply


class LinearProbe(nn.Module):
    """``linear((encoder.features(x) - mean) / std)``: a frozen encoder's standardised
    representation followed by a linear classifier."""

    mean: Tensor  # buffers
    std: Tensor

    def __init__(self, encoder: nn.Module, mean: Tensor, std: Tensor, linear: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((_features(self.encoder, x) - self.mean) / self.std)


def fit_linear_probe(
    encoder: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    n_classes: int | None = None,
    weight_decay: float = 1e-3,
    max_iter: int = 500,
    tol: float = 1e-5,
) -> LinearProbe:
    r"""Multinomial logistic regression on the frozen, standardised representation:

    .. math::

        \min_{W, b}\ \frac{1}{n} \sum_i \mathrm{CE}(W h_i + b, y_i) + \frac{\lambda}{2} \|W\|_F^2

    solved by L-BFGS (strong Wolfe line search). A problem whose gradient norm stays above
    ``tol`` after ``max_iter`` iterations raises :class:`~bilevel.errors.ConvergenceWarning`.
    """
    encoder.requires_grad_(False)
    with torch.no_grad():
        h = _features(encoder, images)
    mean, std = h.mean(0), h.std(0).clamp_min(1e-6)
    h = (h - mean) / std
    k = int(labels.max()) + 1 if n_classes is None else n_classes
    linear = nn.Linear(h.shape[1], k).to(h.dtype)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(
        linear.parameters(), max_iter=max_iter, history_size=20, tolerance_grad=tol,
        tolerance_change=0.0, line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(h), labels) + 0.5 * weight_decay * (linear.weight**2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    objective()
    grads = [p.grad for p in linear.parameters()]
    if any(g is None for g in grads):
        raise RuntimeError("the probe's closure left a parameter without a gradient")
    grad = max(float(g.abs().max()) for g in grads if g is not None)
    if grad > tol:
        warnings.warn(
            f"fit_linear_probe: L-BFGS stopped after {max_iter} iterations with gradient "
            f"{grad:.2e} > tol = {tol:.0e}",
            ConvergenceWarning,
            stacklevel=2,
        )
    linear.requires_grad_(False)
    return LinearProbe(encoder, mean, std, linear)

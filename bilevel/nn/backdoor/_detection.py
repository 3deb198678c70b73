"""Identifying backdoor data by scaled prediction consistency (SPC) and its bi-level
optimised, masked variant (Pal et al., ICLR 2024)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor

__all__ = [
    "DEFAULT_SCALES",
    "OptimizedSPCResult",
    "auroc",
    "optimized_spc",
    "scaled_prediction_consistency",
]

#: The scales ``n`` of SCALE-UP and of Pal et al.'s official code (``--scales 2,...,12``).
DEFAULT_SCALES: tuple[int, ...] = tuple(range(2, 13))

Classifier = Callable[[Tensor], Tensor]


def _check_scales(scales: Sequence[float]) -> None:
    if len(scales) == 0 or not all(s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales}")


@torch.no_grad()
def scaled_prediction_consistency(
    classifier: Classifier,
    images: Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    *,
    low: float = 0.0,
    high: float = 1.0,
) -> Tensor:
    r"""SPC (Guo et al. 2023, SCALE-UP): the fraction of scales whose amplified image keeps
    the prediction,

    .. math::

        \mathrm{SPC}(x) = \frac{1}{|S|} \sum_{n \in S}
        \mathbb{1}\big[\hat y(\mathrm{clip}(n x)) = \hat y(x)\big],

    ``clip`` to the pixel range ``[low, high]``, ``y_hat`` the classifier's argmax. Poisoned
    images tend to keep their (target) prediction under amplification: a higher score
    flags an image as poisoned. Returns the ``(n,)`` scores.
    """
    _check_scales(scales)
    base = classifier(images).argmax(dim=1)
    agree = torch.zeros(len(images), dtype=torch.float64)
    for n in scales:
        agree += (classifier(torch.clamp(n * images, low, high)).argmax(dim=1) == base).double()
    return agree / len(scales)


@torch.no_grad()
def _mspc(
    classifier: Classifier, images: Tensor, scales: Sequence[float], tau: float, mask: Tensor,
    low: float, high: float,
) -> Tensor:
    """``1/|S| sum_n (2 [y(clip(n (x - tau) m)) = y(x)] - 1)`` (in ``[-1, 1]``)."""
    base = classifier(images).argmax(dim=1)
    masked = (images - tau) * mask
    score = torch.zeros(len(images), dtype=torch.float64)
    for n in scales:
        same = classifier(torch.clamp(n * masked, low, high)).argmax(dim=1) == base
        score += 2 * same.double() - 1
    return score / len(scales)


@dataclass
class OptimizedSPCResult:
    """Outcome of :func:`optimized_spc`: the masked SPC ``scores`` (higher: poisoned), the
    learnt ``mask`` ``(H, W)`` in ``[0, 1]``, the final selection ``selected`` (``w_i = 1``)
    and ``history`` with, per round, the inner objective and the number selected."""

    scores: Tensor
    mask: Tensor
    selected: Tensor
    history: dict[str, list[float]] = field(repr=False)


def optimized_spc(
    classifier: Classifier,
    images: Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    *,
    tau: float = 0.1,
    l1: float = 0.01,
    rounds: int = 4,
    inner_steps: int = 10,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    low: float = 0.0,
    high: float = 1.0,
) -> OptimizedSPCResult:
    r"""Masked scaled prediction consistency optimised bi-level (Pal et al., ICLR 2024).

    The masked score of an image, with a shift ``tau`` and a mask ``m in [0, 1]^{H x W}``,

    .. math::

        \mathrm{MSPC}_m(x) = \frac{1}{|S|} \sum_{n \in S}
        \Big(2\, \mathbb{1}\big[\hat y(\mathrm{clip}(n (x - \tau) \odot m)) = \hat y(x)\big] - 1\Big),

    and the bi-level problem over the selection ``w in {0, 1}^N`` (upper) and the mask (lower)

    .. math::

        \min_w -\sum_i w_i \mathrm{MSPC}_{m^*(w)}(x_i) \quad \text{s.t.}\quad
        m^*(w) \in \arg\min_{m \in [0,1]^{H\times W}} \frac{1}{N} \sum_i w_i \frac{1}{|S|}
        \sum_{n \in S} \mathrm{KL}\big(p(x_i)\,\|\,p(\mathrm{clip}(n (x_i - \tau) \odot m))\big)
        + \lambda \|m\|_1 .

    The upper level has the closed form ``w_i = 1[MSPC(x_i) > 0]``; as in the authors' code
    the two levels alternate for ``rounds`` rounds, starting from ``w`` of the unmasked
    score (``m = 1``), the lower level by ``inner_steps`` projected (clamp to ``[0, 1]``)
    SGD-momentum steps (full batch) from the previous mask. The mask learns to keep the
    pixels where the selected (poisoned-looking) images' scale-invariance lives, which
    sharpens the score's separation of poisoned from clean images. ``p`` is the
    classifier's softmax; it is not trained.
    """
    _check_scales(scales)
    if rounds < 0 or inner_steps < 1:
        raise ValueError(f"optimized_spc: need rounds >= 0 and inner_steps >= 1, got {rounds}, {inner_steps}")
    h, w = images.shape[-2:]
    mask = torch.ones(h, w, dtype=images.dtype)
    scores = _mspc(classifier, images, scales, tau, mask, low, high)
    selected = scores > 0
    history: dict[str, list[float]] = {"round": [], "inner_objective": [], "selected": []}
    with torch.no_grad():
        log_p = F.log_softmax(classifier(images), dim=1)
    for r in range(rounds):
        weights = selected.to(images.dtype)
        m = mask.clone().requires_grad_(True)
        opt = torch.optim.SGD([m], lr=lr, momentum=momentum, weight_decay=weight_decay)
        for _ in range(inner_steps):
            opt.zero_grad(set_to_none=True)
            masked = (images - tau) * m
            kl = torch.zeros((), dtype=images.dtype)
            for n in scales:
                log_q = F.log_softmax(classifier(torch.clamp(n * masked, low, high)), dim=1)
                per_image = (log_p.exp() * (log_p - log_q)).sum(dim=1)
                kl = kl + (weights * per_image).mean() / len(scales)
            objective = kl + l1 * m.abs().sum()
            objective.backward(inputs=[m])
            opt.step()
            with torch.no_grad():
                m.clamp_(0.0, 1.0)
        mask = m.detach()
        scores = _mspc(classifier, images, scales, tau, mask, low, high)
        selected = scores > 0
        history["round"].append(r + 1)
        history["inner_objective"].append(float(objective.detach()))
        history["selected"].append(int(selected.sum()))
    return OptimizedSPCResult(scores=scores, mask=mask, selected=selected, history=history)


def auroc(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    r"""Area under the ROC curve of ``scores`` for the binary ``labels`` (1: positive), by
    the Mann-Whitney statistic with mid-ranks for ties,

    .. math::

        \mathrm{AUROC} = \frac{R_+ - n_+(n_+ + 1)/2}{n_+ n_-}
        = P(s_+ > s_-) + \tfrac12 P(s_+ = s_-),

    ``R_+`` the sum of the positives' ranks among all scores.
    """
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64).ravel()
    y = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.size} scores but {y.size} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc: needs at least one positive and one negative label")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

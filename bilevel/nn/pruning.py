r"""Model pruning as a bilevel problem: BiP (Zhang et al., NeurIPS 2022) and the magnitude
baselines it is compared with.

Problem
-------
A binary mask ``m`` over the pruned weights of a model with parameters ``theta`` keeps
exactly ``k`` of them; the upper level picks the mask, the lower level retrains the weights
under it::

    min_{m in S_k}  l(m . theta*(m))
    s.t.            theta*(m) = argmin_theta  l(m . theta) + gamma/2 ||theta||^2,
    S_k = {m in {0, 1}^n : 1^T m = k},   k = round((1 - sparsity) n)

(``l`` a training loss, on two different mini-batches at the two levels).

Masks from scores
-----------------
The mask is parametrised by real scores ``s`` (one per weight, or one per neuron / output
channel): ``m = TopK_k(s)``, the ``k`` largest scores over all pruned tensors (global,
``granularity="weight"``) or the ``round((1 - sparsity) n_l)`` largest of each tensor
(``granularity="neuron"``, at least one per layer). :func:`topk_mask` is exact: exactly
``k`` ones, ties broken by position. Gradients reach the scores through the
straight-through estimator ``dm/ds := I`` (:func:`straight_through`: the value is the hard
mask, the derivative the identity). A neuron mask ``m_j`` multiplies row ``j`` of the
layer's weight and bias entry ``j`` (``E(m)``, its broadcast to the weight's shape), which
silences the unit for any activation with ``act(0) = 0``.

The implicit gradient
---------------------
With ``z = E(m) . theta`` the effective weights, ``f`` the lower-level objective and ``F``
the upper loss, the implicit function theorem gives (:func:`bilevel.nn.hypergradient`)::

    dF/dm = grad_m F - B H^{-1} grad_theta F,
    H = grad^2_theta theta f = E diag-block grad^2_zz l E + gamma I,
    B = grad^2_m theta f     = E^T diag(grad_z l) + E^T diag(theta) grad^2_zz l diag(E(m)).

BiP makes two simplifications (the paper's "Hessian-free" assumption, ``grad^2_zz l = 0``,
as for a network that is piecewise linear in each weight):

1. ``H ~ gamma I``;
2. the bi-linearity of ``z = m . theta``: ``B ~ E^T diag(grad_z l)``,

which turns the implicit gradient into a first-order formula (:func:`bip_hypergradient`)::

    dF/dm ~ E^T( theta . g_F  -  (1/gamma) g_f . E(m) . g_F ),
    g_F = grad_z F (upper batch),  g_f = grad_z l (lower batch).

Relation to the engine's modes: :func:`bilevel.nn.hypergradient` with
``method="neumann", steps=0, alpha=1/gamma`` computes ``grad_m F - (1/gamma) B grad_theta F``
with the *exact* ``B``: it makes simplification 1 and not 2, so it differs from BiP's formula
by ``(1/gamma) E^T diag(theta) grad^2_zz l diag(E(m)) grad_theta F``; ``method="cg"`` makes
neither. All three coincide when ``l`` is linear in ``z`` (tested). :class:`BiP` takes the
closed form (``hypergradient="bilinear"``, the default, one backward pass per step) or any
engine mode.

The official code (OPTML-Group/BiP, ``trainer/bilevel.py``) differs from the paper's formula:
it adds ``-lr2 * (grad_s l)^2`` to the score gradient (the elementwise product of the score
gradient with itself, ``lr2 = 1e-4`` in every config, independent of the weight decay
``1e-4`` that plays ``gamma``), that is ``-lr2 (theta . g)^2`` for every score instead of
``-(1/gamma) m . g^2`` for the kept ones; it also ranks ``|s|``. Here the paper's formula is
used, with the ``gamma`` of the lower level (the inner optimizer's weight decay); scores
start at the weights' magnitudes (the official ``--scaled-score-init``) and are ranked by
value.

Algorithm (:meth:`BiP.step`, as in the official code): one SGD step on ``theta`` for the
lower-level objective under the current mask (``weight_decay = gamma``), then one step on the
scores along the implicit gradient at the new ``theta``, on another mini-batch; the mask is
the top-k of the scores at every step. No fine-tuning afterwards.

Baselines: one-shot magnitude pruning (:func:`magnitude_scores` + :func:`topk_mask`) and
iterative magnitude pruning with rewinding (:func:`iterative_magnitude_pruning`, Frankle et
al. 2019/2020: prune a fraction ``rate`` of the remaining weights by magnitude, rewind the
survivors to an early checkpoint, retrain, repeat).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

import bilevel.nn as bnn

__all__ = [
    "GRANULARITIES",
    "BiP",
    "apply_masks_",
    "bip_hypergradient",
    "density",
    "iterative_magnitude_pruning",
    "magnitude_scores",
    "masked_call",
    "masked_parameters",
    "prunable",
    "straight_through",
    "topk_mask",
]

GRANULARITIES = ("weight", "neuron")
Masks = dict[str, Tensor]
Criterion = Callable[[Tensor, Tensor], Tensor]
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def prunable(model: nn.Module, granularity: str = "weight") -> dict[str, torch.Size]:
    """``{weight name: score shape}`` of the pruned tensors of ``model``.

    ``"weight"``: the weight of every ``nn.Linear`` / ``nn.Conv*`` layer, one score per
    entry. ``"neuron"``: the same layers but the last one (whose outputs are the model's),
    one score per output unit (neuron or output channel).
    """
    _check_granularity(granularity)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYERS)]
    if granularity == "neuron":
        layers = layers[:-1]
    if not layers:
        raise ValueError(f"prunable: the model has no {granularity}-prunable Linear/Conv layer")
    out = {}
    for name, m in layers:
        key = f"{name}.weight" if name else "weight"
        out[key] = m.weight.shape if granularity == "weight" else m.weight.shape[:1]
    return out


def _structured(mask: Tensor, weight: Tensor) -> bool:
    if mask.shape == weight.shape:
        return False
    if mask.dim() == 1 and mask.shape[0] == weight.shape[0]:
        return True
    raise ValueError(
        f"a mask of shape {tuple(mask.shape)} fits neither the weight {tuple(weight.shape)} "
        "nor its output units"
    )


def _expand(mask: Tensor, weight: Tensor) -> Tensor:
    """``E(m)``: the mask broadcast to the weight's shape (rows for a neuron mask)."""
    if _structured(mask, weight):
        return mask.reshape(mask.shape + (1,) * (weight.dim() - 1))
    return mask


def _bias_name(weight_name: str) -> str:
    return weight_name[: -len("weight")] + "bias"


def masked_parameters(
    model: nn.Module, masks: Mapping[str, Tensor], params: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """``{name: E(m) . theta}`` for the masked weights (and, for neuron masks, biases).

    ``params`` defaults to ``model.named_parameters()`` (inside :func:`bilevel.nn.hypergradient`
    those are the tensors being differentiated).
    """
    params = dict(model.named_parameters()) if params is None else params
    out = {}
    for name, mask in masks.items():
        weight = params[name]
        out[name] = weight * _expand(mask, weight)
        bias = _bias_name(name)
        if _structured(mask, weight) and params.get(bias) is not None:
            out[bias] = params[bias] * mask
    return out


def masked_call(model: nn.Module, masks: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
    """``model(*args, **kwargs)`` with its weights multiplied by the masks (nothing written)."""
    return torch.func.functional_call(model, masked_parameters(model, masks), args, kwargs)


def topk_mask(scores: Mapping[str, Tensor], sparsity: float, *, per_tensor: bool = False) -> Masks:
    """The 0/1 masks keeping the largest scores: ``k = round((1 - sparsity) n)`` of the
    ``n`` scores of all tensors together, or of each tensor (``per_tensor``); at least one.

    Exactly ``k`` ones (ties broken by position, :func:`torch.topk`); the masks have the
    scores' dtype and no gradient.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if not scores:
        raise ValueError("topk_mask: no scores")
    groups = [[n] for n in scores] if per_tensor else [list(scores)]
    out: Masks = {}
    for names in groups:
        flat = torch.cat([scores[n].detach().reshape(-1) for n in names])
        k = max(1, round((1.0 - sparsity) * flat.numel()))
        hard = torch.zeros_like(flat)
        hard[torch.topk(flat, k, sorted=False).indices] = 1
        offset = 0
        for n in names:
            size = scores[n].numel()
            out[n] = hard[offset : offset + size].view_as(scores[n])
            offset += size
    return out


def straight_through(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Masks:
    """``m + s - stop_gradient(s)``: the value of ``masks`` (exactly: ``s - s = 0``), the
    derivative of ``scores`` (``dm/ds = I``, the straight-through estimator)."""
    return {n: masks[n] + (scores[n] - scores[n].detach()) for n in masks}


def magnitude_scores(model: nn.Module, granularity: str = "weight") -> dict[str, Tensor]:
    """``|theta|`` per weight, or the L2 norm of each output unit's incoming weights."""
    params = dict(model.named_parameters())
    out = {}
    for name in prunable(model, granularity):
        w = params[name].detach()
        out[name] = w.abs().clone() if granularity == "weight" else w.reshape(len(w), -1).norm(dim=1)
    return out


def density(model: nn.Module, masks: Mapping[str, Tensor]) -> float:
    """Fraction of the entries of the masked weights that the masks keep
    (``sum E(m) / sum n_l``; for neuron masks: the kept rows' share of each weight)."""
    params = dict(model.named_parameters())
    kept = total = 0
    for name, mask in masks.items():
        weight = params[name]
        kept += int(torch.broadcast_to(_expand(mask, weight), weight.shape).count_nonzero())
        total += weight.numel()
    return kept / total


# --------------------------------------------------------------------------------------
# Implicit gradient
# --------------------------------------------------------------------------------------


def _effective_grads(
    model: nn.Module, masks: Masks, criterion: Criterion, batch: tuple[Tensor, Tensor]
) -> dict[str, Tensor]:
    """``grad_z l`` at the effective parameters ``z`` (``E(m) . theta`` for the masked
    tensors, ``theta`` for the others) of every trainable parameter."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    z = {**params, **masked_parameters(model, masks, params)}
    z = {n: v.detach().requires_grad_(True) for n, v in z.items()}
    with torch.enable_grad():
        x, y = batch
        value = criterion(torch.func.functional_call(model, z, (x,)), y)
        grads = torch.autograd.grad(value, list(z.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(z, grads))


def bip_hypergradient(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    criterion: Criterion,
    lower_batch: tuple[Tensor, Tensor],
    upper_batch: tuple[Tensor, Tensor],
    gamma: float,
) -> dict[str, Tensor]:
    r"""BiP's implicit gradient of the upper loss with respect to the mask (and, through the
    straight-through estimator, the scores), at the model's current weights:

    .. math::

        \frac{dF}{dm} \approx E^\top\Big(\theta \odot g_F
            - \frac{1}{\gamma}\, g_f \odot E(m) \odot g_F\Big),
        \qquad g_F = \nabla_z \ell(z; \text{upper}),\ g_f = \nabla_z \ell(z; \text{lower}),

    ``z = E(m) . theta`` (module docstring: the implicit function theorem with
    ``H ~ gamma I`` and ``B ~ E^T diag(g_f)``). ``E^T`` sums over a neuron's row and bias
    entry. ``lower_batch is upper_batch`` takes one backward pass, two otherwise.
    """
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be positive and finite, got {gamma}")
    masks = {n: m.detach() for n, m in masks.items()}
    g_upper = _effective_grads(model, masks, criterion, upper_batch)
    g_lower = g_upper if lower_batch is upper_batch else _effective_grads(model, masks, criterion, lower_batch)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def term(name: str, mask: Tensor) -> Tensor:  # theta . g_F - g_f . E(m) . g_F / gamma
        e = _expand(mask, params[name])
        return params[name] * g_upper[name] - g_lower[name] * e * g_upper[name] / gamma

    out = {}
    for name, mask in masks.items():
        v = term(name, mask)
        if _structured(mask, params[name]):
            v = v.reshape(mask.shape[0], -1).sum(1)
            bias = _bias_name(name)
            if params.get(bias) is not None and bias in g_upper:
                v = v + term(bias, mask)
        out[name] = v
    return out


def _engine_losses(
    criterion: Criterion, masks: Masks, gamma: float
) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """``(f, F)`` for :func:`bilevel.nn.hypergradient` with the scores as hyperparameters:
    ``F = l(E(m(s)) . theta)``, ``f = F + gamma/2 ||theta||^2``, ``m(s)`` straight-through."""

    def outer(model: nn.Module, scores: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return criterion(masked_call(model, straight_through(scores, masks), x), y)

    def inner(model: nn.Module, scores: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
        decay = sum((p * p).sum() for p in model.parameters() if p.requires_grad)
        return outer(model, scores, batch) + 0.5 * gamma * decay

    return inner, outer


# --------------------------------------------------------------------------------------
# BiP
# --------------------------------------------------------------------------------------


class BiP:
    """Bi-level pruning: alternating weight and score steps (see the module docstring).

    Parameters
    ----------
    model:
        The (pretrained) network; its parameters are trained in place under the mask.
    sparsity:
        Fraction of the pruned weights (``"weight"``) or of each layer's units
        (``"neuron"``) removed, in ``[0, 1)``.
    criterion:
        ``criterion(outputs, targets) -> scalar`` (default cross-entropy); batches are
        ``(inputs, targets)``.
    granularity:
        ``"weight"`` (unstructured, global top-k) or ``"neuron"`` (per-layer top-k of units).
    gamma:
        The lower level's L2 strength: the weight decay of the weight steps and the
        ``1/gamma`` of the implicit gradient.
    lr, momentum:
        SGD on the weights (``weight_optimizer`` replaces it).
    score_lr, score_momentum:
        SGD on the scores (``score_optimizer`` replaces it).
    hypergradient:
        ``"bilinear"`` (BiP's closed form, :func:`bip_hypergradient`) or a mode of
        :func:`bilevel.nn.hypergradient` (``"neumann"``: default options ``steps=0,
        alpha=1/gamma``, i.e. ``H ~ gamma I`` with the exact ``B``; ``"cg"``: exact), with
        ``hypergradient_options``.
    scores:
        Initial scores (default :func:`magnitude_scores`).
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        *,
        criterion: Criterion = nn.functional.cross_entropy,
        granularity: str = "weight",
        gamma: float = 1e-4,
        lr: float = 0.05,
        momentum: float = 0.9,
        score_lr: float = 0.1,
        score_momentum: float = 0.9,
        hypergradient: str = "bilinear",
        hypergradient_options: Mapping[str, Any] | None = None,
        scores: Mapping[str, Tensor] | None = None,
        weight_optimizer: torch.optim.Optimizer | None = None,
        score_optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        _check_granularity(granularity)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"BiP: sparsity must be in [0, 1), got {sparsity}")
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ValueError(f"BiP: gamma must be positive and finite, got {gamma}")
        if hypergradient != "bilinear" and hypergradient not in bnn.METHODS:
            raise ValueError(
                f"BiP: hypergradient must be 'bilinear' or one of {bnn.METHODS}, got {hypergradient!r}"
            )
        self.model = model
        self.sparsity = sparsity
        self.criterion = criterion
        self.granularity = granularity
        self.gamma = gamma
        self.hypergradient = hypergradient
        options = dict(hypergradient_options or {})
        if hypergradient == "neumann":
            options = {"steps": 0, "alpha": 1.0 / gamma, **options}
        self.hypergradient_options = options
        shapes = prunable(model, granularity)
        init = magnitude_scores(model, granularity) if scores is None else scores
        if set(init) != set(shapes):
            raise ValueError(f"BiP: scores must have the keys {sorted(shapes)}, got {sorted(init)}")
        self.scores = {n: init[n].detach().clone().requires_grad_(True) for n in shapes}
        for n, s in self.scores.items():
            if s.shape != shapes[n]:
                raise ValueError(f"BiP: scores[{n!r}] has shape {tuple(s.shape)}, expected {tuple(shapes[n])}")
        self.weight_optimizer = weight_optimizer or torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum, weight_decay=gamma
        )
        self.score_optimizer = score_optimizer or torch.optim.SGD(
            list(self.scores.values()), lr=score_lr, momentum=score_momentum
        )

    def masks(self) -> Masks:
        """The current hard masks (top-k of the scores)."""
        return topk_mask(self.scores, self.sparsity, per_tensor=self.granularity == "neuron")

    def step(self, lower_batch: tuple[Tensor, Tensor], upper_batch: tuple[Tensor, Tensor]) -> dict[str, float]:
        """One weight step on ``lower_batch`` then one score step on ``upper_batch``.

        Returns ``lower_loss`` (before the weight step) and ``hypergrad_norm``.
        """
        masks = self.masks()
        self.weight_optimizer.zero_grad(set_to_none=True)
        x, y = lower_batch
        lower = self.criterion(masked_call(self.model, masks, x), y)
        lower.backward()
        self.weight_optimizer.step()
        if self.hypergradient == "bilinear":
            # as in the official code, the implicit term's g_f is taken on the upper batch
            grads = bip_hypergradient(self.model, masks, self.criterion, upper_batch, upper_batch, self.gamma)
        else:
            inner, outer = _engine_losses(self.criterion, masks, self.gamma)
            grads = bnn.hypergradient(
                self.model, self.scores, inner, outer, lower_batch, upper_batch,
                method=self.hypergradient, **self.hypergradient_options,
            )
        self.score_optimizer.zero_grad(set_to_none=True)
        for n, s in self.scores.items():
            s.grad = grads[n].to(s.dtype)
        self.score_optimizer.step()
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        return {"lower_loss": float(lower.detach()), "hypergrad_norm": norm}

    @torch.no_grad()
    def prune_(self) -> Masks:
        """Multiply the model's weights by the final masks in place; return the masks."""
        masks = self.masks()
        apply_masks_(self.model, masks)
        return masks


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned weights (and, for neuron masks, biases) of ``model`` in place."""
    params = dict(model.named_parameters())
    for name, value in masked_parameters(model, masks).items():
        params[name].copy_(value)


# --------------------------------------------------------------------------------------
# Iterative magnitude pruning
# --------------------------------------------------------------------------------------


def iterative_magnitude_pruning(
    model: nn.Module,
    sparsity: float,
    train: Callable[[nn.Module, Masks], object],
    rewind_state: Mapping[str, Tensor],
    *,
    rate: float = 0.2,
    granularity: str = "weight",
    callback: Callable[[int, Masks], None] | None = None,
) -> Masks:
    """Iterative magnitude pruning with rewinding (IMP, the lottery-ticket procedure).

    From the trained ``model``: remove the fraction ``rate`` of the remaining weights (or
    units) with the smallest magnitudes, rewind the model to ``rewind_state`` (a
    ``state_dict`` of an early point of its training), retrain it with ``train(model,
    masks)`` (which must train in place under the masks), and repeat; the last round prunes
    exactly to ``sparsity``, so there are ``ceil(log(1 - sparsity) / log(1 - rate))``
    rounds. Returns the final masks; the model holds the last round's weights.
    ``callback(round, masks)`` runs after each round's training.
    """
    _check_granularity(granularity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"iterative_magnitude_pruning: sparsity must be in [0, 1), got {sparsity}")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"iterative_magnitude_pruning: rate must be in (0, 1), got {rate}")
    per_tensor = granularity == "neuron"
    masks: Masks | None = None
    keep, target, rounds = 1.0, 1.0 - sparsity, 0
    while keep > target * (1 + 1e-9) or masks is None:
        keep = max(keep * (1.0 - rate), target)
        scores = magnitude_scores(model, granularity)
        if masks is not None:  # nested masks: pruned entries never come back
            scores = {n: s.masked_fill(masks[n] == 0, -math.inf) for n, s in scores.items()}
        masks = topk_mask(scores, 1.0 - keep, per_tensor=per_tensor)
        model.load_state_dict(rewind_state)
        train(model, masks)
        rounds += 1
        if callback is not None:
            callback(rounds, masks)
    return masks

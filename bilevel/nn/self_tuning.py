"""Self-Tuning Networks (MacKay, Vicol, Lorraine, Duvenaud and Grosse, ICLR 2019).

Hyperparameters ``lambda`` (weight decay, dropout rate, input noise, ...) are tuned online,
in one training run, by fitting a *best-response approximation* ``w_phi(lambda)`` of the
optimal weights around the current hyperparameters and descending the validation loss
through it.

Hyperparameters and their perturbation distribution
    Hyperparameter ``k`` has an unconstrained value ``u_k`` in ``R`` and the value the model
    uses, ``lambda_k = T_k(u_k)`` (:class:`HyperparameterSpec`: ``"log"``: ``exp(u)``;
    ``"interval"``: ``low + (high - low) sigmoid(u)``; ``"identity"``). STN perturbs the
    unconstrained values, ``u ~ N(u_bar, diag(sigma^2))`` with ``sigma = softplus(rho)``
    (:class:`PerturbedHyperparameters`), one draw per example.

Structured best-response layers
    :class:`BestResponseLinear` maps an example ``x_i`` with hyperparameters ``u_i`` to
    ``w(u_i) x_i + b(u_i)``, where

        w(u) = W0 + (A u) . Wh,        b(u) = b0 + (B u) . bh,

    ``(A u) . Wh`` scaling row ``r`` of ``Wh`` by ``(A u)_r``: the hyperparameters gate each
    output unit. It is evaluated as ``W0 x + b0 + (A u) * (Wh x) + (B u) * bh``, without a
    weight matrix per example (the official ``HyperLinear``, without its extra scalar).

Alternation (:class:`SelfTuningTrainer`)
    * training step, on a training batch: draw ``u_i = u_bar + sigma * eps_i`` and take an
      optimizer step on the model parameters ``phi = (W0, Wh, A, b0, bh, B, ...)`` along
      ``grad_phi (1/n) sum_i f(x_i; w_phi(u_i), lambda_i)``, the *regularised* training loss
      at the perturbed hyperparameters (dropout at rate ``lambda_i``, noise, weight decay);
    * hyper step, on a validation batch, ``phi`` fixed: a step on ``(u_bar, rho)`` along the
      gradient of

          F(u_bar, rho) = (1/m) sum_j L(x_j; w_phi(u_bar + sigma * eps_j)) - tau H(sigma),
          H(sigma) = sum_k log(sigma_k sqrt(2 pi e))      (entropy of N(u_bar, sigma^2)),

      with the validation loss *unregularised* (no dropout, no noise): the hyperparameters
      act only through the best response, whose derivative stands in for the implicit one.
      This is the engine's first-order mode, ``bilevel.nn.hypergradient(..., method="fd",
      xi=0)`` = ``grad_lambda F`` at fixed ``phi`` (:class:`bilevel.nn.BilevelTrainer` runs
      the alternation). With ``tune_scales=False`` the hyper step uses ``u_bar`` itself and
      ``sigma`` stays fixed.

    ``train_steps`` training steps alternate with one hyper step, after ``warmup_steps``
    training steps at the initial distribution, as in the authors' ``cnn/hypertrain.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.nn._trainer import BilevelTrainer, TrainResult

__all__ = [
    "BestResponseLinear",
    "HyperparameterSpec",
    "PerturbedHyperparameters",
    "SelfTuningTrainer",
    "gaussian_entropy",
    "per_example_dropout",
]

TRANSFORMS = ("log", "interval", "identity")

#: ``loss(model, values, u, batch) -> scalar``: ``values[name]`` the constrained
#: hyperparameters of each example (shape ``(B,)``), ``u`` the unconstrained ones ``(B, H)``
#: (the input of the best-response layers).
STNLoss = Callable[[nn.Module, dict[str, Tensor], Tensor, Any], Tensor]


@dataclass(frozen=True)
class HyperparameterSpec:
    """One tuned hyperparameter: its name, its transform and its initial value.

    ``transform``: ``"log"`` (``lambda = exp(u)``, for a positive value such as a weight
    decay), ``"interval"`` (``lambda = low + (high - low) sigmoid(u)``, for a rate in
    ``(low, high)``) or ``"identity"``. ``init`` is the *constrained* starting value.
    """

    name: str
    transform: str
    init: float
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"HyperparameterSpec: name must be an identifier, got {self.name!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"HyperparameterSpec {self.name!r}: transform must be one of {TRANSFORMS}, "
                f"got {self.transform!r}"
            )
        if not math.isfinite(self.init):
            raise ValueError(f"HyperparameterSpec {self.name!r}: init must be finite, got {self.init}")
        if self.transform == "log" and not self.init > 0:
            raise ValueError(f"HyperparameterSpec {self.name!r}: a 'log' hyperparameter needs init > 0, got {self.init}")
        if self.transform == "interval" and not self.low < self.init < self.high:
            raise ValueError(
                f"HyperparameterSpec {self.name!r}: init must lie strictly inside "
                f"({self.low}, {self.high}), got {self.init}"
            )

    def constrain(self, u: Tensor) -> Tensor:
        """``lambda = T(u)``."""
        if self.transform == "log":
            return u.exp()
        if self.transform == "interval":
            return self.low + (self.high - self.low) * torch.sigmoid(u)
        return u

    def unconstrain(self, value: float) -> float:
        """``u = T^{-1}(lambda)``."""
        if self.transform == "log":
            return math.log(value)
        if self.transform == "interval":
            p = (value - self.low) / (self.high - self.low)
            return math.log(p) - math.log1p(-p)
        return float(value)


def gaussian_entropy(scale: Tensor) -> Tensor:
    """Entropy of ``N(mu, diag(scale^2))``: ``sum_k log(scale_k sqrt(2 pi e))``."""
    return torch.log(scale * math.sqrt(2 * math.pi * math.e)).sum()


def _inverse_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class PerturbedHyperparameters(nn.Module):
    """The search distribution ``N(u_bar, diag(softplus(rho)^2))`` over unconstrained
    hyperparameters (module parameters ``mean`` = ``u_bar`` and ``raw_scale`` = ``rho``).

    Parameters
    ----------
    specs:
        The hyperparameters, in the order of the columns of ``u``.
    scale:
        Initial perturbation scale ``sigma`` (the same for every hyperparameter; the
        official code's ``perturb_scale``, 0.5).
    tune_scales:
        Whether ``rho`` is trainable (tuned on the validation loss and the entropy term).
    """

    def __init__(self, specs: Sequence[HyperparameterSpec], scale: float = 0.5, tune_scales: bool = True) -> None:
        super().__init__()
        if not specs:
            raise ValueError("PerturbedHyperparameters: specs is empty")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"PerturbedHyperparameters: duplicate names in {names}")
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"PerturbedHyperparameters: scale must be positive, got {scale}")
        self.specs = tuple(specs)
        self.mean = nn.Parameter(torch.tensor([s.unconstrain(s.init) for s in specs]))
        self.raw_scale = nn.Parameter(
            torch.full((len(specs),), _inverse_softplus(scale)), requires_grad=tune_scales
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def tune_scales(self) -> bool:
        return self.raw_scale.requires_grad

    def scale(self) -> Tensor:
        """``sigma = softplus(rho)``."""
        return F.softplus(self.raw_scale)

    def sample(self, eps: Tensor) -> Tensor:
        """``u = u_bar + sigma * eps`` for standard normal ``eps`` of shape ``(B, H)``."""
        if eps.shape[-1] != len(self.specs):
            raise ValueError(
                f"PerturbedHyperparameters.sample: eps has {eps.shape[-1]} columns for "
                f"{len(self.specs)} hyperparameters"
            )
        return self.mean + self.scale() * eps

    def constrain(self, u: Tensor) -> dict[str, Tensor]:
        """``{name: T(u[..., k])}``: the values the model uses."""
        return {s.name: s.constrain(u[..., k]) for k, s in enumerate(self.specs)}

    def entropy(self) -> Tensor:
        """Entropy of the perturbation distribution, :func:`gaussian_entropy` of ``sigma``."""
        return gaussian_entropy(self.scale())

    @torch.no_grad()
    def values(self) -> dict[str, float]:
        """The current hyperparameters ``T(u_bar)`` as floats."""
        return {k: float(v) for k, v in self.constrain(self.mean).items()}

    @torch.no_grad()
    def scales(self) -> dict[str, float]:
        """The current perturbation scales ``sigma`` (unconstrained units) as floats."""
        return {s.name: float(v) for s, v in zip(self.specs, self.scale())}


class BestResponseLinear(nn.Module):
    """A linear layer whose weights respond to the hyperparameters:
    ``y_i = w(u_i) x_i + b(u_i)``, ``w(u) = W0 + (A u) . Wh``, ``b(u) = b0 + (B u) . bh``
    (row ``r`` of ``Wh`` scaled by ``(A u)_r``).

    Parameters ``weight`` (``W0``), ``bias`` (``b0``), ``response_weight`` (``Wh``),
    ``response_bias`` (``bh``) are initialised like ``nn.Linear``; ``gate``, the linear map
    ``u -> (A u, B u)`` (``2 * out_features`` outputs, no bias), with N(0, 0.01^2) entries,
    as in the authors' ``HyperLinear``.
    """

    def __init__(self, in_features: int, out_features: int, n_hparams: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.n_hparams = in_features, out_features, n_hparams
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.response_weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
            self.response_bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
            self.register_parameter("response_bias", None)
        self.gate = nn.Linear(n_hparams, 2 * out_features, bias=False)
        nn.init.normal_(self.gate.weight, std=0.01)

    def _gates(self, u: Tensor) -> tuple[Tensor, Tensor]:
        g = self.gate(u)
        return g[..., : self.out_features], g[..., self.out_features :]

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """``x`` of shape ``(B, in)``, ``u`` of shape ``(B, H)`` (or ``(H,)``, shared)."""
        gw, gb = self._gates(u)
        out = F.linear(x, self.weight, self.bias) + gw * F.linear(x, self.response_weight)
        if self.response_bias is not None:
            out = out + gb * self.response_bias
        return out

    def effective_weight(self, u: Tensor) -> Tensor:
        """The dense ``w(u) = W0 + diag(A u) Wh`` for one hyperparameter vector ``u``."""
        gw, _ = self._gates(u)
        return self.weight + gw.unsqueeze(-1) * self.response_weight

    def effective_bias(self, u: Tensor) -> Tensor | None:
        """``b(u) = b0 + (B u) . bh`` for one hyperparameter vector ``u``."""
        if self.bias is None:
            return None
        _, gb = self._gates(u)
        return self.bias + gb * self.response_bias

    def weight_sq_norm(self, u: Tensor) -> Tensor:
        """``||w(u_i)||_F^2`` per row of ``u``, by the expansion
        ``||W0||^2 + 2 sum_r s_r <W0_r, Wh_r> + sum_r s_r^2 ||Wh_r||^2``, ``s = A u_i``
        (weight decay on the weights each example is trained with, without forming them)."""
        gw, _ = self._gates(u)
        cross = (self.weight * self.response_weight).sum(1)
        resp = (self.response_weight * self.response_weight).sum(1)
        return (self.weight * self.weight).sum() + 2 * (gw * cross).sum(-1) + (gw * gw * resp).sum(-1)


def per_example_dropout(x: Tensor, p: Tensor, training: bool = True) -> Tensor:
    """Inverted dropout with one rate per example: each entry of row ``i`` of ``x`` is kept
    with probability ``1 - p_i`` and scaled by ``1 / (1 - p_i)`` (identity when not training)."""
    if not training:
        return x
    keep = (1 - p).reshape(-1, *([1] * (x.dim() - 1)))
    mask = torch.bernoulli(keep.detach().expand_as(x))
    return x * mask / keep


class _Perturbed:
    """Iterable of ``(batch, eps)``: the batches of ``data`` with standard normal ``eps`` of
    shape ``(len(batch[0]), n_hparams)``, drawn from ``generator`` (fresh at every pass)."""

    def __init__(self, data: Iterable[Any], n_hparams: int, generator: torch.Generator) -> None:
        self.data, self.n, self.generator = data, n_hparams, generator

    def __iter__(self) -> Iterator[tuple[Any, Tensor]]:
        for batch in self.data:
            first = batch[0] if isinstance(batch, tuple | list) else batch
            if not isinstance(first, Tensor):
                raise TypeError(
                    "SelfTuningTrainer: a batch must be a tensor or a tuple whose first element "
                    f"is a tensor (its first dimension counts the examples), got {type(first).__name__}"
                )
            eps = torch.randn(len(first), self.n, generator=self.generator, dtype=first.dtype)
            yield batch, eps.to(first.device)


class SelfTuningTrainer:
    """Train a model with best-response layers and tune its hyperparameters online (STN).

    Parameters
    ----------
    model:
        An ``nn.Module`` whose hyperparameter-dependent layers are
        :class:`BestResponseLinear` (or anything else reading ``u``); its trainable
        parameters are ``phi``.
    hparams:
        The :class:`PerturbedHyperparameters` (``u_bar``, ``rho``).
    train_loss:
        ``train_loss(model, values, u, batch)``: the regularised training loss (dropout,
        noise, weight decay at ``values``), called with perturbed hyperparameters.
    val_loss:
        ``val_loss(model, values, u, batch)``: the unregularised validation loss.
    optimizer:
        A ``torch.optim`` optimizer over the model's parameters.
    hyper_optimizer:
        A ``torch.optim`` optimizer over ``hparams.mean`` (and ``hparams.raw_scale`` when the
        scales are tuned; the official code uses Adam for both, with separate rates).
    train_data, val_data:
        Iterables of batches (a tensor, or a tuple whose first element is a tensor of
        examples), re-iterated at the end of each pass.
    train_steps:
        Training steps per hyper step (2 in the official code).
    warmup_steps:
        Training steps before the first hyper step.
    entropy_weight:
        ``tau``, the weight of the entropy bonus in the hyper objective.
    seed:
        Seed of the perturbations ``eps``.
    """

    def __init__(
        self,
        model: nn.Module,
        hparams: PerturbedHyperparameters,
        train_loss: STNLoss,
        val_loss: STNLoss,
        *,
        optimizer: torch.optim.Optimizer,
        hyper_optimizer: torch.optim.Optimizer,
        train_data: Iterable[Any],
        val_data: Iterable[Any],
        train_steps: int = 2,
        warmup_steps: int = 0,
        entropy_weight: float = 1e-3,
        seed: int = 0,
    ) -> None:
        if not isinstance(hparams, PerturbedHyperparameters):
            raise TypeError(
                f"SelfTuningTrainer: hparams must be PerturbedHyperparameters, got {type(hparams).__name__}"
            )
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"SelfTuningTrainer: warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if not (entropy_weight >= 0 and math.isfinite(entropy_weight)):
            raise ValueError(f"SelfTuningTrainer: entropy_weight must be finite and >= 0, got {entropy_weight}")
        self.model, self.hparams = model, hparams
        self.train_loss, self.val_loss = train_loss, val_loss
        self.optimizer = optimizer
        self.warmup_steps, self.entropy_weight = warmup_steps, entropy_weight
        generator = torch.Generator().manual_seed(seed)
        n = len(hparams.specs)
        self._train_data = _Perturbed(train_data, n, generator)
        self.trainer = BilevelTrainer(
            model,
            hparams,
            self._inner_loss,
            self._outer_loss,
            inner_optimizer=optimizer,
            outer_optimizer=hyper_optimizer,
            inner_data=self._train_data,
            outer_data=_Perturbed(val_data, n, generator),
            inner_steps=train_steps,
            method="fd",
            method_options={"xi": 0.0},
        )
        self.warmed_up = False

    # the two levels' losses in the engine's signature loss(model, hparams, batch)
    def _inner_loss(self, model: nn.Module, hparams: PerturbedHyperparameters, batch: Any) -> Tensor:
        data, eps = batch
        u = hparams.sample(eps)
        return self.train_loss(model, hparams.constrain(u), u, data)

    def _outer_loss(self, model: nn.Module, hparams: PerturbedHyperparameters, batch: Any) -> Tensor:
        data, eps = batch
        bonus: Tensor | float
        if hparams.tune_scales:
            u = hparams.sample(eps)
            bonus = self.entropy_weight * hparams.entropy()
        else:
            u = hparams.mean.expand(eps.shape)
            bonus = 0.0
        return self.val_loss(model, hparams.constrain(u), u, data) - bonus

    def warmup(self) -> list[float]:
        """The ``warmup_steps`` training steps (done by :meth:`fit` the first time)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        losses = []
        batches = iter(_cycle(self._train_data))
        for _ in range(self.warmup_steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._inner_loss(self.model, self.hparams, next(batches))
            loss.backward(inputs=params)
            self.optimizer.step()
            losses.append(float(loss.detach()))
        self.warmed_up = True
        return losses

    def fit(
        self,
        hyper_steps: int,
        *,
        callbacks: Sequence[Callable[[BilevelTrainer, dict[str, Any]], bool | None]] = (),
        progress: bool = False,
    ) -> TrainResult:
        """Warm up (once), then alternate until ``hyper_steps`` hyper steps are done.

        Each record of the returned history (:class:`~bilevel.nn.TrainResult`) also holds the
        hyperparameters ``T(u_bar)`` after the step (under their names) and the scales
        (``<name>_scale``).
        """
        if not self.warmed_up:
            self.warmup()

        def record_hparams(trainer: BilevelTrainer, record: dict[str, Any]) -> None:
            record.update(self.hparams.values())
            record.update({f"{k}_scale": v for k, v in self.hparams.scales().items()})

        return self.trainer.fit(hyper_steps, callbacks=[record_hparams, *callbacks], progress=progress)


def _cycle(data: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("SelfTuningTrainer: train_data is empty")

"""Differentiable functional optimizer steps, for unrolled hypergradients.

Each optimizer is a frozen dataclass of hyperparameters with two pure functions,

* ``init(params) -> state`` and
* ``step(params, grads, state) -> (params, state)``,

on dictionaries ``{name: tensor}``. Nothing is updated in place, so a step can be
differentiated with respect to the parameters, the gradients (and through them the
hyperparameters of the loss) and the state. The updates are those of :mod:`torch.optim`
(same formulas, same order of operations), and :func:`from_torch` mirrors a live
``torch.optim.SGD`` / ``Adam`` / ``AdamW`` -- its current learning rates and its state
(momentum buffers, moment estimates, step counts) -- so an unrolled look-ahead continues
exactly where the real optimizer is.

SGD with momentum ``mu``, dampening ``d``, weight decay ``wd`` and learning rate ``eta``::

    g   = grad + wd * p
    buf = g                      (first step)      buf = mu * buf + (1 - d) * g   (later)
    p   = p - eta * (g + mu * buf if nesterov else buf)

Adam (``AdamW`` when ``decoupled``: ``p <- p (1 - eta wd)`` instead of ``g += wd p``)::

    m = beta1 m + (1 - beta1) g,    v = beta2 v + (1 - beta2) g^2,   t = t + 1
    p = p - eta / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

``sqrt(v)`` is differentiated with derivative 0 where ``v = 0`` (a zero gradient entry),
where the true derivative is infinite and would turn the hypergradient into NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = dict[str, Any]

__all__ = ["SGD", "Adam", "FunctionalOptimizer", "from_torch"]


class FunctionalOptimizer(Protocol):
    """``init(params) -> state`` and ``step(params, grads, state) -> (params, state)``."""

    def init(self, params: Params) -> State: ...

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]: ...


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")


@dataclass(frozen=True)
class SGD:
    """Functional ``torch.optim.SGD`` (see the module docstring for the update)."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        _positive("SGD: lr", self.lr)
        _positive("SGD: momentum", self.momentum, allow_zero=True)
        _positive("SGD: weight_decay", self.weight_decay, allow_zero=True)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")

    def init(self, params: Params) -> State:
        return {name: None for name in params}

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        new_params, new_state = {}, {}
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buf = state.get(name)
                buf = g if buf is None else self.momentum * buf + (1 - self.dampening) * g
                new_state[name] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            else:
                new_state[name] = None
            new_params[name] = p - self.lr * g
        return new_params, new_state


def _sqrt0(v: Tensor) -> Tensor:
    """``sqrt(v)`` for ``v >= 0`` with derivative 0 (not inf) at ``v = 0``."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), 0.0)


@dataclass(frozen=True)
class Adam:
    """Functional ``torch.optim.Adam`` (``decoupled=True``: ``AdamW``)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def __post_init__(self) -> None:
        _positive("Adam: lr", self.lr)
        _positive("Adam: eps", self.eps, allow_zero=True)
        _positive("Adam: weight_decay", self.weight_decay, allow_zero=True)
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"Adam: betas must lie in [0, 1), got {self.betas}")

    def init(self, params: Params) -> State:
        return {
            name: (0, torch.zeros_like(p), torch.zeros_like(p)) for name, p in params.items()
        }

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        beta1, beta2 = self.betas
        new_params, new_state = {}, {}
        for name, p in params.items():
            g = grads[name]
            t, m, v = state[name]
            t += 1
            if self.weight_decay:
                if self.decoupled:
                    p = p * (1 - self.lr * self.weight_decay)
                else:
                    g = g + self.weight_decay * p
            m = m + (g - m) * (1 - beta1)  # torch's lerp_(g, 1 - beta1)
            v = v * beta2 + (1 - beta2) * g * g
            bias1 = 1 - beta1**t
            bias2_sqrt = math.sqrt(1 - beta2**t)
            denom = _sqrt0(v) / bias2_sqrt + self.eps
            new_params[name] = p - (self.lr / bias1) * (m / denom)
            new_state[name] = (t, m, v)
        return new_params, new_state


@dataclass(frozen=True)
class _PerParameter:
    """One functional optimizer per parameter (the param groups of a torch optimizer)."""

    optimizers: Mapping[str, Any]

    def init(self, params: Params) -> State:
        state: State = {}
        for name, p in params.items():
            state.update(self.optimizers[name].init({name: p}))
        return state

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        new_params, new_state = {}, {}
        for name, p in params.items():
            out_p, out_s = self.optimizers[name].step(
                {name: p}, {name: grads[name]}, {name: state[name]}
            )
            new_params.update(out_p)
            new_state.update(out_s)
        return new_params, new_state


def from_torch(
    optimizer: torch.optim.Optimizer, named_params: Mapping[str, Tensor]
) -> tuple[FunctionalOptimizer, State]:
    """The functional twin of a live ``torch.optim`` optimizer, and its current state.

    ``named_params`` maps names to the parameters the optimizer holds (for example
    ``dict(model.named_parameters())``); parameters it does not hold are rejected. Supported:
    ``SGD`` (momentum, dampening, weight decay, Nesterov), ``Adam`` and ``AdamW`` without
    ``amsgrad`` or ``maximize``. Learning rates are read as they are now (after any scheduler
    step).
    """
    by_id = {id(p): name for name, p in named_params.items()}
    optimizers: dict[str, Any] = {}
    state: State = {}
    kind = type(optimizer)
    for group in optimizer.param_groups:
        if group.get("maximize", False):
            raise ValueError(f"from_torch: {kind.__name__}(maximize=True) is not supported")
        lr = float(group["lr"])
        if kind is torch.optim.SGD:
            fopt: Any = SGD(
                lr=lr,
                momentum=group["momentum"],
                dampening=group["dampening"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
            )
        elif kind in (torch.optim.Adam, torch.optim.AdamW):
            if group.get("amsgrad", False):
                raise ValueError(f"from_torch: {kind.__name__}(amsgrad=True) is not supported")
            fopt = Adam(
                lr=lr,
                betas=tuple(group["betas"]),
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled=kind is torch.optim.AdamW or bool(group.get("decoupled_weight_decay")),
            )
        else:
            raise TypeError(
                f"from_torch: no functional twin of {kind.__name__}; use bilevel.nn.optim.SGD "
                "or Adam, or pass one explicitly"
            )
        for p in group["params"]:
            name = by_id.get(id(p))
            if name is None:
                continue  # a parameter of the optimizer outside the differentiated set
            optimizers[name] = fopt
            saved = optimizer.state.get(p, {})
            if isinstance(fopt, SGD):
                buf = saved.get("momentum_buffer")
                state[name] = None if buf is None else buf.detach().clone()
            elif "step" in saved:
                state[name] = (
                    int(saved["step"]),
                    saved["exp_avg"].detach().clone(),
                    saved["exp_avg_sq"].detach().clone(),
                )
            else:
                state[name] = (0, torch.zeros_like(p), torch.zeros_like(p))
    missing = sorted(set(named_params) - set(optimizers))
    if missing:
        raise ValueError(f"from_torch: the optimizer does not hold the parameters {missing}")
    return _PerParameter(optimizers), state

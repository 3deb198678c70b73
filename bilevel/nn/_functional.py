"""A model and its hyperparameters as a pure function of parameter dictionaries.

The engine differentiates ``inner_loss(model, hparams, batch)`` and
``outer_loss(model, hparams, batch)`` with respect to the model's parameters ``theta`` and
the hyperparameters ``lambda`` without touching the modules: the losses are called inside
:func:`torch.func.functional_call` on a small wrapper module that holds the model (and the
hyperparameter module, if any) as submodules. For the duration of the call every
parameter and buffer is *swapped* for the tensor the engine passes, so whatever the loss
reads -- ``model(x)``, ``model.parameters()`` in a weight-decay term, ``model.fc.weight``
-- sees the substituted tensor, and its dependence on ``theta`` is differentiated.

Buffers are passed as fresh copies at every call (so running statistics updated in
training mode never write into the model): the model's parameters and buffers are left
bitwise unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]
Hparams = Mapping[str, Tensor] | nn.Module
Loss = Callable[[nn.Module, Any, Any], Tensor]

#: Modules whose output is random in training mode.
_STOCHASTIC = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class _Bound(nn.Module):
    """``forward(loss, hparams, batch) = loss(self.model, hparams, batch)``."""

    def __init__(self, model: nn.Module, hparams: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.hparams = hparams

    def forward(self, loss: Loss, hparams: Any, batch: Any) -> Tensor:
        return loss(self.model, self.hparams if hparams is None else hparams, batch)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model


def trainable(module: nn.Module) -> Params:
    """``{name: parameter}`` of the parameters of ``module`` that require grad."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


@dataclass
class FunctionalModel:
    """``(loss, theta, lambda, batch) -> loss(model[theta], hparams[lambda], batch)``.

    ``theta`` holds the trainable parameters of ``model`` (``requires_grad=True``; frozen
    ones keep their values), ``lambda`` the hyperparameters: the tensors of a dict, or the
    trainable parameters of a hyperparameter module.
    """

    model: nn.Module
    hparams: Hparams
    _bound: _Bound = field(init=False, repr=False)
    _buffers: Params = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = unwrap(self.model)
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(self.model).__name__}")
        module = self.hparams if isinstance(self.hparams, nn.Module) else None
        self._bound = _Bound(self.model, module)
        self._buffers = {
            name: b.detach().clone() for name, b in self._bound.named_buffers()
        }

    @property
    def hparams_is_module(self) -> bool:
        return isinstance(self.hparams, nn.Module)

    def theta(self) -> Params:
        """The model's trainable parameters, detached (the point ``theta``)."""
        return {name: p.detach() for name, p in trainable(self.model).items()}

    def lam(self) -> Params:
        """The hyperparameters, detached (the point ``lambda``)."""
        if isinstance(self.hparams, nn.Module):
            return {name: p.detach() for name, p in trainable(self.hparams).items()}
        return {name: t.detach() for name, t in self.hparams.items()}

    def __call__(self, loss: Loss, theta: Params, lam: Params, batch: Any) -> Tensor:
        # fresh copies per call: training-mode modules (batch norm) update their buffers
        # in place, which must hit neither the model nor a tensor captured by torch.func
        tensors = {k: b.clone() for k, b in self._buffers.items()}
        tensors.update({f"model.{k}": v for k, v in theta.items()})
        if isinstance(self.hparams, nn.Module):
            tensors.update({f"hparams.{k}": v for k, v in lam.items()})
            out = torch.func.functional_call(self._bound, tensors, (loss, None, batch))
        else:
            hparams = dict(self.hparams)
            hparams.update(lam)
            out = torch.func.functional_call(self._bound, tensors, (loss, hparams, batch))
        return _scalar(out, getattr(loss, "__name__", "loss"))

    def bind(self, loss: Loss, batch: Any) -> Callable[[Params, Params], Tensor]:
        """``(theta, lambda) -> loss(model[theta], hparams[lambda], batch)``."""
        return lambda theta, lam: self(loss, theta, lam, batch)


def _scalar(value: Any, name: str) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {shape}")
    return value.reshape(())


def check_finite_value(value: Tensor, what: str) -> None:
    """Raise :class:`~bilevel.errors.NonFiniteError` naming ``what`` if ``value`` is not finite."""
    from bilevel.errors import NonFiniteError

    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(f"{what} is {value.detach().flatten()[0].item()} (not finite)")


def stochastic_modules(model: nn.Module) -> Iterator[str]:
    """Names of dropout-like submodules that are in training mode."""
    for name, module in model.named_modules():
        if isinstance(module, _STOCHASTIC) and module.training and module.p > 0:
            yield name or type(module).__name__


def validate(fm: FunctionalModel, what: str) -> None:
    """Checks shared by every hypergradient mode: something to differentiate, one device
    and dtype, hyperparameters that require grad, and deterministic modules."""
    theta, lam = trainable(fm.model), fm.lam()
    if not theta:
        raise ValueError(
            f"{what}: the model has no parameter that requires grad (the lower-level variable "
            "is empty); call requires_grad_() on the parameters the inner problem trains"
        )
    if not lam:
        raise ValueError(f"{what}: hparams is empty")
    if not isinstance(fm.hparams, nn.Module):  # a mapping of tensors
        for name, t in fm.hparams.items():
            if not isinstance(t, Tensor):
                raise TypeError(f"{what}: hparams[{name!r}] must be a tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{what}: hparams[{name!r}] must be floating point, got {t.dtype}")
            if not t.requires_grad:
                raise ValueError(
                    f"{what}: hparams[{name!r}] does not require grad; call "
                    f"requires_grad_() on it, or leave it out of hparams if it is fixed"
                )
    ref_name, ref = next(iter(theta.items()))
    for kind, tensors in (("model parameter", theta), ("hyperparameter", lam)):
        for name, t in tensors.items():
            if t.device != ref.device:
                raise ValueError(
                    f"{what}: {kind} {name!r} is on {t.device} but model parameter "
                    f"{ref_name!r} is on {ref.device}; move them to one device"
                )
            if t.dtype != ref.dtype:
                raise TypeError(
                    f"{what}: {kind} {name!r} has dtype {t.dtype} but model parameter "
                    f"{ref_name!r} has {ref.dtype}; use one floating dtype for both levels"
                )
    for module, label in ((fm.model, "model"), (fm.hparams, "hparams")):
        if isinstance(module, nn.Module):
            names = list(stochastic_modules(module))
            if names:
                warnings.warn(
                    f"{what}: {label} has dropout in training mode ({', '.join(names)}): "
                    "every evaluation draws new masks, so the products the hypergradient "
                    f"combines are inconsistent; call {label}.eval() around the hypergradient",
                    UserWarning,
                    stacklevel=3,
                )

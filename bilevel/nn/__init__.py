"""Bilevel problems on ``nn.Module``s: hypergradients, a trainer, multi-process training.

The lower level trains a model's parameters ``theta`` on an inner loss, the upper level
tunes hyperparameters ``lambda`` (a dict of tensors or a module such as a weighting network)
on an outer loss::

    min_lambda F(theta*(lambda), lambda),   theta*(lambda) in argmin_theta f(theta, lambda).

* :func:`hypergradient` -- the functional core: ``dF/dlambda`` at the model's current
  parameters by implicit differentiation (``"cg"``, ``"neumann"``, on
  :func:`bilevel.implicit.root_vjp`), DARTS finite differences (``"fd"``), unrolled or
  truncated differentiation through functional optimizer steps (``"unrolled"``), or a
  first-order value-function penalty (``"penalty"``). Models are unmodified ``nn.Module``s
  called through :func:`torch.func.functional_call`; they are never written.
* :class:`BilevelTrainer` -- alternates ``inner_steps`` optimizer steps on the model with
  one hyperparameter step, with any ``torch.optim`` optimizer and scheduler per level,
  gradient accumulation, clipping, bf16 autocast, callbacks, progress, JSON-lines logs,
  bit-for-bit checkpoint/resume, and ``torchrun`` / DDP.
* :class:`ScaleBiOTrainer` -- the first-order min-max (value-function penalty) method of
  ScaleBiO, with a shadow copy of the model; no second derivatives.
* :mod:`bilevel.nn.optim` -- differentiable functional SGD and Adam steps.
"""

from __future__ import annotations

from bilevel.nn import optim
from bilevel.nn._hypergradient import (
    METHODS,
    HypergradientInfo,
    HypergradientResult,
    hypergradient,
)
from bilevel.nn._minimax import MinimaxResult, ScaleBiOTrainer
from bilevel.nn._trainer import BilevelTrainer, TrainResult

__all__ = [
    "METHODS",
    "BilevelTrainer",
    "HypergradientInfo",
    "HypergradientResult",
    "MinimaxResult",
    "ScaleBiOTrainer",
    "hypergradient",
    "TrainResult",
    "optim",
]

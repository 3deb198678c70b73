"""ScaleBiO: the first-order min-max (value-function penalty) reformulation of a bilevel
problem on ``nn.Module``s (implementation of :class:`bilevel.nn.ScaleBiOTrainer`).

Pan et al., "ScaleBiO: Scalable Bilevel Optimization for LLM Data Reweighting" (2024),
following Kwon et al.'s fully first-order penalty method, replace

    min_lambda F(theta*(lambda), lambda),   theta*(lambda) = argmin_theta f(theta, lambda)

by the saddle-point problem, with a penalty ``alpha > 0``,

    min_{w, lambda} max_u  L(w, u, lambda) = F(w, lambda) + alpha [f(w, lambda) - f(u, lambda)]

(``max_u -f(u, lambda) = -min f``, so the bracket is the value-function gap ``f - min f >= 0``).
Two copies of the model are kept: ``w`` (the model being tuned) and ``u`` (a shadow that
tracks ``argmin f``). Each step evaluates ``L`` once on one inner and one outer batch and
moves the three blocks simultaneously, with the optimizers the user chose (``eta`` their
learning rates):

    u      <- u      + eta_u   s grad_u   L  =  u - eta_u s alpha grad_u f(u, lambda)
    w      <- w      - eta_w   s grad_w   L  =  w - eta_w s [grad_w F + alpha grad_w f]
    lambda <- lambda - eta_lam s grad_lam L As in the official code
(``python/minmax.py`` of the authors' repository), the penalty grows geometrically by
``tau`` at the start of each stage of ``stage_steps`` steps, ``alpha_i = alpha tau^(i+1)``,
and every learning rate is scaled by ``s = tau^(-i)``, so the steps on the penalty terms keep
their size while the weight of ``F`` in the ``w`` step decreases (``tau = 1``: constant).
The bias of the penalty solution is ``O(1 / alpha)`` (Kwon et al. 2023).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bilevel.errors import DivergenceError
from bilevel.methods import BatchStream
from bilevel.nn._functional import FunctionalModel, Hparams, Loss, trainable, validate

__all__ = ["ScaleBiOTrainer", "MinimaxResult"]

OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]


@dataclass
class MinimaxResult:
    """Outcome of :meth:`ScaleBiOTrainer.fit`: ``history`` has one record per step with
    ``step``, ``alpha``, ``outer_loss`` (``F(w)``), ``inner_loss_w`` and ``inner_loss_u``
    (``f(w)``, ``f(u)``), ``gap`` (their difference) and ``time``."""

    steps: int
    history: list[dict[str, float]] = field(repr=False)

    def column(self, key: str) -> list[float]:
        return [r[key] for r in self.history]


class ScaleBiOTrainer:
    """ScaleBiO on ``nn.Module``s (see the module docstring for the updates).

    Parameters
    ----------
    model:
        ``w``, the lower-level model; a deep copy becomes the shadow ``u``.
    hparams:
        A dict of tensors that require grad, or an ``nn.Module`` (``lambda``).
    inner_loss, outer_loss:
        ``loss(model, hparams, batch) -> scalar`` (as for :func:`bilevel.nn.hypergradient`).
    make_optimizer:
        ``make_optimizer(parameters) -> torch.optim.Optimizer``, called for ``w`` and ``u``.
    outer_optimizer:
        A ``torch.optim`` optimizer over the hyperparameters.
    inner_data, outer_data:
        Iterables of batches, re-iterated at the end of each pass.
    alpha, tau, stage_steps:
        Penalty, its growth factor per stage, and steps per stage.
    """

    def __init__(
        self,
        model: nn.Module,
        hparams: Hparams,
        inner_loss: Loss,
        outer_loss: Loss,
        *,
        make_optimizer: OptimizerFactory,
        outer_optimizer: torch.optim.Optimizer,
        inner_data: Iterable[Any],
        outer_data: Iterable[Any],
        alpha: float = 1.0,
        tau: float = 1.0,
        stage_steps: int = 100,
    ) -> None:
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"ScaleBiOTrainer: alpha must be positive and finite, got {alpha}")
        if not (tau >= 1 and math.isfinite(tau)):
            raise ValueError(f"ScaleBiOTrainer: tau must be >= 1, got {tau}")
        if not isinstance(stage_steps, int) or stage_steps < 1:
            raise ValueError(f"ScaleBiOTrainer: stage_steps must be an integer >= 1, got {stage_steps!r}")
        if not isinstance(outer_optimizer, torch.optim.Optimizer):
            raise TypeError(
                "ScaleBiOTrainer: outer_optimizer must be a torch.optim.Optimizer, got "
                f"{type(outer_optimizer).__name__}"
            )
        validate(FunctionalModel(model, hparams), "ScaleBiOTrainer")
        self.model = model
        self.shadow = copy.deepcopy(model)
        self.hparams = hparams
        self.inner_loss = inner_loss
        self.outer_loss = outer_loss
        self.w_optimizer = make_optimizer(trainable(model).values())
        self.u_optimizer = make_optimizer(trainable(self.shadow).values())
        self.outer_optimizer = outer_optimizer
        self._base_lrs = [
            [g["lr"] for g in opt.param_groups]
            for opt in (self.w_optimizer, self.u_optimizer, self.outer_optimizer)
        ]
        self.alpha, self.tau, self.stage_steps = alpha, tau, stage_steps
        self.inner_stream = BatchStream(inner_data, "inner_data", source="inner_data")
        self.outer_stream = BatchStream(outer_data, "outer_data", source="outer_data")
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _hparam_tensors(self) -> list[Tensor]:
        if isinstance(self.hparams, nn.Module):
            return list(trainable(self.hparams).values())
        return list(self.hparams.values())

    def _set_lr_scale(self, scale: float) -> None:
        for opt, bases in zip((self.w_optimizer, self.u_optimizer, self.outer_optimizer), self._base_lrs):
            for group, base in zip(opt.param_groups, bases):
                group["lr"] = base * scale

    def one_step(self) -> dict[str, float]:
        """One simultaneous ScaleBiO step of ``u``, ``w`` and ``lambda`` on the next batches."""
        stage = self.step // self.stage_steps
        alpha = self.alpha * self.tau ** (stage + 1) if self.tau > 1 else self.alpha
        self._set_lr_scale(self.tau ** (-stage))
        inner_batch, outer_batch = self.inner_stream.next(), self.outer_stream.next()
        w_params = list(trainable(self.model).values())
        u_params = list(trainable(self.shadow).values())
        lam = self._hparam_tensors()
        f_u = self.inner_loss(self.shadow, self.hparams, inner_batch)
        F_w = self.outer_loss(self.model, self.hparams, outer_batch)
        f_w = self.inner_loss(self.model, self.hparams, inner_batch)
        lagrangian = F_w + alpha * (f_w - f_u)
        if not bool(torch.isfinite(lagrangian.detach())):
            raise DivergenceError(
                f"ScaleBiOTrainer: the Lagrangian became {float(lagrangian)} at step {self.step}"
            )
        grads = torch.autograd.grad(
            lagrangian, u_params + w_params + lam, allow_unused=True, materialize_grads=True
        )
        g_u = grads[: len(u_params)]
        g_w = grads[len(u_params) : len(u_params) + len(w_params)]
        g_lam = grads[len(u_params) + len(w_params) :]
        for params, gs, sign in ((u_params, g_u, -1.0), (w_params, g_w, 1.0), (lam, g_lam, 1.0)):
            for p, g in zip(params, gs):
                p.grad = sign * g  # u ascends on the Lagrangian, w and lambda descend
        for opt in (self.u_optimizer, self.w_optimizer, self.outer_optimizer):
            opt.step()
        self.step += 1
        return {
            "step": self.step,
            "alpha": alpha,
            "outer_loss": float(F_w.detach()),
            "inner_loss_w": float(f_w.detach()),
            "inner_loss_u": float(f_u.detach()),
            "gap": float((f_w - f_u).detach()),
        }

    def fit(
        self,
        steps: int,
        *,
        callbacks: Sequence[Callable[[ScaleBiOTrainer, dict[str, float]], bool | None]] = (),
        progress: bool = False,
    ) -> MinimaxResult:
        """Run until ``steps`` steps have been done in total; a callback returning True stops."""
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"fit: steps must be an integer >= 0, got {steps!r}")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=self.step, desc="ScaleBiO", dynamic_ncols=True)
        start = time.perf_counter()
        try:
            while self.step < steps:
                record = self.one_step()
                record["time"] = time.perf_counter() - start
                self.history.append(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(outer=f"{record['outer_loss']:.4g}", gap=f"{record['gap']:.3g}", refresh=False)
                if any(cb(self, record) for cb in callbacks):
                    break
        finally:
            if bar is not None:
                bar.close()
        return MinimaxResult(steps=self.step, history=list(self.history))

"""Hypergradients of ``nn.Module`` bilevel problems (implementation of
:func:`bilevel.nn.hypergradient`).

The lower-level variable is the vector ``theta`` of the model's trainable parameters, the
upper-level variable the hyperparameters ``lambda``; ``f(theta, lambda)`` is the inner loss on
``inner_batch`` and ``F(theta, lambda)`` the outer loss on ``outer_batch``. With
``theta*(lambda)`` a stationary point of ``f`` the hypergradient is

    dF/dlambda = grad_lambda F - B u,      H u = grad_theta F,

``H = d2 f / dtheta2`` and ``B = d2 f / dlambda dtheta`` at ``(theta, lambda)``. The modes:

* ``"cg"`` / ``"neumann"``: that formula, by :func:`bilevel.implicit.solve_adjoint` on one
  :class:`bilevel.implicit.Linearisation` of the stationarity condition ``grad_theta
  f(theta, lambda) = 0`` (one autograd graph of ``grad_theta f``, built with
  ``create_graph=True``; every product with ``H`` and the final ``B u`` is one backward
  pass through it), with the linear solve
  :func:`bilevel.linalg.cg` or the truncated Neumann series ``u = alpha sum_{k<=K}
  (I - alpha H)^k grad_theta F`` (:func:`bilevel.linalg.neumann`);
* ``"fd"``: DARTS' approximation (Liu et al. 2019, eqs. 7-8): one virtual step
  ``theta' = theta - xi grad_theta f(theta)`` and ``B`` times ``v = grad_theta F(theta')`` by
  central differences, ``B v ~ (grad_lambda f(theta + eps v) - grad_lambda f(theta - eps v))
  / (2 eps)`` with ``eps = epsilon / ||v||``; the result is ``grad_lambda F(theta') - xi B v``
  (``xi = 0``: first-order DARTS). The probes are new tensors: the model is never written;
* ``"unrolled"``: reverse mode through ``steps`` steps of a differentiable functional
  optimizer (:mod:`bilevel.nn.optim`) from ``theta``, with ``truncate=K`` differentiating
  only the last ``K`` steps (memory linear in ``K``);
* ``"penalty"`` (alias ``"value_function"``): first order (Kwon et al. 2023, F2SA),
  ``grad_lambda F(theta_l) + l (grad_lambda f(theta_l) - grad_lambda f(theta_z))`` with
  ``theta_l`` from ``steps`` gradient steps on ``F / l + f`` and ``theta_z`` on ``f``, both
  from ``theta``: the gradient of the penalised Lagrangian ``F + l (f - min f)``, bias
  ``O(1/l)``.

Under ``torch.distributed`` every rank passes its own shard of the batches; gradients of the
losses, the products with ``H`` inside the linear solve and ``B u`` are averaged over the
ranks, so every rank computes the hypergradient of the global (mean) losses, identically. Inside a
differentiated unroll the gradients are averaged by a differentiable all-reduce, whose
backward sums the cotangents of every rank.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bilevel.implicit import Linearisation, solve_adjoint
from bilevel.linalg import LinearSolveInfo, cg, lanczos, neumann
from bilevel.nn import _distributed as dist_utils
from bilevel.nn._functional import (
    FunctionalModel,
    Hparams,
    Loss,
    Params,
    check_finite_value,
    validate,
)
from bilevel.nn.optim import SGD, FunctionalOptimizer, _positive, from_torch

METHODS = ("cg", "neumann", "fd", "unrolled", "penalty", "value_function")


@dataclass
class HypergradientInfo:
    """What a hypergradient computation did.

    Attributes
    ----------
    method:
        The mode used.
    outer_loss, inner_loss:
        The losses at ``(theta, lambda)`` (``inner_loss`` where the mode evaluates it),
        averaged over ranks under ``torch.distributed``.
    linear_solve:
        The :class:`~bilevel.linalg.LinearSolveInfo` of ``"cg"`` / ``"neumann"``.
    hvp_calls:
        Products with ``H`` or ``B`` (or finite-difference probes) used.
    theta:
        The end point of the inner trajectory of ``"unrolled"`` / ``"penalty"`` (detached);
        ``None`` otherwise.
    """

    method: str
    outer_loss: float
    inner_loss: float | None = None
    linear_solve: LinearSolveInfo | None = None
    hvp_calls: int = 0
    theta: Params | None = field(default=None, repr=False)


class HypergradientResult(dict[str, Tensor]):
    """``{name: dF/dlambda[name]}`` with the record of the computation in ``.info``."""

    info: HypergradientInfo

    def __init__(self, grads: dict[str, Tensor], info: HypergradientInfo) -> None:
        super().__init__(grads)
        self.info = info


def hypergradient(
    model: nn.Module,
    hparams: Hparams,
    inner_loss: Loss,
    outer_loss: Loss,
    inner_batch: Any,
    outer_batch: Any,
    method: str = "cg",
    **options: Any,
) -> HypergradientResult:
    r"""Gradient of the outer loss with respect to the hyperparameters, through the model's
    training.

    .. math::

        \frac{dF}{d\lambda} = \nabla_\lambda F - B u, \qquad H u = \nabla_\theta F,
        \qquad H = \nabla^2_{\theta\theta} f, \quad B = \nabla^2_{\lambda\theta} f,

    at the model's current parameters ``theta`` (assumed at or near a stationary point of
    the inner loss ``f``); see the module docstring for each mode's approximation.

    Parameters
    ----------
    model:
        An ``nn.Module`` (possibly wrapped in ``DistributedDataParallel``) whose trainable
        parameters are the lower-level variable. Its parameters and buffers are left bitwise
        unchanged.
    hparams:
        A dict of tensors (each ``requires_grad``), or an ``nn.Module`` (for example a
        weighting network) whose trainable parameters are the hyperparameters.
    inner_loss, outer_loss:
        ``loss(model, hparams, batch) -> scalar``. They may call the model and read its
        parameters directly (``model.parameters()`` in a weight-decay term): inside the
        engine those are the tensors being differentiated.
    inner_batch, outer_batch:
        Passed as they are to the losses.
    method:
        ``"cg"`` (default), ``"neumann"``, ``"fd"``, ``"unrolled"``, ``"penalty"`` (alias
        ``"value_function"``).
    **options:
        * ``"cg"``: ``tol`` (relative residual; dtype default), ``maxiter`` (100), ``ridge``
          (damping added to ``H``, 0), ``init`` (warm start of ``u``).
        * ``"neumann"``: ``steps`` (20 terms), ``alpha`` (step of the series, must satisfy
          ``alpha < 2 / lambda_max(H)``; default 1.0 / an estimate of ``lambda_max(H)``
          by Lanczos, :func:`bilevel.linalg.lanczos`, with ``power_iterations=20``
          Hessian-vector products), ``ridge``.
        * ``"fd"``: ``xi`` (virtual step, default 0.0: first order), ``epsilon`` (0.01).
        * ``"unrolled"``: ``steps`` (1), ``truncate`` (``None``: all), ``optimizer`` (a
          :mod:`bilevel.nn.optim` optimizer or a live ``torch.optim`` SGD/Adam/AdamW to mirror,
          with its state; default ``SGD(lr=0.1)``), ``inner_batches`` (one batch per step;
          default: ``inner_batch`` every step).
        * ``"penalty"``: ``multiplier`` (``l``, 10.0), ``steps`` (10), ``lr`` (0.1).
        * every mode: ``distributed`` (``None``: average over ranks when
          ``torch.distributed`` is initialised with more than one process; ``False``: never;
          or a process group), ``check_inputs`` (True: validate and check that every
          hyperparameter is read by a loss).

    Returns
    -------
    HypergradientResult
        A dict with the keys of ``hparams`` (its ``named_parameters()`` that require grad
        for a module), each a detached tensor shaped like the hyperparameter, plus ``.info``.
    """
    if method not in METHODS:
        raise ValueError(f"hypergradient: method must be one of {METHODS}, got {method!r}")
    group = dist_utils.resolve(options.pop("distributed", None))
    check = options.pop("check_inputs", True)
    fm = FunctionalModel(model, hparams)
    if check:
        validate(fm, "hypergradient")
    with torch.autocast(device_type=_device_type(fm), enabled=False):
        impl = _MODES["penalty" if method == "value_function" else method]
        grads, info = impl(fm, inner_loss, outer_loss, inner_batch, outer_batch, group, check, **options)
    return HypergradientResult({k: v.detach() for k, v in grads.items()}, info)


def _device_type(fm: FunctionalModel) -> str:
    return next(iter(fm.theta().values())).device.type


def _known(value: Tensor | None, what: str) -> Tensor:
    """``value``, which the caller has computed on every path (a ``None`` is a bug)."""
    if value is None:
        raise RuntimeError(f"hypergradient: {what} was not computed")
    return value


def _grads(
    fn: Callable[[Params, Params], Tensor], theta: Params, lam: Params, group: Any, what: str
) -> tuple[Params, Params, Tensor]:
    """``(grad_theta fn, grad_lambda fn, fn)`` at ``(theta, lambda)``, averaged over ranks."""
    (g_theta, g_lam), value = torch.func.grad_and_value(fn, argnums=(0, 1))(theta, lam)
    value = value.detach()
    check_finite_value(value, what)
    g_theta, g_lam = dist_utils.mean(g_theta, group), dist_utils.mean(g_lam, group)
    return g_theta, g_lam, dist_utils.mean_scalar(value, group)


def _unused(fm: FunctionalModel, losses: Sequence[tuple[Loss, Any]]) -> None:
    """Raise if a hyperparameter is read by none of the losses (it would get a zero
    hypergradient for no reason a user would want)."""
    lam = {k: v.detach().requires_grad_(True) for k, v in fm.lam().items()}
    used: set[str] = set()
    with torch.enable_grad():
        for loss, batch in losses:
            value = fm(loss, fm.theta(), lam, batch)
            names = list(lam)
            found = torch.autograd.grad(
                value, [lam[n] for n in names], allow_unused=True, materialize_grads=False
            ) if value.requires_grad else [None] * len(names)
            used.update(n for n, g in zip(names, found) if g is not None)
    missing = [n for n in lam if n not in used]
    if missing:
        raise ValueError(
            f"hypergradient: hyperparameter(s) {missing} are read by neither inner_loss nor "
            "outer_loss, so their hypergradient is zero; pass them to the losses or leave "
            "them out of hparams"
        )


def _implicit(
    fm: FunctionalModel,
    inner_loss: Loss,
    outer_loss: Loss,
    inner_batch: Any,
    outer_batch: Any,
    group: Any,
    check: bool,
    *,
    solver: str,
    tol: float | None = None,
    maxiter: int | None = None,
    ridge: float = 0.0,
    init: Params | None = None,
    steps: int = 20,
    alpha: float | None = None,
    power_iterations: int = 20,
) -> tuple[Params, HypergradientInfo]:
    theta, lam = fm.theta(), fm.lam()
    if check:
        _unused(fm, [(inner_loss, inner_batch), (outer_loss, outer_batch)])
    g_theta_F, g_lam_F, F = _grads(fm.bind(outer_loss, outer_batch), theta, lam, group, "outer_loss")
    # one autograd linearisation of grad_theta f, shared by every product with H and by B u
    lin = Linearisation.of_objective(fm.bind(inner_loss, inner_batch), theta, (lam,))
    inner_value = _known(lin.value, "the inner loss")
    check_finite_value(inner_value, "inner_loss")
    if solver == "cg":
        if maxiter is not None and maxiter < 1:
            raise ValueError(f"hypergradient: maxiter must be >= 1, got {maxiter}")
        solve = functools.partial(cg, tol=tol, maxiter=100 if maxiter is None else maxiter, ridge=ridge, init=init)
    else:
        if steps < 0:
            raise ValueError(f"hypergradient: steps must be >= 0, got {steps}")
        if alpha is None:
            lam_max = _largest_eigenvalue(lin, theta, group, power_iterations)
            alpha = 1.0 / max(lam_max + ridge, 1e-12)
        else:
            _positive("hypergradient: alpha", alpha)
        solve = functools.partial(neumann, alpha=alpha, maxiter=steps + 1, tol=0.0, ridge=ridge, warn=False)
    record: list[LinearSolveInfo] = []
    adjoint = solve_adjoint(lin, g_theta_F, dist_utils.reducing_solver(solve, group, record))
    minus_b_u = dist_utils.mean(adjoint.vjp[0], group)
    grads = {k: g_lam_F[k] + minus_b_u[k] for k in lam}
    return grads, HypergradientInfo(
        method=solver,
        outer_loss=float(F),
        inner_loss=float(dist_utils.mean_scalar(inner_value, group)),
        linear_solve=record[0],
        hvp_calls=lin.calls,  # products with H (linear solve, Lanczos) and the one with B
    )


def _largest_eigenvalue(lin: Linearisation, theta: Params, group: Any, iterations: int) -> float:
    """``max |eigenvalue|`` of ``H = d2_theta f`` (for the Neumann step ``1 / lambda_max``)
    by :func:`bilevel.linalg.lanczos` with ``iterations`` Hessian-vector products (products
    averaged over ranks, so every rank gets the same estimate)."""
    spectrum = lanczos(lambda v: dist_utils.mean(lin.rmatvec(v), group), theta, steps=iterations)
    return max(abs(spectrum.smallest), abs(spectrum.largest))


def _fd(
    fm: FunctionalModel,
    inner_loss: Loss,
    outer_loss: Loss,
    inner_batch: Any,
    outer_batch: Any,
    group: Any,
    check: bool,
    *,
    xi: float = 0.0,
    epsilon: float = 0.01,
) -> tuple[Params, HypergradientInfo]:
    _positive("hypergradient: xi", xi, allow_zero=True)
    _positive("hypergradient: epsilon", epsilon)
    theta, lam = fm.theta(), fm.lam()
    if check:
        _unused(fm, [(inner_loss, inner_batch), (outer_loss, outer_batch)])
    f = fm.bind(inner_loss, inner_batch)
    probes = 0
    inner_value: Tensor | None = None
    if xi > 0:
        g_theta_f, _, inner_value = _grads(f, theta, lam, group, "inner_loss")
        theta_v = {k: theta[k] - xi * g_theta_f[k] for k in theta}
        probes += 1
    else:
        theta_v = theta
    g_theta_F, g_lam_F, F = _grads(fm.bind(outer_loss, outer_batch), theta_v, lam, group, "outer_loss")
    if xi == 0:
        return g_lam_F, HypergradientInfo(method="fd", outer_loss=float(F))
    norm = math.sqrt(sum(float((g * g).sum()) for g in g_theta_F.values()))
    if norm == 0:
        return g_lam_F, HypergradientInfo(method="fd", outer_loss=float(F), hvp_calls=probes)
    eps = epsilon / norm
    grad_lam_f = torch.func.grad(f, argnums=1)
    plus = grad_lam_f({k: theta[k] + eps * g_theta_F[k] for k in theta}, lam)
    minus = grad_lam_f({k: theta[k] - eps * g_theta_F[k] for k in theta}, lam)
    b_v = dist_utils.mean({k: (plus[k] - minus[k]) / (2 * eps) for k in lam}, group)
    grads = {k: g_lam_F[k] - xi * b_v[k] for k in lam}
    return grads, HypergradientInfo(
        method="fd",
        outer_loss=float(F),
        inner_loss=float(_known(inner_value, "the inner loss")),
        hvp_calls=probes + 2,
    )


def _unrolled(
    fm: FunctionalModel,
    inner_loss: Loss,
    outer_loss: Loss,
    inner_batch: Any,
    outer_batch: Any,
    group: Any,
    check: bool,
    *,
    steps: int = 1,
    truncate: int | None = None,
    optimizer: FunctionalOptimizer | torch.optim.Optimizer | None = None,
    inner_batches: Sequence[Any] | None = None,
) -> tuple[Params, HypergradientInfo]:
    if steps < 1 or (truncate is not None and not 1 <= truncate <= steps):
        raise ValueError(
            f"hypergradient: need steps >= 1 and 1 <= truncate <= steps, got steps={steps}, "
            f"truncate={truncate}"
        )
    if inner_batches is not None and len(inner_batches) != steps:
        raise ValueError(
            f"hypergradient: inner_batches has {len(inner_batches)} batches for {steps} steps"
        )
    batches = list(inner_batches) if inner_batches is not None else [inner_batch] * steps
    theta = fm.theta()
    if check:
        _unused(fm, [(inner_loss, batches[0]), (outer_loss, outer_batch)])
    if optimizer is None:
        optimizer = SGD(lr=0.1)
    if isinstance(optimizer, torch.optim.Optimizer):
        opt, state = from_torch(optimizer, {k: p for k, p in _named_trainable(fm).items()})
    else:
        opt, state = optimizer, optimizer.init(theta)
    tracked = steps if truncate is None else truncate
    lam = {k: v.detach().requires_grad_(True) for k, v in fm.lam().items()}
    lam_fixed = {k: v.detach() for k, v in lam.items()}
    first_inner: Tensor | None = None
    th = dict(theta)
    with torch.enable_grad():
        for t, batch in enumerate(batches):
            differentiate = t >= steps - tracked
            if t == steps - tracked or not differentiate:
                # start of the differentiated segment (or an untracked step): fresh leaves
                th = {k: v.detach().requires_grad_(True) for k, v in th.items()}
                state = _detach_state(state)
            value = fm(inner_loss, th, lam if differentiate else lam_fixed, batch)
            check_finite_value(value.detach(), f"inner_loss at unrolled step {t}")
            if first_inner is None:
                first_inner = dist_utils.mean_scalar(value.detach(), group)
            raw = torch.autograd.grad(
                value, list(th.values()), create_graph=differentiate, materialize_grads=True,
                allow_unused=True,
            )
            reduce = dist_utils.mean_differentiable if differentiate else dist_utils.mean
            g = reduce(dict(zip(th, raw)), group)
            if differentiate:
                th, state = opt.step(th, g, state)
            else:
                with torch.no_grad():
                    th, state = opt.step({k: v.detach() for k, v in th.items()}, g, state)
        value = fm(outer_loss, th, lam, outer_batch)
        check_finite_value(value.detach(), "outer_loss")
        names = list(lam)
        grads = torch.autograd.grad(
            value, [lam[n] for n in names], allow_unused=True, materialize_grads=True
        )
    out = dist_utils.mean(dict(zip(names, grads)), group)
    F = dist_utils.mean_scalar(value.detach(), group)
    return out, HypergradientInfo(
        method="unrolled",
        outer_loss=float(F),
        inner_loss=float(_known(first_inner, "the first inner loss")),
        hvp_calls=tracked,
        theta={k: v.detach() for k, v in th.items()},
    )


def _named_trainable(fm: FunctionalModel) -> Params:
    return {name: p for name, p in fm.model.named_parameters() if p.requires_grad}


def _detach_state(state: Any) -> Any:
    return torch.utils._pytree.tree_map(
        lambda x: x.detach() if isinstance(x, Tensor) else x, state
    )


def _penalty(
    fm: FunctionalModel,
    inner_loss: Loss,
    outer_loss: Loss,
    inner_batch: Any,
    outer_batch: Any,
    group: Any,
    check: bool,
    *,
    multiplier: float = 10.0,
    steps: int = 10,
    lr: float = 0.1,
) -> tuple[Params, HypergradientInfo]:
    _positive("hypergradient: multiplier", multiplier)
    _positive("hypergradient: steps", steps, allow_zero=True)
    _positive("hypergradient: lr", lr)
    theta, lam = fm.theta(), fm.lam()
    if check:
        _unused(fm, [(inner_loss, inner_batch), (outer_loss, outer_batch)])
    f = fm.bind(inner_loss, inner_batch)
    F = fm.bind(outer_loss, outer_batch)

    def penalised(th: Params, la: Params) -> Tensor:
        return F(th, la) / multiplier + f(th, la)

    theta_l, theta_z = dict(theta), dict(theta)
    for _ in range(steps):
        g_l, _, _ = _grads(penalised, theta_l, lam, group, "outer_loss / multiplier + inner_loss")
        g_z, _, _ = _grads(f, theta_z, lam, group, "inner_loss")
        theta_l = {k: theta_l[k] - lr * g_l[k] for k in theta}
        theta_z = {k: theta_z[k] - lr * g_z[k] for k in theta}
    _, g_lam_F, F_value = _grads(F, theta_l, lam, group, "outer_loss")
    _, g_lam_f_l, _ = _grads(f, theta_l, lam, group, "inner_loss")
    _, g_lam_f_z, inner_value = _grads(f, theta_z, lam, group, "inner_loss")
    grads = {k: g_lam_F[k] + multiplier * (g_lam_f_l[k] - g_lam_f_z[k]) for k in lam}
    return grads, HypergradientInfo(
        method="penalty",
        outer_loss=float(F_value),
        inner_loss=float(inner_value),
        theta={k: v.detach() for k, v in theta_l.items()},
    )


_MODES: dict[str, Callable[..., tuple[Params, HypergradientInfo]]] = {
    "cg": functools.partial(_implicit, solver="cg"),
    "neumann": functools.partial(_implicit, solver="neumann"),
    "fd": _fd,
    "unrolled": _unrolled,
    "penalty": _penalty,
}

"""Implementation of :mod:`bilevel.hypergrad` (see the package docstring for the formulas)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bilevel.hypergrad._oracles import Linearisation, upper_grads
from bilevel.implicit import solve_adjoint
from bilevel.linalg import LinearSolveInfo, LinearSolver
from bilevel.linalg import neumann as neumann_solve
from bilevel.problem import BilevelProblem
from bilevel.tree import PyTree, ravel, tree_add, tree_axpy, tree_leaves, tree_map

Batch = Any


@dataclass
class Hypergradient:
    """An estimate of ``grad h(x)``.

    Attributes
    ----------
    grad:
        The estimate, with the structure of ``x``.
    y:
        The inner variable the estimate was computed at (after any inner steps the estimator
        takes itself, e.g. the end of the unrolled run): the warm start for the next call.
    grad_calls, hvp_calls:
        Gradient and Hessian-vector (or Jacobian-vector) products used.
    linear_solve:
        Info of the linear solve, for :func:`implicit` and :func:`neumann`.
    aux:
        Estimator-specific extras (e.g. ``z`` for :func:`penalty`).
    """

    grad: PyTree
    y: PyTree
    grad_calls: int
    hvp_calls: int
    linear_solve: LinearSolveInfo | None = None
    aux: dict[str, Any] | None = None


def _check_step(name: str, step_size: float) -> None:
    """``step_size`` must be a positive finite number (``ValueError`` naming it)."""
    from bilevel.methods._validation import check_positive  # (methods import this module)

    check_positive(name, step_size=step_size)


def _upper(problem: BilevelProblem, batch: Batch) -> Callable[[PyTree, PyTree], torch.Tensor]:
    return lambda x, y: problem.upper_value(x, y, batch)


def _lower(problem: BilevelProblem, batch: Batch) -> Callable[[PyTree, PyTree], torch.Tensor]:
    return lambda x, y: problem.lower_value(x, y, batch)


def _second_order_pieces(
    problem: BilevelProblem, x: PyTree, y: PyTree, upper_batch: Batch, lower_batch: Batch
) -> tuple[PyTree, PyTree, Linearisation]:
    """``(grad_x F, grad_y F, one linearisation of grad_y f)`` at ``(x, y)``."""
    gx_F, gy_F = upper_grads(problem, x, y, upper_batch)
    return gx_F, gy_F, Linearisation(problem, x, y, lower_batch)


def implicit(
    problem: BilevelProblem,
    x: PyTree,
    y: PyTree,
    *,
    solve: str | LinearSolver = "auto",
    init: PyTree | None = None,
    upper_batch: Batch = None,
    lower_batch: Batch = None,
    **solve_options: Any,
) -> Hypergradient:
    """Approximate implicit differentiation (AID): ``grad_x F - B v`` with ``H v = grad_y F``.

    The implicit function theorem applied to the stationarity condition ``grad_y f(x, y) =
    0``, by :func:`bilevel.implicit.solve_adjoint` (the first-order core of
    :func:`bilevel.implicit.root_vjp`) on one linearisation of ``grad_y f``: ``v`` is its
    adjoint, ``-B v`` its vector-Jacobian product with ``grad_y F``.

    ``y`` should approximate ``y*(x)``; the estimate is exact when it does and the linear
    system is solved exactly. ``solve`` is any solver of :mod:`bilevel.linalg`: the default
    ``"auto"`` (as everywhere in :mod:`bilevel.implicit`) factorises ``H`` densely (Cholesky)
    for small ``y`` and runs CG above :data:`bilevel.linalg.DENSE_MAX`; ``"cg"`` suits
    ``H`` symmetric positive definite (a strongly convex lower level) at any size;
    ``init`` warm starts ``v`` (returned as ``aux["v"]``), ``solve_options`` go to the
    solver (``tol``, ``maxiter``, ``ridge``, ...). ``hvp_calls`` counts the products with
    ``H`` and ``B`` made (``n`` batched products for a dense solve of size ``n``).
    """
    gx_F, gy_F, lin = _second_order_pieces(problem, x, y, upper_batch, lower_batch)
    adjoint = solve_adjoint(lin.implicit, gy_F, solve, init=init, **solve_options)
    grad = tree_add(gx_F, adjoint.vjp[0])
    return Hypergradient(
        grad=grad,
        y=y,
        grad_calls=1,
        hvp_calls=_products(lin, adjoint.info),
        linear_solve=adjoint.info,
        aux={"v": adjoint.u},
    )


def _products(lin: Linearisation, info: LinearSolveInfo) -> int:
    """Products with ``H`` and ``B``: the linearisation's backward passes, where a dense
    solve's one batched pass counts as ``n`` products (``info.iterations`` is 1 there)."""
    if info.solver.startswith(("dense", "auto:cholesky", "auto:lu")):
        n = sum(t.numel() for t in tree_leaves(lin.grad_y))
        return lin.implicit.calls - 1 + n
    return lin.implicit.calls


def neumann(
    problem: BilevelProblem,
    x: PyTree,
    y: PyTree,
    *,
    steps: int = 10,
    step_size: float = 0.1,
    upper_batch: Batch = None,
    lower_batch: Batch = None,
) -> Hypergradient:
    """Truncated Neumann series (stocBiO, Ji, Yang and Liang 2021)::

        v = eta * sum_{k=0}^{Q} (I - eta H)^k grad_y F,      grad ~ grad_x F - B v

    with ``Q = steps`` and ``eta = step_size < 1 / L_y`` (``L_y`` the smoothness of
    ``f(x, .)``). The ``k = 0`` term and the factor ``eta`` are part of the series (the
    official stocBiO code omits both, which biases the estimate). With minibatch arguments
    each product uses the same batch; pass fresh batches per call for stochasticity.
    ``aux["v"]`` holds ``v``.
    """
    if steps < 0:
        raise ValueError(f"neumann: steps must be >= 0, got {steps}")
    _check_step("neumann", step_size)
    gx_F, gy_F, lin = _second_order_pieces(problem, x, y, upper_batch, lower_batch)
    solve = functools.partial(neumann_solve, alpha=step_size, maxiter=steps + 1, tol=0.0, warn=False)
    adjoint = solve_adjoint(lin.implicit, gy_F, solve)
    grad = tree_add(gx_F, adjoint.vjp[0])
    # steps products with H (steps + 1 terms; the first is b itself) and one with B
    return Hypergradient(
        grad=grad,
        y=y,
        grad_calls=1,
        hvp_calls=lin.implicit.calls,
        linear_solve=adjoint.info,
        aux={"v": adjoint.u},
    )


def _gd_step(
    problem: BilevelProblem, batch: Batch, step_size: float
) -> Callable[[PyTree, PyTree], PyTree]:
    grad_y = torch.func.grad(_lower(problem, batch), argnums=1)
    return lambda x, y: tree_axpy(-step_size, grad_y(x, y), y)


def unrolled(
    problem: BilevelProblem,
    x: PyTree,
    y: PyTree,
    *,
    steps: int = 10,
    step_size: float = 0.1,
    truncate: int | None = None,
    upper_batch: Batch = None,
    lower_batch: Batch = None,
) -> Hypergradient:
    """Iterative differentiation (ITD): reverse mode through ``T = steps`` inner GD steps.

    ``y_{t+1} = y_t - eta grad_y f(x, y_t)`` from ``y_0 = y``; the estimate is the gradient of
    ``x -> F(x, y_T(x))``. With ``truncate = K`` only the last ``K`` steps are differentiated
    (truncated back-propagation, Shaban et al. 2019): the first ``T - K`` run without
    tracking. Memory grows linearly with the differentiated steps.
    """
    if steps < 0 or (truncate is not None and not 0 <= truncate <= steps):
        raise ValueError(
            f"unrolled: need 0 <= truncate <= steps, got steps={steps}, truncate={truncate}"
        )
    _check_step("unrolled", step_size)
    step = _gd_step(problem, lower_batch, step_size)
    tracked = steps if truncate is None else truncate
    with torch.no_grad():
        y_start = y
        for _ in range(steps - tracked):
            y_start = step(x, y_start)
    y_start = tree_map(torch.Tensor.detach, y_start)

    def value(x_: PyTree) -> tuple[torch.Tensor, PyTree]:
        y_t = y_start
        for _ in range(tracked):
            y_t = step(x_, y_t)
        return problem.upper_value(x_, y_t, upper_batch), y_t

    grad, (_, y_end) = torch.func.grad_and_value(value, has_aux=True)(x)
    y_end = tree_map(torch.Tensor.detach, y_end)
    return Hypergradient(grad=grad, y=y_end, grad_calls=steps + 1, hvp_calls=tracked)


def forward(
    problem: BilevelProblem,
    x: PyTree,
    y: PyTree,
    *,
    steps: int = 10,
    step_size: float = 0.1,
    upper_batch: Batch = None,
    lower_batch: Batch = None,
) -> Hypergradient:
    """Forward-mode iterative differentiation (Franceschi et al. 2017).

    Propagates the Jacobian ``Z_t = d y_t / d x`` along the inner GD steps,
    ``Z_{t+1} = Z_t - eta (H Z_t + B^T)``, as one JVP per outer coordinate (batched with
    :func:`torch.vmap`), then returns ``grad_x F + Z_T^T grad_y F``. Memory is independent
    of ``T`` and linear in ``dim x``: for few outer variables.
    """
    _check_step("forward", step_size)
    step = _gd_step(problem, lower_batch, step_size)
    x_flat, raveler = ravel(x)

    def run(x_vec: torch.Tensor) -> PyTree:
        x_ = raveler.unravel(x_vec)
        y_t = y
        for _ in range(steps):
            y_t = step(x_, y_t)
        return y_t

    def push(direction: torch.Tensor) -> PyTree:
        return torch.func.jvp(run, (x_flat,), (direction,))

    basis = torch.eye(x_flat.numel(), dtype=x_flat.dtype, device=x_flat.device)
    y_end_batched, Z = torch.vmap(push, out_dims=(0, 0))(basis)
    y_end = tree_map(lambda leaf: leaf[0], y_end_batched)
    gx_F, gy_F = upper_grads(problem, x, y_end, upper_batch)
    # (Z^T grad_y F)_i = <Z_i, grad_y F>, Z_i = d y_T / d x_i
    Z_flat = torch.stack(
        [ravel(tree_map(lambda leaf, i=i: leaf[i], Z))[0] for i in range(basis.shape[0])]
    )
    total = Z_flat @ ravel(gy_F)[0]
    grad = tree_add(gx_F, raveler.unravel(total))
    return Hypergradient(grad=grad, y=y_end, grad_calls=steps + 1, hvp_calls=steps * basis.shape[0])


def penalty(
    problem: BilevelProblem,
    x: PyTree,
    y: PyTree,
    *,
    multiplier: float = 100.0,
    steps: int = 10,
    step_size: float = 0.01,
    z: PyTree | None = None,
    upper_batch: Batch = None,
    lower_batch: Batch = None,
) -> Hypergradient:
    """First-order value-function (penalty) estimate (Kwon et al. 2023, F2SA)::

        y_l ~ argmin_y F(x, y) + l f(x, y),       z ~ argmin_y f(x, y),
        grad ~ grad_x F(x, y_l) + l (grad_x f(x, y_l) - grad_x f(x, z)),

    the gradient in ``x`` of the penalised Lagrangian ``F + l (f(x, y) - f(x, z))``; its bias
    is ``O(1/l)``. ``y_l`` takes ``steps`` gradient steps on ``F/l + f`` (same minimiser as
    ``F + l f``, same scale as ``f``, so one ``step_size ~ 1/L_y`` serves both) from ``y``;
    ``z`` takes ``steps`` gradient steps on ``f`` from ``z`` (``y`` if not given). No second
    derivative is used.
    """
    if not multiplier > 0:
        raise ValueError(f"penalty: multiplier must be positive, got {multiplier}")
    _check_step("penalty", step_size)
    upper, lower = _upper(problem, upper_batch), _lower(problem, lower_batch)

    def scaled_penalised(x_: PyTree, y_: PyTree) -> torch.Tensor:
        return upper(x_, y_) / multiplier + lower(x_, y_)

    grad_y_pen = torch.func.grad(scaled_penalised, argnums=1)
    grad_y_low = torch.func.grad(lower, argnums=1)
    y_pen = y
    z_low = y if z is None else z
    for _ in range(steps):
        y_pen = tree_axpy(-step_size, grad_y_pen(x, y_pen), y_pen)
        z_low = tree_axpy(-step_size, grad_y_low(x, z_low), z_low)
    gx_F = torch.func.grad(upper, argnums=0)(x, y_pen)
    gx_f_pen = torch.func.grad(lower, argnums=0)(x, y_pen)
    gx_f_low = torch.func.grad(lower, argnums=0)(x, z_low)
    grad = tree_add(gx_F, tree_map(lambda a, b: multiplier * (a - b), gx_f_pen, gx_f_low))
    return Hypergradient(
        grad=grad, y=y_pen, grad_calls=2 * steps + 3, hvp_calls=0, aux={"z": z_low}
    )


ESTIMATORS: dict[str, Callable[..., Hypergradient]] = {
    "implicit": implicit,
    "neumann": neumann,
    "unrolled": unrolled,
    "forward": forward,
    "penalty": penalty,
}

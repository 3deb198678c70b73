"""Implementation of :mod:`bilevel.optimality` (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bilevel.tree import PyTree, tree_axpy

Objective = Callable[..., torch.Tensor]
Constraint = Callable[..., torch.Tensor]


def apply_with_hyperparams(
    op: Callable[..., PyTree], x: PyTree, hyperparams: Any, *extra: Any
) -> PyTree:
    """Call ``op`` with hyperparameters under one convention used throughout the library.

    A tuple ``hyperparams`` is unpacked (``op(x, *hyperparams, *extra)``; the empty tuple
    means "no hyperparameters"), anything else is passed as one argument
    (``op(x, hyperparams, *extra)``).
    """
    if isinstance(hyperparams, tuple):
        return op(x, *hyperparams, *extra)
    return op(x, hyperparams, *extra)


def stationarity(objective: Objective) -> Callable[..., PyTree]:
    """First-order condition of a smooth unconstrained problem.

    Returns ``F(x, *args) = grad_x f(x, *args)``, a pytree shaped like ``x``; it vanishes at
    every stationary point, and ``d_x F`` is the Hessian (symmetric: use the ``"cg"``
    solver when it is positive definite).
    """
    return torch.func.grad(objective, argnums=0)


def projected_gradient_fixed_point(
    objective: Objective, projection: Callable[..., PyTree], step_size: float = 1.0
) -> Callable[..., PyTree]:
    """Fixed-point map of projected gradient descent.

    ``T(x, hp, *args) = P_{C(hp)}(x - eta * grad_x f(x, *args))``. Its fixed points are
    exactly the solutions of ``min_{x in C(hp)} f(x, *args)`` for convex problems, whatever
    ``eta > 0``. ``hp`` are the hyperparameters of the projection (see
    :func:`apply_with_hyperparams`): e.g. ``(lower, upper)`` for a box, a radius for a ball,
    ``()`` for the non-negative orthant.
    """
    grad = torch.func.grad(objective, argnums=0)

    def fixed_point(x: PyTree, hyperparams: Any, *args: Any) -> PyTree:
        y = tree_axpy(-step_size, grad(x, *args), x)
        return apply_with_hyperparams(projection, y, hyperparams)

    return fixed_point


def proximal_gradient_fixed_point(
    objective: Objective, prox: Callable[..., PyTree], step_size: float = 1.0
) -> Callable[..., PyTree]:
    """Fixed-point map of proximal gradient descent (ISTA).

    ``T(x, hp, *args) = prox_{eta g(., hp)}(x - eta * grad_x f(x, *args))`` with the prox
    convention ``prox(y, hp, scaling) = argmin_z 1/2 ||z - y||^2 + scaling * g(z, hp)``. Fixed
    points are the minimisers of ``f(x, *args) + g(x, hp)`` for convex ``f``, ``g``.
    """
    grad = torch.func.grad(objective, argnums=0)

    def fixed_point(x: PyTree, hyperparams: Any, *args: Any) -> PyTree:
        y = tree_axpy(-step_size, grad(x, *args), x)
        return prox(y, hyperparams, step_size)

    return fixed_point


def mirror_descent_fixed_point(
    objective: Objective, step_size: float = 1.0
) -> Callable[..., PyTree]:
    """Fixed-point map of mirror descent on the simplex with the entropy (KL) geometry.

    ``T(x, *args) = x * exp(-eta g) / sum(x * exp(-eta g))`` with ``g = grad_x f(x, *args)``,
    normalised along the last dimension (each row of a matrix is one simplex), i.e. the
    exponentiated-gradient step ``argmin_z <g, z> + KL(z, x) / eta`` over the simplex. A point
    with positive entries is fixed iff ``g`` is constant along the row, the optimality
    condition of ``min_{x in simplex} f`` at an interior solution. Boundary solutions make
    ``I - d_x T`` singular: use this condition only where the solution is interior (e.g. with
    an entropy term in ``f``).
    """
    grad = torch.func.grad(objective, argnums=0)

    def fixed_point(x: torch.Tensor, *args: Any) -> torch.Tensor:
        logits = torch.log(x) - step_size * grad(x, *args)
        return torch.softmax(logits, dim=-1)

    return fixed_point


def kkt_conditions(
    objective: Objective,
    eq_constraints: Constraint | None = None,
    ineq_constraints: Constraint | None = None,
) -> Callable[..., tuple[PyTree, torch.Tensor, torch.Tensor]]:
    """Karush-Kuhn-Tucker conditions of ``min_x f(x) s.t. h(x) = 0, g(x) <= 0``.

    With primal-dual variable ``sol = (x, lam, mu)`` (``lam`` for the equalities, ``mu >= 0``
    for the inequalities; use empty tensors when a kind of constraint is absent) returns::

        F(sol, *args) = ( grad_x f(x) + J_h(x)^T lam + J_g(x)^T mu,   # stationarity
                          h(x),                                    # primal feasibility
                          mu * g(x) )                              # complementary slackness

    where ``f``, ``h`` and ``g`` are all called as ``fn(x, *args)`` and ``h``, ``g`` return
    1-D tensors. ``F`` vanishes at every KKT point; its Jacobian is non-singular under the
    linear independence constraint qualification, second-order sufficiency and strict
    complementarity (``mu_i > 0`` for every active constraint).
    """

    def lagrangian(x: PyTree, lam: torch.Tensor, mu: torch.Tensor, *args: Any) -> torch.Tensor:
        value = objective(x, *args)
        if eq_constraints is not None:
            value = value + torch.dot(lam, eq_constraints(x, *args))
        if ineq_constraints is not None:
            value = value + torch.dot(mu, ineq_constraints(x, *args))
        return value

    grad_lagrangian = torch.func.grad(lagrangian, argnums=0)

    def optimality(sol: tuple[PyTree, torch.Tensor, torch.Tensor], *args: Any) -> Any:
        x, lam, mu = sol
        stationary = grad_lagrangian(x, lam, mu, *args)
        primal = eq_constraints(x, *args) if eq_constraints is not None else torch.zeros_like(lam)
        slack = (
            mu * ineq_constraints(x, *args)
            if ineq_constraints is not None
            else torch.zeros_like(mu)
        )
        return (stationary, primal, slack)

    return optimality

"""Autograd oracles: gradients and Hessian-vector / cross products of the objectives.

``H = d2_yy f`` and ``B = d2_xy f`` products are evaluated on one linearisation of
``grad_y f`` (a graph built once with ``create_graph=True``, by
:class:`bilevel.implicit.Linearisation`), so several products cost one backward pass each. These use :func:`torch.autograd.grad` rather than nested
:mod:`torch.func` transforms: estimators and outer algorithms make many cheap calls, and on
small problems ``torch.func.vjp(torch.func.grad(...))`` costs several times as much per call.
"""

from __future__ import annotations

from typing import Any

import torch

from bilevel.implicit import Linearisation as ImplicitLinearisation
from bilevel.implicit._linearised import backward
from bilevel.problem import BilevelProblem
from bilevel.tree import PyTree, tree_flatten, tree_leaves, tree_map, tree_unflatten

Batch = Any

__all__ = ["Linearisation", "grad", "lower_grad", "lower_oracles", "track", "upper_grads"]


def track(tree: PyTree) -> tuple[PyTree, list[torch.Tensor], Any]:
    """``(tree', leaves, spec)``: the leaves of ``tree`` detached and set to require grad, and
    ``tree'`` rebuilt on them."""
    leaves, spec = tree_flatten(tree)
    tracked = [leaf.detach().requires_grad_(True) for leaf in leaves]
    return tree_unflatten(tracked, spec), tracked, spec


def grad(
    output: torch.Tensor | list[torch.Tensor],
    inputs: list[torch.Tensor],
    grad_outputs: list[torch.Tensor] | None = None,
    *,
    create_graph: bool = False,
    retain_graph: bool = False,
) -> list[torch.Tensor]:
    """:func:`torch.autograd.grad` with zeros for inputs (or outputs) outside the graph."""
    outputs = [output] if isinstance(output, torch.Tensor) else list(output)
    return backward(
        outputs,
        inputs,
        None if grad_outputs is None else list(grad_outputs),
        create_graph=create_graph,
        retain_graph=retain_graph,
    )


# The oracles use torch.autograd rather than nested torch.func transforms: stochastic
# methods make many cheap calls, and on small problems torch.func.vjp(torch.func.grad(..))
# costs about ten times as much per call.


class Linearisation:
    """``grad_y f(x, y[, batch])`` with its graph, for products with ``H = d2_yy f`` and
    ``B = d2_xy f`` (several products reuse one linearisation): the objective form of
    :class:`bilevel.implicit.Linearisation`, with the bilevel problem's argument order."""

    def __init__(self, problem: BilevelProblem, x: PyTree, y: PyTree, batch: Batch) -> None:
        self.implicit = ImplicitLinearisation.of_objective(
            lambda y_, x_: problem.lower_value(x_, y_, batch), y, (x,)
        )
        self.grad_y = self.implicit.optimality

    def hvp(self, u: PyTree) -> PyTree:
        """``H u``."""
        return self.implicit.rmatvec(u)

    def cross(self, u: PyTree) -> PyTree:
        """``B u = d/dx <grad_y f, u>``."""
        return self.implicit.cross(u)[0]

    def both(self, u: PyTree) -> tuple[PyTree, PyTree]:
        """``(B u, H u)`` from one backward pass."""
        hvp, (cross,) = self.implicit.both(u)
        return cross, hvp


def lower_grad(problem: BilevelProblem, x: PyTree, y: PyTree, batch: Batch) -> PyTree:
    """``grad_y f(x, y[, batch])``."""
    with torch.enable_grad():
        y_t, tracked, spec = track(y)
        value = problem.lower_value(tree_map(torch.Tensor.detach, x), y_t, batch)
        return tree_unflatten(grad(value, tracked), spec)


def upper_grads(
    problem: BilevelProblem, x: PyTree, y: PyTree, batch: Batch
) -> tuple[PyTree, PyTree]:
    """``(grad_x F, grad_y F)`` at ``(x, y)``."""
    with torch.enable_grad():
        x_t, x_leaves, x_spec = track(x)
        y_t, y_leaves, y_spec = track(y)
        grads = grad(problem.upper_value(x_t, y_t, batch), x_leaves + y_leaves)
    n = len(x_leaves)
    return tree_unflatten(grads[:n], x_spec), tree_unflatten(grads[n:], y_spec)


def lower_oracles(
    problem: BilevelProblem, x: PyTree, y: PyTree, v: PyTree, batch: Batch
) -> tuple[PyTree, PyTree, PyTree]:
    """``(grad_y f, B v, H v)`` at ``(x, y)`` from one linearisation of ``grad_y f``."""
    lin = Linearisation(problem, x, y, batch)
    cross_v, hvp = lin.both(v)
    return lin.grad_y, cross_v, hvp

"""First-order implicit derivatives on one autograd linearisation (implementation).

For a root ``x*(args)`` of ``F(x, *args) = 0`` with ``A = d_x F`` and ``B_i = d_{args_i} F``
at ``(sol, args)``, the vector-Jacobian product of ``x*`` with a cotangent ``v`` is

    args_bar_i = -B_i^T u,        A^T u = v.

:class:`Linearisation` evaluates ``F`` once on tracked copies of ``(sol, args)`` and keeps
its autograd graph; then ``A^T u`` and ``B_i^T u`` (or both together) are one backward pass
each through that one graph. For a minimiser of an objective ``f`` the optimality function
is ``F = grad_x f``, built by :func:`torch.autograd.grad` with ``create_graph=True``
(:meth:`Linearisation.of_objective`): ``A = H = d2_xx f`` is symmetric and ``A^T u`` is a
Hessian-vector product by double backward. :func:`solve_adjoint` solves ``A^T u = v`` with
any :mod:`bilevel.linalg` solver on these products and returns ``-B^T u``.

This is the eager, first-order path of :func:`bilevel.implicit.root_vjp` (taken when no
function transform is active and the result is not differentiated again) and the one used
by :func:`bilevel.hypergrad.implicit` / :func:`bilevel.hypergrad.neumann` and the implicit
modes of :func:`bilevel.nn.hypergradient`. Compared with re-tracing ``F`` through
:mod:`torch.func` for ``A`` and again for ``B``, it traces once and each product is a plain
backward pass (measured in ``benchmarks/nn_engine.md`` and ``benchmarks/core_speed.py``).
Higher-order derivatives (differentiating the solve itself) need the :mod:`torch.func`
path of :mod:`bilevel.implicit._core`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bilevel.linalg import LinearSolveInfo, LinearSolver, get_solver
from bilevel.tree import PyTree, tree_flatten, tree_map, tree_unflatten

__all__ = ["Adjoint", "Linearisation", "solve_adjoint"]


def _track(tree: PyTree, mask: Sequence[bool] | None) -> tuple[PyTree, list[torch.Tensor | None], Any]:
    """``tree`` rebuilt on detached leaves, the floating (and flagged) ones requiring grad;
    with the list of those tracked leaves (``None`` for the leaves held fixed)."""
    leaves, spec = tree_flatten(tree)
    out: list[torch.Tensor] = []
    tracked: list[torch.Tensor | None] = []
    for i, leaf in enumerate(leaves):
        floating = leaf.is_floating_point() or leaf.is_complex()
        if floating and (mask is None or mask[i]):
            t = leaf.detach().requires_grad_(True)
            tracked.append(t)
        else:
            t = leaf.detach()
            tracked.append(None)
        out.append(t)
    return tree_unflatten(out, spec), tracked, spec


class Linearisation:
    """``F(x, *args)`` at ``(sol, args)`` with its autograd graph, for products with
    ``A^T = (d_x F)^T`` and ``B_i^T = (d_{args_i} F)^T`` (one backward pass each).

    Build it with :meth:`of_root` (any optimality function) or :meth:`of_objective`
    (``F = grad_x f`` of a scalar objective). ``calls`` counts the products made.
    """

    def __init__(
        self,
        outputs: list[torch.Tensor],
        x: list[torch.Tensor | None],
        x_spec: Any,
        args: list[torch.Tensor | None],
        args_spec: Any,
        value: torch.Tensor | None = None,
    ) -> None:
        self._outputs = outputs
        self._x, self._x_spec = x, x_spec
        self._args, self._args_spec = args, args_spec
        #: The objective's value (detached), for :meth:`of_objective`; else ``None``.
        self.value = value
        #: ``F(sol, *args)`` (detached), with the structure of ``sol``.
        self.optimality = tree_unflatten([o.detach() for o in outputs], x_spec)
        #: Number of products (backward passes) made so far.
        self.calls = 0

    @classmethod
    def of_root(
        cls,
        optimality_fn: Callable[..., PyTree],
        sol: PyTree,
        args: Sequence[PyTree],
        leaf_mask: Sequence[bool] | None = None,
    ) -> Linearisation:
        """Linearise ``optimality_fn(x, *args)`` at ``(sol, args)``; ``leaf_mask`` (one flag
        per leaf of ``args``) selects the argument leaves :meth:`cross` differentiates."""
        with torch.enable_grad():
            sol_t, x_leaves, x_spec = _track(sol, None)
            args_t, a_leaves, a_spec = _track(tuple(args), leaf_mask)
            outputs, _ = tree_flatten(optimality_fn(sol_t, *args_t))
        return cls(list(outputs), x_leaves, x_spec, a_leaves, a_spec)

    @classmethod
    def of_objective(
        cls,
        objective: Callable[..., torch.Tensor],
        sol: PyTree,
        args: Sequence[PyTree],
        leaf_mask: Sequence[bool] | None = None,
    ) -> Linearisation:
        """Linearise the stationarity condition ``F = grad_x objective(x, *args)`` at
        ``(sol, args)``: ``A = d2_xx objective`` (symmetric), ``B_i = d2_{args_i x}
        objective``. ``objective`` must return a scalar tensor."""
        with torch.enable_grad():
            sol_t, x_leaves, x_spec = _track(sol, None)
            args_t, a_leaves, a_spec = _track(tuple(args), leaf_mask)
            value = objective(sol_t, *args_t)
            tracked = [t for t in x_leaves if t is not None]
            found = iter(backward([value], tracked, None, create_graph=True))
        # grad_x f, with zeros at leaves of sol held fixed (non-floating)
        outputs = [
            next(found) if t is not None else torch.zeros_like(leaf)
            for t, leaf in zip(x_leaves, tree_flatten(sol_t)[0])
        ]
        return cls(outputs, x_leaves, x_spec, a_leaves, a_spec, value=value.detach())

    def _products(self, u: PyTree, inputs: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        self.calls += 1
        tracked = [t for t in inputs if t is not None]
        cotangents = tree_flatten(u)[0]
        # a solver that differentiates the (linear) product itself, e.g. normal_cg's
        # torch.func.vjp of matvec, needs the product's own graph
        differentiated = any(_grad_tracked(c) for c in cotangents)
        found = iter(backward(self._outputs, tracked, cotangents, create_graph=differentiated))
        return [next(found) if t is not None else None for t in inputs]

    def rmatvec(self, u: PyTree) -> PyTree:
        """``A^T u`` (``H u`` for :meth:`of_objective`), with the structure of ``sol``."""
        return tree_unflatten(self._products(u, self._x), self._x_spec)

    def cross(self, u: PyTree) -> tuple[PyTree, ...]:
        """``(B_1^T u, ..., B_k^T u)``, one pytree per argument (``None`` at leaves held
        fixed: integer leaves and those excluded by ``leaf_mask``)."""
        return tuple(tree_unflatten(self._products(u, self._args), self._args_spec))

    def both(self, u: PyTree) -> tuple[PyTree, tuple[PyTree, ...]]:
        """``(A^T u, (B_1^T u, ...))`` from one backward pass."""
        out = self._products(u, self._x + self._args)
        n = len(self._x)
        return (
            tree_unflatten(out[:n], self._x_spec),
            tuple(tree_unflatten(out[n:], self._args_spec)),
        )


def wrapped_by(x: torch.Tensor, level: Callable[[torch.Tensor], bool]) -> bool:
    """Whether some :mod:`torch.func` wrapper of ``x`` satisfies ``level`` (e.g.
    ``torch._C._functorch.is_batchedtensor``: an enclosing :func:`torch.vmap`)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(x):
        if level(x):
            return True
        x = functorch.get_unwrapped(x)
    return False


def _grad_tracked(x: torch.Tensor) -> bool:
    """Whether a :mod:`torch.func` gradient transform (grad, vjp, jacrev) tracks ``x``."""
    return wrapped_by(x, torch._C._functorch.is_gradtrackingtensor)


def backward(
    outputs: list[torch.Tensor],
    inputs: list[torch.Tensor],
    cotangents: list[torch.Tensor] | None,
    *,
    create_graph: bool,
    retain_graph: bool = True,
) -> list[torch.Tensor]:
    """``sum_j <cotangent_j, d output_j / d input>`` for each input, by
    :func:`torch.autograd.grad`, with zeros where an input or an output lies outside the
    graph (the graph is retained by default)."""
    pairs: list[tuple[torch.Tensor, torch.Tensor | None]]
    if cotangents is None:
        pairs = [(o, None) for o in outputs if o.requires_grad]
    else:
        pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    if not pairs or not inputs:
        return [torch.zeros_like(t) for t in inputs]
    return list(
        torch.autograd.grad(
            [o for o, _ in pairs],
            inputs,
            grad_outputs=None if cotangents is None else [c for _, c in pairs],
            create_graph=create_graph,
            retain_graph=retain_graph or create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
    )


@dataclass(frozen=True)
class Adjoint:
    """Result of :func:`solve_adjoint`.

    Attributes
    ----------
    vjp:
        ``(-B_1^T u, ..., -B_k^T u)``, one pytree per argument (``None`` at leaves held
        fixed): the vector-Jacobian product of the root with the cotangent.
    u:
        The adjoint, ``A^T u = v`` (with the structure of ``sol``).
    info:
        The :class:`~bilevel.linalg.LinearSolveInfo` of that solve.
    """

    vjp: tuple[PyTree, ...]
    u: PyTree
    info: LinearSolveInfo


def solve_adjoint(
    lin: Linearisation,
    cotangent: PyTree,
    solve: str | LinearSolver = "auto",
    **solve_options: Any,
) -> Adjoint:
    """The implicit vector-Jacobian product on one linearisation: ``-B^T u`` with
    ``A^T u = cotangent``.

    ``solve`` is a :mod:`bilevel.linalg` solver (name or callable ``solve(matvec, b,
    **options) -> (x, info)``) called once with ``matvec = lin.rmatvec``; ``solve_options``
    (``tol``, ``maxiter``, ``ridge``, ``init``, ...) are passed to it. ``-B^T u`` is one
    more backward pass.
    """
    u, info = get_solver(solve)(lin.rmatvec, cotangent, **solve_options)
    u = tree_map(torch.Tensor.detach, u)
    vjp = tuple(tree_map(lambda t: None if t is None else t.detach().neg(), g) for g in lin.cross(u))
    return Adjoint(vjp=vjp, u=u, info=info)

"""Implicit differentiation of roots and fixed points (implementation).

Let ``x*(theta)`` be defined by the optimality condition ``F(x*(theta), theta) = 0`` with
``A = d_x F(x*, theta)`` non-singular and ``B = d_theta F(x*, theta)``. The implicit
function theorem gives the Jacobian ``d x* / d theta = -A^{-1} B``, hence

* reverse mode (VJP), for a cotangent ``v`` of ``x*``: solve ``A^T u = v``, then
  ``theta_bar = -B^T u``;
* forward mode (JVP), for a tangent ``theta_dot``: solve ``A x_dot = -B theta_dot``.

``A^T u`` and ``A v`` are vector-Jacobian products of ``F`` computed by :mod:`torch.func`
on one linearisation of ``F`` per solve. When nothing differentiates the result again and
no function transform is active, reverse mode runs on one autograd linearisation shared by
``A`` and ``B`` instead (:mod:`bilevel.implicit._linearised`: one trace of ``F``, one
backward pass per product). The default solver, :func:`bilevel.linalg.auto`,
forms ``A`` with one vmapped batch of products and factorises it (Cholesky or LU) when
``n <= bilevel.linalg.DENSE_MAX``, and runs CG (symmetric ``A``) or GMRES above. Under
:func:`torch.vmap` small systems are solved as one batched factorisation.

Higher order: the linear solve is itself differentiable. With ``M`` the system matrix
(``A`` or ``A^T``) and ``M u = r``, ``du = M^{-1} (dr - dM u)``; reverse mode solves
``M^T z = u_bar`` and differentiates ``-<z, M u>`` in ``(x, theta)`` (a second derivative
of ``F``), so Hessian-vector products of an outer objective through :func:`custom_root`
are exact implicit derivatives.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd import forward_ad

from bilevel.errors import ClosureError, ConvergenceWarning, InaccurateRootError, NonFiniteError
from bilevel.implicit._linearised import Linearisation, solve_adjoint, wrapped_by
from bilevel.linalg import DENSE_MAX, LinearSolver, auto, default_tol, factor_solve, get_solver
from bilevel.tree import (
    PyTree,
    check_finite,
    check_same_structure,
    check_tensor_leaves,
    is_functorch_wrapped,
    ravel,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_norm,
    tree_sub,
    tree_unflatten,
)

OptimalityFn = Callable[..., PyTree]
Solver = Callable[..., Any]


# --------------------------------------------------------------------------------------
# Linear systems with the Jacobian of the optimality function
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _JacobianSystem:
    """Static description of ``A u = rhs`` (or ``A^T u = rhs``) with ``A = d_x F(sol, *args)``."""

    optimality_fn: OptimalityFn
    solve: LinearSolver
    transpose: bool
    rhs_spec: Any
    sol_spec: Any
    args_spec: Any
    n_rhs: int
    n_sol: int


def _jacobian_matvec(
    optimality_fn: OptimalityFn, sol: PyTree, args: Sequence[PyTree], transpose: bool
) -> Callable[[PyTree], PyTree]:
    """``u -> A^T u`` (``transpose=True``) or ``v -> A v``, one linearisation reused.

    ``F`` is linearised once at ``sol`` (one :func:`torch.func.vjp` trace); ``A^T u`` is that
    VJP. ``A v`` is the VJP of the (linear) map ``u -> A^T u``, itself traced once, so no
    product re-traces ``F``.
    """

    def f_of_sol(s: PyTree) -> PyTree:
        return optimality_fn(s, *args)

    value, vjp_fn = torch.func.vjp(f_of_sol, sol)[:2]

    def rmatvec(u: PyTree) -> PyTree:
        return vjp_fn(u)[0]

    if transpose:
        return rmatvec
    vjp_of_vjp = torch.func.vjp(rmatvec, tree_map(torch.zeros_like, value))[1]
    return lambda v: vjp_of_vjp(v)[0]


def _bilinear_grad(
    optimality_fn: OptimalityFn,
    operands: tuple[PyTree, ...],
    left: PyTree,
    right: PyTree,
    leaf_mask: Sequence[bool],
) -> tuple[PyTree, ...]:
    """``-grad_{(x, args)} <left, d_x F(x, *args) right>`` at ``operands = (sol, *args)``.

    The derivative of a solve with respect to the matrix: for ``M u = v`` with ``M = A`` or
    ``A^T``, ``d u = M^{-1} (dv - dM u)``, so the cotangent ``u_bar`` reaches ``(x, args)``
    through ``-<z, dM u>`` with ``M^T z = u_bar``; ``<z, dA^T u> = <u, dA z>``.
    """

    def bilinear(s: PyTree, *a: PyTree) -> PyTree:
        return torch.func.jvp(lambda x: optimality_fn(x, *a), (s,), (right,))[1]

    return _negated_vjp(bilinear, operands, left, leaf_mask)


def _negated_vjp(
    fn: Callable[..., PyTree],
    operands: tuple[PyTree, ...],
    cotangent: PyTree,
    leaf_mask: Sequence[bool] | None,
) -> tuple[PyTree, ...]:
    """``-(d fn / d operands)^T cotangent`` for the floating leaves of ``operands`` (``None``
    for the others), one pytree per operand."""
    restricted, leaves, rebuild = _floating_view(fn, operands, leaf_mask=leaf_mask)
    if not leaves:
        return rebuild([])
    vjp_fn = torch.func.vjp(restricted, *leaves)[1]
    return rebuild([torch.neg(g) for g in vjp_fn(cotangent)])


def _operator_tangent(
    optimality_fn: OptimalityFn,
    operands: tuple[PyTree, ...],
    tangents: tuple[PyTree, ...],
    vector: PyTree,
    transpose: bool,
    leaf_mask: Sequence[bool],
) -> PyTree:
    """``dA^T vector`` (``transpose``) or ``dA vector`` along the tangents of ``(x, *args)``."""

    def applied(s: PyTree, *a: PyTree) -> PyTree:
        def f(x: PyTree) -> PyTree:
            return optimality_fn(x, *a)

        if transpose:
            return torch.func.vjp(f, s)[1](vector)[0]
        return torch.func.jvp(f, (s,), (vector,))[1]

    fn, leaves, _ = _floating_view(applied, operands, leaf_mask=leaf_mask)
    _, float_tangents, _ = _floating_view(
        lambda *a: None, tangents, like=operands, leaf_mask=leaf_mask
    )
    return torch.func.jvp(fn, tuple(leaves), tuple(float_tangents))[1]


class _SolveJacobianSystem(torch.autograd.Function):
    """Solve ``A u = rhs`` or ``A^T u = rhs``, differentiably (so custom_root has 2nd order).

    Derivatives: ``d u = M^{-1} (d rhs - dM u)`` with ``M`` the system matrix (``A`` or
    ``A^T``). Reverse mode solves the other system ``M^T z = u_bar`` (``rhs_bar = z``) and
    differentiates ``-<z, M u>`` in ``(x, args)`` (:func:`_bilinear_grad`); forward mode
    solves ``M u_dot = rhs_dot - dM u``. Both go through this function again, so any order
    works. Under :func:`torch.vmap` the batch is one batched dense solve when the solver is
    :func:`bilevel.linalg.auto` and the system is small, else a loop over the batch (Krylov
    solvers stop on data-dependent tests).
    """

    @staticmethod
    def forward(system: _JacobianSystem, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rhs, sol, args = _split(system, flat)
        matvec = _jacobian_matvec(system.optimality_fn, sol, args, system.transpose)
        out, _info = system.solve(matvec, rhs)
        return tuple(tree_leaves(out))

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        system: _JacobianSystem = inputs[0]
        ctx.system = system
        operands = inputs[1 + system.n_rhs :]
        ctx.save_for_backward(*output, *operands)
        ctx.save_for_forward(*output, *operands)

    @staticmethod
    def _saved(ctx: Any) -> tuple[PyTree, PyTree, tuple[PyTree, ...]]:
        system: _JacobianSystem = ctx.system
        saved = ctx.saved_tensors
        out = tree_unflatten(list(saved[: system.n_rhs]), system.rhs_spec)
        _, sol, args = _split(system, saved)
        return out, sol, args

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> Any:
        system: _JacobianSystem = ctx.system
        out, sol, args = _SolveJacobianSystem._saved(ctx)
        out_leaves = tree_leaves(out)
        cot = tree_unflatten(
            [torch.zeros_like(o) if g is None else g for o, g in zip(out_leaves, grads)],
            system.rhs_spec,
        )
        z = _solve_jacobian_system(
            system.optimality_fn, sol, args, cot, system.solve, transpose=not system.transpose
        )
        needs = ctx.needs_input_grad[1 + system.n_rhs :]
        if any(needs):
            left, right = (out, z) if system.transpose else (z, out)
            op_grads, _ = tree_flatten(
                _bilinear_grad(system.optimality_fn, (sol, *args), left, right, needs)
            )
        else:
            op_grads = [None] * len(needs)
        return (None, *tree_leaves(z), *op_grads)

    @staticmethod
    def jvp(ctx: Any, *tangents: torch.Tensor | None) -> Any:
        system: _JacobianSystem = ctx.system
        out, sol, args = _SolveJacobianSystem._saved(ctx)
        rhs_t = tangents[1 : 1 + system.n_rhs]
        op_t = tangents[1 + system.n_rhs :]
        rhs_dot = tree_unflatten(
            [torch.zeros_like(o) if t is None else t for o, t in zip(tree_leaves(out), rhs_t)],
            system.rhs_spec,
        )
        has_tangent = [t is not None for t in op_t]
        if any(has_tangent):
            operands = (sol, *args)
            op_leaves = tree_leaves(operands)
            filled = [torch.zeros_like(x) if t is None else t for x, t in zip(op_leaves, op_t)]
            _, op_spec = tree_flatten(operands)
            dm_out = _operator_tangent(
                system.optimality_fn,
                operands,
                tuple(tree_unflatten(filled, op_spec)),
                out,
                system.transpose,
                has_tangent,
            )
            rhs_dot = tree_sub(rhs_dot, dm_out)
        out_dot = _solve_jacobian_system(
            system.optimality_fn, sol, args, rhs_dot, system.solve, system.transpose
        )
        return tuple(tree_leaves(out_dot))

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[Any, ...], system: _JacobianSystem, *flat: torch.Tensor
    ) -> Any:
        batched = _batched_dense_solve(system, flat, in_dims[1:], info.batch_size)
        if batched is not None:
            return batched
        results = [
            _SolveJacobianSystem.apply(system, *_select(flat, in_dims[1:], i))
            for i in range(info.batch_size)
        ]
        return _stack(results)


def _split(
    system: _JacobianSystem, flat: Sequence[torch.Tensor | None]
) -> tuple[PyTree, PyTree, tuple[PyTree, ...]]:
    rhs = tree_unflatten(list(flat[: system.n_rhs]), system.rhs_spec)
    sol = tree_unflatten(list(flat[system.n_rhs : system.n_rhs + system.n_sol]), system.sol_spec)
    args = tree_unflatten(list(flat[system.n_rhs + system.n_sol :]), system.args_spec)
    return rhs, sol, tuple(args)


_AUTO_BATCH_OPTIONS = {"tol", "atol", "ridge", "dense_max", "warn", "maxiter", "init"}


def _auto_options(solve: LinearSolver) -> dict[str, Any] | None:
    """The keywords of ``solve`` if it is :func:`bilevel.linalg.auto` (or a partial of it)."""
    if solve is auto:
        return {}
    if (
        isinstance(solve, functools.partial)
        and solve.func is auto
        and not solve.args
        and set(solve.keywords) <= _AUTO_BATCH_OPTIONS
        and solve.keywords.get("init") is None
    ):
        return dict(solve.keywords)
    return None


def _under_outer_vmap(x: torch.Tensor) -> bool:
    """Whether ``x`` is still batched by an enclosing :func:`torch.vmap` (nested vmaps, e.g.
    ``vmap(jacrev(...))``): data-dependent tests cannot run on it, the loop handles it."""
    return wrapped_by(x, torch._C._functorch.is_batchedtensor)


def _batched_dense_solve(
    system: _JacobianSystem,
    flat: Sequence[torch.Tensor],
    in_dims: Sequence[int | None],
    batch_size: int,
) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]] | None:
    """One batched factorisation for a vmapped small system solved by ``auto``; ``None``
    when not applicable or when some element misses the tolerance (the caller then loops,
    so that every element gets the solver's own fallback and warnings)."""
    options = _auto_options(system.solve)
    if options is None or any(_under_outer_vmap(x) for x in flat):
        return None
    rhs_leaves = [
        x if d is None else x.movedim(d, 0) for x, d in zip(flat[: system.n_rhs], in_dims)
    ]
    n = sum(x[0].numel() if d is not None else x.numel() for x, d in zip(rhs_leaves, in_dims))
    if n > options.get("dense_max", DENSE_MAX):
        return None
    dtype = functools.reduce(torch.promote_types, [x.dtype for x in rhs_leaves])
    if not dtype.is_floating_point and not dtype.is_complex:
        return None
    rhs = torch.cat(
        [
            (
                x.reshape(batch_size, -1)
                if d is not None
                else x.reshape(1, -1).expand(batch_size, -1)
            ).to(dtype)
            for x, d in zip(rhs_leaves, in_dims)
        ],
        dim=1,
    )
    op_dims = tuple(in_dims[system.n_rhs :])
    ops = flat[system.n_rhs :]
    eye = torch.eye(n, dtype=dtype, device=rhs.device)

    def matrix(*operands: torch.Tensor) -> torch.Tensor:
        _, sol, args = _split(system, (*[None] * system.n_rhs, *operands))
        matvec = _jacobian_matvec(system.optimality_fn, sol, args, system.transpose)
        template = tree_unflatten(
            [x[0] if d is not None else x for x, d in zip(rhs_leaves, in_dims)], system.rhs_spec
        )
        _, raveler = ravel(template)
        return torch.vmap(raveler.linear_map(matvec))(eye).mT

    try:
        if any(d is not None for d in op_dims):
            mats = torch.vmap(matrix, in_dims=op_dims)(*ops)
        else:
            mats = matrix(*ops)
    except RuntimeError:
        return None
    ridge = float(options.get("ridge", 0.0))
    if ridge:
        mats = mats + ridge * eye
    if not bool(torch.isfinite(mats).all()):
        return None
    try:
        if mats.dim() == 2:
            x = factor_solve(mats, rhs.T)[0].T
            residual = rhs - x @ mats.T
        else:
            x = factor_solve(mats, rhs.unsqueeze(-1))[0].squeeze(-1)
            residual = rhs - (mats @ x.unsqueeze(-1)).squeeze(-1)
    except torch.linalg.LinAlgError:
        return None
    tol = options.get("tol")
    tol = default_tol(dtype) if tol is None else tol
    threshold = torch.clamp(
        tol * torch.linalg.vector_norm(rhs, dim=1), min=float(options.get("atol", 0.0))
    )
    if not bool((torch.linalg.vector_norm(residual, dim=1) <= threshold).all()):
        return None
    outs, offset = [], 0
    for leaf, d in zip(rhs_leaves, in_dims):
        shape = leaf.shape[1:] if d is not None else leaf.shape
        size = math.prod(shape)
        outs.append(x[:, offset : offset + size].reshape(batch_size, *shape).to(leaf.dtype))
        offset += size
    return tuple(outs), (0,) * len(outs)


def _select(flat: Sequence[Any], in_dims: Sequence[int | None], i: int) -> list[Any]:
    return [x if d is None else x.select(d, i) for x, d in zip(flat, in_dims)]


def _stack(
    results: list[tuple[torch.Tensor, ...]],
) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
    stacked = tuple(torch.stack(column) for column in zip(*results))
    return stacked, (0,) * len(stacked)


def _solve_jacobian_system(
    optimality_fn: OptimalityFn,
    sol: PyTree,
    args: Sequence[PyTree],
    rhs: PyTree,
    solve: LinearSolver,
    transpose: bool,
) -> PyTree:
    rhs_leaves, rhs_spec = tree_flatten(rhs)
    sol_leaves, sol_spec = tree_flatten(sol)
    args_leaves, args_spec = tree_flatten(tuple(args))
    system = _JacobianSystem(
        optimality_fn=optimality_fn,
        solve=solve,
        transpose=transpose,
        rhs_spec=rhs_spec,
        sol_spec=sol_spec,
        args_spec=args_spec,
        n_rhs=len(rhs_leaves),
        n_sol=len(sol_leaves),
    )
    out = _SolveJacobianSystem.apply(system, *rhs_leaves, *sol_leaves, *args_leaves)
    return tree_unflatten(list(out), rhs_spec)


def _is_differentiable(x: torch.Tensor) -> bool:
    return x.is_floating_point() or x.is_complex()


def _floating_view(
    fn: Callable[..., Any],
    args: tuple[PyTree, ...],
    like: tuple[PyTree, ...] | None = None,
    leaf_mask: Sequence[bool] | None = None,
) -> tuple[Callable[..., Any], list[torch.Tensor], Callable[[list[Any]], tuple[PyTree, ...]]]:
    """Restrict ``fn(*args)`` to the floating-point leaves of ``args``.

    Integer and boolean tensors (indices, masks) are held fixed: ``torch.func`` cannot
    differentiate with respect to them. Which leaves are floating is read from ``like``
    (default: ``args`` itself); ``leaf_mask`` (one flag per leaf) excludes more leaves, e.g.
    those no gradient is requested for. Returns ``(f, floating_leaves, rebuild)`` where
    ``f(*floating_leaves) = fn(*args)`` and ``rebuild(values)`` puts one value per floating
    leaf back into the structure of ``args``, with ``None`` for the other leaves.
    """
    leaves, spec = tree_flatten(tuple(args))
    kinds = tree_leaves(tuple(like)) if like is not None else leaves
    index = [
        i
        for i, x in enumerate(kinds)
        if _is_differentiable(x) and (leaf_mask is None or leaf_mask[i])
    ]

    def restricted(*floating: torch.Tensor) -> Any:
        full = list(leaves)
        for i, value in zip(index, floating):
            full[i] = value
        return fn(*tree_unflatten(full, spec))

    def rebuild(values: list[Any]) -> tuple[PyTree, ...]:
        full: list[Any] = [None] * len(leaves)
        for i, value in zip(index, values):
            full[i] = value
        return tuple(tree_unflatten(full, spec))

    return restricted, [leaves[i] for i in index], rebuild


def root_vjp(
    optimality_fn: OptimalityFn,
    sol: PyTree,
    args: Sequence[PyTree],
    cotangent: PyTree,
    solve: str | LinearSolver = "auto",
    *,
    leaf_mask: Sequence[bool] | None = None,
) -> tuple[PyTree, ...]:
    """Vector-Jacobian product of a root ``x*(args)`` of ``optimality_fn``.

    With ``A = d_x F(sol, *args)`` and ``B_i = d_{args_i} F(sol, *args)``, returns
    ``(-B_1^T u, ..., -B_k^T u)`` where ``u`` solves ``A^T u = cotangent``.

    Parameters
    ----------
    optimality_fn:
        ``F(x, *args)``, returning a pytree with the structure of ``x``.
    sol:
        A root: ``F(sol, *args) = 0``.
    args:
        The arguments ``F`` is differentiated against, passed explicitly.
    cotangent:
        ``v``, with the structure of ``sol``.
    solve:
        A solver of :mod:`bilevel.linalg` (name or callable), used for ``A^T u = v``.
    leaf_mask:
        One flag per tensor leaf of ``args`` (flattened): differentiate only the flagged
        leaves (``None`` is returned for the others). Default: every floating-point leaf.

    Returns
    -------
    tuple
        One pytree per argument, each with that argument's structure.
    """
    args = tuple(args)
    solve_fn = get_solver(solve)
    if _first_order_eager(sol, args, cotangent):
        lin = Linearisation.of_root(optimality_fn, sol, args, leaf_mask)
        return solve_adjoint(lin, cotangent, solve_fn).vjp
    u = _solve_jacobian_system(optimality_fn, sol, args, cotangent, solve_fn, transpose=True)
    return _negated_vjp(lambda *a: optimality_fn(sol, *a), args, u, leaf_mask)


def _first_order_eager(*trees: PyTree) -> bool:
    """Whether a first-order autograd linearisation gives the whole answer: no function
    transform or forward-mode tangent on the inputs, and nothing that will differentiate
    the result (grad mode off, or no input requires grad)."""
    leaves = tree_leaves(trees)
    if any(is_functorch_wrapped(x) for x in leaves):
        return False
    if any(forward_ad.unpack_dual(x).tangent is not None for x in leaves):
        return False
    return not (torch.is_grad_enabled() and any(x.requires_grad for x in leaves))


def root_jvp(
    optimality_fn: OptimalityFn,
    sol: PyTree,
    args: Sequence[PyTree],
    tangents: Sequence[PyTree],
    solve: str | LinearSolver = "auto",
    *,
    leaf_mask: Sequence[bool] | None = None,
) -> PyTree:
    """Jacobian-vector product of a root ``x*(args)`` of ``optimality_fn``.

    Returns ``x_dot`` solving ``A x_dot = -sum_i B_i t_i`` with ``A = d_x F(sol, *args)``,
    ``B_i = d_{args_i} F(sol, *args)`` and ``tangents = (t_1, ..., t_k)`` (one per argument,
    same structure).
    """
    args = tuple(args)
    tangents = tuple(tangents)
    if len(tangents) != len(args):
        raise ValueError(f"root_jvp: got {len(tangents)} tangents for {len(args)} arguments")
    solve_fn = get_solver(solve)
    fn, float_leaves, _ = _floating_view(
        lambda *a: optimality_fn(sol, *a), args, leaf_mask=leaf_mask
    )
    _, float_tangents, _ = _floating_view(lambda *a: None, tangents, like=args, leaf_mask=leaf_mask)
    if not float_leaves:
        return tree_map(torch.zeros_like, sol)
    b_dot = torch.func.jvp(fn, tuple(float_leaves), tuple(float_tangents))[1]
    rhs = tree_map(torch.neg, b_dot)
    return _solve_jacobian_system(optimality_fn, sol, args, rhs, solve_fn, transpose=False)


# --------------------------------------------------------------------------------------
# custom_root / custom_fixed_point
# --------------------------------------------------------------------------------------


@dataclass
class _RootProblem:
    """Static data shared by the forward, backward, jvp and vmap rules."""

    solver: Solver
    optimality_fn: OptimalityFn
    solve: LinearSolver
    has_aux: bool
    n_init: int
    init_spec: Any
    args_spec: Any
    sol_spec: Any = None
    n_sol: int = 0
    aux_spec: Any = None
    aux_tensor_mask: tuple[bool, ...] = ()
    aux_static: list[list[Any]] = field(default_factory=list)
    residual_tol: float | None = None
    on_inaccurate: str = "warn"
    init_residual: float | None = None


class _ImplicitRoot(torch.autograd.Function):
    """Runs the solver without tracking; derivatives come from the implicit function theorem."""

    @staticmethod
    def forward(problem: _RootProblem, *flat: torch.Tensor) -> tuple[Any, ...]:
        flat = tuple(x.detach() for x in flat)
        init = tree_unflatten(list(flat[: problem.n_init]), problem.init_spec)
        args = tree_unflatten(list(flat[problem.n_init :]), problem.args_spec)
        check_finite(init, "custom_root: init")
        for i, a in enumerate(args):
            check_finite(a, f"custom_root: argument {i + 1}")
        with torch.enable_grad():
            out = problem.solver(init, *args)
        if problem.has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("custom_root(has_aux=True): the solver must return (solution, aux)")
            sol, aux = out
        else:
            sol, aux = out, None
        check_tensor_leaves(sol, "custom_root: solution returned by the solver")
        check_same_structure(init, sol, "init", "the solution returned by the solver")
        sol_leaves = [x.detach() for x in tree_leaves(sol)]
        for x in sol_leaves:
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteError(
                    "custom_root: the solver returned a solution with NaN or inf entries"
                )
        if problem.residual_tol is not None:
            _check_residual(problem, init, sol, args)
        inputs = {id(x) for x in flat}
        sol_leaves = [x.clone() if id(x) in inputs else x for x in sol_leaves]
        aux_leaves, aux_spec = tree_flatten(aux)
        problem.aux_spec = aux_spec
        problem.aux_tensor_mask = tuple(isinstance(a, torch.Tensor) for a in aux_leaves)
        problem.aux_static.append([a for a in aux_leaves if not isinstance(a, torch.Tensor)])
        aux_tensors = [a.detach() for a in aux_leaves if isinstance(a, torch.Tensor)]
        aux_tensors = [a.clone() if id(a) in inputs else a for a in aux_tensors]
        problem.n_sol = len(sol_leaves)
        _, problem.sol_spec = tree_flatten(sol)
        return (*sol_leaves, *aux_tensors)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        problem = inputs[0]
        args_leaves = inputs[1 + problem.n_init :]
        sol_leaves = output[: problem.n_sol]
        ctx.problem = problem
        ctx.save_for_backward(*sol_leaves, *args_leaves)
        ctx.save_for_forward(*sol_leaves, *args_leaves)
        aux_outputs = output[problem.n_sol :]
        if aux_outputs:
            ctx.mark_non_differentiable(*aux_outputs)

    @staticmethod
    def _saved(ctx: Any) -> tuple[PyTree, tuple[PyTree, ...]]:
        problem: _RootProblem = ctx.problem
        saved = ctx.saved_tensors
        sol = tree_unflatten(list(saved[: problem.n_sol]), problem.sol_spec)
        args = tree_unflatten(list(saved[problem.n_sol :]), problem.args_spec)
        return sol, tuple(args)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor | None) -> tuple[Any, ...]:
        problem: _RootProblem = ctx.problem
        sol, args = _ImplicitRoot._saved(ctx)
        sol_leaves = tree_leaves(sol)
        cot_leaves = [
            torch.zeros_like(s) if g is None else g
            for s, g in zip(sol_leaves, grad_outputs[: problem.n_sol])
        ]
        cotangent = tree_unflatten(cot_leaves, problem.sol_spec)
        needs_grad = ctx.needs_input_grad[1 + problem.n_init :]
        if not any(needs_grad):
            return (None,) * len(ctx.needs_input_grad)
        grads = root_vjp(
            problem.optimality_fn, sol, args, cotangent, problem.solve, leaf_mask=needs_grad
        )
        arg_grads, _ = tree_flatten(grads)  # None (no gradient) for integer leaves
        return (None, *([None] * problem.n_init), *arg_grads)

    @staticmethod
    def jvp(ctx: Any, *tangents: torch.Tensor | None) -> tuple[Any, ...]:
        problem: _RootProblem = ctx.problem
        sol, args = _ImplicitRoot._saved(ctx)
        arg_tangents_flat = tangents[1 + problem.n_init :]
        has_tangent = [t is not None for t in arg_tangents_flat]
        arg_tangent_leaves = [
            torch.zeros_like(a) if t is None else t
            for a, t in zip(tree_leaves(args), arg_tangents_flat)
        ]
        arg_tangents = tree_unflatten(arg_tangent_leaves, problem.args_spec)
        sol_dot = root_jvp(
            problem.optimality_fn, sol, args, arg_tangents, problem.solve, leaf_mask=has_tangent
        )
        n_aux = sum(problem.aux_tensor_mask)
        return (*tree_leaves(sol_dot), *([None] * n_aux))

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[Any, ...], problem: _RootProblem, *flat: torch.Tensor
    ) -> Any:
        batched = _vmapped_solver(problem, flat, in_dims[1:])
        if batched is not None:
            return batched
        results = [
            _ImplicitRoot.apply(problem, *_select(flat, in_dims[1:], i))
            for i in range(info.batch_size)
        ]
        return _stack(results)


def _residual_floor(sol: PyTree) -> float:
    """Absolute floor of the root check: ``sqrt(eps)`` of the solution's dtype."""
    return math.sqrt(torch.finfo(tree_leaves(sol)[0].dtype).eps)


def _check_residual(
    problem: _RootProblem, init: PyTree, sol: PyTree, args: Sequence[PyTree]
) -> None:
    """Warn or raise when ``||F(sol, *args)|| > max(residual_tol ||F(init, *args)||,
    sqrt(eps))`` (one evaluation of ``F``, two under :func:`torch.vmap`)."""
    with torch.no_grad():
        residual = float(tree_norm(problem.optimality_fn(sol, *args)))
        reference = problem.init_residual
        if reference is None:  # under vmap, the batched check could not give a number
            reference = float(tree_norm(problem.optimality_fn(init, *args)))
    if problem.residual_tol is None:
        raise ValueError("the root check needs a residual_tol (callers skip it when None)")
    threshold = max(problem.residual_tol * reference, _residual_floor(sol))
    if residual <= threshold:
        return
    message = (
        f"custom_root: the solver returned an inaccurate root: ||optimality_fn(sol, *args)|| "
        f"= {residual:.3e} > {threshold:.3e} = max(residual_tol {problem.residual_tol:g} x "
        f"the residual {reference:.3e} at init, sqrt(eps)); the implicit gradient assumes a "
        "root and is wrong by about as much. Solve more accurately (more iterations, a "
        "tighter tolerance), or pass residual_tol=None to skip this check."
    )
    if problem.on_inaccurate == "raise":
        raise InaccurateRootError(message)
    if problem.on_inaccurate == "warn":
        warnings.warn(message, ConvergenceWarning, stacklevel=5)


def _vmapped_solver(
    problem: _RootProblem, flat: Sequence[torch.Tensor], in_dims: Sequence[int | None]
) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]] | None:
    """Run the solver once under :func:`torch.vmap` for the whole batch.

    ``None`` (the caller loops over the batch, as for any solver) when the solver cannot be
    vmapped: data-dependent control flow such as a convergence test, randomness, or any
    other error (the loop then reproduces a genuine error). Solvers with ``has_aux`` always
    loop (their non-tensor aux is one value per element).
    """
    if problem.has_aux or any(_under_outer_vmap(x) for x in flat):
        return None
    flat = tuple(x.detach() for x in flat)
    spec: list[Any] = []

    def run(*leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        init = tree_unflatten(list(leaves[: problem.n_init]), problem.init_spec)
        args = tree_unflatten(list(leaves[problem.n_init :]), problem.args_spec)
        with torch.enable_grad():
            sol = problem.solver(init, *args)
        check_tensor_leaves(sol, "custom_root: solution returned by the solver")
        check_same_structure(init, sol, "init", "the solution returned by the solver")
        out, sol_spec = tree_flatten(sol)
        spec.append(sol_spec)
        return tuple(x.detach() for x in out)

    init = tree_unflatten(list(flat[: problem.n_init]), problem.init_spec)
    args = tree_unflatten(list(flat[problem.n_init :]), problem.args_spec)
    check_finite(init, "custom_root: init")
    for i, a in enumerate(args):
        check_finite(a, f"custom_root: argument {i + 1}")
    try:
        out = torch.vmap(run, in_dims=tuple(in_dims), randomness="error")(*flat)
    except Exception:  # noqa: BLE001 - the per-element loop reruns and reports real errors
        return None
    for x in out:
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                "custom_root: the solver returned a solution with NaN or inf entries"
            )
    if problem.residual_tol is not None:  # the root check, element by element
        for i in range(out[0].shape[0]):
            element = _select(flat, in_dims, i)
            init_i = tree_unflatten(list(element[: problem.n_init]), problem.init_spec)
            args_i = tree_unflatten(list(element[problem.n_init :]), problem.args_spec)
            _check_residual(problem, init_i, tree_unflatten([x[i] for x in out], spec[0]), args_i)
    inputs = {id(x) for x in flat}
    out = tuple(x.clone() if id(x) in inputs else x for x in out)
    problem.n_sol = len(out)
    problem.sol_spec = spec[0]
    problem.aux_spec = tree_flatten(None)[1]
    problem.aux_tensor_mask = ()
    problem.aux_static.append([])
    return out, (0,) * len(out)


def _check_closure(
    optimality_fn: OptimalityFn, init: PyTree, args: tuple[PyTree, ...], check_closure: bool
) -> float | None:
    """Evaluate ``F(init, *args)`` on detached inputs: shape check and closed-over grads.

    Returns ``||F(init, *args)||`` (the scale of the root check), or ``None`` when it is
    not a plain number (inside :func:`torch.vmap`)."""
    detached_init = tree_map(torch.Tensor.detach, init)
    detached_args = tree_map(torch.Tensor.detach, args)
    with torch.enable_grad():
        value = optimality_fn(detached_init, *detached_args)
    check_tensor_leaves(value, "custom_root: output of the optimality function")
    check_same_structure(
        init, value, "the solution (init)", "the output of the optimality function"
    )
    leaves = tree_leaves(value)
    norm = None
    if not any(is_functorch_wrapped(v) for v in leaves):
        norm = float(tree_norm(tree_map(torch.Tensor.detach, value)))
    if not check_closure:
        return norm
    reverse = torch.is_grad_enabled() and any(v.requires_grad for v in leaves)
    forward = any(forward_ad.unpack_dual(v).tangent is not None for v in leaves)
    if reverse or forward:
        raise ClosureError(
            "custom_root: the optimality function depends on a tensor that requires grad "
            "(or carries a forward-mode tangent) "
            "but is not among the arguments of the solver (it is closed over, e.g. a "
            "global, a default argument, or a module parameter). Implicit differentiation "
            "only differentiates with respect to explicit arguments, so that tensor would "
            "silently get no gradient. Pass it as an argument of the solver and of the "
            "optimality function, detach it if no gradient is wanted, or disable this "
            "check with check_closure=False."
        )
    return norm


def _bind_positional(
    solver: Solver, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    if not kwargs:
        return args
    try:
        bound = inspect.signature(solver).bind(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"custom_root: cannot bind the solver's arguments: {exc}") from None
    if bound.kwargs:
        raise TypeError(
            "custom_root: keyword-only arguments of the solver cannot be differentiated; "
            f"pass {sorted(bound.kwargs)} positionally or close over them if they are static"
        )
    return tuple(bound.args)


def custom_root(
    optimality_fn: OptimalityFn,
    solve: str | LinearSolver = "auto",
    has_aux: bool = False,
    check_closure: bool = True,
    residual_tol: float | None = 1e-3,
    on_inaccurate: str = "warn",
) -> Callable[[Solver], Solver]:
    """Decorator: differentiate a solver through its optimality condition.

    The decorated ``solver(init, *args) -> sol`` (or ``(sol, aux)`` if ``has_aux``) is run
    without gradient tracking; its output is made differentiable with respect to ``args`` by
    the implicit function theorem applied to ``optimality_fn(sol, *args) = 0``:
    ``d sol / d args = -(d_x F)^{-1} d_args F``. Reverse mode (``loss.backward()``,
    :func:`torch.func.grad`, :func:`torch.func.vjp`, :func:`torch.func.jacrev`), forward mode
    (:func:`torch.func.jvp`, :func:`torch.func.jacfwd`) and :func:`torch.vmap` are supported.

    Arguments are passed explicitly: ``optimality_fn`` receives exactly the ``args`` the
    solver receives, and only those get gradients. A tensor that requires grad but is closed
    over by ``optimality_fn`` raises :class:`~bilevel.errors.ClosureError` rather than
    silently getting no gradient (detected for reverse mode and for dual tensors of
    :mod:`torch.autograd.forward_ad`; a tangent closed over inside :func:`torch.func.jvp`
    cannot be detected). Static, non-differentiable configuration should be closed over;
    every leaf of ``init`` and ``args`` must be a tensor (integer tensors such as indices
    are held fixed and get no gradient).

    Parameters
    ----------
    optimality_fn:
        ``F(x, *args)`` returning a pytree with the structure and shapes of ``x``, zero at
        the solution (e.g. the gradient of the inner objective).
    solve:
        Linear solver for the systems with ``A = d_x F`` (name in :data:`bilevel.linalg.SOLVERS`
        or a callable ``solve(matvec, b) -> (x, info)``, e.g.
        ``functools.partial(bilevel.linalg.cg, tol=1e-12)``). The default ``"auto"`` factorises
        small ``A`` densely and picks CG or GMRES above :data:`bilevel.linalg.DENSE_MAX`
        (see :func:`bilevel.linalg.auto`).
    has_aux:
        The solver returns ``(sol, aux)``; ``aux`` is returned as is and not differentiated.
        Under :func:`torch.vmap`, non-tensor leaves of ``aux`` become lists over the batch.
    check_closure:
        Raise when ``optimality_fn`` closes over a tensor that requires grad.
    residual_tol:
        Root check on the solver's output: with ``r(z) = ||optimality_fn(z, *args)||``
        (Euclidean norm over the pytree), the solution is accepted when
        ``r(sol) <= max(residual_tol * r(init), sqrt(eps))`` (``eps`` of the solution's
        dtype), i.e. when the solver reduced the residual of its starting point by the
        factor ``residual_tol`` or reached it to about half the working precision. The
        check costs one evaluation of ``optimality_fn`` (``r(init)`` comes from the shape
        check every call makes anyway; under :func:`torch.vmap` it is re-evaluated per
        element). ``None`` disables it.
    on_inaccurate:
        What a failed root check does: ``"warn"`` (default, a
        :class:`~bilevel.errors.ConvergenceWarning`), ``"raise"``
        (:class:`~bilevel.errors.InaccurateRootError`) or ``"ignore"``.

    Notes
    -----
    The gradient with respect to ``init`` is zero (the solution does not depend on it).
    Second and higher derivatives (``torch.func.hessian``, Hessian-vector products of an
    outer objective, ``create_graph=True``) are supported: the backward linear solve is
    differentiated implicitly too (see the module docstring). The implicit
    gradient is that of the exact root: a residual ``r`` at the returned point perturbs it
    by about ``||A^{-1}|| r``, which is why the root is checked.
    """
    solve_fn = get_solver(solve)
    if residual_tol is not None and not (
        isinstance(residual_tol, int | float) and math.isfinite(residual_tol) and residual_tol > 0
    ):
        raise ValueError(
            f"custom_root: residual_tol must be a positive finite number or None, got "
            f"{residual_tol!r}"
        )
    if on_inaccurate not in ("warn", "raise", "ignore"):
        raise ValueError(
            f"custom_root: on_inaccurate must be 'warn', 'raise' or 'ignore', got {on_inaccurate!r}"
        )

    def decorator(solver: Solver) -> Solver:
        @functools.wraps(solver)
        def wrapped(*call_args: Any, **call_kwargs: Any) -> Any:
            positional = _bind_positional(solver, call_args, call_kwargs)
            if not positional:
                raise TypeError("custom_root: the solver needs at least the init argument")
            init, args = positional[0], tuple(positional[1:])
            init_leaves, init_spec = tree_flatten(init)
            check_tensor_leaves(init, "custom_root: init")
            if not init_leaves:
                raise ValueError("custom_root: init must contain at least one tensor")
            for i, a in enumerate(args):
                check_tensor_leaves(a, f"custom_root: argument {i + 1} of the solver")
            init_residual = _check_closure(optimality_fn, init, args, check_closure)
            args_leaves, args_spec = tree_flatten(args)
            problem = _RootProblem(
                solver=solver,
                optimality_fn=optimality_fn,
                solve=solve_fn,
                has_aux=has_aux,
                n_init=len(init_leaves),
                init_spec=init_spec,
                args_spec=args_spec,
                residual_tol=residual_tol,
                on_inaccurate=on_inaccurate,
                init_residual=init_residual,
            )
            out = _ImplicitRoot.apply(problem, *init_leaves, *args_leaves)
            sol = tree_unflatten(list(out[: problem.n_sol]), problem.sol_spec)
            if not has_aux:
                return sol
            # one row of non-tensor aux leaves per solver call: several under torch.vmap
            rows = problem.aux_static
            tensor_aux = iter(out[problem.n_sol :])
            static_columns = iter(zip(*rows))
            aux_leaves = []
            for is_tensor in problem.aux_tensor_mask:
                if is_tensor:
                    aux_leaves.append(next(tensor_aux))
                else:
                    column = next(static_columns)
                    aux_leaves.append(column[0] if len(rows) == 1 else list(column))
            return sol, tree_unflatten(aux_leaves, problem.aux_spec)

        return wrapped

    return decorator


def custom_fixed_point(
    fixed_point_fn: Callable[..., PyTree],
    solve: str | LinearSolver = "auto",
    has_aux: bool = False,
    check_closure: bool = True,
    residual_tol: float | None = 1e-3,
    on_inaccurate: str = "warn",
) -> Callable[[Solver], Solver]:
    """Decorator: differentiate a solver whose output satisfies ``x = T(x, *args)``.

    Equivalent to :func:`custom_root` with ``F(x, *args) = T(x, *args) - x``, so the linear
    systems involve ``A = d_x T - I``; they are non-singular when ``T`` is a contraction at
    the fixed point. See :func:`custom_root` for the parameters.
    """

    def optimality_fn(x: PyTree, *args: Any) -> PyTree:
        return tree_sub(fixed_point_fn(x, *args), x)

    return custom_root(
        optimality_fn,
        solve=solve,
        has_aux=has_aux,
        check_closure=check_closure,
        residual_tol=residual_tol,
        on_inaccurate=on_inaccurate,
    )

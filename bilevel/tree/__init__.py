"""Pytree utilities: validation, flattening and vector-space arithmetic.

A *pytree* here is any nesting of ``tuple``, ``list``, ``dict`` (and other containers
registered with :mod:`torch.utils._pytree`, the registry that :mod:`torch.func` uses) whose
leaves are tensors. Linear solvers and implicit differentiation treat a pytree as one
vector in the direct sum of its leaves, with the inner product
``<u, v> = sum_leaf sum(u_leaf * v_leaf)``.
"""

from __future__ import annotations

from bilevel.tree._core import (
    PyTree,
    Raveler,
    check_finite,
    check_same_structure,
    check_tensor_leaves,
    is_functorch_wrapped,
    ravel,
    tree_add,
    tree_axpy,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_norm,
    tree_scale,
    tree_structure,
    tree_sub,
    tree_unflatten,
    tree_vdot,
    tree_zeros_like,
)

__all__ = [
    "PyTree",
    "Raveler",
    "check_finite",
    "check_same_structure",
    "check_tensor_leaves",
    "is_functorch_wrapped",
    "ravel",
    "tree_add",
    "tree_axpy",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "tree_norm",
    "tree_scale",
    "tree_structure",
    "tree_sub",
    "tree_unflatten",
    "tree_vdot",
    "tree_zeros_like",
]

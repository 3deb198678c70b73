"""Implementation of :mod:`bilevel.tree` (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch.utils import _pytree

from bilevel.errors import NonFiniteError

PyTree: TypeAlias = Any
"""A tensor, or a nesting of tuples, lists and dicts whose leaves are tensors."""

tree_flatten = _pytree.tree_flatten
tree_unflatten = _pytree.tree_unflatten
tree_leaves = _pytree.tree_leaves
tree_structure = _pytree.tree_structure
tree_map = _pytree.tree_map


def is_functorch_wrapped(x: torch.Tensor) -> bool:
    """Whether ``x`` is wrapped by a :mod:`torch.func` transform (vmap, grad, jvp).

    Values of wrapped tensors may be batched or symbolic, so data-dependent checks
    (``bool(tensor)``) are skipped for them.
    """
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))


def _describe(tree: PyTree) -> str:
    """Short description of a pytree's structure and leaf shapes, for error messages."""

    def leaf(x: Any) -> str:
        if isinstance(x, torch.Tensor):
            return f"Tensor{tuple(x.shape)}"
        return type(x).__name__

    desc = repr(tree_map(leaf, tree)).replace("'", "")
    return desc if len(desc) <= 300 else desc[:297] + "..."


def check_tensor_leaves(tree: PyTree, name: str) -> list[torch.Tensor]:
    """Return the leaves of ``tree``, raising :class:`TypeError` on a non-tensor leaf.

    Parameters
    ----------
    tree:
        The pytree to validate.
    name:
        How the pytree is called in the error message (e.g. ``"argument 1"``).
    """
    leaves, _ = tree_flatten(tree)
    for i, x in enumerate(leaves):
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name}: leaf {i} is a {type(x).__name__} ({x!r:.60}), not a torch.Tensor. "
                "Differentiable inputs must be tensors or pytrees (tuple/list/dict) of tensors; "
                "wrap numbers with torch.tensor(...), and close over static, non-differentiable "
                "configuration instead of passing it as an argument."
            )
    return leaves


def check_finite(tree: PyTree, name: str) -> None:
    """Raise :class:`~bilevel.errors.NonFiniteError` (a ``ValueError``) on NaN or inf leaves.

    Leaves wrapped by a :mod:`torch.func` transform are skipped (their values cannot be
    inspected without data-dependent control flow).
    """
    for i, x in enumerate(tree_leaves(tree)):
        if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.is_complex()):
            continue
        if is_functorch_wrapped(x):
            continue
        if not bool(torch.isfinite(x).all()):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(torch.isinf(x).sum())
            raise NonFiniteError(
                f"{name}: leaf {i} (shape {tuple(x.shape)}) contains {n_nan} NaN and "
                f"{n_inf} infinite value(s)."
            )


def check_same_structure(reference: PyTree, other: PyTree, ref_name: str, other_name: str) -> None:
    """Raise :class:`ValueError` unless both pytrees have equal structure and leaf shapes."""
    ref_leaves, ref_spec = tree_flatten(reference)
    oth_leaves, oth_spec = tree_flatten(other)
    same = ref_spec == oth_spec and all(
        isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
        for a, b in zip(ref_leaves, oth_leaves)
    )
    if not same:
        raise ValueError(
            f"{other_name} must have the same pytree structure and leaf shapes as {ref_name}; "
            f"got {other_name} = {_describe(other)} and {ref_name} = {_describe(reference)}."
        )


def tree_add(x: PyTree, y: PyTree) -> PyTree:
    """Leafwise ``x + y``."""
    return tree_map(torch.add, x, y)


def tree_sub(x: PyTree, y: PyTree) -> PyTree:
    """Leafwise ``x - y``."""
    return tree_map(torch.sub, x, y)


def tree_scale(alpha: float | torch.Tensor, x: PyTree) -> PyTree:
    """Leafwise ``alpha * x``."""
    return tree_map(lambda leaf: alpha * leaf, x)


def tree_axpy(alpha: float | torch.Tensor, x: PyTree, y: PyTree) -> PyTree:
    """Leafwise ``alpha * x + y``."""
    return tree_map(lambda a, b: alpha * a + b, x, y)


def tree_vdot(x: PyTree, y: PyTree) -> torch.Tensor:
    """Inner product ``sum_leaf sum(x_leaf * y_leaf)`` as a 0-d tensor."""
    terms = [torch.sum(a * b) for a, b in zip(tree_leaves(x), tree_leaves(y))]
    if not terms:
        raise ValueError("tree_vdot of empty pytrees")
    return torch.stack(terms).sum()


def tree_norm(x: PyTree) -> torch.Tensor:
    """Euclidean norm of the pytree seen as one vector."""
    return torch.sqrt(tree_vdot(x, x))


def tree_zeros_like(x: PyTree) -> PyTree:
    """A pytree of zeros with the structure, shapes and dtypes of ``x``."""
    return tree_map(torch.zeros_like, x)


@dataclass(frozen=True)
class Raveler:
    """Maps a pytree of tensors to one flat 1-D tensor and back.

    Leaves are promoted to a common floating dtype in the flat vector and cast back to
    their own dtype by :meth:`unravel`.
    """

    spec: Any
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    sizes: tuple[int, ...]
    dtype: torch.dtype

    @property
    def size(self) -> int:
        """Total number of scalar entries."""
        return sum(self.sizes)

    def ravel(self, tree: PyTree) -> torch.Tensor:
        """Concatenate the leaves of ``tree`` (same structure as the template) into a vector."""
        leaves = tree_leaves(tree)
        if len(leaves) != len(self.sizes):
            raise ValueError(
                f"expected a pytree with {len(self.sizes)} leaves, got {len(leaves)}: "
                f"{_describe(tree)}"
            )
        flat = [leaf.reshape(-1).to(self.dtype) for leaf in leaves]
        return flat[0] if len(flat) == 1 else torch.cat(flat)

    def unravel(self, vector: torch.Tensor) -> PyTree:
        """Split a flat vector back into a pytree with the template's structure."""
        if len(self.sizes) == 1:
            parts: Sequence[torch.Tensor] = [vector]
        else:
            parts = torch.split(vector, list(self.sizes))
        leaves = [p.reshape(s).to(d) for p, s, d in zip(parts, self.shapes, self.dtypes)]
        return tree_unflatten(leaves, self.spec)

    def linear_map(self, fn: Callable[[PyTree], PyTree]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Turn a pytree-to-pytree map into a vector-to-vector map."""
        return lambda v: self.ravel(fn(self.unravel(v)))


def ravel(tree: PyTree) -> tuple[torch.Tensor, Raveler]:
    """Flatten a pytree of tensors into one vector.

    Returns
    -------
    (vector, raveler):
        ``vector`` is the concatenation of the flattened leaves, in the common dtype
        ``torch.result_type`` of all leaves; ``raveler.unravel(vector)`` rebuilds the pytree.
    """
    leaves, spec = tree_flatten(tree)
    if not leaves:
        raise ValueError("cannot ravel an empty pytree")
    check_tensor_leaves(tree, "pytree")
    dtype = leaves[0].dtype
    for leaf in leaves[1:]:
        dtype = torch.promote_types(dtype, leaf.dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        dtype = torch.get_default_dtype()
    raveler = Raveler(
        spec=spec,
        shapes=tuple(leaf.shape for leaf in leaves),
        dtypes=tuple(leaf.dtype for leaf in leaves),
        sizes=tuple(math.prod(leaf.shape) for leaf in leaves),
        dtype=dtype,
    )
    return raveler.ravel(tree), raveler

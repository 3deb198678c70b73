"""Implicit differentiation: make any solver differentiable through its optimality condition.

Public API: :func:`custom_root`, :func:`custom_fixed_point` (decorators), the functional
primitives :func:`root_vjp`, :func:`root_jvp`, and their first-order building blocks
:class:`Linearisation` (one autograd linearisation of an optimality condition, products with
``A^T`` and ``B^T``) and :func:`solve_adjoint` (``-B^T u`` with ``A^T u = v``), which
:mod:`bilevel.hypergrad` and :mod:`bilevel.nn` use. See :mod:`bilevel.implicit._core` and
:mod:`bilevel.implicit._linearised` for the math.

Example
-------
>>> import torch, bilevel
>>> def ridge_objective(w, lam, X, y):
...     return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * lam * (w ** 2).sum()
>>> grad_w = torch.func.grad(ridge_objective)
>>> @bilevel.implicit.custom_root(grad_w, solve="cg")
... def ridge_solver(init, lam, X, y):
...     A = X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype)
...     return torch.linalg.solve(A, X.T @ y)
"""

from __future__ import annotations

from bilevel.implicit._core import custom_fixed_point, custom_root, root_jvp, root_vjp
from bilevel.implicit._linearised import Adjoint, Linearisation, solve_adjoint

__all__ = [
    "Adjoint",
    "Linearisation",
    "custom_fixed_point",
    "custom_root",
    "root_jvp",
    "root_vjp",
    "solve_adjoint",
]

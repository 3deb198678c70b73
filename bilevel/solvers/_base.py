"""Shared machinery of the inner solvers: result record, implicit vs unrolled execution."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bilevel.errors import ConvergenceWarning
from bilevel.implicit import custom_root
from bilevel.linalg import LinearSolver, default_tol
from bilevel.tree import PyTree, check_tensor_leaves, tree_leaves


@dataclass(frozen=True)
class SolverInfo:
    """Outcome of an inner solve.

    Attributes
    ----------
    iterations:
        Iterations performed.
    error:
        Optimality residual of the returned point (the norm of the condition the solver's
        ``optimality_fn`` vanishes on, scaled as documented by each solver).
    converged:
        ``error <= tol``.
    step_size:
        Last step size used, where the method has one.
    message:
        Why the solver stopped.
    """

    iterations: int
    error: float
    converged: bool
    step_size: float | None = None
    message: str = ""


def resolve_tol(tol: float | None, x: PyTree) -> float:
    """``tol`` or the dtype-aware default of :func:`bilevel.linalg.default_tol`."""
    if tol is not None:
        if not tol >= 0:
            raise ValueError(f"tol must be non-negative, got {tol}")
        return float(tol)
    return default_tol(tree_leaves(x)[0].dtype)


def check_maxiter(maxiter: int) -> int:
    """Validate an iteration budget."""
    if int(maxiter) < 1:
        raise ValueError(f"maxiter must be >= 1, got {maxiter}")
    return int(maxiter)


def make_info(
    name: str,
    iterations: int,
    error: float,
    tol: float,
    step_size: float | None = None,
    message: str = "",
) -> SolverInfo:
    """Build a :class:`SolverInfo`, warning with :class:`ConvergenceWarning` if not converged."""
    converged = math.isfinite(error) and error <= tol
    if not message:
        message = "converged" if converged else "maximum number of iterations reached"
    if not converged:
        warnings.warn(
            f"{name} did not converge ({message}): optimality error {error:.3e} > tol {tol:.3e} "
            f"after {iterations} iterations. Increase maxiter, tune the step size, or loosen tol.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return SolverInfo(iterations, error, converged, step_size, message)


class IterativeSolver:
    """Base class: ``run(init, *args) -> (solution, SolverInfo)``, differentiable in ``args``.

    Subclasses implement :meth:`_iterate` (the plain algorithm, written with differentiable
    operations) and :meth:`optimality_fn` (the condition the solution satisfies).

    * ``implicit_diff=True``: the algorithm runs without gradient tracking and derivatives
      come from the implicit function theorem (:func:`bilevel.implicit.custom_root`), with
      memory independent of the number of iterations.
    * ``implicit_diff=False``: the iterations are recorded by autograd and differentiated by
      backpropagation through the unrolled run ("iterative differentiation").
    """

    name = "solver"
    implicit_diff: bool
    linear_solve: str | LinearSolver

    def optimality_fn(self) -> Callable[..., PyTree]:
        """Root condition ``F(sol, *args) = 0`` used for implicit differentiation."""
        raise NotImplementedError(f"{type(self).__name__} must define optimality_fn")

    def _iterate(self, init: PyTree, *args: Any) -> tuple[PyTree, SolverInfo]:
        raise NotImplementedError(f"{type(self).__name__} must define _iterate")

    def run(self, init: PyTree, *args: Any) -> tuple[PyTree, SolverInfo]:
        """Solve from ``init``; the solution is differentiable with respect to ``args``."""
        check_tensor_leaves(init, f"{self.name}: init")
        if self.implicit_diff:
            solver = custom_root(self.optimality_fn(), solve=self.linear_solve, has_aux=True)(
                self._iterate_untracked
            )
            return solver(init, *args)
        return self._iterate(init, *args)

    def _iterate_untracked(self, init: PyTree, *args: Any) -> tuple[PyTree, SolverInfo]:
        with torch.no_grad():
            return self._iterate(init, *args)

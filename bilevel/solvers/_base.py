"""Shared machinery of the inner solvers: result record, implicit vs unrolled execution."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bilevel._validation import check_positive
from bilevel.errors import ConvergenceWarning
from bilevel.implicit import custom_root
from bilevel.linalg import LinearSolver, Spectrum, default_tol
from bilevel.solvers._curvature import MAX_ESCAPES, curvature, escape, is_negative
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
        ``error <= tol`` and, for the unconstrained smooth solvers, no certified negative
        curvature at the returned point.
    step_size:
        Last step size used, where the method has one.
    message:
        Why the solver stopped.
    min_curvature:
        The smallest Ritz value of the Hessian at the returned point
        (:mod:`bilevel.solvers._curvature`), for the solvers that check it
        (:class:`GradientDescent`, :class:`LBFGS`); ``None`` otherwise.
    escapes:
        Escapes from points of negative curvature made during the solve.
    """

    iterations: int
    error: float
    converged: bool
    step_size: float | None = None
    message: str = ""
    min_curvature: float | None = None
    escapes: int = 0


def resolve_tol(tol: float | None, x: PyTree) -> float:
    """``tol`` or the dtype-aware default of :func:`bilevel.linalg.default_tol`."""
    if tol is not None:
        if not tol >= 0:
            raise ValueError(f"tol must be non-negative, got {tol}")
        return float(tol)
    return default_tol(tree_leaves(x)[0].dtype)


def check_step_size(name: str, step_size: float) -> float:
    """A positive finite ``step_size``, or ``ValueError`` naming the solver and argument."""
    check_positive(name, step_size=step_size)
    return float(step_size)


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
    spectrum: Spectrum | None = None,
    escapes: int = 0,
) -> SolverInfo:
    """Build a :class:`SolverInfo`, warning with :class:`ConvergenceWarning` if not converged
    (``spectrum``: the curvature at the returned point; negative curvature means not
    converged)."""
    converged = math.isfinite(error) and error <= tol
    min_curvature = None if spectrum is None else spectrum.smallest
    if converged and is_negative(spectrum):
        converged = False
        message = (
            f"stationary point with negative curvature {spectrum.smallest:.3e} (largest "
            f"{spectrum.largest:.3e}) after {escapes} escape(s): a saddle point or a maximum"
        )
        warnings.warn(
            f"{name}: {message}, not a minimum. Start elsewhere or check the objective.",
            ConvergenceWarning,
            stacklevel=4,
        )
        return SolverInfo(iterations, error, False, step_size, message, min_curvature, escapes)
    if not message:
        message = "converged" if converged else "maximum number of iterations reached"
    if not converged:
        warnings.warn(
            f"{name} did not converge ({message}): optimality error {error:.3e} > tol {tol:.3e} "
            f"after {iterations} iterations. Increase maxiter, tune the step size, or loosen tol.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return SolverInfo(iterations, error, converged, step_size, message, min_curvature, escapes)


def solve_with_escapes(
    run: Callable[[PyTree, int], tuple[PyTree, int, float]],
    fn: Callable[[PyTree], torch.Tensor],
    init: PyTree,
    maxiter: int,
    tol: float,
    escape_saddles: bool,
) -> tuple[PyTree, int, float, Spectrum | None, int]:
    """Run ``run(start, budget) -> (x, iterations, error)``; at a stationary point
    (``error <= tol``) check the curvature of ``fn`` and, while it is negative and
    ``escape_saddles``, escape (:mod:`bilevel.solvers._curvature`) and run again, at most
    ``MAX_ESCAPES`` times within ``maxiter`` iterations in all. Returns ``(x, iterations,
    error, spectrum at x, escapes)``."""
    x, iterations, error = run(init, maxiter)
    escapes = 0
    while True:
        if not (math.isfinite(error) and error <= tol):
            return x, iterations, error, None, escapes
        spectrum = curvature(fn, x)
        if not is_negative(spectrum) or not escape_saddles:
            return x, iterations, error, spectrum, escapes
        if escapes == MAX_ESCAPES or iterations >= maxiter:
            return x, iterations, error, spectrum, escapes
        escapes += 1
        x, more, error = run(escape(fn, x, spectrum), maxiter - iterations)
        iterations += more


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
            # the solver checks its own optimality error (make_info warns above tol), so
            # custom_root's root check would only repeat that warning
            solver = custom_root(
                self.optimality_fn(), solve=self.linear_solve, has_aux=True, residual_tol=None
            )(self._iterate_untracked)
            return solver(init, *args)
        return self._iterate(init, *args)

    def _iterate_untracked(self, init: PyTree, *args: Any) -> tuple[PyTree, SolverInfo]:
        with torch.no_grad():
            return self._iterate(init, *args)

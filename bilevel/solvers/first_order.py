"""First-order inner solvers: gradient descent, projected and proximal gradient, mirror descent.

All but mirror descent share one engine, accelerated proximal gradient (FISTA, Beck and
Teboulle 2009) with optional backtracking and adaptive restart (O'Donoghue and Candes
2015)::

    x_{k+1} = prox_{eta g}(y_k - eta grad f(y_k)),
    y_{k+1} = x_{k+1} + (t_k - 1) / t_{k+1} (x_{k+1} - x_k),  t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2,

with ``prox`` the identity for gradient descent and a projection for projected gradient.
The stopping test is on the gradient mapping ``||y - x_{k+1}|| / eta <= tol``; the reported
error is the gradient mapping ``||x - T(x)|| / eta`` at the returned point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.linalg import LinearSolver
from bilevel.optimality import (
    apply_with_hyperparams,
    mirror_descent_fixed_point,
    proximal_gradient_fixed_point,
    stationarity,
)
from bilevel.solvers._base import (
    IterativeSolver,
    SolverInfo,
    check_maxiter,
    check_step_size,
    make_info,
    resolve_tol,
    solve_with_escapes,
)
from bilevel.tree import PyTree, ravel, tree_axpy, tree_map, tree_norm, tree_sub, tree_vdot

Objective = Callable[..., torch.Tensor]


def _float(x: torch.Tensor) -> float:
    return float(x.detach())


def proximal_gradient_loop(
    value_and_grad: Callable[[PyTree], tuple[torch.Tensor, PyTree]],
    prox: Callable[[PyTree, float], PyTree],
    init: PyTree,
    *,
    step_size: float | None,
    maxiter: int,
    tol: float,
    acceleration: bool,
    max_backtracks: int = 60,
) -> tuple[PyTree, int, float, float]:
    """Accelerated proximal gradient engine (see the module docstring).

    ``step_size=None`` selects backtracking: starting from ``eta = 1``, halve ``eta`` until
    ``f(x+) <= f(y) + <grad f(y), x+ - y> + ||x+ - y||^2 / (2 eta)``. Tests on values use
    detached floats, so the recorded computation is differentiable when unrolled.

    Returns ``(x, iterations, last gradient-mapping norm, eta)``.
    """
    eta = 1.0 if step_size is None else float(step_size)
    if not eta > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    x = init
    y = init
    t = 1.0
    err = math.inf
    iterations = 0
    for iterations in range(1, maxiter + 1):
        fy, gy = value_and_grad(y)
        for _ in range(max_backtracks):
            x_new = prox(tree_axpy(-eta, gy, y), eta)
            diff = tree_sub(x_new, y)
            if step_size is not None:
                break
            sq = _float(tree_vdot(diff, diff))
            bound = _float(fy) + _float(tree_vdot(gy, diff)) + sq / (2 * eta)
            f_new = _float(value_and_grad(x_new)[0])
            if f_new <= bound + 1e-12 * max(1.0, abs(_float(fy))):
                break
            eta *= 0.5
        err = _float(tree_norm(diff)) / eta
        if acceleration:
            t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            # adaptive restart when the momentum points uphill
            if _float(tree_vdot(tree_sub(y, x_new), tree_sub(x_new, x))) > 0:
                t_new, y = 1.0, x_new
            else:
                y = tree_axpy((t - 1.0) / t_new, tree_sub(x_new, x), x_new)
            t = t_new
        else:
            y = x_new
        x = x_new
        if err <= tol:
            break
    return x, iterations, err, eta


def _value_and_grad(
    objective: Objective, args: tuple[Any, ...]
) -> Callable[[PyTree], tuple[torch.Tensor, PyTree]]:
    """``x -> (f(x, *args), grad_x f(x, *args))`` in the order the engine expects."""
    grad_and_value = torch.func.grad_and_value(objective, argnums=0)

    def value_and_grad(x: PyTree) -> tuple[torch.Tensor, PyTree]:
        g, v = grad_and_value(x, *args)
        return v, g

    return value_and_grad


def _gradient_mapping_error(
    fixed_point: Callable[..., PyTree], x: PyTree, eta: float, *args: Any
) -> float:
    return _float(tree_norm(tree_sub(x, fixed_point(x, *args)))) / eta


@dataclass
class GradientDescent(IterativeSolver):
    """Accelerated gradient descent for ``min_x f(x, *args)``, smooth ``f``.

    Parameters
    ----------
    objective:
        ``f(x, *args) -> 0-d tensor``; ``x`` may be a pytree.
    step_size:
        Fixed step ``eta`` (converges for ``eta <= 1/L``), or ``None`` for backtracking.
    maxiter, tol:
        Stop when ``||grad f|| <= tol`` (``tol=None``: dtype-aware default).
    acceleration:
        Nesterov momentum with adaptive restart.
    implicit_diff, linear_solve:
        Differentiate by the implicit function theorem on ``grad_x f = 0`` with this linear
        solver (default ``"auto"``: dense Cholesky for small problems, CG above), or by unrolling (``implicit_diff=False``).
    escape_saddles:
        At a stationary point the Hessian is checked by Lanczos (20 Hessian-vector
        products, :mod:`bilevel.solvers._curvature`); negative curvature is escaped (a
        step along it, then the iteration resumes, at most 3 times) and, if it remains,
        reported (``info.converged = False`` and a
        :class:`~bilevel.errors.ConvergenceWarning`). ``escape_saddles=False`` only reports,
        as does ``implicit_diff=False`` (a restart would cut the unrolled derivatives).
    """

    objective: Objective
    step_size: float | None = None
    maxiter: int = 5000
    tol: float | None = None
    acceleration: bool = True
    implicit_diff: bool = True
    linear_solve: str | LinearSolver = "auto"
    escape_saddles: bool = True
    name: str = field(default="GradientDescent", init=False)

    def __post_init__(self) -> None:
        if self.step_size is not None:
            check_step_size(self.name, self.step_size)

    def optimality_fn(self) -> Callable[..., PyTree]:
        return stationarity(self.objective)

    def _iterate(self, init: PyTree, *args: Any) -> tuple[PyTree, SolverInfo]:
        tol = resolve_tol(self.tol, init)
        eta = math.nan

        def run(start: PyTree, budget: int) -> tuple[PyTree, int, float]:
            nonlocal eta
            x, iterations, _, eta = proximal_gradient_loop(
                _value_and_grad(self.objective, args),
                lambda y, _eta: y,
                start,
                step_size=self.step_size,
                maxiter=budget,
                tol=tol,
                acceleration=self.acceleration,
            )
            return x, iterations, _float(tree_norm(torch.func.grad(self.objective)(x, *args)))

        x, iterations, error, spectrum, escapes = solve_with_escapes(
            run,
            lambda z: self.objective(z, *args),
            init,
            check_maxiter(self.maxiter),
            tol,
            self.escape_saddles and self.implicit_diff,
        )
        return x, make_info(
            self.name, iterations, error, tol, eta, spectrum=spectrum, escapes=escapes
        )


class _ForwardBackward(IterativeSolver):
    """Shared implementation of projected and proximal gradient (forward-backward splitting).

    Subclasses provide :meth:`_prox` with the prox convention ``prox(y, hp, scaling)``; the
    fixed point used by implicit differentiation is
    :func:`bilevel.optimality.proximal_gradient_fixed_point` with the last step size.
    """

    objective: Objective
    step_size: float | None
    maxiter: int
    tol: float | None
    acceleration: bool

    def __post_init__(self) -> None:
        if self.step_size is not None:
            check_step_size(self.name, self.step_size)
        self._eta = 1.0 if self.step_size is None else float(self.step_size)

    def _prox(self, y: PyTree, hyperparams: Any, scaling: float) -> PyTree:
        raise NotImplementedError(f"{type(self).__name__} must define _prox")

    def optimality_fn(self) -> Callable[..., PyTree]:
        def fn(x: PyTree, hyperparams: Any, *args: Any) -> PyTree:
            fixed = proximal_gradient_fixed_point(self.objective, self._prox, self._eta)
            return tree_sub(fixed(x, hyperparams, *args), x)

        return fn

    def _iterate(self, init: PyTree, hyperparams: Any, *args: Any) -> tuple[PyTree, SolverInfo]:
        tol = resolve_tol(self.tol, init)
        x, iterations, _, eta = proximal_gradient_loop(
            _value_and_grad(self.objective, args),
            lambda y, step: self._prox(y, hyperparams, step),
            self._prox(init, hyperparams, self._eta),
            step_size=self.step_size,
            maxiter=check_maxiter(self.maxiter),
            tol=tol,
            acceleration=self.acceleration,
        )
        self._eta = eta
        fixed = proximal_gradient_fixed_point(self.objective, self._prox, eta)
        error = _gradient_mapping_error(fixed, x, eta, hyperparams, *args)
        return x, make_info(self.name, iterations, error, tol, eta)


@dataclass
class ProjectedGradient(_ForwardBackward):
    """Accelerated projected gradient for ``min_{x in C(hp)} f(x, *args)``.

    ``run(init, hyperparams_proj, *args)``: the projection is called as
    ``projection(y, *hyperparams_proj)`` for a tuple (``()`` when it has none), else
    ``projection(y, hyperparams_proj)``; e.g.
    ``ProjectedGradient(f, bilevel.operators.projection_box).run(x0, (lower, upper), data)``.
    Implicit differentiation uses the fixed point ``x = P(x - eta grad f(x))``
    (:func:`bilevel.optimality.projected_gradient_fixed_point`); the hyperparameters of the
    projection are differentiable too. See :class:`GradientDescent` for the other parameters.
    """

    objective: Objective
    projection: Callable[..., PyTree]
    step_size: float | None = None
    maxiter: int = 5000
    tol: float | None = None
    acceleration: bool = True
    implicit_diff: bool = True
    linear_solve: str | LinearSolver = "auto"
    name: str = field(default="ProjectedGradient", init=False)

    def _prox(self, y: PyTree, hyperparams: Any, scaling: float) -> PyTree:
        return apply_with_hyperparams(self.projection, y, hyperparams)


@dataclass
class ProximalGradient(_ForwardBackward):
    """Accelerated proximal gradient (FISTA) for ``min_x f(x, *args) + g(x, hp)``.

    ``run(init, hyperparams_prox, *args)`` with ``prox(y, hyperparams_prox, scaling)`` as in
    :mod:`bilevel.operators` (e.g. ``prox_l1`` with ``hyperparams_prox = l1reg``).
    Implicit differentiation uses the fixed point ``x = prox_{eta g}(x - eta grad f(x))``,
    differentiable in ``args`` and in the prox hyperparameters. With ``step_size=None`` the
    step is found by backtracking on ``f`` alone. See :class:`GradientDescent` for the rest.
    """

    objective: Objective
    prox: Callable[..., PyTree]
    step_size: float | None = None
    maxiter: int = 5000
    tol: float | None = None
    acceleration: bool = True
    implicit_diff: bool = True
    linear_solve: str | LinearSolver = "auto"
    name: str = field(default="ProximalGradient", init=False)

    def _prox(self, y: PyTree, hyperparams: Any, scaling: float) -> PyTree:
        return self.prox(y, hyperparams, scaling)


@dataclass
class MirrorDescent(IterativeSolver):
    """Entropic mirror descent (exponentiated gradient) on the simplex, last dimension.

    ``x_{k+1} = x_k * exp(-eta grad f(x_k)) / Z``: the fixed-point iteration of
    :func:`bilevel.optimality.mirror_descent_fixed_point`, which implicit differentiation
    uses. ``init`` must have positive entries (the uniform distribution is a good start).
    Converges for small enough ``step_size`` (``eta < 1/L`` in the l1/l-inf geometry); the
    error is ``||x - T(x)|| / eta``.
    """

    objective: Objective
    step_size: float = 1.0
    maxiter: int = 5000
    tol: float | None = None
    implicit_diff: bool = True
    linear_solve: str | LinearSolver = "auto"
    name: str = field(default="MirrorDescent", init=False)

    def __post_init__(self) -> None:
        check_step_size(self.name, self.step_size)

    def optimality_fn(self) -> Callable[..., PyTree]:
        fixed = mirror_descent_fixed_point(self.objective, self.step_size)
        return lambda x, *args: tree_sub(fixed(x, *args), x)

    def _iterate(self, init: torch.Tensor, *args: Any) -> tuple[torch.Tensor, SolverInfo]:
        if not isinstance(init, torch.Tensor):
            raise TypeError("MirrorDescent: init must be a tensor (rows are simplices)")
        if not bool((init.detach() > 0).all()):
            raise ValueError("MirrorDescent: init must have strictly positive entries")
        tol = resolve_tol(self.tol, init)
        fixed = mirror_descent_fixed_point(self.objective, self.step_size)
        x = init / init.sum(dim=-1, keepdim=True)
        error = math.inf
        iterations = 0
        for iterations in range(1, check_maxiter(self.maxiter) + 1):
            x_new = fixed(x, *args)
            error = _float(torch.linalg.vector_norm(x_new - x)) / self.step_size
            x = x_new
            if error <= tol:
                break
        error = _gradient_mapping_error(fixed, x, self.step_size, *args)
        return x, make_info(self.name, iterations, error, tol, self.step_size)


@dataclass
class LBFGS(IterativeSolver):
    """L-BFGS for smooth ``min_x f(x, *args)``, through SciPy's L-BFGS-B (Byrd et al. 1995).

    The objective and its gradient are evaluated in PyTorch (:func:`torch.func.grad_and_value`
    on the raveled pytree); SciPy runs the quasi-Newton iteration with ``history_size``
    correction pairs and its Moré-Thuente line search, in float64 on the CPU. Stops when
    ``||grad f||_2 <= tol``; if the line search stalls first (no representable decrease), it
    restarts with a fresh history, at most ``restarts`` times within ``maxiter``.
    Differentiable by implicit differentiation only (SciPy is not differentiable), through
    ``grad_x f = 0`` with the ``"auto"`` solver on the Hessian by default. At a stationary
    point the curvature is checked and negative curvature escaped or reported, as in
    :class:`GradientDescent` (``escape_saddles``).
    """

    objective: Objective
    maxiter: int = 1000
    tol: float | None = None
    history_size: int = 20
    restarts: int = 3
    implicit_diff: bool = True
    linear_solve: str | LinearSolver = "auto"
    escape_saddles: bool = True
    name: str = field(default="LBFGS", init=False)

    def __post_init__(self) -> None:
        if not self.implicit_diff:
            raise ValueError(
                "LBFGS supports implicit differentiation only (implicit_diff=True); "
                "use GradientDescent(implicit_diff=False) to differentiate by unrolling"
            )

    def optimality_fn(self) -> Callable[..., PyTree]:
        return stationarity(self.objective)

    def _iterate(self, init: PyTree, *args: Any) -> tuple[PyTree, SolverInfo]:
        import numpy as np
        import scipy.optimize

        tol = resolve_tol(self.tol, init)
        flat0, raveler = ravel(tree_map(torch.Tensor.detach, init))
        grad_and_value = torch.func.grad_and_value(
            lambda v: self.objective(raveler.unravel(v), *args)
        )

        def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
            g, value = grad_and_value(
                torch.from_numpy(v).to(dtype=flat0.dtype, device=flat0.device)
            )
            return float(value), g.detach().to(device="cpu", dtype=torch.float64).numpy()

        message = ""

        def run(start: torch.Tensor, budget: int) -> tuple[torch.Tensor, int, float]:
            nonlocal message
            v = start.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
            iterations = 0
            error = math.inf
            for _ in range(self.restarts + 1):
                result = scipy.optimize.minimize(
                    fun,
                    v,
                    jac=True,
                    method="L-BFGS-B",
                    options={
                        "maxiter": budget - iterations,
                        "maxcor": self.history_size,
                        "gtol": tol / math.sqrt(max(v.size, 1)),
                        "ftol": 0.0,
                        "maxfun": 10 * budget,
                    },
                )
                v = result.x
                iterations += max(int(result.nit), 1)
                error = float(np.linalg.norm(result.jac))
                message = str(result.message)
                if error <= tol or iterations >= budget or not np.isfinite(error):
                    break
            return torch.from_numpy(v).to(dtype=flat0.dtype, device=flat0.device), iterations, error

        flat, iterations, error, spectrum, escapes = solve_with_escapes(
            run,
            lambda z: self.objective(raveler.unravel(z), *args),
            flat0,
            check_maxiter(self.maxiter),
            tol,
            self.escape_saddles,
        )
        return raveler.unravel(flat), make_info(
            self.name,
            iterations,
            error,
            tol,
            message="" if error <= tol else message,
            spectrum=spectrum,
            escapes=escapes,
        )

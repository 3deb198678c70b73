"""Augmented Lagrangian solver for smooth problems with equality and inequality constraints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.linalg import LinearSolver
from bilevel.optimality import kkt_conditions
from bilevel.solvers._base import IterativeSolver, SolverInfo, check_maxiter, make_info, resolve_tol
from bilevel.solvers.first_order import proximal_gradient_loop
from bilevel.tree import PyTree, check_tensor_leaves, tree_leaves, tree_norm

Objective = Callable[..., torch.Tensor]
Constraint = Callable[..., torch.Tensor]


@dataclass
class AugmentedLagrangian(IterativeSolver):
    """Method of multipliers for ``min_x f(x, *args) s.t. h(x, *args) = 0, g(x, *args) <= 0``.

    Each outer iteration minimises the augmented Lagrangian (Powell-Hestenes-Rockafellar)::

        L_rho(x) = f(x) + lam^T h(x) + rho/2 ||h(x)||^2
                   + 1/(2 rho) sum_i (max(0, mu_i + rho g_i(x))^2 - mu_i^2)

    by accelerated gradient descent with backtracking, then updates
    ``lam <- lam + rho h(x)``, ``mu <- max(0, mu + rho g(x))``, and multiplies ``rho`` by
    ``rho_growth`` when the constraint violation did not shrink by four.

    ``run(init, *args)`` takes ``init = x0`` or ``(x0, lam0, mu0)`` and returns
    ``((x, lam, mu), info)``: the primal-dual point whose KKT residual
    (:func:`bilevel.optimality.kkt_conditions`, the condition used for implicit
    differentiation) is the reported error. ``h`` and ``g`` return 1-D tensors; omit either.
    """

    objective: Objective
    eq_constraints: Constraint | None = None
    ineq_constraints: Constraint | None = None
    maxiter: int = 200
    inner_maxiter: int = 5000
    tol: float | None = None
    rho: float = 10.0
    rho_growth: float = 10.0
    rho_max: float = 1e8
    implicit_diff: bool = True
    linear_solve: str | LinearSolver = "auto"
    name: str = field(default="AugmentedLagrangian", init=False)

    def optimality_fn(self) -> Callable[..., Any]:
        return kkt_conditions(self.objective, self.eq_constraints, self.ineq_constraints)

    def _split_init(self, init: Any, *args: Any) -> tuple[PyTree, torch.Tensor, torch.Tensor]:
        """Validate constraint shapes at ``x0`` and complete missing multipliers with zeros."""
        explicit = isinstance(init, tuple) and len(init) == 3
        x0 = init[0] if explicit else init
        h0, g0 = self._constraint_values(x0, *args)
        n_eq = 0 if h0 is None else h0.numel()
        n_ineq = 0 if g0 is None else g0.numel()
        if not explicit:
            ref = tree_leaves(x0)[0]
            return x0, ref.new_zeros(n_eq), ref.new_zeros(n_ineq)
        _, lam0, mu0 = init
        for name, mult, n in (("lam0", lam0, n_eq), ("mu0", mu0, n_ineq)):
            if mult.shape != (n,):
                raise ValueError(
                    f"{self.name}: {name} must have shape ({n},) to match the constraints, "
                    f"got {tuple(mult.shape)}"
                )
        return init

    def run(self, init: Any, *args: Any) -> tuple[Any, SolverInfo]:
        """Solve; ``init`` may be ``x0`` alone (zero multipliers) or ``(x0, lam0, mu0)``."""
        check_tensor_leaves(init, f"{self.name}: init")
        return super().run(tuple(self._split_init(init, *args)), *args)

    def _constraint_values(
        self, x: PyTree, *args: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        h = None if self.eq_constraints is None else self.eq_constraints(x, *args)
        g = None if self.ineq_constraints is None else self.ineq_constraints(x, *args)
        for name, value in (("eq_constraints", h), ("ineq_constraints", g)):
            if value is not None and value.dim() != 1:
                raise ValueError(
                    f"{self.name}: {name} must return a 1-D tensor, got shape {tuple(value.shape)}"
                )
        return h, g

    def _iterate(self, init: Any, *args: Any) -> tuple[Any, SolverInfo]:
        x, lam, mu = init
        tol = resolve_tol(self.tol, x)
        kkt = self.optimality_fn()
        rho = float(self.rho)
        previous_violation = float("inf")
        error = float("inf")
        iterations = 0
        for iterations in range(1, check_maxiter(self.maxiter) + 1):

            def augmented(
                z: PyTree, lam: torch.Tensor = lam, mu: torch.Tensor = mu, rho: float = rho
            ) -> torch.Tensor:
                h, g = self._constraint_values(z, *args)
                value = self.objective(z, *args)
                if h is not None:
                    value = value + torch.dot(lam, h) + 0.5 * rho * torch.dot(h, h)
                if g is not None:
                    shifted = torch.clamp(mu + rho * g, min=0.0)
                    value = value + (torch.dot(shifted, shifted) - torch.dot(mu, mu)) / (2 * rho)
                return value

            grad_and_value = torch.func.grad_and_value(augmented)

            def value_and_grad(
                z: PyTree, grad_and_value: Callable = grad_and_value
            ) -> tuple[torch.Tensor, PyTree]:
                gz, vz = grad_and_value(z)
                return vz, gz

            x, _, _, _ = proximal_gradient_loop(
                value_and_grad,
                lambda y, _eta: y,
                x,
                step_size=None,
                maxiter=self.inner_maxiter,
                tol=0.1 * tol,
                acceleration=True,
            )
            h, g = self._constraint_values(x, *args)
            violation = 0.0
            if h is not None:
                lam = lam + rho * h
                violation = max(violation, float(h.detach().abs().max()) if h.numel() else 0.0)
            if g is not None:
                mu_old = mu
                mu = torch.clamp(mu + rho * g, min=0.0)
                if g.numel():
                    violation = max(
                        violation, float(torch.maximum(g, -mu_old / rho).detach().abs().max())
                    )
            error = float(tree_norm(kkt((x, lam, mu), *args)).detach())
            if error <= tol:
                break
            if violation > 0.25 * previous_violation:
                rho = min(rho * self.rho_growth, self.rho_max)
            previous_violation = violation
        return (x, lam, mu), make_info(self.name, iterations, error, tol)

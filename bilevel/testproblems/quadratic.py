"""Quadratic bilevel problem with closed-form value function and hypergradient."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bilevel.problem import BilevelProblem


@dataclass(frozen=True)
class QuadraticBilevel:
    """Quadratic bilevel problem (the shape of benchopt's bilevel quadratic benchmark)::

        f(x, y) = 1/2 y^T H y - y^T (J x + b)                  (H symmetric positive definite)
        F(x, y) = 1/2 y^T A y + y^T K x + 1/2 x^T C x + c^T y + d^T x

    so that ``y*(x) = H^{-1} (J x + b)`` and, with ``M = H^{-1} J``,
    ``grad h(x) = C x + d + K^T y* + M^T (A y* + K x + c)``: ``h`` is quadratic with Hessian
    ``C + K^T M + M^T K + M^T A M``, made positive definite by :meth:`random`, so the unique
    minimiser ``x*`` solves a linear system.
    """

    H: torch.Tensor
    J: torch.Tensor
    b: torch.Tensor
    A: torch.Tensor
    K: torch.Tensor
    C: torch.Tensor
    c: torch.Tensor
    d: torch.Tensor

    @classmethod
    def random(
        cls,
        dim_x: int = 5,
        dim_y: int = 10,
        seed: int = 0,
        lower_condition: float = 10.0,
        dtype: torch.dtype = torch.float64,
    ) -> QuadraticBilevel:
        """A random instance; ``lower_condition`` is the condition number of ``H``."""
        gen = torch.Generator().manual_seed(seed)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=dtype)

        q, _ = torch.linalg.qr(randn(dim_y, dim_y))
        # math.log10, not a float32 tensor: the instance must not depend on the default dtype
        eigs = torch.logspace(0, math.log10(lower_condition), dim_y, dtype=dtype)
        H = q @ torch.diag(eigs) @ q.T
        a = randn(dim_y, dim_y)
        A = a @ a.T / dim_y
        J, K = randn(dim_y, dim_x), randn(dim_y, dim_x) / dim_y
        M = torch.linalg.solve(H, J)
        hess = K.T @ M + M.T @ K + M.T @ A @ M
        shift = max(0.0, -float(torch.linalg.eigvalsh(hess).min())) + 1.0
        C = shift * torch.eye(dim_x, dtype=dtype)
        return cls(H=H, J=J, b=randn(dim_y), A=A, K=K, C=C, c=randn(dim_y), d=randn(dim_x))

    def lower(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``f(x, y)``."""
        return 0.5 * y @ self.H @ y - y @ (self.J @ x + self.b)

    def upper(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``F(x, y)``."""
        return (
            0.5 * y @ self.A @ y + y @ (self.K @ x) + 0.5 * x @ self.C @ x + self.c @ y + self.d @ x
        )

    def problem(self) -> BilevelProblem:
        """The :class:`~bilevel.BilevelProblem` of this instance."""
        return BilevelProblem(upper=self.upper, lower=self.lower)

    def y_star(self, x: torch.Tensor) -> torch.Tensor:
        """Exact inner solution ``H^{-1} (J x + b)``."""
        return torch.linalg.solve(self.H, self.J @ x + self.b)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``h(x) = F(x, y*(x))``."""
        return self.upper(x, self.y_star(x))

    def hypergradient(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``grad h(x)`` in closed form."""
        y = self.y_star(x)
        M = torch.linalg.solve(self.H, self.J)
        return self.C @ x + self.d + self.K.T @ y + M.T @ (self.A @ y + self.K @ x + self.c)

    def hessian(self) -> torch.Tensor:
        """Exact Hessian of ``h``, ``C + K^T M + M^T K + M^T A M`` with ``M = H^{-1} J``."""
        M = torch.linalg.solve(self.H, self.J)
        return self.C + self.K.T @ M + M.T @ self.K + M.T @ self.A @ M

    def x_star(self) -> torch.Tensor:
        """Exact minimiser of ``h``."""
        return torch.linalg.solve(self.hessian(), -self.hypergradient(torch.zeros_like(self.d)))


@dataclass(frozen=True)
class MultiBlockQuadratic:
    """Multi-block problem from quadratic blocks sharing ``x``::

        min_x (1/m) sum_i F_i(x, y_i*(x)),   y_i*(x) = argmin_y f_i(x, y)

    with ``F_i``, ``f_i`` those of ``blocks[i]`` (same ``dim_x`` and ``dim_y``). ``h`` is the
    mean of the blocks' value functions, so its gradient, Hessian and minimiser are exact.
    """

    blocks: tuple[QuadraticBilevel, ...]

    @classmethod
    def random(
        cls, n_blocks: int = 3, dim_x: int = 3, dim_y: int = 5, seed: int = 0
    ) -> MultiBlockQuadratic:
        """``n_blocks`` instances of :meth:`QuadraticBilevel.random` with seeds ``seed + i``."""
        return cls(
            tuple(QuadraticBilevel.random(dim_x, dim_y, seed=seed + i) for i in range(n_blocks))
        )

    def problem(self) -> BilevelProblem:
        """The multi-block :class:`~bilevel.BilevelProblem` (``n_blocks = m``)."""
        blocks = self.blocks
        return BilevelProblem(
            upper=lambda x, y_i, i: blocks[i].upper(x, y_i),
            lower=lambda x, y_i, i: blocks[i].lower(x, y_i),
            n_blocks=len(blocks),
        )

    def y_star(self, x: torch.Tensor) -> torch.Tensor:
        """Exact inner solutions, stacked along the first dimension."""
        return torch.stack([q.y_star(x) for q in self.blocks])

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``h(x)``."""
        return torch.stack([q.value(x) for q in self.blocks]).mean()

    def hypergradient(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``grad h(x)``."""
        return torch.stack([q.hypergradient(x) for q in self.blocks]).mean(0)

    def hessian(self) -> torch.Tensor:
        """Exact Hessian of ``h``."""
        return torch.stack([q.hessian() for q in self.blocks]).mean(0)

    def x_star(self) -> torch.Tensor:
        """Exact minimiser of ``h``."""
        return torch.linalg.solve(
            self.hessian(), -self.hypergradient(torch.zeros_like(self.blocks[0].d))
        )

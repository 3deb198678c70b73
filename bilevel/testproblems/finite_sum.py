"""Finite-sum (stochastic) version of :class:`~bilevel.testproblems.QuadraticBilevel`, for testing
stochastic methods against the closed forms of its mean, and minibatch iterables."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bilevel.problem import BilevelProblem
from bilevel.testproblems.quadratic import QuadraticBilevel


def _centered(gen: torch.Generator, n: int, *shape: int, scale: float) -> torch.Tensor:
    z = torch.randn(n, *shape, generator=gen)
    return scale * (z - z.mean(0))


@dataclass
class FiniteSumQuadratic:
    """``f = 1/n sum_i f_i``, ``F = 1/m sum_j F_j`` with quadratic components whose mean is
    exactly ``q``: ``f_i(x, y) = 1/2 y'H_i y - y'(J_i x + b_i)`` and likewise for ``F_j``
    (``A_j, K_j, c_j, d_j``; ``C`` shared). A minibatch is a tensor of component indices and
    the objective on it is the mean of those components; ``noise`` scales the zero-mean
    perturbations (``H_i - H`` has spectral norm ``<= noise * lambda_min(H)``, so every
    ``f_i`` stays strongly convex for ``noise < 1``)."""

    q: QuadraticBilevel
    H: torch.Tensor
    J: torch.Tensor
    b: torch.Tensor
    A: torch.Tensor
    K: torch.Tensor
    c: torch.Tensor
    d: torch.Tensor

    @classmethod
    def build(
        cls, q: QuadraticBilevel, n: int = 10, m: int = 5, noise: float = 0.5, seed: int = 0
    ) -> FiniteSumQuadratic:
        dim_y, dim_x = q.J.shape
        gen = torch.Generator().manual_seed(seed)
        S = _centered(gen, n, dim_y, dim_y, scale=1.0)
        S = S + S.transpose(1, 2)
        S = S / float(torch.linalg.matrix_norm(S, ord=2).max())
        S = S * (noise * float(torch.linalg.eigvalsh(q.H).min()))
        SA = _centered(gen, m, dim_y, dim_y, scale=noise / dim_y)
        return cls(
            q=q,
            H=q.H + S,
            J=q.J + _centered(gen, n, dim_y, dim_x, scale=noise),
            b=q.b + _centered(gen, n, dim_y, scale=noise),
            A=q.A + SA + SA.transpose(1, 2),
            K=q.K + _centered(gen, m, dim_y, dim_x, scale=noise / dim_y),
            c=q.c + _centered(gen, m, dim_y, scale=noise),
            d=q.d + _centered(gen, m, dim_x, scale=noise),
        )

    @property
    def n(self) -> int:
        return self.H.shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[0]

    def lower(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        H, J, b = self.H[idx].mean(0), self.J[idx].mean(0), self.b[idx].mean(0)
        return 0.5 * y @ H @ y - y @ (J @ x + b)

    def upper(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        A, K, c, d = (t[idx].mean(0) for t in (self.A, self.K, self.c, self.d))
        return 0.5 * y @ A @ y + y @ (K @ x) + 0.5 * x @ self.q.C @ x + c @ y + d @ x

    def problem(self, lower_data, upper_data) -> BilevelProblem:
        return BilevelProblem(
            upper=self.upper, lower=self.lower, upper_data=upper_data, lower_data=lower_data
        )

    def singletons(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The finite sums as lists of one-component minibatches (lower, upper)."""
        return (
            [torch.tensor([i]) for i in range(self.n)],
            [torch.tensor([j]) for j in range(self.m)],
        )

    def sampled(self) -> BilevelProblem:
        """I.i.d. uniform single-component minibatches (global torch RNG)."""
        return self.problem(Sampled(self.n), Sampled(self.m))


class Sampled:
    """Endless i.i.d. uniform minibatches of component indices, drawn per batch."""

    def __init__(self, n: int, batch_size: int = 1) -> None:
        self.n, self.batch_size = n, batch_size

    def __iter__(self):
        while True:
            yield torch.randint(self.n, (self.batch_size,))


class Shuffled:
    """Random reshuffling: each pass visits the minibatches in a fresh random order."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = batches

    def __iter__(self):
        for k in torch.randperm(len(self.batches)).tolist():
            yield self.batches[k]

"""Standard bilevel problem instances with known solutions, for tests and benchmarks:
closed-form quadratics (single, finite-sum, multi-block) and 61 published small nonlinear
bilevel programs with their best known values (:data:`LITERATURE`, from BASBLib; data
in ``literature.toml``, read by :func:`load_problems`)."""

from __future__ import annotations

from typing import Any

from bilevel.problems.finite_sum import FiniteSumQuadratic, Sampled, Shuffled
from bilevel.problems.literature import LiteratureProblem, literature_problem, load_problems
from bilevel.problems.quadratic import MultiBlockQuadratic, QuadraticBilevel

__all__ = [
    "LITERATURE",
    "FiniteSumQuadratic",
    "LiteratureProblem",
    "MultiBlockQuadratic",
    "QuadraticBilevel",
    "Sampled",
    "Shuffled",
    "literature_problem",
    "load_problems",
]


def __getattr__(name: str) -> Any:  # PEP 562: the table is read on first access
    if name == "LITERATURE":
        from bilevel.problems import literature

        return literature.LITERATURE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

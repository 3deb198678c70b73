"""Standard bilevel problem instances with known solutions, for tests and benchmarks:
closed-form quadratics (single, finite-sum, multi-block) and 61 published small nonlinear
bilevel programs with their best known values (:data:`LITERATURE`, from BASBLib; data
in ``literature.toml``, read by :func:`load_problems`)."""

from __future__ import annotations

from bilevel.testproblems.finite_sum import FiniteSumQuadratic, Sampled, Shuffled
from bilevel.testproblems.literature import (
    LiteratureProblem,
    _module_getattr,
    literature_problem,
    load_problems,
)
from bilevel.testproblems.quadratic import MultiBlockQuadratic, QuadraticBilevel

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

LITERATURE: dict[str, LiteratureProblem]
"""The 61 BASBLib problems by name (:data:`bilevel.testproblems.literature.LITERATURE`; the table
``literature.toml``, read on first access)."""

__getattr__ = _module_getattr(__name__, {"LITERATURE": "literature.toml"})  # read on first access

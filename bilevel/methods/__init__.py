"""Outer algorithms for bilevel problems and the :func:`solve` entry point."""

from __future__ import annotations

from bilevel.methods._base import Method, MethodState, run_method
from bilevel.methods._solve import METHODS, solve
from bilevel.methods.deterministic import AID, ITD, inner_gradient_steps

__all__ = [
    "AID",
    "ITD",
    "METHODS",
    "Method",
    "MethodState",
    "inner_gradient_steps",
    "run_method",
    "solve",
]

"""Warnings and exceptions raised by :mod:`bilevel`.

Non-convergence is never silent: iterative routines emit :class:`ConvergenceWarning`
(which names the residual reached) and report ``converged=False`` in their info record.
"""

from __future__ import annotations

__all__ = [
    "BilevelError",
    "ClosureError",
    "ConvergenceWarning",
    "DivergenceError",
    "InaccurateRootError",
    "NonFiniteError",
]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before reaching its tolerance."""


class BilevelError(RuntimeError):
    """Base class for errors specific to :mod:`bilevel`."""


class ClosureError(BilevelError):
    """A tensor that requires grad is closed over instead of passed as an argument.

    Implicit differentiation only produces gradients for the arguments passed explicitly
    to the decorated solver; a tensor captured from an enclosing scope would silently
    receive no gradient, so :mod:`bilevel` refuses it.
    """


class DivergenceError(BilevelError):
    """An iterate became NaN or infinite (step sizes too large, or an unbounded problem)."""


class NonFiniteError(ValueError):
    """An input (tensor, right-hand side, ...) or a value computed from it (a solver's
    returned root, an objective) holds NaN or infinite values."""


class InaccurateRootError(BilevelError):
    """A solver decorated with :func:`bilevel.implicit.custom_root` returned a point whose
    optimality residual is above the tolerance (with ``on_inaccurate="raise"``)."""

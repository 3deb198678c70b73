"""Validation of hyperparameters (outer algorithms, inner solvers, estimators), with
messages that name the method; no dependencies inside :mod:`bilevel`."""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_positive(method: str, allow_zero: bool = False, **values: Any) -> None:
    """Raise ``ValueError`` unless every value is a finite real ``> 0`` (``>= 0`` with
    ``allow_zero``); ``method`` names the algorithm in the message."""
    for name, value in values.items():
        ok = (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (float(value) >= 0 if allow_zero else float(value) > 0)
        )
        if not ok:
            kind = "non-negative" if allow_zero else "positive"
            raise ValueError(f"{method}: {name} must be a {kind} finite number, got {value!r}")


def check_step_sizes(method: str, allow_zero: bool = False, **values: Any) -> None:
    """:func:`check_positive` for the values that are not ``None`` (``None``: a step size
    chosen automatically at the start of the run)."""
    check_positive(method, allow_zero, **{k: v for k, v in values.items() if v is not None})


def check_count(method: str, minimum: int, **values: Any) -> None:
    """Raise ``ValueError`` unless every value is an integer ``>= minimum``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{method}: {name} must be an integer >= {minimum}, got {value!r}")


def check_projection(method: str, **values: Any) -> None:
    """Raise ``ValueError`` unless every value is ``None`` or callable."""
    for name, value in values.items():
        if value is not None and not callable(value):
            raise ValueError(f"{method}: {name} must be None or a callable, got {value!r}")

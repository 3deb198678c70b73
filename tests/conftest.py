"""Shared test configuration: float64 by default, deterministic seeds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_and_seed():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (``||a - b||`` when ``b = 0``)."""
    denom = float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    return diff / denom if denom > 0 else diff

"""Helpers shared by the recipes: thread count, progress bar, history, linear solver."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any, Self

import torch

from bilevel.linalg import cg


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` threads in PyTorch and in the BLAS libraries that NumPy/SciPy load
    (``0``: leave both unchanged), then restore the previous settings.

    The recipes' problems are small (hundreds of variables): a single thread avoids the
    synchronisation overhead that dominates multi-threaded BLAS at this size (SciPy's
    L-BFGS-B calls BLAS on every iteration; on a busy 2-core machine its threads made the
    hyper-cleaning recipe about ten times slower).
    """
    if n <= 0:
        yield
        return
    # load SciPy's BLAS before limiting: a library loaded later would keep its threads
    import scipy.linalg
    import scipy.optimize  # noqa: F401

    previous = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            pass
        else:
            stack.enter_context(threadpool_limits(limits=n, user_api="blas"))
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


class Progress:
    """A tqdm bar over the outer iterations when ``enabled`` (tqdm imported lazily)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)

    def update(self, **postfix: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def conjugate_gradient(tol: float, maxiter: int | None = None) -> Any:
    """CG for the implicit-differentiation system with a relative tolerance ``tol``."""
    return functools.partial(cg, tol=tol, maxiter=maxiter)


def jsonable(value: Any) -> Any:
    """Floats that JSON can hold: non-finite values become ``None``; tensors become lists."""
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value

"""Helpers shared by the recipes: thread count, progress bar, best iterate (early stopping),
history, linear solver."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator
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


class BestIterate:
    """Early stopping on a validation value (lower is better): remembers the iterate of the
    lowest ``value`` seen by :meth:`update` (the first one on ties), which a recipe returns
    instead of the last iterate; :meth:`warn_if_unsettled` reports a run whose last value
    is worse than its best as not converged.
    """

    def __init__(self) -> None:
        self.value = math.inf
        self.iteration = -1
        self.state: Any = None
        self.last_value = math.nan
        self.last_iteration = -1

    def update(self, iteration: int, value: float, state: Callable[[], Any]) -> bool:
        """Record ``value`` at ``iteration``; ``state()`` (a snapshot, e.g. cloned tensors)
        is taken only for a new best. Returns whether it is one."""
        self.last_value, self.last_iteration = float(value), iteration
        if value < self.value:
            self.value, self.iteration, self.state = float(value), iteration, state()
            return True
        return False

    def warn_if_unsettled(self, what: str, rtol: float = 0.01) -> bool:
        """A :class:`~bilevel.errors.ConvergenceWarning` when the last value exceeds the
        best by more than ``rtol`` (relative to ``|best|``): the iterates had not settled,
        and the best one is returned. Returns whether it warned."""
        from bilevel.errors import ConvergenceWarning

        margin = rtol * max(abs(self.value), 1e-12)
        if not self.last_value > self.value + margin:
            return False
        warnings.warn(
            f"{what}: the last iterate (iteration {self.last_iteration}, validation value "
            f"{self.last_value:.6g}) is worse than the best one (iteration {self.iteration}, "
            f"{self.value:.6g}), which is returned: the iterates have not converged (more "
            "iterations or smaller steps may help)",
            ConvergenceWarning,
            stacklevel=3,
        )
        return True


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

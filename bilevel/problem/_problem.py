"""Implementation of :mod:`bilevel.problem`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.errors import NonFiniteError
from bilevel.tree import PyTree, tree_leaves, tree_map

Objective = Callable[..., torch.Tensor]
Bound = float | torch.Tensor
Bounds = tuple[Bound, Bound]

CONSTRAINT_FIELDS = ("upper_ineq", "upper_eq", "lower_ineq", "lower_eq")


@dataclass(frozen=True, eq=False)  # identity equality: fields hold callables and tensors
class BilevelProblem:
    """``min_x F(x, y*(x))`` subject to ``y*(x) = argmin_y f(x, y)``.

    Parameters
    ----------
    upper:
        ``F(x, y) -> 0-d tensor`` (``F(x, y, batch)`` when ``upper_data`` is given).
    lower:
        ``f(x, y) -> 0-d tensor`` (``f(x, y, batch)`` when ``lower_data`` is given); the
        hypergradient formulas assume ``f(x, .)`` is (locally) strongly convex.
    upper_data, lower_data:
        Optional iterables of minibatches for stochastic methods; deterministic methods
        call the objectives without a batch argument when these are ``None``.
    n_blocks:
        Multi-block form: ``m`` lower-level problems ``y_i = argmin f_i(x, y_i)`` share ``x``
        and ``F = (1/m) sum_i F_i(x, y_i)``. The objectives are then called per block as
        ``F(x, y_i, i[, batch])`` and ``f(x, y_i, i[, batch])``, and ``y`` stacks the blocks
        along the leading dimension of every leaf. :meth:`upper_value` and
        :meth:`lower_value` return the block means; the lower level being separable, the
        mean has the same minimisers, so every method applies unchanged (using all blocks);
        blockwise methods sample blocks through :meth:`block_upper_value` and
        :meth:`block_lower_value`.
    upper_ineq, upper_eq:
        Upper-level constraints ``G(x, y) <= 0`` and ``H(x, y) = 0``; each returns a 1-D
        tensor.
    lower_ineq, lower_eq:
        Lower-level constraints ``g(x, y) <= 0`` and ``h(x, y) = 0`` (1-D tensors); they may
        couple ``x`` and ``y``. The lower level is then ``y*(x) in argmin {f(x, y) : g <= 0,
        h = 0, y in y_bounds}``.
    x_bounds, y_bounds:
        ``(lower, upper)`` pairs of floats or tensors (infinite entries allowed); each side
        broadcasts to the variable's shape or lists its entries in row-major order (see
        :meth:`bounds_like`). Constrained problems are solved by the constrained methods (``"lv-hba"``,
        ``"classical"``); the unconstrained methods refuse them.

    Notes
    -----
    Both objectives receive ``x`` and ``y`` explicitly (no closed-over tensors that need
    gradients), so every estimator in :mod:`bilevel.hypergrad` can differentiate them with
    :mod:`torch.func`.
    """

    upper: Objective
    lower: Objective
    upper_data: Any = None
    lower_data: Any = None
    n_blocks: int | None = None
    upper_ineq: Objective | None = None
    upper_eq: Objective | None = None
    lower_ineq: Objective | None = None
    lower_eq: Objective | None = None
    x_bounds: Bounds | None = None
    y_bounds: Bounds | None = None

    def __post_init__(self) -> None:
        for name in ("upper", "lower"):
            if not callable(getattr(self, name)):
                raise TypeError(
                    f"BilevelProblem.{name} must be callable, got {getattr(self, name)!r}"
                )
        for name in CONSTRAINT_FIELDS:
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"BilevelProblem.{name} must be callable or None, got {value!r}")
        for name in ("x_bounds", "y_bounds"):
            _check_bounds(name, getattr(self, name))
        if self.n_blocks is not None and (not isinstance(self.n_blocks, int) or self.n_blocks < 1):
            raise ValueError(
                f"BilevelProblem.n_blocks must be a positive int, got {self.n_blocks!r}"
            )

    @property
    def is_constrained(self) -> bool:
        """Whether any constraint function or bound is given."""
        return any(getattr(self, name) is not None for name in CONSTRAINT_FIELDS) or (
            self.x_bounds is not None or self.y_bounds is not None
        )

    def constraint_value(self, name: str, x: PyTree, y: PyTree) -> torch.Tensor | None:
        """The value of the constraint field ``name`` at ``(x, y)``, checked.

        Returns ``None`` when the constraint is absent. Raises :class:`ValueError` when the
        function does not return a 1-D tensor and :class:`~bilevel.errors.NonFiniteError`
        when the value holds NaN or infinite entries, naming the field.
        """
        if name not in CONSTRAINT_FIELDS:
            raise ValueError(f"unknown constraint {name!r}; choose one of {CONSTRAINT_FIELDS}")
        fn = getattr(self, name)
        if fn is None:
            return None
        value = _call(name, fn, (x, y))
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"BilevelProblem.{name} must return a 1-D tensor, got {type(value).__name__}"
            )
        if value.dim() != 1:
            raise ValueError(
                f"BilevelProblem.{name} must return a 1-D tensor (one entry per constraint), "
                f"got shape {tuple(value.shape)}"
            )
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteError(
                f"BilevelProblem.{name} returned NaN or infinite values at the given (x, y)"
            )
        return value

    def bounds_like(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_bounds`` or ``y_bounds`` broadcast to the shape, dtype and device of ``like``.

        Each side is a scalar or a tensor that broadcasts to ``like.shape`` (NumPy rules: a
        ``(3,)`` bound applies to every row of a ``(2, 3)`` variable), or, for backward
        compatibility, a tensor with exactly one entry per entry of ``like`` in row-major
        order (a flat ``(6,)`` bound for a ``(2, 3)`` variable), which is reshaped. The two
        rules never disagree: a broadcast that adds no entries is that same reshape. Absent
        bounds give ``(-inf, +inf)``; other shapes raise :class:`ValueError`. Every
        constrained method (``"lv-hba"``, ``"classical"``, the KKT tools) reads the bounds
        through this method.
        """
        if name not in ("x_bounds", "y_bounds"):
            raise ValueError(f"name must be 'x_bounds' or 'y_bounds', got {name!r}")
        bounds = getattr(self, name)
        if bounds is None:
            bounds = (-math.inf, math.inf)
        out = []
        for b in bounds:
            t = torch.as_tensor(b, dtype=like.dtype, device=like.device)
            try:
                out.append(torch.broadcast_to(t, like.shape).clone())
            except RuntimeError as err:
                if t.numel() == like.numel():  # one entry per entry, row-major
                    out.append(t.reshape(like.shape).clone())
                    continue
                raise ValueError(
                    f"BilevelProblem.{name} has shape {tuple(t.shape)}, which does not "
                    f"broadcast to the variable's shape {tuple(like.shape)} (and does not "
                    f"have its {like.numel()} entries)"
                ) from err
        return out[0], out[1]

    def upper_value(self, x: PyTree, y: PyTree, batch: Any = None) -> torch.Tensor:
        """``F(x, y[, batch])``; for a multi-block problem the mean of the block values."""
        if self.n_blocks is not None:
            return self._block_mean(self.block_upper_value, x, y, batch)
        if batch is None:
            return _scalar("upper", _call("upper", self.upper, (x, y)))
        return _scalar("upper", _call("upper", self.upper, (x, y, batch), "x, y, batch"))

    def lower_value(self, x: PyTree, y: PyTree, batch: Any = None) -> torch.Tensor:
        """``f(x, y[, batch])``; for a multi-block problem the mean of the block values."""
        if self.n_blocks is not None:
            return self._block_mean(self.block_lower_value, x, y, batch)
        if batch is None:
            return _scalar("lower", _call("lower", self.lower, (x, y)))
        return _scalar("lower", _call("lower", self.lower, (x, y, batch), "x, y, batch"))

    def block_upper_value(
        self, x: PyTree, y_block: PyTree, block: int, batch: Any = None
    ) -> torch.Tensor:
        """``F_i(x, y_i[, batch])`` of block ``i`` of a multi-block problem."""
        self._require_blocks()
        args = (x, y_block, block) if batch is None else (x, y_block, block, batch)
        signature = "x, y_i, i" if batch is None else "x, y_i, i, batch"
        return _scalar("upper", _call("upper", self.upper, args, signature))

    def block_lower_value(
        self, x: PyTree, y_block: PyTree, block: int, batch: Any = None
    ) -> torch.Tensor:
        """``f_i(x, y_i[, batch])`` of block ``i`` of a multi-block problem."""
        self._require_blocks()
        args = (x, y_block, block) if batch is None else (x, y_block, block, batch)
        signature = "x, y_i, i" if batch is None else "x, y_i, i, batch"
        return _scalar("lower", _call("lower", self.lower, args, signature))

    def _require_blocks(self) -> int:
        """``n_blocks``, raising ``ValueError`` on a single-block problem."""
        if self.n_blocks is None:
            raise ValueError(
                "block values need a multi-block problem (BilevelProblem(..., n_blocks=m))"
            )
        return self.n_blocks

    def _block_mean(
        self, block_value: Callable[..., torch.Tensor], x: PyTree, y: PyTree, batch: Any
    ) -> torch.Tensor:
        m = self._require_blocks()
        for leaf in tree_leaves(y):
            if leaf.dim() == 0 or leaf.shape[0] != m:
                raise ValueError(
                    f"multi-block problem with n_blocks={m}: every leaf of y needs a leading "
                    f"dimension of size {m}, got shape {tuple(leaf.shape)}"
                )
        values = [
            block_value(x, tree_map(lambda leaf, i=i: leaf[i], y), i, batch) for i in range(m)
        ]
        return torch.stack(values).mean()


def _check_bounds(name: str, bounds: Any) -> None:
    """``bounds`` must be a ``(lower, upper)`` pair of floats/tensors with ``lower <= upper``."""
    if bounds is None:
        return
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise ValueError(f"BilevelProblem.{name} must be a (lower, upper) pair, got {bounds!r}")
    low, high = (torch.as_tensor(b, dtype=torch.float64) for b in bounds)
    if torch.isnan(low).any() or torch.isnan(high).any():
        raise ValueError(f"BilevelProblem.{name} contains NaN")
    try:
        inconsistent = bool((low > high).any())
    except RuntimeError as err:  # shapes that do not broadcast
        raise ValueError(
            f"BilevelProblem.{name}: lower and upper bounds have incompatible shapes "
            f"{tuple(low.shape)} and {tuple(high.shape)}"
        ) from err
    if inconsistent:
        raise ValueError(
            f"BilevelProblem.{name} is inconsistent: some lower bound exceeds its upper bound"
        )


#: Exceptions a user's function raises on arguments of the wrong shape or dtype (torch
#: raises RuntimeError for both); they are re-raised with the arguments described.
_ARGUMENT_ERRORS = (RuntimeError, TypeError, ValueError, IndexError)


def describe_argument(value: Any) -> str:
    """``"Tensor(shape=(5,), dtype=torch.float32)"``, or the structure of a pytree of such."""
    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe_argument(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(describe_argument(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return type(value).__name__


def _call(name: str, fn: Callable[..., Any], args: tuple[Any, ...], signature: str = "x, y") -> Any:
    """``fn(*args)``; an error raised inside ``fn`` (a shape or dtype mismatch, say) is
    re-raised with the function's name and the shapes and dtypes of ``x`` and ``y``.

    Errors of exactly ``RuntimeError``, ``TypeError``, ``ValueError`` or ``IndexError`` are
    re-raised as the same type with that context prepended to the message (the original
    is chained as ``__cause__``); subclasses (and :mod:`bilevel`'s own errors) keep their
    type and message and get the context as a note (PEP 678).
    """
    try:
        return fn(*args)
    except _ARGUMENT_ERRORS as exc:
        from bilevel.errors import BilevelError

        if isinstance(exc, BilevelError | NonFiniteError):
            raise
        context = (
            f"BilevelProblem.{name}({signature}) raised "
            f"{type(exc).__name__} with x: {describe_argument(args[0])}, "
            f"y: {describe_argument(args[1])}"
        )
        if type(exc) in _ARGUMENT_ERRORS:
            raise type(exc)(f"{context}: {exc}") from exc
        exc.add_note(context)
        raise


def _scalar(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"the {name} objective must return a scalar tensor, got {shape}")
    return value.reshape(())


@dataclass
class BilevelResult:
    """Outcome of :func:`bilevel.solve`.

    Attributes
    ----------
    x, y:
        Final outer and inner variables.
    status:
        ``"converged"``, ``"max_iterations"``, ``"stopped"`` (by the callback),
        ``"negative_curvature"`` (a stationary point where the lower-level Hessian
        ``d2_yy f`` at the returned ``y`` has a negative eigenvalue, i.e. ``y`` is a saddle
        or a maximum of ``f(x, .)`` that could not be escaped; see :func:`bilevel.solve`)
        or ``"diverged"``: NaN or infinite iterates or hypergradient, finite iterates past
        the overflow scale ``sqrt(finfo(dtype).max)`` or growing geometrically (``1.2x`` at
        each of 30 consecutive iterations, beyond ``1e6`` times the initial scale), or a
        :class:`~bilevel.errors.DivergenceError` raised by the method (see
        :func:`bilevel.methods.run_method`).
    message:
        Human-readable explanation.
    n_iter:
        Outer iterations performed.
    history:
        One list per recorded quantity, one entry per recorded iteration: ``iteration``,
        ``upper_value``, ``hypergrad_norm`` (NaN for a method that forms no
        hypergradient), ``residual`` (the stopping measure,
        :attr:`MethodState.residual <bilevel.methods.MethodState.residual>`; NaN at
        iteration 0), the lower-level optimality measure,
        ``grad_calls``, ``hvp_calls`` (cumulative oracle counts) and ``time`` (seconds since
        the start). The optimality measure is ``lower_grad_norm`` (``||grad_y f(x, y)||``)
        for an unconstrained lower level and ``lower_kkt_residual`` when the lower level
        has constraints (``lower_ineq``, ``lower_eq`` or ``y_bounds``): with ``c = (g,
        finite bounds of y as c <= 0)``, ``r^2 = min_{mu >= 0, nu} ||grad_y f + J_c^T mu +
        J_h^T nu||^2 + ||mu * c||^2 + ||max(c, 0)||^2 + ||h||^2`` (zero exactly at a KKT
        point; ``||grad_y f||`` without constraints;
        :meth:`~bilevel.problem.LowerConstraints.kkt_residual`). Both are NaN for stochastic problems
        (and the KKT residual for pytree variables).
    info:
        Method-specific diagnostics (for example a certified lower-level optimality gap,
        constraint violations or multipliers); see the method's docstring.
    """

    x: PyTree
    y: PyTree
    status: str
    message: str
    n_iter: int
    history: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        """Whether the stopping criterion was met."""
        return self.status == "converged"

    def __repr__(self) -> str:
        """A summary: status, iterations, the shapes of ``x`` and ``y``, the last recorded
        value of each history entry (with its length) and the keys of ``info``; the full
        arrays stay in the attributes."""
        last = ", ".join(
            f"{key}={_short(values[-1])}" for key, values in self.history.items() if values
        )
        length = max((len(v) for v in self.history.values()), default=0)
        return (
            f"BilevelResult(status={self.status!r}, n_iter={self.n_iter}, "
            f"x={_describe(self.x)}, y={_describe(self.y)}, "
            f"history[{length} records; last: {last}], "
            f"info keys={sorted(map(str, self.info))}, message={self.message!r})"
        )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def _describe(tree: PyTree) -> str:
    """``tensor(shape=(3,), float64)`` per leaf; small tensors show their values."""
    leaves = tree_leaves(tree)
    parts = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.numel() <= 4:
                values = ", ".join(f"{v:.4g}" for v in leaf.detach().flatten().tolist())
                parts.append(f"tensor([{values}])")
            else:
                dtype = str(leaf.dtype).removeprefix("torch.")
                parts.append(f"tensor(shape={tuple(leaf.shape)}, {dtype})")
        else:
            parts.append(type(leaf).__name__)
    return (
        parts[0]
        if len(parts) == 1 and not isinstance(tree, dict | list | tuple)
        else ("[" + ", ".join(parts) + "]")
    )

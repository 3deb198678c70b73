"""Exact MILP embedding of the ReLU value network in HiGHS.

A ReLU unit ``h = max(0, a)`` whose pre-activation ``a = w^T v + c`` is known to lie in
``[L, U]`` with ``L < 0 < U`` is modelled exactly with one binary ``z`` (big-M form)::

    h >= a,    h <= a - L (1 - z),    h <= U z,    0 <= h <= U,    z in {0, 1}.

``z = 1`` forces ``h = a >= 0`` and ``z = 0`` forces ``h = 0 >= a``, so the feasible ``h`` is
exactly ``max(0, a)``. Units with ``U <= 0`` are the constant 0 and units with ``L >= 0`` are
the identity: neither needs a variable. The bounds come from interval arithmetic: for an
affine expression over columns ``v`` in the box ``[l, u]``::

    L = c + sum_k min(w_k l_k, w_k u_k),    U = c + sum_k max(w_k l_k, w_k u_k),

applied to each layer's pre-activations as affine functions of the previous layer's ReLU
variables (themselves bounded by ``[0, U]``). Linear layers add no variables: they are
composed into the affine expressions.

For a first-stage item whose decision ``v_i`` is binary and whose features ``f_i`` are
constants, the whole per-item encoder is exactly linear in ``v_i``::

    phi([v_i, f_i]) = phi([0, f_i]) + v_i (phi([1, f_i]) - phi([0, f_i])),

so ``sum_i phi`` is an affine function of ``x`` and needs no binaries at all; items with
general (integer or continuous) inputs, such as the uncertainty ``xi``, get the big-M
embedding of ``phi``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np
import torch
from torch import nn

from bilevel.robust._highs import new_highs

__all__ = [
    "Affine",
    "MilpBuilder",
    "embed_item_set",
    "embed_mlp",
    "embed_value",
    "mlp_layers",
]


def mlp_layers(seq: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(W, b), ...]`` (float64 numpy) of an MLP made of ``Linear`` and ``ReLU`` modules.

    A ReLU is implied between consecutive pairs and none after the last, which is the only
    layout :func:`bilevel.robust.neur2ro.network.mlp` builds; anything else is refused.
    """
    modules = list(seq)
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for k, module in enumerate(modules):
        expect_linear = k % 2 == 0
        if expect_linear and isinstance(module, nn.Linear):
            weight = module.weight.detach().to(torch.float64).cpu().numpy()
            if module.bias is None:
                bias = np.zeros(weight.shape[0])
            else:
                bias = module.bias.detach().to(torch.float64).cpu().numpy()
            layers.append((weight, bias))
        elif not expect_linear and isinstance(module, nn.ReLU):
            continue
        else:
            raise TypeError(
                "only Linear/ReLU alternations ending with a Linear can be embedded, "
                f"got {type(module).__name__} at position {k}"
            )
    if not modules or not isinstance(modules[-1], nn.Linear):
        raise TypeError("the MLP must end with a Linear layer")
    return layers


class MilpBuilder:
    """An incremental MILP on :class:`highspy.Highs` that remembers its column bounds.

    Parameters
    ----------
    feasibility_tol:
        HiGHS primal and MIP feasibility tolerance. Big-M rows multiply integrality errors
        by ``|L|``; the default ``1e-9`` keeps the embedded network exact to about ``1e-7``.
    """

    def __init__(self, *, feasibility_tol: float = 1e-9) -> None:
        self.highs = new_highs()  # silent, banner included
        self.highs.setOptionValue("primal_feasibility_tolerance", feasibility_tol)
        self.highs.setOptionValue("mip_feasibility_tolerance", feasibility_tol)
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[bool] = []
        self.n_binaries_relu = 0

    @property
    def n_cols(self) -> int:
        """Number of columns."""
        return len(self.lower)

    def add_vars(
        self,
        n: int,
        lower: float | np.ndarray,
        upper: float | np.ndarray,
        *,
        integer: bool = False,
        cost: float | np.ndarray = 0.0,
    ) -> np.ndarray:
        """Add ``n`` columns; returns their indices."""
        lower = np.broadcast_to(np.asarray(lower, dtype=float), (n,))
        upper = np.broadcast_to(np.asarray(upper, dtype=float), (n,))
        cost = np.broadcast_to(np.asarray(cost, dtype=float), (n,))
        if np.any(np.isnan(lower)) or np.any(np.isnan(upper)) or np.any(lower > upper):
            raise ValueError("column bounds must satisfy lower <= upper (no NaN)")
        start = self.n_cols
        inf = highspy.kHighsInf
        lo = np.where(np.isfinite(lower), lower, -inf)
        hi = np.where(np.isfinite(upper), upper, inf)
        self.highs.addCols(
            n, cost.copy(), lo, hi, 0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0)
        )
        idx = np.arange(start, start + n, dtype=np.int32)
        if integer:
            self.highs.changeColsIntegrality(
                n, idx, np.full(n, highspy.HighsVarType.kInteger, dtype=np.uint8)
            )
        self.lower.extend(lower.tolist())
        self.upper.extend(upper.tolist())
        self.integer.extend([integer] * n)
        return idx

    def add_row(
        self, lower: float, upper: float, cols: Sequence[int] | np.ndarray, vals: np.ndarray
    ) -> None:
        """Add ``lower <= vals . v[cols] <= upper`` (duplicate columns are merged)."""
        cols = np.asarray(cols, dtype=np.int64)
        vals = np.asarray(vals, dtype=float)
        merged, inverse = np.unique(cols, return_inverse=True)
        acc = np.zeros(len(merged))
        np.add.at(acc, inverse, vals)
        keep = acc != 0.0
        inf = highspy.kHighsInf
        self.highs.addRow(
            lower if np.isfinite(lower) else -inf,
            upper if np.isfinite(upper) else inf,
            int(keep.sum()),
            merged[keep].astype(np.int32),
            acc[keep],
        )

    def add_affine_row(self, expr: Affine, lower: float, upper: float) -> None:
        """``lower <= expr <= upper`` for a scalar affine expression."""
        if expr.size != 1:
            raise ValueError("add_affine_row needs a scalar expression")
        c = float(expr.const[0])
        self.add_row(lower - c, upper - c, expr.cols, expr.coef[0])

    def set_bounds(self, cols: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        """Change column bounds (e.g. to fix inputs after the network has been embedded)."""
        cols = np.asarray(cols, dtype=np.int32)
        lower = np.broadcast_to(np.asarray(lower, dtype=float), cols.shape).copy()
        upper = np.broadcast_to(np.asarray(upper, dtype=float), cols.shape).copy()
        self.highs.changeColsBounds(len(cols), cols, lower, upper)
        for c, lo, hi in zip(cols.tolist(), lower.tolist(), upper.tolist(), strict=True):
            self.lower[c], self.upper[c] = lo, hi

    def set_objective(self, expr: Affine, *, maximize: bool = False) -> None:
        """Objective ``min`` (or ``max``) of a scalar affine expression (replaces costs)."""
        if expr.size != 1:
            raise ValueError("the objective must be a scalar expression")
        n = self.n_cols
        cost = np.zeros(n)
        np.add.at(cost, expr.cols, expr.coef[0])
        self.highs.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
        self.highs.changeObjectiveOffset(float(expr.const[0]))
        sense = highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize
        self.highs.changeObjectiveSense(sense)

    def is_binary(self, col: int) -> bool:
        """Integer column with bounds within ``[0, 1]``."""
        return self.integer[col] and self.lower[col] >= 0.0 and self.upper[col] <= 1.0

    def bounds_of(self, expr: Affine) -> tuple[np.ndarray, np.ndarray]:
        """Interval-arithmetic bounds of each entry of ``expr`` over the column box."""
        lo = np.array([self.lower[c] for c in expr.cols], dtype=float)
        hi = np.array([self.upper[c] for c in expr.cols], dtype=float)
        pos = np.clip(expr.coef, 0.0, None)
        neg = np.clip(expr.coef, None, 0.0)
        with np.errstate(invalid="ignore"):
            # 0 * inf = nan must mean 0: a zero coefficient does not see an infinite bound
            low = expr.const + _safe_dot(pos, lo) + _safe_dot(neg, hi)
            high = expr.const + _safe_dot(pos, hi) + _safe_dot(neg, lo)
        return low, high

    def relu(self, pre: Affine) -> tuple[Affine, np.ndarray, np.ndarray]:
        """Exact ``max(0, pre)`` (big-M where needed); returns it and the bounds of ``pre``."""
        low, high = self.bounds_of(pre)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(
                "big-M ReLU embedding needs finite bounds on every network input; "
                "give the first-stage variables and the uncertainty set finite bounds"
            )
        k = pre.size
        coef_pre = np.zeros_like(pre.coef)
        const = np.zeros(k)
        new_cols: list[int] = []
        new_rows: list[int] = []
        for j in range(k):
            if high[j] <= 0.0:
                continue  # always inactive: the constant 0
            if low[j] >= 0.0:
                coef_pre[j] = pre.coef[j]  # always active: the identity
                const[j] = pre.const[j]
                continue
            h = int(self.add_vars(1, 0.0, high[j])[0])
            z = int(self.add_vars(1, 0.0, 1.0, integer=True)[0])
            self.n_binaries_relu += 1
            cols = np.concatenate([[h], pre.cols])
            # h - a >= 0
            self.add_row(pre.const[j], np.inf, cols, np.concatenate([[1.0], -pre.coef[j]]))
            # h - a - L z <= -L
            self.add_row(
                -np.inf,
                pre.const[j] - low[j],
                np.concatenate([cols, [z]]),
                np.concatenate([[1.0], -pre.coef[j], [-low[j]]]),
            )
            # h - U z <= 0
            self.add_row(-np.inf, 0.0, [h, z], np.array([1.0, -high[j]]))
            new_cols.append(h)
            new_rows.append(j)
        coef_new = np.zeros((k, len(new_cols)))
        coef_new[new_rows, np.arange(len(new_cols))] = 1.0
        out = Affine(
            np.concatenate([np.asarray(new_cols, dtype=np.int64), pre.cols]),
            np.hstack([coef_new, coef_pre]),
            const,
        )
        return out, low, high

    def solve(self, *, time_limit: float | None = None, mip_rel_gap: float = 1e-9) -> str:
        """Run HiGHS; returns the model status as a string."""
        if time_limit is not None:
            self.highs.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
        self.highs.setOptionValue("mip_rel_gap", mip_rel_gap)
        self.highs.run()
        return self.highs.modelStatusToString(self.highs.getModelStatus())

    def has_solution(self) -> bool:
        """Whether HiGHS holds a feasible (primal) solution."""
        status = self.highs.getInfo().primal_solution_status
        return status == highspy.SolutionStatus.kSolutionStatusFeasible

    def values(self, cols: np.ndarray) -> np.ndarray:
        """Solution values of ``cols``."""
        sol = np.asarray(self.highs.getSolution().col_value)
        return sol[np.asarray(cols, dtype=np.int64)]

    def value_of(self, expr: Affine) -> np.ndarray:
        """Value of ``expr`` at the current solution."""
        return expr.const + expr.coef @ self.values(expr.cols)


def _safe_dot(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    prod = a * v[None, :]
    prod[a == 0.0] = 0.0
    return prod.sum(axis=1)


@dataclass
class Affine:
    """A vector of affine expressions ``coef @ v[cols] + const`` over MILP columns."""

    cols: np.ndarray  # (p,) int
    coef: np.ndarray  # (k, p)
    const: np.ndarray  # (k,)

    def __post_init__(self) -> None:
        self.cols = np.asarray(self.cols, dtype=np.int64).reshape(-1)
        self.const = np.asarray(self.const, dtype=float).reshape(-1)
        self.coef = np.asarray(self.coef, dtype=float).reshape(len(self.const), len(self.cols))
        if len(np.unique(self.cols)) != len(self.cols):
            merged, inverse = np.unique(self.cols, return_inverse=True)
            coef = np.zeros((len(self.const), len(merged)))
            np.add.at(coef.T, inverse, self.coef.T)
            self.cols, self.coef = merged, coef

    @property
    def size(self) -> int:
        """Number of entries."""
        return len(self.const)

    @classmethod
    def constant(cls, values: np.ndarray) -> Affine:
        """Expressions with no columns."""
        values = np.asarray(values, dtype=float).reshape(-1)
        return cls(np.zeros(0, np.int64), np.zeros((len(values), 0)), values)

    @classmethod
    def variables(cls, cols: np.ndarray) -> Affine:
        """``v[cols]`` itself."""
        cols = np.asarray(cols, dtype=np.int64)
        return cls(cols, np.eye(len(cols)), np.zeros(len(cols)))

    @classmethod
    def sum(cls, parts: Sequence[Affine]) -> Affine:
        """Entrywise sum of expressions of equal size."""
        k = parts[0].size
        if any(p.size != k for p in parts):
            raise ValueError("cannot add affine expressions of different sizes")
        return cls(
            np.concatenate([p.cols for p in parts]),
            np.hstack([p.coef for p in parts]),
            np.sum([p.const for p in parts], axis=0),
        )

    @classmethod
    def concat(cls, parts: Sequence[Affine]) -> Affine:
        """Stack expressions (``[a; b]``)."""
        cols = np.concatenate([p.cols for p in parts])
        k = sum(p.size for p in parts)
        coef = np.zeros((k, len(cols)))
        r = c = 0
        for p in parts:
            coef[r : r + p.size, c : c + len(p.cols)] = p.coef
            r += p.size
            c += len(p.cols)
        return cls(cols, coef, np.concatenate([p.const for p in parts]))

    def linear(self, weight: np.ndarray, bias: np.ndarray | None = None) -> Affine:
        """``weight @ self + bias``."""
        const = weight @ self.const
        if bias is not None:
            const = const + bias
        return Affine(self.cols, weight @ self.coef, const)

    def scale(self, a: float, b: float = 0.0) -> Affine:
        """``a * self + b``."""
        return Affine(self.cols, a * self.coef, a * self.const + b)


def embed_mlp(
    builder: MilpBuilder,
    seq: nn.Sequential,
    inputs: Affine,
    *,
    bounds_log: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Affine:
    """Embed ``seq`` (``Linear/ReLU/.../Linear``) applied to ``inputs``; returns its output.

    The pre-activation bounds of every ReLU layer are appended to ``bounds_log`` if given.
    """
    layers = mlp_layers(seq)
    expr = inputs
    for k, (weight, bias) in enumerate(layers):
        expr = expr.linear(weight, bias)
        if k < len(layers) - 1:
            expr, low, high = builder.relu(expr)
            if bounds_log is not None:
                bounds_log.append((low, high))
    return expr


@torch.no_grad()
def _mlp_numpy(seq: nn.Sequential, inputs: np.ndarray) -> np.ndarray:
    """Exact float64 forward pass of an MLP on numpy inputs (rows)."""
    out = np.asarray(inputs, dtype=float)
    layers = mlp_layers(seq)
    for k, (weight, bias) in enumerate(layers):
        out = out @ weight.T + bias
        if k < len(layers) - 1:
            out = np.maximum(out, 0.0)
    return out


def embed_item_set(
    builder: MilpBuilder,
    phi: nn.Sequential,
    rho: nn.Sequential,
    cols: np.ndarray,
    features: np.ndarray,
    *,
    var_index: int = 0,
    bounds_log: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Affine:
    """Embed ``rho(sum_i phi(item_i))`` where ``item_i`` is ``features_i`` with the MILP
    column ``v_i = cols[i]`` inserted at position ``var_index`` (``[v_i, f_i]`` by default;
    the joint encoder's ``[x_i, xi_i, f_i]`` puts a variable ``xi_i`` at position 1).

    Fixed columns (``lower == upper``) give constants; binary columns give the exact linear
    form ``phi(item_i(0)) + v_i (phi(item_i(1)) - phi(item_i(0)))`` (no new variables); other
    columns get the big-M embedding of ``phi``.
    """
    cols = np.asarray(cols, dtype=np.int64)
    features = np.asarray(features, dtype=float).reshape(len(cols), -1)
    if not 0 <= var_index <= features.shape[1]:
        raise ValueError(f"var_index must lie in [0, {features.shape[1]}], got {var_index}")

    def item_at(i: int, v: float) -> np.ndarray:
        return np.insert(features[i], var_index, v)

    parts: list[Affine] = []
    for i, col in enumerate(cols):
        lo, hi = builder.lower[col], builder.upper[col]
        if lo == hi:
            parts.append(Affine.constant(_mlp_numpy(phi, item_at(i, lo)[None, :])[0]))
        elif builder.is_binary(int(col)):
            out0, out1 = _mlp_numpy(phi, np.stack([item_at(i, 0.0), item_at(i, 1.0)]))
            parts.append(Affine(np.array([col]), (out1 - out0)[:, None], out0))
        else:
            width = mlp_layers(phi)[0][0].shape[1]
            # the item input as an affine expression in the single column v_i
            item = Affine(
                np.array([col]), np.eye(width)[:, var_index : var_index + 1], item_at(i, 0.0)
            )
            parts.append(embed_mlp(builder, phi, item, bounds_log=bounds_log))
    return embed_mlp(builder, rho, Affine.sum(parts), bounds_log=bounds_log)


def embed_value(
    builder: MilpBuilder,
    psi: nn.Sequential,
    x_code: Affine,
    xi_code: Affine,
    *,
    bounds_log: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> Affine:
    """Embed ``psi([x_code, xi_code])`` (scalar output)."""
    return embed_mlp(builder, psi, Affine.concat([x_code, xi_code]), bounds_log=bounds_log)

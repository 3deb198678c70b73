r"""Two-stage robust problems ``min_x max_{xi in Xi} min_{y in Y(x, xi)} cost(x, xi, y)``.

The model
---------
Everything is stored in *cost-minimisation* form; ``sense`` only says how results are
reported (``"max"``: the instance's own objective is ``-cost``, e.g. profit for the
knapsack). With ``x`` the first-stage decision (``n_x`` entries), ``xi`` the uncertain
parameter (``n_xi`` entries) and ``y`` the recourse (``n_y`` entries):

.. math::

    \text{cost}(x, \xi, y) = c^T x + \xi^T C x + d^T y + \xi^T D y

    X = \{x : A x \le b,\ x^{lb} \le x \le x^{ub},\ x_j \in \mathbb{Z}\ (j \text{ integer})\}

    \Xi = \{\xi : P \xi \le q,\ \xi^{lb} \le \xi \le \xi^{ub}\} \quad (\text{bounded})

    Y(x, \xi) = \{y : W(\xi) y + T(\xi) x \le h(\xi),\ y^{lb} \le y \le y^{ub},
    \ y_j \in \mathbb{Z}\ (j \text{ integer})\}

with the affine maps ``W(xi) = W + sum_k xi_k W_xi[k]``, ``T(xi) = T + sum_k xi_k T_xi[k]``
and ``h(xi) = h + H xi``. ``C``, ``D``, ``W_xi``, ``T_xi`` and ``H`` may be ``None`` (zero).
The problem has *objective uncertainty only* when ``W_xi``, ``T_xi`` and ``H`` are all zero
(:attr:`TwoStageRobustProblem.has_constraint_uncertainty` is then ``False``).

Variable types are strings of ``"B"`` (binary), ``"I"`` (integer) and ``"C"``
(continuous), one character per variable.

API for other modules (e.g. :mod:`bilevel.robust.neur2ro`)
----------------------------------------------------------
- :class:`UncertaintySet` (``budget``, ``box``, ``polytope`` constructors; ``P, q, lb, ub``;
  ``contains``; ``sample``; ``interior_point``).
- :class:`TwoStageRobustProblem`: the arrays above plus ``sense``, ``name`` and
  ``metadata`` (free-form, JSON-serialisable; the knapsack stores its item data there:
  ``metadata["items"] = {"pbar", "phat", "t", "c", "f"}`` and ``metadata["capacity"]``).

  - ``first_stage_cost(x, xi)``: ``c^T x + xi^T C x``;
  - ``recourse_data(x, xi)``: ``(d(xi), W(xi), rhs)`` with ``rhs = h(xi) - T(xi) x``;
  - ``second_stage_value(x, xi)`` -> :class:`SecondStageSolution` (exact MILP with HiGHS;
    ``value = +inf`` when ``Y(x, xi)`` is empty; raises :class:`UnboundedRecourseError`);
  - ``total_cost(x, xi)``: ``first_stage_cost + second_stage_value`` (cost form);
  - ``to_objective(cost)``: cost -> the instance's own sense (``-cost`` when ``sense="max"``);
  - ``check_first_stage(x)``: raises ``ValueError`` when ``x`` is not in ``X``.
- :class:`WorstCase`: the exact worst case of a fixed ``x``, computed by
  :func:`bilevel.robust.adversary.worst_case` (``bilevel.robust.worst_case(problem, x)``).
- :class:`RobustResult`: what every method returns (bounds and objective in the instance's
  own sense; see its docstring), built from cost-form bounds by
  :meth:`RobustResult.from_cost_bounds`; :func:`own_bounds` and :func:`cost_gap` are the
  one sense and gap conversion.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bilevel.errors import BilevelError, ConvergenceWarning
from bilevel.robust._milp import solve_milp

__all__ = [
    "RobustResult",
    "SecondStageSolution",
    "TwoStageRobustProblem",
    "UnboundedRecourseError",
    "UncertaintySet",
    "WorstCase",
    "cost_gap",
    "own_bounds",
]

_TYPES = frozenset("BIC")
FEAS_TOL = 1e-6


class UnboundedRecourseError(BilevelError):
    """The second-stage problem is unbounded below for some first-stage decision/scenario."""


def _vec(name: str, value: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a vector, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must have length {n}, got {arr.shape[0]}")
    return arr


def _mat(name: str, value: Any, shape: tuple[int, ...], *, allow_none: bool = True):
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required")
    arr = np.asarray(value, dtype=float)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite entries")
    if not np.any(arr):
        return None
    return arr


def _finite(name: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite entries")


def _types(name: str, value: str, n: int) -> str:
    if not isinstance(value, str) or len(value) != n or not set(value) <= _TYPES:
        raise ValueError(
            f"{name} must be a string of {n} characters from 'B' (binary), 'I' (integer), "
            f"'C' (continuous); got {value!r}"
        )
    return value


def _bounds(name: str, types: str, lb: Any, ub: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    lb = np.zeros(n) if lb is None else _vec(f"{name}_lb", lb, n).copy()
    ub = np.full(n, math.inf) if ub is None else _vec(f"{name}_ub", ub, n).copy()
    if np.any(np.isnan(lb)) or np.any(np.isnan(ub)) or np.any(lb > ub):
        raise ValueError(f"{name} bounds must satisfy {name}_lb <= {name}_ub (and not be NaN)")
    for j, t in enumerate(types):
        if t == "B":
            lb[j], ub[j] = max(lb[j], 0.0), min(ub[j], 1.0)
            if lb[j] > ub[j]:
                raise ValueError(f"binary {name}[{j}] has empty bounds")
    return lb, ub


@dataclass(frozen=True)
class UncertaintySet:
    r"""A bounded polytope ``Xi = {xi : P xi <= q, lb <= xi <= ub}``.

    Use the constructors :meth:`budget` (``{xi in [lb, ub]^n : sum_i xi_i <= gamma}``, the
    knapsack's set with ``[0, 1]``), :meth:`box` and :meth:`polytope`. ``lb`` and ``ub``
    are always finite (for a general polytope they are computed by LPs, and an unbounded
    set is refused).
    """

    P: np.ndarray
    q: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    kind: str = "polytope"
    gamma: float | None = None

    def __post_init__(self) -> None:
        P = np.asarray(self.P, dtype=float)
        lb = _vec("uncertainty lb", self.lb)
        n = lb.shape[0]
        if n == 0:
            raise ValueError("the uncertainty set must have at least one dimension")
        if P.ndim != 2 or P.shape[1] != n:
            raise ValueError(f"P must have shape (k, {n}), got {P.shape}")
        q = _vec("q", self.q, P.shape[0])
        ub = _vec("uncertainty ub", self.ub, n)
        _finite("P", P)
        _finite("q", q)
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "q", q)
        if np.any(np.isnan(lb)) or np.any(np.isnan(ub)) or np.any(lb > ub):
            raise ValueError("uncertainty bounds must satisfy lb <= ub")
        if not (np.all(np.isfinite(lb)) and np.all(np.isfinite(ub))):
            lb, ub = self._bounding_box(P, q, lb, ub)
        object.__setattr__(self, "lb", lb)
        object.__setattr__(self, "ub", ub)
        if self.kind not in ("budget", "box", "polytope"):
            raise ValueError(f"unknown uncertainty-set kind {self.kind!r}")
        # Non-empty?
        sol = solve_milp(np.zeros(n), P, None, q, lb, ub)
        if sol.status != "optimal":
            raise ValueError("the uncertainty set is empty")

    @staticmethod
    def _bounding_box(P, q, lb, ub):
        n = lb.shape[0]
        new_lb, new_ub = lb.copy(), ub.copy()
        for k in range(n):
            e = np.zeros(n)
            e[k] = 1.0
            for maximize, out in ((False, new_lb), (True, new_ub)):
                sol = solve_milp(e, P, None, q, lb, ub, maximize=maximize)
                if sol.status == "infeasible":
                    raise ValueError("the uncertainty set is empty")
                if sol.status != "optimal":
                    raise ValueError(
                        f"the uncertainty set is unbounded in coordinate {k}; "
                        "give finite bounds or more constraints"
                    )
                out[k] = sol.objective
        return new_lb, new_ub

    @classmethod
    def budget(cls, n: int, gamma: float, lb: float = 0.0, ub: float = 1.0) -> UncertaintySet:
        """``{xi in [lb, ub]^n : sum_i xi_i <= gamma}``."""
        if not (math.isfinite(gamma) and gamma >= n * lb):
            raise ValueError(f"budget gamma={gamma} must be finite and >= n*lb")
        return cls(
            P=np.ones((1, n)),
            q=np.array([float(gamma)]),
            lb=np.full(n, float(lb)),
            ub=np.full(n, float(ub)),
            kind="budget",
            gamma=float(gamma),
        )

    @classmethod
    def box(cls, lb: Any, ub: Any) -> UncertaintySet:
        """``{xi : lb <= xi <= ub}`` (finite bounds)."""
        lb = _vec("lb", lb)
        ub = _vec("ub", ub, lb.shape[0])
        if not (np.all(np.isfinite(lb)) and np.all(np.isfinite(ub))):
            raise ValueError("a box uncertainty set needs finite bounds")
        return cls(P=np.zeros((0, lb.shape[0])), q=np.zeros(0), lb=lb, ub=ub, kind="box")

    @classmethod
    def polytope(cls, P: Any, q: Any, lb: Any = None, ub: Any = None) -> UncertaintySet:
        """``{xi : P xi <= q, lb <= xi <= ub}``; missing bounds are computed (must be finite)."""
        P = np.asarray(P, dtype=float)
        if P.ndim != 2:
            raise ValueError(f"P must be a matrix, got shape {P.shape}")
        n = P.shape[1]
        lb = np.full(n, -math.inf) if lb is None else lb
        ub = np.full(n, math.inf) if ub is None else ub
        return cls(P=P, q=q, lb=lb, ub=ub, kind="polytope")

    @property
    def dim(self) -> int:
        return int(self.lb.shape[0])

    def contains(self, xi: Any, tol: float = FEAS_TOL) -> bool:
        xi = np.asarray(xi, dtype=float)
        return bool(
            xi.shape == (self.dim,)
            and np.all(xi >= self.lb - tol)
            and np.all(xi <= self.ub + tol)
            and np.all(self.P @ xi <= self.q + tol)
        )

    def sample(self, n_samples: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n_samples`` points of ``Xi`` (rows): uniform in the box, then pulled into ``Xi``.

        Each box sample ``u`` is mapped to ``c + s (u - c)`` with ``c`` =
        :meth:`interior_point` and the largest ``s in [0, 1]`` keeping it in ``Xi`` (points
        already in ``Xi`` are kept). Not uniform on ``Xi``: a sampler for training data, not
        for statistics.
        """
        rng = np.random.default_rng(rng)
        centre = self.interior_point()
        u = rng.uniform(self.lb, self.ub, size=(n_samples, self.dim))
        if self.P.shape[0] == 0:
            return u
        direction = u - centre
        slack = self.q - self.P @ centre  # >= 0
        growth = direction @ self.P.T  # (n_samples, k)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(growth > 0, slack / growth, np.inf)
        s = np.clip(ratio.min(axis=1), 0.0, 1.0)
        return centre + s[:, None] * direction

    def interior_point(self) -> np.ndarray:
        """A deep point of ``Xi``: maximises the common slack ``t`` of all rows.

        ``P_k xi + ||P_k|| t <= q_k`` and ``lb + t <= xi <= ub - t`` (the Chebyshev centre
        for the Euclidean norm); the first scenario of CCG and the centre of :meth:`sample`.
        """
        n = self.dim
        rows = [np.hstack([self.P, np.linalg.norm(self.P, axis=1, keepdims=True)])]
        rows.append(np.hstack([np.eye(n), np.ones((n, 1))]))
        rows.append(np.hstack([-np.eye(n), np.ones((n, 1))]))
        A = np.vstack(rows)
        rhs = np.concatenate([self.q, self.ub, -self.lb])
        c = np.zeros(n + 1)
        c[-1] = 1.0
        lb = np.concatenate([self.lb, [0.0]])
        ub = np.concatenate([self.ub, [math.inf]])
        sol = solve_milp(c, A, None, rhs, lb, ub, maximize=True)
        return sol.x[:n] if sol.x is not None else self.lb.copy()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "budget":
            out.update(n=self.dim, gamma=self.gamma, lb=float(self.lb[0]), ub=float(self.ub[0]))
        elif self.kind == "box":
            out.update(lb=self.lb.tolist(), ub=self.ub.tolist())
        else:
            out.update(
                P=self.P.tolist(), q=self.q.tolist(), lb=self.lb.tolist(), ub=self.ub.tolist()
            )
        return out


@dataclass
class SecondStageSolution:
    """``Q(x, xi) = min_{y in Y(x, xi)} d(xi)^T y`` (cost form, recourse part only).

    ``value`` is ``+inf`` and ``y`` is ``None`` when ``Y(x, xi)`` is empty; ``status`` is
    ``"optimal"``, ``"infeasible"`` or ``"time_limit"`` (then ``value`` is ``nan``).
    """

    value: float
    y: np.ndarray | None
    status: str


@dataclass
class WorstCase:
    """Exact worst case of a fixed first-stage decision ``x``.

    Attributes
    ----------
    cost:
        ``max_{xi in Xi} [first_stage_cost(x, xi) + Q(x, xi)]`` (cost form; ``+inf`` when
        some scenario leaves the recourse infeasible).
    objective:
        The same in the instance's own sense (``-cost`` for ``sense="max"``).
    xi, y:
        A worst-case scenario and an optimal recourse for it (``y`` is ``None`` when the
        recourse is infeasible there).
    status:
        ``"optimal"`` (exact) or ``"time_limit"`` (then ``cost`` is the best lower bound
        found and ``upper_bound`` the proven upper bound, cost form).
    upper_bound:
        Proven upper bound on the worst-case cost (equal to ``cost`` when exact).
    n_iter:
        Iterations of the adversarial column/constraint generation.
    """

    cost: float
    objective: float
    xi: np.ndarray
    y: np.ndarray | None
    status: str
    upper_bound: float
    n_iter: int

    @classmethod
    def from_cost(
        cls,
        problem: TwoStageRobustProblem,
        cost: float,
        xi: Any,
        y: np.ndarray | None,
        status: str,
        upper_bound: float,
        n_iter: int,
    ) -> WorstCase:
        """Build the record from a cost-form value (``objective`` follows the sense)."""
        return cls(
            cost=float(cost),
            objective=float(problem.to_objective(cost)),
            xi=np.asarray(xi, dtype=float),
            y=y,
            status=status,
            upper_bound=float(upper_bound),
            n_iter=n_iter,
        )


@dataclass
class TwoStageRobustProblem:
    r"""``min_{x in X} max_{xi in Xi} min_{y in Y(x, xi)} c^T x + xi^T C x + d^T y + xi^T D y``.

    See the module docstring for the full model. Shapes: ``c (n_x,)``, ``C (n_xi, n_x)``,
    ``A (m_x, n_x)``, ``b (m_x,)``, ``d (n_y,)``, ``D (n_xi, n_y)``, ``W (m_y, n_y)``,
    ``T (m_y, n_x)``, ``h (m_y,)``, ``W_xi (n_xi, m_y, n_y)``, ``T_xi (n_xi, m_y, n_x)``,
    ``H (m_y, n_xi)``. ``sense="max"`` means the instance's own objective is ``-cost``.
    """

    c: np.ndarray
    x_types: str
    uncertainty: UncertaintySet
    d: np.ndarray
    y_types: str
    W: np.ndarray
    T: np.ndarray
    h: np.ndarray
    x_lb: np.ndarray | None = None
    x_ub: np.ndarray | None = None
    A: np.ndarray | None = None
    b: np.ndarray | None = None
    C: np.ndarray | None = None
    y_lb: np.ndarray | None = None
    y_ub: np.ndarray | None = None
    D: np.ndarray | None = None
    W_xi: np.ndarray | None = None
    T_xi: np.ndarray | None = None
    H: np.ndarray | None = None
    sense: Literal["min", "max"] = "min"
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.uncertainty, UncertaintySet):
            raise TypeError("uncertainty must be an UncertaintySet")
        if self.sense not in ("min", "max"):
            raise ValueError(f"sense must be 'min' or 'max', got {self.sense!r}")
        self.c = _vec("c", self.c)
        _finite("c", self.c)
        n_x = self.c.shape[0]
        self.d = _vec("d", self.d)
        _finite("d", self.d)
        n_y = self.d.shape[0]
        n_xi = self.uncertainty.dim
        if n_x == 0:
            raise ValueError("the problem needs at least one first-stage variable")
        self.x_types = _types("x_types", self.x_types, n_x)
        self.y_types = _types("y_types", self.y_types, n_y)
        self.x_lb, self.x_ub = _bounds("x", self.x_types, self.x_lb, self.x_ub, n_x)
        self.y_lb, self.y_ub = _bounds("y", self.y_types, self.y_lb, self.y_ub, n_y)
        W = np.asarray(self.W, dtype=float)
        if W.ndim != 2 or W.shape[1] != n_y:
            raise ValueError(f"W must have shape (m_y, {n_y}), got {W.shape}")
        m_y = W.shape[0]
        _finite("W", W)
        self.W = W
        self.T = _mat("T", self.T, (m_y, n_x), allow_none=False)
        if self.T is None:
            self.T = np.zeros((m_y, n_x))
        self.h = _vec("h", self.h, m_y)
        _finite("h", self.h)
        if self.A is None:
            self.A = np.zeros((0, n_x))
            self.b = np.zeros(0)
        else:
            self.A = np.asarray(self.A, dtype=float)
            if self.A.ndim != 2 or self.A.shape[1] != n_x:
                raise ValueError(f"A must have shape (m_x, {n_x}), got {self.A.shape}")
            _finite("A", self.A)
            if self.b is None:
                raise ValueError("A is given but b is not")
            self.b = _vec("b", self.b, self.A.shape[0])
            _finite("b", self.b)
        self.C = _mat("C", self.C, (n_xi, n_x))
        self.D = _mat("D", self.D, (n_xi, n_y))
        self.W_xi = _mat("W_xi", self.W_xi, (n_xi, m_y, n_y))
        self.T_xi = _mat("T_xi", self.T_xi, (n_xi, m_y, n_x))
        self.H = _mat("H", self.H, (m_y, n_xi))

    # ---------------------------------------------------------------- sizes and flags
    @property
    def n_x(self) -> int:
        return int(self.c.shape[0])

    @property
    def n_y(self) -> int:
        return int(self.d.shape[0])

    @property
    def n_xi(self) -> int:
        return self.uncertainty.dim

    @property
    def m_y(self) -> int:
        return int(self.W.shape[0])

    @property
    def has_constraint_uncertainty(self) -> bool:
        """Whether ``Y(x, xi)`` depends on ``xi`` (``W_xi``, ``T_xi`` or ``H`` nonzero)."""
        return self.W_xi is not None or self.T_xi is not None or self.H is not None

    @property
    def x_integer(self) -> np.ndarray:
        return np.array([t != "C" for t in self.x_types], dtype=bool)

    @property
    def y_integer(self) -> np.ndarray:
        return np.array([t != "C" for t in self.y_types], dtype=bool)

    # ---------------------------------------------------------------- evaluation
    def to_objective(self, cost: float) -> float:
        """A cost (internal, minimised) in the instance's own sense."""
        return -cost if self.sense == "max" else cost

    def from_objective(self, value: float) -> float:
        """The instance's own objective value as a cost."""
        return -value if self.sense == "max" else value

    def first_stage_cost(self, x: Any, xi: Any) -> float:
        """``c^T x + xi^T C x``."""
        x = np.asarray(x, dtype=float)
        out = float(self.c @ x)
        if self.C is not None:
            out += float(np.asarray(xi, dtype=float) @ (self.C @ x))
        return out

    def recourse_data(self, x: Any, xi: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(d(xi), W(xi), h(xi) - T(xi) x)`` of the second-stage MILP at ``(x, xi)``."""
        x = np.asarray(x, dtype=float)
        xi = np.asarray(xi, dtype=float)
        d = self.d if self.D is None else self.d + xi @ self.D
        W = self.W if self.W_xi is None else self.W + np.tensordot(xi, self.W_xi, axes=1)
        T = self.T if self.T_xi is None else self.T + np.tensordot(xi, self.T_xi, axes=1)
        h = self.h if self.H is None else self.h + self.H @ xi
        return d, W, h - T @ x

    def second_stage_value(
        self, x: Any, xi: Any, *, time_limit: float | None = None, solver: str = "highs"
    ) -> SecondStageSolution:
        """Exact ``Q(x, xi) = min_{y in Y(x, xi)} d(xi)^T y`` by HiGHS (or SCIP).

        Raises
        ------
        UnboundedRecourseError
            When the second stage is unbounded below.
        """
        d, W, rhs = self.recourse_data(x, xi)
        sol = solve_milp(
            d,
            W,
            None,
            rhs,
            self.y_lb,
            self.y_ub,
            self.y_integer,
            time_limit=time_limit,
            solver=solver,
        )
        if sol.status == "infeasible":
            return SecondStageSolution(math.inf, None, "infeasible")
        if sol.status == "unbounded":
            raise UnboundedRecourseError(
                "the second-stage problem is unbounded below at the given (x, xi): "
                "bound the recourse variables or its cost"
            )
        if sol.status == "time_limit":
            return SecondStageSolution(math.nan, None, "time_limit")
        if sol.status != "optimal":
            raise BilevelError(f"second-stage MILP ended with status {sol.status!r}")
        y = sol.x.copy()
        y[self.y_integer] = np.round(y[self.y_integer])
        return SecondStageSolution(float(d @ y), y, "optimal")

    def total_cost(self, x: Any, xi: Any) -> float:
        """``c^T x + xi^T C x + Q(x, xi)`` (``+inf`` when the recourse is infeasible)."""
        return self.first_stage_cost(x, xi) + self.second_stage_value(x, xi).value

    def check_first_stage(self, x: Any, tol: float = FEAS_TOL) -> np.ndarray:
        """Return ``x`` as a float array; raise ``ValueError`` unless ``x in X``."""
        x = np.asarray(x, dtype=float)
        if x.shape != (self.n_x,):
            raise ValueError(f"x must have shape ({self.n_x},), got {x.shape}")
        _finite("x", x)
        if np.any(x < self.x_lb - tol) or np.any(x > self.x_ub + tol):
            raise ValueError("x violates its bounds")
        integer = self.x_integer
        if np.any(np.abs(x[integer] - np.round(x[integer])) > tol):
            raise ValueError("x is not integral where it must be")
        if self.A.shape[0] and np.any(self.A @ x > self.b + tol):
            raise ValueError("x violates the first-stage constraints A x <= b")
        return x


@dataclass
class RobustResult:
    """Outcome of :func:`bilevel.robust.solve` (any method).

    All values are in the instance's *own sense* (``problem.sense``): for a maximisation
    problem (the knapsack's profit) ``objective`` is a profit, ``lower_bound`` is the
    worst-case profit of the incumbent and ``upper_bound`` a proven bound on the optimal
    worst-case profit; for a minimisation problem ``upper_bound`` is the incumbent's
    worst-case cost and ``lower_bound`` the proven bound.

    Attributes
    ----------
    x:
        The returned first-stage decision (``None`` when none was found).
    objective:
        The exact worst-case value of ``x`` (``max_xi min_y`` evaluated exactly, never by
        sampling); ``nan`` when ``x`` is ``None`` or when the time limit stopped the exact
        evaluation of the only candidate (then ``info["objective_bounds"]`` holds bounds).
    status:
        ``"optimal"`` (gap closed), ``"time_limit"``, ``"max_iterations"``,
        ``"stalled"``, ``"infeasible"`` (no first-stage decision has a feasible recourse in
        every scenario), ``"unbounded"`` or, for heuristics, ``"heuristic"`` (no
        optimality claim).
    lower_bound, upper_bound, gap:
        Bounds on the optimal worst-case value and the relative gap
        ``(upper - lower) / max(1, |incumbent|)`` (``nan`` where a method has none).
    n_iter:
        Iterations (CCG: master problems solved).
    time:
        Wall-clock seconds.
    history:
        One list per quantity, one entry per iteration: ``iteration``, ``lower_bound``,
        ``upper_bound``, ``gap``, ``time``.
    info:
        Method-specific details (number of scenarios, message, data-generation and
        training times for learned methods, ...).
    method:
        ``"exact"``, ``"neur2ro"``, ...
    xi, y:
        A worst-case scenario of ``x`` and the optimal second-stage decision of ``x`` in it
        (from the exact evaluation; ``None`` when there is none, ``y`` also when the
        recourse is infeasible in ``xi``).
    """

    x: np.ndarray | None
    objective: float
    status: str
    lower_bound: float
    upper_bound: float
    gap: float
    n_iter: int
    time: float
    history: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    method: str = "exact"
    xi: np.ndarray | None = None
    y: np.ndarray | None = None

    @classmethod
    def from_cost_bounds(
        cls,
        lb: float,
        ub: float,
        sense: str,
        *,
        x: np.ndarray | None,
        worst: WorstCase | None,
        status: str,
        n_iter: int,
        time: float,
        history: dict[str, list[float]] | None = None,
        info: dict[str, Any] | None = None,
        method: str = "exact",
        warning: str | None = None,
    ) -> RobustResult:
        """The result of a run that ends with cost-form bounds ``lb <= optimum <= ub``.

        ``lb``, ``ub``: proven bounds on the robust optimum in cost form (``ub`` is the
        worst-case cost of the incumbent ``x``; ``+-inf`` or ``nan`` where a method has
        none), converted to the instance's ``sense`` by :func:`own_bounds`, with ``gap =``
        :func:`cost_gap` ``(lb, ub)`` (``nan`` when ``lb`` is ``nan``). ``worst`` is the exact
        evaluation of ``x``: ``objective`` is its value when it is exact, else ``nan`` with
        ``info["objective_bounds"]`` (own sense). ``info["xi"]``/``info["y"]`` and the fields
        ``xi``/``y`` hold its scenario and recourse. A ``status`` of ``"time_limit"``,
        ``"max_iterations"`` or ``"stalled"`` emits :class:`~bilevel.errors.ConvergenceWarning`
        (``warning``, or a sentence with the status and the gap).
        """
        info = dict(info or {})
        objective = math.nan
        xi = y = None
        if x is not None and worst is not None:
            xi, y = worst.xi, worst.y
            info.update(xi=xi, y=y, objective_exact=worst.status == "optimal")
            if worst.status == "optimal":
                objective = worst.objective
            else:  # the time ran out while evaluating x: bounds, no value
                info["objective_bounds"] = own_bounds(worst.cost, worst.upper_bound, sense)
        lower, upper = own_bounds(lb, ub, sense)
        gap = math.nan if math.isnan(lb) or math.isnan(ub) else cost_gap(lb, ub)
        if status in ("time_limit", "max_iterations", "stalled"):
            warnings.warn(
                warning or f"{method} stopped with status {status!r}, gap {gap:.3g}",
                ConvergenceWarning,
                stacklevel=3,
            )
        return cls(
            x=x,
            objective=float(objective),
            status=status,
            lower_bound=lower,
            upper_bound=upper,
            gap=gap,
            n_iter=n_iter,
            time=time,
            history=history if history is not None else {},
            info=info,
            method=method,
            xi=xi,
            y=y,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: arrays as lists, and every non-finite float (``nan``:
        not available, ``+-inf``: no bound yet) as ``None``, so that the JSON holds numbers
        or ``null`` only (strict JSON, no ``NaN``/``Infinity`` tokens or strings)."""

        def conv(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return [conv(u) for u in v.tolist()]
            if isinstance(v, np.generic):
                return conv(v.item())
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {str(k): conv(u) for k, u in v.items()}
            if isinstance(v, list | tuple):
                return [conv(u) for u in v]
            return v

        return {
            "method": self.method,
            "status": self.status,
            "objective": conv(self.objective),
            "x": conv(self.x) if self.x is not None else None,
            "lower_bound": conv(self.lower_bound),
            "upper_bound": conv(self.upper_bound),
            "gap": conv(self.gap),
            "n_iter": self.n_iter,
            "time": self.time,
            "xi": conv(self.xi) if self.xi is not None else None,
            "y": conv(self.y) if self.y is not None else None,
            "history": conv(self.history),
            "info": conv(self.info),
        }


def own_bounds(lb: float, ub: float, sense: str) -> tuple[float, float]:
    """Cost-form bounds ``lb <= cost <= ub`` as ``(lower, upper)`` in the instance's sense
    (``(-ub, -lb)`` for ``sense="max"``)."""
    return (-ub, -lb) if sense == "max" else (lb, ub)


def cost_gap(lb: float, ub: float) -> float:
    """Relative gap ``max(ub - lb, 0) / max(1, |ub|)`` of cost-form bounds, ``ub`` being the
    incumbent's worst-case cost (``inf`` unless both are finite)."""
    if not (math.isfinite(lb) and math.isfinite(ub)):
        return math.inf
    return max(ub - lb, 0.0) / max(1.0, abs(ub))

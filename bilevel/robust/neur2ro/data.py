"""Training data for Neur2RO: sampled ``(x, xi)`` pairs labelled with exact values.

For a problem ``min_x max_xi min_y c^T x + xi^T C x + d(xi)^T y`` (cost form, see
:mod:`bilevel.robust.model`), the network learns the *scenario-dependent* part of the
value of ``x`` in scenario ``xi``::

    G(x, xi) = xi^T C x + Q(x, xi),    Q(x, xi) = min_{y in Y(x, xi)} d(xi)^T y,

so that ``c^T x + G(x, xi)`` is the total cost (the paper's knapsack label is ``Q``; its
capital-budgeting label includes the first-stage cost; ``G`` covers both). Every label is
computed exactly by the HiGHS second-stage MILP of the model.

Sampling follows the paper (Section 7 / appendix): first-stage decisions are binary vectors
whose density is itself uniform (``p ~ U(0, 1)``, ``x_i ~ Bernoulli(p)``), integer ones are
uniform on their bounds; decisions violating ``A x <= b`` are projected onto ``X`` in the
L1 norm by a small MILP. Scenarios mix interior points of ``Xi``
(:meth:`~bilevel.robust.model.UncertaintySet.sample`) with vertices of ``Xi`` (LP optima in
random directions): the adversarial problem over the network is solved to optimality, and
its solutions tend to lie on the boundary of ``Xi``.

Per-item features (the DeepSets inputs besides the decision value) come from
:func:`instance_features`: the item data for the knapsack (as in the paper: weight, nominal
profit, degradation, outsourcing cost, repair weight and capacity), the project data for
capital budgeting, and otherwise generic column statistics of the model's arrays.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bilevel.errors import BilevelError
from bilevel.robust._milp import solve_milp
from bilevel.robust.model import TwoStageRobustProblem

__all__ = [
    "InstanceFeatures",
    "Neur2RODataset",
    "generate_dataset",
    "instance_features",
    "label_scale",
    "sample_first_stage",
    "sample_scenarios",
]


@dataclass(frozen=True)
class InstanceFeatures:
    """Constant per-item inputs of the value network for one instance.

    Attributes
    ----------
    x:
        ``(n_x, d_x)``: features of first-stage item ``i`` (paired with ``x_i``).
    xi:
        ``(n_xi, d_xi)``: features of uncertainty component ``j`` (paired with ``xi_j``).
    kind:
        Which featurizer produced them (``"knapsack"``, ``"capital_budgeting"``,
        ``"generic"``); a trained model only accepts instances of its own kind.
    scale:
        Instance scale of the labels (see :func:`label_scale`).
    aligned:
        Whether first-stage item ``i`` and uncertainty component ``i`` are the same object
        with the same features (``n_x = n_xi`` and ``x == xi``), which the joint encoder
        of :class:`~bilevel.robust.neur2ro.network.SetValueNetwork` needs.
    """

    x: np.ndarray
    xi: np.ndarray
    kind: str
    scale: float
    aligned: bool = False


def label_scale(problem: TwoStageRobustProblem) -> float:
    """A data-free bound on ``|G(x, xi)|`` for ``x, y`` in the unit box.

    ``s = sum|d| + max|xi| (sum|C| + sum|D|)`` (entrywise sums, at least 1e-12). Labels are
    divided by ``s`` before training, so one network serves instances of different sizes
    and magnitudes.
    """
    xi_max = float(np.max(np.abs(np.concatenate([problem.uncertainty.lb, problem.uncertainty.ub]))))
    s = float(np.abs(problem.d).sum())
    for M in (problem.C, problem.D):
        if M is not None:
            s += xi_max * float(np.abs(M).sum())
    return max(s, 1e-12)


def _stats(M: np.ndarray | None, n_rows: int, axis: int) -> np.ndarray:
    """``[sum, min, max]`` along ``axis`` (zeros when ``M`` is absent)."""
    if M is None or M.size == 0:
        return np.zeros((n_rows, 3))
    return np.stack([M.sum(axis=axis), M.min(axis=axis), M.max(axis=axis)], axis=1)


def instance_features(problem: TwoStageRobustProblem) -> InstanceFeatures:
    """Per-item features of ``problem`` (see the module docstring)."""
    meta = problem.metadata or {}
    kind = meta.get("problem")
    if kind == "knapsack" and "items" in meta:
        it = meta["items"]
        cols = [np.asarray(it[k], dtype=float) for k in ("c", "pbar", "phat", "f", "t")]
        n = problem.n_x
        feats = np.stack([*cols, np.full(n, float(meta["capacity"]))], axis=1)
        if problem.n_xi != n:
            raise ValueError("knapsack metadata does not match the problem's dimensions")
        return InstanceFeatures(feats, feats.copy(), "knapsack", label_scale(problem), aligned=True)
    if kind == "capital_budgeting" and "Phi" in meta:
        cbar = np.asarray(meta["cbar"], dtype=float)
        rbar = np.asarray(meta["rbar"], dtype=float)
        Phi = np.asarray(meta["Phi"], dtype=float)
        Psi = np.asarray(meta["Psi"], dtype=float)
        n, k = Phi.shape
        budget, theta = float(meta["budget"]), float(meta["theta"])
        x_feats = np.hstack(
            [
                cbar[:, None],
                rbar[:, None],
                Phi,
                Psi,
                np.full((n, 1), budget),
                np.full((n, 1), theta),
            ]
        )
        # factor j: its effect on total cost and total profit, and the spread over projects
        xi_feats = np.stack(
            [
                (Phi * cbar[:, None]).sum(axis=0) / 2.0,
                (Psi * rbar[:, None]).sum(axis=0) / 2.0,
                np.abs(Phi * cbar[:, None]).sum(axis=0) / 2.0,
                np.abs(Psi * rbar[:, None]).sum(axis=0) / 2.0,
                np.full(k, budget),
                np.full(k, theta),
            ],
            axis=1,
        )
        return InstanceFeatures(x_feats, xi_feats, "capital_budgeting", label_scale(problem))
    # generic: column statistics of every array that touches x_i / xi_j
    n_x, n_xi = problem.n_x, problem.n_xi
    unc = problem.uncertainty
    T_xi_cols = None if problem.T_xi is None else problem.T_xi.sum(axis=0)
    x_feats = np.hstack(
        [
            problem.c[:, None],
            problem.x_lb[:, None],
            problem.x_ub[:, None],
            _stats(problem.T.T, n_x, 1),
            _stats(None if problem.C is None else problem.C.T, n_x, 1),
            _stats(None if T_xi_cols is None else T_xi_cols.T, n_x, 1),
            _stats(problem.A.T if problem.A.shape[0] else None, n_x, 1),
        ]
    )
    W_xi_sum = None if problem.W_xi is None else problem.W_xi.reshape(n_xi, -1)
    xi_feats = np.hstack(
        [
            unc.lb[:, None],
            unc.ub[:, None],
            _stats(problem.C, n_xi, 1),
            _stats(problem.D, n_xi, 1),
            _stats(None if problem.H is None else problem.H.T, n_xi, 1),
            _stats(W_xi_sum, n_xi, 1),
            _stats(unc.P.T if unc.P.shape[0] else None, n_xi, 1),
        ]
    )
    x_feats = np.where(np.isfinite(x_feats), x_feats, 0.0)
    return InstanceFeatures(x_feats, xi_feats, "generic", label_scale(problem))


def _project_first_stage(problem: TwoStageRobustProblem, target: np.ndarray) -> np.ndarray | None:
    """``argmin_{x in X} ||x - target||_1`` (MILP with ``t >= |x - target|``)."""
    n = problem.n_x
    m = problem.A.shape[0]
    # variables [x (n), t (n)]
    cost = np.concatenate([np.zeros(n), np.ones(n)])
    eye = np.eye(n)
    rows = [
        np.hstack([problem.A, np.zeros((m, n))]),
        np.hstack([eye, -eye]),
        np.hstack([-eye, -eye]),
    ]
    upper = np.concatenate([problem.b, target, -target])
    lb = np.concatenate([problem.x_lb, np.zeros(n)])
    ub = np.concatenate([problem.x_ub, np.full(n, np.inf)])
    integrality = np.concatenate([problem.x_integer, np.zeros(n, dtype=bool)])
    sol = solve_milp(cost, np.vstack(rows), None, upper, lb, ub, integrality, time_limit=10.0)
    if sol.x is None:
        return None
    x = sol.x[:n].copy()
    x[problem.x_integer] = np.round(x[problem.x_integer])
    return x


def sample_first_stage(
    problem: TwoStageRobustProblem, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_samples`` first-stage decisions in ``X`` (rows); see the module docstring."""
    lb, ub = problem.x_lb, problem.x_ub
    if not (np.all(np.isfinite(lb)) and np.all(np.isfinite(ub))):
        raise ValueError(
            "Neur2RO needs finite bounds on every first-stage variable (x_lb, x_ub) to sample "
            "decisions and to embed the network"
        )
    out = np.empty((n_samples, problem.n_x))
    integer = problem.x_integer
    for s in range(n_samples):
        p = rng.uniform()
        u = np.where(rng.uniform(size=problem.n_x) < p, ub, lb)  # binary: Bernoulli(p)
        general = ~(np.isclose(lb, 0.0) & np.isclose(ub, 1.0))
        u[general] = rng.uniform(lb[general], ub[general])
        u[integer & general] = np.round(u[integer & general])
        if problem.A.shape[0] and np.any(problem.A @ u > problem.b + 1e-9):
            projected = _project_first_stage(problem, u)
            if projected is None:
                raise ValueError("the first-stage feasible set X is empty")
            u = projected
        out[s] = u
    return out


def sample_scenarios(
    problem: TwoStageRobustProblem,
    n_samples: int,
    rng: np.random.Generator,
    *,
    vertex_fraction: float = 0.3,
) -> np.ndarray:
    """``n_samples`` scenarios of ``Xi`` (rows): interior samples and random vertices."""
    unc = problem.uncertainty
    n_vertex = round(vertex_fraction * n_samples)
    pts = [unc.sample(n_samples - n_vertex, rng)] if n_samples > n_vertex else []
    if n_vertex:
        verts = np.empty((n_vertex, unc.dim))
        for s in range(n_vertex):
            direction = rng.normal(size=unc.dim)
            sol = solve_milp(direction, unc.P, None, unc.q, unc.lb, unc.ub, maximize=True)
            verts[s] = np.clip(sol.x, unc.lb, unc.ub)
        pts.append(verts)
    out = np.vstack(pts)
    return out[rng.permutation(len(out))]


@dataclass
class Neur2RODataset:
    """Labelled samples for one or several instances.

    Attributes
    ----------
    problems:
        The instances.
    features:
        :func:`instance_features` of each instance.
    instance:
        ``(N,)`` index into ``problems`` of each sample.
    x, xi:
        First-stage decision and scenario of each sample (lists of arrays: instances may
        differ in size).
    label:
        ``(N,)`` exact ``G(x, xi) = xi^T C x + Q(x, xi)`` (cost units).
    group:
        ``(N,)`` index of the sampled first-stage decision of each sample (samples of one
        group share ``x`` and differ in ``xi``).
    generation_time:
        Seconds spent sampling and labelling.
    n_infeasible:
        Samples dropped because ``Y(x, xi)`` was empty (no label exists).
    """

    problems: list[TwoStageRobustProblem]
    features: list[InstanceFeatures]
    instance: np.ndarray
    x: list[np.ndarray]
    xi: list[np.ndarray]
    label: np.ndarray
    group: np.ndarray
    generation_time: float = 0.0
    n_infeasible: int = 0
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)


def _label_chunk(
    problem: TwoStageRobustProblem,
    xs: np.ndarray,
    xis: np.ndarray,
    time_limit: float | None,
) -> list[float | None]:
    """Exact labels ``G(x, xi)`` of the pairs ``(xs[i], xis[i])`` (``None``: the recourse is
    infeasible). The unit of parallel work: plain arrays in, floats out (picklable)."""
    out: list[float | None] = []
    for x, xi in zip(xs, xis, strict=True):
        sol = problem.second_stage_value(x, xi, time_limit=time_limit)
        if sol.status == "infeasible":
            out.append(None)
        elif sol.status != "optimal":
            raise BilevelError(
                f"a second-stage MILP ended with status {sol.status!r} (time limit per "
                f"sample {time_limit} s): its label would not be exact"
            )
        else:
            out.append(problem.first_stage_cost(x, xi) - float(problem.c @ x) + sol.value)
    return out


def _label(
    tasks: list[tuple[int, np.ndarray, np.ndarray]],
    problems: list[TwoStageRobustProblem],
    time_limit: float | None,
    n_jobs: int | None,
    progress: bool,
    chunk: int = 25,
) -> list[float | None]:
    """Labels of ``tasks = [(instance, x, xi), ...]`` in order, in chunks of ``chunk`` pairs
    of one instance; ``n_jobs`` other than 1 runs the chunks with :class:`joblib.Parallel`
    (its active backend: loky by default, Ray or Dask under
    :func:`joblib.parallel_config`)."""
    chunks: list[tuple[int, list[int]]] = []
    for i, (k, _, _) in enumerate(tasks):
        if chunks and chunks[-1][0] == k and len(chunks[-1][1]) < chunk:
            chunks[-1][1].append(i)
        else:
            chunks.append((k, [i]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc="labelling", unit="MILP", leave=False, delay=2.0)

    def args(k: int, idx: list[int]):
        xs = np.array([tasks[i][1] for i in idx])
        xis = np.array([tasks[i][2] for i in idx])
        return problems[k], xs, xis, time_limit

    if n_jobs == 1:
        results = (_label_chunk(*args(k, idx)) for k, idx in chunks)
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_label_chunk)(*args(k, idx)) for k, idx in chunks
        )
    labels: list[float | None] = []
    for out in results:
        labels += out
        if bar is not None:
            bar.update(len(out))
    if bar is not None:
        bar.close()
    return labels


def generate_dataset(
    problems: TwoStageRobustProblem | Sequence[TwoStageRobustProblem],
    *,
    n_first_stage: int = 50,
    n_scenarios: int = 10,
    vertex_fraction: float = 0.3,
    seed: int = 0,
    time_limit_per_sample: float | None = 30.0,
    n_jobs: int | None = 1,
    progress: bool = False,
) -> Neur2RODataset:
    """Sample ``n_first_stage`` decisions per instance and ``n_scenarios`` scenarios per
    decision, and label each pair with the exact ``G(x, xi)``.

    The paper uses 500 instances x 10 decisions x 50 scenarios (knapsack and capital
    budgeting) with a 30 s limit per second-stage MILP. Pairs whose recourse is infeasible
    are dropped and counted in ``n_infeasible``; a sample whose MILP hits the time limit
    raises (its label would not be exact).

    Sampling runs in this process (one ``seed``, so the samples do not depend on
    ``n_jobs``); labelling, an embarrassingly parallel batch of exact MILPs, runs in chunks
    on :class:`joblib.Parallel` when ``n_jobs != 1`` (``-1``: all cores). The backend is
    joblib's active one: loky processes by default; on a cluster, the same call under
    ``with joblib.parallel_config(backend="ray"):`` (after ``ray.init()`` and
    ``ray.util.joblib.register_ray()``) or ``backend="dask"`` (with a
    ``dask.distributed.Client``) runs on its workers. ``progress`` shows a tqdm bar on
    stderr.
    """
    if isinstance(problems, TwoStageRobustProblem):
        problems = [problems]
    problems = list(problems)
    if not problems:
        raise ValueError("generate_dataset needs at least one problem")
    for name, value in (("n_first_stage", n_first_stage), ("n_scenarios", n_scenarios)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0.0 <= vertex_fraction <= 1.0:
        raise ValueError(f"vertex_fraction must lie in [0, 1], got {vertex_fraction}")
    if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs == 0):
        raise ValueError(f"n_jobs must be a nonzero int or None, got {n_jobs!r}")
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    features = [instance_features(p) for p in problems]
    kinds = {f.kind for f in features}
    if len(kinds) > 1:
        raise ValueError(f"all instances of a dataset must share one feature kind, got {kinds}")
    tasks: list[tuple[int, np.ndarray, np.ndarray]] = []
    task_group: list[int] = []
    n_groups = 0
    for k, problem in enumerate(problems):
        for x in sample_first_stage(problem, n_first_stage, rng):
            n_groups += 1
            for xi in sample_scenarios(problem, n_scenarios, rng, vertex_fraction=vertex_fraction):
                tasks.append((k, x, xi))
                task_group.append(n_groups - 1)
    labels = _label(tasks, problems, time_limit_per_sample, n_jobs, progress)
    keep = [i for i, label in enumerate(labels) if label is not None]
    if not keep:
        raise ValueError(
            "every sampled (x, xi) pair has an infeasible recourse: no training labels"
        )
    return Neur2RODataset(
        problems=problems,
        features=features,
        instance=np.asarray([tasks[i][0] for i in keep], dtype=np.int64),
        x=[tasks[i][1] for i in keep],
        xi=[tasks[i][2] for i in keep],
        label=np.asarray([labels[i] for i in keep], dtype=float),
        group=np.asarray([task_group[i] for i in keep], dtype=np.int64),
        generation_time=time.perf_counter() - start,
        n_infeasible=len(labels) - len(keep),
        info={
            "n_first_stage": n_first_stage,
            "n_scenarios": n_scenarios,
            "vertex_fraction": vertex_fraction,
            "seed": seed,
            "n_jobs": n_jobs,
        },
    )

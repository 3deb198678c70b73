r"""Neur2RO: column-and-constraint generation with a learned value function.

Dumouchelle, Julien, Kurtz and Khalil (ICLR 2024). With ``NN(x, xi)`` the trained estimate
of ``G(x, xi) = xi^T C x + Q(x, xi)`` (:class:`~bilevel.robust.neur2ro.estimator.Neur2ROValueModel`),
each iteration solves two MILPs in which the ReLU network is embedded exactly
(:mod:`bilevel.robust.neur2ro.embedding`):

**Main problem** over the scenarios ``Xi' = {xi^1..xi^K}`` found so far. In the paper's
*argmax* form (``main_form="argmax"``, the default and the paper's knapsack setting) the
network only *selects* the worst scenario and its recourse is optimised exactly::

    min_{x in X, y^1..y^K}  c^T x + G_{k*}(x, y^{k*})
        s.t.  k* in argmax_k NN(x, xi^k),   y^k in Y(x, xi^k)  (k = 1..K),

with ``G_k(x, y) = xi^{kT} C x + d(xi^k)^T y``. The argmax is modelled with binaries
``s_k`` (``sum_k s_k = 1``), a variable ``t >= NN(x, xi^k)`` for all ``k`` and
``t <= NN(x, xi^k) + M_k (1 - s_k)``, and the objective with ``z >= G_k - M'_k (1 - s_k)``;
the big-M constants come from interval bounds. ``main_form="max"`` instead minimises
``c^T x + max_k NN(x, xi^k)`` (no recourse copies). Requiring ``y^k in Y(x, xi^k)`` for every
found scenario is what CCG's master does; it also makes scenarios that cut off ``x`` for
infeasibility effective.

**Adversarial problem** for the main problem's ``x``: ``max_{xi in Xi} NN(x, xi)``.

**Stopping rules** (paper, Section 4 and its code): stop when
``|NN(x, xi*) - max_k NN(x, xi^k)| <= tol |NN(x, xi*)|`` (the adversary finds nothing
predicted to be worse), when ``xi*`` is already in ``Xi'`` (L1 distance below
``duplicate_tol``), after ``max_iterations`` main problems, or at the time limit. The last
main problem's ``x`` is returned (the loop starts with ``Xi'`` empty: ``min c^T x``); a
main problem cut short by a time limit does not count: the decision of the last main
problem solved to optimality is returned instead of its possibly poor incumbent (or of no
incumbent at all). Only the first main problem's incumbent is accepted as it is, there
being no earlier decision.

**Exact evaluation.** The returned ``x`` is evaluated by the model's exact worst case
(:func:`bilevel.robust.adversary.worst_case`), never by sampling. Two
additions to the paper use that evaluation; both add the exact worst-case scenario
``xi^e`` to the main problem *as in exact CCG* (a recourse copy and ``z >= G_e(x, y^e)``,
no network) and resume the loop:

* *feasibility repair* (always on, at most ``max_repairs``): when ``xi^e`` leaves ``x``
  without a feasible recourse (constraint uncertainty, e.g. capital budgeting; the paper
  uses a feasibility network or problem-specific exact constraints instead);
* *exact refinement* (``exact_refinements`` rounds, default 0 = the paper): when the
  network under-estimated the worst case of ``x``. The best exactly evaluated decision is
  then returned. With unlimited rounds the method is exact: it stops when ``xi^e`` is
  already in the main problem, and then the main problem's value certifies ``x``.

**Bound.** In the argmax form every term of the main objective is the exact cost of some
scenario of ``Xi`` for ``x``, so for every ``x`` the main objective is at most ``x``'s
worst-case cost: the main problem's optimum (HiGHS's dual bound) is a proven bound on the
robust optimum, reported as the result's other bound and ``gap`` (the ``"max"`` form, whose
terms are predictions, gives no bound). The main problem with no scenario at all is
excluded.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bilevel.robust._deadline import Deadline
from bilevel.robust.adversary import worst_case
from bilevel.robust.model import RobustResult, TwoStageRobustProblem, own_bounds
from bilevel.robust.neur2ro.data import generate_dataset
from bilevel.robust.neur2ro.embedding import (
    Affine,
    MilpBuilder,
    embed_item_set,
    embed_mlp,
    embed_value,
)
from bilevel.robust.neur2ro.estimator import Neur2ROValueModel, PreparedInstance

__all__ = ["solve_adversarial", "solve_main", "solve_neur2ro", "train_value_model"]


def _prediction_expr(
    builder: MilpBuilder,
    model: Neur2ROValueModel,
    prep: PreparedInstance,
    x_code: Affine,
    xi_code: Affine,
) -> Affine:
    """Separate encoder: ``psi([x_code, xi_code])`` in cost units."""
    net = model.network_
    out = embed_value(builder, net.psi, x_code, xi_code)
    return out.scale(prep.factor, prep.offset)


def _joint_prediction_expr(
    builder: MilpBuilder,
    model: Neur2ROValueModel,
    prep: PreparedInstance,
    cols: np.ndarray,
    fixed: np.ndarray,
    *,
    variable: str,
) -> Affine:
    """Joint encoder: ``psi(rho(sum_i phi([x_i, xi_i, f_i])))`` in cost units, with the
    MILP columns ``cols`` as ``x`` (``variable="x"``, ``fixed`` the scenario) or as ``xi``
    (``variable="xi"``, ``fixed`` the first-stage decision)."""
    net = model.network_
    feats = np.hstack([np.asarray(fixed, dtype=float)[:, None], prep.x_features])
    var_index = 0 if variable == "x" else 1
    code = embed_item_set(builder, net.phi, net.rho, cols, feats, var_index=var_index)
    return embed_mlp(builder, net.psi, code).scale(prep.factor, prep.offset)


def _recourse_copy(
    b: MilpBuilder, problem: TwoStageRobustProblem, xcols: np.ndarray, xi: np.ndarray
) -> Affine:
    """Add ``y in Y(x, xi)`` (a copy of the recourse) and return ``xi^T C x + d(xi)^T y``."""
    n = problem.n_x
    d, W, h_xi = problem.recourse_data(np.zeros(n), xi)  # at x = 0 the rhs is h(xi)
    T_xi = problem.T
    if problem.T_xi is not None:
        T_xi = problem.T + np.tensordot(xi, problem.T_xi, axes=1)
    ycols = b.add_vars(problem.n_y, problem.y_lb, problem.y_ub)
    yint = np.flatnonzero(problem.y_integer)
    if len(yint):
        b.highs.changeColsIntegrality(len(yint), ycols[yint], np.ones(len(yint), dtype=np.uint8))
        for j in yint:
            b.integer[int(ycols[j])] = True
    for r in range(W.shape[0]):  # W(xi) y + T(xi) x <= h(xi)
        b.add_row(
            -np.inf, float(h_xi[r]), np.concatenate([ycols, xcols]), np.concatenate([W[r], T_xi[r]])
        )
    Cx = np.zeros(n) if problem.C is None else xi @ problem.C
    return Affine(np.concatenate([xcols, ycols]), np.concatenate([Cx, d])[None, :], [0.0])


def _add_geq(b: MilpBuilder, var: int, expr: Affine, *, big_m: float = 0.0, s: int = -1) -> None:
    """``var >= expr - big_m (1 - v[s])`` (plain ``var >= expr`` when ``big_m == 0``)."""
    cols = np.concatenate([[var], expr.cols])
    vals = np.concatenate([[1.0], -expr.coef[0]])
    if big_m:
        cols = np.concatenate([cols, [s]])
        vals = np.concatenate([vals, [-big_m]])
    b.add_row(float(expr.const[0]) - big_m, np.inf, cols, vals)


def solve_main(
    problem: TwoStageRobustProblem,
    model: Neur2ROValueModel,
    prep: PreparedInstance,
    scenarios: list[np.ndarray],
    *,
    exact_scenarios: list[np.ndarray] | None = None,
    form: str = "argmax",
    time_limit: float | None = None,
    mip_rel_gap: float = 1e-6,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Solve the main problem over ``scenarios`` (see the module docstring).

    ``exact_scenarios`` (feasibility repairs and exact refinements) enter as in exact CCG:
    a recourse copy ``y^e in Y(x, xi^e)`` and ``z >= G_e(x, y^e)`` for every one of them.

    Returns ``(x, info)``: ``x`` is ``None`` when no feasible first stage exists (info's
    ``status`` then says why); ``info`` has the MILP ``status``, ``objective`` (cost form),
    the selected scenario ``argmax`` (argmax form) and the number of ReLU binaries.
    """
    if form not in ("argmax", "max"):
        raise ValueError(f"main problem form must be 'argmax' or 'max', got {form!r}")
    exact_scenarios = exact_scenarios or []
    net = model.network_
    b = MilpBuilder()
    n = problem.n_x
    xcols = b.add_vars(n, problem.x_lb, problem.x_ub)
    integer = np.flatnonzero(problem.x_integer)
    if len(integer):
        b.highs.changeColsIntegrality(
            len(integer), xcols[integer], np.ones(len(integer), dtype=np.uint8)
        )
        for j in integer:
            b.integer[int(xcols[j])] = True
    for row, rhs in zip(problem.A, problem.b, strict=True):
        b.add_row(-np.inf, rhs, xcols, row)
    first_cost = Affine.variables(xcols).linear(problem.c[None, :])
    K = len(scenarios)
    info: dict[str, Any] = {"argmax": None}
    terms: list[Affine] = []  # the objective is c^T x + max over these terms
    s = None
    if K:
        if net.joint:
            preds = [
                _joint_prediction_expr(b, model, prep, xcols, xi, variable="x") for xi in scenarios
            ]
        else:
            x_code = embed_item_set(b, net.phi_x, net.rho_x, xcols, prep.x_features)
            preds = [
                _prediction_expr(b, model, prep, x_code, Affine.constant(model.codes(prep, xi=xi)))
                for xi in scenarios
            ]
        if form == "max":
            terms += preds
        else:
            lows, highs = zip(*(b.bounds_of(p) for p in preds), strict=True)
            lows, highs = np.concatenate(lows), np.concatenate(highs)
            t = int(b.add_vars(1, float(lows.max()), float(highs.max()))[0])
            s = b.add_vars(K, 0.0, 1.0, integer=True)
            b.add_row(1.0, 1.0, s, np.ones(K))
            for k, p in enumerate(preds):
                _add_geq(b, t, p)  # t >= pred_k
                M = float(highs.max() - lows[k])
                # t <= pred_k + M (1 - s_k)
                b.add_row(
                    -np.inf,
                    M + float(p.const[0]),
                    np.concatenate([[t], p.cols, [s[k]]]),
                    np.concatenate([[1.0], -p.coef[0], [M]]),
                )
            costs = [_recourse_copy(b, problem, xcols, xi) for xi in scenarios]
            clo, chi = zip(*(b.bounds_of(g) for g in costs), strict=True)
            clo, chi = np.concatenate(clo), np.concatenate(chi)
            if not (np.all(np.isfinite(clo)) and np.all(np.isfinite(chi))):
                raise ValueError(
                    "the argmax main problem needs finite bounds on the recourse variables "
                    "(they set its big-M constants); use main_form='max' otherwise"
                )
            z_sel = int(b.add_vars(1, float(clo.min()), float(chi.max()))[0])
            for k, g in enumerate(costs):  # z_sel >= G_k - M'_k (1 - s_k)
                _add_geq(b, z_sel, g, big_m=float(chi[k] - clo.min()), s=int(s[k]))
            terms.append(Affine.variables([z_sel]))
    terms += [_recourse_copy(b, problem, xcols, xi) for xi in exact_scenarios]
    if terms:
        z = int(b.add_vars(1, -np.inf, np.inf)[0])
        for term in terms:
            _add_geq(b, z, term)
        b.set_objective(Affine.sum([first_cost, Affine.variables([z])]))
    else:
        b.set_objective(first_cost)
    status = b.solve(time_limit=time_limit, mip_rel_gap=mip_rel_gap)
    info["status"] = status
    info["n_relu_binaries"] = b.n_binaries_relu
    if not b.has_solution():
        return None, info
    x = b.values(xcols)
    x = np.where(problem.x_integer, np.round(x), x) + 0.0  # no negative zeros
    hinfo = b.highs.getInfo()
    info["objective"] = float(hinfo.objective_function_value)
    # a proven lower bound on the main problem's optimum (cost form)
    info["bound"] = (
        float(hinfo.mip_dual_bound) if b.n_cols and any(b.integer) else info["objective"]
    )
    if s is not None:
        info["argmax"] = int(np.argmax(b.values(s)))
    return x, info


def solve_adversarial(
    problem: TwoStageRobustProblem,
    model: Neur2ROValueModel,
    prep: PreparedInstance,
    x: np.ndarray,
    *,
    time_limit: float | None = None,
    mip_rel_gap: float = 1e-6,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """``max_{xi in Xi} NN(x, xi)`` for a fixed ``x``; returns ``(xi, info)``."""
    net = model.network_
    unc = problem.uncertainty
    b = MilpBuilder()
    xicols = b.add_vars(unc.dim, unc.lb, unc.ub)
    for row, rhs in zip(unc.P, unc.q, strict=True):
        b.add_row(-np.inf, rhs, xicols, row)
    if net.joint:
        pred = _joint_prediction_expr(b, model, prep, xicols, x, variable="xi")
    else:
        x_code = Affine.constant(model.codes(prep, x=x))
        xi_code = embed_item_set(b, net.phi_xi, net.rho_xi, xicols, prep.xi_features)
        pred = _prediction_expr(b, model, prep, x_code, xi_code)
    b.set_objective(pred, maximize=True)
    status = b.solve(time_limit=time_limit, mip_rel_gap=mip_rel_gap)
    info: dict[str, Any] = {"status": status, "n_relu_binaries": b.n_binaries_relu}
    if not b.has_solution():
        return None, info
    xi = np.clip(b.values(xicols), unc.lb, unc.ub)
    info["objective"] = float(b.highs.getInfo().objective_function_value)
    return xi, info


def train_value_model(
    problems: TwoStageRobustProblem | list[TwoStageRobustProblem],
    *,
    n_first_stage: int = 50,
    n_scenarios: int = 10,
    vertex_fraction: float = 0.3,
    seed: int = 0,
    n_jobs: int | None = 1,
    progress: bool = False,
    **model_params: Any,
) -> tuple[Neur2ROValueModel, dict[str, Any]]:
    """Generate data on ``problems`` and fit a :class:`Neur2ROValueModel` on it.

    ``n_jobs`` parallelises the labelling (:func:`~bilevel.robust.neur2ro.data.generate_dataset`);
    ``progress`` shows tqdm bars over labelling and training.
    Returns the model and a record with ``data_generation_time``, ``training_time``,
    ``n_samples``, ``n_infeasible_samples`` and ``validation_mae`` (cost units).
    """
    data = generate_dataset(
        problems,
        n_first_stage=n_first_stage,
        n_scenarios=n_scenarios,
        vertex_fraction=vertex_fraction,
        seed=seed,
        n_jobs=n_jobs,
        progress=progress,
    )
    model_params.setdefault("seed", seed)
    model = Neur2ROValueModel(**model_params).fit(data, progress=progress)
    record = {
        "data_generation_time": data.generation_time,
        "training_time": model.training_time_,
        "n_samples": len(data),
        "n_infeasible_samples": data.n_infeasible,
        "validation_mae": model.validation_mae_,
    }
    return model, record


def status_ok(info: dict[str, Any]) -> bool:
    """Whether a MILP ended optimal (its dual bound is then exact to the gap)."""
    return info.get("status") == "Optimal"


def _is_duplicate(xi: np.ndarray, scenarios: list[np.ndarray], tol: float) -> bool:
    return any(float(np.abs(xi - s).sum()) < tol for s in scenarios)


def solve_neur2ro(
    problem: TwoStageRobustProblem,
    *,
    model: Neur2ROValueModel | str | os.PathLike | None = None,
    n_first_stage: int = 50,
    n_scenarios: int = 10,
    vertex_fraction: float = 0.3,
    model_params: dict[str, Any] | None = None,
    seed: int = 0,
    main_form: str = "argmax",
    tol: float = 1e-4,
    duplicate_tol: float = 1e-3,
    max_iterations: int = 50,
    max_repairs: int = 20,
    exact_refinements: int = 0,
    time_limit: float | None = None,
    mip_time_limit: float | None = None,
    evaluation_time_limit: float | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    n_jobs: int | None = 1,
) -> RobustResult:
    """Solve ``problem`` with Neur2RO and evaluate the returned ``x`` exactly.

    Parameters
    ----------
    problem:
        The two-stage robust problem.
    model:
        A fitted :class:`Neur2ROValueModel`, or a path to one saved with
        :meth:`Neur2ROValueModel.save`. ``None`` trains one on ``problem`` itself
        (``n_first_stage`` decisions x ``n_scenarios`` scenarios, ``model_params`` for the
        network and the optimiser, e.g. ``{"encoder": "joint"}``, and ``seed``); data
        generation and training times are reported in ``info``, separately from
        ``time``.
    main_form:
        ``"argmax"`` (paper) or ``"max"``; see the module docstring.
    tol, duplicate_tol, max_iterations:
        The stopping rules (module docstring).
    max_repairs:
        Feasibility repairs allowed after the loop (constraint uncertainty).
    exact_refinements:
        Extra rounds (not in the paper; default 0): the exact worst-case scenario of the
        evaluated ``x`` joins the main problem as an exact CCG scenario and the loop
        resumes; the best exactly evaluated decision is returned.
    time_limit:
        Seconds for the Neur2RO iterations (training and the exact evaluation excluded).
    mip_time_limit:
        Cap on each main/adversarial MILP.
    evaluation_time_limit:
        Cap on the exact worst-case evaluation of the returned ``x`` (``None``: none).
    callback:
        Called after every iteration with the iteration's record (the ``history`` row).
    progress:
        tqdm bars (stderr, with rate and ETA) over labelling, training and the iterations;
        each appears after 2 s.
    n_jobs:
        joblib workers for labelling the training data when ``model`` is ``None`` (see
        :func:`~bilevel.robust.neur2ro.data.generate_dataset`).

    Returns
    -------
    RobustResult
        ``x`` is the last main problem's decision (the best evaluated one after repairs or
        refinements) and ``objective`` its exact worst-case value in the instance's own
        sense (``xi``/``y``: its worst-case scenario and the recourse there); ``status`` is
        ``"heuristic"`` (no optimality claim), ``"time_limit"`` when the exact evaluation was
        cut short (``objective`` is then ``nan`` and ``info["objective_bounds"]`` bounds it),
        or ``"infeasible"``. The incumbent's side of the
        bounds (``lower_bound`` for a maximisation, ``upper_bound`` for a minimisation)
        equals ``objective``; the other side is the proven bound of the module docstring
        (``nan`` for ``main_form="max"``) and ``gap`` their relative difference.
        ``history`` holds per iteration the predicted main and adversarial values (own
        sense), their relative ``gap`` (the stopping test) and the proven bound so far on
        its side (the other side ``nan``); ``info`` holds ``data_generation_time`` and
        ``training_time`` when a model was trained here (a given model instead gives
        ``pretrained=True`` and ``model_training``, its recorded training settings),
        ``n_samples``, ``validation_mae``,
        ``predicted_value`` (the network's worst-case estimate for ``x``, own sense),
        ``termination``, the scenarios and the main/adversarial/evaluation times.
    """
    for name, value in (
        ("max_iterations", max_iterations),
        ("max_repairs", max_repairs),
        ("exact_refinements", exact_refinements),
    ):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    if main_form not in ("argmax", "max"):
        raise ValueError(f"main_form must be 'argmax' or 'max', got {main_form!r}")
    if not isinstance(problem, TwoStageRobustProblem):
        raise TypeError(f"problem must be a TwoStageRobustProblem, got {type(problem).__name__}")
    info: dict[str, Any] = {}
    if model is None:
        params = dict(model_params or {})
        model, record = train_value_model(
            problem,
            n_first_stage=n_first_stage,
            n_scenarios=n_scenarios,
            vertex_fraction=vertex_fraction,
            seed=seed,
            n_jobs=n_jobs,
            progress=progress,
            **params,
        )
        info.update(record)
    else:
        if isinstance(model, str | os.PathLike):
            info["model_path"] = os.fspath(model)
            model = Neur2ROValueModel.load(model)
        if not isinstance(model, Neur2ROValueModel):
            raise TypeError(f"model must be a Neur2ROValueModel or a path, got {type(model)}")
        # no training happened here: the model's own record says how it was trained
        info.update(
            n_samples=getattr(model, "n_samples_", 0),
            pretrained=True,
            model_training=dict(getattr(model, "training_info_", {}) or {}),
        )
    prep = model.prepare(problem)  # refuses models for other sizes / feature kinds
    if not (np.all(np.isfinite(problem.x_lb)) and np.all(np.isfinite(problem.x_ub))):
        raise ValueError("Neur2RO needs finite bounds on every first-stage variable")

    clock = Deadline(time_limit)
    scenarios: list[np.ndarray] = []  # found by the adversary over the network
    exact: list[np.ndarray] = []  # from the exact evaluation (repairs, refinements)
    history: dict[str, list[float]] = {
        k: []
        for k in (
            "iteration",
            "lower_bound",
            "upper_bound",
            "gap",
            "time",
            "predicted_main",
            "predicted_adversarial",
        )
    }
    timers = {"main_time": 0.0, "adversarial_time": 0.0, "evaluation_time": 0.0}
    timers["main_bound"] = -math.inf
    n_iter = 0
    n_repairs = n_refinements = 0
    candidates: list[tuple[np.ndarray, Any, float, str]] = []  # (x, worst case, pred, stop)
    termination = "max_iterations"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iterations, desc="Neur2RO", unit="it", leave=False, delay=2.0)
    while True:
        x, predicted, termination, n_round = _neur2ro_loop(
            problem,
            model,
            prep,
            scenarios,
            exact,
            main_form=main_form,
            tol=tol,
            duplicate_tol=duplicate_tol,
            max_iterations=max_iterations,
            deadline=clock,
            mip_time_limit=mip_time_limit,
            history=history,
            timers=timers,
            first_iteration=n_iter,
            callback=callback,
            bar=bar,
        )
        n_iter += n_round
        if x is None:
            break
        t0 = time.perf_counter()
        wc = worst_case(problem, x, time_limit=evaluation_time_limit)
        timers["evaluation_time"] += time.perf_counter() - t0
        candidates.append((x, wc, predicted, termination))
        if termination == "time_limit" or _is_duplicate(wc.xi, exact, 1e-9):
            break
        if math.isinf(wc.cost) and wc.cost > 0 and n_repairs < max_repairs:
            n_repairs += 1  # feasibility repair
        elif math.isfinite(wc.cost) and n_refinements < exact_refinements:
            n_refinements += 1  # exact refinement
        else:
            break
        exact.append(np.asarray(wc.xi, dtype=float))
    if bar is not None:
        bar.close()
    elapsed = clock.elapsed() - timers["evaluation_time"]
    info.update(
        termination=termination,
        main_form=main_form,
        n_scenarios=len(scenarios),
        scenarios=[sc.tolist() for sc in scenarios],
        exact_scenarios=[sc.tolist() for sc in exact],
        n_repairs=n_repairs,
        n_refinements=n_refinements,
        **timers,
    )
    info.setdefault("validation_mae", getattr(model, "validation_mae_", math.nan))
    bound = info.pop("main_bound")  # cost form; argmax form: <= the robust optimum
    info["proven_bound"] = problem.to_objective(bound) if math.isfinite(bound) else math.nan
    if not candidates:
        return RobustResult.from_cost_bounds(
            math.nan,
            math.nan,
            problem.sense,
            x=None,
            worst=None,
            status="infeasible" if termination == "infeasible" else "error",
            n_iter=n_iter,
            time=elapsed,
            history=history,
            info=info,
            method="neur2ro",
        )
    # the last decision (the paper's choice); after repairs/refinements the best evaluated one
    x, wc, predicted, _ = min(candidates, key=lambda cand: cand[1].cost)
    if not exact:
        x, wc, predicted, _ = candidates[-1]
    info["predicted_value"] = (
        problem.to_objective(predicted) if math.isfinite(predicted) else math.nan
    )
    info["worst_case_xi"] = np.asarray(wc.xi).tolist()
    info["evaluation_status"] = wc.status
    info["n_candidates"] = len(candidates)
    status = "heuristic"
    if wc.status != "optimal":
        status = "time_limit"
    if math.isinf(wc.cost):
        status = "infeasible"
        info["message"] = (
            "the returned x has an infeasible recourse in some scenario of Xi "
            "(feasibility repairs exhausted)"
        )
    upper = wc.cost if wc.status == "optimal" else math.nan
    return RobustResult.from_cost_bounds(
        bound if math.isfinite(bound) else math.nan,
        upper,
        problem.sense,
        x=x,
        worst=wc,
        status=status,
        n_iter=n_iter,
        time=elapsed,
        history=history,
        info=info,
        method="neur2ro",
        warning="the exact worst-case evaluation of Neur2RO's decision stopped at its time "
        "limit; objective is not evaluated (info['objective_bounds'] bounds it)",
    )


def _neur2ro_loop(
    problem,
    model,
    prep,
    scenarios,
    exact,
    *,
    main_form,
    tol,
    duplicate_tol,
    max_iterations,
    deadline,
    mip_time_limit,
    history,
    timers,
    first_iteration,
    callback,
    bar=None,
) -> tuple[np.ndarray | None, float, str, int]:
    """Main/adversarial iterations until a stopping rule fires; returns
    ``(x, predicted worst-case cost of x, termination, iterations)``; ``scenarios`` grows."""
    x = None
    predicted = math.nan
    for it in range(1, max(max_iterations, 1) + 1):
        if deadline.expired() and x is not None:
            return x, predicted, "time_limit", it - 1
        t0 = time.perf_counter()
        x_new, main_info = solve_main(
            problem,
            model,
            prep,
            scenarios,
            exact_scenarios=exact,
            form=main_form,
            time_limit=deadline.remaining(mip_time_limit),
        )
        timers["main_time"] += time.perf_counter() - t0
        if x is not None and not status_ok(main_info) and main_info["status"] != "Infeasible":
            # a main problem cut short by a time limit: its incumbent may be arbitrarily
            # poor, so the decision of the last completed iteration is returned
            timed_out = deadline.expired()
            return (
                x,
                predicted,
                "time_limit"
                if timed_out
                else "main_problem_" + main_info["status"].replace(" ", "_"),
                it - 1,
            )
        if x_new is None:
            status = main_info["status"]
            stop = "infeasible" if status == "Infeasible" else "main_problem_" + status
            return None, predicted, stop, it
        x = x_new
        if main_form == "argmax" and (scenarios or exact) and status_ok(main_info):
            timers["main_bound"] = max(timers.get("main_bound", -math.inf), main_info["bound"])
        c_x = float(problem.c @ x)
        main_val = (
            float(np.max(model.predict_prepared(prep, x, np.vstack(scenarios))))
            if scenarios
            else -math.inf
        )
        t0 = time.perf_counter()
        xi, adv_info = solve_adversarial(
            problem, model, prep, x, time_limit=deadline.remaining(mip_time_limit)
        )
        timers["adversarial_time"] += time.perf_counter() - t0
        if xi is None:
            return x, predicted, "adversarial_problem_" + adv_info["status"], it
        adv_val = float(model.predict_prepared(prep, x, xi)[0])
        predicted = c_x + adv_val
        gap = abs(adv_val - main_val) / max(abs(adv_val), 1e-12) if scenarios else math.inf
        # the proven bound so far on one side (argmax form), nothing on the incumbent's side:
        # the exact worst case is computed after the loop
        lower, upper = own_bounds(timers["main_bound"], math.nan, problem.sense)
        row = {
            "iteration": float(first_iteration + it),
            "lower_bound": lower if math.isfinite(lower) else math.nan,
            "upper_bound": upper if math.isfinite(upper) else math.nan,
            "gap": gap,
            "time": deadline.elapsed(),
            "predicted_main": problem.to_objective(c_x + main_val),
            "predicted_adversarial": problem.to_objective(predicted),
        }
        for key, value in row.items():
            history[key].append(value)
        if bar is not None:
            bar.set_postfix_str(
                f"predicted {row['predicted_adversarial']:.6g} gap {gap:.2e}", refresh=False
            )
            bar.update(1)
        if callback is not None:
            callback(dict(row))
        if gap <= tol:
            return x, predicted, "converged", it
        if _is_duplicate(xi, scenarios, duplicate_tol):
            return x, predicted, "repeated_scenario", it
        if it == max_iterations:
            return x, predicted, "max_iterations", it
        scenarios.append(xi)
    return x, predicted, "max_iterations", max_iterations

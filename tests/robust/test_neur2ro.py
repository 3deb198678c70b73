"""Neur2RO: exact MILP embedding, main/adversarial problems and end-to-end quality.

Oracles: the torch forward pass (embedding), brute-force enumeration of ``x`` over the
network's predictions (main problem), samples of ``Xi`` (adversarial problem) and, end to
end, a brute-force exact robust optimum written here (all ``x``, and for each ``x`` an LP
over ``Xi`` with every feasible recourse as a cut), independent of :mod:`bilevel.robust.ccg`.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from bilevel.robust import worst_case
from bilevel.robust.model import TwoStageRobustProblem, UncertaintySet
from bilevel.robust.neur2ro import (
    NetworkConfig,
    Neur2ROValueModel,
    SetValueNetwork,
    generate_dataset,
    solve_adversarial,
    solve_main,
    solve_neur2ro,
)
from bilevel.robust.neur2ro.embedding import MilpBuilder, embed_item_set, embed_mlp, embed_value
from bilevel.robust.problems import capital_budgeting_problem, knapsack_problem


def knapsack_instance(n: int, seed: int, corr: str = "UN") -> TwoStageRobustProblem:
    """Arslan-Detienne style instance (R=1000, H=100, h=40, delta=0.5, Gamma=0.15 n)."""
    rng = np.random.default_rng(seed)
    R, H, h, delta = 1000.0, 100.0, 40.0, 0.5
    c = rng.uniform(1, R, n)
    capacity = h / (H + 1) * c.sum()
    pbar = rng.uniform(1, R, n) if corr == "UN" else c + R / 10
    phat = pbar * rng.uniform((1 - delta) / 2, (1 + delta) / 2, n)
    f = pbar * rng.uniform(1.1, 1.5, n)
    t = rng.uniform(1, c) if corr == "UN" else 0.5 * phat + c / 10
    return knapsack_problem(pbar, phat, t, c, f, capacity, max(1.0, 0.15 * n))


def brute_force_worst_case(problem: TwoStageRobustProblem, x: np.ndarray) -> float:
    """max_xi min_(y,r) of the knapsack cost: LP over (xi, z) with all recourses as cuts."""
    meta = problem.metadata["items"]
    c, t, f, phat = (np.asarray(meta[k]) for k in ("c", "t", "f", "phat"))
    n = len(c)
    cap = problem.metadata["capacity"]
    cuts = []  # z <= sum (phat xi - f) y - phat xi r = a^T xi + b
    for states in itertools.product((0, 1, 2), repeat=n):  # 0 out, 1 kept, 2 kept+repaired
        y = np.array([s >= 1 for s in states], dtype=float)
        r = np.array([s == 2 for s in states], dtype=float)
        if np.any(y > x) or c @ y + t @ r > cap + 1e-9:
            continue
        cuts.append((phat * (y - r), -f @ y))
    A = np.array([np.concatenate([-a, [1.0]]) for a, _ in cuts])
    b = np.array([b for _, b in cuts])
    A = np.vstack([A, np.concatenate([np.ones(n), [0.0]])])
    b = np.concatenate([b, [problem.uncertainty.gamma]])
    res = linprog(
        -np.eye(n + 1)[-1], A_ub=A, b_ub=b, bounds=[(0, 1)] * n + [(None, None)], method="highs"
    )
    assert res.status == 0
    return float(problem.c @ x) - res.fun  # cost form


def brute_force_optimum(problem: TwoStageRobustProblem) -> float:
    """Optimal worst-case profit (own sense) over all x in {0,1}^n."""
    n = problem.n_x
    best = min(
        brute_force_worst_case(problem, np.array(x, dtype=float))
        for x in itertools.product((0, 1), repeat=n)
    )
    return problem.to_objective(best)


def _fit(problem, n_first_stage=6, n_scenarios=4, n_epochs=3, seed=0, **kw):
    data = generate_dataset(
        problem, n_first_stage=n_first_stage, n_scenarios=n_scenarios, seed=seed
    )
    return Neur2ROValueModel(n_epochs=n_epochs, seed=seed, **kw).fit(data)


# --------------------------------------------------------------------------- embedding


def _random_network(dx: int, dxi: int, seed: int) -> SetValueNetwork:
    torch.manual_seed(seed)
    net = SetValueNetwork(NetworkConfig(dx, dxi, phi_dims=(8, 4), rho_dims=(8, 3), value_dims=(6,)))
    with torch.no_grad():  # larger biases: many ReLUs change sign over the input box
        for p in net.parameters():
            p.mul_(2.0)
    return net


def _embed(net, n, m, fx, fxi, x_ub, x_integer, log=None):
    b = MilpBuilder()
    xcols = b.add_vars(n, 0.0, x_ub, integer=x_integer)
    xicols = b.add_vars(m, -1.0, 1.0)
    xcode = embed_item_set(b, net.phi_x, net.rho_x, xcols, fx, bounds_log=log)
    xicode = embed_item_set(b, net.phi_xi, net.rho_xi, xicols, fxi, bounds_log=log)
    out = embed_value(b, net.psi, xcode, xicode, bounds_log=log)
    return b, xcols, xicols, out


@pytest.mark.parametrize("x_ub", [1.0, 3.0])  # binary x (linear form) and integer x (big-M)
def test_embedding_reproduces_forward_pass(x_ub):
    n, m = 6, 5
    rng = np.random.default_rng(1)
    fx, fxi = rng.normal(size=(n, 3)), rng.normal(size=(m, 2))
    net = _random_network(3, 2, seed=2)
    for _ in range(4):
        x = rng.integers(0, int(x_ub) + 1, n).astype(float)
        xi = rng.uniform(-1, 1, m)
        with torch.no_grad():
            ref = float(
                net(
                    torch.from_numpy(np.hstack([x[:, None], fx]))[None],
                    torch.from_numpy(np.hstack([xi[:, None], fxi]))[None],
                )
            )
        values = []
        for maximize in (True, False):  # max = min: the fixed inputs pin the output
            b, xcols, xicols, out = _embed(net, n, m, fx, fxi, x_ub, True)
            assert b.n_binaries_relu > 0
            b.set_objective(out, maximize=maximize)
            b.set_bounds(xcols, x, x)
            b.set_bounds(xicols, xi, xi)
            assert b.solve() == "Optimal"
            values.append(b.highs.getInfo().objective_function_value)
            assert b.value_of(out)[0] == pytest.approx(values[-1], abs=1e-9)
        np.testing.assert_allclose(values, ref, rtol=0, atol=1e-6 * max(1.0, abs(ref)))


@pytest.mark.parametrize("variable", ["x", "xi"])
def test_joint_embedding_reproduces_forward_pass(variable):
    """Joint encoder: binary x columns with a fixed scenario (main problem), continuous xi
    columns with a fixed x (adversarial problem); both must equal the torch forward pass."""
    n, d = 6, 3
    rng = np.random.default_rng(7)
    f = rng.normal(size=(n, d))
    torch.manual_seed(8)
    net = SetValueNetwork(
        NetworkConfig(d, d, phi_dims=(8, 4), rho_dims=(8, 3), value_dims=(6,), encoder="joint")
    )
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    for _ in range(4):
        x = rng.integers(0, 2, n).astype(float)
        xi = rng.uniform(-1, 1, n)
        with torch.no_grad():
            ref = float(
                net(
                    torch.from_numpy(np.hstack([x[:, None], f]))[None],
                    torch.from_numpy(np.hstack([xi[:, None], f]))[None],
                )
            )
        for maximize in (True, False):
            b = MilpBuilder()
            if variable == "x":
                cols = b.add_vars(n, 0.0, 1.0, integer=True)
                feats, index, value = np.hstack([xi[:, None], f]), 0, x
            else:
                cols = b.add_vars(n, -1.0, 1.0)
                feats, index, value = np.hstack([x[:, None], f]), 1, xi
            code = embed_item_set(b, net.phi, net.rho, cols, feats, var_index=index)
            out = embed_mlp(b, net.psi, code)
            if variable == "x":  # linear in binary x: only rho and psi need binaries
                assert b.n_binaries_relu <= 8 + 6
            else:
                assert b.n_binaries_relu > 8 + 6  # phi's units over continuous xi
            b.set_objective(out, maximize=maximize)
            b.set_bounds(cols, value, value)
            assert b.solve() == "Optimal"
            got = b.highs.getInfo().objective_function_value
            assert got == pytest.approx(ref, rel=0, abs=1e-6 * max(1.0, abs(ref)))


def test_joint_encoder_refuses_unaligned_inputs():
    net = SetValueNetwork(NetworkConfig(2, 2, encoder="joint"))
    with pytest.raises(ValueError, match="as many uncertainty components"):
        net(torch.zeros(1, 4, 3, dtype=torch.float64), torch.zeros(1, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="no separate x code"):
        net.encode_x(torch.zeros(1, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="encoder must be"):
        NetworkConfig(2, 2, encoder="both")


def test_binary_first_stage_needs_no_binaries_in_phi():
    """sum_i phi(x_i, f_i) is linear in binary x: only rho's unstable units need binaries."""
    net = _random_network(3, 2, seed=3)
    for n in (5, 40):
        b = MilpBuilder()
        xcols = b.add_vars(n, 0.0, 1.0, integer=True)
        embed_item_set(b, net.phi_x, net.rho_x, xcols, np.random.default_rng(0).normal(size=(n, 3)))
        assert b.n_binaries_relu <= net.config.rho_dims[0]


def test_interval_bounds_contain_sampled_preactivations():
    n, m = 5, 4
    rng = np.random.default_rng(4)
    fx, fxi = rng.normal(size=(n, 3)), rng.normal(size=(m, 2))
    net = _random_network(3, 2, seed=5)
    log: list = []
    _embed(net, n, m, fx, fxi, 1.0, True, log)
    # log order: rho_x hidden, phi_xi hidden per item, rho_xi hidden, psi hidden
    assert len(log) == 1 + m + 2
    n_checked = 0
    with torch.no_grad():
        for _ in range(300):
            x = torch.from_numpy(rng.integers(0, 2, n).astype(float))
            xi = torch.from_numpy(rng.uniform(-1, 1, m))
            xitems = torch.cat([x[:, None], torch.from_numpy(fx)], 1)
            xiitems = torch.cat([xi[:, None], torch.from_numpy(fxi)], 1)
            sx = net.phi_x(xitems).sum(0)
            pre = [net.rho_x[0](sx)]
            pre += [net.phi_xi[0](xiitems[j]) for j in range(m)]
            sxi = net.phi_xi(xiitems).sum(0)
            pre.append(net.rho_xi[0](sxi))
            pre.append(net.psi[0](torch.cat([net.rho_x(sx), net.rho_xi(sxi)])))
            for (low, high), a in zip(log, pre, strict=True):
                a = a.numpy()
                assert np.all(a >= low - 1e-9) and np.all(a <= high + 1e-9)
                n_checked += a.size
    assert n_checked > 0


# --------------------------------------------------------------------------- main / adversarial


@pytest.fixture(scope="module", params=["separate", "joint"])
def small_knapsack_model(request):
    problem = knapsack_instance(5, seed=11)
    model = _fit(problem, n_first_stage=8, n_scenarios=5, n_epochs=20, encoder=request.param)
    assert model.network_.config.encoder == request.param
    return problem, model


@pytest.mark.parametrize("form", ["argmax", "max"])
def test_main_problem_matches_enumeration(small_knapsack_model, form):
    problem, model = small_knapsack_model
    prep = model.prepare(problem)
    scenarios = list(problem.uncertainty.sample(4, np.random.default_rng(3)))
    x_main, info = solve_main(problem, model, prep, scenarios, form=form)
    assert info["status"] == "Optimal"
    values = {}
    for x in itertools.product((0.0, 1.0), repeat=problem.n_x):
        x = np.array(x)
        preds = model.predict_prepared(prep, x, np.vstack(scenarios))
        if form == "max":
            values[tuple(x)] = problem.c @ x + preds.max()
        else:  # the worst predicted scenario's exact recourse (ties: the cheaper one)
            tied = np.flatnonzero(preds >= preds.max() - 1e-9)
            values[tuple(x)] = min(problem.total_cost(x, scenarios[k]) for k in tied)
    best = min(values.values())
    assert info["objective"] == pytest.approx(best, rel=1e-7, abs=1e-6)
    assert values[tuple(x_main)] == pytest.approx(best, rel=1e-7, abs=1e-6)


def test_adversarial_problem_dominates_samples(small_knapsack_model):
    problem, model = small_knapsack_model
    prep = model.prepare(problem)
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.integers(0, 2, problem.n_x).astype(float)
        xi, info = solve_adversarial(problem, model, prep, x)
        assert problem.uncertainty.contains(xi)
        value = float(model.predict_prepared(prep, x, xi)[0])
        assert info["objective"] == pytest.approx(value, rel=1e-7, abs=1e-6)
        samples = problem.uncertainty.sample(500, rng)
        assert np.all(model.predict_prepared(prep, x, samples) <= value + 1e-6)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def optima():
    return {seed: brute_force_optimum(knapsack_instance(6, seed=100 + seed)) for seed in range(3)}


def _check_result(problem, result, optimum):
    # the reported objective is the exact worst case of the returned x (brute force)
    exact_x = problem.to_objective(brute_force_worst_case(problem, result.x))
    assert result.objective == pytest.approx(exact_x, rel=1e-7)
    assert result.method == "neur2ro" and result.status == "heuristic"
    assert result.objective <= optimum + 1e-6 * abs(optimum)  # profit: cannot beat the optimum
    # argmax form: the main problems' value is a proven bound on the optimum
    assert result.upper_bound >= optimum - 1e-6 * abs(optimum)
    assert result.lower_bound == result.objective
    for key in ("data_generation_time", "training_time", "n_samples", "predicted_value"):
        assert key in result.info


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neur2ro_within_five_percent_of_exact(seed, optima):
    """Tiny training budget (30 x 8 samples, 60 epochs) plus up to 3 exact refinements."""
    problem = knapsack_instance(6, seed=100 + seed)
    result = solve_neur2ro(
        problem,
        n_first_stage=30,
        n_scenarios=8,
        seed=seed,
        exact_refinements=3,
        model_params={"n_epochs": 60},
    )
    _check_result(problem, result, optima[seed])
    assert (optima[seed] - result.objective) / abs(optima[seed]) <= 0.05
    assert result.info["n_samples"] == 30 * 8


def test_paper_loop_with_default_options_is_within_five_percent_on_most_instances():
    """The paper's loop alone (no exact refinement), default options (50 x 10 samples per
    instance, the paper's separate encoder), on ten random n=6 knapsacks against brute
    force. Measured: 8/10 at the optimum, two at 13-14%, mean gap 2.8% (the joint encoder:
    9/10, mean 1.4%). The gaps are bimodal (optimal, or a wrong decision ~14% off), so the
    test asks for a mean gap below 5%, a median below 1% and at least 7/10 within 5%."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the measured runs used one thread (same float reductions)
    try:
        gaps = _paper_loop_gaps()
    finally:
        torch.set_num_threads(threads)
    assert np.mean(gaps) <= 0.05, gaps
    assert np.median(gaps) <= 0.01, gaps
    assert sum(g <= 0.05 for g in gaps) >= 7, gaps


def _paper_loop_gaps() -> list[float]:
    gaps = []
    for s in range(10):
        problem = knapsack_instance(6, seed=100 + s)
        optimum = brute_force_optimum(problem)
        result = solve_neur2ro(problem, seed=s)
        _check_result(problem, result, optimum)
        assert result.info["n_refinements"] == 0
        gaps.append((optimum - result.objective) / abs(optimum))
    return gaps


def test_paper_loop_returns_exactly_evaluated_last_decision(optima):
    problem = knapsack_instance(6, seed=100)
    records = []
    result = solve_neur2ro(
        problem,
        n_first_stage=20,
        n_scenarios=6,
        model_params={"n_epochs": 30},
        callback=records.append,
    )
    _check_result(problem, result, optima[0])
    assert result.info["n_refinements"] == 0 and result.info["exact_scenarios"] == []
    assert len(records) == len(result.history["iteration"]) >= 1
    assert result.info["termination"] in ("converged", "repeated_scenario", "max_iterations")


def test_unlimited_refinement_is_exact(optima):
    """With unbounded exact refinement the loop ends only with a certified optimum."""
    problem = knapsack_instance(6, seed=101)
    result = solve_neur2ro(
        problem,
        n_first_stage=10,
        n_scenarios=4,
        exact_refinements=100,
        model_params={"n_epochs": 10},
    )
    assert result.objective == pytest.approx(optima[1], rel=1e-6)
    assert result.gap <= 1e-5


def test_capital_budgeting_returns_robust_feasible_decision():
    """Constraint uncertainty: the exact adversary's infeasible scenarios repair x."""
    rng = np.random.default_rng(0)
    n, k = 5, 2
    cbar = rng.uniform(0, 10, n)
    problem = capital_budgeting_problem(
        cbar,
        cbar / 5,
        rng.uniform(-1, 1, (n, k)) / k,
        rng.uniform(-1, 1, (n, k)) / k,
        0.5 * cbar.sum(),
    )
    result = solve_neur2ro(
        problem, n_first_stage=10, n_scenarios=5, seed=0, model_params={"n_epochs": 20}
    )
    assert np.isfinite(result.objective)
    wc = worst_case(problem, result.x)
    assert result.objective == pytest.approx(wc.objective, rel=1e-9)


# --------------------------------------------------------------------------- models and bad input


def test_training_is_reproducible_and_save_load_round_trips(tmp_path, small_knapsack_model):
    problem, model = small_knapsack_model
    again = _fit(problem, n_first_stage=8, n_scenarios=5, n_epochs=20, encoder=model.encoder)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (10, problem.n_x)).astype(float)
    xi = problem.uncertainty.sample(10, rng)
    np.testing.assert_array_equal(model.predict(problem, x, xi), again.predict(problem, x, xi))
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = Neur2ROValueModel.load(path)
    np.testing.assert_array_equal(loaded.predict(problem, x, xi), model.predict(problem, x, xi))
    # one saved model serves another instance of the same size and class
    other = knapsack_instance(5, seed=12)
    result = solve_neur2ro(other, model=path, max_iterations=3)
    assert result.info["model_path"] == str(path) and result.info["pretrained"]
    # no training happened in this call: no training time is reported for it (issue 14),
    # the model's recorded training settings are
    assert "training_time" not in result.info and "data_generation_time" not in result.info
    record = result.info["model_training"]
    assert record["n_first_stage"] == 8 and record["n_scenarios"] == 5
    assert record["n_samples"] == model.n_samples_ and record["training_time"] > 0
    assert loaded.training_info_ == model.training_info_
    assert np.isfinite(result.objective)


def test_bad_inputs_raise_clear_errors(small_knapsack_model, tmp_path):
    problem, model = small_knapsack_model
    with pytest.raises(RuntimeError, match="not fitted"):
        Neur2ROValueModel().predict(problem, np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="sizes"):
        model.prepare(knapsack_instance(6, seed=0))
    permissive = Neur2ROValueModel.load(_saved(model, tmp_path))
    permissive.allow_unseen_sizes = True
    assert np.isfinite(
        permissive.predict(knapsack_instance(6, seed=0), np.ones(6), np.zeros(6))
    ).all()
    cb = capital_budgeting_problem(np.ones(5), np.ones(5), np.zeros((5, 5)), np.zeros((5, 5)), 3.0)
    with pytest.raises(ValueError, match="capital_budgeting"):
        model.prepare(cb)
    cb_data = generate_dataset(cb, n_first_stage=2, n_scenarios=2)
    with pytest.raises(ValueError, match="aligned"):
        Neur2ROValueModel(encoder="joint", n_epochs=1).fit(cb_data)
    assert Neur2ROValueModel(n_epochs=1).fit(cb_data).network_.config.encoder == "separate"
    with pytest.raises(ValueError, match="encoder must be"):
        Neur2ROValueModel(encoder="shared").fit(cb_data)
    with pytest.raises(ValueError, match="shape"):
        model.network_(torch.zeros(1, 5, 3), torch.zeros(1, 5, 7))
    with pytest.raises(ValueError, match="main_form"):
        solve_neur2ro(problem, model=model, main_form="mean")
    with pytest.raises(ValueError, match="max_iterations"):
        solve_neur2ro(problem, model=model, max_iterations=-1)
    with pytest.raises(ValueError, match="not a saved"):
        torch.save({"something": 1}, tmp_path / "bad.pt")
        Neur2ROValueModel.load(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="n_epochs"):
        Neur2ROValueModel(n_epochs=0).fit(generate_dataset(problem, n_first_stage=1, n_scenarios=1))
    unbounded = TwoStageRobustProblem(
        c=np.ones(2),
        x_types="II",
        uncertainty=UncertaintySet.box(np.zeros(1), np.ones(1)),
        d=np.ones(1),
        y_types="C",
        W=np.ones((1, 1)),
        T=np.zeros((1, 2)),
        h=np.ones(1),
        y_ub=np.ones(1),
    )
    with pytest.raises(ValueError, match="finite bounds"):
        solve_neur2ro(unbounded)


def _saved(model, tmp_path):
    path = tmp_path / "m.pt"
    model.save(path)
    return path


def test_main_problem_cut_by_time_limit_returns_last_completed_decision(
    small_knapsack_model, monkeypatch
):
    """A time-limited main problem's incumbent is not returned (it may be arbitrarily poor):
    the decision of the last main problem solved to optimality is."""
    from bilevel.robust.neur2ro import algorithm

    problem, model = small_knapsack_model
    calls = []
    real = algorithm.solve_main

    for incumbent in (True, False):  # a poor incumbent, or none at all
        calls.clear()

        def flaky_main(*args, incumbent=incumbent, **kwargs):
            x, info = real(*args, **kwargs)
            calls.append(x)
            if len(calls) == 2:  # the second main problem "times out"
                return (1.0 - x) if incumbent else None, {**info, "status": "Time limit reached"}
            return x, info

        monkeypatch.setattr(algorithm, "solve_main", flaky_main)
        result = solve_neur2ro(problem, model=model)
        assert len(calls) == 2
        assert result.info["termination"] == "main_problem_Time_limit_reached"
        np.testing.assert_array_equal(result.x, calls[0])
        assert result.n_iter == 1 and result.status == "heuristic"
        wc = worst_case(problem, calls[0])
        assert result.objective == pytest.approx(wc.objective, rel=1e-9)

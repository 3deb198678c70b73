"""Stochastic outer algorithms (StocBiO, SOBA, SABA) on a finite-sum quadratic whose mean is a
:class:`QuadraticBilevel` with closed forms; minibatch streams and checkpoint/resume."""

from __future__ import annotations

import io
import math

import pytest
import torch

import bilevel
from bilevel.hypergrad import neumann
from bilevel.methods import AID, BatchStream
from bilevel.methods.stochastic import SABA, SOBA, StocBiO
from bilevel.problem import BilevelProblem
from bilevel.testproblems import FiniteSumQuadratic, QuadraticBilevel, Sampled, Shuffled
from tests.conftest import relative_error

DIM_X, DIM_Y = 4, 8


@pytest.fixture
def q() -> QuadraticBilevel:
    # lower condition number 2: H in [1, 2], so inner steps up to ~0.4 are safe per component
    return QuadraticBilevel.random(dim_x=DIM_X, dim_y=DIM_Y, seed=0, lower_condition=2.0)


def _grad_ratio(q: QuadraticBilevel, x: torch.Tensor) -> float:
    """``||grad h(x)|| / ||grad h(0)||`` from the closed form."""
    return float(q.hypergradient(x).norm() / q.hypergradient(torch.zeros(DIM_X)).norm())


def _solve(problem, method, maxiter, **kwargs):
    return bilevel.solve(
        problem, torch.zeros(DIM_X), torch.zeros(DIM_Y), method, maxiter=maxiter, **kwargs
    )


# ------------------------------------------------------------------ deterministic sanity


def test_finite_sum_mean_is_the_quadratic(q):
    fs = FiniteSumQuadratic.build(q, noise=0.5)
    x, y = torch.randn(DIM_X), torch.randn(DIM_Y)
    everything_lower, everything_upper = torch.arange(fs.n), torch.arange(fs.m)
    assert math.isclose(float(fs.lower(x, y, everything_lower)), float(q.lower(x, y)))
    assert math.isclose(float(fs.upper(x, y, everything_upper)), float(q.upper(x, y)))
    assert float(torch.linalg.eigvalsh(fs.H).min()) >= 0.49  # each f_i strongly convex


def test_stocbio_without_data_is_aid_with_neumann(q):
    common = {"inner_steps": 10, "inner_step_size": 0.4, "outer_step_size": 0.05}
    stoc = _solve(q.problem(), StocBiO(neumann_steps=10, **common), 15, tol=1e3)
    with pytest.warns(bilevel.errors.ConvergenceWarning):
        aid = _solve(
            q.problem(), AID(linear_solver="neumann", linear_steps=10, **common), 15, tol=0.0
        )
    assert relative_error(stoc.x, aid.x) <= 1e-12 and relative_error(stoc.y, aid.y) <= 1e-12
    assert stoc.status == "max_iterations"  # stochastic methods never stop on tol
    assert stoc.history["grad_calls"][-1] == 15 * 11
    assert stoc.history["hvp_calls"][-1] == 15 * 11
    shared = StocBiO(neumann_steps=10, hessian_batches="shared", **common)
    assert torch.equal(_solve(q.problem(), shared, 15).x, stoc.x)


def test_soba_and_saba_without_data_converge_to_x_star(q):
    soba = _solve(q.problem(), SOBA(inner_step_size=0.4, outer_step_size=0.05), 400)
    assert _grad_ratio(q, soba.x) <= 1e-8
    assert relative_error(soba.x, q.x_star()) <= 1e-8
    # with one deterministic component the SAGA estimate is the plain direction
    saba = _solve(q.problem(), SABA(inner_step_size=0.4, outer_step_size=0.05), 400)
    assert relative_error(saba.x, soba.x) <= 1e-12
    assert soba.history["grad_calls"][-1] == 800 and saba.history["grad_calls"][-1] == 802


# ------------------------------------------------------------------ documented accuracies


def test_soba_with_decreasing_steps_reaches_documented_accuracy(q):
    """i.i.d. single-component batches, noise 0.05: ||grad h|| <= 1e-2 ||grad h(0)|| after
    1000 iterations of rho_t = 0.4 / t^(2/5), gamma_t = 0.1 / t^(3/5)."""
    fs = FiniteSumQuadratic.build(q, noise=0.05)
    method = SOBA(inner_step_size=0.4, outer_step_size=0.1, decreasing=True)
    assert method.step_sizes(32) == pytest.approx((0.4 / 4, 0.1 / 8))
    result = _solve(fs.sampled(), method, 1000, record_every=100)
    assert _grad_ratio(q, result.x) <= 1e-2
    assert relative_error(result.y, q.y_star(result.x)) <= 5e-2
    assert math.isnan(result.history["upper_value"][-1])  # not evaluated for stochastic data


def test_stocbio_reaches_documented_accuracy(q):
    """i.i.d. single-component batches, noise 0.05, T = Q = 10, constant alpha = 0.02:
    ||grad h|| <= 2e-2 ||grad h(0)|| after 300 iterations (an O(alpha) noise floor)."""
    fs = FiniteSumQuadratic.build(q, noise=0.05)
    method = StocBiO(inner_step_size=0.4, outer_step_size=0.02)
    result = _solve(fs.sampled(), method, 300, record_every=100)
    assert _grad_ratio(q, result.x) <= 2e-2
    assert result.history["grad_calls"][-1] == 300 * 11


def test_saba_converges_linearly_on_a_finite_sum_where_soba_stalls(q):
    """10 + 5 components, noise 0.5, constant rho = 0.2, gamma = 0.02: SABA reaches
    ||grad h|| <= 1e-6 ||grad h(0)|| and ||x - x*|| <= 1e-6 within 1000 iterations; SOBA
    with the same steps and i.i.d. sampling stays at its noise floor."""
    fs = FiniteSumQuadratic.build(q, noise=0.5)
    lower, upper = fs.singletons()
    saba = _solve(fs.problem(lower, upper), SABA(inner_step_size=0.2, outer_step_size=0.02), 1000)
    assert _grad_ratio(q, saba.x) <= 1e-6
    assert float((saba.x - q.x_star()).norm()) <= 1e-6
    assert relative_error(saba.y, q.y_star(saba.x)) <= 1e-6
    soba = _solve(fs.sampled(), SOBA(inner_step_size=0.2, outer_step_size=0.02), 1000)
    assert _grad_ratio(q, soba.x) >= 1e-3


def test_saba_memory_tracks_full_gradients_and_v_star(q):
    fs = FiniteSumQuadratic.build(q, noise=0.5)
    lower, upper = fs.singletons()
    problem = fs.problem(lower, upper)
    method = SABA(inner_step_size=0.2, outer_step_size=0.02)
    state = method.init(problem, torch.zeros(DIM_X), torch.zeros(DIM_Y))
    memory = state.extra["memory"]
    # full initial pass: the means are the exact gradients at (x0, y0)
    assert relative_error(memory["grad_y_lower"]["mean"], -q.b) <= 1e-12
    assert relative_error(memory["grad_y_upper"]["mean"], q.c) <= 1e-12
    assert state.grad_calls == fs.n + fs.m
    for it in range(1, 1001):
        state = method.step(problem, state, it)
    v_star = -torch.linalg.solve(q.H, q.A @ state.y + q.K @ state.x + q.c)
    assert relative_error(state.extra["v"], v_star) <= 1e-6
    for name, entry in memory.items():
        # the running means (updated incrementally) stay the means of the tables
        assert float((entry["mean"] - entry["table"].mean(0)).abs().max()) <= 1e-12, name
    zero = SABA(init_memory="zero").init(problem, torch.zeros(DIM_X), torch.zeros(DIM_Y))
    assert float(zero.extra["memory"]["grad_y_lower"]["table"].abs().max()) == 0.0


# ------------------------------------------------------------------ Neumann estimator


def test_stocbio_hypergradient_is_unbiased_for_the_truncated_series(q):
    """With fresh, independent batches for grad F, each Hessian product and the cross
    derivative, E[estimate] equals the deterministic Neumann value exactly (fixed x, y)."""
    fs = FiniteSumQuadratic.build(q, noise=0.5)
    problem = fs.sampled()
    x = torch.randn(DIM_X)
    y = q.y_star(x) + 0.3 * torch.randn(DIM_Y)
    Q, eta, draws = 4, 0.4, 1500
    exact = neumann(q.problem(), x, y, steps=Q, step_size=eta).grad
    # no inner steps and a zero outer step: every iteration is a fresh draw at (x, y)
    method = StocBiO(inner_steps=0, outer_step_size=0.0, neumann_steps=Q, neumann_step_size=eta)
    state = method.init(problem, x, y)
    samples = []
    for it in range(1, draws + 1):
        state = method.step(problem, state, it)
        samples.append(state.hypergrad)
    assert torch.equal(state.x, x) and torch.equal(state.y, y)
    samples = torch.stack(samples)
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(draws)
    assert float(samples.std(0).min()) > 0  # the estimate is random
    assert float(((mean - exact).abs() / se).max()) <= 4.5
    assert float(se.norm() / exact.norm()) <= 0.05  # the check has power
    # one Hessian product and one upper gradient per term, fresh batches every time
    assert state.extra["streams"]["lower"].delivered == draws * (Q + 1)
    assert state.extra["streams"]["upper"].delivered == draws


def test_expected_neumann_estimate_converges_to_closed_form(q):
    """At y = y*(x) the truncation error is ||B (I - eta H)^(Q+1) H^-1 grad_y F||, at most
    ||J|| (1 - eta mu)^(Q+1) ||H^-1 grad_y F|| for eta <= 1 / L."""
    x = torch.randn(DIM_X)
    y = q.y_star(x)
    eta, mu = 0.4, float(torch.linalg.eigvalsh(q.H).min())
    scale = float(torch.linalg.matrix_norm(q.J, ord=2)) * float(
        torch.linalg.solve(q.H, q.A @ y + q.K @ x + q.c).norm()
    )
    errors = []
    for Q in (2, 5, 10, 20, 40, 80):
        est = neumann(q.problem(), x, y, steps=Q, step_size=eta).grad
        errors.append(float((est - q.hypergradient(x)).norm()))
        assert errors[-1] <= scale * (1 - eta * mu) ** (Q + 1) * (1 + 1e-9) + 1e-13
    assert errors == sorted(errors, reverse=True) and errors[-1] <= 1e-12


# ------------------------------------------------------------------ checkpoint / resume


def _data(fs: FiniteSumQuadratic, kind: str):
    lower, upper = fs.singletons()
    if kind == "list":
        return lower, upper
    if kind == "sampled":
        return Sampled(fs.n, 2), Sampled(fs.m)
    if kind == "shuffled":
        return Shuffled(lower), Shuffled(upper)
    if kind == "dataloader":
        from torch.utils.data import DataLoader

        return (
            DataLoader(torch.arange(fs.n), batch_size=3, shuffle=True),
            DataLoader(torch.arange(fs.m), batch_size=2, shuffle=True),
        )
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        (SOBA(inner_step_size=0.2, outer_step_size=0.02), "list"),
        (SOBA(inner_step_size=0.2, outer_step_size=0.02, decreasing=True), "sampled"),
        (SOBA(inner_step_size=0.2, outer_step_size=0.02), "shuffled"),
        (SOBA(inner_step_size=0.2, outer_step_size=0.02), "dataloader"),
        (StocBiO(inner_steps=3, neumann_steps=3, inner_step_size=0.2), "list"),
        (StocBiO(inner_steps=3, neumann_steps=3, inner_step_size=0.2), "shuffled"),
        (SABA(inner_step_size=0.2, outer_step_size=0.02), "list"),
    ],
    ids=lambda p: p if isinstance(p, str) else p.name,
)
def test_checkpoint_resume_is_bit_for_bit(q, tmp_path, method, kind):
    fs = FiniteSumQuadratic.build(q, noise=0.5)

    def run(**kwargs):
        torch.manual_seed(0)
        return _solve(fs.problem(*_data(fs, kind)), method, 40, **kwargs)

    full = run()
    path = tmp_path / "run.pt"
    stopped = run(checkpoint=path, checkpoint_every=10, callback=lambda it, state: it == 25)
    assert stopped.status == "stopped"
    torch.manual_seed(123)  # the resumed run takes its RNG state from the checkpoint
    torch.rand(7)
    resumed = run(checkpoint=path, checkpoint_every=10, resume=True)
    assert torch.equal(resumed.x, full.x) and torch.equal(resumed.y, full.y)
    assert resumed.history["hypergrad_norm"][1:] == full.history["hypergrad_norm"][1:]
    assert resumed.history["grad_calls"] == full.history["grad_calls"]


def test_resuming_with_other_data_is_rejected(q, tmp_path):
    fs = FiniteSumQuadratic.build(q, noise=0.5)
    lower, upper = fs.singletons()
    path = tmp_path / "run.pt"
    for method in (SOBA(), SABA()):
        _solve(fs.problem(lower, upper), method, 10, checkpoint=path, checkpoint_every=5)
        with pytest.raises(ValueError, match="minibatches"):
            _solve(fs.problem(lower[:-1], upper), method, 20, checkpoint=path, resume=True)
        path.unlink()


@pytest.mark.parametrize("kind", ["list", "sampled", "shuffled", "dataloader"])
def test_batch_stream_survives_pickling(q, kind):
    fs = FiniteSumQuadratic.build(q)
    data = _data(fs, kind)[0]
    torch.manual_seed(0)
    stream = BatchStream(data, "lower_data", source="lower_data")
    for _ in range(23):  # several passes for finite data
        stream.next()
    buffer = io.BytesIO()
    torch.save({"stream": stream, "rng": torch.get_rng_state()}, buffer)
    expected = [stream.next() for _ in range(12)]
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    restored = saved["stream"]
    assert not restored.attached and restored.delivered == 23
    with pytest.raises(RuntimeError, match="attach"):
        restored.next()
    torch.manual_seed(99)
    restored.attach(data)
    torch.set_rng_state(saved["rng"])
    assert all(torch.equal(restored.next(), batch) for batch in expected)
    assert BatchStream(None, "upper_data").next() is None


def test_batch_stream_without_source_pickles_its_data():
    batches = [torch.tensor([k]) for k in range(4)]
    stream = BatchStream(batches, "my batches")
    assert stream.source is None and BatchStream(batches, "lower_data").source == "lower_data"
    for _ in range(6):
        stream.next()
    buffer = io.BytesIO()
    torch.save(stream, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert restored.attached and [int(restored.next()) for _ in range(3)] == [2, 3, 0]


# ------------------------------------------------------------------ bad input


def test_bad_inputs_are_rejected(q):
    fs = FiniteSumQuadratic.build(q)
    lower, upper = fs.singletons()
    x0, y0 = torch.zeros(DIM_X), torch.zeros(DIM_Y)
    with pytest.raises(TypeError, match="finite indexable sequence"):
        bilevel.solve(fs.problem(Sampled(fs.n), upper), x0, y0, SABA(), maxiter=5)
    with pytest.raises(TypeError, match="finite indexable sequence"):
        bilevel.solve(fs.problem(iter(lower), upper), x0, y0, SABA(), maxiter=5)
    with pytest.raises(ValueError, match="no minibatch"):
        bilevel.solve(fs.problem([], upper), x0, y0, SABA(), maxiter=5)
    with pytest.raises(ValueError, match="no minibatch"):
        bilevel.solve(fs.problem([], upper), x0, y0, SOBA(), maxiter=5)
    with pytest.raises(TypeError, match="iterable of minibatches"):
        bilevel.solve(fs.problem(3, upper), x0, y0, SOBA(), maxiter=5)
    with pytest.raises(ValueError, match="hessian_batches"):
        StocBiO(hessian_batches="fresh")
    with pytest.raises(ValueError, match=">= 0"):
        StocBiO(inner_steps=-1)
    with pytest.raises(ValueError, match="positive"):
        SOBA(inner_step_size=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        SABA(outer_step_size=-1.0)
    with pytest.raises(ValueError, match="init_memory"):
        SABA(init_memory="warm")
    with pytest.raises(TypeError, match="either in the Method instance"):
        bilevel.solve(q.problem(), x0, y0, SOBA(), maxiter=5, inner_step_size=0.1)


def test_divergence_is_reported(q):
    fs = FiniteSumQuadratic.build(q)
    lower, upper = fs.singletons()
    for method in (
        SOBA(inner_step_size=5.0),
        SABA(inner_step_size=5.0),
        StocBiO(inner_step_size=5.0),
    ):
        result = _solve(fs.problem(lower, upper), method, 200)
        assert result.status == "diverged", method.name


def test_pytree_variables(q):
    """Tuple x and dict y give the same iterates as flat tensors."""

    def lower(x, y):
        return q.lower(x[0], torch.cat([y["a"], y["b"]]))

    def upper(x, y):
        return q.upper(x[0], torch.cat([y["a"], y["b"]]))

    tree = BilevelProblem(upper=upper, lower=lower)
    x0, y0 = (torch.zeros(DIM_X),), {"a": torch.zeros(3), "b": torch.zeros(DIM_Y - 3)}
    for method in (
        StocBiO(inner_step_size=0.4, outer_step_size=0.05),
        SOBA(inner_step_size=0.4, outer_step_size=0.05),
        SABA(inner_step_size=0.4, outer_step_size=0.05),
    ):
        flat = _solve(q.problem(), method, 20)
        nested = bilevel.solve(tree, x0, y0, method, maxiter=20)
        assert relative_error(nested.x[0], flat.x) <= 1e-12, method.name
        assert relative_error(torch.cat([nested.y["a"], nested.y["b"]]), flat.y) <= 1e-12

"""No silent wrong answers (issue 11, item 3): negative curvature of the lower level,
inaccurate roots in ``custom_root``, time limits in the robust CLI's JSON, bad step sizes,
objectives that fail on the shapes or dtypes they are given."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from scipy.optimize import brentq
from typer.testing import CliRunner

import bilevel
import bilevel.methods._driver as driver
from bilevel import METHODS
from bilevel.errors import ConvergenceWarning, InaccurateRootError, NonFiniteError
from bilevel.implicit import custom_fixed_point, custom_root
from bilevel.solvers import LBFGS, GradientDescent, MirrorDescent, ProximalGradient

# --------------------------------------------------------------------------------------
# (a) non-convex lower level
# --------------------------------------------------------------------------------------


def _double_well() -> bilevel.BilevelProblem:
    """f(x, y) = (y^2 - 1)^2 - x y, F(x, y) = x^2 + y^2. At x = y = 0, grad_y f = 0 and
    the hypergradient vanishes (F is even in y), but y = 0 is a maximum of f(0, .)."""
    return bilevel.BilevelProblem(
        upper=lambda x, y: (x**2).sum() + (y**2).sum(),
        lower=lambda x, y: ((y**2 - 1) ** 2).sum() - (x * y).sum(),
    )


def _double_well_solution() -> tuple[float, float]:
    """Oracle: the local minimum of h near x = 0 on the branch y > 1/sqrt(3) of the lower
    minima: y*(x) from 4 y^3 - 4 y = x, h'(x) = 2 x + 2 y y'(x) with y' = 1 / (12 y^2 - 4),
    a root in y between 0.95 (h' < 0) and 2 (h' > 0), found by SciPy's brentq."""

    def h_prime(y: float) -> float:
        x = 4 * y**3 - 4 * y
        return 2 * x + 2 * y / (12 * y**2 - 4)

    y = brentq(h_prime, 0.95, 2.0, xtol=1e-15)
    return 4 * y**3 - 4 * y, y


@pytest.mark.parametrize("method", ["aid", "itd", "f2sa", "penalty"])
def test_a_lower_level_maximum_is_escaped(method):
    zero = torch.zeros(1, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = bilevel.solve(_double_well(), zero, zero, method)
    assert result.status == "converged"
    assert result.info["negative_curvature_escapes"] == 1
    assert result.info["lower_min_curvature"] > 0
    x_star, y_star = _double_well_solution()
    tol = 1e-6 if method in ("aid", "itd") else 5e-2  # the first-order ones: penalty bias
    assert abs(float(result.x) - x_star) <= tol * max(1.0, abs(x_star))
    assert abs(abs(float(result.y)) - y_star) <= tol * y_star


def test_an_escape_survives_checkpoint_and_resume(tmp_path):
    """The escape happens at iteration 1; the checkpoint written then holds the escaped
    ``y`` and the escape count, so a resumed run repeats the uninterrupted one exactly."""
    zero = torch.zeros(1, dtype=torch.float64)
    full = bilevel.solve(_double_well(), zero, zero, "aid")
    path = tmp_path / "run.pt"
    stopped = bilevel.solve(
        _double_well(),
        zero,
        zero,
        "aid",
        checkpoint=path,
        checkpoint_every=1,
        callback=lambda it, state: it == 2,
    )
    assert stopped.status == "stopped"
    resumed = bilevel.solve(
        _double_well(), zero, zero, "aid", checkpoint=path, checkpoint_every=1, resume=True
    )
    assert resumed.status == "converged" and resumed.n_iter == full.n_iter
    assert torch.equal(resumed.x, full.x) and torch.equal(resumed.y, full.y)
    assert resumed.info["negative_curvature_escapes"] == 1


def test_a_lower_level_maximum_is_reported_when_not_escaped(monkeypatch):
    monkeypatch.setattr(driver, "MAX_ESCAPES", 0)
    zero = torch.zeros(1, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="negative eigenvalue -4.000e\\+00"):
        result = bilevel.solve(_double_well(), zero, zero, "aid")
    assert result.status == "negative_curvature" and not result.converged
    assert result.info["lower_min_curvature"] == pytest.approx(-4.0)
    assert "saddle point or a maximum" in result.message


def test_negative_curvature_at_max_iterations_is_in_the_message():
    zero = torch.zeros(1, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="maxiter = 0; the lower-level Hessian"):
        result = bilevel.solve(_double_well(), zero, zero, "aid", maxiter=0)
    assert result.status == "max_iterations"
    assert result.info["lower_min_curvature"] == pytest.approx(-4.0)


def test_stochastic_methods_warn_about_negative_curvature_at_the_end():
    zero = torch.zeros(1, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="negative eigenvalue"):
        result = bilevel.solve(_double_well(), zero, zero, "soba", maxiter=0)
    assert result.info["lower_min_curvature"] < 0


@pytest.mark.parametrize("solver_cls", [GradientDescent, LBFGS])
def test_inner_solvers_escape_or_report_negative_curvature(solver_cls):
    def f(z, a):
        return ((z**2 - a) ** 2).sum()

    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    z, info = solver_cls(f).run(torch.zeros(2, dtype=torch.float64), a)
    assert info.converged and info.escapes == 1 and info.min_curvature == pytest.approx(8.0)
    torch.testing.assert_close(z.detach().abs(), torch.ones(2, dtype=torch.float64))
    (grad,) = torch.autograd.grad(z.pow(2).sum(), a)  # |z|^2 = 2 a: derivative 2
    assert float(grad) == pytest.approx(2.0, rel=1e-6)
    with pytest.warns(ConvergenceWarning, match="negative curvature -4.000e\\+00"):
        _, info = solver_cls(f, escape_saddles=False).run(torch.zeros(2, dtype=torch.float64), a)
    assert not info.converged and info.min_curvature == pytest.approx(-4.0)


# --------------------------------------------------------------------------------------
# (b) custom_root checks the solver's output
# --------------------------------------------------------------------------------------


def _optimality(x, a):
    return x - a


def test_custom_root_warns_on_an_inaccurate_root():
    @custom_root(_optimality)
    def stops_early(init, a):
        return init + 0.5 * (a - init)  # half way: the residual only halves

    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with pytest.warns(ConvergenceWarning, match="inaccurate root.*8.660e-01"):
        stops_early(torch.zeros(3, dtype=torch.float64), a)

    @custom_root(_optimality, on_inaccurate="raise")
    def raises(init, a):
        return init + 0.5 * (a - init)

    with pytest.raises(InaccurateRootError, match="residual_tol"):
        raises(torch.zeros(3, dtype=torch.float64), a)

    @custom_fixed_point(lambda x, a: a, residual_tol=None)
    def unchecked(init, a):
        return init

    unchecked(torch.zeros(3, dtype=torch.float64), a)  # no warning: the check is off


def test_custom_root_refuses_a_non_finite_root_with_the_library_error():
    @custom_root(_optimality)
    def blows_up(init, a):
        return init + a / 0.0  # inf (and nan where a = 0)

    a = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        blows_up(torch.zeros(3, dtype=torch.float64), a)
    with pytest.raises(NonFiniteError, match="NaN or inf"):  # the batched (vmap) path too
        torch.func.vmap(lambda t: blows_up(torch.zeros(3, dtype=torch.float64), t))(
            torch.ones(2, 3, dtype=torch.float64)
        )


def test_custom_root_accepts_accurate_roots_quietly():
    @custom_root(_optimality)
    def exact(init, a):
        return a.clone()

    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = exact(torch.zeros(3, dtype=torch.float64), a)
        # warm start at the root: the residual at init is 0, the sqrt(eps) floor applies
        exact(a.detach().clone(), a)
        # under vmap the reference residual is computed per element
        torch.func.vmap(lambda t: exact(torch.zeros(3, dtype=torch.float64), t))(
            torch.ones(2, 3, dtype=torch.float64)
        )
    (g,) = torch.autograd.grad(x.sum(), a)
    torch.testing.assert_close(g, torch.ones(3, dtype=torch.float64))


def test_custom_root_under_vmap_warns_per_element():
    @custom_root(_optimality)
    def stops_early(init, a):
        return init + 0.5 * (a - init)

    with pytest.warns(ConvergenceWarning, match="inaccurate root"):
        torch.func.vmap(lambda t: stops_early(torch.zeros(3, dtype=torch.float64), t))(
            torch.ones(2, 3, dtype=torch.float64)
        )


def test_custom_root_options_are_validated():
    with pytest.raises(ValueError, match="residual_tol"):
        custom_root(_optimality, residual_tol=0.0)
    with pytest.raises(ValueError, match="on_inaccurate"):
        custom_root(_optimality, on_inaccurate="shout")


# --------------------------------------------------------------------------------------
# (c) a time limit with no evaluated solution: exit code and strict JSON
# --------------------------------------------------------------------------------------


def _strict_json(text: str):
    """Parse rejecting NaN/Infinity tokens; no value may be a non-finite string either."""

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    data = json.loads(text, parse_constant=refuse)

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert value not in ("nan", "inf", "-inf", "NaN", "Infinity", "-Infinity"), value
            assert not (isinstance(value, float) and not math.isfinite(value))

    walk(data)
    return data


def test_robust_time_limit_exits_nonzero_with_strict_json(tmp_path):
    from bilevel.cli._app import app

    runner = CliRunner()
    inst, out = tmp_path / "inst.json", tmp_path / "result.json"
    args = ["robust", "generate", "knapsack", "--n", "30", "--type", "ASC", "--dev", "0.3"]
    res = runner.invoke(app, [*args, "--delta", "1.0", "--seed", "5", "--out", str(inst)])
    assert res.exit_code == 0, res.output
    # far too short to evaluate any first-stage decision exactly
    res = runner.invoke(
        app,
        ["robust", "solve", str(inst), "--time-limit", "1e-6", "--quiet", "--out", str(out)],
        catch_exceptions=False,
    )
    assert res.exit_code == 4, res.output  # EXIT_TIME_LIMIT (CLI conventions)
    assert "objective  nan" not in res.output
    assert "status     time_limit" in res.output and "not proven optimal" in res.output
    data = _strict_json(out.read_text())
    assert data["status"] == "time_limit"
    assert data["objective"] is None or isinstance(data["objective"], float)
    assert data["gap"] is None  # no finite gap without an evaluated incumbent


def test_robust_result_to_dict_maps_non_finite_values_to_null():
    import numpy as np

    from bilevel.robust.model import RobustResult

    result = RobustResult(
        x=np.zeros(2),
        objective=math.nan,
        status="time_limit",
        lower_bound=-math.inf,
        upper_bound=3.0,
        gap=math.inf,
        n_iter=1,
        time=0.1,
        history={"gap": [math.inf, 0.5]},
        info={"objective_bounds": (-math.inf, np.float64(math.inf))},
    )
    data = _strict_json(json.dumps(result.to_dict(), allow_nan=False))
    assert data["objective"] is None and data["lower_bound"] is None
    assert data["upper_bound"] == 3.0 and data["history"]["gap"] == [None, 0.5]
    assert data["info"]["objective_bounds"] == [None, None]


# --------------------------------------------------------------------------------------
# (d) bad input
# --------------------------------------------------------------------------------------

STEP_FIELDS = {
    "aid": ["inner_step_size", "outer_step_size"],
    "itd": ["inner_step_size", "outer_step_size"],
    "stocbio": ["inner_step_size", "neumann_step_size"],
    "soba": ["inner_step_size"],
    "saba": ["inner_step_size"],
    "f2sa": ["inner_step_size", "outer_step_size"],
    "penalty": ["inner_step_size", "outer_step_size"],
    "bome": ["inner_step_size", "outer_step_size"],
    "vpbgd": ["inner_step_size", "step_size", "penalty"],
    "borep": ["inner_step_size", "linear_step_size"],
    "bsvrb": ["inner_step_size", "linear_step_size"],
}
#: Outer steps that may be 0 (documented: "0 freezes x"), but never negative.
FREEZABLE = {
    "stocbio": "outer_step_size",
    "soba": "outer_step_size",
    "saba": "outer_step_size",
    "borep": "outer_step_size",
    "bsvrb": "outer_step_size",
}


@pytest.mark.parametrize("method", sorted(STEP_FIELDS))
def test_zero_or_negative_step_sizes_are_rejected_by_name(method):
    cls = METHODS[method]
    for field in STEP_FIELDS[method]:
        for bad in (0.0, -0.1, math.nan):
            with pytest.raises(ValueError, match=f"{field} must be a positive finite number"):
                cls(**{field: bad})
    if method in FREEZABLE:
        field = FREEZABLE[method]
        cls(**{field: 0.0})
        with pytest.raises(ValueError, match=f"{field} must be a non-negative finite number"):
            cls(**{field: -1.0})


def test_solver_and_estimator_step_sizes_are_rejected_by_name():
    f = lambda x: (x**2).sum()
    for make in (
        lambda: GradientDescent(f, step_size=0.0),
        lambda: ProximalGradient(f, lambda y, hp, s: y, step_size=-1.0),
        lambda: MirrorDescent(f, step_size=0.0),
    ):
        with pytest.raises(ValueError, match="step_size must be a positive finite number"):
            make()
    problem = _double_well()
    zero = torch.zeros(1, dtype=torch.float64)
    for name in ("neumann", "unrolled", "forward", "penalty"):
        estimator = bilevel.hypergrad.ESTIMATORS[name]
        with pytest.raises(ValueError, match=f"{name}: step_size must be a positive"):
            estimator(problem, zero, zero, step_size=-0.5)


def test_objective_shape_errors_name_the_function_and_the_arguments():
    A = torch.randn(4, 3, dtype=torch.float64)
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: (y**2).sum(), lower=lambda x, y: ((A @ x - y) ** 2).sum()
    )
    x_bad = torch.zeros(5, dtype=torch.float64)  # A expects 3 entries
    y = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(RuntimeError) as excinfo:
        bilevel.solve(problem, x_bad, y, "aid", inner_step_size=0.1, outer_step_size=0.1)
    message = str(excinfo.value)
    assert message.startswith("BilevelProblem.lower(x, y) raised RuntimeError")
    assert "x: Tensor(shape=(5,), dtype=torch.float64)" in message
    assert "y: Tensor(shape=(4,), dtype=torch.float64)" in message
    assert isinstance(excinfo.value.__cause__, RuntimeError)  # the original error, chained


def test_objective_dtype_errors_name_the_dtypes():
    W = torch.randn(3, 3, dtype=torch.float64)
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: (W @ y).sum(), lower=lambda x, y: ((y - x) ** 2).sum()
    )
    x, y = torch.zeros(3, dtype=torch.float32), torch.zeros(3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="BilevelProblem.upper.*dtype=torch.float32"):
        problem.upper_value(x, y)
    # a pytree x and the minibatch form
    batched = bilevel.BilevelProblem(
        upper=lambda x, y, batch: (W @ x["w"]).sum(), lower=lambda x, y, batch: (y**2).sum()
    )
    with pytest.raises(RuntimeError, match=r"upper\(x, y, batch\).*x: \{'w': Tensor"):
        batched.upper_value({"w": x}, y, batch=0)


def test_errors_of_other_types_keep_their_type_and_get_a_note():
    class Custom(RuntimeError):
        def __init__(self, code: int):
            super().__init__(f"code {code}")

    def upper(x, y):
        raise Custom(7)

    problem = bilevel.BilevelProblem(upper=upper, lower=lambda x, y: (y**2).sum())
    with pytest.raises(Custom) as excinfo:
        problem.upper_value(torch.zeros(2), torch.zeros(2))
    assert "BilevelProblem.upper(x, y)" in excinfo.value.__notes__[0]

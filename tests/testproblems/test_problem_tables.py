"""The problem tables (``bilevel/testproblems/literature.toml``, ``bolib.toml``), their loader and
the expression evaluator (``bilevel.testproblems._expr``).

Oracles:

* ``tests/data/problem_tables_reference.json``: F, f, G and g at two points per problem,
  computed by the hand-written Python lambdas that the tables replaced (run at commit
  396881e, where ``tests/testproblems/test_problem_tables.py`` compared the tables with those lambdas:
  values and Jacobians in x and y bit-identical at the start, the listed solution and six
  random points of each of the 152 problems);
* float64 central differences for the Jacobians that torch.func computes through the
  evaluator;
* Python itself: an expression evaluates bit for bit like the same text as Python code.
"""

from __future__ import annotations

import json
import math
import pickle
from importlib import resources
from pathlib import Path

import pytest
import torch

from bilevel.testproblems import LITERATURE, load_problems
from bilevel.testproblems._expr import Expression, ExpressionRows
from bilevel.testproblems.bolib import BOLIB

ALL = {**LITERATURE, **BOLIB}
FNS = ("upper", "lower", "upper_ineq", "lower_ineq")
REFERENCE = json.loads(
    (Path(__file__).parents[1] / "data" / "problem_tables_reference.json").read_text()
)


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_tables_are_package_data_and_complete():
    files = resources.files("bilevel.testproblems")
    assert (files / "literature.toml").is_file() and (files / "bolib.toml").is_file()
    assert len(LITERATURE) == 61 and len(BOLIB) == 91
    assert set(REFERENCE) == set(ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_values_match_the_replaced_code(name):
    p = ALL[name]
    for point in REFERENCE[name]:
        x, y = _t(point["x"]), _t(point["y"])
        for fn in FNS:
            assert (getattr(p, fn) is None) == (fn not in point), fn
            if fn in point:
                value = getattr(p, fn)(x, y)
                assert value.dtype == torch.float64
                assert value.dim() == (0 if fn in ("upper", "lower") else 1), fn
                torch.testing.assert_close(value.reshape(-1), _t(point[fn]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ALL))
def test_jacobians_match_central_differences(name):
    p = ALL[name]
    point = REFERENCE[name][0]
    x, y = _t(point["x"]), _t(point["y"])
    h = 1e-6
    for fn in (getattr(p, f) for f in FNS if getattr(p, f) is not None):
        for arg, z in enumerate((x, y)):
            if not z.numel():
                continue
            jac = torch.func.jacrev(fn, argnums=arg)(x, y).reshape(-1, z.numel())
            for i in range(z.numel()):
                e = torch.zeros_like(z)
                e[i] = h
                plus = fn(*((x + e, y) if arg == 0 else (x, y + e)))
                minus = fn(*((x - e, y) if arg == 0 else (x, y - e)))
                fd = ((plus - minus) / (2 * h)).reshape(-1)
                torch.testing.assert_close(
                    jac[:, i], fd, rtol=1e-6, atol=1e-6 * (1 + fd.abs().max())
                )


def _violation(p):
    x, y = p.start()
    worst = 0.0
    for fn in (p.upper_ineq, p.lower_ineq):
        if fn is not None:
            worst = max(worst, float(fn(x, y).max()))
    for bounds, z in ((p.x_bounds, x), (p.y_bounds, y)):
        if bounds is not None and z.numel():
            lo, hi = _t(bounds[0]), _t(bounds[1])
            worst = max(worst, float((lo - z).max()), float((z - hi).max()))
    return worst


def test_tags():
    for p in ALL.values():
        assert ("starts_infeasible" in p.tags) == (_violation(p) > 0), p.name
        cls = p.tags[0]
        if p.name in BOLIB:
            assert cls in ("linear", "nonlinear") and f"({cls})" in p.source, p.name
        else:
            assert f"file {cls}/{p.name}.mod" in p.source, p.name
    assert sum("starts_infeasible" in p.tags for p in BOLIB.values()) == 57


# ---------------- the evaluator ----------------


@pytest.mark.parametrize(
    "text",
    [
        "(4 / 30) * (1 - x[0]) * y[1] ** 3 - 0.02 * x[0] ** 2",
        "-y[0] ** 2 + 2 * pi * cos(x[1]) / 3",
        "x[0] ** (-0.71) / y[1] + exp(-y[0]) - sqrt(abs(y[1])) + log(x[1]) * sin(y[0])",
        "sum(y ** 2) - 1.5 + +x[0]",
    ],
)
def test_expression_evaluates_like_python(text):
    x, y = _t([0.7, 1.3]), _t([-0.4, 2.1])
    namespace = {"x": x, "y": y, "pi": math.pi, "sum": torch.sum}
    namespace.update({f: getattr(torch, f) for f in ("exp", "log", "sqrt", "sin", "cos", "abs")})
    expected = eval(text, {"__builtins__": {}}, namespace)  # trusted literal text of this test
    assert torch.equal(Expression(text, 2, 2)(x, y), expected)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("__import__('os').system('true')", "calls take one argument"),
        ("x.sum()", "calls take one argument"),
        ("y.T", "outside the grammar"),
        ("z + 1", "unknown name"),
        ("torch", "unknown name"),
        ("x[2]", r"index must be an integer literal in \[0, 2\)"),
        ("x[-1]", "index must be an integer literal"),
        ("x[0:1]", "index must be an integer literal"),
        ("y[0.0]", "index must be an integer literal"),
        ("x[0] if y[0] else 1", "outside the grammar"),
        ("x[0] < 1", "outside the grammar"),
        ("x[0] // 2", "outside the grammar"),
        ("True * x[0]", "only int and float literals"),
        ("'a'", "only int and float literals"),
        ("exp(x[0], y[0])", "calls take one argument"),
        ("exp(x[0]", "not valid syntax"),
        ("lambda: 0", "outside the grammar"),
    ],
)
def test_expression_rejects_everything_else(text, match):
    with pytest.raises(ValueError, match=match):
        Expression(text, 2, 1)


def test_rows_sign_broadcasting_and_pickling():
    assert torch.equal(ExpressionRows(("1", "-2"), 1, 1)(_t([0.0]), _t([0.0])), _t([1, -2]))
    rows = ExpressionRows(("x[0] - y[0]", "2 * y[0]"), 1, 1, sign=-1)
    x, y = _t([2.0]), _t([[0.5, 1.5, 3.0]])  # y with a trailing batch dimension
    expected = -torch.stack([x[0] - y[0], 2 * y[0]])
    assert torch.equal(rows(x, y), expected)
    assert torch.equal(pickle.loads(pickle.dumps(rows))(x, y), expected)
    f = Expression("x[0] * y[0]", 1, 1)
    assert pickle.loads(pickle.dumps(f)) == f and "x[0] * y[0]" in repr(f)
    assert torch.equal(torch.func.vmap(f, in_dims=(None, 0))(x, y.T), (x[0] * y.T[:, 0]))
    with pytest.raises(ValueError, match="sign"):
        ExpressionRows(("x[0]",), 1, 1, sign=2)
    with pytest.raises(ValueError, match="at least one row"):
        ExpressionRows((), 1, 1)


# ---------------- the loader ----------------

GOOD = """
constraint_sense = ">= 0"
[[problem]]
name = "toy"
citation = "a test"
n_x = 1
n_y = 1
upper = "(x[0] - 1) ** 2 + y[0] ** 2"
lower = "(y[0] - x[0]) ** 2"
lower_ineq = ["y[0]"]
F_star = 0.5
x0 = [0.0]
tags = ["mine"]
"""


def test_load_a_user_table(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    (p,) = load_problems(path).values()
    assert (p.name, p.n_x, p.n_y, p.F_star, p.f_star, p.tags) == ("toy", 1, 1, 0.5, None, ("mine",))
    x, y = p.start()
    assert torch.equal(x, _t([0.0])) and torch.equal(y, _t([0.0]))
    assert torch.equal(p.lower_ineq(_t([1.0]), _t([2.0])), _t([-2.0]))  # y >= 0 as -y <= 0
    assert p.upper_ineq is None and p.x_bounds is None
    assert float(p.problem().upper_value(_t([1.0]), _t([0.5]))) == 0.25


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("n_y = 1", "n_y = 1\ncolour = 'red'"), r"'toy': unknown keys \['colour'\]"),
        (("F_star = 0.5\n", ""), r"missing keys \['F_star'\]"),
        (('lower_ineq = ["y[0]"]', 'lower_ineq = ["y[1]"]'), "'toy', lower_ineq: expression"),
        (('"(y[0] - x[0]) ** 2"', '"open(y)"'), "'toy', lower: expression"),
        (('"(y[0] - x[0]) ** 2"', "2.0"), "'toy', lower: an expression must be a string"),
        (('">= 0"', '"< 0"'), "constraint_sense must be one of"),
        (("x0 = [0.0]", "x0 = [0.0, 1.0]"), "x0 has 2 entries, n_x = 1"),
        (("x0 = [0.0]", "y_bounds = [[0.0], [1.0, 2.0]]"), "y_bounds must be two lists of 1"),
        (("tags", "tags"), "duplicate problem names"),
    ],
)
def test_load_rejects_bad_entries(tmp_path, edit, match):
    text = GOOD.replace(*edit)
    if edit[0] == "tags":
        text += text[text.index("[[problem]]") :]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_problems(path)
    assert str(err.value).startswith("bad.toml: ")

"""The literature test set: transcription checks against the listed solutions.

Oracle: each source lists a best known solution (x*, y*) and its values F*, f*; evaluating
the transcribed functions there must reproduce them (to the rounding of the listed digits),
the point must be feasible, and y* must be lower-optimal at x* by a brute-force grid over
Y (feasible grid points only). These checks do not involve the solver.
"""

from __future__ import annotations

import pytest
import torch

from bilevel import BilevelProblem
from bilevel.testproblems.literature import LITERATURE, literature_problem

WITH_SOLUTION = [p for p in LITERATURE.values() if p.y_star is not None]
# f* cannot be checked at the rounded listed point: sib_1997_01 lists an f* inconsistent
# with its (x*, y*) (see its note); in b_1998_04, f = 0.5 y^2 + 500 y - 50 x y changes by
# 0.15 with the rounding of x* = 10.02 (the exact optimum gives the listed -0.336)
INCONSISTENT_F = {"sib_1997_01", "b_1998_04"}


def _point(p):
    x = torch.tensor(p.x_star if p.x_star is not None else (), dtype=torch.float64)
    return x, torch.tensor(p.y_star, dtype=torch.float64)


def test_size_and_metadata():
    assert len(LITERATURE) >= 25
    for p in LITERATURE.values():
        assert p.citation and p.source, p.name
        assert isinstance(p.problem(), BilevelProblem)
        x0, y0 = p.start()
        assert x0.shape == (p.n_x,) and y0.shape == (p.n_y,)
        assert len(p.y_bounds[0]) == len(p.y_bounds[1]) == p.n_y
        if p.n_x:
            assert len(p.x_bounds[0]) == len(p.x_bounds[1]) == p.n_x
        else:
            assert p.x_bounds is None


def test_lookup():
    assert literature_problem("mb_2007_06").F_star == -1.0
    with pytest.raises(KeyError, match="unknown literature problem"):
        literature_problem("nope")


@pytest.mark.parametrize("p", WITH_SOLUTION, ids=lambda p: p.name)
def test_listed_solution_reproduces_listed_values(p):
    x, y = _point(p)
    assert x.shape == (p.n_x,) and y.shape == (p.n_y,)
    # listed points are rounded to ~3 digits: allow the resulting error
    scale = max(1.0, abs(p.F_star))
    F = float(p.upper(x, y))
    tol = 0.01 if p.name != "c_2002_04" else 0.001
    assert abs(F - p.F_star) <= tol * scale + 5e-3, (F, p.F_star)
    if p.f_star is not None and p.name not in INCONSISTENT_F:
        f = float(p.lower(x, y))
        assert abs(f - p.f_star) <= 0.01 * max(1.0, abs(p.f_star)) + 5e-3, (f, p.f_star)
    # feasibility (to the rounding of the listed digits)
    for name in ("upper_ineq", "lower_ineq"):
        fn = getattr(p, name)
        if fn is not None:
            assert float(fn(x, y).max()) <= 0.01 * scale, name
    lo, hi = (torch.tensor(b) for b in p.y_bounds)
    assert bool((y >= lo - 1e-9).all() and (y <= hi + 1e-9).all())
    if p.n_x:
        lo, hi = (torch.tensor(b) for b in p.x_bounds)
        assert bool((x >= lo - 1e-9).all() and (x <= hi + 1e-9).all())


def _grid(p, points_per_dim):
    lo, hi = p.y_bounds
    axes = [torch.linspace(a, b, points_per_dim, dtype=torch.float64) for a, b in zip(lo, hi)]
    return torch.cartesian_prod(*axes).reshape(-1, p.n_y)


# at x* the lower feasible set of these is the single point y*, which the rounding of the
# listed digits empties (b_1998_07) or which is tested separately (dd_2012_01)
SINGLETON = {"b_1998_07", "dd_2012_01"}
SMALL = [p for p in WITH_SOLUTION if p.n_y <= 2 and p.name not in SINGLETON]


@pytest.mark.parametrize("p", SMALL, ids=lambda p: p.name)
def test_listed_y_is_lower_optimal_on_a_grid(p):
    """Brute force: no feasible grid point of Y beats f(x*, y*) by more than the rounding.

    The functions index ``y[0]``, ``y[1]``, so they evaluate a whole grid at once when
    ``y`` is the transposed grid (rows = coordinates)."""
    x, y = _point(p)
    grid = _grid(p, 4001 if p.n_y == 1 else 401).T
    f_star = float(p.lower(x, y))
    values = p.lower(x, grid).expand(grid.shape[1])
    if p.lower_ineq is not None:
        feasible = p.lower_ineq(x, grid).reshape(-1, grid.shape[1]).amax(0) <= 1e-6
        values = values[feasible]
    assert values.numel() > 0
    assert float(values.min()) >= f_star - 0.02 * max(1.0, abs(f_star)), (
        float(values.min()),
        f_star,
    )


def test_dd_2012_01_lower_feasible_set_is_a_point():
    """The corrected entry: y = 0 is the only lower-feasible point, so F = (x - 1)^2."""
    p = LITERATURE["dd_2012_01"]
    x = torch.tensor([0.3])
    assert float(p.lower_ineq(x, torch.tensor([0.0]))) == 0.0
    for y in (1e-8, -1e-8, 1.0):
        assert float(p.lower_ineq(x, torch.tensor([y]))) > 0
    assert float(p.upper(torch.tensor([1.0]), torch.tensor([0.0]))) == p.F_verified == 0.0
    assert p.F_reference == 0.0 and p.F_star == 1.0


def test_c_2002_01_verified_optimum():
    """The lower level gives y = (15 - x) / 2 (f = 0); on a fine grid of x in [5, 15]
    (G: y <= x) the minimum of F is the verified value, below the listed (x*, y*) value
    once y is lower-optimal."""
    p = LITERATURE["c_2002_01"]
    x = torch.linspace(5, 15, 1_000_001, dtype=torch.float64)
    F = (10 - x) ** 3 + (10 - (15 - x) / 2) ** 3
    assert float(F.min()) == pytest.approx(p.F_verified, abs=1e-4)
    listed = torch.tensor(p.y_star)
    assert float(p.lower(torch.tensor(p.x_star), listed)) > 1e-6  # not lower-optimal


def test_reference_values():
    corrected = {name for name, p in LITERATURE.items() if p.F_verified is not None}
    assert corrected == {"c_2002_01", "c_2002_04", "dd_2012_01", "mb_2007_22"}
    c4 = LITERATURE["c_2002_04"]
    assert c4.F_verified == pytest.approx((10 - 3**-0.5) ** 2, abs=1e-4)

"""The literature and BOLIB tables (package data) against the Python code they replace.

Oracle: the old hand-written lambdas (``literature._problems()``, ``bolib._problems()``).
Every field must be equal, and F, f, G, g and their Jacobians in x and y must agree to
1e-12 (float64) at the start point, the listed solution and 6 random points per problem.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from bilevel.problems import bolib, literature

OLD = {p.name: p for p in literature._problems() + bolib._problems()}
NEW = {**literature.load_problems("literature.toml"), **literature.load_problems("bolib.toml")}
FNS = ("upper", "lower", "upper_ineq", "lower_ineq")
DATA = ("citation", "n_x", "n_y", "x_bounds", "y_bounds", "F_star", "f_star", "x_star",
        "y_star", "x0", "y0", "source", "note", "F_verified")  # fmt: skip


def _points(p, rng):
    x0, y0 = p.start()
    pts = [(x0, y0)]
    if p.y_star is not None:
        pts.append((torch.tensor(p.x_star or (), dtype=torch.float64), torch.tensor(p.y_star)))
    for k in range(6):
        if p.y_bounds is not None and k % 2 == 0:  # inside the box
            boxes = [p.x_bounds, p.y_bounds] if p.n_x else [None, p.y_bounds]
            x, y = (
                torch.zeros(0, dtype=torch.float64)
                if b is None
                else torch.tensor(rng.uniform(np.maximum(b[0], -50), np.minimum(b[1], 50)))
                for b in boxes
            )
        elif k % 2:  # positive, for powers and logarithms
            x, y = (torch.tensor(rng.uniform(0.1, 3, n)) for n in (p.n_x, p.n_y))
        else:
            x, y = (z + torch.tensor(rng.uniform(-2, 2, z.shape)) for z in (x0, y0))
        pts.append((x.double(), y.double()))
    return pts


def test_same_problems():
    assert set(OLD) == set(NEW) and len(NEW) == 61 + 91


@pytest.mark.parametrize("name", sorted(OLD))
def test_same_data_values_and_gradients(name):
    old, new = OLD[name], NEW[name]
    for field in DATA:
        assert getattr(old, field) == getattr(new, field), field
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    checked = 0
    for x, y in _points(old, rng):
        for fn in FNS:
            f_old, f_new = getattr(old, fn), getattr(new, fn)
            assert (f_old is None) == (f_new is None), fn
            if f_old is None:
                continue
            v_old, v_new = f_old(x, y), f_new(x, y)
            assert v_new.dtype == v_old.dtype and v_new.shape == v_old.shape, fn
            torch.testing.assert_close(v_new, v_old, rtol=1e-12, atol=1e-12, equal_nan=True)
            for arg in (0, 1):
                if (x, y)[arg].numel() == 0:
                    continue
                j_old = torch.func.jacrev(f_old, argnums=arg)(x, y)
                j_new = torch.func.jacrev(f_new, argnums=arg)(x, y)
                torch.testing.assert_close(j_new, j_old, rtol=1e-12, atol=1e-12, equal_nan=True)
            checked += int(torch.isfinite(v_old).all())
    assert checked >= 8  # most points are in the domain

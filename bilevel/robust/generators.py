r"""Random instances: the robust knapsack of Arslan and Detienne (2022) and capital budgeting.

Knapsack (:func:`generate_knapsack`)
------------------------------------
The procedure of Arslan and Detienne (2022), as documented in the published instance set
(``RKP_<type>_n<n>_R1000_H100_h<h>_dev<dev>_d<delta>``) and in the Neur2RO code that
re-implements it; with ``R = 1000``, ``H = 100``:

- weights ``c_i ~ U[1, R]``; capacity ``C = h / (H + 1) * sum_i c_i`` (Pisinger's
  convention: instance ``h`` of a series of ``H``, any integer ``1 <= h <= H``; the
  published set has ``h in {40, 80}``);
- nominal profits by correlation type: ``UN``: ``pbar_i ~ U[1, R]``; ``WC``:
  ``pbar_i ~ U[c_i - R/20, c_i + R/20]``; ``ASC``: ``pbar_i ~ U[c_i + R/10 - R/1000,
  c_i + R/10 + R/1000]``; ``SC``: ``pbar_i = c_i + R/10``;
- degradations ``phat_i = pbar_i * U[(1 - delta)/2, (1 + delta)/2]``
  (``delta in {0.1, 0.5, 1}``);
- outsourcing costs ``f_i = pbar_i * U[1.1, 1.5]``;
- repair weights: ``UN``: ``t_i ~ U[1, c_i]``; ``WC``: ``t_i ~ U[phat_i/2 - R/40,
  phat_i/2 + R/40]``; ``ASC``: ``t_i ~ U[phat_i/2 + c_i/10 - R/1000, phat_i/2 + c_i/10 +
  R/1000]``; ``SC``: ``t_i = phat_i/2 + c_i/10``;
- budget ``Gamma = n * dev`` (``dev in {0.1, 0.15, 0.2}``).

The published files hold integers: every quantity is rounded down and clipped at 1 (this
rounding is inferred from the files: their capacities equal ``floor(h/(H+1) sum c)``, the
``SC`` profits ``c_i + 100`` exactly, and items with ``pbar_i = 1`` occur in ``WC``).
``integer=False`` keeps the real values. The random streams differ from the authors'
(C++), so the published instances are not reproduced number for number; read those with
:func:`bilevel.robust.read_knapsack_instance`.

Capital budgeting (:func:`generate_capital_budgeting`)
------------------------------------------------------
Subramanyam, Gounaris and Wiesemann (2020): ``cbar_i ~ U[0, 10]``, ``rbar_i = cbar_i / 5``,
budget ``B = sum_i cbar_i / 2``, ``k = 4`` risk factors, ``Phi_i`` and ``Psi_i`` uniform on
the unit simplex (spacings of sorted uniforms), ``theta = 0.8``, ``xi in [-1, 1]^4``.
"""

from __future__ import annotations

import numbers

import numpy as np

from bilevel.robust.model import TwoStageRobustProblem
from bilevel.robust.problems import capital_budgeting_problem, knapsack_problem

__all__ = [
    "KNAPSACK_TYPES",
    "PUBLISHED_GRID",
    "generate_capital_budgeting",
    "generate_knapsack",
    "sample_knapsack_class",
]

KNAPSACK_TYPES = ("UN", "WC", "ASC", "SC")

#: The parameter grid of Arslan and Detienne's published set (``h``, ``dev``, ``delta``).
PUBLISHED_GRID = {"h": (40, 80), "dev": (0.1, 0.15, 0.2), "delta": (0.1, 0.5, 1.0)}


def generate_knapsack(
    n: int,
    correlation: str = "UN",
    *,
    dev: float = 0.1,
    delta: float = 0.5,
    h: int = 40,
    R: float = 1000.0,
    H: int = 100,
    seed: int | np.random.Generator | None = None,
    integer: bool = True,
) -> TwoStageRobustProblem:
    """A two-stage robust knapsack instance by Arslan and Detienne's procedure.

    Parameters
    ----------
    n:
        Number of items.
    correlation:
        ``"UN"``, ``"WC"``, ``"ASC"`` or ``"SC"`` (see the module docstring).
    dev:
        Budget factor: ``Gamma = n * dev``.
    delta:
        Degradation spread: ``phat_i / pbar_i ~ U[(1 - delta)/2, (1 + delta)/2]``.
    h, R, H:
        Capacity ``C = h / (H + 1) sum c`` and the data range ``R``. ``h`` is an integer
        with ``1 <= h <= H`` (Pisinger's instance number within a series of ``H``, so that
        ``0 < C < sum c``); Arslan and Detienne publish ``h = 40`` and ``h = 80`` with
        ``H = 100``.
    seed:
        Seed or generator.
    integer:
        Round every quantity down and clip it at 1, as in the published files.
    """
    if correlation not in KNAPSACK_TYPES:
        raise ValueError(f"correlation must be one of {KNAPSACK_TYPES}, got {correlation!r}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must lie in [0, 1], got {delta}")
    if not 0.0 <= dev <= 1.0:
        raise ValueError(f"dev must lie in [0, 1], got {dev}")
    if isinstance(H, bool) or not isinstance(H, numbers.Integral) or H < 1:
        raise ValueError(f"H must be a positive integer, got {H!r}")
    if isinstance(h, bool) or not isinstance(h, numbers.Integral) or not 1 <= h <= H:
        raise ValueError(
            f"h must be an integer with 1 <= h <= H = {H} (capacity h / (H + 1) of the total "
            f"weight; the published instances use 40 and 80), got {h!r}"
        )
    rng = np.random.default_rng(seed)

    def rnd(v):
        return np.maximum(np.floor(v), 1.0) if integer else v

    c = rnd(rng.uniform(1, R, n))
    if correlation == "UN":
        pbar = rng.uniform(1, R, n)
    elif correlation == "WC":
        pbar = rng.uniform(c - R / 20, c + R / 20)
    elif correlation == "ASC":
        pbar = rng.uniform(c + R / 10 - R / 1000, c + R / 10 + R / 1000)
    else:
        pbar = c + R / 10
    pbar = rnd(pbar)
    phat = rnd(pbar * rng.uniform((1 - delta) / 2, (1 + delta) / 2, n))
    f = rnd(pbar * rng.uniform(1.1, 1.5, n))
    if correlation == "UN":
        t = rng.uniform(1, c)
    elif correlation == "WC":
        t = rng.uniform(phat / 2 - R / 40, phat / 2 + R / 40)
    elif correlation == "ASC":
        t = rng.uniform(phat / 2 + c / 10 - R / 1000, phat / 2 + c / 10 + R / 1000)
    else:
        t = phat / 2 + c / 10
    t = rnd(t)
    capacity = h / (H + 1) * c.sum()
    if integer:
        capacity = float(np.floor(capacity))
    gamma = n * dev
    name = f"RKP_{correlation}_n{n}_R{R:g}_H{H}_h{h}_dev{dev:g}_d{delta:g}"
    params = {"n": n, "correlation": correlation, "dev": dev, "delta": delta, "h": h, "R": R}
    return knapsack_problem(
        pbar, phat, t, c, f, capacity, gamma, name=name, metadata={"generator": params}
    )


def sample_knapsack_class(
    n: int, correlation: str, count: int, *, seed: int = 0
) -> list[TwoStageRobustProblem]:
    """``count`` knapsacks of one correlation type with ``(h, dev, delta)`` drawn uniformly
    from :data:`PUBLISHED_GRID`: the training distribution of a Neur2RO class model meant
    for instances like the published ones (instance ``k`` uses seed ``10_000 seed + k``)."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        h = int(rng.choice(PUBLISHED_GRID["h"]))
        dev = float(rng.choice(PUBLISHED_GRID["dev"]))
        delta = float(rng.choice(PUBLISHED_GRID["delta"]))
        out.append(
            generate_knapsack(n, correlation, h=h, dev=dev, delta=delta, seed=10_000 * seed + k)
        )
    return out


def generate_capital_budgeting(
    n: int,
    *,
    n_factors: int = 4,
    theta: float = 0.8,
    seed: int | np.random.Generator | None = None,
) -> TwoStageRobustProblem:
    """A capital-budgeting instance by Subramanyam, Gounaris and Wiesemann's procedure."""
    if n < 1 or n_factors < 1:
        raise ValueError("n and n_factors must be positive")
    rng = np.random.default_rng(seed)
    cbar = rng.uniform(0.0, 10.0, n)
    rbar = cbar / 5.0

    def simplex():
        cuts = np.sort(rng.uniform(0.0, 1.0, (n, n_factors - 1)), axis=1)
        edges = np.hstack([np.zeros((n, 1)), cuts, np.ones((n, 1))])
        return np.diff(edges, axis=1)

    Phi = simplex()
    Psi = simplex()
    budget = cbar.sum() / 2.0
    params = {"n": n, "n_factors": n_factors, "theta": theta}
    return capital_budgeting_problem(
        cbar,
        rbar,
        Phi,
        Psi,
        budget,
        theta,
        name=f"CB_n{n}_xi{n_factors}",
        metadata={"generator": params},
    )

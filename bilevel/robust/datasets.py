"""Published instances bundled with :mod:`bilevel.robust`.

The 72 two-stage robust knapsack instances with ``n = 20`` items of Arslan and Detienne
(2022), with their branch-and-price results, ship inside the package (MIT licence; files,
provenance and licence in ``bilevel/robust/data/arslan_detienne/``). Every one of them was
solved to optimality by the authors' branch-and-price, so its published "best primal bound"
is the robust optimum (profit, to be maximised; 6 significant digits in the CSV).

Names follow the authors' convention ``RKP_<type>_n<n>_R1000_H100_h<h>_dev<dev>_d<delta>``:
correlation ``type`` in ``UN, WC, ASC, SC``, capacity ratio ``h`` in ``{40, 80}``, budget
``Gamma = n * dev`` with ``dev`` in ``{0.1, 0.15, 0.2}`` and degradation spread ``delta`` in
``{0.1, 0.5, 1}`` (see :mod:`bilevel.robust.generators`).

References
----------
A. N. Arslan, B. Detienne, "Decomposition-based approaches for a class of two-stage robust
binary optimization problems", INFORMS Journal on Computing 34(2) (2022).
Data: https://github.com/borisdetienne/RobustDecomposition (commit 61a58f7).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

from bilevel.robust.instances import read_knapsack_instance
from bilevel.robust.model import TwoStageRobustProblem

__all__ = [
    "PublishedResult",
    "load_published_knapsack",
    "published_knapsack_names",
    "published_knapsack_result",
]

_DIR = ("data", "arslan_detienne")
_RESULTS = "results_branch_and_price.csv"


@dataclass(frozen=True)
class PublishedResult:
    """One row of Arslan and Detienne's ``ResultsForBranchAndPrice.csv``.

    Attributes
    ----------
    name:
        Instance name.
    objective:
        Best primal bound (robust profit of the best decision found; 6 significant
        digits, the C++ stream default).
    optimal:
        Whether branch-and-price proved it optimal (true for every bundled instance).
    time:
        The authors' solve time in seconds (their machine).
    active_columns, total_columns:
        Recourse columns active in the best solution / generated in total.
    """

    name: str
    objective: float
    optimal: bool
    time: float
    active_columns: int
    total_columns: int


def _files():
    return resources.files("bilevel.robust").joinpath(*_DIR)


def _results() -> dict[str, PublishedResult]:
    text = _files().joinpath(_RESULTS).read_text(encoding="utf-8-sig")
    rows = list(csv.reader(text.splitlines()))
    out = {}
    for row in rows[1:]:
        if not row:
            continue
        name, time_, best, active, total, optimal = (cell.strip() for cell in row)
        out[name] = PublishedResult(
            name=name,
            objective=float(best),
            optimal=optimal == "1",
            time=float(time_),
            active_columns=int(active),
            total_columns=int(total),
        )
    return out


def published_knapsack_names(correlation: str | None = None, *, h: int | None = None) -> list[str]:
    """Names of the bundled instances (sorted), optionally of one correlation type and
    capacity ratio ``h``."""
    names = sorted(_results())
    if correlation is not None:
        names = [n for n in names if n.split("_")[1] == correlation]
    if h is not None:
        names = [n for n in names if f"_h{h}_" in n]
    return names


def _check_name(name: str) -> None:
    if name not in _results():
        raise ValueError(
            f"no bundled instance named {name!r}; see published_knapsack_names() "
            "(72 instances with n = 20 ship with bilevel; read other files with "
            "read_knapsack_instance(path))"
        )


def load_published_knapsack(name: str) -> TwoStageRobustProblem:
    """The bundled instance ``name`` read by :func:`bilevel.robust.read_knapsack_instance`;
    its metadata also records the instance name."""
    _check_name(name)
    with resources.as_file(_files().joinpath(name)) as path:
        problem = read_knapsack_instance(path)
    problem.metadata["name"] = name
    return problem


def published_knapsack_result(name: str) -> PublishedResult:
    """The authors' branch-and-price result for the bundled instance ``name``."""
    _check_name(name)
    return _results()[name]

"""Small nonlinear bilevel programs from the literature, with their best known solutions.

Every entry is transcribed from the AMPL files of BASBLib (Paulavicius and Adjiman,
"BASBLib - a library of bilevel test problems", v2.3, 2019, doi:10.5281/zenodo.3266835,
https://github.com/basblsolver/BASBLib; file ``<class>/<name>.mod``), which restate the
problems of the original papers (cited in each entry) and list the best known solution
``F*, f*, x*, y*`` in their headers. ``F_star`` and the other reference values are those
headers' values (rounded as printed there); an entry whose listed value is not the optimum
of the bilevel program says so in ``note`` and gives the verified optimum in
``F_verified`` (4 entries: c_2002_01, c_2002_04, dd_2012_01, mb_2007_22).

All problems are stated as::

    min_{x, y} F(x, y)  s.t.  G(x, y) <= 0,  x in X,
               y in argmin_theta { f(x, theta) : g(x, theta) <= 0,  theta in Y }

(optimistic formulation; none of these problems has equality constraints), with ``x`` and
``y`` 1-D float64 tensors. A few problems have no upper-level variable (``n_x = 0``, ``x``
is an empty tensor).

The entries are data: the TOML table ``bilevel/testproblems/literature.toml`` (shipped with the
package), one ``[[problem]]`` per entry with the fields of :class:`LiteratureProblem` as
keys and the functions as expression strings (format and grammar: :func:`load_problems`),
loaded by :func:`load_problems` on first access to :data:`LITERATURE`. Select by keyword, e.g.
``[p for p in LITERATURE.values() if "starts_infeasible" in p.tags]``.
"""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from bilevel.problem import BilevelProblem
from bilevel.testproblems._expr import Expression, ExpressionRows

__all__ = ["LITERATURE", "LiteratureProblem", "literature_problem", "load_problems"]

_T = torch.float64
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LiteratureProblem:
    """One published bilevel program and its best known solution.

    Attributes
    ----------
    name:
        BASBLib identifier (e.g. ``"mb_2007_06"``).
    citation:
        Original source: authors, year, example number.
    n_x, n_y:
        Numbers of upper- and lower-level variables.
    upper, lower:
        ``F(x, y)`` and ``f(x, y)`` (0-d tensors).
    upper_ineq, lower_ineq:
        ``G(x, y) <= 0`` and ``g(x, y) <= 0`` (1-D tensors) or ``None``.
    x_bounds, y_bounds:
        ``(lower, upper)`` tuples of floats, one per variable; ``None`` when ``n_x = 0``, or
        when the source writes its bounds as constraints (:mod:`bilevel.testproblems.bolib`).
    F_star, f_star:
        Best known upper and lower values (``f_star`` is ``None`` when it depends on which
        of several optimal ``x`` is taken).
    x_star, y_star:
        A best known solution as listed by the source (rounded), or ``None``.
    x0:
        Starting point, the centre of ``X`` unless the lower level is infeasible there.
    y0:
        Starting lower-level point listed by the source (default: the centre of ``Y``, or
        zeros when ``Y`` is unbounded).
    source:
        Where ``F_star`` comes from.
    note:
        Remarks: several optimal solutions, corrections of the listed values, ...
    F_verified:
        Only where the listed ``F_star`` is not the optimal value of the bilevel program
        (e.g. its listed point is not lower-level optimal): the optimal value established
        in ``note`` by a closed-form reduction or brute force.
    tags:
        Keywords to select problems by: the source's class (BASBLib's ``"LP-QP"``, ...,
        BOLIB's ``"linear"`` or ``"nonlinear"``) and ``"starts_infeasible"`` where
        :meth:`start` violates a constraint row or a bound.
    """

    name: str
    citation: str
    n_x: int
    n_y: int
    upper: Fn
    lower: Fn
    upper_ineq: Fn | None
    lower_ineq: Fn | None
    x_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None
    y_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None
    F_star: float
    f_star: float | None
    x_star: tuple[float, ...] | None
    y_star: tuple[float, ...] | None
    x0: tuple[float, ...] | None = None
    source: str = ""
    note: str = ""
    F_verified: float | None = None
    y0: tuple[float, ...] | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        sizes = {"x": self.n_x, "y": self.n_y}
        for v, n in sizes.items():
            bounds = getattr(self, f"{v}_bounds")
            if bounds is not None and not (
                len(bounds) == 2 and len(bounds[0]) == len(bounds[1]) == n
            ):
                raise ValueError(f"{self.name}: {v}_bounds must be two lists of {n} floats")
            for key in (f"{v}_star", f"{v}0"):
                value = getattr(self, key)
                if value is not None and len(value) != n:
                    raise ValueError(f"{self.name}: {key} has {len(value)} entries, n_{v} = {n}")

    @property
    def F_reference(self) -> float:
        """``F_verified`` where the listed ``F_star`` was found not to be the optimum of the
        bilevel program (see ``note``), else ``F_star``."""
        return self.F_star if self.F_verified is None else self.F_verified

    def problem(self) -> BilevelProblem:
        """The :class:`~bilevel.BilevelProblem` (float64 bounds)."""
        xb = None
        if self.x_bounds is not None:
            lo, hi = self.x_bounds
            xb = (torch.tensor(lo, dtype=_T), torch.tensor(hi, dtype=_T))
        yb = None
        if self.y_bounds is not None:
            lo, hi = self.y_bounds
            yb = (torch.tensor(lo, dtype=_T), torch.tensor(hi, dtype=_T))
        return BilevelProblem(
            upper=self.upper,
            lower=self.lower,
            upper_ineq=self.upper_ineq,
            lower_ineq=self.lower_ineq,
            x_bounds=xb,
            y_bounds=yb,
        )

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting point ``(x0, y0)``: ``x0`` as listed (default: centre of ``X``) and ``y0``
        as listed (default: centre of ``Y``, zeros without bounds)."""
        if self.x0 is not None:
            x0 = torch.tensor(self.x0, dtype=_T)
        elif self.x_bounds is None:
            x0 = torch.zeros(0, dtype=_T)
        else:
            lo, hi = (torch.tensor(b, dtype=_T) for b in self.x_bounds)
            x0 = (lo + hi) / 2
        if self.y0 is not None:
            return x0, torch.tensor(self.y0, dtype=_T)
        if self.y_bounds is None:
            return x0, torch.zeros(self.n_y, dtype=_T)
        lo, hi = (torch.tensor(b, dtype=_T) for b in self.y_bounds)
        return x0, (lo + hi) / 2


_FIELDS = {f.name for f in fields(LiteratureProblem)}
_REQUIRED = {"name", "citation", "n_x", "n_y", "upper", "lower", "F_star"}
_SENSES = {"<= 0": 1, ">= 0": -1}


def _tuple(value: list[float] | None) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _entry(row: dict[str, Any], sign: int) -> LiteratureProblem:
    """One ``[[problem]]`` table of a problem file as a :class:`LiteratureProblem`."""
    name = row.get("name", "?")
    unknown = set(row) - _FIELDS
    missing = _REQUIRED - set(row)
    if unknown or missing:
        raise ValueError(
            f"problem {name!r}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
        )
    n_x, n_y = row["n_x"], row["n_y"]
    kw: dict[str, Any] = dict(row)
    try:
        for key in ("upper", "lower"):
            kw[key] = Expression(row[key], n_x, n_y)
        for key in ("upper_ineq", "lower_ineq"):
            if key in row:
                kw[key] = ExpressionRows(tuple(row[key]), n_x, n_y, sign)
    except (ValueError, TypeError) as err:
        raise ValueError(f"problem {name!r}, {key}: {err}") from None
    for key in ("x_bounds", "y_bounds"):
        if key in row:
            kw[key] = (_tuple(row[key][0]), _tuple(row[key][1]))
    for key in ("x_star", "y_star", "x0", "y0"):
        kw[key] = _tuple(row.get(key))
    kw.setdefault("f_star", None)
    kw["tags"] = tuple(row.get("tags", ()))
    kw = {"upper_ineq": None, "lower_ineq": None, "x_bounds": None, "y_bounds": None, **kw}
    return LiteratureProblem(**kw)


def load_problems(file: str | os.PathLike[str] | Traversable) -> dict[str, LiteratureProblem]:
    """The problems of a TOML problem table, by name.

    ``file`` is a path or an :mod:`importlib.resources` file (the bundled tables are
    ``resources.files("bilevel.testproblems") / "literature.toml"`` and ``"bolib.toml"``). The
    table holds a top-level ``constraint_sense``, ``"<= 0"`` (default) or ``">= 0"`` when
    its constraint rows are written ``r_i(x, y) >= 0`` (the loaded functions are then
    ``-r_i``, so that ``G, g <= 0`` holds as everywhere in :mod:`bilevel`), and one
    ``[[problem]]`` table per problem whose keys are the fields of
    :class:`LiteratureProblem`. ``upper`` and ``lower`` are expressions, ``upper_ineq`` and
    ``lower_ineq`` lists of expressions (one per row, stacked into a float64 vector);
    bounds are ``[[lower, ...], [upper, ...]]``; absent optional keys are ``None``::

        [[problem]]
        name = "toy"
        citation = "..."
        n_x = 1
        n_y = 2
        upper = "(x[0] - 1) ** 2 + sum(y ** 2)"
        lower = "(y[0] - x[0]) ** 2 + exp(-y[1])"
        lower_ineq = ["y[0] + y[1] - 2"]
        y_bounds = [[0.0, 0.0], [10.0, 10.0]]
        F_star = 0.5
        tags = ["mine"]

    An expression is Python syntax restricted to numbers, ``x`` and ``y`` (the whole 1-D
    tensors), ``x[i]`` and ``y[i]`` (literal zero-based indices), ``+ - * / **``, ``pi``
    and the functions ``exp log sqrt sin cos abs sum`` (their ``torch`` versions); it is
    parsed with :mod:`ast` and checked, never ``eval``-ed, and evaluates exactly as the same
    Python code on tensors would (:mod:`torch.func` transforms included). Raises
    ``ValueError`` naming the file, the problem and the key of any entry that breaks these
    rules.
    """
    source = Path(file) if isinstance(file, str | os.PathLike) else file
    with source.open("rb") as fh:
        table = tomllib.load(fh)
    sense = table.get("constraint_sense", "<= 0")
    try:
        if sense not in _SENSES:
            raise ValueError(f"constraint_sense must be one of {sorted(_SENSES)}, got {sense!r}")
        problems = [_entry(row, _SENSES[sense]) for row in table.get("problem", [])]
        out = {p.name: p for p in problems}
        if len(out) != len(problems):
            raise ValueError("duplicate problem names")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source.name}: {err}") from None
    return out


@functools.cache
def _bundled(filename: str) -> dict[str, LiteratureProblem]:
    """The package data table ``bilevel/testproblems/<filename>``, read once (on first use, so
    that ``import bilevel`` does not pay the ~0.1-0.3 s of parsing it)."""
    return load_problems(resources.files("bilevel.testproblems") / filename)


def _lookup(table: dict[str, LiteratureProblem], name: str, what: str) -> LiteratureProblem:
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {what} problem {name!r}; choose one of {sorted(table)}") from None


LITERATURE: dict[str, LiteratureProblem]
"""All literature problems by name (the table ``bilevel/testproblems/literature.toml``, read on
first access)."""


def _module_getattr(module: str, tables: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that reads the bundled table ``tables[name]`` on
    the first access to the module attribute ``name``."""

    def __getattr__(name: str) -> Any:
        if name in tables:
            return _bundled(tables[name])
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = _module_getattr(__name__, {"LITERATURE": "literature.toml"})


def literature_problem(name: str) -> LiteratureProblem:
    """The literature problem called ``name`` (a key of :data:`LITERATURE`)."""
    return _lookup(_bundled("literature.toml"), name, "literature")

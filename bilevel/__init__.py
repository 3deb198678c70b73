"""bilevel: bilevel optimization in PyTorch.

Layers (see ``docs/architecture.md``):

* :mod:`bilevel.tree` -- pytree validation and arithmetic;
* :mod:`bilevel.linalg` -- matrix-free linear solvers on pytrees;
* :mod:`bilevel.implicit` -- implicit differentiation of roots and fixed points;
* :mod:`bilevel.operators` -- projections and proximal operators;
* :mod:`bilevel.optimality` -- optimality conditions (stationarity, projected/proximal
  gradient and mirror-descent fixed points, KKT);
* :mod:`bilevel.solvers` -- inner solvers matching those conditions, differentiable by
  implicit differentiation or unrolling;
* :mod:`bilevel.problem`, :mod:`bilevel.hypergrad`, :mod:`bilevel.methods` -- the bilevel
  problem, hypergradient estimators and outer algorithms behind :func:`bilevel.solve`;
* :mod:`bilevel.nn` -- bilevel problems on ``nn.Module``s: hypergradients, a trainer,
  ScaleBiO, multi-process training;
* :mod:`bilevel.constrained` -- constrained lower levels (LV-HBA, KKT implicit
  differentiation, classical small bilevel programs);
* :mod:`bilevel.dag` -- DAG structure learning by topological swaps (TOPO);
* :mod:`bilevel.robust` -- two-stage robust optimization (CCG, Neur2RO; HiGHS, the
  ``robust`` extra);
* :mod:`bilevel.recipes`, :mod:`bilevel.cli` -- ready-made experiments and the command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below are imported lazily (see __getattr__)
    from bilevel import (
        constrained,
        dag,
        errors,
        hypergrad,
        implicit,
        linalg,
        methods,
        nn,
        operators,
        optimality,
        robust,
        solvers,
        testproblems,
        tree,
    )
    from bilevel._solve import METHODS, solve
    from bilevel.problem import BilevelProblem, BilevelResult

_ATTRIBUTES = {
    "solve": "bilevel._solve",
    "METHODS": "bilevel._solve",
    "BilevelProblem": "bilevel.problem",
    "BilevelResult": "bilevel.problem",
}


def __getattr__(name: str) -> Any:
    """Import subpackages and the top-level names on first use (PEP 562), so that
    ``import bilevel`` (and ``bilevel --help``) does not load PyTorch and SciPy."""
    if not name.startswith("_") and _is_subpackage(name):
        return importlib.import_module(f"bilevel.{name}")
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bilevel' has no attribute {name!r}")


def _is_subpackage(name: str) -> bool:
    """Whether ``bilevel.<name>`` is a module (``problem``, ``recipes``, ``cli``, ...)."""
    from importlib.util import find_spec

    return find_spec(f"bilevel.{name}") is not None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "BilevelProblem",
    "BilevelResult",
    "METHODS",
    "__version__",
    "constrained",
    "dag",
    "errors",
    "hypergrad",
    "implicit",
    "linalg",
    "methods",
    "nn",
    "operators",
    "optimality",
    "robust",
    "solve",
    "solvers",
    "testproblems",
    "tree",
]

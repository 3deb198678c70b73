"""bilevel: bilevel optimization in PyTorch.

Layers (see ``docs/architecture.md``):

* :mod:`bilevel.tree` -- pytree validation and arithmetic;
* :mod:`bilevel.linalg` -- matrix-free linear solvers on pytrees;
* :mod:`bilevel.implicit` -- implicit differentiation of roots and fixed points;
* :mod:`bilevel.operators` -- projections and proximal operators;
* :mod:`bilevel.optimality` -- optimality conditions (stationarity, projected/proximal
  gradient and mirror-descent fixed points, KKT);
* :mod:`bilevel.solvers` -- inner solvers matching those conditions, differentiable by
  implicit differentiation or unrolling.
"""

from __future__ import annotations

from bilevel import (
    errors,
    hypergrad,
    implicit,
    linalg,
    methods,
    operators,
    optimality,
    problems,
    solvers,
    tree,
)
from bilevel.methods import solve
from bilevel.problem import BilevelProblem, BilevelResult

__version__ = "0.1.0"

__all__ = [
    "BilevelProblem",
    "BilevelResult",
    "__version__",
    "errors",
    "hypergrad",
    "implicit",
    "linalg",
    "methods",
    "operators",
    "optimality",
    "problems",
    "solve",
    "solvers",
    "tree",
]

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
    problems,
    robust,
    solvers,
    tree,
)
from bilevel._solve import METHODS, solve
from bilevel.problem import BilevelProblem, BilevelResult

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
    "problems",
    "robust",
    "solve",
    "solvers",
    "tree",
]

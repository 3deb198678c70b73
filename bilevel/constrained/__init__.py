"""Bilevel problems with constrained lower levels: LV-HBA, KKT implicit differentiation and
classical small nonlinear bilevel programs.

Both methods are registered in :data:`bilevel.METHODS` by :mod:`bilevel._solve`, the floor
above this package and :mod:`bilevel.methods`.

* :class:`LVHBA` (``method="lv-hba"``): single-loop, first-order proximal Lagrangian value
  function method (Yao et al., ICLR 2024) for lower levels with (coupled) constraints;
* :func:`kkt_hypergradient`, :func:`kkt_vjp`, :func:`kkt_jvp`, :func:`kkt_argmin`: implicit differentiation of
  a constrained lower-level solution through its reduced KKT system;
* :class:`Classical` (``method="classical"``), :func:`solve_classical`: global-quality
  multistart over KKT/MPCC and value-function reformulations for small nonlinear bilevel
  programs, with a certified lower-level gap (:func:`certify_lower_level`);
* projections onto boxes, affine sets, polyhedra and convex nonlinear sets.
"""

from bilevel.constrained.classical import (
    Classical,
    LowerLevelCertificate,
    LowerLevelInfeasibleError,
    UnboundedLowerLevelError,
    certify_lower_level,
    solve_classical,
)
from bilevel.constrained.feasible import (
    InfeasibleError,
    UnboundedError,
    affine_coefficients,
    project_affine,
    project_box,
    project_nonlinear,
    project_polyhedron,
)
from bilevel.constrained.kkt import (
    KKTHypergradient,
    LowerSolution,
    StrictComplementarityWarning,
    estimate_multipliers,
    kkt_argmin,
    kkt_hypergradient,
    kkt_jvp,
    kkt_vjp,
    solve_lower,
)
from bilevel.constrained.lvhba import LVHBA

__all__ = [
    "LVHBA",
    "Classical",
    "InfeasibleError",
    "KKTHypergradient",
    "LowerLevelCertificate",
    "LowerLevelInfeasibleError",
    "LowerSolution",
    "StrictComplementarityWarning",
    "UnboundedError",
    "UnboundedLowerLevelError",
    "affine_coefficients",
    "certify_lower_level",
    "estimate_multipliers",
    "kkt_argmin",
    "kkt_hypergradient",
    "kkt_jvp",
    "kkt_vjp",
    "project_affine",
    "project_box",
    "project_nonlinear",
    "project_polyhedron",
    "solve_classical",
    "solve_lower",
]

"""Outer algorithms for bilevel problems and the :func:`solve` entry point.

================  =====================================================  ==============
name              method                                                 oracles
================  =====================================================  ==============
``"aid"``         :class:`AID`: approximate implicit differentiation     grad + HVP
``"itd"``         :class:`ITD`: iterative (unrolled) differentiation     grad + HVP
``"stocbio"``     :class:`StocBiO`: stochastic AID with Neumann series   grad + HVP
``"soba"``        :class:`SOBA`: single-loop stochastic                  grad + HVP
``"saba"``        :class:`SABA`: SOBA with SAGA variance reduction       grad + HVP
``"f2sa"``        :class:`F2SA`: fully first-order penalty               grad only
``"penalty"``     :class:`Penalty`: penalty method with sigma schedule   grad only
``"bome"``        :class:`BOME`: value function with dynamic barrier     grad only
``"vpbgd"``       :class:`VPBGD`: value-function penalty gradient        grad only
``"borep"``       :class:`BOREP`: normalized momentum, periodic y updates grad + HVP
``"bsvrb"``       :class:`BSVRB`: blockwise variance reduction (multi-block) grad + HVP
================  =====================================================  ==============

The constrained methods (``"lv-hba"``, ``"classical"``) live in :mod:`bilevel.constrained`;
:func:`bilevel.solve` and the registry ``bilevel.METHODS`` (module :mod:`bilevel._solve`)
sit above both packages.

Writing a method: subclass :class:`Method` (protocol in :mod:`bilevel.methods._base`),
draw minibatches through :class:`BatchStream`; :func:`run_method` drives it (modules
``_driver``, ``_checkpoint``, ``_divergence``, ``_streams``).
"""

from __future__ import annotations

from typing import Any

from bilevel.methods._base import Method, MethodState
from bilevel.methods._driver import run_method
from bilevel.methods._streams import BatchStream
from bilevel.methods.borep import BOREP
from bilevel.methods.bsvrb import BSVRB
from bilevel.methods.deterministic import AID, ITD, inner_gradient_steps
from bilevel.methods.first_order import BOME, F2SA, VPBGD, Penalty
from bilevel.methods.stochastic import SABA, SOBA, StocBiO

__all__ = [
    "AID",
    "BOME",
    "BOREP",
    "BSVRB",
    "F2SA",
    "ITD",
    "SABA",
    "SOBA",
    "VPBGD",
    "BatchStream",
    "Method",
    "MethodState",
    "Penalty",
    "StocBiO",
    "inner_gradient_steps",
    "run_method",
]


def __getattr__(name: str) -> Any:
    """``bilevel.methods.solve`` / ``METHODS``, kept for existing code: they live one floor
    up, in :mod:`bilevel._solve` (``bilevel.solve``), which imports this package."""
    if name in ("solve", "METHODS"):
        import bilevel._solve

        return getattr(bilevel._solve, name)
    raise AttributeError(f"module 'bilevel.methods' has no attribute {name!r}")

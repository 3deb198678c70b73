"""DAG structure learning as a bilevel problem: TOPO (topological swaps) and its utilities.

The outer level searches over topological orders of the nodes, the inner level fits the
score given the order (Deng, Bello, Aragam, Ravikumar, "Optimizing NOTEARS Objectives via
Topological Swaps", ICML 2023):

* :class:`TopoSearch`: scikit-learn-style estimator (``fit(X)``, ``adjacency_``, ``order_``,
  ``score_``, ``n_iter_``); ``fit(X, init=W)`` post-processes any acyclic ``W`` or order;
* scores: :class:`LeastSquares` (Cholesky inner solver updated per swap; L1/L2 variants),
  :class:`GaussianNV`, :class:`Logistic`, nonlinear :class:`AdditiveScore` and :class:`MLPScore`; acyclicity functions
  :func:`h_logdet`, :func:`h_expm`, :func:`h_poly`;
* simulation (:func:`simulate_dag`, :func:`simulate_parameter`, :func:`simulate_linear_sem`,
  :func:`simulate_nonlinear_sem`), metrics (:func:`count_accuracy`, :func:`is_dag`),
  diagnostics (:func:`var_sortability`, :func:`r2_sortability`), baselines
  (:func:`sortnregress`, :func:`empty_graph`), the Sachs data (:func:`load_sachs`) and
  :func:`plot_graph` (networkx + matplotlib, the ``dag`` extra).
"""

from __future__ import annotations

from bilevel.dag.acyclicity import acyclicity, first_layer_acyclicity, h_expm, h_logdet, h_poly
from bilevel.dag.baselines import empty_graph, sortnregress
from bilevel.dag.datasets import load_sachs
from bilevel.dag.diagnostics import r2_coefficients, r2_sortability, sortability, var_sortability
from bilevel.dag.metrics import count_accuracy, cpdag, is_dag, shd_cpdag
from bilevel.dag.nonlinear import AdditiveScore, MLPScore
from bilevel.dag.plotting import plot_graph
from bilevel.dag.prior import PriorKnowledge, prior_knowledge
from bilevel.dag.scores import GaussianNV, LeastSquares, Logistic, Score, make_score
from bilevel.dag.simulate import (
    simulate_dag,
    simulate_linear_sem,
    simulate_nonlinear_sem,
    simulate_parameter,
)
from bilevel.dag.topo import TopoSearch, topological_order

__all__ = [
    "AdditiveScore",
    "GaussianNV",
    "LeastSquares",
    "Logistic",
    "MLPScore",
    "PriorKnowledge",
    "Score",
    "TopoSearch",
    "acyclicity",
    "count_accuracy",
    "cpdag",
    "empty_graph",
    "first_layer_acyclicity",
    "h_expm",
    "h_logdet",
    "h_poly",
    "is_dag",
    "load_sachs",
    "make_score",
    "plot_graph",
    "prior_knowledge",
    "r2_coefficients",
    "r2_sortability",
    "simulate_dag",
    "simulate_linear_sem",
    "simulate_nonlinear_sem",
    "simulate_parameter",
    "shd_cpdag",
    "sortability",
    "sortnregress",
    "topological_order",
    "var_sortability",
]

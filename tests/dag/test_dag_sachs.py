"""The bundled Sachs et al. (2005) observational data and consensus network."""

from __future__ import annotations

import numpy as np

from bilevel.dag.datasets import load_sachs
from bilevel.dag.metrics import is_dag

NAMES = ["praf", "pmek", "plcg", "PIP2", "PIP3", "p44/42", "pakts473", "PKA", "PKC", "P38", "pjnk"]

# the consensus network as listed in cdt's cyto_full_target.csv, typed in independently
CONSENSUS = {
    ("PIP2", "PKC"), ("plcg", "PIP2"), ("PIP3", "plcg"), ("PIP2", "PIP3"), ("plcg", "PKC"),
    ("PKC", "pjnk"), ("PKC", "P38"), ("PKA", "P38"), ("PKC", "praf"), ("PKA", "praf"),
    ("praf", "pmek"), ("pmek", "p44/42"), ("PKC", "pmek"), ("PKA", "pakts473"),
    ("PIP3", "pakts473"), ("PKA", "pmek"), ("PKA", "p44/42"), ("PKA", "pjnk"),
}  # fmt: skip


def test_sachs_shapes_names_and_consensus_edges():
    X, B, names = load_sachs()
    assert X.shape == (853, 11) and X.dtype == np.float64
    assert names == NAMES
    assert B.shape == (11, 11) and B.sum() == 18
    # the consensus network is not acyclic: plcg -> PIP2 -> PIP3 -> plcg
    assert not is_dag(B)
    i = {name: k for k, name in enumerate(names)}
    assert B[i["plcg"], i["PIP2"]] and B[i["PIP2"], i["PIP3"]] and B[i["PIP3"], i["plcg"]]
    edges = {(names[i], names[j]) for i, j in zip(*np.nonzero(B), strict=True)}
    assert edges == CONSENSUS
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(X.std(axis=0), 1.0, rtol=1e-12)


def test_sachs_raw_rows():
    X, _, _ = load_sachs(standardize=False)
    # first and last observational rows of the cdt file, as printed in it
    np.testing.assert_array_equal(
        X[0], [26.4, 13.2, 8.82, 18.3, 58.8, 6.61, 17.0, 414.0, 17.0, 44.9, 40.0]
    )
    np.testing.assert_array_equal(
        X[-1], [46.6, 15.0, 8.51, 120.0, 22.3, 6.1, 20.0, 478.0, 20.9, 36.8, 9.65]
    )
    assert np.all(X > 0)
    Xs, _, _ = load_sachs()
    np.testing.assert_allclose(Xs, (X - X.mean(0)) / X.std(0), rtol=1e-14)

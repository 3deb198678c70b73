"""Bundled Arslan-Detienne instances: loading, metadata, and exact CCG against the
published branch-and-price optima (an external oracle: the authors' own code and machine)."""

from __future__ import annotations

import numpy as np
import pytest

from bilevel import robust


def test_all_bundled_instances_load_with_their_published_results():
    names = robust.published_knapsack_names()
    assert len(names) == 72 and names == sorted(names)
    for correlation in robust.KNAPSACK_TYPES:
        assert len(robust.published_knapsack_names(correlation)) == 18
    assert len(robust.published_knapsack_names("SC", h=40)) == 9
    for name in names:
        problem = robust.load_published_knapsack(name)
        assert problem.n_x == 20 and problem.sense == "max"
        assert problem.metadata["name"] == name
        # Gamma = n * dev, as the name says
        dev = float(name.split("_dev")[1].split("_")[0])
        assert problem.uncertainty.gamma == pytest.approx(20 * dev)
        result = robust.published_knapsack_result(name)
        assert result.optimal and result.objective > 0


def test_unknown_instance_name_is_refused():
    with pytest.raises(ValueError, match="no bundled instance"):
        robust.load_published_knapsack("RKP_UN_n30_R1000_H100_h80_dev0.1_d0.5")
    with pytest.raises(ValueError, match="no bundled instance"):
        robust.published_knapsack_result("nope")


@pytest.mark.parametrize(
    "name",
    [
        "RKP_UN_n20_R1000_H100_h80_dev0.1_d0.5",
        "RKP_UN_n20_R1000_H100_h80_dev0.15_d0.1",
        "RKP_UN_n20_R1000_H100_h40_dev0.2_d0.5",
    ],
)
def test_exact_ccg_reproduces_published_optimum(name):
    problem = robust.load_published_knapsack(name)
    result = robust.solve(problem, time_limit=120)
    assert result.status == "optimal"
    # the CSV holds 6 significant digits (C++ stream default)
    assert float(f"{result.objective:.6g}") == robust.published_knapsack_result(name).objective
    # the returned decision's exact worst case is the objective
    wc = robust.worst_case(problem, result.x)
    assert wc.objective == pytest.approx(result.objective, rel=1e-9)
    assert np.isin(result.x, (0.0, 1.0)).all()

"""Two gloo processes under torchrun: the hypergradient of each rank's half batch, averaged by
the engine, equals the single-process hypergradient of the whole batch; DDP training keeps
the ranks identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bilevel.nn as bnn

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _ddp_worker as worker  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(HERE / "_ddp_worker.py"), str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("mode", list(worker.MODES))
def test_distributed_hypergradient_equals_the_single_process_one(ranks, mode: str) -> None:
    model, hp, train, val = worker.problem()
    single = bnn.hypergradient(model, hp, worker.inner, worker.outer, train, val, method=mode, distributed=False, **worker.MODES[mode])
    for r in ranks:
        torch.testing.assert_close(r[mode], single["w"], rtol=1e-12, atol=1e-12)
    assert torch.equal(ranks[0][mode], ranks[1][mode])


def test_ddp_training_keeps_ranks_identical(ranks) -> None:
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key
    assert torch.equal(ranks[0]["w_trained"], ranks[1]["w_trained"])
    assert ranks[0]["outer_losses"] == ranks[1]["outer_losses"]
    assert len(ranks[0]["outer_losses"]) == 50

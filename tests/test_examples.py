"""Every script in examples/ runs (with few steps) and prints the figures it promises.

Each example is run in a subprocess as a user would run it; the checks parse the printed
numbers, so an example that runs but reports nothing meaningful (or a hypergradient that
disagrees with its finite-difference check) fails. A new example must be added to EXAMPLES.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NUMBER = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"


def check_hyperparameter(out: str) -> None:
    implicit, fd = map(float, re.search(rf"implicit {NUMBER}, central differences {NUMBER}", out).groups())
    assert abs(implicit - fd) <= 1e-3 * abs(fd), (implicit, fd)
    accuracies = [float(a) for a in re.findall(rf"test accuracy {NUMBER}", out)]
    assert len(accuracies) == 2 and all(0.9 <= a <= 1.0 for a in accuracies), accuracies
    losses = [float(v) for v in re.findall(rf"^step +\d+ +validation loss {NUMBER}", out, re.M)]
    assert len(losses) == 3 and losses[-1] < losses[0], losses      # 3 steps: the loss decreases


def check_svm(out: str) -> None:
    assert re.search(r"LV-HBA: 5 iterations", out), out
    match = re.search(rf"LV-HBA \(best validation iterate\) {NUMBER}, last iterate {NUMBER}, "
                      rf"cross-validated C = {NUMBER}: {NUMBER}", out)
    accuracies = [float(match.group(k)) for k in (1, 2, 4)]
    assert all(0.85 <= a <= 1.0 for a in accuracies), accuracies
    assert float(re.search(rf"constraint violation {NUMBER}", out).group(1)) < 1e-6


def check_reweighting(out: str) -> None:
    match = re.search(rf"test accuracy {NUMBER} after 3 outer steps; mean weight of clean "
                      rf"examples {NUMBER}, of noisy ones {NUMBER}", out)
    assert match, out
    accuracy, clean, noisy = map(float, match.groups())
    assert 0.3 <= accuracy <= 1.0 and 0.0 <= noisy <= 1.0 and 0.0 <= clean <= 1.0


EXAMPLES = {
    "hyperparameter_optimization.py": (["--steps", "3"], check_hyperparameter),
    "svm_hyperparameters.py": (["--iterations", "5", "--n-train", "120", "--n-val", "80"], check_svm),
    "nn_reweighting.py": (["--steps", "3"], check_reweighting),
}


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name: str) -> None:
    args, check = EXAMPLES[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}   # small problems: threads only contend
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check(proc.stdout)

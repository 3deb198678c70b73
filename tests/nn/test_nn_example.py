"""examples/nn_reweighting.py runs (a few outer steps) and reports its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_reweighting_example_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "nn_reweighting.py"), "--steps", "3"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout and "after 3 outer steps" in proc.stdout

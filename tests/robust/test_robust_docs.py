"""The JSON instance example of ``docs/formats.md`` ("stating your own model") validates,
solves to the optimum derived by hand in the text, and uses only documented keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bilevel.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "formats.md"


def _robust_section() -> str:
    text = DOC.read_text()
    return text[text.index("## Two-stage robust instances (JSON)") :]


def test_formats_doc_instance_example_validates_and_solves(tmp_path, capsys):
    section = _robust_section()
    block = re.search(r"```python exec=\"on\"[^\n]*\n(.*?)```", section, re.DOTALL).group(1)
    run = lambda *args: CliRunner().invoke(app, [str(a) for a in args])
    scope = {"tmp": tmp_path, "json": json, "run": run}
    exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102 - the doc's own example
    instance, result = scope["instance"], scope["result"]
    # the hand derivation in the text: x* = 15 at worst-case cost 2 * 15 + 15 = 45
    assert result.status == "optimal"
    assert result.x.tolist() == [15.0] and result.objective == pytest.approx(45.0, abs=1e-6)
    assert scope["cli"].exit_code == 0
    payload = json.loads((tmp_path / "capacity-result.json").read_text())
    assert payload["metrics"]["objective"] == pytest.approx(45.0, abs=1e-6)
    printed = capsys.readouterr().out
    assert "worst-case scenario xi" in printed
    # every key of the example is documented in the tables of the section
    documented = set(re.findall(r"^\| `([^`]+)`", section, re.MULTILINE))
    documented |= {
        k
        for cell in re.findall(r"^\| `([^|]+)` \|", section, re.MULTILINE)
        for k in re.findall(r"(\w+)", cell)
    }
    assert set(instance) <= documented, set(instance) - documented

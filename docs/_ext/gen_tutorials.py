"""Render the tutorial scripts ``docs/tutorials/*.py`` as pages whose code runs at build time.

Each tutorial is a plain Python script in the "percent" format (as read by Jupytext and
editors): ``# %% [markdown]`` starts a cell of commented Markdown, ``# %%`` a code cell.
This mkdocs-gen-files script turns every code cell into a ``markdown-exec`` block sharing
one session per tutorial, so ``mkdocs build`` executes each tutorial from top to bottom and
shows what every cell prints; an exception fails the (strict) build.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

TUTORIALS = Path(__file__).parents[1] / "tutorials"


def cells(source: str) -> list[tuple[str, str]]:
    """Split a percent-format script into ``("markdown" | "code", text)`` cells."""
    out: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            out.append(("markdown" if "[markdown]" in line else "code", []))
        elif out:
            out[-1][1].append(line)
    result = []
    for kind, lines in out:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text.strip():
            result.append((kind, text))
    return result


def render(script: Path) -> str:
    parts = []
    for kind, text in cells(script.read_text()):
        if kind == "markdown":
            parts.append(text)
        else:
            parts.append(
                f'```python exec="on" source="above" result="text" session="{script.stem}"\n'
                f"{text}\n```"
            )
    parts.append(
        f"*This page is generated from [`docs/tutorials/{script.name}`]({script.name}), "
        f"run at build time; run it yourself with `python docs/tutorials/{script.name}`.*"
    )
    return "\n\n".join(parts) + "\n"


for script in sorted(TUTORIALS.glob("*.py")):
    with mkdocs_gen_files.open(f"tutorials/{script.stem}.md", "w") as page:
        page.write(render(script))

"""Griffe extension: render the reStructuredText constructs of bilevel's docstrings as Markdown.

The docstrings are NumPy-style (parsed by griffe) but their prose uses a few reST
constructs that Markdown does not know. Before parsing, every docstring of the package is
rewritten as follows:

* roles ``:func:`name```, ``:class:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``,
  ``:exc:``, ``:obj:`` become optional cross-references (a link when the target is
  documented, plain code otherwise); names are resolved in the docstring's scope;
* ``:math:`expr``` and ``.. math::`` blocks become arithmatex ``$...$`` / ``$$...$$``;
* literal blocks introduced by ``::`` and doctest blocks (``>>>``) become fenced code;
* simple tables (``=====  =====`` borders) become Markdown tables.

Used by mkdocs.yml (``extensions: [docs/griffe_rst.py:RstToMarkdown]``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(func|class|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_BORDER = re.compile(r"^(\s*)(=+)(\s+=+)*\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: list[str], start: int, base: int) -> int:
    """Index past the block of lines indented more than ``base`` (blank lines included)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _fence(body: list[str], indent: str, lang: str) -> list[str]:
    width = min(_indent(line) for line in body if line.strip())
    return [f"{indent}```{lang}", *(indent + line[width:] for line in body), f"{indent}```"]


def _literal_blocks(lines: list[str]) -> list[str]:
    """``text::`` + indented block -> ``text:`` + fenced block; ``.. math::`` -> ``$$``."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if stripped.endswith("::"):
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            end = _block_end(lines, j, base)
            if end > j:
                pad = " " * base
                if stripped.strip() == ".. math::":  # blank lines separate equations
                    groups: list[list[str]] = [[]]
                    for ln in lines[j:end]:
                        if ln.strip():
                            groups[-1].append(ln.strip())
                        elif groups[-1]:
                            groups.append([])
                    for group in filter(None, groups):
                        out += [f"{pad}$$", *(pad + b for b in group), f"{pad}$$", ""]
                else:
                    head = stripped[:-2].rstrip() if stripped.endswith(" ::") else stripped[:-1]
                    if head.strip():
                        out += [head, ""]
                    out += _fence(lines[j:end], pad, "python")
                i = end
                continue
        if line.lstrip().startswith(">>>"):
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            out += _fence(lines[i:end], " " * _indent(line), "pycon")
            i = end
            continue
        out.append(line)
        i += 1
    return out


def _tables(lines: list[str]) -> list[str]:
    """reST simple tables -> Markdown tables (a row with an empty first cell continues)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _BORDER.match(lines[i])
        if not match or i + 2 >= len(lines):
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
        borders = [i]
        j = i + 1
        while j < len(lines) and len(borders) < 3 and lines[j].strip():
            if _BORDER.match(lines[j]):
                borders.append(j)
            j += 1
        if len(borders) < 2:
            out.append(lines[i])
            i += 1
            continue
        if len(borders) == 2:  # no header row
            header_rows, body = [], lines[borders[0] + 1 : borders[1]]
            last = borders[1]
        else:
            header_rows = lines[borders[0] + 1 : borders[1]]
            body = lines[borders[1] + 1 : borders[2]]
            last = borders[2]

        def cells(row: str) -> list[str]:
            # A cell whose text runs past its column's border ends at the next double space.
            bounds = [0]
            for start, _ in spans[1:]:
                start = max(start, bounds[-1])
                if 0 < start < len(row) and row[start - 1] != " " and row[start] != " ":
                    gap = row.find("  ", start)
                    start = len(row) if gap < 0 else gap
                bounds.append(start)
            bounds.append(len(row))
            return [row[bounds[k] : bounds[k + 1]].strip() for k in range(len(spans))]

        rows: list[list[str]] = []
        for row in body:
            parts = cells(row)
            if rows and not parts[0]:
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], parts)]
            else:
                rows.append(parts)
        header = [" ".join(c) for c in zip(*map(cells, header_rows))] if header_rows else [""] * len(spans)
        pad = match.group(1)
        out.append("")
        out.append(pad + "| " + " | ".join(header) + " |")
        out.append(pad + "|" + "|".join("---" for _ in spans) + "|")
        out += [pad + "| " + " | ".join(c.replace("|", r"\|") for c in r) + " |" for r in rows]
        out.append("")
        i = last + 1
    return out


class RstToMarkdown(griffe.Extension):
    """Rewrite the reST constructs of every docstring of a loaded package as Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = self.convert(obj.docstring.value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)

    def convert(self, text: str, scope: griffe.Object) -> str:
        lines = _tables(_literal_blocks(text.splitlines()))
        text = "\n".join(lines)
        # Roles only outside fenced blocks.
        parts = re.split(r"(^\s*```.*?^\s*```)", text, flags=re.S | re.M)
        for k in range(0, len(parts), 2):
            parts[k] = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", parts[k])
            parts[k] = _ROLE.sub(lambda m: self._reference(m, scope), parts[k])
        return "".join(parts)

    @staticmethod
    def _reference(match: re.Match[str], scope: griffe.Object) -> str:
        short, target = match.group(2) == "~", match.group(3).strip()
        title = target.rsplit(".", 1)[-1] if short else target
        target = target.removesuffix("()")
        head, _, rest = target.partition(".")
        try:
            resolved = scope.resolve(head)
        except Exception:  # noqa: BLE001 - unknown names stay plain code
            resolved = None
        if resolved is None:
            module = scope if scope.is_module else scope.module
            try:
                resolved = module.resolve(head)
            except Exception:  # noqa: BLE001
                resolved = head
        identifier = f"{resolved}.{rest}" if rest else resolved
        return (
            f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )

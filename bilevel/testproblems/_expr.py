"""Safe arithmetic expressions in ``x`` and ``y``, the functions of the bundled problem tables.

An expression is a string in a small subset of Python's expression syntax, parsed by the
standard library's :mod:`ast` (never ``eval``-ed) and checked against this grammar::

    expr  := number | name | x[i] | y[i] | expr op expr | -expr | +expr | fn(expr)
    op    := +  -  *  /  **
    name  := x | y | pi                  (x, y: the whole 1-D tensors; pi: math.pi)
    fn    := exp | log | sqrt | sin | cos | abs | sum

``i`` is a literal non-negative integer below the variable's dimension (zero-based, as in
``torch``), numbers are literal ints or floats, ``fn`` maps to the ``torch`` function of the
same name (``sum`` to :func:`torch.sum`). Anything else (attributes, other names or calls,
comparisons, slices, keywords, ...) is rejected when the expression is compiled, with a
:class:`ValueError` that names the expression and the offending piece.

Evaluation applies Python's own operators to the operands in the order of the syntax tree,
so an expression gives bit for bit what the same text gives as Python code on
``torch.Tensor`` operands (including broadcasting over extra trailing dimensions of ``x``
and ``y``, and every ``torch.func`` transform).

Why not SymPy (``parse_expr`` + ``lambdify``): ``parse_expr`` itself calls ``eval`` on the
text, ``lambdify`` generates code with ``exec``, SymPy reorders and folds terms (so values
change in the last bits), and importing it and parsing a few hundred expressions would
cost about a second at every ``import bilevel.testproblems``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Expression", "ExpressionRows"]

_T = torch.float64
_Node = Callable[[torch.Tensor, torch.Tensor], Any]

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "sin": torch.sin,
    "cos": torch.cos,
    "abs": torch.abs,
    "sum": torch.sum,
}
_CONSTANTS = {"pi": math.pi}


def _compile(text: str, n_x: int, n_y: int) -> _Node:
    """Check ``text`` against the grammar of the module docstring and build its evaluator."""
    if not isinstance(text, str):
        raise TypeError(f"an expression must be a string, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"expression {text!r} is not valid syntax: {err.msg}") from None
    sizes = {"x": n_x, "y": n_y}

    def reject(node: ast.AST, why: str) -> ValueError:
        return ValueError(f"expression {text!r}: {why} ({ast.unparse(node)!r} is not allowed)")

    def build(node: ast.AST) -> _Node:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise reject(node, "only int and float literals")
            return lambda x, y: value
        if isinstance(node, ast.Name):
            if node.id == "x":
                return lambda x, y: x
            if node.id == "y":
                return lambda x, y: y
            if node.id in _CONSTANTS:
                value = _CONSTANTS[node.id]
                return lambda x, y: value
            raise reject(node, f"unknown name; use x, y or {', '.join(_CONSTANTS)}")
        if isinstance(node, ast.Subscript):
            index = node.slice
            if not (isinstance(node.value, ast.Name) and node.value.id in sizes):
                raise reject(node, "only x[i] and y[i] may be indexed")
            size = sizes[node.value.id]
            if not (
                isinstance(index, ast.Constant)
                and type(index.value) is int
                and 0 <= index.value < size
            ):
                raise reject(node, f"the index must be an integer literal in [0, {size})")
            i = index.value
            if node.value.id == "x":
                return lambda x, y: x[i]
            return lambda x, y: y[i]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op, left, right = _BINARY[type(node.op)], build(node.left), build(node.right)
            return lambda x, y: op(left(x, y), right(x, y))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            unary, operand = _UNARY[type(node.op)], build(node.operand)
            return lambda x, y: unary(operand(x, y))
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name is None or name not in _FUNCTIONS or node.keywords or len(node.args) != 1:
                raise reject(node, f"calls take one argument: {', '.join(_FUNCTIONS)}")
            fn, arg = _FUNCTIONS[name], build(node.args[0])
            return lambda x, y: fn(arg(x, y))
        raise reject(node, "outside the grammar (numbers, x, y, x[i], y[i], + - * / **)")

    return build(tree.body)


@dataclass(frozen=True)
class Expression:
    """A scalar function ``(x, y) -> value`` given by the text of an expression (grammar in
    :mod:`bilevel.testproblems._expr`), for ``x`` of dimension ``n_x`` and ``y`` of ``n_y``."""

    text: str
    n_x: int
    n_y: int
    _fn: _Node = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fn", _compile(self.text, self.n_x, self.n_y))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._fn(x, y)

    def __reduce__(self) -> tuple[type, tuple[str, int, int]]:
        return type(self), (self.text, self.n_x, self.n_y)


@dataclass(frozen=True)
class ExpressionRows:
    """A constraint function ``(x, y) -> sign * [r_1(x, y), ..., r_m(x, y)]``: the float64
    1-D tensor of the rows' values (each an :class:`Expression` text), times ``sign``
    (``-1`` turns rows written as ``r_i >= 0`` into ``-r_i <= 0``)."""

    rows: tuple[str, ...]
    n_x: int
    n_y: int
    sign: int = 1
    _fns: tuple[_Node, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sign not in (1, -1):
            raise ValueError(f"sign must be 1 or -1, got {self.sign!r}")
        if not self.rows:
            raise ValueError("a constraint function needs at least one row")
        fns = tuple(_compile(r, self.n_x, self.n_y) for r in self.rows)
        object.__setattr__(self, "_fns", fns)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = torch.stack([torch.as_tensor(fn(x, y), dtype=_T) for fn in self._fns])
        return -rows if self.sign < 0 else rows

    def __reduce__(self) -> tuple[type, tuple[Sequence[str], int, int, int]]:
        return type(self), (self.rows, self.n_x, self.n_y, self.sign)

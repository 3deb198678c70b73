"""Instance files: JSON (read and write, validated on read) and Arslan-Detienne knapsack files.

JSON format (``"format": "bilevel.robust/1"``), one of three ``"problem"`` kinds:

- ``"knapsack"``: ``items`` (``pbar``, ``phat``, ``t``, ``c``, ``f``: lists of length ``n``),
  ``capacity``, ``gamma`` (see :func:`bilevel.robust.knapsack_problem`);
- ``"capital_budgeting"``: ``cbar``, ``rbar``, ``Phi``, ``Psi`` (``n x k``), ``budget``,
  ``theta`` (see :func:`bilevel.robust.capital_budgeting_problem`);
- ``"general"``: the arrays of :class:`~bilevel.robust.model.TwoStageRobustProblem`
  (``c``, ``x_types``, ``d``, ``y_types``, ``W``, ``T``, ``h`` required; ``x_lb``, ``x_ub``,
  ``A``, ``b``, ``C``, ``y_lb``, ``y_ub``, ``D``, ``W_xi``, ``T_xi``, ``H`` optional) and
  ``uncertainty`` (``{"kind": "budget", "n", "gamma", "lb", "ub"}``, ``{"kind": "box",
  "lb", "ub"}`` or ``{"kind": "polytope", "P", "q", "lb", "ub"}``).

Common optional keys: ``name``, ``sense`` (general only; ``"min"`` or ``"max"``) and
``metadata``. Infinite bounds are written as the strings ``"inf"`` / ``"-inf"``. Unknown
keys are refused (they are usually typos).

Knapsack files (:func:`read_knapsack_instance`): the published format of Arslan and
Detienne (2022): first line ``n C Gamma``, then one line per item ``pbar phat t c f``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bilevel.robust.model import TwoStageRobustProblem, UncertaintySet
from bilevel.robust.problems import capital_budgeting_problem, knapsack_problem

__all__ = [
    "FORMAT",
    "InstanceFormatError",
    "load_instance",
    "problem_from_dict",
    "problem_to_dict",
    "read_instance",
    "read_knapsack_instance",
    "write_instance",
]

FORMAT = "bilevel.robust/1"

_COMMON = {"format", "problem", "name", "metadata"}
_KNAPSACK = {"items", "capacity", "gamma"}
_CB = {"cbar", "rbar", "Phi", "Psi", "budget", "theta"}
_GENERAL_REQUIRED = {"c", "x_types", "d", "y_types", "W", "T", "h", "uncertainty"}
_GENERAL_OPTIONAL = {
    "x_lb",
    "x_ub",
    "A",
    "b",
    "C",
    "y_lb",
    "y_ub",
    "D",
    "W_xi",
    "T_xi",
    "H",
    "sense",
}


class InstanceFormatError(ValueError):
    """An instance file is malformed (the message names the file and the problem)."""


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _encode(value.tolist())
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return _encode(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise ValueError("NaN cannot be written to an instance file")
        return "inf" if value > 0 else "-inf"
    return value


def _decode_numbers(name: str, value: Any) -> np.ndarray:
    def conv(v: Any) -> Any:
        if isinstance(v, list):
            return [conv(u) for u in v]
        if isinstance(v, bool) or v is None:
            raise InstanceFormatError(f"{name}: expected numbers, got {v!r}")
        if isinstance(v, str):
            if v in ("inf", "+inf", "Infinity"):
                return math.inf
            if v in ("-inf", "-Infinity"):
                return -math.inf
            raise InstanceFormatError(f"{name}: expected a number, got the string {v!r}")
        if not isinstance(v, int | float):
            raise InstanceFormatError(f"{name}: expected numbers, got {type(v).__name__}")
        return float(v)

    converted = conv(value)
    try:
        arr = np.array(converted, dtype=float)
    except ValueError as err:  # ragged lists
        raise InstanceFormatError(f"{name}: not a rectangular array of numbers") from err
    if np.any(np.isnan(arr)):
        raise InstanceFormatError(f"{name}: NaN is not allowed")
    return arr


def _number(name: str, value: Any) -> float:
    arr = _decode_numbers(name, value)
    if arr.ndim != 0:
        raise InstanceFormatError(f"{name}: expected a single number")
    if not np.isfinite(arr):
        raise InstanceFormatError(f"{name}: must be finite")
    return float(arr)


def problem_to_dict(problem: TwoStageRobustProblem) -> dict[str, Any]:
    """JSON-ready dictionary of ``problem`` (structured for knapsack / capital budgeting)."""
    meta = dict(problem.metadata)
    kind = meta.pop("problem", "general")
    out: dict[str, Any] = {"format": FORMAT, "problem": kind, "name": problem.name}
    if kind == "knapsack":
        out["items"] = meta.pop("items")
        out["capacity"] = meta.pop("capacity")
        out["gamma"] = meta.pop("gamma")
    elif kind == "capital_budgeting":
        for key in ("cbar", "rbar", "Phi", "Psi", "budget", "theta"):
            out[key] = meta.pop(key)
    else:
        out["problem"] = "general"
        out["sense"] = problem.sense
        for key in (
            "c",
            "x_types",
            "x_lb",
            "x_ub",
            "A",
            "b",
            "C",
            "d",
            "y_types",
            "y_lb",
            "y_ub",
            "D",
            "W",
            "T",
            "h",
            "W_xi",
            "T_xi",
            "H",
        ):
            value = getattr(problem, key)
            if value is not None and not (isinstance(value, np.ndarray) and value.size == 0):
                out[key] = value
        out["uncertainty"] = problem.uncertainty.to_dict()
    out["metadata"] = meta
    return _encode(out)


def _check_keys(data: dict, allowed: set[str], required: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise InstanceFormatError(f"{where}: unknown keys {sorted(unknown)}")
    missing = required - set(data)
    if missing:
        raise InstanceFormatError(f"{where}: missing keys {sorted(missing)}")


def _uncertainty_from_dict(data: Any) -> UncertaintySet:
    if not isinstance(data, dict) or "kind" not in data:
        raise InstanceFormatError("uncertainty: expected an object with a 'kind'")
    kind = data["kind"]
    if kind == "budget":
        _check_keys(data, {"kind", "n", "gamma", "lb", "ub"}, {"kind", "n", "gamma"}, "uncertainty")
        n = _number("uncertainty.n", data["n"])
        if n != int(n) or n < 1:
            raise InstanceFormatError("uncertainty.n must be a positive integer")
        return UncertaintySet.budget(
            int(n),
            _number("uncertainty.gamma", data["gamma"]),
            _number("uncertainty.lb", data.get("lb", 0.0)),
            _number("uncertainty.ub", data.get("ub", 1.0)),
        )
    if kind == "box":
        _check_keys(data, {"kind", "lb", "ub"}, {"kind", "lb", "ub"}, "uncertainty")
        return UncertaintySet.box(
            _decode_numbers("uncertainty.lb", data["lb"]),
            _decode_numbers("uncertainty.ub", data["ub"]),
        )
    if kind == "polytope":
        _check_keys(data, {"kind", "P", "q", "lb", "ub"}, {"kind", "P", "q"}, "uncertainty")
        return UncertaintySet.polytope(
            _decode_numbers("uncertainty.P", data["P"]),
            _decode_numbers("uncertainty.q", data["q"]),
            _decode_numbers("uncertainty.lb", data["lb"]) if "lb" in data else None,
            _decode_numbers("uncertainty.ub", data["ub"]) if "ub" in data else None,
        )
    raise InstanceFormatError(f"uncertainty.kind must be budget, box or polytope, got {kind!r}")


def problem_from_dict(data: Any) -> TwoStageRobustProblem:
    """Inverse of :func:`problem_to_dict`, validating keys, types and shapes."""
    if not isinstance(data, dict):
        raise InstanceFormatError("an instance must be a JSON object")
    if data.get("format") != FORMAT:
        raise InstanceFormatError(f"'format' must be {FORMAT!r}, got {data.get('format')!r}")
    kind = data.get("problem")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise InstanceFormatError("'name' must be a string")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InstanceFormatError("'metadata' must be an object")
    try:
        if kind == "knapsack":
            _check_keys(data, _COMMON | _KNAPSACK, _KNAPSACK | {"format", "problem"}, "knapsack")
            items = data["items"]
            if not isinstance(items, dict):
                raise InstanceFormatError("items must be an object of lists")
            _check_keys(
                items, {"pbar", "phat", "t", "c", "f"}, {"pbar", "phat", "t", "c", "f"}, "items"
            )
            arrays = {k: _decode_numbers(f"items.{k}", v) for k, v in items.items()}
            n = arrays["pbar"].shape
            for k, v in arrays.items():
                if v.ndim != 1 or v.shape != n:
                    raise InstanceFormatError(f"items.{k} must be a list of length {n[0]}")
            return knapsack_problem(
                **arrays,
                capacity=_number("capacity", data["capacity"]),
                gamma=_number("gamma", data["gamma"]),
                name=name,
                metadata=metadata,
            )
        if kind == "capital_budgeting":
            _check_keys(data, _COMMON | _CB, _CB | {"format", "problem"}, "capital_budgeting")
            return capital_budgeting_problem(
                _decode_numbers("cbar", data["cbar"]),
                _decode_numbers("rbar", data["rbar"]),
                _decode_numbers("Phi", data["Phi"]),
                _decode_numbers("Psi", data["Psi"]),
                _number("budget", data["budget"]),
                _number("theta", data["theta"]),
                name=name,
                metadata=metadata,
            )
        if kind == "general":
            _check_keys(
                data,
                _COMMON | _GENERAL_REQUIRED | _GENERAL_OPTIONAL,
                _GENERAL_REQUIRED | {"format", "problem"},
                "general",
            )
            kwargs: dict[str, Any] = {}
            for key in _GENERAL_REQUIRED | _GENERAL_OPTIONAL:
                if key not in data or key == "uncertainty":
                    continue
                if key in ("x_types", "y_types", "sense"):
                    if not isinstance(data[key], str):
                        raise InstanceFormatError(f"{key} must be a string")
                    kwargs[key] = data[key]
                else:
                    kwargs[key] = _decode_numbers(key, data[key])
            return TwoStageRobustProblem(
                uncertainty=_uncertainty_from_dict(data["uncertainty"]),
                name=name,
                metadata=metadata,
                **kwargs,
            )
    except InstanceFormatError:
        raise
    except (ValueError, TypeError) as err:
        raise InstanceFormatError(str(err)) from err
    raise InstanceFormatError(
        f"'problem' must be knapsack, capital_budgeting or general, got {kind!r}"
    )


def write_instance(
    problem: TwoStageRobustProblem, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``problem`` as JSON to ``path``; an existing file is replaced only when
    ``overwrite`` (``FileExistsError`` otherwise)."""
    path = Path(path)
    text = json.dumps(problem_to_dict(problem), indent=1)
    with path.open("w" if overwrite else "x", encoding="utf-8", newline="\n") as fh:
        fh.write(text + "\n")
    return path


def read_instance(path: str | Path) -> TwoStageRobustProblem:
    """Read and validate a JSON instance file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InstanceFormatError(f"{path}: not valid JSON ({err})") from err
    try:
        return problem_from_dict(data)
    except InstanceFormatError as err:
        raise InstanceFormatError(f"{path}: {err}") from None


def read_knapsack_instance(path: str | Path) -> TwoStageRobustProblem:
    """Read an Arslan-Detienne two-stage robust knapsack file.

    Format: first line ``n C Gamma`` (items, capacity, uncertainty budget), then ``n``
    lines ``pbar phat t c f`` (nominal profit, maximal degradation, repair weight, weight,
    outsourcing cost). Returns :func:`bilevel.robust.knapsack_problem` (``sense="max"``).
    """
    path = Path(path)
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [tokens for tokens in lines if tokens]

    def numbers(tokens: list[str], lineno: int) -> list[float]:
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise InstanceFormatError(
                f"{path}: line {lineno}: expected numbers, got {' '.join(tokens)!r}"
            ) from None
        if not all(math.isfinite(v) for v in values):
            raise InstanceFormatError(f"{path}: line {lineno}: non-finite number")
        return values

    if not lines:
        raise InstanceFormatError(f"{path}: empty file")
    if len(lines[0]) != 3:
        raise InstanceFormatError(
            f"{path}: the first line must be 'n C Gamma' (3 numbers), got {len(lines[0])}"
        )
    n, capacity, gamma = numbers(lines[0], 1)
    if n != int(n) or n < 1:
        raise InstanceFormatError(f"{path}: the number of items must be a positive integer")
    n = int(n)
    if len(lines) - 1 != n:
        raise InstanceFormatError(f"{path}: expected {n} item lines, found {len(lines) - 1}")
    items = []
    for i, tokens in enumerate(lines[1:], start=2):
        if len(tokens) != 5:
            raise InstanceFormatError(
                f"{path}: line {i}: expected 5 numbers 'pbar phat t c f', got {len(tokens)}"
            )
        items.append(numbers(tokens, i))
    data = np.array(items)
    if np.any(data < 0):
        raise InstanceFormatError(f"{path}: item data must be nonnegative")
    if capacity < 0 or gamma < 0:
        raise InstanceFormatError(f"{path}: capacity and Gamma must be nonnegative")
    pbar, phat, t, c, f = data.T
    return knapsack_problem(
        pbar,
        phat,
        t,
        c,
        f,
        capacity,
        gamma,
        name=path.name,
        metadata={"source": "arslan_detienne"},
    )


def load_instance(path: str | Path) -> TwoStageRobustProblem:
    """A ``.json`` file by :func:`read_instance`, anything else as a knapsack file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no instance file {path}")
    if path.suffix.lower() == ".json":
        return read_instance(path)
    return read_knapsack_instance(path)

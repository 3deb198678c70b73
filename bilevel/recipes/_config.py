"""Validated configuration dataclasses shared by the recipes.

A recipe's options are a frozen dataclass deriving from :class:`RecipeConfig`. Every
option has a default; options whose default depends on the problem ``size`` (``"default"``
or ``"fast"``, see ``PRESETS``) are declared with ``None`` and filled in from the preset
when the config is built, so ``Config(size="fast", outer_steps=5)`` and
``Config.from_options({"size": "fast", "outer_steps": "5"})`` agree. Invalid values raise
:class:`ConfigError` (a :class:`ValueError`) naming the option and what it accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["ConfigError", "RecipeConfig", "option"]


class ConfigError(ValueError):
    """An unknown option or an invalid option value."""


def option(
    default: Any = None,
    help: str = "",
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A dataclass field with a help text and value constraints checked by the config."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "minimum": minimum,
            "maximum": maximum,
            "exclusive_minimum": exclusive_minimum,
            "choices": choices,
        },
    )


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def _base_type(annotation: Any) -> type:
    """``int | None`` -> ``int``; plain types pass through."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        raise TypeError(f"unsupported option annotation {annotation!r}")
    return annotation


def _convert(name: str, value: Any, kind: type) -> Any:
    """Check (and, for strings from a command line, parse) one option value."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"option {name!r} must be a boolean (true/false), got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"option {name!r} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"option {name!r} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"option {name!r} must be a number, got {value!r}")
        if isinstance(value, int | float):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value.strip())
            except ValueError:
                raise ConfigError(f"option {name!r} must be a number, got {value!r}") from None
        else:
            raise ConfigError(f"option {name!r} must be a number, got {value!r}")
        if not math.isfinite(result):
            raise ConfigError(f"option {name!r} must be finite, got {value!r}")
        return result
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"option {name!r} must be a string, got {value!r}")
    raise TypeError(f"unsupported option type {kind!r} for {name!r}")


@dataclass(frozen=True)
class RecipeConfig:
    """Base class of recipe configurations (see the module docstring).

    Subclasses declare their options with :func:`option` and may override
    :meth:`_check` for checks involving several options.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    size: str = option("default", "problem size preset: 'default' or 'fast' (for tests)")

    def __post_init__(self) -> None:
        presets = type(self).PRESETS
        if not isinstance(self.size, str) or self.size not in presets:
            raise ConfigError(f"option 'size' must be one of {sorted(presets)}, got {self.size!r}")
        preset = {**presets["default"], **presets[self.size]}
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in preset:
                value = preset[f.name]
            if value is None:
                if f.name in presets["default"] or type(None) not in typing.get_args(hints[f.name]):
                    raise ConfigError(f"option {f.name!r} has no value")
                continue
            value = _convert(f.name, value, _base_type(hints[f.name]))
            _check_constraints(f, value)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Cross-option checks; raise :class:`ConfigError`."""

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """``(name, type, default, help)`` per option; size-dependent defaults list each size."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default
            if default is None:
                sizes = {
                    size: preset[f.name] for size, preset in cls.PRESETS.items() if f.name in preset
                }
                shown = ", ".join(f"{k}: {v}" for k, v in sizes.items()) or "None"
            else:
                shown = repr(default) if isinstance(default, str) else str(default)
            rows.append((f.name, _base_type(hints[f.name]).__name__, shown, f.metadata["help"]))
        return rows

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None) -> RecipeConfig:
        """Build a config from a mapping of option names (``-`` or ``_``) to values.

        String values (from a command line) are parsed to the option's type; unknown names
        raise :class:`ConfigError` with the closest valid names.
        """
        options = dict(options or {})
        names = cls.option_names()
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if not isinstance(key, str):
                raise ConfigError(f"option names must be strings, got {key!r}")
            name = key.replace("-", "_")
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ConfigError(
                    f"unknown option {key!r}{hint} (valid options of {cls.__name__}: "
                    f"{', '.join(names)})"
                )
            if name in kwargs:
                raise ConfigError(f"option {name!r} given twice")
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> RecipeConfig:
        """A copy with some options changed (validated again)."""
        return type(self).from_options({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _check_constraints(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"option {f.name!r} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None:
        if meta.get("exclusive_minimum") and not value > lo:
            raise ConfigError(f"option {f.name!r} must be > {lo}, got {value!r}")
        if not value >= lo:
            raise ConfigError(f"option {f.name!r} must be >= {lo}, got {value!r}")
    if hi is not None and not value <= hi:
        raise ConfigError(f"option {f.name!r} must be <= {hi}, got {value!r}")

"""Typed check options: a check's ``Options`` dataclass is the schema of ``[checks.NAME]``.

Each field's annotation is its type, checked when the config is read (before anything
runs): ``bool``, ``int``, ``float`` (an int is accepted), ``str``, ``Literal["a", "b"]``,
``list[T]``, ``tuple[T, ...]``, ``dict[str, T]`` and ``T | None``. Bounds and extra
constraints go in the field's metadata through :func:`opt`::

    @dataclass
    class Options:
        steps: int = opt(10, min=1, doc="iterations per attack")
        space: Literal["pixel", "feature"] = "pixel"
        epsilons: dict[str, list[float]] = opt(dict, doc="per norm; missing norms get defaults")

A number with no ``max`` of its own is bounded by :data:`NUMBER_MAX` (10**6: no step,
query, sample or bin count, and no size, is sensibly larger), so a typo such as ``10**12``
steps is refused at config read instead of running for ever. An ``int`` option takes only
integers (``2.5`` steps is refused, never truncated).

A wrong value is a :class:`~audit.errors.ConfigError` (exit 4) of one line that names the
option and what it accepts, e.g. ``[checks.bias] space = 'bogus': expected one of 'pixel',
'feature'``. Cross-field rules go in the dataclass's ``__post_init__``, raising ConfigError.
"""
from __future__ import annotations

import dataclasses
import math
import reprlib
import sys
import types
import typing
from typing import Any, Literal, Union

from .errors import ConfigError

__all__ = ["opt", "parse_options", "describe_type", "option_types", "NUMBER_MAX"]

#: the bound of a numeric option that sets no ``max`` (see the module docstring)
NUMBER_MAX = 10**6


def opt(default: Any = dataclasses.MISSING, *, min: float | None = None, max: float | None = None,
        doc: str = "") -> Any:
    """A dataclass field with bounds (inclusive ``min``/``max`` for numbers, for every element
    of a list) and a one-line ``doc``. A callable ``default`` (``list``, ``dict``, a lambda) is a
    default factory."""
    meta = {"min": min, "max": max, "doc": doc}
    if callable(default) and default is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_types(options_cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of an ``Options`` dataclass."""
    module = sys.modules.get(options_cls.__module__)
    ns = dict(vars(module)) if module else {}
    ns.setdefault("Literal", Literal)
    return typing.get_type_hints(options_cls, globalns=ns)


def describe_type(tp: Any) -> str:
    """What a type accepts, for an error message."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        inner = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" (or omitted)" if type(None) in args else "")
    if origin in (list, tuple):
        return f"a list of {describe_type(args[0]) if args else 'values'}"
    if origin is dict:
        return f"a table of {describe_type(args[1]) if len(args) > 1 else 'values'}"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _conforms(tp: Any, val: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(val == a and type(val) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_conforms(a, val) for a in args)
    if tp is type(None):
        return val is None
    if origin in (list, tuple):
        if not isinstance(val, (list, tuple)):
            return False
        return not args or all(_conforms(args[0], v) for v in val)
    if origin is dict:
        if not isinstance(val, dict):
            return False
        return len(args) < 2 or all(_conforms(args[0], k) and _conforms(args[1], v) for k, v in val.items())
    if tp is bool:
        return isinstance(val, bool)
    if tp is int:
        return isinstance(val, int) and not isinstance(val, bool)
    if tp is float:
        return isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val)
    if isinstance(tp, type):
        return isinstance(val, tp)
    return True


def _numbers(val: Any):
    if isinstance(val, bool):
        return
    if isinstance(val, (int, float)):
        yield val
    elif isinstance(val, (list, tuple)):
        for v in val:
            yield from _numbers(v)
    elif isinstance(val, dict):
        for v in val.values():
            yield from _numbers(v)


def _fmt(bound: float) -> str:
    return f"{bound:,}" if float(bound).is_integer() else f"{bound:g}"


def check_value(check: str, f: dataclasses.Field, tp: Any, val: Any) -> Any:
    """``val`` validated for field ``f`` (ints widened to floats where a float is expected)
    against its type and bounds (:data:`NUMBER_MAX` when it sets no ``max``); raises
    ConfigError naming the option and what it accepts."""
    where = f"[checks.{check}] {f.name} = {reprlib.repr(val)}"
    if not _conforms(tp, val):
        raise ConfigError(f"{where}: expected {describe_type(tp)}")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    hi = NUMBER_MAX if hi is None else hi
    for v in _numbers(val):
        if (lo is not None and v < lo) or v > hi:
            span = f"from {_fmt(lo)} to {_fmt(hi)}" if lo is not None else f"at most {_fmt(hi)}"
            raise ConfigError(f"{where}: must be {span}")
    if tp is float and isinstance(val, int):
        return float(val)
    return val


def parse_options(check: str, options_cls: type, table: dict[str, Any] | None) -> Any:
    """Build ``options_cls`` from a config table, validating every key and value; raises
    :class:`~audit.errors.ConfigError` naming the first bad one (a value nested too deeply
    to check included)."""
    table = dict(table or {})
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    hints = option_types(options_cls)
    for key in table:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise ConfigError(f"[checks.{check}]: unknown key {key!r} (known: {known})")
    for key, val in list(table.items()):
        try:
            table[key] = check_value(check, fields[key], hints.get(key, Any), val)
        except RecursionError:
            raise ConfigError(f"[checks.{check}] {key}: the value is nested too deeply; "
                              f"expected {describe_type(hints.get(key, Any))}") from None
    try:
        return options_cls(**table)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[checks.{check}]: {e}") from None

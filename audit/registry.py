"""The check registry: ``@register_check("name")`` on a :class:`Check` subclass.

A check is one module plus one registry line. ``audit list`` prints what is registered;
``--checks a,b`` selects; config tables ``[checks.NAME]`` set a check's ``Options``.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, ClassVar

from .errors import ConfigError

_CHECKS: dict[str, type["Check"]] = {}

#: modules that register the built-in checks, in battery order. A module that does not
#: exist yet (a check still to be written) is skipped.
BUILTIN_MODULES = ("audit.clean", "attacks.adversarial", "attacks.fooling", "probes.class_viz",
                   "probes.attribution", "probes.bias")


class Check:
    """Base class of a check. Subclasses set ``name`` (by the decorator), ``description``
    (one line for ``audit list``), ``metrics`` and ``findings`` (name/code -> meaning, the
    documented vocabulary that gates may refer to), ``needs_data``, and an ``Options``
    dataclass whose fields are the keys allowed in ``[checks.NAME]``.

    ``shardable = True`` declares that ``run`` does its heavy work through
    ``ctx.map_units`` (work units split over the processes of a distributed run, see
    :mod:`audit.distributed`) and runs the same code on every rank otherwise; a check that
    is not shardable runs on rank 0 alone and its result is sent to the other ranks."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    shardable: ClassVar[bool] = False
    metrics: ClassVar[dict[str, str]] = {}
    findings: ClassVar[dict[str, str]] = {}

    @dataclasses.dataclass
    class Options:
        pass

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def run(self, ctx) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def parse_options(cls, table: dict[str, Any] | None) -> Any:
        """Build ``Options`` from a config table; an unknown key or a wrong type is a
        :class:`ConfigError` that names it."""
        table = dict(table or {})
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        for key, val in table.items():
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise ConfigError(f"[checks.{cls.name}]: unknown key {key!r} (known: {known})")
            f = fields[key]
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            if default is not None and not _same_kind(default, val):
                raise ConfigError(f"[checks.{cls.name}] {key} = {val!r}: expected {type(default).__name__}")
        try:
            return cls.Options(**table)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[checks.{cls.name}]: {e}") from None


def _same_kind(default: Any, val: Any) -> bool:
    if isinstance(default, bool) or isinstance(val, bool):
        return isinstance(default, bool) and isinstance(val, bool)
    if isinstance(default, (int, float)):
        return isinstance(val, (int, float))
    return isinstance(val, type(default))


def register_check(name: str):
    """Class decorator registering a check under ``name``."""

    def deco(cls):
        cls.name = name
        _CHECKS[name] = cls
        return cls

    return deco


_loaded = False


def load_builtin_checks() -> None:
    global _loaded
    if _loaded:
        return
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency inside an existing module
                raise
    _loaded = True


def registered_checks() -> dict[str, type[Check]]:
    load_builtin_checks()
    return dict(_CHECKS)


def get_check(name: str) -> type[Check]:
    checks = registered_checks()
    if name not in checks:
        raise ConfigError(f"unknown check {name!r}; `audit list` shows the registered ones ({', '.join(checks)})")
    return checks[name]

"""The check registry: ``@register_check("name")`` on a :class:`~audit.check.Check` subclass.

A check is one subpackage plus one line in :data:`BUILTIN_CHECKS`. ``audit list`` prints
what is registered; ``--checks a,b`` selects; config tables ``[checks.NAME]`` set a check's
``Options``. A duplicate name is refused. The battery's order never depends on import
order: built-in checks in :data:`BUILTIN_CHECKS` order, then other registered checks by
name, then reordered so that every check runs after the publishers of what it ``reads``.
"""
from __future__ import annotations

import importlib

from .check import Check, Unit
from .errors import ConfigError

__all__ = ["Check", "Unit", "register_check", "registered_checks", "get_check", "battery_order", "BUILTIN_CHECKS"]

_CHECKS: dict[str, type[Check]] = {}

#: name -> module that registers it, in the canonical battery order
BUILTIN_CHECKS = {
    "clean": "audit.clean",
    "adversarial": "attacks.adversarial",
    "fooling": "attacks.fooling",
    "class_viz": "probes.class_viz",
    "attribution": "probes.attribution",
    "bias": "probes.bias",
}


def register_check(name: str):
    """Class decorator registering a check under ``name``; a name taken by another class is
    a ValueError."""

    def deco(cls):
        old = _CHECKS.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"check name {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        cls.name = name
        _CHECKS[name] = cls
        return cls

    return deco


_loaded = False


def load_builtin_checks() -> None:
    global _loaded
    if _loaded:
        return
    for mod in BUILTIN_CHECKS.values():
        importlib.import_module(mod)
    _loaded = True


def registered_checks() -> dict[str, type[Check]]:
    """Every registered check, in battery order."""
    load_builtin_checks()
    return {n: _CHECKS[n] for n in battery_order(list(_CHECKS))}


def get_check(name: str) -> type[Check]:
    load_builtin_checks()
    if name not in _CHECKS:
        raise ConfigError(f"unknown check {name!r}; `audit list` shows the registered ones "
                          f"({', '.join(battery_order(list(_CHECKS)))})")
    return _CHECKS[name]


def battery_order(names: list[str]) -> list[str]:
    """``names`` in the order they run: canonical order, then each check moved after the
    selected publishers of what it reads (a stable topological sort). A cycle is a
    ConfigError."""
    canon = list(BUILTIN_CHECKS)
    ordered = sorted(dict.fromkeys(names), key=lambda n: (canon.index(n) if n in canon else len(canon), n))
    publishers = {p: n for n in ordered for p in _CHECKS[n].publishes} if _CHECKS else {}
    deps = {n: {publishers[r] for r in _CHECKS[n].reads if r in publishers and publishers[r] != n} for n in ordered}
    out: list[str] = []
    while len(out) < len(ordered):
        ready = [n for n in ordered if n not in out and deps[n] <= set(out)]
        if not ready:
            left = [n for n in ordered if n not in out]
            raise ConfigError(f"checks {', '.join(left)} read each other's published values in a cycle")
        out.append(ready[0])
    return out

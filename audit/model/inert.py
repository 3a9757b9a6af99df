"""Reading the tensors of a ``torch.save`` checkpoint whose other entries need code to unpickle,
without running any of it.

A PyTorch Lightning ``.ckpt`` (or any training checkpoint) keeps, beside its ``state_dict``,
``hyper_parameters`` and callback states that may hold arbitrary objects (an
``argparse.Namespace``, the user's own config class). ``torch.load(weights_only=True)`` refuses
the whole file for them. :func:`load_inert` unpickles it with an unpickler whose ``find_class``
returns the real object only for the globals ``weights_only`` itself allows (tensor rebuild
functions, dtypes, ``OrderedDict``, ...: torch's own allow-list) and, for every other global,
an :class:`Inert` stand-in class: calling it, instantiating it, or restoring its state only
records the arguments; no function from the file is ever called and no module is imported.
The pickle's BUILD (set an object's state) is refused on a class, function or module (it would
``setattr`` on the real, allowed ones, changing the program), so only objects get state.
"""
from __future__ import annotations

import inspect
import pickle
import types
import warnings
from pathlib import Path
from typing import Any

__all__ = ["Inert", "load_inert", "stand_ins"]


class Inert:
    """What an object that needs code to unpickle became: its global's name (``_global``) and
    the arguments and state the pickle gave it, kept and never used."""

    _global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Inert":  # NEWOBJ / REDUCE: no call of real code
        obj = object.__new__(cls)
        object.__setattr__(obj, "_parts", [args, kwargs])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD
        self._parts.append(state)

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on a dict subclass
        self._parts.append((key, value))

    def append(self, value: Any) -> None:  # APPEND(S) on a list subclass
        self._parts.append(value)

    def extend(self, values: Any) -> None:
        self._parts.extend(values)

    def __repr__(self) -> str:
        return f"<{self._global}, not loaded>"


def _allowed() -> dict[str, Any]:
    """The globals ``torch.load(weights_only=True)`` resolves (``"module.name"`` -> object),
    plus those a user added with ``torch.serialization.add_safe_globals``."""
    from torch import _weights_only_unpickler as wo

    allowed = dict(wo._get_allowed_globals())
    user = getattr(wo, "_get_user_allowed_globals", None)
    if user is not None:
        allowed.update(user())
    return allowed


def _pickle_module(seen: set[str]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler makes stand-ins (their names
    collected in ``seen``)."""
    allowed = _allowed()
    made: dict[str, type] = {}

    class Unpickler(pickle._Unpickler):  # the Python one: its BUILD can be refused below
        dispatch = dict(pickle._Unpickler.dispatch)

        def load_build(self) -> None:
            """BUILD sets an object's state; on a class, function or module that would change the
            program itself (``setattr`` on ``collections.Counter``), so only instances are built."""
            target = self.stack[-2]
            if isinstance(target, type) or inspect.isroutine(target) or inspect.ismodule(target):
                raise pickle.UnpicklingError(f"the pickle sets the state of {getattr(target, '__qualname__', target)!r}, "
                                             "a class or function, not an object")
            pickle._Unpickler.load_build(self)

        dispatch[pickle.BUILD[0]] = load_build

        def find_class(self, module: str, name: str) -> Any:
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            seen.add(full)
            if full not in made:
                made[full] = type(name, (Inert,), {"_global": full, "__module__": __name__})
            return made[full]

    mod = types.ModuleType("audit_inert_pickle")
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    return mod


def load_inert(path: Path) -> tuple[Any, list[str]]:
    """``torch.load`` of ``path`` (on the CPU) with every global outside torch's weights-only
    allow-list replaced by an :class:`Inert` stand-in; returns the object and the sorted names
    of the replaced globals. Raises what ``torch.load`` raises when the file is corrupt or the
    stand-ins break its structure (e.g. a tensor rebuilt from one)."""
    import torch

    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(seen))
    return obj, sorted(seen)


def stand_ins(names: list[str], limit: int = 3) -> str:
    """The first ``limit`` of ``names`` (replaced globals) as text, e.g. ``argparse.Namespace``."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")

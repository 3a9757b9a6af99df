"""Records: the picklable dataclasses that checks compute and publish.

``@record`` makes a class a dataclass and registers it, so that a work unit's record or a
published value can be checkpointed as plain tensors, numbers, strings, lists and dicts
(loaded back with ``torch.load(weights_only=True)``: no pickled code) and rebuilt into its
class. Only registered classes are rebuilt, so a checkpoint file cannot name arbitrary code.
"""
from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["record", "encode", "decode", "is_record", "registered_records"]

_RECORDS: dict[str, type] = {}
_TAG = "__record__"


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def record(cls: type | None = None, **dataclass_kw: Any):
    """Class decorator: ``@record`` or ``@record(frozen=True)``; a dataclass, registered."""

    def wrap(c: type) -> type:
        c = c if dataclasses.is_dataclass(c) else dataclasses.dataclass(**dataclass_kw)(c)
        key = _key(c)
        if key in _RECORDS and _RECORDS[key] is not c:
            raise ValueError(f"record class {key} registered twice")
        _RECORDS[key] = c
        return c

    return wrap(cls) if cls is not None else wrap


def is_record(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type) and _RECORDS.get(_key(type(obj))) is type(obj)


def registered_records() -> dict[str, type]:
    return dict(_RECORDS)


def encode(obj: Any) -> Any:
    """``obj`` with every record replaced by a tagged dict (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if not is_record(obj):
            raise TypeError(f"{type(obj).__qualname__} is a dataclass but not a @record")
        return {_TAG: _key(type(obj)), **{f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(encode(v) for v in obj)
    return obj


def decode(obj: Any) -> Any:
    """The inverse of :func:`encode`; raises ValueError for an unregistered record name."""
    if isinstance(obj, dict):
        if _TAG in obj:
            cls = _RECORDS.get(obj[_TAG])
            if cls is None:
                raise ValueError(f"unknown record type {obj[_TAG]!r}")
            kw = {k: decode(v) for k, v in obj.items() if k != _TAG}
            names = {f.name for f in dataclasses.fields(cls) if f.init}
            inst = cls(**{k: v for k, v in kw.items() if k in names})
            for k, v in kw.items():
                if k not in names:
                    object.__setattr__(inst, k, v)
            return inst
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode(v) for v in obj)
    return obj

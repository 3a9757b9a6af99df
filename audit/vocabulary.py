"""The documented vocabulary of every registered check, as Markdown: ``docs/findings.md``.

``python -m audit.vocabulary > docs/findings.md`` regenerates it from the checks' own
declarations (``metrics``, ``findings``, ``Options``, ``reads``, ``publishes``), the one place
they are written; a test fails when the file is out of date. Each check's page
``docs/<check>.md`` explains the same names at length, with the papers followed.
"""
from __future__ import annotations

import dataclasses

from .options import describe_type, option_types
from .registry import registered_checks

__all__ = ["markdown"]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "(required)"


def markdown() -> str:
    """The vocabulary page, one section per check in battery order."""
    out = ["# Metrics, findings and options of every check",
           "",
           "Generated from the checks' declarations by `python -m audit.vocabulary > docs/findings.md`;",
           "do not edit by hand. Gates may name any metric below (`check.metric[qualifier=value]`);",
           "finding codes are stable. Each check's page (`docs/<check>.md`) gives the meaning at",
           "length and the paper followed.",
           ""]
    for name, cls in registered_checks().items():
        out += [f"## `{name}`", "", _cell(cls.description), "",
                f"Page: [docs/{name}.md]({name}.md). Needs data: {'yes' if cls.needs_data else 'no'}."]
        if cls.reads:
            out.append("Reads (when published): " + ", ".join(f"`{r}`" for r in cls.reads) + ".")
        if cls.publishes:
            out.append("Publishes: " + ", ".join(f"`{p}` ({t.__name__})" for p, t in cls.publishes.items()) + ".")
        out += ["", "| metric | meaning |", "|---|---|"]
        out += [f"| `{m}` | {_cell(v)} |" for m, v in cls.metrics.items()]
        out += ["", "| finding | meaning |", "|---|---|"]
        out += [f"| `{c}` | {_cell(v)} |" for c, v in cls.findings.items()]
        hints = option_types(cls.Options)
        fields = dataclasses.fields(cls.Options)
        if fields:
            out += ["", f"| option `[checks.{name}]` | accepts | default | meaning |", "|---|---|---|---|"]
            for f in fields:
                bounds = [f"≥ {f.metadata['min']:g}" if f.metadata.get("min") is not None else "",
                          f"≤ {f.metadata['max']:g}" if f.metadata.get("max") is not None else ""]
                acc = describe_type(hints.get(f.name)) + "".join(f", {b}" for b in bounds if b)
                out.append(f"| `{f.name}` | {_cell(acc)} | `{_cell(_default(f))}` | {_cell(f.metadata.get('doc', ''))} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")

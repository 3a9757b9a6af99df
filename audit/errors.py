"""Exit codes and the error types the CLI turns into them."""
from __future__ import annotations

import re
from enum import IntEnum


class ExitCode(IntEnum):
    """What ``audit`` returns to the shell (documented in README.md)."""

    OK = 0  #: every gate passed (warnings allowed)
    GATE_FAILED = 1  #: a gate (or a finding at --fail-on severity) failed
    INTERRUPTED = 2  #: Ctrl-C; what finished is still written
    INTERNAL_ERROR = 3  #: a check crashed or the tool itself failed
    USAGE_ERROR = 4  #: bad model, data, flags or config


class AuditError(Exception):
    """Base of the errors we report as one line."""

    exit_code = ExitCode.INTERNAL_ERROR


class UsageError(AuditError):
    """The user's input is wrong: bad model file, data, flags or config. One line that says
    what is wrong and what to do; exit code 4."""

    exit_code = ExitCode.USAGE_ERROR


class ModelLoadError(UsageError):
    """The model file cannot be loaded (missing, foreign, truncated, untrusted pickle)."""


class DataError(UsageError):
    """The data cannot be loaded or does not match the model."""


class InputShapeError(UsageError):
    """The model fails on a well-formed input of the shape it was probed with (the shape, or
    its channel count, may be wrong: another shape may run)."""


class ConfigError(UsageError):
    """The config file or options are invalid."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  #: terminal colour codes (torch's messages carry some)


def first_line(e: BaseException | str, limit: int = 400, *, with_type: bool = False) -> str:
    """The first non-empty line of an exception's message (or of a string), cut to ``limit``
    characters, terminal colour codes removed; the type's name when the message is empty.
    ``with_type=True`` prefixes ``TypeName: ``. The one place the tool shortens an error for a one-line report."""
    text = _ANSI.sub("", str(e)).strip()
    line = text.splitlines()[0][:limit] if text else ""
    if isinstance(e, BaseException):
        name = type(e).__name__
        if with_type:
            return f"{name}: {line}" if line else name
        return line or name
    return line


#: the words a fix starts with in a one-line error ("...; pass --resize to ...")
FIX_WORDS = ("pass", "re-run", "rerun", "give", "save", "re-save", "re-export", "export", "rename", "put", "remove",
             "fix", "use", "downscale", "store", "make", "fetch", "re-copy", "check", "name", "return", "scale", "if",
             "otherwise", "add", "convert", "select", "edit", "delete", "free", "move", "choose", "run", "install",
             "set", "drop", "load")
_FIX = re.compile(r"(?:[;:.]\s+)(?=(?:" + "|".join(map(re.escape, FIX_WORDS)) + r")\b)", re.IGNORECASE)


def split_fix(message: str) -> tuple[str, str]:
    """A one-line error cut into (what is wrong, the fix it names): the fix is what follows the
    first ``; ``, ``: `` or ``. `` outside parentheses (a quoted underlying error) before a word
    a fix starts with (:data:`FIX_WORDS`: ``pass``, ``re-run``, ``save`` ...). ('message', '')
    when it names none. Used by ``audit inspect`` and by the tests that every refusal names a fix."""
    for m in _FIX.finditer(message):
        before = message[:m.start()]
        if before.count("(") <= before.count(")"):
            return before.strip(), message[m.end():].strip()
    return message.strip(), ""

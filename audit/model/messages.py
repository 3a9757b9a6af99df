"""One-line error messages for model loading: the informative line of an exception."""
from __future__ import annotations

from ..errors import first_line

#: characters of an underlying error quoted in a model-loading message
LIMIT = 200

_TORCHSCRIPT_TRACE = "The following operation failed"


def error_line(e: BaseException) -> str:
    """:func:`audit.errors.first_line` of ``e`` (``LIMIT`` characters), except for a TorchScript
    interpreter error, whose first line is a generic header and whose cause is its last line."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and lines[0].strip().startswith(_TORCHSCRIPT_TRACE):
        return first_line(lines[-1].strip(), LIMIT)
    return first_line(e, LIMIT)

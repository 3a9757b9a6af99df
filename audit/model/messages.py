"""One-line error messages for model loading: the informative line of an exception."""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import ModelLoadError, first_line

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


def require(module: str, extra: str, needed_by: str = "this model", also: str | None = None) -> Any:
    """``module`` imported, or a :class:`ModelLoadError` naming the extra that installs it:
    ``<needed_by> needs the <module> package: pip install 'model-audit[<extra>]' (<also>)``,
    ``also`` defaulting to ``or pip install <module>``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(f"{needed_by} needs the {module} package: pip install 'model-audit[{extra}]' "
                             f"({also or f'or pip install {module}'})") from None

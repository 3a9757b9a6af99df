"""Progress on stderr: tqdm bars on a terminal, a few plain lines in a log.

On a terminal every bar is a tqdm bar. When stderr is not a terminal (a CI log, a file),
escape codes would become hundreds of lines, so only the *outer* progress of a check (its
work units, :meth:`Progress.units`) prints, as plain lines at the start, at every quarter
and at the end; inner bars (:meth:`Progress.bar`) are silent. ``enabled=False``
(``--quiet``, the API default) prints nothing.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

__all__ = ["Progress", "PlainLines"]


class _Silent:
    """A disabled bar with tqdm's interface."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else [])

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, *a: Any, **k: Any) -> None:
        pass

    def set_description(self, *a: Any, **k: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class PlainLines(_Silent):
    """Counts like a bar; prints ``audit: <desc>: k/N <unit> (t s)`` at 0, each quarter and N."""

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO, iterable: Iterable | None = None) -> None:
        super().__init__(iterable)
        self.total, self.desc, self.unit, self.stream = int(total or 0), desc, unit, stream
        self.n, self.t0, self.quarter = 0, time.perf_counter(), 0  # quarter printed last (0: the start)
        if self.total > 0:
            self._line()

    def _line(self) -> None:
        print(f"audit: {self.desc}: {self.n}/{self.total} {_plural(self.unit, self.total)} "
              f"({time.perf_counter() - self.t0:.1f} s)", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        q = min(4, (4 * self.n) // max(self.total, 1))  # 4: done
        if q > self.quarter:
            self.quarter = q
            self._line()

    def __iter__(self):
        for v in super().__iter__():
            yield v
            self.update(1)


def _plural(word: str, n: int) -> str:
    if n == 1:
        return word
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


class Progress:
    """The progress reporter of one run (``ctx.progress``)."""

    def __init__(self, enabled: bool = False, stream: TextIO | None = None) -> None:
        self.enabled = bool(enabled)
        self.stream = stream if stream is not None else sys.stderr

    @property
    def terminal(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def bar(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
        """An inner bar: tqdm on a terminal, silent otherwise."""
        if not (self.enabled and self.terminal):
            return _Silent(iterable)
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self.stream)

    def units(self, total: int, desc: str, unit: str = "unit"):
        """The outer bar of a check's work units: tqdm on a terminal, a few plain lines otherwise."""
        if not self.enabled:
            return _Silent()
        if self.terminal:
            return self.bar(total=total, desc=desc, unit=unit)
        return PlainLines(total, desc, unit, self.stream)

"""Progress: plain lines (a few per check) when stderr is not a terminal, bars on one."""
import io

from audit.progress import PlainLines, Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_few_plain_lines_per_check_and_no_escape_codes():
    s = io.StringIO()
    p = Progress(True, s)
    with p.units(200, "adversarial: units", "batch") as bar:
        for _ in range(200):
            bar.update(1)
    inner = p.bar(range(50), desc="pgd", unit="step")
    assert list(inner) == list(range(50))
    lines = s.getvalue().splitlines()
    assert 2 <= len(lines) <= 6, lines
    assert lines[0].startswith("audit: adversarial: units: 0/200 batches")
    assert lines[-1].startswith("audit: adversarial: units: 200/200 batches")
    assert "\x1b" not in s.getvalue() and "\r" not in s.getvalue()


def test_quiet_prints_nothing_and_a_terminal_gets_a_bar():
    s = io.StringIO()
    with Progress(False, s).units(10, "x", "unit") as bar:
        bar.update(10)
    assert s.getvalue() == ""
    t = _Tty()
    with Progress(True, t).units(3, "x", "unit") as bar:
        bar.update(3)
    assert not isinstance(bar, PlainLines) and "0/3 [" in t.getvalue()  # tqdm's bar (cleared when done)


def test_a_single_unit_prints_a_start_and_an_end():
    s = io.StringIO()
    with Progress(True, s).units(1, "bias: units", "unit") as bar:
        bar.update(1)
    assert len(s.getvalue().splitlines()) == 2

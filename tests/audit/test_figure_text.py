"""Figure text is what users named things: never math text, never so long that a figure grows
to gigapixels. Names stay whole in the results."""
import struct

import pytest
import torch

from audit import AuditData, load_model, run_audit
from audit.imaging import FIGURE_LINE_CHARS, figure_png, image_grid, new_figure, short
from tests.fast_config import fast_config_dict

DOLLARS = ["C#$", "$5 bill", "$x$", "a $b$ c"]  # "$x$" alone, and any two names together, are math text to matplotlib


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def test_short_is_the_one_shortening_rule():
    assert short("dumbbell") == "dumbbell"
    assert short("x" * 41) == "x" * 39 + "\u2026" and len(short("x" * 10_000)) == 40
    assert short("a\nb  c") == "a b c"
    assert len(short("y" * 500, 100)) == 100


def test_dollar_signs_are_printed_literally():
    fig, ax = new_figure(3, 3)
    ax.plot([0, 1], [0, 1], label="$5 bill")
    ax.set_xticks([0, 1], ["C#$", "$x$"])
    ax.set_title("C#$ vs $5 bill")
    ax.text(0.5, 0.5, "$\\frac{a}{$")  # broken math: matplotlib raises ValueError when it parses it
    ax.legend()
    assert _png_size(figure_png(fig))[0] > 0
    grid = image_grid([torch.rand(3, 8, 8)] * 2, ["true C#$\npred $5 bill", "$\\undefined$"], title="$$")
    assert _png_size(grid)[0] > 0


def test_a_long_line_is_cut_in_any_figure():
    fig, ax = new_figure(3, 3)
    ax.set_title("t" * 5000)
    w, h = _png_size(figure_png(fig))
    assert w < 2000 and h < 2000, (w, h)
    assert FIGURE_LINE_CHARS <= 120


def test_a_10k_character_class_name_keeps_the_confusion_matrix_small():
    from audit.clean import _confusion_png

    names = ["n" * 10_000, "short", "$5 bill" * 2000]
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w, h = _png_size(_confusion_png(y, torch.tensor([0, 1, 1, 2, 1, 2]), names))
    assert w < 4000 and h < 4000, (w, h)


@pytest.mark.parametrize("checks", [["clean", "attribution"], ["class_viz"]])
def test_a_tiny_audit_with_dollar_class_names(model_files, pattern_data, checks):
    x, y = pattern_data
    model = load_model(model_files / "dyn.pt2", device="cpu", class_names=DOLLARS)
    data = AuditData(x, y, list(DOLLARS), [str(i) for i in range(len(y))])
    cfg = fast_config_dict()
    cfg["audit"].update(checks=checks, samples=8)
    res = run_audit(model, data, cfg)
    for c in res.checks:
        assert c.error is None, c.error
        assert all(a.data for a in c.artifacts)
    assert '"$5 bill"' in res.to_json()  # names stay whole in the results


def test_every_figure_prints_names_through_short():
    from probes.class_viz.figures import channel_caption, class_caption

    long = "L" * 10_000
    for cap in (class_caption(long, 0, 1, [[long, 0.9], [long, 0.1]]), channel_caption(long, 3, 0.5, long, 0.2)):
        assert max(len(ln) for ln in cap.splitlines()) < 2 * 40 + 20, cap[:200]


def test_log_axes_keep_readable_tick_labels():
    """Figure text is literal, so matplotlib's math-text tick labels of log and symlog axes
    ($\\mathdefault{10^{0}}$) are replaced by plain numbers rather than printed raw."""
    from audit.imaging import figure_png, new_figure

    for scale in ("log", "symlog"):
        fig, ax = new_figure()
        ax.plot([1, 10, 100], [1, 2, 3])
        ax.set_xscale(scale)
        assert figure_png(fig)[:4] == b"\x89PNG"
        fmt = ax.xaxis.get_major_formatter()
        labels = [fmt(v, i) for i, v in enumerate((1.0, 10.0, 100.0))]
        assert labels and not any("$" in s or "mathdefault" in s for s in labels), labels

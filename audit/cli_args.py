"""The ``audit`` command's arguments: :func:`build_parser` (one sub-parser per command; bad
arguments raise :class:`~audit.errors.UsageError`, exit 4, one line)."""
from __future__ import annotations

import argparse

from .errors import UsageError
from .preprocess import INTERPOLATIONS, MODES
from .version import __version__


def _number(text: str, kind: type, ok, want: str):
    """``text`` parsed as ``kind`` (int or float), checked by ``ok``; an argparse error saying
    what is wanted (argparse turns it into one line, exit 4) otherwise."""
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"{text!r} must be {want}")
    return v


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "at least 1")


def _tolerance(text: str) -> float:
    return _number(text, float, lambda v: v == v and abs(v) != float("inf") and v >= 0, "a finite number >= 0")


def _fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 < v <= 1, "a fraction in (0, 1], e.g. 0.875")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 by default; ours is 4, one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", help="architecture for a state_dict/safetensors file: a torchvision model name, gymnet, "
                   "or timm:NAME (any timm model)")
    g.add_argument("--num-classes", type=_positive_int, help="number of classes (for a state_dict)")
    g.add_argument("--weights", help="torchvision weights name (e.g. ResNet50_Weights.IMAGENET1K_V2): class names, "
                   "mean/std and input size from its metadata; weights from the local torch hub cache when no file is given")
    g.add_argument("--input-size", help="CxHxW, e.g. 3x224x224")
    g.add_argument("--mean", help="per-channel mean the model was trained with, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", help="per-channel std, e.g. 0.229,0.224,0.225")
    g.add_argument("--labels", help="class names file, one name a line in output order")
    g.add_argument("--trust", action="store_true",
                   help="allow a pickled model whose loading runs code from the file (only for files you trust)")
    g.add_argument("--device", default=None, help="auto (default: the GPU when there is one), cpu, cuda, cuda:N")


def _data_args(p: argparse.ArgumentParser, *, battery: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", help="ImageFolder directory (one subfolder per class), a .pt/.npz with x and y, a folder "
                   "of images with --data-labels, a .csv of paths and labels, or a Hugging Face dataset (a "
                   "save_to_disk folder, .parquet)")
    g.add_argument("--data-labels", metavar="FILE", help="labels of the images in --data DIR: a CSV (filename,label) "
                   "or `path label` lines (ImageNet val style); labels are class indices or class names")
    g.add_argument("--resize", action="store_true", help="resize images to the model's input size (how: the model's "
                   "own preprocessing when it declares one, else stretched; the options below override)")
    g.add_argument("--resize-mode", choices=MODES, help="stretch to the input size, or resize "
                   "the shorter side to size/crop-pct and center-crop (default: the model's, else stretch)")
    g.add_argument("--crop-pct", type=_fraction, help="shorter-crop: the crop's share of the resized side, "
                   "e.g. 0.875 (224 of 256; default: the model's, else 0.875)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS,
                   help="resize interpolation (default: the model's, else bilinear)")
    g.add_argument("--convert-channels", action="store_true", help="convert images to the model's channel count")
    g.add_argument("--class-order", choices=("auto", "sorted", "numeric"), default="auto", help="class folders named "
                   "by number: sorted as strings (ImageFolder), the number itself, or auto (what the model predicts)")
    if not battery:
        return
    g.add_argument("--samples", type=_positive_int, help="use a seeded, class-stratified subset of N samples")
    g.add_argument("--concepts", help="concept folders for the bias check: one folder of example images per concept, "
                   "random* folders as counter-examples (same as [checks.bias] concepts)")


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("battery")
    g.add_argument("--config", help="audit.toml: [audit], [checks.NAME] options and [gates]")
    g.add_argument("--checks", help="comma-separated checks to run (default: all; `audit list` shows them)")
    g.add_argument("--seed", type=int, help="seed for every random choice (default 0)")
    g.add_argument("--batch-size", type=_positive_int,
                   help="inference batch size, also the size of the work units split over processes (default 128)")
    g.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")
    _fast_args(g)
    g.add_argument("--budget", choices=("fast", "standard", "thorough"),
                   help="adversarial attack budget (default: the config's, else standard = AutoAttack-grade; fast for CI on CPU)")
    g.add_argument("--fail-on", choices=("none", "warn", "fail"),
                   help="also fail the run (exit 1) on findings of this severity or worse")
    g.add_argument("--out", default="audit-out", help="output folder (default audit-out/)")
    g.add_argument("--resume", action="store_true",
                   help="reuse the checks an interrupted run already finished in --out (same model, data, seed, options)")
    g.add_argument("--baseline", help="a previous results.json: report per-metric deltas, exit 1 on a regression")
    g.add_argument("--tolerance", type=_tolerance, default=0.01,
                   help="how much worse than the baseline a metric may get before it is a regression (default 0.01)")


def _compile_flag(text: str):
    from .fastpath import parse_compile

    try:
        return parse_compile(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not true, false or auto") from None


def _fast_args(g) -> None:
    """--precision and --compile: the gradient loops' fast path ([audit] precision, compile)."""
    g.add_argument("--precision", choices=("fp32", "bf16"),
                   help="gradient loops in bf16 autocast (every candidate confirmed in fp32) or fp32 (default: the "
                        "config's, else fp32; docs/performance.md)")
    g.add_argument("--compile", nargs="?", const=True, type=_compile_flag, metavar="{true,false,auto}",
                   help="torch.compile the gradient loops' network (bare --compile: true; auto: on CUDA only; "
                        "default: the config's, else false)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="audit", description="Robustness and interpretability audit for PyTorch image classifiers.")
    parser.add_argument("--version", action="version", version=f"audit {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    run = sub.add_parser("run", help="audit a model file on a data set")
    run.add_argument("model", nargs="?", help="model file (TorchScript, .pt2, state_dict, .safetensors, ONNX, pickle "
                     "with --trust) or a timm / transformers model folder")
    _model_args(run)
    _data_args(run)
    _run_args(run)
    _common(run)

    ins = sub.add_parser("inspect", help="what the tool detects about a model (and its data), and from where; "
                         "exit 4 when a problem refuses it")
    ins.add_argument("model", nargs="?", help="model file (as for audit run)")
    _model_args(ins)
    _data_args(ins, battery=False)
    ins.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    _common(ins)

    demo = sub.add_parser("demo", help="run the whole battery on the bundled gym demo model (the dumbbell with an arm)")
    demo.add_argument("--out", default="audit-out", help="output folder (default audit-out/)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--samples-per-class", type=_positive_int, default=16, help="demo images per class (default 16)")
    demo.add_argument("--checks", help="comma-separated checks to run (default: all)")
    demo.add_argument("--device", default=None)
    demo.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")
    demo.add_argument("--batch-size", type=_positive_int,
                      help="inference batch size, also the size of the work units split over processes (default 128)")
    demo.add_argument("--resume", action="store_true", help="reuse the checks an interrupted demo already finished")
    _fast_args(demo)
    demo.add_argument("--budget", choices=("fast", "standard", "thorough"), default="fast",
                      help="adversarial attack budget (default fast: the demo in about a minute on CPU)")
    _common(demo)

    rep = sub.add_parser("report", help="re-render the report files from a saved results.json")
    rep.add_argument("results", help="results.json (or the folder holding it)")
    rep.add_argument("--out", help="output folder (default: the results' folder)")
    _common(rep)

    dif = sub.add_parser("diff", help="what got worse between two results.json (exit 1 on a regression)")
    dif.add_argument("base", help="baseline results.json (or its folder)")
    dif.add_argument("new", help="new results.json (or its folder)")
    dif.add_argument("--tolerance", type=_tolerance, default=0.01, help="allowed worsening per metric (default 0.01)")
    dif.add_argument("--all", action="store_true", help="show unchanged metrics too")
    _common(dif)

    ini = sub.add_parser("init", help="write a commented audit.toml to start from")
    ini.add_argument("path", nargs="?", default="audit.toml")
    ini.add_argument("--force", action="store_true", help="overwrite an existing file")
    _common(ini)

    lst = sub.add_parser("list", help="list the registered checks (and, with --archs, known architectures)")
    lst.add_argument("--archs", action="store_true", help="also list the architecture names --arch accepts")
    _common(lst)
    return parser

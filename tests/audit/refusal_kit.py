"""The kit of the refusal tests (``test_refusals_*.py``): a registry of cases, the check each
case goes through, and the inputs they build (tiny traced models, image folders, tensor files).

A case ``fn(d, mp) -> (bad, fixed)`` builds its inputs under ``d`` (``mp``: pytest's
monkeypatch); ``bad()`` must raise a one-line :class:`UsageError` (exit code 4) matching the
case's pattern, whose fix (:func:`audit.errors.split_fix`) names the case's fix; ``fixed()``
applies that fix and must succeed."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from audit.errors import ExitCode, UsageError, split_fix
from audit.model import load_model
from tests.tinymodels import IntensityNet, TinyNet, intensity_image


def registry():
    """A fresh case table and its decorator ``refusal(match, fix)``."""
    cases: dict = {}

    def refusal(match: str, fix: str):
        def deco(fn):
            cases[fn.__name__] = (fn, match, fix)
            return fn
        return deco

    return cases, refusal


def check_refusal(case, d: Path, mp) -> None:
    """Run one case: the refusal, its line, its fix named, then the fix applied."""
    fn, match, fix = case
    bad, fixed = fn(d, mp)
    with pytest.raises(UsageError) as e:
        bad()
    msg = str(e.value)
    assert e.value.exit_code == ExitCode.USAGE_ERROR
    assert "\n" not in msg and re.search(match, msg), msg
    what, named = split_fix(msg)
    assert what and fix in named, f"fix {named!r} of {msg!r}"
    fixed()  # raises if the fix does not work


def trace(net: nn.Module, path: Path, shape=(3, 16, 16), n: int = 2) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net.eval(), torch.rand(n, *shape)), str(path))
    return path


def tiny(d: Path) -> Path:
    torch.manual_seed(0)
    return trace(TinyNet(), d / "tiny.pt")


def intensity(d: Path, classes: int = 12, channels: int = 3) -> Path:
    return trace(IntensityNet(classes, channels), d / f"intensity{classes}.pt", (channels, 8, 8))


def folder(root: Path, mapping: dict, classes: int = 12, *, mode: str = "RGB", size: int = 8) -> Path:
    for name, idx in mapping.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        im = intensity_image(idx, classes, mode)
        (im.resize((size, size)) if size != 8 else im).save(root / name / "0.png")
    return root


def tensors(path: Path, **arrays) -> Path:
    torch.save(arrays, path)
    return path


def xy(n: int = 4, shape=(3, 8, 8)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 4


def load(path, **kw):
    kw.setdefault("device", "cpu")
    return load_model(path, **kw)


class MLP(nn.Module):
    """Takes 3x16x16 only (a Linear on the flattened image)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(768, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))

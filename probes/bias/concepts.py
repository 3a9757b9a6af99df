"""The concept sets of the ``bias`` check: a folder with one folder of example images per
concept; folders named ``random*`` are the random counter-examples (pooled)."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_concepts", "random_from_data"]


def load_concepts(path: str, input_shape) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(concepts, random sets)``: name -> images (N, C, H, W) float32 in [0, 1], resized to
    the model's ``input_shape`` (C, H, W), from a folder of concept folders (empty folders are
    left out). ValueError when ``path`` is not a directory."""
    from audit.data import load_data

    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"[checks.bias] concepts = {path!r} is not a directory of concept folders")
    d = load_data(p, input_shape=input_shape, resize=True, convert_channels=True)
    concepts, randoms = {}, {}
    for i, name in enumerate(d.class_names):
        x = d.x[d.y == i]
        if len(x) == 0:
            continue
        (randoms if name.lower().startswith("random") else concepts)[name] = x
    return concepts, randoms


def random_from_data(x: torch.Tensor, n: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], str]:
    """Without ``random*`` folders: ``n`` images of the data ``x`` drawn at random as the one
    random set ``random_data``, and a note saying so."""
    perm = torch.randperm(len(x), generator=generator)[:n]
    return {"random_data": x[perm]}, f"random counter-examples: {len(perm)} images drawn from the data"

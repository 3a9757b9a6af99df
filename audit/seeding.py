"""Seed derivation: the one place a named part of a run gets its own seed.

Every random choice of an audit derives from the run's seed (``--seed``) through
:func:`derive_seed`, so the same seed gives the same numbers, and a part's seed does not
depend on which other parts run, nor on how many processes run them.
"""
from __future__ import annotations

import zlib

__all__ = ["derive_seed", "generator"]


def derive_seed(seed: int, name: str, modulus: int = 2**31 - 1) -> int:
    """A seed for the part ``name`` (a check, ``"check/tag:k"`` a work unit, ...) of a run
    seeded with ``seed``: stable across runs, processes and platforms (CRC-32 of the name)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % modulus


def generator(seed: int, name: str, device: str = "cpu", modulus: int = 2**31 - 1):
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed`."""
    import torch

    return torch.Generator(device=device).manual_seed(derive_seed(seed, name, modulus))

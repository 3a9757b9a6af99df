"""Per-check checkpoints, so an interrupted or killed audit resumes where it stopped
(AutoAttack-style): ``audit run ... --resume`` reuses every check that finished before.

After each check finishes, the runner writes into ``OUT/.audit-checkpoint/``:

* ``<check>.json``: the check's result (as in results.json) and a fingerprint;
* ``<check>.published.pt``: what the check published for later checks (tensors, lists,
  numbers; read back with ``weights_only=True``);
* its image artifacts, as the files under ``OUT/artifacts/<check>/`` they will be anyway.

Shardable checks also checkpoint each finished *work unit* (:mod:`audit.distributed`) as
``<check>/<tag>-<index>.pt``, so a crash in the middle of a long check loses only the units that
were running; they are dropped once the whole check is checkpointed.

A checkpoint is reused only when its fingerprint matches: the model file's SHA-256, the
evaluated sample ids and labels, the seed, the check's options, the batch size and the tool
version.
Anything else (another model, another subset, changed options) runs the check again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from .artifacts import write_artifacts
from .records import decode, encode
from .results import CheckResult

DIRNAME = ".audit-checkpoint"


def fingerprint(*, model_info: dict, data, seed: int, check: str, options: Any, version: str,
                batch_size: int = 0) -> str:
    """What a check's result depends on: model file, samples, seed, options, tool version and
    the batch size (it cuts the work units, whose generators it thereby fixes)."""
    h = hashlib.sha256()
    h.update(json.dumps([model_info.get("sha256"), model_info.get("path") if not model_info.get("sha256") else None,
                         seed, check, version, batch_size], default=str).encode())
    h.update(repr(asdict(options) if is_dataclass(options) else options).encode())
    if data is not None:
        h.update("\n".join(data.ids).encode("utf-8", "surrogatepass"))  # an API id may hold a file name's bytes
        h.update(data.y.numpy().tobytes())
    return h.hexdigest()


class Checkpoints:
    """Reads and writes the checkpoints of one output folder."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.dir = self.out / DIRNAME

    def load(self, name: str, fp: str) -> tuple[CheckResult, dict[str, Any]] | None:
        """The saved result and publications of check ``name``, or None when absent or stale."""
        p = self.dir / f"{name}.json"
        if not p.is_file():
            return None
        try:
            saved = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if saved.get("fingerprint") != fp:
            return None
        res = CheckResult.from_dict(saved["result"])
        for a in res.artifacts:  # the bytes travel with the result again, as after a fresh run
            try:
                a.data = a.read(self.out)
            except (OSError, ValueError):  # unreadable, or a path leaving OUT (UnsafeArtifactPath): run it again
                return None
            if a.data is None:
                return None
        published: dict[str, Any] = {}
        pub = self.dir / f"{name}.published.pt"
        if pub.is_file():
            try:
                published = decode(torch.load(pub, map_location="cpu", weights_only=True))
            except Exception:  # noqa: BLE001 - a damaged checkpoint means: run the check again
                return None
        return res, published

    def save(self, res: CheckResult, fp: str, published: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if published:
            try:
                torch.save(encode(published), self.dir / f"{res.name}.published.pt")
            except Exception:  # noqa: BLE001 - not saveable: no checkpoint, the check simply reruns
                return
        write_artifacts(res.artifacts, self.out)
        tmp = self.dir / f"{res.name}.json.tmp"
        tmp.write_text(json.dumps({"fingerprint": fp, "result": res.to_dict()}, default=str), encoding="utf-8")
        tmp.replace(self.dir / f"{res.name}.json")  # atomic: a kill never leaves half a checkpoint

    # ------------------------------------------------------------------ work units
    def _unit(self, check: str, key: str) -> Path:
        return self.dir / check / (re.sub(r"[^A-Za-z0-9_.-]", "-", key) + ".pt")

    def load_unit(self, check: str, key: str, fp: str) -> Any:
        """The record of unit ``key`` (``tag:index``) saved by an earlier run with the same
        fingerprint, or None (absent, stale or damaged: the unit is simply recomputed)."""
        p = self._unit(check, key)
        if not p.is_file():
            return None
        try:
            saved = torch.load(p, map_location="cpu", weights_only=True)
            if not (isinstance(saved, dict) and saved.get("fingerprint") == fp and saved.get("key") == key):
                return None
            return decode(saved.get("records"))
        except Exception:  # noqa: BLE001 - a damaged unit is simply recomputed
            return None

    def save_unit(self, check: str, key: str, fp: str, records: Any) -> None:
        p = self._unit(check, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
        try:
            torch.save({"fingerprint": fp, "key": key, "records": encode(records)}, tmp)
        except Exception:  # noqa: BLE001 - not saveable: the unit would simply rerun
            tmp.unlink(missing_ok=True)
            return
        tmp.replace(p)

    def drop_units(self, check: str) -> None:
        shutil.rmtree(self.dir / check, ignore_errors=True)

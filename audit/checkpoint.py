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

A checkpoint is reused only when its fingerprint matches everything that changes a number
(:func:`content_key` and :func:`fingerprint`): the model's content (its file's SHA-256, or its
weights when it was built in memory), its spec as loaded (input shape, class names, mean/std,
bounds, output kind, adaptations), every evaluated sample's pixels as loaded (so images changed
in place or another ``--resize``/``--mean``/``--std`` count), ids and labels, the data's load
notes, the seed, the check's options, the batch size and the tool version. Anything else runs
the check again.

Checkpoints are validated on read: a file of the wrong shape (not a JSON object with a
fingerprint, a result and its content hash), one whose content hash does not match (edited
or damaged), or whose result does not parse is discarded and the check recomputed; never
fatal. A checkpoint folder that cannot be written (a file in its place, no permission, disk
full) turns checkpointing off for the run with one warning; the audit itself goes on.
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


def _tensor_bytes(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(repr((str(t.dtype), tuple(t.shape))).encode())
    h.update(t.view(-1).view(torch.uint8).numpy() if t.numel() else b"")


def content_key(model, data) -> str:
    """A hash (hex) of what every check's numbers depend on in the model and the data: the
    model file's SHA-256 (or, for a model built in memory, its ``state_dict`` tensors), the
    model's description as loaded (spec, output kind, adaptations: ``model.describe()``
    without its path), and the data's pixels as loaded (N, C, H, W) (for a set decoded on demand,
    each file's path, size and modification time), ids, labels and load notes.
    BLAKE2b over the bytes (about 1 GB/s on a CPU core); computed once per run."""
    h = hashlib.blake2b(digest_size=32)
    info = {k: v for k, v in model.describe().items() if k not in ("path", "load_seconds")}
    h.update(json.dumps(info, sort_keys=True, default=str).encode())
    if not model.info.get("sha256"):
        for name, t in sorted(model.net.state_dict().items()):
            h.update(name.encode())
            if isinstance(t, torch.Tensor):
                _tensor_bytes(h, t)
    if data is not None:
        if data.lazy:  # a set decoded on demand: each file's path, size and modification time
            data.x.hash_into(h)
        else:
            _tensor_bytes(h, data.x)
        _tensor_bytes(h, data.y)
        h.update("\n".join(data.ids).encode("utf-8", "surrogatepass"))
        h.update(json.dumps(data.describe(), sort_keys=True, default=str).encode())
    return h.hexdigest()


def fingerprint(*, content: str, seed: int, check: str, options: Any, version: str, batch_size: int = 0,
                precision: str = "fp32") -> str:
    """What a check's result depends on: the model and data (``content``, :func:`content_key`),
    the seed, the check's options, the tool version, the batch size (it cuts the work units,
    whose generators it thereby fixes) and the gradient loops' precision (``[audit] precision``)."""
    h = hashlib.sha256()
    h.update(json.dumps([content, seed, check, version, batch_size] + ([precision] if precision != "fp32" else []),
                        default=str).encode())
    h.update(repr(asdict(options) if is_dataclass(options) else options).encode())
    return h.hexdigest()


def _digest(result: Any) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode()).hexdigest()


class Checkpoints:
    """Reads and writes the checkpoints of one output folder."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.dir = self.out / DIRNAME

    def load(self, name: str, fp: str) -> tuple[CheckResult, dict[str, Any]] | None:
        """The saved result and publications of check ``name``, or None when absent, stale, of
        the wrong shape, edited (content hash) or damaged: the check then simply runs again."""
        p = self.dir / f"{name}.json"
        try:
            if not p.is_file():
                return None
            saved = json.loads(p.read_text(encoding="utf-8"))
            if not (isinstance(saved, dict) and saved.get("fingerprint") == fp and isinstance(saved.get("result"), dict)
                    and saved.get("sha256") == _digest(saved["result"])):
                return None
            res = CheckResult.from_dict(saved["result"])
            if res.name != name:
                return None
            for a in res.artifacts:  # the bytes travel with the result again, as after a fresh run
                a.data = a.read(self.out)
                if a.data is None:
                    return None
            published: dict[str, Any] = {}
            pub = self.dir / f"{name}.published.pt"
            if pub.is_file():
                published = decode(torch.load(pub, map_location="cpu", weights_only=True))
                if not isinstance(published, dict):
                    return None
            return res, published
        except Exception:  # noqa: BLE001 - a damaged or foreign checkpoint means: run the check again
            return None

    def save(self, res: CheckResult, fp: str, published: dict[str, Any]) -> bool:
        """Checkpoint ``res``; False (nothing half-written left) when the folder cannot be
        written (OSError: a file in its place, permissions, disk full) or the publications
        cannot be saved."""
        tmp = self.dir / f"{res.name}.json.{os.getpid()}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if published:
                torch.save(encode(published), self.dir / f"{res.name}.published.pt")
            write_artifacts(res.artifacts, self.out)
            result = res.to_dict()
            tmp.write_text(json.dumps({"fingerprint": fp, "sha256": _digest(json.loads(json.dumps(result, default=str))),
                                       "result": result}, default=str), encoding="utf-8")
            tmp.replace(self.dir / f"{res.name}.json")  # atomic: a kill never leaves half a checkpoint
            return True
        except Exception:  # noqa: BLE001 - not saveable: no checkpoint, the check simply reruns
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return False

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
        tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"fingerprint": fp, "key": key, "records": encode(records)}, tmp)
            tmp.replace(p)
        except Exception:  # noqa: BLE001 - not saveable (no room, no permission): the unit would simply rerun
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass

    def drop_units(self, check: str) -> None:
        shutil.rmtree(self.dir / check, ignore_errors=True)

"""Loading a trained model safely, and the :class:`AuditModel` every check works on.

``load_model(path)`` detects the file's format from its content (never the extension):

* TorchScript archives (``torch.jit.save``),
* ``torch.export`` archives (``.pt2``),
* ``.safetensors`` files and ``torch.save``'d state_dicts (with ``arch``),
* whole pickled ``nn.Module`` objects, **only** with ``trust=True``.

A plain ``torch.save`` file is always opened with ``weights_only=True`` first, so a pickle
whose unpickling would import or run code is refused before any of it runs.

The returned :class:`AuditModel` takes images in [0, 1] (the ``bounds``), folds the
model's normalization into its forward, and always returns ``(N, num_classes)`` logits.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from .errors import ModelLoadError, UsageError

FORMATS = ("torchscript", "export", "state_dict", "safetensors", "pickle", "torchvision")
SIDECAR_KEYS = {"arch", "num_classes", "input_size", "mean", "std", "class_names", "weights",
                "description", "training"}


@dataclass
class ModelSpec:
    """What the model expects and returns. ``sources`` says where each field came from
    (``flag``, ``sidecar``, ``weights``, ``export``, ``output``, ``data``)."""

    input_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    sources: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: Any, source: str) -> None:
        """Set a field unless a higher-priority source already set it."""
        if value is None or getattr(self, name) is not None:
            return
        setattr(self, name, value)
        self.sources[name] = source

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d


# ----------------------------------------------------------------------------- parsing helpers
def parse_input_size(text: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """``"3x224x224"`` (or ``224`` / ``"224x224"``, which mean 3 channels) -> (C, H, W)."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        parts = [int(v) for v in text]
    else:
        try:
            parts = [int(v) for v in re.split(r"[x,× ]+", str(text).strip().lower()) if v]
        except ValueError:
            raise UsageError(f"--input-size {text!r} is not CxHxW, e.g. 3x224x224") from None
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    elif len(parts) == 2:
        parts = [3, *parts]
    if len(parts) != 3 or min(parts) < 1 or parts[0] not in (1, 3, 4):
        raise UsageError(f"--input-size {text!r} is not CxHxW with C in 1, 3, 4, e.g. 3x224x224")
    return tuple(parts)  # type: ignore[return-value]


def parse_floats(text: str | Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in (re.split(r"[, ]+", text.strip()) if isinstance(text, str) else text) if v != ""]
    except ValueError:
        raise UsageError(f"{what} {text!r} must be comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise UsageError(f"{what} {text!r} must be finite numbers")
    return tuple(vals)


def read_labels(path: str | os.PathLike) -> list[str]:
    """One class name a line; blank lines are ignored."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"labels file {p} does not exist")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise UsageError(f"labels file {p} is empty; it needs one class name a line")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"labels file {p} names class {dup!r} twice")
    return names


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None) picks the first GPU when there is one, else the CPU. In a process
    launched by torchrun, ``auto`` and ``cuda`` mean this process's own GPU (``LOCAL_RANK``)."""
    from .distributed import launched

    if device is None or str(device) in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if str(device) == "cuda":
                raise UsageError("--device cuda asked for a GPU, but torch sees none; use --device cpu or auto")
            return torch.device("cpu")
        if launched():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count())
        return torch.device("cuda")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and dev.index is not None and launched():
        raise UsageError(f"--device {device}: under torchrun each process takes its own GPU (LOCAL_RANK); pass "
                         "--device cuda or auto (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for a GPU, but torch sees none; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device!r} is not auto, cpu or cuda[:N]")
    return dev


# ----------------------------------------------------------------------------- format detection
def detect_format(path: Path) -> str:
    """One of ``torchscript``, ``export``, ``torch_save`` (a pickle, maybe a state_dict),
    ``safetensors``; raises ModelLoadError for anything else."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ModelLoadError(f"{path} looks like a PyTorch archive but is truncated or corrupt ({e}); "
                                 "re-copy or re-save the model") from None
        if bad is not None:
            raise ModelLoadError(f"{path} is corrupt: member {bad} fails its checksum; re-copy or re-save the model")
        rel = [n.split("/", 1)[1] if "/" in n else n for n in names]
        if "archive_format" in rel or any(r.startswith("models/") and r.endswith(".json") for r in rel):
            return "export"
        if any(r.startswith("code/") for r in rel) or "constants.pkl" in rel:
            return "torchscript"
        if "data.pkl" in rel:
            return "torch_save"
        raise ModelLoadError(f"{path} is a zip file but not a PyTorch model (no data.pkl, code/ or export archive)")
    if size >= 8:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= 100_000_000 and head[8:9] == b"{":
            if 8 + n > size:
                raise ModelLoadError(f"{path} is a truncated safetensors file (header says {n} bytes, file has {size - 8})")
            return "safetensors"
    if head[:1] == b"\x80" and size > 2:  # a legacy (non-zip) pickle, torch.save(_use_new_zipfile_serialization=False)
        return "torch_save"
    if size == 0:
        raise ModelLoadError(f"{path} is empty, not a model file")
    raise ModelLoadError(f"{path} is not a model file this tool reads (TorchScript, torch.export .pt2, "
                         "state_dict .pt/.pth, .safetensors, or a pickled nn.Module with --trust)")


_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "module", "ema")


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """A plain mapping of tensors, possibly nested in a training checkpoint."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = dict(obj)
    elif isinstance(obj, dict):
        inner = next((obj[k] for k in _STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        return _as_state_dict(inner) if inner is not None else None
    else:
        return None
    for prefix in ("module.", "_orig_mod."):  # DataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _infer_num_classes(sd: dict[str, torch.Tensor]) -> int | None:
    last = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else None


def _load_pickle(path: Path, trust: bool) -> tuple[Any, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True), "state_dict"
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError ...
        msg = str(e)
        needs_code = "weights_only" in msg or "Unsupported global" in msg or "GLOBAL" in msg
        if not needs_code:
            raise ModelLoadError(f"{path} cannot be read as a PyTorch file ({_first_line(msg)}); "
                                 "it may be truncated or corrupt") from None
        m = re.search(r"GLOBAL ([\w\.]+)", msg)
        what = f" (it references {m.group(1)})" if m else ""
        if not trust:
            raise ModelLoadError(
                f"{path} is a pickle that needs Python code to load{what}; it was not run. If you trust "
                "its source, re-run with --trust; otherwise save it as TorchScript, torch.export or a state_dict") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise ModelLoadError(f"{path} is a pickled model whose code cannot be imported ({e}); put the module "
                             "that defines its class on PYTHONPATH") from None
    if isinstance(obj, nn.Module):
        return obj, "pickle"
    if isinstance(obj, dict):
        mod = next((v for v in obj.values() if isinstance(v, nn.Module)), None)
        if mod is not None:
            return mod, "pickle"
    return obj, "state_dict"


def _first_line(msg: str) -> str:
    """The informative line of an exception message (TorchScript puts it last)."""
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    if lines[0].startswith("The following operation failed") and len(lines) > 1:
        return lines[-1][:200]
    return lines[0][:200]


def _find_sidecar(path: Path | None) -> Path | None:
    if path is None:
        return None
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.is_file() and cand != path:
            return cand
    return None


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"model sidecar {path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UsageError(f"model sidecar {path} must hold a JSON object")
    unknown = sorted(set(d) - SIDECAR_KEYS)
    if unknown:
        raise UsageError(f"model sidecar {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(SIDECAR_KEYS))})")
    return d


def _torchvision_weights(name: str):
    import torchvision

    try:
        w = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise UsageError(f"--weights {name!r} is not a torchvision weights name, e.g. ResNet50_Weights.IMAGENET1K_V2") from None
    arch = next((m for m in torchvision.models.list_models(module=torchvision.models)
                 if torchvision.models.get_model_weights(m) is type(w)), None)
    return w, arch


def _cached_weights_file(w) -> Path:
    p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not p.is_file():
        raise ModelLoadError(f"weights {w} are not in the local torch hub cache ({p}); this tool does not "
                             "download: fetch them once with torchvision on a connected machine, or pass the model file")
    return p


# ----------------------------------------------------------------------------- the model wrapper
class AuditModel(nn.Module):
    """A classifier in pixel space: ``forward(x)`` with ``x`` in ``spec.bounds`` (N, C, H, W)
    returns (N, num_classes) float logits. Normalization is folded in; tuple/dict outputs and
    probability outputs are adapted (see ``adaptations``)."""

    def __init__(self, net: nn.Module, spec: ModelSpec, *, info: dict[str, Any] | None = None,
                 fixed_batch: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.info = dict(info or {})
        self.adaptations: list[str] = []
        self.fixed_batch = fixed_batch
        self.output_kind = "logits"  # or "probabilities", "log_probabilities"
        self._out_key: Any = None
        self.ready = False
        self._set_norm()

    # normalization buffers follow .to(device)
    def _set_norm(self) -> None:
        c = self.spec.input_shape[0] if self.spec.input_shape else None
        mean, std = self.spec.mean, self.spec.std
        for name, val, default in (("mean", mean, 0.0), ("std", std, 1.0)):
            if val is not None and c is not None and len(val) not in (1, c):
                raise UsageError(f"--{name} has {len(val)} values but the model takes {c} channels")
            t = torch.tensor(val if val is not None else [default], dtype=torch.float32).view(1, -1, 1, 1)
            if name in self._buffers:
                self._buffers[name] = t.to(self._buffers[name].device)
            else:
                self.register_buffer(name, t, persistent=False)
        if std is not None and any(s <= 0 for s in std):
            raise UsageError("--std values must be positive")

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def num_classes(self) -> int:
        assert self.spec.num_classes is not None
        return self.spec.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names or [str(i) for i in range(self.num_classes)]

    def _raw(self, x: torch.Tensor) -> Any:
        z = (x - self.mean) / self.std
        if self.fixed_batch is None or z.shape[0] == self.fixed_batch:
            return self.net(z)
        outs, b = [], self.fixed_batch
        for i in range(0, z.shape[0], b):
            chunk = z[i:i + b]
            n = chunk.shape[0]
            if n < b:  # an export traced at a fixed batch size: pad with copies
                chunk = torch.cat([chunk, chunk[-1:].expand(b - n, *chunk.shape[1:])])
            outs.append(self._to_tensor(self.net(chunk))[:n])
        return torch.cat(outs)

    def _to_tensor(self, out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            self._note("output is a tuple; its first element is taken as the logits")
            return out[0]
        if isinstance(out, dict):
            for k in ("logits", "out", "output", "scores"):
                if isinstance(out.get(k), torch.Tensor):
                    self._note(f"output is a dict; its {k!r} entry is taken as the logits")
                    return out[k]
            tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
            if len(tensors) == 1:
                self._note("output is a dict with one tensor; it is taken as the logits")
                return tensors[0]
        logits = getattr(out, "logits", None)
        if isinstance(logits, torch.Tensor):
            self._note("output object has .logits; it is taken as the logits")
            return logits
        raise UsageError(f"the model returns {type(out).__name__}, not a logits tensor, tuple, or dict with 'logits'")

    def _note(self, text: str) -> None:
        if text not in self.adaptations:
            self.adaptations.append(text)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._to_tensor(self._raw(x))
        if out.ndim != 2:
            out = out.reshape(out.shape[0], -1)
        out = out.float()
        if self.output_kind == "probabilities":
            out = torch.log(out.clamp_min(1e-12))
        return out

    @torch.no_grad()
    def logits(self, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Batched inference on a CPU tensor in [0, 1]; returns CPU logits."""
        outs = [self(x[i:i + batch_size].to(self.device)).cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)

    # ------------------------------------------------------------------ finalization
    def finalize(self, input_shape: tuple[int, int, int] | None = None, source: str = "data",
                 class_names: list[str] | None = None) -> "AuditModel":
        """Fix the input shape (if still unknown) and probe one forward pass: output width,
        probability outputs, NaN. Called by ``load_model`` when the shape is known, else by
        the runner once the data is loaded."""
        if input_shape is not None:
            self.spec.set("input_shape", tuple(input_shape), source)
        if self.spec.input_shape is None:
            raise UsageError("the model's input size is unknown: pass --input-size CxHxW or give data to infer it from")
        self._set_norm()
        g = torch.Generator().manual_seed(1234)
        x = torch.rand(4, *self.spec.input_shape, generator=g).to(self.device)
        try:
            with torch.no_grad():
                raw = self._to_tensor(self._raw(x))
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the user's model on a well-formed input
            raise UsageError(f"the model fails on an input of shape {list(x.shape)}: {_first_line(str(e))}; "
                             "check --input-size / the data's size") from None
        if raw.ndim != 2:
            raw = raw.reshape(raw.shape[0], -1)
        raw = raw.float()
        if not torch.isfinite(raw).all():
            raise UsageError("the model outputs NaN or infinite values on random inputs in [0, 1]; "
                             "check its weights and the --mean/--std normalization")
        width = raw.shape[1]
        if self.spec.class_names is not None and len(self.spec.class_names) != width:
            src = self.spec.sources.get("class_names", "labels")
            raise UsageError(f"{len(self.spec.class_names)} class names ({src}) for a model with {width} outputs; "
                             "give one name per class with --labels FILE")
        if self.spec.num_classes is not None and self.spec.num_classes != width:
            raise UsageError(f"the model outputs {width} scores but {self.spec.num_classes} classes were given "
                             f"({self.spec.sources.get('num_classes', 'flag')}); fix --num-classes/--labels")
        self.spec.set("num_classes", width, "output")
        if class_names is not None and self.spec.class_names is None and len(class_names) == width:
            self.spec.set("class_names", list(class_names), "data")
        sums = raw.sum(1)
        if width > 1 and (raw >= 0).all() and (raw <= 1).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            self.output_kind = "probabilities"
            self._note("outputs are probabilities (rows sum to 1); their log is used as logits")
        elif width > 1 and (raw <= 0).all() and torch.allclose(raw.logsumexp(1), torch.zeros_like(sums), atol=1e-3):
            self.output_kind = "log_probabilities"
            self._note("outputs are log-probabilities; used as logits (softmax is unchanged)")
        self.ready = True
        return self

    def describe(self) -> dict[str, Any]:
        """The ``model`` block of results.json."""
        return {**self.info, "num_classes": self.spec.num_classes,
                "input_shape": list(self.spec.input_shape) if self.spec.input_shape else None,
                "class_names": self.class_names if self.spec.num_classes else None,
                "mean": list(self.spec.mean) if self.spec.mean else None,
                "std": list(self.spec.std) if self.spec.std else None,
                "bounds": list(self.spec.bounds), "output_kind": self.output_kind,
                "adaptations": list(self.adaptations), "spec_sources": dict(self.spec.sources)}


# ----------------------------------------------------------------------------- load_model
def load_model(path: str | os.PathLike | None = None, *, arch: str | None = None, num_classes: int | None = None,
               weights: str | None = None, input_size: str | Sequence[int] | None = None,
               mean: str | Sequence[float] | None = None, std: str | Sequence[float] | None = None,
               labels: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
               trust: bool = False, device: str | torch.device | None = "auto",
               sidecar: str | os.PathLike | bool | None = True) -> AuditModel:
    """Load a trained classifier from ``path`` into an :class:`AuditModel`.

    Spec precedence: explicit options > JSON sidecar (``model.pt.json`` or ``model.json``)
    > torchvision weight metadata (``weights=``) > the export's input signature > what
    the data shows (filled in by the runner). Raises :class:`ModelLoadError` /
    :class:`UsageError` with one line that says what is wrong and what to do.
    """
    dev = resolve_device(device)
    spec = ModelSpec()
    p = Path(path) if path is not None else None
    if p is not None and not p.exists():
        raise ModelLoadError(f"model file {p} does not exist")
    if p is not None and p.is_dir():
        raise ModelLoadError(f"{p} is a folder; give the model file itself")

    # explicit options first
    spec.set("input_shape", parse_input_size(input_size), "flag")
    spec.set("mean", parse_floats(mean, "--mean"), "flag")
    spec.set("std", parse_floats(std, "--std"), "flag")
    if labels is not None:
        spec.set("class_names", read_labels(labels), "flag")
    spec.set("class_names", list(class_names) if class_names is not None else None, "flag")
    spec.set("num_classes", num_classes, "flag")

    side: dict[str, Any] = {}
    side_path = Path(sidecar) if isinstance(sidecar, (str, os.PathLike)) else (_find_sidecar(p) if sidecar else None)
    if side_path is not None:
        side = read_sidecar(side_path)
        spec.set("input_shape", parse_input_size(side.get("input_size")), "sidecar")
        spec.set("mean", parse_floats(side.get("mean"), "sidecar mean"), "sidecar")
        spec.set("std", parse_floats(side.get("std"), "sidecar std"), "sidecar")
        spec.set("class_names", side.get("class_names"), "sidecar")
        spec.set("num_classes", side.get("num_classes"), "sidecar")
        arch = arch or side.get("arch")
        weights = weights or side.get("weights")

    tv_weights = None
    if weights:
        tv_weights, w_arch = _torchvision_weights(weights)
        arch = arch or w_arch
        meta = tv_weights.meta
        tr = tv_weights.transforms()
        crop = getattr(tr, "crop_size", None)
        if crop:
            spec.set("input_shape", (3, int(crop[0]), int(crop[-1])), "weights")
        spec.set("mean", tuple(getattr(tr, "mean", ()) or ()) or None, "weights")
        spec.set("std", tuple(getattr(tr, "std", ()) or ()) or None, "weights")
        cats = meta.get("categories")
        if cats and (spec.num_classes is None or spec.num_classes == len(cats)):  # a fine-tuned head has its own
            spec.set("class_names", list(cats), "weights")
    if spec.num_classes is None and spec.class_names is not None:
        spec.set("num_classes", len(spec.class_names), spec.sources["class_names"])

    info: dict[str, Any] = {"path": str(p) if p else None, "sha256": sha256_file(p) if p else None}
    fixed_batch = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if p is None:
            if tv_weights is None:
                raise UsageError("give a model file, or --weights NAME to load torchvision weights from the local cache")
            fmt, obj = "torchvision", torch.load(_cached_weights_file(tv_weights), map_location="cpu", weights_only=True)
            info["path"] = str(weights)
        else:
            fmt = detect_format(p)
            obj = None
            if fmt == "torchscript":
                try:
                    net = torch.jit.load(str(p), map_location="cpu")
                except Exception as e:  # noqa: BLE001
                    raise ModelLoadError(f"{p} is a TorchScript archive that fails to load ({_first_line(str(e))})") from None
            elif fmt == "export":
                ep = _load_export(p, trust)
                net, fixed_batch, shape = _unpack_export(ep)
                spec.set("input_shape", shape, "export")
            elif fmt == "safetensors":
                from safetensors import SafetensorError
                from safetensors.torch import load_file

                try:
                    obj = load_file(str(p), device="cpu")
                except (SafetensorError, OSError, ValueError) as e:
                    raise ModelLoadError(f"{p} is a corrupt safetensors file ({_first_line(str(e))})") from None
            else:
                obj, fmt = _load_pickle(p, trust)
                if fmt == "pickle":
                    net = obj
        if obj is not None and fmt != "pickle":
            sd = _as_state_dict(obj)
            if sd is None:
                raise ModelLoadError(f"{p} holds a {type(obj).__name__}, neither a model nor a state_dict of tensors")
            net = _build_from_state_dict(sd, arch=arch, spec=spec, where=str(p or weights))
            info["arch"] = arch
    info["format"] = fmt
    info["trusted_pickle"] = fmt == "pickle"
    if weights:
        info["weights"] = str(weights)

    if isinstance(net, nn.Module) and not isinstance(net, torch.fx.GraphModule):
        net.eval()
    elif hasattr(net, "eval"):
        try:
            net.eval()
        except (NotImplementedError, RuntimeError):
            pass  # exported programs keep the mode they were exported in
    for prm in net.parameters():
        prm.requires_grad_(False)
    model = AuditModel(net, spec, info=info, fixed_batch=fixed_batch).to(dev)
    model.training = False  # the wrapper itself is in eval mode too (the net's mode was set above)
    if spec.input_shape is not None:
        model.finalize()
    return model


def _load_export(p: Path, trust: bool):
    """``torch.export.load`` unpickles the archive's sample inputs and constants, and falls back
    to ``weights_only=False`` when that fails: without ``trust`` the fallback is forbidden
    (TORCH_FORCE_WEIGHTS_ONLY_LOAD), so a crafted archive's code never runs."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    if not trust:
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(p))
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if not trust and ("weights_only" in msg or "GLOBAL" in msg or "Unsupported global" in msg):
            raise ModelLoadError(f"{p} is a torch.export archive holding pickled objects that need code to load; "
                                 "it was not run. Re-run with --trust only if you trust its source") from None
        raise ModelLoadError(f"{p} is a torch.export archive that fails to load ({_first_line(msg)})") from None
    finally:
        if not trust:
            if old is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _unpack_export(ep) -> tuple[nn.Module, int | None, tuple[int, int, int] | None]:
    mod = ep.module()
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    fixed, shape = None, None
    if len(placeholders) == 1:
        val = placeholders[0].meta.get("val")
        dims = list(getattr(val, "shape", []))
        if len(dims) == 4:
            if isinstance(dims[0], int):
                fixed = dims[0]
            if all(isinstance(d, int) for d in dims[1:]):
                shape = tuple(int(d) for d in dims[1:])
    return mod, fixed, shape


def _build_from_state_dict(sd: dict[str, torch.Tensor], *, arch: str | None, spec: ModelSpec, where: str) -> nn.Module:
    from .zoo import create_arch

    if not arch:
        raise ModelLoadError(f"{where} holds only weights (a state_dict); name the architecture with --arch NAME "
                             "(a torchvision model such as resnet18, or gymnet) and --num-classes N")
    n = spec.num_classes or _infer_num_classes(sd)
    if n is None:
        raise ModelLoadError(f"cannot tell the number of classes of {where}; pass --num-classes N")
    spec.set("num_classes", n, "weights file")
    try:
        net = create_arch(arch, num_classes=n)
    except KeyError as e:
        raise ModelLoadError(str(e.args[0])) from None
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"the weights in {where} do not fit --arch {arch} with {n} classes: "
                             f"{_summarize_load_error(str(e))}") from None
    return net


def _summarize_load_error(msg: str) -> str:
    parts = []
    m = re.search(r"Missing key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n|$)", msg, re.S | re.M)
    if m:
        keys = re.findall(r'"([^"]+)"', m.group(1))
        parts.append(f"{len(keys)} missing keys (e.g. {', '.join(keys[:2])})")
    m = re.search(r"Unexpected key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n|$)", msg, re.S | re.M)
    if m:
        keys = re.findall(r'"([^"]+)"', m.group(1))
        parts.append(f"{len(keys)} unexpected keys (e.g. {', '.join(keys[:2])})")
    sm = re.findall(r"size mismatch for ([\w\.]+)", msg)
    if sm:
        parts.append(f"{len(sm)} size mismatches (e.g. {', '.join(sm[:2])})")
    return "; ".join(parts) or _first_line(msg)

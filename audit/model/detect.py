"""Which kind of model file a path holds, judged from its content (never the extension)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..errors import ModelLoadError
from ..files import MiB, regular_file

#: what ``info["format"]`` (results.json ``model.format``) can say
FORMATS = ("torchscript", "export", "state_dict", "safetensors", "pickle", "torchvision", "onnx", "timm",
           "transformers")
#: the field numbers an ONNX ``ModelProto`` starts with after ``ir_version`` (field 1, a varint):
#: producer_name, producer_version, domain, model_version, doc_string, graph, opset_import (as tags)
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}
_FOLDER_NEEDS = ("a model folder needs a config.json beside its weights: timm's (with 'architecture'; saved by "
                 "timm.models.save_for_hf or push_to_hf_hub) or transformers' (with 'model_type'; saved by "
                 "save_pretrained); otherwise give the model file itself")


def _zip_kind(path: Path) -> str:
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
    raise ModelLoadError(f"{path} is a zip file but not a PyTorch model (no data.pkl, code/ or export archive); "
                         "save the model with torch.jit.save, torch.export.save or torch.save")


def _is_safetensors(path: Path, head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length, then a JSON header."""
    if size < 8:
        return False
    n = int.from_bytes(head[:8], "little")
    if not (2 <= n <= 100_000_000 and head[8:9] == b"{"):
        return False
    if 8 + n > size:
        raise ModelLoadError(f"{path} is a truncated safetensors file (header says {n} bytes, file has {size - 8}); "
                             "re-copy or re-save the model")
    return True


def _is_onnx(head: bytes) -> bool:
    """An ONNX ``ModelProto`` as exporters write it: ``ir_version`` (tag 0x08, a small varint)
    first, then one of the model's other fields. The loader parses it to be sure."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _ONNX_NEXT_TAGS


def folder_kind(path: Path) -> str:
    """``timm`` or ``transformers`` for a hub-style model folder, judged from its
    ``config.json`` (``architecture`` -> timm; ``model_type`` / ``architectures`` ->
    transformers). Raises :class:`ModelLoadError` naming what a model folder needs."""
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ModelLoadError(f"{path} is a folder without a config.json; {_FOLDER_NEEDS}")
    try:
        cfg = json.loads(regular_file(cfg_path, "model config", error=ModelLoadError, max_bytes=16 * MiB).read_text(
            encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg_path} is not valid JSON ({e})") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str) and "model_type" not in cfg:
        return "timm"
    if isinstance(cfg, dict) and ("model_type" in cfg or "architectures" in cfg):
        return "transformers"
    raise ModelLoadError(f"{cfg_path} names neither a timm architecture nor a transformers model_type; {_FOLDER_NEEDS}")


def detect_format(path: Path) -> str:
    """The kind of model at ``path``: ``torchscript``, ``export`` (a ``torch.export``
    archive), ``torch_save`` (a ``torch.save`` pickle, zip or legacy: a state_dict, a
    checkpoint or a pickled module), ``safetensors``, ``onnx``, or for a folder ``timm`` /
    ``transformers`` (:func:`folder_kind`); these are the keys of
    :data:`audit.model.loaders.LOADERS`. Reads the first 16 bytes (and a zip's directory, a
    folder's config.json). Raises :class:`ModelLoadError` for an empty, truncated, corrupt or
    foreign file, or a folder that is not a model folder."""
    if path.is_dir():
        return folder_kind(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return _zip_kind(path)
    if _is_safetensors(path, head, size):
        return "safetensors"
    if _is_onnx(head):
        return "onnx"
    if head[:1] == b"\x80" and size > 2:  # a legacy (non-zip) pickle, torch.save(_use_new_zipfile_serialization=False)
        return "torch_save"
    if size == 0:
        raise ModelLoadError(f"{path} is empty, not a model file; re-copy or re-save the model")
    raise ModelLoadError(f"{path} is not a model file this tool reads; save the model as TorchScript "
                         "(torch.jit.save), torch.export .pt2, a state_dict .pt/.pth or .safetensors (with --arch), "
                         "ONNX, a timm or transformers model folder (save_pretrained), or a pickled nn.Module "
                         "(with --trust)")

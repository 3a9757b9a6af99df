"""Which kind of model file a path holds, judged from its content (never the extension)."""
from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import ModelLoadError

#: what ``info["format"]`` (results.json ``model.format``) can say
FORMATS = ("torchscript", "export", "state_dict", "safetensors", "pickle", "torchvision")


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


def detect_format(path: Path) -> str:
    """The kind of model file at ``path``: ``torchscript``, ``export`` (a ``torch.export``
    archive), ``torch_save`` (a ``torch.save`` pickle, zip or legacy: a state_dict, a
    checkpoint or a pickled module) or ``safetensors``; these are the keys of
    :data:`audit.model.loaders.LOADERS`. Reads the first 16 bytes (and a zip's directory).
    Raises :class:`ModelLoadError` for an empty, truncated, corrupt or foreign file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return _zip_kind(path)
    if _is_safetensors(path, head, size):
        return "safetensors"
    if head[:1] == b"\x80" and size > 2:  # a legacy (non-zip) pickle, torch.save(_use_new_zipfile_serialization=False)
        return "torch_save"
    if size == 0:
        raise ModelLoadError(f"{path} is empty, not a model file; re-copy or re-save the model")
    raise ModelLoadError(f"{path} is not a model file this tool reads; save the model as TorchScript "
                         "(torch.jit.save), torch.export .pt2, a state_dict .pt/.pth or .safetensors (with --arch), "
                         "or a pickled nn.Module (with --trust)")

"""One loader per model-file format, behind the :data:`LOADERS` dispatch table.

:func:`audit.model.detect.detect_format` names a file's kind from its content; ``LOADERS``
maps that kind to the function that turns the file into a network. Adding a format is one
loader ``load_x(req) -> Loaded`` here (or in a module of its own: :mod:`.onnxfile`,
:mod:`.hubfolder`), one line in ``LOADERS``, and the content test that names it in
``detect_format``.

Nothing here runs code from a model file unless ``trust`` is set: a ``torch.save`` file is
opened with ``weights_only=True`` first (a checkpoint whose other entries need code is read
with inert stand-ins for them, :mod:`.inert`), and a ``torch.export`` archive is loaded with
``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``.
"""
from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..errors import ModelLoadError, UsageError
from .detect import detect_format
from .graphscan import side_effect_ops
from .hubfolder import load_hf_folder, load_timm_folder
from .inert import Inert, load_inert, stand_ins
from .messages import error_line
from .onnxfile import load_onnx
from .request import Loaded, LoadRequest, Loader
from .hubconfig import apply_timm_config
from .statedict import as_state_dict, build_from_state_dict


# ----------------------------------------------------------------------------- shared steps
def _needs_code(msg: str) -> bool:
    """Whether a weights-only unpickling failed because the pickle references code (a GLOBAL:
    a class or function to import); any other failure (``Unsupported operand``, truncated
    data) is a corrupt file, which ``--trust`` would not fix."""
    return "Unsupported global" in msg or "GLOBAL" in msg


# ----------------------------------------------------------------------------- shared by the weights-only formats
def from_state_dict(obj: Any, req: LoadRequest, fmt: str, notes: list[str] | None = None) -> Loaded:
    """``obj`` (a state_dict, or a checkpoint holding one) built into ``req.arch``
    (:func:`audit.model.statedict.build_from_state_dict`); a ``timm:NAME`` architecture also
    fills the spec's preprocessing from timm's pretrained config (source ``timm config``).
    ``notes``: adaptations already made. Raises :class:`ModelLoadError` when ``obj`` holds no
    state_dict or the weights do not fit."""
    sd = as_state_dict(obj)
    if sd is None:
        raise ModelLoadError(f"{req.where} holds a {type(obj).__name__}, neither a model nor a state_dict of tensors; "
                             "save the model's state_dict (torch.save(model.state_dict(), path)) or the model as "
                             "TorchScript (torch.jit.save)")
    notes = list(notes or [])
    net = build_from_state_dict(sd, arch=req.arch, spec=req.spec, where=req.where, notes=notes)
    if req.arch and req.arch.startswith("timm:"):
        notes += apply_timm_config(req.spec, net)
    info: dict[str, Any] = {"arch": req.arch}
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if v.is_floating_point()} - {"float32"})
    if dtypes:
        info["weights_dtype"] = ", ".join(dtypes)
        notes.append(f"{' and '.join(dtypes)} weights loaded into a float32 --arch {req.arch} network")
    return Loaded(net, fmt, info=info, notes=notes)


# ----------------------------------------------------------------------------- TorchScript
def _refuse_side_effects(req: LoadRequest, program, kind: str) -> None:
    """:class:`ModelLoadError` when ``program``'s graph calls operators that touch files, the
    network or the process (:mod:`audit.model.graphscan`) and ``trust`` is not set."""
    if req.trust:
        return
    bad = side_effect_ops(program)
    if bad:
        raise ModelLoadError(f"{req.path} is a {kind} whose graph calls {', '.join(bad[:3])}"
                             f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; it was not run. Re-run with "
                             "--trust only if you trust its source")


def load_torchscript(req: LoadRequest) -> Loaded:
    """A ``torch.jit.save`` archive. Raises :class:`ModelLoadError` when it fails to load or,
    without ``trust``, its graph calls operators with side effects (file, network, process)."""
    try:
        net = torch.jit.load(str(req.path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{req.path} is a TorchScript archive that fails to load ({error_line(e)}); re-save it "
                             f"with torch {torch.__version__.split('+')[0]}, or save the state_dict and pass --arch") from None
    _refuse_side_effects(req, net, "TorchScript archive")
    return Loaded(net, "torchscript")


# ----------------------------------------------------------------------------- torch.export
@contextmanager
def _weights_only_unless(trust: bool) -> Iterator[None]:
    """``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` for the block unless ``trust``; restored after."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    if not trust:
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if not trust:
            if old is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _load_exported_program(p: Path, trust: bool):
    """``torch.export.load`` unpickles the archive's sample inputs and constants, and falls back
    to ``weights_only=False`` when that fails: without ``trust`` the fallback is forbidden,
    so a crafted archive's code never runs."""
    import logging

    try:
        with _weights_only_unless(trust), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.CRITICAL)  # torch logs a failed deserialization at length: one line below
            try:
                return torch.export.load(str(p))
            finally:
                logging.disable(logging.NOTSET)
    except Exception as e:  # noqa: BLE001
        if not trust and _needs_code(str(e)):
            raise ModelLoadError(f"{p} is a torch.export archive holding pickled objects that need code to load; "
                                 "it was not run. Re-run with --trust only if you trust its source") from None
        raise ModelLoadError(f"{p} is a torch.export archive that fails to load ({error_line(e)}); re-export it with "
                             f"torch {torch.__version__.split('+')[0]}, or save the state_dict and pass --arch") from None


def _unpack_export(ep) -> tuple[nn.Module, int | None, tuple[int, int, int] | None]:
    """The program's module, and from its one input's traced shape (N, C, H, W): N when it is
    static, (C, H, W) when all three are. With a dynamic batch the module is
    ``torch.export.unflatten(ep)``: the original module hierarchy, whose submodules accept
    forward hooks (Grad-CAM, TCAV, channel visualization can read layers); with a static batch
    (fed in chunks of that size) or when unflattening fails, the flat ``ep.module()``."""
    mod = ep.module()
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    if len(placeholders) != 1:
        return mod, None, None
    dims = list(getattr(placeholders[0].meta.get("val"), "shape", []))
    if len(dims) != 4:
        return mod, None, None
    fixed = dims[0] if isinstance(dims[0], int) else None
    shape = tuple(int(d) for d in dims[1:]) if all(isinstance(d, int) for d in dims[1:]) else None
    if fixed is None:
        try:
            mod = torch.export.unflatten(ep)
            mod.exported_program = ep  # a fresh copy is unflatten(ep) again: deepcopy fails on its graphs
        except Exception:  # noqa: BLE001 - the flat module still computes the same function
            pass
    return mod, fixed, shape  # type: ignore[return-value]


def load_export(req: LoadRequest) -> Loaded:
    """A ``torch.export`` archive (``.pt2``); its static input shape fills the spec (source
    ``export``). Raises :class:`ModelLoadError` when it fails to load or, without
    ``trust``, holds pickled objects that need code or calls operators with side effects."""
    ep = _load_exported_program(req.path, req.trust)
    _refuse_side_effects(req, ep, "torch.export archive")
    net, fixed, shape = _unpack_export(ep)
    req.spec.set("input_shape", shape, "export")
    return Loaded(net, "export", fixed_batch=fixed)


# ----------------------------------------------------------------------------- safetensors
def load_safetensors(req: LoadRequest) -> Loaded:
    """A ``.safetensors`` state_dict, built with ``--arch``. Raises :class:`ModelLoadError`
    when the file is corrupt or the weights do not fit the architecture."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        obj = load_file(str(req.path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{req.path} is a corrupt safetensors file ({error_line(e)}); re-copy or re-save it "
                             "(safetensors.torch.save_file)") from None
    return from_state_dict(obj, req, "safetensors")


# ----------------------------------------------------------------------------- torch.save
_NEEDS_CODE = object()
_LIGHTNING_KEYS = ("pytorch-lightning_version", "lightning_version")


def _load_weights_only(p: Path) -> tuple[Any, str | None]:
    """(the unpickled object, None), or (``_NEEDS_CODE``, the one-line refusal) when the pickle
    needs code. Raises :class:`ModelLoadError` for a corrupt file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True), None
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError ...
        msg = str(e)
        if not _needs_code(msg) and ("weights_only" not in msg.lower() or _unparseable(p)):
            raise ModelLoadError(f"{p} cannot be read as a PyTorch file ({error_line(e)}); "
                                 "it may be truncated or corrupt: re-copy or re-save the model") from None
        m = re.search(r"GLOBAL ([\w\.]+)", msg)
        what = f" (it references {m.group(1)})" if m else ""
        return _NEEDS_CODE, (f"{p} is a pickle that needs Python code to load{what}; it was not run. If you trust "
                             "its source, re-run with --trust; otherwise save it as TorchScript, torch.export or a "
                             "state_dict")


def _unparseable(p: Path) -> bool:
    """Whether the first pickle of ``p`` (of a zip archive: its ``data.pkl``) fails to parse:
    a corrupt file, which ``--trust`` would not help. Reads opcodes only; nothing runs. (The
    weights-only unpickler's refusal alone does not tell: it also refuses pickle protocols
    above 2 and pickles that reference code.)"""
    import io
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                stream: Any = io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
        else:
            stream = open(p, "rb")
        with stream:
            for _ in pickletools.genops(stream):
                pass
        return False
    except Exception:  # noqa: BLE001 - any parse failure is a damaged file
        return True


def _load_with_code(p: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise ModelLoadError(f"{p} is a pickled model whose code cannot be imported ({e}); put the module "
                             "that defines its class on PYTHONPATH") from None
    except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError ...: the file itself is damaged
        raise ModelLoadError(f"{p} cannot be read as a PyTorch file ({error_line(e)}); it may be truncated or "
                             "corrupt: re-copy or re-save the model") from None


def _module_in(obj: Any) -> nn.Module | None:
    """``obj`` itself when it is a module, else the first module among a dict's values."""
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        return next((v for v in obj.values() if isinstance(v, nn.Module)), None)
    return None


def _holds_inert(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, Inert):
        return True
    if depth > 20:
        return False
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple, set)) else ()
    return any(_holds_inert(v, depth + 1) for v in items)


def _inert_checkpoint(p: Path, refusal: str) -> tuple[Any, list[str]]:
    """A checkpoint that needs code, read with stand-ins for its code (:mod:`.inert`) when it
    holds a state_dict, and the note that says what was not loaded. Raises
    :class:`ModelLoadError` (``refusal``) when it holds no state_dict (a pickled module) or
    the stand-ins break it."""
    try:
        obj, names = load_inert(p)
    except Exception:  # noqa: BLE001 - whatever the stand-ins break: the plain refusal
        raise ModelLoadError(refusal) from None
    if as_state_dict(obj) is None:
        raise ModelLoadError(refusal)
    keys = [str(k) for k, v in obj.items() if _holds_inert(v)] if isinstance(obj, dict) else []
    where = f"its {', '.join(repr(k) for k in keys[:3])}" if keys else "it"
    return obj, [f"the checkpoint's tensors were read, but {where} hold objects that need code to unpickle "
                 f"({stand_ins(names)}); they were not loaded and none of their code ran (--trust loads them)"]


def _checkpoint_info(obj: Any) -> dict[str, Any]:
    """``checkpoint: lightning`` and its version, for a PyTorch Lightning checkpoint."""
    if not isinstance(obj, dict):
        return {}
    version = next((obj[k] for k in _LIGHTNING_KEYS if isinstance(obj.get(k), str)), None)
    return {"checkpoint": "lightning", "lightning_version": version} if version else {}


def load_torch_save(req: LoadRequest) -> Loaded:
    """A ``torch.save`` file: a state_dict or training checkpoint (built with ``--arch``;
    format ``state_dict``; a Lightning ``.ckpt`` included), or, only with ``trust``, a pickled
    ``nn.Module`` (format ``pickle``). A checkpoint whose other entries need code (Lightning's
    ``hyper_parameters``) is read without ``trust`` with inert stand-ins for them
    (:mod:`.inert`), noted; with ``trust`` everything is loaded. Raises
    :class:`ModelLoadError` for a corrupt file, a pickled module or a checkpoint without a
    state_dict that needs code without ``trust``, code that cannot be imported, or weights
    that do not fit."""
    obj, refusal = _load_weights_only(req.path)
    notes: list[str] = []
    if obj is _NEEDS_CODE and req.trust:
        obj = _load_with_code(req.path)
        module = _module_in(obj)
        if module is not None:
            return Loaded(module, "pickle")
    elif obj is _NEEDS_CODE:
        obj, notes = _inert_checkpoint(req.path, refusal or "")
    lightning = _checkpoint_info(obj)
    if lightning and req.trust and refusal:
        notes.append("the checkpoint's hyper_parameters were loaded with their code (--trust)")
    loaded = from_state_dict(obj, req, "state_dict", notes)
    loaded.info.update(lightning)
    return loaded


# ----------------------------------------------------------------------------- torchvision
def _cached_weights_file(w) -> Path:
    p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not p.is_file():
        raise ModelLoadError(f"weights {w} are not in the local torch hub cache ({p}); this tool does not "
                             "download: fetch them once with torchvision on a connected machine, or pass the model file")
    return p


def load_torchvision(req: LoadRequest) -> Loaded:
    """torchvision weights by name (``--weights``) from the local torch hub cache, into their
    architecture; nothing is downloaded. Raises :class:`UsageError` without a weights name,
    :class:`ModelLoadError` when the file is not in the cache."""
    if req.tv_weights is None:
        raise UsageError("no model file given; pass one, or --weights NAME to load torchvision weights from the local "
                         "cache")
    obj = torch.load(_cached_weights_file(req.tv_weights), map_location="cpu", weights_only=True)
    loaded = from_state_dict(obj, req, "torchvision")
    loaded.info = {"path": str(req.weights), **loaded.info}
    return loaded


# ----------------------------------------------------------------------------- dispatch
#: file kind (``detect_format``'s answer, or ``torchvision`` when there is no file) -> loader
LOADERS: dict[str, Loader] = {
    "torchscript": load_torchscript,
    "export": load_export,
    "safetensors": load_safetensors,
    "torch_save": load_torch_save,
    "torchvision": load_torchvision,
    "onnx": load_onnx,
    "timm": load_timm_folder,
    "transformers": load_hf_folder,
}


def load_net(req: LoadRequest) -> Loaded:
    """Detect the kind of ``req.path`` (torchvision weights when there is no path) and run its
    loader. Raises :class:`ModelLoadError` / :class:`UsageError` as the loaders do."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        kind = "torchvision" if req.path is None else detect_format(req.path)
        return LOADERS[kind](req)

"""Model folders as the Hugging Face hub stores them, loaded offline: timm's (``config.json``
with ``architecture``, ``pretrained_cfg``, ``label_names``, beside ``model.safetensors`` or
``pytorch_model.bin``) and transformers' (``config.json`` with ``model_type``, saved with
``save_pretrained``, and the image processor's ``preprocessor_config.json``).

Nothing is downloaded: timm builds the folder's architecture with
``create_model("local-dir:FOLDER", pretrained=True)``, transformers with
``from_pretrained(FOLDER, local_files_only=True)``. Both read ``.bin`` weights with
``weights_only=True``; a folder whose config names its own Python code (transformers'
``auto_map``) is refused without ``trust``. A hub id given instead of a folder is an error
that says how to save the model locally (:func:`hub_id_advice`).
"""
from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..errors import ModelLoadError
from .hubconfig import HF_SOURCE, apply_hf_processor, apply_timm_config, hf_class_names
from .messages import error_line, require
from .request import Loaded, LoadRequest
from .statedict import summarize_load_error

#: weights files of a model folder, in the order timm and transformers prefer them
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
                 "model.safetensors.index.json", "pytorch_model.bin.index.json")
_MODEL_FILE = re.compile(r".*\.(pt|pth|pt2|ckpt|onnx|safetensors|bin|tar|zip|json)$", re.I)
_HUB_ID = re.compile(r"^(hf[-_]hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")
DOWNLOAD = ("nothing is downloaded: on a machine with internet, save it to a folder (`hf download {id} --local-dir "
            "DIR`, huggingface_hub's CLI; or {save}) and give DIR")
_TIMM_SAVE = ('timm.models.save_for_hf(timm.create_model("hf-hub:{id}", pretrained=True), "DIR", '
              'safe_serialization=True)')
_HF_SAVE = "AutoModelForImageClassification and AutoImageProcessor .from_pretrained(\"{id}\").save_pretrained(\"DIR\")"


# ----------------------------------------------------------------------------- hub ids
def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` (a model path that does not exist) reads as a hub id such as
    ``timm/resnet18.a1_in1k``, ``google/vit-base-patch16-224`` or ``hf-hub:...``, rather
    than a missing file (``models/net.pt``)."""
    return bool(_HUB_ID.match(text)) and not _MODEL_FILE.match(text)


def hub_id_advice(text: str) -> str:
    """The one-line error for hub id ``text`` given as the model: nothing is downloaded, and
    how to save the model to a folder that ``audit run`` reads."""
    repo = re.sub(r"^hf[-_]hub:", "", text)
    timm_like = repo.startswith("timm/") or text.startswith(("hf-hub:", "hf_hub:"))
    save = (_TIMM_SAVE if timm_like else _HF_SAVE).format(id=repo)
    return f"{text} is not a file or folder here; read as a hub id, {DOWNLOAD.format(id=repo, save=save)}"


def timm_arch_advice(arch: str) -> str:
    """The error for ``--arch timm:NAME`` without a weights file."""
    name = arch.split(":", 1)[1]
    return (f"--arch {arch} builds timm's architecture for a weights file (a state_dict or .safetensors): give "
            f"that file; for timm's pretrained weights, {DOWNLOAD.format(id='timm/' + name, save=_TIMM_SAVE.format(id='timm/' + name))}"
            " (NAME with its pretrained tag, e.g. resnet18.a1_in1k)")


# ----------------------------------------------------------------------------- folders
def weights_file(folder: Path) -> Path | None:
    """The folder's weights file, as timm and transformers pick it (:data:`WEIGHTS_FILES`,
    then the first ``*.safetensors``, ``*.pth``, ``*.bin``), or None."""
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    for ext in (".safetensors", ".pth", ".bin"):
        found = sorted(p for p in folder.glob(f"*{ext}") if p.is_file())
        if found:
            return found[0]
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings, progress bars or info logs from timm / transformers / huggingface_hub."""
    loggers = [logging.getLogger(n) for n in ("timm", "transformers", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    bars = None
    try:
        from transformers.utils import logging as tlog

        bars = tlog.is_progress_bar_enabled()
        tlog.disable_progress_bar()
    except ImportError:
        tlog = None
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if tlog is not None and bars:
            tlog.enable_progress_bar()


def _needs_weights(folder: Path, what: str) -> Path:
    wf = weights_file(folder)
    if wf is None:
        raise ModelLoadError(f"{folder} holds a {what} config.json but no weights file (model.safetensors or "
                             "pytorch_model.bin); copy the weights into the folder")
    return wf


def load_timm_folder(req: LoadRequest) -> Loaded:
    """A timm hub folder: the architecture, ``model_args`` and pretrained config of its
    ``config.json`` (``timm.create_model("local-dir:...")``), its weights loaded strictly
    with ``weights_only=True``; the spec gets timm's preprocessing and ``label_names``
    (:func:`audit.model.hubconfig.apply_timm_config`). Raises :class:`ModelLoadError`
    without timm, for an architecture this timm lacks, missing weights, weights that need
    code or do not fit."""
    timm = require("timm", "timm")
    folder = req.path
    wf = _needs_weights(folder, "timm")
    if wf.name.endswith(".index.json"):  # timm reads one weights file: it would load a single shard
        raise ModelLoadError(f"{folder} holds sharded weights ({wf.name}), which timm does not load from a folder; "
                             "save the model as one file (timm.models.save_for_hf, or torch.save of its state_dict "
                             "with --arch timm:NAME)")
    try:
        with _quiet():
            net = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError, KeyError, UnpicklingError ...
        msg = str(e)
        if "Unknown model" in msg:
            raise ModelLoadError(f"{folder}/config.json names {msg.split('(')[-1].rstrip(')')!r}, an architecture "
                                 f"timm {timm.__version__} does not have; upgrade timm") from None
        if "weights_only" in msg or "Unsupported global" in msg:
            raise ModelLoadError(f"{wf} is a pickle that needs Python code to load; it was not run. Save the weights "
                                 "as model.safetensors") from None
        raise ModelLoadError(f"the weights in {wf} do not fit the timm model of {folder}/config.json: "
                             f"{summarize_load_error(e)}") from None
    notes = apply_timm_config(req.spec, net)
    arch = getattr(net, "pretrained_cfg", {}).get("architecture") or type(net).__name__
    return Loaded(net, "timm", info={"arch": f"timm:{arch}", "weights_file": wf.name}, notes=notes)


def _hf_config(folder: Path, trust: bool) -> Any:
    from transformers import AutoConfig

    try:
        with _quiet():
            return AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(f"{folder}/config.json names the folder's own Python code (auto_map); it was not "
                                 "run. Re-run with --trust only if you trust its source") from None
        raise ModelLoadError(f"{folder}/config.json is not a transformers config this version reads "
                             f"({error_line(e)})") from None
    except (OSError, KeyError) as e:
        raise ModelLoadError(f"{folder}/config.json cannot be read by transformers ({error_line(e)})") from None


def _hf_model(folder: Path, config: Any, trust: bool) -> tuple[Any, list[str]]:
    from transformers import AutoModelForImageClassification

    try:
        with _quiet():
            net, info = AutoModelForImageClassification.from_pretrained(
                str(folder), config=config, local_files_only=True, trust_remote_code=trust, output_loading_info=True)
    except ValueError as e:
        raise ModelLoadError(f"{folder} holds a {config.model_type!r} model, which transformers' "
                             f"AutoModelForImageClassification does not build ({error_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - OSError, UnpicklingError, RuntimeError ...
        raise ModelLoadError(f"{folder} holds a transformers model that fails to load ({error_line(e)})") from None
    bad = [f"{len(info[k])} {k.replace('_', ' ')} (e.g. {', '.join(map(str, list(info[k])[:2]))})"
           for k in ("missing_keys", "mismatched_keys") if info.get(k)]
    if bad:
        raise ModelLoadError(f"the weights in {folder} do not fit its config ({config.model_type}): {'; '.join(bad)}; "
                             "transformers would initialize those at random") from None
    notes = [f"{len(info['unexpected_keys'])} weights in the folder are not used by the model"] \
        if info.get("unexpected_keys") else []
    return net, notes


def load_hf_folder(req: LoadRequest) -> Loaded:
    """A transformers folder (``save_pretrained``) with ``AutoModelForImageClassification``,
    offline (``local_files_only``); the model's ``.logits`` output is taken by the wrapper.
    The spec gets the image processor's preprocessing (``preprocessor_config.json``,
    :func:`audit.model.hubconfig.apply_hf_processor`) and the config's ``id2label``. Raises
    :class:`ModelLoadError` without transformers, for remote code without ``trust``, a model
    type that is not an image classifier, missing weights or weights that do not fit."""
    require("transformers", "hf")
    from transformers import AutoImageProcessor

    folder = req.path
    wf = _needs_weights(folder, "transformers")
    config = _hf_config(folder, req.trust)
    net, notes = _hf_model(folder, config, req.trust)
    try:
        with _quiet():
            proc = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, trust_remote_code=req.trust)
    except Exception as e:  # noqa: BLE001 - missing, malformed, or needing a package: the model is still usable
        proc = None
        missing = not (folder / "preprocessor_config.json").is_file()
        notes.append(("no preprocessor_config.json in the folder" if missing else
                      f"the image processor did not load ({error_line(e)})") + ": input size, mean and std come from "
                     "flags or the data (save the image processor with save_pretrained beside the model)")
    if proc is not None:
        notes += apply_hf_processor(req.spec, proc, int(getattr(config, "num_channels", 3) or 3))
    req.spec.set("class_names", hf_class_names(config), HF_SOURCE)
    return Loaded(net, "transformers", info={"arch": f"transformers:{type(net).__name__}", "weights_file": wf.name},
                  notes=notes)

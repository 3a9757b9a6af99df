"""``audit inspect MODEL [--data DATA]``: what the tool detected about a model (and its data),
and from where, before any check runs; each refusal with the fix it names.

:func:`inspect_model` runs the same loading steps as ``audit run`` (:func:`audit.model.load_model`,
:meth:`AuditModel.finalize`, :func:`audit.data.load_data`, :func:`audit.runner.check_fit`), one
at a time, so that when one refuses, what the earlier ones found is still reported. Its
:class:`Inspection` has one line per field (:data:`FIELDS`), notes (things the audit adapts to
or warns about) and problems (refusals: exit code 4), as text (:meth:`Inspection.text`) or one
JSON object (:meth:`Inspection.to_dict`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import AuditError, ExitCode, first_line, split_fix

#: the lines of the report, in order (also the keys of the JSON object)
FIELDS = ("format", "dtype", "mode", "input", "normalization", "output", "classes", "class map vs data", "data",
          "device")

_FORMAT_NAMES = {"torchscript": "TorchScript", "export": "torch.export program", "state_dict": "state_dict",
                 "safetensors": "safetensors state_dict", "pickle": "pickled nn.Module (loaded with --trust)",
                 "torchvision": "torchvision weights", "torch_save": "torch.save file"}
_SOURCES = {"flag": "flags", "sidecar": "the sidecar file", "weights": "the --weights metadata",
            "export": "the export's input signature", "data": "the data", "probe": "probing the model",
            "output": "the model's output width", "weights file": "the weights file"}


@dataclass
class Inspection:
    """What :func:`inspect_model` found: ``fields`` (name -> one line, :data:`FIELDS`),
    ``notes``, ``problems`` (``{"message", "fix"}`` each), the loaded ``model`` and ``data``
    (None when they did not load)."""

    fields: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    model: Any = None
    data: Any = None

    @property
    def exit_code(self) -> ExitCode:
        """0 when the model (and data) can be audited, 4 when a problem refuses it."""
        return ExitCode.USAGE_ERROR if self.problems else ExitCode.OK

    def problem(self, e: AuditError | str) -> None:
        message, fix = split_fix(first_line(e, limit=10_000))
        self.problems.append({"message": message, "fix": fix})

    def text(self) -> str:
        """``name: value`` lines, then ``note:`` lines, then ``problem:`` / ``  fix:`` lines."""
        lines = [f"{k}: {v}" for k, v in self.fields.items()]
        lines += [f"note: {n}" for n in self.notes]
        for p in self.problems:
            lines.append(f"problem: {p['message']}")
            lines.append(f"  fix: {p['fix'] or '(none named)'}")
        lines.append("auditable: " + ("yes" if not self.problems else "no (exit 4)"))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The fields (same names, same text), ``notes``, ``problems``, ``exit_code``, and
        ``details``: the ``model`` and ``data`` blocks results.json would hold (None when they
        did not load)."""
        return {**self.fields, "notes": list(self.notes), "problems": list(self.problems),
                "exit_code": int(self.exit_code),
                "details": {"model": self.model.describe() if self.model is not None else None,
                            "data": self.data.describe() if self.data is not None else None}}


def inspect_model(path: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None,
                  device: str | None = "auto", resize: bool = False, convert_channels: bool = False,
                  class_order: str = "auto", labels_file=None, resize_mode: str | None = None,
                  crop_pct: float | None = None, interpolation: str | None = None,
                  **model_options: Any) -> Inspection:
    """Load the model at ``path`` (``model_options``: those of :func:`audit.model.load_model`)
    and, with ``data``, the data against it (``resize``, ``convert_channels``, ``class_order``,
    ``labels_file``, ``resize_mode``, ``crop_pct``, ``interpolation`` as :func:`audit.data.load_data`), step by step. Never raises an :class:`AuditError`: each
    refusal is a problem of the returned :class:`Inspection` (other exceptions propagate)."""
    from .model import load_model

    ins = Inspection()
    try:
        ins.model = load_model(path, device=device, finalize=False, **model_options)
    except AuditError as e:
        ins.fields["format"] = _format_of_file(path)
        ins.problem(e)
        return ins
    model = ins.model
    try:
        if model.spec.input_shape is not None or data is None:
            model.finalize()  # without data and an input size: its one-line refusal names the fix
        if data is not None:
            from .data import load_data
            from .runner import check_fit

            ins.data = load_data(data, model=model, resize=resize, convert_channels=convert_channels,
                                 class_order=class_order, labels_file=labels_file, resize_mode=resize_mode,
                                 crop_pct=crop_pct, interpolation=interpolation)
            check_fit(model, ins.data)
    except AuditError as e:
        ins.problem(e)
    _describe(ins, model, ins.data, data)
    return ins


def _format_of_file(path) -> str:
    """The format line when the model did not load: the kind its content shows, if any."""
    from .model import detect_format

    if path is None or not Path(path).is_file():
        return "unknown (no model file read)"
    try:
        kind = detect_format(Path(path))
    except AuditError:
        return "unknown: not a model file this tool reads — from the file's content"
    return f"{_FORMAT_NAMES.get(kind, kind)} (did not load) — from the file's content"


def _source(spec, name: str) -> str:
    return _SOURCES.get(spec.sources.get(name, ""), spec.sources.get(name, "unknown"))


def _describe(ins: Inspection, model, data, data_path) -> None:
    f, info, spec = ins.fields, model.info, model.spec
    fmt = info.get("format", "")
    how = f"--weights {info.get('weights')}" if fmt == "torchvision" else "the file's content"
    arch = f", built as --arch {info['arch']}" if info.get("arch") else ""
    batch = f", traced for batches of {model.fixed_batch} (fed in chunks of that size)" if model.fixed_batch else ""
    f["format"] = f"{_FORMAT_NAMES.get(fmt, fmt)}{arch}{batch} — from {how}"
    f["dtype"] = _dtype_line(model)
    f["mode"] = _mode_line(model)
    shape = "x".join(map(str, spec.input_shape)) if spec.input_shape else None
    f["input"] = f"{shape} from {_source(spec, 'input_shape')}" if shape else "unknown"
    if spec.mean is not None or spec.std is not None:
        f["normalization"] = (f"mean {_floats(spec.mean)} ({_source(spec, 'mean')}), std {_floats(spec.std)} "
                              f"({_source(spec, 'std')}), applied to pixels in [0, 1]")
    else:
        f["normalization"] = ("none: the model gets pixels in [0, 1] as they are (pass --mean/--std if it was "
                              "trained on normalized inputs)")
    f["output"] = _output_line(model)
    f["classes"] = _classes_line(model)
    f["class map vs data"] = _class_map_line(data, data_path)
    f["data"] = _data_line(data, data_path)
    f["device"] = str(model.device) + (" (no GPU visible)" if model.device.type == "cpu" and
                                       not torch.cuda.is_available() else "")
    if model.ready and model.output_kind == "probabilities":
        sat = _saturation(model, data)
        if sat:
            ins.notes.append(sat)
    ins.notes += [n for n in (data.notes if data is not None else []) if n != data.class_map_how]


def _floats(v) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")" if v is not None else "(none)"


def _dtype_line(model) -> str:
    info = model.info
    w = info.get("weights_dtype")
    if not w:
        return f"float32 on {model.device.type}"
    c = info.get("compute_dtype")
    if c == "float32" and w != "float32":
        return f"{w} weights, computed in float32 on {model.device.type} (a float32 copy: half precision is slow or " \
               "missing there)"
    if c:
        return f"{w} weights, computed in {c} on {model.device.type} (inputs cast to {c}, logits float32)"
    return f"{w} weights, loaded into a float32 network on {model.device.type}"


def _mode_line(model) -> str:
    info = model.info
    if info.get("batch_dependent"):
        return ("batch-dependent: an image's output depends on the other images in its batch (BatchNorm on the "
                "batch's statistics, as in train mode) — refused")
    if not model.ready:
        return "not probed (the model was not run: see the problem below)"
    mode = "eval"
    if info.get("saved_in_train_mode"):
        mode = ("eval() applied (saved in train mode; a trace or export keeps the mode it was traced in, which the "
                "probe checks)" if info.get("format") in ("torchscript", "export") else
                "eval() applied (saved in train mode)")
    chance = ("stochastic: outputs differ from call to call (e.g. Dropout active); every number is one draw, the "
              "adversarial check averages over draws (EOT)") if model.stochastic else "deterministic"
    return f"{mode}; batch-independent; {chance}"


def _output_line(model) -> str:
    if not (model.ready or model.info.get("batch_dependent")):  # the batch probe comes after the output's
        return "not probed"
    kind = {"logits": "logits", "probabilities": "probabilities (rows sum to 1)",
            "log_probabilities": "log-probabilities"}[model.output_kind]
    adapt = "; ".join(model.adaptations) or "none"
    return f"{kind} (N, {model.num_classes}); adaptations: {adapt}"


def _classes_line(model) -> str:
    spec = model.spec
    if spec.class_names:
        shown = ", ".join(spec.class_names[:6]) + (", ..." if len(spec.class_names) > 6 else "")
        src = {"flag": "the --labels file"}.get(spec.sources.get("class_names", ""), _source(spec, "class_names"))
        return f"{len(spec.class_names)} from {src}: {shown}"
    if spec.num_classes:
        return (f"{spec.num_classes} from {_source(spec, 'num_classes')}, unnamed: outputs numbered 0..{spec.num_classes - 1} "
                "(pass --labels FILE to name them)")
    return "unknown (the model was not probed)"


def _class_map_line(data, data_path) -> str:
    if data_path is None:
        return "no --data given"
    if data is None:
        return "not checked (the data did not load)"
    if data.class_map_how:
        return data.class_map_how
    return "the tensor file's labels y are the model's output indices"


def _data_line(data, data_path) -> str:
    if data_path is None:
        return "none (pass --data DIR to check the data against the model)"
    if data is None:
        return f"{data_path}: did not load"
    return (f"{len(data)} images, {len(data.class_names)} classes, {'x'.join(map(str, data.input_shape))} from "
            f"{data.source}")


def _saturation(model, data) -> str:
    """A note when the model's own softmax underflows: runner-up probabilities below float32's
    smallest normal number on the data (or 16 random inputs), so their margins are lost."""
    if data is not None and len(data):
        x = data.x[: 256]
        where = f"{len(x)} data images"
    else:
        x = torch.rand(16, *model.spec.input_shape, generator=torch.Generator().manual_seed(0))
        where = "16 random inputs"
    with torch.no_grad():
        p = model.raw_rows(x.to(model.device)).float()
    if p.shape[1] < 2:
        return ""
    runner_up = p.topk(2, dim=1).values[:, 1]
    n = int((runner_up < torch.finfo(torch.float32).tiny).sum())
    if not n:
        return ""
    return (f"the model's softmax saturates: on {n} of {where} the runner-up probability is 0 or below float32's "
            "smallest normal number (1.2e-38), so the margin between the top classes is lost there (the audit reads "
            "an exact 0 as log 2^-149); export the pre-softmax logits for a sharper audit")

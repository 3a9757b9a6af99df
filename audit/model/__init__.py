"""Loading a trained model safely, and the :class:`AuditModel` every check works on.

``load_model(path)`` detects the file's format from its content (never the extension):

* TorchScript archives (``torch.jit.save``),
* ``torch.export`` archives (``.pt2``),
* ``.safetensors`` files and ``torch.save``'d state_dicts and checkpoints (Lightning's
  included) with ``arch`` (``timm:NAME`` for a timm architecture),
* ONNX files (through ``onnx2torch``, checked against ``onnxruntime``),
* timm and Hugging Face transformers model folders (``config.json`` + weights), offline,
* whole pickled ``nn.Module`` objects, **only** with ``trust=True``.

A plain ``torch.save`` file is always opened with ``weights_only=True`` first, so a pickle
whose unpickling would import or run code is refused before any of it runs.

The returned :class:`AuditModel` takes images in [0, 1] (the ``bounds``), folds the
model's normalization into its forward, and always returns ``(N, num_classes)`` logits.

Modules: :mod:`.spec` (``ModelSpec`` and where each field comes from), :mod:`.detect`
(format from content), :mod:`.request` (what a loader gets and returns), :mod:`.loaders`
(one loader per format, the ``LOADERS`` table), :mod:`.onnxfile` (ONNX), :mod:`.hubfolder`
(timm / transformers folders, hub ids), :mod:`.hubconfig` (their preprocessing into the
spec), :mod:`.inert` (a checkpoint's tensors without its code), :mod:`.statedict` (``--arch``
+ weights), :mod:`.wrapper` (``AuditModel``), :mod:`.device` (``--device``), :mod:`.load`
(``load_model``, the steps in order).
"""
from __future__ import annotations

from .detect import FORMATS, detect_format
from .device import resolve_device
from .load import load_model, sha256_file
from .loaders import LOADERS
from .spec import SIDECAR_KEYS, ModelSpec, parse_floats, parse_input_size, read_labels, read_sidecar
from .wrapper import AuditModel

__all__ = ["AuditModel", "ModelSpec", "load_model", "resolve_device", "detect_format", "parse_input_size",
           "parse_floats", "read_labels", "read_sidecar", "sha256_file", "FORMATS", "SIDECAR_KEYS", "LOADERS"]

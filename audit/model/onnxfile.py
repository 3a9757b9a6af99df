"""ONNX models: converted to a PyTorch module with ``onnx2torch`` (so gradients exist and every
check runs), checked against ``onnxruntime`` before anything is audited.

* Detection is by content (:func:`audit.model.detect.detect_format`); ``onnx.load`` parses it.
* Safety: an ONNX file runs no Python code, but a node of a custom operator domain (anything
  but ``''`` / ``ai.onnx``, and not a function defined in the file) runs a library's code;
  such a graph is refused without ``trust``.
* The input is the graph's one non-initializer input, (N, C, H, W): a static C, H, W fills the
  spec's input shape (source ``onnx``). A static N (``torch.onnx.export`` without
  ``dynamic_axes``) makes the model run in chunks of N, as a fixed-batch ``torch.export``,
  unless the converted module computes onnxruntime's output at another batch size too (a
  graph that flattens with ``Flatten``, not a ``Reshape`` to a constant N): then it runs at any.
* When ``onnx2torch`` has no converter for an operator at the file's opset, the graph is
  converted to opset 18, then 17 (``onnx.version_converter``), and converted again.
* The converted module must reproduce ``onnxruntime``'s output on a seeded probe batch to
  :data:`TOLERANCE` (relative to the output's scale); otherwise the model is refused: the
  audit would test another function than the one shipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .messages import error_line, require
from .request import Loaded, LoadRequest

#: largest |torch - onnxruntime| / max(1, max |onnxruntime|) accepted on the probe batch
TOLERANCE = 1e-4
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
_FALLBACK_OPSETS = (18, 17)
_PROBE_SEED = 4321


def _require(module: str) -> Any:
    return require(module, "onnx", "an ONNX model", "onnx, onnx2torch, onnxruntime")


def _nodes(graph) -> list:
    """Every node of ``graph`` and of the subgraphs in its nodes' attributes (If, Loop, Scan)."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out.extend(_nodes(sub))
    return out


def custom_domains(proto) -> list[str]:
    """The operator domains ``proto``'s nodes (subgraphs and local functions included) call
    outside the standard ones and the file's own functions, sorted."""
    local = {(f.domain, f.name) for f in proto.functions}  # a call of the file's own function, by domain and name
    nodes = _nodes(proto.graph) + [n for f in proto.functions for n in f.node]
    return sorted({n.domain for n in nodes if (n.domain, n.op_type) not in local} - STANDARD_DOMAINS)


def _the_input(proto, where: str):
    """The graph's one image input: (name, [N, C, H, W] with None for a dynamic size, numpy dtype)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ModelLoadError(f"{where} has {len(inputs)} graph inputs ({', '.join(i.name for i in inputs[:4])}); "
                             "the audit feeds one image batch: export the classifier with one (N, C, H, W) input")
    tt = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
    if len(dims) != 4:
        raise ModelLoadError(f"{where}'s input {inputs[0].name!r} has {len(dims)} dimensions, not (N, C, H, W)")
    return inputs[0].name, dims, tensor_dtype_to_np_dtype(tt.elem_type)


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS), 0)


def _convert(proto, where: str) -> tuple[torch.nn.Module, list[str]]:
    """``onnx2torch.convert(proto)``, retried at :data:`_FALLBACK_OPSETS` when an operator has
    no converter at the file's opset; the notes say when. Raises :class:`ModelLoadError`."""
    onnx2torch = _require("onnx2torch")
    from onnx import version_converter

    try:
        return onnx2torch.convert(proto), []
    except NotImplementedError as e:
        first = e
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"onnx2torch cannot convert {where} ({error_line(e)})") from None
    opset = _opset(proto)
    for target in (v for v in _FALLBACK_OPSETS if v < opset):
        try:
            return onnx2torch.convert(version_converter.convert_version(proto, target)), [
                f"onnx2torch has no converter at opset {opset} ({error_line(first)}); the graph was converted to "
                f"opset {target} first (checked against onnxruntime on the original)"]
        except Exception:  # noqa: BLE001 - try the next opset
            continue
    raise ModelLoadError(f"onnx2torch cannot convert {where}: {error_line(first)}; re-export the model with "
                         "opset_version=17 (torch.onnx.export(..., opset_version=17))") from None


def _onnxruntime(path: Path, name: str, x, fixed: int | None) -> torch.Tensor:
    """onnxruntime's first output on ``x`` (float64), fed in chunks of ``fixed`` (the last one
    padded with copies of its last image) when the graph's batch size is fixed."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    b = fixed or len(x)
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        outs = []
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            pad = np.concatenate([chunk, np.repeat(chunk[-1:], b - len(chunk), 0)]) if len(chunk) < b else chunk
            outs.append(sess.run(None, {name: pad})[0][:len(chunk)])
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"onnxruntime cannot run {path} ({error_line(e)}), so its conversion cannot be "
                             "checked") from None
    return torch.from_numpy(np.concatenate(outs)).double()


def _difference(net: torch.nn.Module, x, ref: torch.Tensor) -> float | None:
    """max |net(x) - ref| / max(1, max |ref|); None when ``net`` fails on ``x`` or its output
    has another shape (a graph whose reshapes fix the batch size, fed another one)."""
    try:
        with torch.no_grad():
            out = net(torch.from_numpy(x))
    except Exception:  # noqa: BLE001
        return None
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(ref.shape):
        return None
    return float((out.double() - ref).abs().max() / max(1.0, float(ref.abs().max())))


def _check(req: LoadRequest, net: torch.nn.Module, name: str, dtype, fixed: int | None) -> tuple[float, int | None]:
    """Compare the converted ``net`` with onnxruntime on seeded probe images: a batch of
    ``fixed`` (else 2), then, for a fixed batch size, a batch of ``fixed + 2``: when the
    conversion computes that one right too, nothing in the graph depends on the batch size and
    the model runs at any (the returned batch size is None). Returns (the difference, the batch
    size to feed). Raises :class:`ModelLoadError` above :data:`TOLERANCE`."""
    g = torch.Generator().manual_seed(_PROBE_SEED)
    n = fixed + 2 if fixed else 2
    x = torch.rand(n, *req.spec.input_shape, generator=g).numpy().astype(dtype)
    ref = _onnxruntime(req.path, name, x, fixed)
    b = fixed or n
    diff = _difference(net, x[:b], ref[:b])
    if diff is None or not diff <= TOLERANCE:
        raise ModelLoadError(f"onnx2torch's conversion of {req.path} differs from onnxruntime "
                             f"({'fails or has another output shape' if diff is None else f'by {diff:.2g}, relative'}) "
                             f"on a probe batch, more than {TOLERANCE:g}: the audit would test another function than "
                             "the one shipped; re-export with another opset_version")
    if fixed:
        whole = _difference(net, x, ref)
        if whole is not None and whole <= TOLERANCE:
            return max(diff, whole), None
    return diff, fixed


def load_onnx(req: LoadRequest) -> Loaded:
    """An ONNX file, converted with ``onnx2torch`` and checked against ``onnxruntime``
    (format ``onnx``). Raises :class:`ModelLoadError` without the ``onnx`` extra, for a file
    onnx cannot parse, custom operator domains without ``trust``, not one (N, C, H, W) input,
    an unknown input size without ``--input-size``, a conversion onnx2torch cannot do, or one
    that differs from onnxruntime by more than :data:`TOLERANCE`."""
    onnx = _require("onnx")
    _require("onnxruntime")
    where = str(req.path)
    try:
        proto = onnx.load(where)
    except Exception as e:  # noqa: BLE001 - DecodeError, ValueError, OSError (external data)
        raise ModelLoadError(f"{where} starts like an ONNX model but onnx cannot parse it ({error_line(e)}); "
                             "it may be truncated or corrupt") from None
    bad = custom_domains(proto)
    if bad and not req.trust:
        raise ModelLoadError(f"{where} calls operators of the custom domain(s) {', '.join(bad[:3])}, whose code is a "
                             "library's, not ONNX's; it was not run. Re-run with --trust only if you trust its source")
    if proto.functions:
        from onnx import inliner

        proto = inliner.inline_local_functions(proto)
    name, dims, dtype = _the_input(proto, where)
    if all(d is not None for d in dims[1:]):
        req.spec.set("input_shape", tuple(dims[1:]), "onnx")
    if req.spec.input_shape is None:
        raise ModelLoadError(f"{where}'s input has a dynamic size {['?' if d is None else d for d in dims]}; "
                             "pass --input-size CxHxW")
    given = req.spec.input_shape
    if any(d is not None and d != v for d, v in zip(dims[1:], given)):
        raise ModelLoadError(f"{where} takes inputs of {['?' if d is None else d for d in dims]} but the input size "
                             f"is {'x'.join(map(str, given))} ({req.spec.sources.get('input_shape')}); give its own")
    net, notes = _convert(proto, where)
    net.eval()
    diff, fixed = _check(req, net, name, dtype, dims[0])
    if dims[0] and fixed is None:
        notes.append(f"the ONNX graph's batch size is fixed at {dims[0]}, but its conversion computes the same at "
                     "other batch sizes (checked against onnxruntime): it runs at any batch size")
    info = {"opset": _opset(proto), "producer": f"{proto.producer_name} {proto.producer_version}".strip() or None,
            "onnxruntime_difference": diff}
    return Loaded(net, "onnx", fixed_batch=fixed, info=info, notes=notes)

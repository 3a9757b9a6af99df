"""What :meth:`AuditModel.finalize` checks of a network before any number is computed:
the dtype it computes in (:func:`settle_precision`) and whether its outputs depend on the
batch or on chance (:func:`settle_mode`).

* Precision: a float16 / bfloat16 / float64 network is fed inputs cast to its weights'
  dtype (logits come back as float32); on the CPU, where half-precision arithmetic is slow
  or missing, a float16 / bfloat16 network runs as a float32 copy instead. Either way the
  model info says which.
* Batch dependence: one image's output alone (a batch of four copies of it) and within a
  mixed batch (a dark and a bright image beside it), under the same random seed. A network
  whose outputs differ (BatchNorm using the batch's statistics: a model saved in train mode)
  gives numbers that depend on ``--batch-size``, so it is refused with the fix
  (:class:`ModelLoadError`); ``load_model`` has already applied ``eval()`` where the format
  allows it (a module, a state_dict build, a scripted TorchScript), which is why only a
  trace or an export saved in train mode gets here.
* Stochastic outputs (the same batch under two seeds differs: Dropout active in a trace,
  noise in the forward) are not refused: ``model.stochastic`` is set, noted in the model
  info, and the adversarial check averages over draws (EOT).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from ..errors import ModelLoadError
from .messages import error_line

#: ``model`` below is an :class:`audit.model.wrapper.AuditModel` (not imported: it imports this module)
AuditModel = Any

_HALF = (torch.float16, torch.bfloat16)
_SEED = 4321  #: the seed of the mode probe's inputs and of the network's random draws


def dtype_name(dt: torch.dtype) -> str:
    """``torch.float16`` -> ``float16``."""
    return str(dt).replace("torch.", "")


def weight_dtype(net: Any) -> torch.dtype | None:
    """The most common floating dtype among ``net``'s parameters and buffers (None: none)."""
    try:
        tensors = list(net.parameters()) + list(net.buffers())
    except Exception:  # noqa: BLE001 - a network without the module API
        return None
    counts = Counter(t.dtype for t in tensors if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else None


def _runs(model: AuditModel) -> bool:
    x = torch.rand(2, *model.spec.input_shape, generator=torch.Generator().manual_seed(_SEED)).to(model.device)
    try:
        with torch.no_grad():
            model._raw(x)
        return True
    except Exception:  # noqa: BLE001 - the caller tries the other way
        return False


def settle_precision(model: AuditModel) -> None:
    """Make a network whose weights are not float32 computable: on the CPU a float16/bfloat16
    network becomes a float32 copy when that copy runs; otherwise inputs are cast to the
    weights' dtype (``model.in_dtype``). Records ``weights_dtype`` and a note in the info."""
    dt = weight_dtype(model.net)
    if dt is None or dt == torch.float32 or not dt.is_floating_point:
        return
    name = dtype_name(dt)
    model.info["weights_dtype"] = name
    if dt in _HALF and model.device.type == "cpu":
        try:
            model.net.float()
            model.in_dtype = None
            if _runs(model):
                model.info["compute_dtype"] = "float32"
                model._note(f"{name} weights run as a float32 copy on the CPU (half precision is slow or missing "
                            f"there); numbers match the {name} model within its rounding")
                return
        except Exception:  # noqa: BLE001 - a trace or export with its dtype baked in: cast the inputs instead
            pass
        model.net.to(dt)
    model.in_dtype = dt
    model.info["compute_dtype"] = name
    model._note(f"{name} weights: inputs are cast to {name}, logits returned as float32")


def dtype_hint(model: AuditModel) -> str:
    """For a probe failure: a clause naming a non-float32 dtype and the fix, or ''."""
    name = model.info.get("weights_dtype")
    if not name:
        return ""
    return (f"; the model computes in {name} on {model.device.type}, which may not support it: "
            f"save it in float32 (model.float()) or use --device cuda")


# ----------------------------------------------------------------------------- batch and chance
def _rows_of(model: AuditModel, x: torch.Tensor, seed: int) -> torch.Tensor:
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return model.raw_rows(x).float()


def _differ(a: torch.Tensor, b: torch.Tensor, dt: torch.dtype | None) -> bool:
    rel = 3e-2 if dt in _HALF else 1e-3
    scale = float(torch.maximum(a.abs().max(), b.abs().max())) if a.numel() else 0.0
    return not torch.isfinite(a - b).all() or float((a - b).abs().max()) > rel * max(scale, 1.0)


def probe_mode(model: AuditModel) -> tuple[bool, bool]:
    """(batch-dependent, stochastic): image ``a``'s output in a batch of four copies of it vs
    in ``[a, dark, bright, b]`` under the same seed (the same Dropout masks), and the mixed
    batch under two seeds. A network whose draws torch's seed does not fix (a counter, another
    generator) is stochastic, and its batch dependence is not tested."""
    g = torch.Generator().manual_seed(_SEED)
    shape = model.spec.input_shape
    a, b = torch.rand(2, *shape, generator=g)
    dark = 0.1 * torch.rand(*shape, generator=g)
    bright = 0.9 + 0.1 * torch.rand(*shape, generator=g)
    same = torch.stack([a, a, a, a]).to(model.device)
    mixed = torch.stack([a, dark, bright, b]).to(model.device)
    o_mixed = _rows_of(model, mixed, _SEED)
    if _differ(o_mixed, _rows_of(model, mixed, _SEED), model.in_dtype):
        return False, True  # random beyond torch's seed (state, another generator): batch dependence untestable
    o_same, o_again = _rows_of(model, same, _SEED), _rows_of(model, mixed, _SEED + 1)
    return _differ(o_same[0], o_mixed[0], model.in_dtype), _differ(o_mixed, o_again, model.in_dtype)


def settle_mode(model: AuditModel) -> None:
    """Refuse a batch-dependent network (:class:`ModelLoadError`, exit 4, naming the fix);
    flag a stochastic one (``model.stochastic``, ``info["stochastic"]``, a note)."""
    try:
        dependent, stochastic = probe_mode(model)
    except Exception as e:  # noqa: BLE001 - the plain probe ran; a failure here is the model's
        raise ModelLoadError(f"the model fails on a batch mixing dark and bright images ({error_line(e)}), though "
                             "it ran on random ones; check that its forward takes any images in [0, 1] after the "
                             "--mean/--std normalization, and save it again") from None
    fmt = model.info.get("format")
    if dependent:
        model.info["batch_dependent"] = True  # for `audit inspect`, which reports what was found before a refusal
        if fmt in ("torchscript", "export"):
            raise ModelLoadError(
                f"the model's output for an image depends on the other images in its batch (a {fmt} saved in train "
                "mode: BatchNorm uses the batch's statistics, and eval() cannot undo a trace or an export), so every "
                "number would depend on --batch-size; re-export the model in eval mode (model.eval() before "
                "torch.jit.trace/torch.export)")
        raise ModelLoadError(
            "the model's output for an image depends on the other images in its batch even in eval mode (its "
            "forward uses batch statistics), so every number would depend on --batch-size; make its forward "
            "independent of the batch (e.g. BatchNorm with running statistics) and save it again")
    model.stochastic = stochastic
    model.info["stochastic"] = stochastic
    if stochastic:
        why = " (it was saved in train mode: Dropout is active)" if model.info.get("saved_in_train_mode") else ""
        model._note(f"outputs are random: the same images give different outputs from call to call{why}; every "
                    "number is one draw, and the adversarial check averages over draws (EOT)")

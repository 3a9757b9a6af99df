""":class:`AuditModel`: the classifier every check works on, in pixel space with plain logits."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..batching import is_oom
from ..errors import InputShapeError, UsageError
from .behaviour import dtype_hint, settle_mode, settle_precision
from .messages import error_line
from .spec import ModelSpec

#: seed of the random inputs :meth:`AuditModel.finalize` probes the model with (fixed, so
#: that loading a model is deterministic whatever the run's ``--seed``)
PROBE_SEED = 1234
_PROBE_N = 4  #: images of the probe forward pass
#: tolerance for "rows sum to 1" (probabilities) and "rows logsumexp to 0" (log-probabilities)
_PROB_ATOL = 1e-3
_DICT_KEYS = ("logits", "out", "output", "scores")
#: the log of a probability that is exactly 0: that of float32's smallest positive (subnormal)
#: value 2**-149, ≈ -103.28, below the log of every nonzero float32 probability (a float64
#: output is floored at float64's, 2**-1074)
_FLOOR32, _FLOOR64 = 2.0 ** -149, 2.0 ** -1074


class ProbabilityLog(torch.autograd.Function):
    """``log p`` of probabilities ``p`` (N, K) (any float dtype) as float32 log-probabilities,
    without a coarse floor: the log is taken in float64 (float32 on MPS, which has no float64)
    and only exact zeros are floored, at :data:`_FLOOR32` (log ≈ -103.28). Differences of the
    result are the logit differences of the softmax that made ``p``, up to that softmax's own
    float32 underflow; a floor such as 1e-12 instead capped every margin near 27.6.

    Backward: ``grad / p`` with ``p`` floored at the smallest *normal* number of its dtype
    (1.18e-38 in float32), so the gradient stays finite in ``p``'s dtype and flows where ``p``
    is tiny but nonzero (the softmax's backward then multiplies it by ``p`` again: through a
    softmax the margin's gradient is the logit margin's, exactly, for ``p`` ≥ 1.18e-38, and
    shrinks by ``p / 1.18e-38`` below that); it is 0 where ``p`` is exactly 0."""

    @staticmethod
    def forward(ctx, p: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(p)
        wide = torch.float32 if p.device.type == "mps" else torch.float64
        floor = _FLOOR64 if p.dtype == torch.float64 else _FLOOR32
        return p.to(wide).clamp_min(floor).log().float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (p,) = ctx.saved_tensors
        fi = torch.finfo(p.dtype)
        wide = torch.float32 if p.device.type == "mps" else torch.float64
        g = grad.to(wide) / p.to(wide).clamp_min(fi.tiny)
        return g.clamp(-fi.max / 2, fi.max / 2).to(p.dtype)  # room for the softmax backward's subtraction


class AuditModel(nn.Module):
    """A classifier in pixel space.

    ``forward(x)``: ``x`` a float tensor (N, C, H, W) on :attr:`device` with values in
    ``spec.bounds`` ([0, 1]) -> float32 logits (N, num_classes). The model's normalization
    (``spec.mean`` / ``spec.std``) is folded in; tuple, dict and ``.logits`` outputs are
    reduced to the logits tensor; log-probability outputs are used as they are (their
    differences are logit differences) and probability outputs are turned into
    log-probabilities without a coarse floor (:class:`ProbabilityLog`; see ``adaptations`` and
    ``output_kind``). An export traced at a fixed batch size
    (``fixed_batch``) is fed in chunks of that size.

    ``info`` is the provenance block of results.json (path, sha256, format, ...). ``ready``
    is False until :meth:`finalize` has probed the model (the input shape may come from the
    data). Constructing raises :class:`UsageError` when mean/std do not fit the channels or a
    std is not positive.
    """

    def __init__(self, net: nn.Module, spec: ModelSpec, *, info: dict[str, Any] | None = None,
                 fixed_batch: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.info = dict(info or {})
        self.adaptations: list[str] = []
        self.fixed_batch = fixed_batch
        self.output_kind = "logits"  # or "probabilities", "log_probabilities"
        self.in_dtype: torch.dtype | None = None  # the network's input dtype when not float32 (behaviour.py)
        self.stochastic = False  # two identical calls differ (behaviour.settle_mode)
        self.ready = False
        self._set_norm()

    # ------------------------------------------------------------------ normalization
    def _set_norm(self) -> None:
        """(Re)build the ``mean`` / ``std`` buffers, (1, C, 1, 1) float32 (they follow ``.to(device)``)."""
        c = self.spec.input_shape[0] if self.spec.input_shape else None
        mean, std = self.spec.mean, self.spec.std
        for name, val, default in (("mean", mean, 0.0), ("std", std, 1.0)):
            if val is not None and c is not None and len(val) not in (1, c):
                raise UsageError(f"--{name} has {len(val)} values but the model takes {c} channels; pass one value "
                                 f"per channel ({c}), or one for all")
            t = torch.tensor(val if val is not None else [default], dtype=torch.float32).view(1, -1, 1, 1)
            if name in self._buffers:
                self._buffers[name] = t.to(self._buffers[name].device)
            else:
                self.register_buffer(name, t, persistent=False)
        self._identity_norm = all(v == 0 for v in (mean or [0.0])) and all(v == 1 for v in (std or [1.0]))
        if std is not None and any(s <= 0 for s in std):
            raise UsageError(f"--std {','.join(f'{s:g}' for s in std)}: std values must be positive; pass the "
                             "positive per-channel std the model was trained with")

    @property
    def device(self) -> torch.device:
        """Where the model's inputs must be."""
        return self.mean.device

    @property
    def num_classes(self) -> int:
        """Width of the logits (known once finalized)."""
        assert self.spec.num_classes is not None
        return self.spec.num_classes

    @property
    def class_names(self) -> list[str]:
        """One name per output: the spec's, else ``"0"``, ``"1"``, ..."""
        return self.spec.class_names or [str(i) for i in range(self.num_classes)]

    # ------------------------------------------------------------------ forward
    def _raw(self, x: torch.Tensor, net: Any = None) -> Any:
        """The network's (or ``net``'s, a stand-in such as a compiled copy) own output on
        normalized ``x``, in ``fixed_batch`` chunks when set (a short last chunk padded with
        copies of its last image, the padding cut off)."""
        net = self.net if net is None else net
        # one new tensor either way (a network that writes into its input never touches the caller's):
        # a plain copy for the identity normalization, else the subtraction divided in place
        z = x.clone() if self._identity_norm else (x - self.mean).div_(self.std)
        if self.in_dtype is not None:
            z = z.to(self.in_dtype)
        if self.fixed_batch is None or z.shape[0] == self.fixed_batch:
            return net(z)
        outs, b = [], self.fixed_batch
        for i in range(0, z.shape[0], b):
            chunk = z[i:i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - n, *chunk.shape[1:])])
            outs.append(self._to_tensor(net(chunk))[:n])
        return torch.cat(outs)

    def raw_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own output on ``x`` in pixel space as (N, K), before any output adaptation."""
        return _rows(self._to_tensor(self._raw(x)), x.shape[0])

    def _to_tensor(self, out: Any) -> torch.Tensor:
        """The logits tensor in a network's output (a tensor, a tuple's first element, a dict's
        ``logits``/``out``/``output``/``scores`` or only tensor, or ``.logits``); raises
        :class:`UsageError` when there is none."""
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            self._note("output is a tuple; its first element is taken as the logits")
            return out[0]
        if isinstance(out, dict):
            found = self._tensor_in_dict(out)
            if found is not None:
                return found
        logits = getattr(out, "logits", None)
        if isinstance(logits, torch.Tensor):
            self._note("output object has .logits; it is taken as the logits")
            return logits
        raise UsageError(f"the model returns {type(out).__name__}, not a logits tensor, tuple, or dict with 'logits'; "
                         "return the logits tensor (batch, classes) from its forward and save it again")

    def _tensor_in_dict(self, out: dict) -> torch.Tensor | None:
        for k in _DICT_KEYS:
            if isinstance(out.get(k), torch.Tensor):
                self._note(f"output is a dict; its {k!r} entry is taken as the logits")
                return out[k]
        tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            self._note("output is a dict with one tensor; it is taken as the logits")
            return tensors[0]
        return None

    def _note(self, text: str) -> None:
        if text not in self.adaptations:
            self.adaptations.append(text)

    def forward(self, x: torch.Tensor, *, net: Any = None) -> torch.Tensor:
        """``x`` (N, C, H, W) in [0, 1] on :attr:`device` -> float32 logits (N, num_classes);
        raises :class:`UsageError` when the network's output is not one row per image (:func:`_rows`).
        ``net``: a stand-in for the network with the same function (e.g. ``torch.compile``'s
        copy, :mod:`audit.model.layout`); the wrapper's own steps are unchanged."""
        out = _rows(self._to_tensor(self._raw(x, net)), x.shape[0])
        if self.output_kind == "probabilities":
            return ProbabilityLog.apply(out)  # in the output's own dtype: no float32 underflow added
        return out.float()

    @torch.no_grad()
    def logits(self, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Batched inference without gradients: ``x`` (N, C, H, W) in [0, 1] on any device ->
        float32 logits (N, num_classes) on the CPU (an empty (0, num_classes) tensor for N = 0).
        Raises :class:`UsageError` naming the batch size and ``--batch-size`` when the model
        fails on a batch of another size than the 4 images it was probed with (a model traced
        or exported for one batch size); an out-of-memory error propagates as it is."""
        outs = []
        for i in range(0, x.shape[0], batch_size):
            chunk = x[i:i + batch_size].to(self.device)
            try:
                outs.append(self(chunk).cpu())
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001 - the user's model failing on this batch size
                if is_oom(e) or len(chunk) == _PROBE_N:
                    raise
                raise UsageError(f"the model fails on a batch of {len(chunk)} images (it ran on a batch of "
                                 f"{_PROBE_N}): {error_line(e)}; pass --batch-size 1 (it ran on one image alone at "
                                 "load)") from None
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)

    # ------------------------------------------------------------------ finalization
    def finalize(self, input_shape: tuple[int, int, int] | None = None, source: str = "data",
                 class_names: list[str] | None = None) -> "AuditModel":
        """Fix the input shape (C, H, W) if still unknown (recorded as ``source``), then probe
        one forward pass on 4 random images (and one on the first alone: a batch size baked
        into a trace sets ``fixed_batch``): output width (-> ``num_classes``), probability
        or log-probability outputs (-> ``output_kind``), NaN; the weights' dtype and batch
        dependence / randomness are settled before and after (:mod:`.behaviour`).
        ``class_names`` (e.g. the data's folders) are taken when the spec has none and their number fits. Called by
        ``load_model`` when the shape is known, else by the runner once the data is loaded.
        Returns ``self``. Raises :class:`UsageError` when the shape is unknown, the model
        fails on the probe (:class:`~audit.errors.InputShapeError`) or outputs NaN/inf, its outputs depend on the batch, or the class
        names or count do not fit."""
        if input_shape is not None:
            self.spec.set("input_shape", tuple(input_shape), source)
        if self.spec.input_shape is None:
            raise UsageError("the model's input size is unknown; pass --input-size CxHxW or give data to infer it from")
        self._set_norm()
        settle_precision(self)
        raw = self._probe()
        width = raw.shape[1]
        self._check_width(width)
        self.spec.set("num_classes", width, "output")
        if class_names is not None and self.spec.class_names is None and len(class_names) == width:
            self.spec.set("class_names", list(class_names), "data")
        self._detect_output_kind(raw)
        settle_mode(self)
        self.ready = True
        return self

    def _runs_alone(self, x1: torch.Tensor) -> bool:
        """Whether the network runs on the one image ``x1`` (1, C, H, W)."""
        try:
            with torch.no_grad():
                self._raw(x1)
            return True
        except Exception:  # noqa: BLE001 - the caller decides what a failure means
            return False

    def _set_fixed_batch(self, n: int) -> None:
        self.fixed_batch = n
        why = ("it fails on a single image (a batch size baked into a trace, or an export whose batch dimension "
               f"starts above 1)" if n > 1 else "it fails on a batch of 4 (a batch size of 1 baked into a trace)")
        self._note(f"the network runs on batches of {n}, not others: {why}; it is fed in chunks of {n}, the last "
                   "one padded")

    def _probe(self) -> torch.Tensor:
        """The raw outputs, (4, width) float32, on 4 seeded random inputs in [0, 1]. A network
        that runs on a batch of 4 but not on one image alone, or on one image but not on 4 (a
        trace with its batch size baked in, e.g. ``x.reshape(4, -1)``), is fed in chunks of the
        size it runs on (``fixed_batch``; noted). Raises :class:`InputShapeError` when it runs on neither."""
        g = torch.Generator().manual_seed(PROBE_SEED)
        x = torch.rand(_PROBE_N, *self.spec.input_shape, generator=g).to(self.device)
        try:
            with torch.no_grad():
                raw = self._to_tensor(self._raw(x))
            if self.fixed_batch is None and not self._runs_alone(x[:1]):
                self._set_fixed_batch(_PROBE_N)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the user's model on a well-formed input
            if self.fixed_batch is not None or not self._runs_alone(x[:1]):
                fix = "; pass --input-size CxHxW with the model's input shape (and --resize / --convert-channels " \
                      "to fit the data to it)"
                raise InputShapeError(f"the model fails on an input of shape {list(x.shape)}: {error_line(e)}"
                                      + (dtype_hint(self) or fix)) from None
            self._set_fixed_batch(1)
            with torch.no_grad():
                raw = self._to_tensor(self._raw(x))
        raw = _rows(raw, x.shape[0]).float()
        if not torch.isfinite(raw).all():
            raise UsageError("the model outputs NaN or infinite values on random inputs in [0, 1]; "
                             "check its weights and the --mean/--std normalization")
        return raw

    def _check_width(self, width: int) -> None:
        if self.spec.class_names is not None and len(self.spec.class_names) != width:
            src = self.spec.sources.get("class_names", "labels")
            raise UsageError(f"{len(self.spec.class_names)} class names ({src}) for a model with {width} outputs; "
                             "give one name per class with --labels FILE")
        if self.spec.num_classes is not None and self.spec.num_classes != width:
            raise UsageError(f"the model outputs {width} scores but {self.spec.num_classes} classes were given "
                             f"({self.spec.sources.get('num_classes', 'flag')}); fix --num-classes/--labels")

    def _detect_output_kind(self, raw: torch.Tensor) -> None:
        width = raw.shape[1]
        sums = raw.sum(1)
        if width > 1 and (raw >= 0).all() and (raw <= 1).all() and torch.allclose(sums, torch.ones_like(sums),
                                                                                 atol=_PROB_ATOL):
            self.output_kind = "probabilities"
            self._note("outputs are probabilities (rows sum to 1); their log, taken in float64 with only exact "
                       "zeros floored (at float32's smallest positive value), is used as logits")
        elif width > 1 and (raw <= 0).all() and torch.allclose(raw.logsumexp(1), torch.zeros_like(sums),
                                                               atol=_PROB_ATOL):
            self.output_kind = "log_probabilities"
            self._note("outputs are log-probabilities; used as logits (softmax is unchanged)")

    def describe(self) -> dict[str, Any]:
        """The ``model`` block of results.json: ``info`` plus the spec (lists, not tuples),
        ``output_kind``, ``adaptations`` and ``spec_sources``."""
        return {**self.info, "num_classes": self.spec.num_classes,
                "input_shape": list(self.spec.input_shape) if self.spec.input_shape else None,
                "class_names": self.class_names if self.spec.num_classes else None,
                "mean": list(self.spec.mean) if self.spec.mean else None,
                "std": list(self.spec.std) if self.spec.std else None,
                "bounds": list(self.spec.bounds), "output_kind": self.output_kind,
                "adaptations": list(self.adaptations), "spec_sources": dict(self.spec.sources)}


def _rows(out: torch.Tensor, n: int) -> torch.Tensor:
    """The network's output for a batch of ``n`` as (n, K): (n, K) as it is, (n,) as one
    column, (n, K, 1, ...) with its trailing singleton dimensions dropped. Anything else
    ((1, K) for a batch of n, (K, n), (n, 5, 2)) is a one-line :class:`UsageError` naming the
    shape expected and the one got; it is never flattened into a different class count."""
    if out.ndim >= 1 and out.shape[0] == n:
        if out.ndim == 1:
            return out.reshape(n, 1)
        if out.ndim == 2 or all(d == 1 for d in out.shape[2:]):
            return out.reshape(n, out.shape[1])
    shape = "x".join(map(str, out.shape)) or "a scalar"
    raise UsageError(f"the model's output for a batch of {n} images is {shape}, expected (N, K) = ({n}, number of "
                     "classes): one row of class scores per image; return logits of shape (batch, classes)")

"""The fast path of every gradient loop: the attacks (attacks/adversarial/), fooling's gradient
ascent (attacks/fooling/), class visualization (probes/class_viz/) and the gradient
attribution methods (probes/attribution/) all reach the model through a :class:`FastPath`.

What it does, each part a setting of ``[audit]`` (:class:`FastSettings`, docs/performance.md):

* ``precision = "bf16"``: the forward and backward passes run under ``torch.autocast`` with
  bfloat16 (device type from the model's device); the logits come back as float32. Every
  candidate a loop counts (an adversarial, a fooling image, a class picture's confidence) is
  scored again by the fp32 eager model before it counts, so the precision changes speed and,
  at most, how strong a search is, never a verdict.
* channels-last: a convolutional model's 4-D weights (and the inputs) in NHWC layout for the
  loop (:func:`audit.model.layout.channels_last`, checked on a probe batch).
* ``compile = true | "auto"``: ``torch.compile`` (Inductor) of the network, used for the
  forward and, through AOTAutograd, the backward pass. One compiled module per model and
  process (:data:`_STATES`), so checks, ε and steps share it; a graph per input shape
  (``dynamic=False``) up to :data:`MAX_SHAPES` shapes, later shapes run eager. ``"auto"``
  compiles on CUDA only (on a CPU the compilation rarely pays for itself). A failure at the
  first call (no C compiler, an unsupported op) falls back to the eager network for good,
  with the reason kept for the run's metadata.
* batch size: :meth:`FastPath.batch_size` measures one forward+backward's memory on a probe
  batch (CUDA: the allocator's peak; CPU: the activations, :func:`audit.batching.bytes_per_sample`)
  and fits the batch into the free memory (:func:`audit.batching.fit_batch`); out-of-memory
  errors still halve it (:func:`audit.batching.batched`).

Measured: docs/performance.md (and ``bench/gpu.py`` for the GPU figures).
"""
from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch

from .batching import bytes_per_sample, fit_batch, is_oom

__all__ = ["FastSettings", "FastPath", "PRECISIONS", "MAX_SHAPES", "SYNC_EVERY", "fast_metadata",
           "sync_every", "parse_compile"]

PRECISIONS = ("fp32", "bf16")
#: input shapes compiled per model; a later new shape runs eager (no recompilation storm when
#: batches shrink as samples are fooled)
MAX_SHAPES = 4


def parse_compile(value: Any) -> bool | str:
    """``false | true | "auto"`` (also the strings ``"false"``/``"off"``/``"true"``/``"on"``, as a
    command-line flag gives them); ValueError for anything else."""
    if isinstance(value, bool) or value == "auto":
        return value
    text = str(value).strip().lower()
    if text in ("true", "on", "1", "yes"):
        return True
    if text in ("false", "off", "0", "no"):
        return False
    if text == "auto":
        return "auto"
    raise ValueError(f"compile must be true, false or \"auto\", got {value!r}")


@dataclass(frozen=True)
class FastSettings:
    """The fast path's settings (``[audit] precision``, ``compile``; flags ``--precision``,
    ``--compile``). ``channels_last``: convolutional weights in NHWC for the loops."""

    precision: str = "fp32"
    compile: bool | str = False
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile is not True and self.compile is not False and self.compile != "auto":
            raise ValueError(f"compile must be true, false or \"auto\", got {self.compile!r}")

    @classmethod
    def of(cls, config: Any) -> "FastSettings":
        """The settings of an :class:`~audit.config.AuditConfig` (defaults when it has none)."""
        return cls(precision=getattr(config, "precision", "fp32") or "fp32",
                   compile=getattr(config, "compile", False))

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32, no autocast)."""
        return torch.bfloat16 if self.precision == "bf16" else None


@dataclass
class _State:
    """What one model's fast path has done in this process (shared by every check)."""

    network: Any = None  #: the network compiled (a replaced ``model.net`` compiles again)
    compiled: Any = None  #: torch.compile's module, None when eager
    status: str = "off"  #: "off", "compiling", "compiled", "eager"
    reason: str = "compile = false"
    shapes: set = field(default_factory=set)
    seconds: float = 0.0  #: compilation time (first calls of each shape)
    batch_sizes: dict = field(default_factory=dict)  #: role -> batch size chosen
    per_sample: dict = field(default_factory=dict)  #: (precision, layout, C x H x W, dtype) -> bytes measured
    layout: str = ""


_STATES: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()


def _state(model: Any) -> _State:
    st = _STATES.get(model)
    if st is None:
        st = _STATES[model] = _State()
    return st


def _why(e: BaseException) -> str:
    line = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


class FastPath:
    """The model (an :class:`~audit.model.wrapper.AuditModel`) as a gradient loop calls it.

    ``fp(x)``: ``x`` (N, C, H, W) float in [0, 1] on the model's device (it may require grad)
    -> float32 logits (N, K), under bf16 autocast when ``settings.precision == "bf16"``,
    through the compiled network when compilation is on and works (``compiled=False``: the
    eager network, e.g. while module hooks are registered), with channels-last inputs while
    :meth:`layout` is active. ``compare=False`` for a randomized model (its outputs differ between calls anyway)."""

    def __init__(self, model: Any, settings: FastSettings | None = None, *, compare: bool = True) -> None:
        self.model = model
        self.s = settings or FastSettings()
        self.device = torch.device(getattr(model, "device", "cpu"))
        self.compare = compare
        self.state = _state(model)
        self._nhwc = False
        #: whether this path's calls go through the compiled network (the settings allow it)
        self.compiling = False
        self._decide_compile()

    # ------------------------------------------------------------------ settings
    @property
    def amp(self) -> torch.dtype | None:
        return self.s.amp

    @property
    def approximate(self) -> bool:
        """Whether the logits may differ from the fp32 eager model's by rounding."""
        return self.amp is not None or (self.compiling and self.state.compiled is not None)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the model's device type, enabled under bf16 only."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp is not None)

    def _decide_compile(self) -> None:
        st, want = self.state, self.s.compile
        net = getattr(self.model, "net", None)
        if st.network is not None and st.network is not net:  # a replaced network: start again
            st.compiled, st.shapes, st.status = None, set(), "off"
        if want is False:
            if st.compiled is None:
                st.status, st.reason = "off", "compile = false"
            return
        if want == "auto" and self.device.type != "cuda":
            if st.compiled is None:
                st.status, st.reason = "off", "compile = \"auto\" compiles on CUDA only (on a CPU it rarely pays)"
            return
        self.compiling = True
        if st.compiled is not None or st.status == "eager":
            return  # compiled already, or failed already (for good)
        if net is None or isinstance(net, torch.jit.ScriptModule):
            st.status, st.reason = "eager", "a TorchScript program is not compiled"
            return
        try:
            st.compiled = torch.compile(net, dynamic=False)
            st.network, st.status, st.reason = net, "compiling", "compiled at the first call of each input shape"
        except Exception as e:  # noqa: BLE001 - torch.compile unavailable (Python version, platform)
            st.status, st.reason = "eager", f"torch.compile failed: {_why(e)}"

    # ------------------------------------------------------------------ calls
    def __call__(self, x: torch.Tensor, *, compiled: bool = True) -> torch.Tensor:
        if self._nhwc and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return (self._forward(x) if compiled else self.model(x)).float()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.state
        net = st.compiled
        if not self.compiling or net is None or st.network is not self.model.net:
            return self.model(x)
        shape = tuple(x.shape)
        if shape in st.shapes:
            try:
                return self.model(x, net=net)
            except Exception as e:  # noqa: BLE001 - a recompilation (another grad or autocast mode) failed
                if is_oom(e):
                    raise
                self._give_up(f"torch.compile failed on a later call: {_why(e)}")
                return self.model(x)
        if len(st.shapes) >= MAX_SHAPES:
            return self.model(x)
        t0 = time.perf_counter()
        try:  # the first call of this shape compiles: catch a failure and stay eager
            out = self.model(x, net=net)
            ok = out.dim() == 2 and bool(torch.isfinite(out.detach()).all())
            if ok and self.compare:
                with torch.no_grad():
                    ref = self.model(x.detach()).float()
                o = out.detach().float()
                tol = (5e-2 if self.amp is not None else 1e-3) * (1.0 + float(ref.abs().max()))
                ok = o.shape == ref.shape and float((o - ref).abs().max()) <= tol
            if not ok:
                self._give_up("the compiled network's outputs differ from the eager ones")
                return self.model(x)
        except Exception as e:  # noqa: BLE001 - no C compiler, an unsupported op, ...
            if is_oom(e):
                raise
            self._give_up(f"torch.compile failed at the first call: {_why(e)}")
            return self.model(x)
        st.shapes.add(shape)
        st.seconds += time.perf_counter() - t0
        st.status, st.reason = "compiled", f"{len(st.shapes)} input shape(s), {st.seconds:.1f} s compiling"
        return out

    def _give_up(self, why: str) -> None:
        st = self.state
        st.compiled, st.shapes, st.status, st.reason = None, set(), "eager", why

    # ------------------------------------------------------------------ layout and batch size
    @contextlib.contextmanager
    def layout(self, probe: torch.Tensor) -> Iterator[str]:
        """The block with the model's weights (and inputs) in channels-last layout when the
        settings allow and the model has convolutions and keeps its outputs
        (:func:`audit.model.layout.channels_last`, ``probe`` (N, C, H, W) on the device).
        Yields the layout (``"channels_last"`` or ``"contiguous (<why>)"``)."""
        from .model.layout import channels_last

        with channels_last(self.model, probe, enabled=self.s.channels_last and len(probe) > 0,
                           compare=self.compare) as lay:
            self.state.layout = lay
            self._nhwc = lay == "channels_last"
            try:
                yield lay
            finally:
                self._nhwc = False

    def batch_size(self, probe: torch.Tensor, requested: int, *, role: str, factor: float = 1.0) -> int:
        """The batch size for a loop (``role`` names it in the metadata): at most ``requested``
        and at most what fits in the free memory at the per-sample cost of one forward+backward
        measured on ``probe`` (N, C, H, W) once per model, precision, layout and image shape,
        times ``factor`` (the loop's extra tensors per sample, e.g. captum's steps). A
        measurement that fails keeps ``requested``."""
        key = (self.s.precision, self._nhwc, tuple(probe.shape[1:]), probe.dtype)
        try:
            per = self.state.per_sample.get(key)
            if per is None:
                per = self.state.per_sample[key] = bytes_per_sample(self._step, probe, self.model)
            bs = fit_batch(per * factor, self.device, requested)
        except Exception as e:  # noqa: BLE001 - measuring must never sink a check
            if is_oom(e):
                bs = max(1, requested // 2)
            else:
                bs = requested
        self.state.batch_sizes[role] = bs
        return bs

    def _step(self, x: torch.Tensor) -> None:
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():  # eager: the probe's shape must not take one of the compiled shapes
            out = self(xg, compiled=False)
            (g,) = torch.autograd.grad(out.float().sum(), xg)
        del g


def fast_metadata(model: Any, settings: FastSettings) -> dict[str, Any]:
    """``{"precision", "compile" (the setting), "compile_status" ("off", "compiling",
    "compiled", "eager"), "compile_reason", "channels_last" (the layout used), "batch_sizes"
    (role -> chosen)}`` of ``model``'s fast path in this process."""
    st = _STATES.get(model) or _State()
    out = asdict(settings)
    out.pop("channels_last", None)
    out.update(compile_status=st.status, compile_reason=st.reason, channels_last=st.layout or "not used",
               batch_sizes=dict(st.batch_sizes))
    return out


#: steps between the host-device synchronizations of a gradient loop on an accelerator (a
#: sample done, e.g. fooled, leaves the batch at the next one; in between it is masked)
SYNC_EVERY = 8


def sync_every(device: torch.device | str) -> int:
    """Steps between a loop's checks of which samples are done: 1 on a CPU (checking costs
    nothing there, and a sample leaves the batch at once), :data:`SYNC_EVERY` on an
    accelerator (no ``.item()``/``bool(tensor)``/boolean-mask indexing in the steps between:
    each is a host-device synchronization that stalls the GPU's queue)."""
    return 1 if torch.device(device).type == "cpu" else SYNC_EVERY

"""The fast path of the attacks' hot loops: channels-last memory layout, and a compiled copy
of the network for the gradient-free forward passes.

PyTorch's convolutions on CPU (oneDNN) and GPU (cuDNN) run faster on NHWC ("channels last")
weights and activations than on the default NCHW: on this project's demo CNN, 2 CPU threads,
batch 40 at 3×64×64, a forward pass is about 2.4× and a forward+backward to the input about
5× faster (``bench/adversarial.py`` measures the check as a whole). The numbers are those of
the same model up to float rounding (a different summation order inside the convolution).

:func:`channels_last` converts a model's 4-D parameters for the duration of a ``with`` block
and puts the original tensors back after it. The choice is a fixed rule, never a timing, so
that the same seed gives the same numbers: a model with at least one ``nn.Conv2d`` is
converted unless the conversion fails or changes the outputs on a probe batch (e.g. a
``.view`` on an activation that channels-last makes non-contiguous), in which case it is left
as it is and the reason is returned.

:class:`CompiledForward` is ``torch.compile(net, dynamic=True)`` (Inductor) used only for
forward passes without gradients (Square's queries: thousands per sample), where it pays: on
the demo CNN, 2 CPU threads, batch 40, 7.7 ms per forward against 18.2 ms eager channels-last
(2.4×), after about 20 s of compilation, once per model and process (``dynamic=True``: no
recompilation as the batch shrinks). It is checked against the eager network on a probe
batch first; any failure, then or later, falls back to the eager network for good and says
why. Its outputs equal the eager ones up to float rounding; the check confirms every
adversarial it finds with the eager model before it counts.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

__all__ = ["channels_last", "CompiledForward"]


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextmanager
def channels_last(model: nn.Module, probe: torch.Tensor, *, enabled: bool = True, compare: bool = True
                  ) -> Iterator[str]:
    """Run the block with ``model``'s 4-D parameters in channels-last layout.

    ``probe`` (N, C, H, W) float in [0, 1] on the model's device: a few inputs the model's
    outputs are compared on before and after the conversion (logits within 1e-3 of their
    scale, same predictions). Yields what was done, for the run's metadata:
    ``"channels_last"`` or ``"contiguous (<why>)"``. The original parameter tensors are
    restored on exit, also when the block raises. ``enabled=False`` leaves the model alone;
    ``compare=False`` (a randomized model, whose outputs differ between calls anyway) only
    requires finite outputs of the same shape.
    """
    if not enabled:
        yield "contiguous (channels-last turned off)"
        return
    if isinstance(model, torch.jit.ScriptModule) or not _has_conv2d(model):
        yield "contiguous (no nn.Conv2d in the model)"
        return
    params = [p for p in model.parameters() if p.dim() == 4]
    saved = [p.data for p in params]
    why = ""
    try:
        with torch.no_grad():
            before = model(probe).float()
            for p in params:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
            after = model(probe).float()
        scale = 1.0 + float(before.abs().max())
        if after.shape != before.shape or not torch.isfinite(after).all():
            why = "outputs changed under channels-last"
        elif compare and (float((after - before).abs().max()) > 1e-3 * scale
                          or not torch.equal(after.argmax(1), before.argmax(1))):
            why = "outputs changed under channels-last"
    except Exception as e:  # noqa: BLE001 - any failure keeps the model as it was
        why = f"channels-last failed: {type(e).__name__}"
    if why:
        for p, d in zip(params, saved):
            p.data = d
        yield f"contiguous ({why})"
        return
    try:
        yield "channels_last"
    finally:
        for p, d in zip(params, saved):
            p.data = d


class CompiledForward:
    """The logits of ``model`` (an :class:`~audit.model.wrapper.AuditModel`) through a compiled
    copy of its network, without gradients; ``__call__(x)`` (N, C, H, W) in [0, 1] -> float32
    logits (N, K), ``None`` when compilation failed (the caller uses the eager model).
    ``status``: ``"compiled (<seconds> s)"`` or ``"eager (<why>)"``, for the run's metadata.
    ``probe`` (N, C, H, W) on the model's device: the inputs the compiled and eager outputs
    are compared on (logits within 1e-3 of their scale, same predictions; ``compare=False``
    for a randomized model: finite outputs of the right shape only)."""

    def __init__(self, model: nn.Module, probe: torch.Tensor, *, compare: bool = True):
        import time

        self.model, self.net, self.status = model, None, ""
        #: the network compiled (the check recompiles when the model's ``net`` is replaced)
        self.network = model.net
        t0 = time.perf_counter()
        try:
            net = torch.compile(model.net, dynamic=True)
            with torch.no_grad():
                eager = model(probe).float()
                fast = model(probe, net=net).float()
            scale = 1.0 + float(eager.abs().max())
            if fast.shape != eager.shape or not torch.isfinite(fast).all() or (compare and (
                    float((fast - eager).abs().max()) > 1e-3 * scale or not torch.equal(fast.argmax(1), eager.argmax(1)))):
                self.status = "eager (the compiled network's outputs differ from the eager ones)"
                return
        except Exception as e:  # noqa: BLE001 - no compiler, unsupported ops, ...: stay eager
            self.status = f"eager (torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
            return
        self.net = net
        self.status = f"compiled ({time.perf_counter() - t0:.1f} s)"

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.net is None:
            return None
        try:
            with torch.no_grad():
                if len(x) == 1:  # a batch of one would be a new graph (size-1 specialization: ~7 s to compile)
                    return self.model(torch.cat([x, x]), net=self.net)[:1]
                return self.model(x, net=self.net)
        except Exception as e:  # noqa: BLE001
            self.net = None
            self.status = f"eager (the compiled network failed during the run: {type(e).__name__})"
            return None

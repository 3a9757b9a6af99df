"""The work units of the ``attribution`` check and their records.

* ``methods:k`` - method ``k``'s maps of every selected image (:func:`method_maps`);
* ``randomization:j`` - every method's maps of the sanity images on the model randomized down
  to the ``j``-th kept cascade step (:func:`cascade_maps`).

Both are deterministic given the :class:`~.plan.Plan` (SmoothGrad's noise and the cascade
are seeded from it), so they draw nothing from their unit generator. A method that raises is
recorded as failed (one line), so the others still run.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import field, replace

import torch

from audit.errors import first_line
from audit.fastpath import FastPath, FastSettings
from audit.records import record

from .methods import GRADIENT, AttrMethod
from .plan import Plan
from .sanity import cascade_step

__all__ = ["MethodMaps", "CascadeMaps", "method_maps", "cascade_maps"]


@record
class MethodMaps:
    """One method's maps: ``maps`` (N, H, W) float32 (NaN and inf zeroed), ``extras`` name ->
    (N,) float32 (``convergence_delta`` for Integrated Gradients), ``oom`` the internal batch
    sizes an out-of-memory error halved to, ``seconds`` wall-clock; or ``failed``, one line."""

    method: str
    maps: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)
    oom: list = field(default_factory=list)
    seconds: float = 0.0
    failed: str = ""


@record
class CascadeMaps:
    """The maps at one kept cascade step: ``layer`` the group randomized last, ``maps``
    method -> (n_sanity, H, W) float32, ``failed`` method -> one line (``"*"``: the cascade
    itself failed), ``seconds`` wall-clock."""

    layer: str
    maps: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    seconds: float = 0.0


def _settings_for(plan: Plan, net: torch.nn.Module):
    return replace(plan.settings, layer=net.get_submodule(plan.layer_name) if plan.layer_name else None,
                   oom_retries=[])


def method_maps(plan: Plan, method: AttrMethod, model, bar, fast: FastSettings | None = None) -> MethodMaps:
    """``method``'s maps of every planned image, span by span (``bar`` an inner progress bar
    factory, :meth:`audit.context.Context.bar`). A gradient method reaches the model through
    the fast path of ``fast`` (:mod:`audit.fastpath`: bf16 autocast, channels-last, compiled;
    its maps then differ from fp32 ones by rounding only); the others run it as it is."""
    net = plan.net_for(method, model)
    s = _settings_for(plan, net)
    dev = model.device
    path = FastPath(model, fast) if fast is not None and method.kind == GRADIENT and net is model else None
    t0 = time.perf_counter()
    try:
        outs, extras = [], {}
        with path.layout(plan.x[:2].to(dev)) if path is not None else contextlib.nullcontext():
            for i, j in bar(plan.spans, desc=method.name, unit="batch"):
                a, ex = method.attribute(path or net, plan.x[i:j].to(dev), plan.target[i:j].to(dev), s)
                outs.append(a.cpu())
                for key, v in ex.items():
                    extras.setdefault(key, []).append(v.cpu())
    except Exception as e:  # noqa: BLE001 - one method failing must not sink the others
        return MethodMaps(method.name, failed=first_line(e, 200, with_type=True))
    return MethodMaps(method.name, maps=torch.nan_to_num(torch.cat(outs)),
                      extras={k: torch.cat(v) for k, v in extras.items()}, oom=list(s.oom_retries),
                      seconds=round(time.perf_counter() - t0, 3))


def cascade_maps(plan: Plan, step: int, model) -> CascadeMaps:
    """Every planned method's maps of the sanity images (``plan.x[:n_sanity]``, explaining
    ``plan.target``) on the model randomized down to cascade step ``step``."""
    t0 = time.perf_counter()
    try:
        layer, net = cascade_step(plan.cascade_source(model), plan.cascade_seed, step)
    except Exception as e:  # noqa: BLE001 - reported as the randomization test failing
        return CascadeMaps("", failed={"*": first_line(e, 200, with_type=True)})
    dev = model.device
    xs, ts = plan.x[:plan.n_sanity].to(dev), plan.target[:plan.n_sanity].to(dev)
    maps, failed = {}, {}
    for m in plan.methods:
        try:
            maps[m.name] = m.attribute(net, xs, ts, _settings_for(plan, net))[0].cpu()
        except Exception as e:  # noqa: BLE001
            failed[m.name] = first_line(e, 200, with_type=True)
    return CascadeMaps(layer[4:] if layer.startswith("net.") else layer, maps, failed,
                       round(time.perf_counter() - t0, 3))

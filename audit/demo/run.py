"""``audit demo``: the whole battery on the bundled gym model (the dumbbell with an arm)."""
from __future__ import annotations

from pathlib import Path

from ..config import AuditConfig, parse_gate

#: gates the demo shows; a new user's audit.toml can start from these
DEMO_GATES = {"clean.accuracy": ">= 0.85", "clean.accuracy[class=*]": {"condition": ">= 0.6", "severity": "warn"},
              "adversarial.robust_accuracy[attack=worst,norm=linf,epsilon=0.0078]": {"condition": ">= 0.5",
                                                                                     "severity": "warn"}}
#: class_viz settings for the demo model: stronger rotation and shift robustness than the
#: check's defaults (10 deg, 0.05); on the gym model they join the skin-toned strokes of the
#: dumbbell picture into longer, more coherent limbs instead of scattered fragments
DEMO_CLASS_VIZ = {"rotate_deg": 30.0, "jitter": 0.1}
#: lighter sanity settings than the checks' defaults, so that the whole demo stays near a minute
#: on 2 CPU cores (the defaults are sized for an audit's evidence: docs/attribution.md,
#: docs/adversarial.md); the user's options win
DEMO_LIGHT = {"attribution": {"sanity_images": 8, "faithfulness_images": 8, "random_orders": 4, "curve_steps": 16,
                              "smoothgrad_samples": 16},
              "adversarial": {"probe_samples": 8}}


def load_demo(out: Path, cfg: AuditConfig, *, samples_per_class: int = 16, log=print, world=None):
    """Generate the demo's evaluation data under ``out/demo-data`` (deterministic for the
    seed), load the shipped model, and return (model, data, config). In a distributed run
    rank 0 writes the data and the other ranks wait for it. The demo's gates and class_viz
    settings apply where ``cfg`` sets none. Raises what ``load_model`` / ``load_data`` raise."""
    from ..data import load_data
    from ..model import load_model
    from . import MODEL_PATH, prepare

    root = Path(out) / "demo-data"
    if world is None or world.is_main:
        paths = prepare(root, n_per_class=samples_per_class, seed=cfg.seed)
    if world is not None and world.distributed:
        paths = world.from_main("demo-data", paths if world.is_main else None)
    log(f"demo data written to {root}")
    model = load_model(MODEL_PATH, device=cfg.device)
    data = load_data(paths["val"], model=model, samples=cfg.samples, seed=cfg.seed)
    if not cfg.gates:
        selected = cfg.selected_checks()
        cfg = cfg.replace(gates=[parse_gate(k, v) for k, v in DEMO_GATES.items() if k.split(".")[0] in selected])
    opts = dict(cfg.check_options)
    if "class_viz" in cfg.selected_checks():
        opts["class_viz"] = {**DEMO_CLASS_VIZ, **opts.get("class_viz", {})}  # the user's options win
    for name, light in DEMO_LIGHT.items():
        if name in cfg.selected_checks():
            opts[name] = {**light, **opts.get(name, {})}
    if "concepts" in paths and "bias" in cfg.selected_checks():
        opts.setdefault("bias", {}).setdefault("concepts", str(root / "concepts"))
    return model, data, cfg.replace(check_options=opts)

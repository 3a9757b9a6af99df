"""Benchmark of the ``adversarial`` check against foolbox, on the same model and samples.

(a) our full L∞ curve (the check with ``norms = ["linf"]``: FMN, FGSM, PGD, Square, noise,
    ε-sharing and early stop) over the ε list;
(b) foolbox ``LinfPGD()`` + ``FGSM()`` + ``LInfFMNAttack()`` with their default settings
    run over the same ε list, as a user would do by hand.

Prints robust accuracy per ε for both (ours: per-sample worst case; foolbox: each attack and
their per-sample worst case), the wall times and, last, ``time_ratio=<ours/foolbox>``.
Uses the demo model (``audit/demo/assets/gymnet.safetensors``) when it exists, else a tiny
model trained on the spot. CPU only here; the GPU part of issue 3 (ResNet-50 img-steps/s)
is not implemented in this script.

    python bench/adversarial.py [--threads 1] [--samples 0] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(samples: int, device: str):
    import audit
    import audit.demo as demo

    if demo.MODEL_PATH.exists():
        model = audit.load_model(demo.MODEL_PATH, device=device)
        tmp = tempfile.mkdtemp(prefix="advbench-")
        paths = demo.prepare(tmp)
        data = audit.load_data(paths["val"], model=model, samples=samples or None)
        eps = None  # the check's defaults for the input size
        return model, data, eps, "demo GymNet 3x64x64"
    from audit import AuditData, AuditModel, ModelSpec
    from tests.tinymodels import PATTERNS, make_patterns, train_tiny

    net = train_tiny()
    for p in net.parameters():
        p.requires_grad_(False)
    model = AuditModel(net, ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize().eval()
    x, y = make_patterns(16, seed=7)
    data = AuditData(x, y, list(PATTERNS), [str(i) for i in range(len(y))])
    eps = [v / 255 for v in (2, 4, 8, 12, 16, 24, 32)]
    return model, data, eps, "tiny TinyNet 3x16x16 (demo model not built yet)"


def main(argv=None) -> float:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=0, help="0: all")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import foolbox as fb

    from audit import AuditConfig
    from audit.context import Context
    from attacks.adversarial import AdversarialCheck, default_epsilons

    model, data, eps, what = load(a.samples, a.device)
    model.eval()
    eps = eps or default_epsilons("linf", data.input_shape)
    x, y = data.x, data.y
    print(f"model: {what}; {len(y)} samples; threads={a.threads}; device={model.device}")
    print("epsilons (x255):", [round(e * 255, 2) for e in eps])

    cfg = AuditConfig(checks=["adversarial"], batch_size=128,
                      check_options={"adversarial": {"norms": ["linf"], "epsilons": {"linf": eps}, "max_samples": 0}})
    t0 = time.perf_counter()
    ctx = Context(model=model, data=data, config=cfg, seed=0, logits=model.logits(x)).scoped(
        "adversarial", declared=AdversarialCheck.publishes)
    res = AdversarialCheck(cfg.options_for("adversarial")).run(ctx)
    t_ours = time.perf_counter() - t0
    ours = {m.qualifiers["epsilon"]: m.value for m in res.metrics if m.name == "robust_accuracy"
            and m.qualifiers.get("attack") == "worst" and "class" not in m.qualifiers and m.qualifiers["epsilon"] > 0}

    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=model.device)
    xd, yd = x.to(model.device), y.to(model.device)
    t0 = time.perf_counter()
    theirs, any_succ = {}, None
    for atk in (fb.attacks.LinfPGD(), fb.attacks.FGSM(), fb.attacks.LInfFMNAttack()):
        _, _, succ = atk(fmodel, xd, yd, epsilons=eps)
        theirs[type(atk).__name__] = (~succ).float().mean(1).tolist()
        any_succ = succ if any_succ is None else (any_succ | succ)
    t_fb = time.perf_counter() - t0
    theirs["worst"] = (~any_succ).float().mean(1).tolist()

    names = list(theirs)
    print(f"{'eps*255':>8} {'ours':>7} " + " ".join(f"{n:>14}" for n in names))
    weaker = 0
    for k, e in enumerate(eps):
        o = ours[min(ours, key=lambda v: abs(v - e))]
        row = " ".join(f"{theirs[n][k]:>14.3f}" for n in names)
        flag = "" if o <= min(theirs[n][k] for n in names) + 1e-9 else "  <- ours weaker"
        weaker += bool(flag)
        print(f"{e * 255:>8.2f} {o:>7.3f} {row}{flag}")
    print(f"time ours {t_ours:.2f} s (queries {res.data['queries']}; per attack {res.data['timings']}), foolbox {t_fb:.2f} s")
    print(f"epsilons where ours is weaker than a foolbox attack: {weaker}")
    t_attack = res.data["timings"]["attacks_total"]
    print(f"ours: {t_attack:.2f} s attacking + {t_ours - t_attack:.2f} s plots/metrics; "
          f"ratio including plots {t_ours / t_fb:.3f}")
    ratio = t_attack / t_fb
    print(f"time_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()

"""Benchmark of the ``adversarial`` check against its peers, on the same model, samples and ε.

(a) ours: the check with ``norms = ["linf"]`` at ``--budget`` (default standard) over the ε list
    (default 2/255, 4/255, 8/255): its per-sample worst case and its wall time;
(b) torchattacks ``AutoAttack(version="standard")`` (APGD-CE, APGD-T, FAB-T, Square 5,000
    queries; Croce & Hein 2020) run at each ε, as a user would do by hand (``--no-autoattack``
    skips it: minutes on CPU);
(c) foolbox ``LinfPGD()`` + ``FGSM()`` + ``LInfFMNAttack()`` with their default settings over
    the same ε list.

Prints robust accuracy per ε for each (ours: the worst case; AutoAttack; foolbox: each attack
and their per-sample worst case), the wall times, whether ours is within +0.01 of AutoAttack
at every ε, and, last, ``time_ratio=<ours/AutoAttack>`` (``<ours/foolbox>`` without
AutoAttack). Uses the demo model (``audit/demo/assets/gymnet.safetensors``) on a class-stratified
subset of ``--samples`` of its validation images (the check's own default subset: 48), else a
tiny model trained on the spot. ``--wrap shattered`` puts the demo network behind
``z + 0.001·sin(20000·z)`` (Athalye et al. 2018's shattered gradients; same decisions);
``--wrap randomized`` behind Gaussian noise of σ = 8/255 drawn on every call (a randomized
model: the check attacks it with EOT; AutoAttack's standard version does not, and a
randomized model's robust accuracy is itself random, so both are measured over the same
number of draws: the bench counts a sample robust only if 20 fresh draws all classify the
adversarial correctly).

    python bench/adversarial.py [--threads 1] [--samples 48] [--budget standard] [--eps 2,4,8]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Randomized(nn.Module):
    """``net(z + N(0, σ²))`` with σ = 8/255, fresh noise on every call: a randomized defence
    (its outputs differ between identical calls; the check attacks it with EOT)."""

    def __init__(self, net: nn.Module, sigma: float = 8 / 255):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, z):
        return self.net(z + self.sigma * torch.randn_like(z))


class Shattered(nn.Module):
    """``net(z + 0.001·sin(20000·z))``: the same decisions, useless input gradients."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z):
        return self.net(z + 0.001 * torch.sin(20000 * z))


def load(samples: int, device: str, wrap: str):
    import audit
    import audit.demo as demo
    from audit.data import stratified_indices

    if demo.MODEL_PATH.exists():
        model = audit.load_model(demo.MODEL_PATH, device=device)
        paths = demo.prepare(tempfile.mkdtemp(prefix="advbench-"))
        data = audit.load_data(paths["val"], model=model)
        what = "demo GymNet 3x64x64"
    else:
        from audit import AuditData, AuditModel, ModelSpec
        from tests.tinymodels import PATTERNS, make_patterns, train_tiny

        net = train_tiny()
        model = AuditModel(net, ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize()
        x, y = make_patterns(16, seed=7)
        data = AuditData(x, y, list(PATTERNS), [str(i) for i in range(len(y))])
        what = "tiny TinyNet 3x16x16 (demo model not built yet)"
    for p in model.parameters():
        p.requires_grad_(False)
    if wrap == "shattered":
        model.net = Shattered(model.net)
        what += " behind z + 0.001 sin(20000 z)"
    elif wrap == "randomized":
        model.net = Randomized(model.net)
        what += " behind z + N(0, (8/255)^2) noise drawn on every call"
    if samples and samples < len(data):
        idx = stratified_indices(data.y, samples, 0)
        data = type(data)(data.x[idx], data.y[idx], data.class_names, [data.ids[i] for i in idx.tolist()])
    return model.eval(), data, what


def ours(model, data, eps, budget):
    from audit import AuditConfig
    from audit.context import Context
    from attacks.adversarial import AdversarialCheck

    cfg = AuditConfig(checks=["adversarial"], batch_size=128, check_options={"adversarial": {
        "norms": ["linf"], "epsilons": {"linf": eps}, "max_samples": 0, "budget": budget}})
    t0 = time.perf_counter()
    ctx = Context(model=model, data=data, config=cfg, seed=0, logits=model.logits(data.x)).scoped(
        "adversarial", declared=AdversarialCheck.publishes)
    res = AdversarialCheck(cfg.options_for("adversarial")).run(ctx)
    wall = time.perf_counter() - t0
    if res.error:
        raise SystemExit(f"the check failed: {res.error}")
    rows = {m.qualifiers["epsilon"]: m.value for m in res.metrics if m.name == "robust_accuracy"
            and m.qualifiers.get("attack") == "worst" and "class" not in m.qualifiers and m.qualifiers["epsilon"] > 0}
    return [rows[min(rows, key=lambda v: abs(v - e))] for e in eps], wall, res


def robust_on_draws(model, xadv, y, draws: int = 20):
    """(n,) bool: correct on ``draws`` forward passes (one for a deterministic model gives
    the same answer every time)."""
    ok = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(draws):
            ok &= (model(xadv).argmax(1) == y).cpu()
    return ok


def autoattack(model, x, y, eps):
    import torchattacks

    accs, t0 = [], time.perf_counter()
    for e in eps:
        aa = torchattacks.AutoAttack(model, norm="Linf", eps=e, version="standard", n_classes=model.num_classes, seed=0)
        adv = aa(x, y)
        accs.append(float(robust_on_draws(model, adv, y).double().mean()))
    return accs, time.perf_counter() - t0


def foolbox(model, x, y, eps):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=model.device)
    t0 = time.perf_counter()
    out, any_succ = {}, None
    for atk in (fb.attacks.LinfPGD(), fb.attacks.FGSM(), fb.attacks.LInfFMNAttack()):
        _, advs, _ = atk(fmodel, x, y, epsilons=eps)
        succ = torch.stack([~robust_on_draws(model, a, y) for a in advs])  # (ε, n); 20 draws when randomized
        out[type(atk).__name__] = (~succ).double().mean(1).tolist()
        any_succ = succ if any_succ is None else (any_succ | succ)
    out["foolbox worst"] = (~any_succ).double().mean(1).tolist()
    return out, time.perf_counter() - t0


def main(argv=None) -> float:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=48, help="class-stratified subset (0: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default="standard", choices=("fast", "standard", "thorough"))
    ap.add_argument("--eps", default="2,4,8", help="L-inf epsilons in 1/255, comma-separated")
    ap.add_argument("--wrap", default="none", choices=("none", "shattered", "randomized"))
    ap.add_argument("--no-autoattack", action="store_true", help="skip torchattacks' AutoAttack (minutes on CPU)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, data, what = load(a.samples, a.device, a.wrap)
    eps = [float(v) / 255 for v in a.eps.split(",")]
    x, y = data.x.to(model.device), data.y.to(model.device)
    print(f"model: {what}; {len(y)} samples; threads={a.threads}; device={model.device}; budget={a.budget}")
    print("epsilons (x255):", [round(e * 255, 2) for e in eps])

    mine, t_ours, res = ours(model, data, eps, a.budget)
    table = {f"ours ({a.budget})": mine}
    t_aa = None
    if not a.no_autoattack:
        table["AutoAttack"], t_aa = autoattack(model, x, y, eps)
    fb_rows, t_fb = foolbox(model, x, y, eps)
    table.update(fb_rows)

    names = list(table)
    print(f"{'eps*255':>8} " + " ".join(f"{n:>16}" for n in names))
    for k, e in enumerate(eps):
        print(f"{e * 255:>8.2f} " + " ".join(f"{table[n][k]:>16.3f}" for n in names))
    t_attack = res.data["timings"]["attacks_total"]
    print(f"time ours {t_ours:.1f} s ({t_attack:.1f} s attacking; passes {res.data['queries']['forwards']} forward, "
          f"{res.data['queries']['backwards']} backward), foolbox {t_fb:.1f} s"
          + (f", AutoAttack {t_aa:.1f} s" if t_aa is not None else ""))
    print("per attack (s):", {k: v for k, v in res.data["timings"].items() if k.endswith("_linf")})
    print(f"layout {res.data.get('layout')}; eot {res.data.get('eot', {}).get('samples')}; diagnostics "
          f"{res.data.get('diagnostics', {}).get('linf')}")
    print("findings:", sorted({f.code for f in res.findings}))
    weaker_fb = sum(mine[k] > min(fb_rows[n][k] for n in fb_rows) + 1e-9 for k in range(len(eps)))
    print(f"epsilons where ours is weaker than a foolbox attack: {weaker_fb}")
    if t_aa is not None:
        gap = max(m - t for m, t in zip(mine, table["AutoAttack"]))
        print(f"largest (ours - AutoAttack) robust accuracy: {gap:+.3f} (target <= +0.01: "
              f"{'met' if gap <= 0.01 + 1e-9 else 'NOT met'})")
        ratio = t_ours / t_aa
    else:
        ratio = t_ours / t_fb
    print(f"time_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()

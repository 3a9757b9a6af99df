"""The gradient loops at GPU speed (issue 18): this project's fast path against its peers, in one
run that fits a device's limits (about 8 minutes on an H100/H200).

On ResNet-50 and ViT-B/16 (torchvision, random weights), 224 px, batch 256:

* ``pgd`` / ``apgd``: img-steps/s (one forward+backward of one image = one img-step, counted by
  the objective) and peak GPU memory of this project's PGD and APGD-CE in fp32, bf16 +
  channels-last, and bf16 + channels-last + ``torch.compile`` (``first_call_s``: the first
  call, compilation included), against torchattacks ``PGD`` / ``APGD`` and foolbox ``LinfPGD``
  (eager fp32, as a user runs them); ε = 1e-6, so that (next to) no sample is fooled and every
  step runs on the whole batch (speed does not depend on ε);
* ``check_vs_autoattack`` (ResNet-50): the ``adversarial`` check's whole L-inf curve (budget
  standard) against torchattacks ``AutoAttack(version="standard")`` at the same ε, wall time and
  robust accuracy (labels: the model's own predictions; with random weights nearly every sample
  falls at once, so this times the machinery more than a long fight: a trained model's figure
  needs its weights, which the device cannot download);
* ``class_viz``: img-steps/s of class visualization (the project's ``visualize``) on a batch of
  classes for a few steps, extrapolated to 1,000 classes x 512 steps (stated as extrapolated);
* ``ig``: Integrated Gradients with 50 steps, the project's (captum's IG through the fast path)
  against captum's on the plain model, img-steps/s.

A peer that is not installed is skipped and the outputs say so; a section that would run past
``--budget-s`` is skipped and listed. Writes ``gpu_bench.json`` and ``gpu_bench.md`` (a table)
into ``--out`` and prints the table. ``--smoke``: tiny models and sizes on the CPU, to check the
script end to end (figures meaningless).

    PYTHONPATH=. python bench/gpu.py --out OUT [--smoke] [--budget-s 450] [--no-compile]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks.adversarial.apgd import APGDCE  # noqa: E402
from attacks.adversarial.attacks import PGD  # noqa: E402
from attacks.adversarial.objective import Objective  # noqa: E402
from audit import AuditModel, ModelSpec  # noqa: E402
from audit.fastpath import FastPath, FastSettings  # noqa: E402

FULL = dict(hw=224, batch=256, steps=10, check_n=64, eps=[1 / 255, 2 / 255, 4 / 255], viz_classes=64, viz_steps=16,
            ig_n=16, ig_steps=50, classes=1000)
SMOKE = dict(hw=32, batch=4, steps=2, check_n=4, eps=[1 / 255, 4 / 255], viz_classes=2, viz_steps=2, ig_n=2,
             ig_steps=4, classes=10)
VARIANTS = {"fp32": FastSettings("fp32", False, False), "bf16+cl": FastSettings("bf16", False, True),
            "bf16+cl+compile": FastSettings("bf16", True, True)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None


def build(arch: str, smoke: bool, dev: torch.device, classes: int, hw: int) -> AuditModel:
    """A torchvision network with random weights behind the audit's wrapper (ImageNet mean/std)."""
    import torchvision

    torch.manual_seed(0)
    if arch == "resnet50":
        net = torchvision.models.resnet18(num_classes=classes) if smoke else torchvision.models.resnet50()
    else:
        from torchvision.models.vision_transformer import VisionTransformer

        net = (VisionTransformer(image_size=hw, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                                 num_classes=classes) if smoke else torchvision.models.vit_b_16())
    for p in net.parameters():
        p.requires_grad_(False)
    spec = ModelSpec(input_shape=(3, hw, hw), class_names=[f"c{i}" for i in range(classes)],
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    model = AuditModel(net.eval(), spec)
    model.to(dev)
    return model.finalize().eval()


class Bench:
    def __init__(self, args) -> None:
        self.args, self.sizes = args, SMOKE if args.smoke else FULL
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.notes: list[str] = []

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def record(self, **row) -> None:
        """One measurement: printed, and saved at once to ``gpu_bench.partial.json`` (kept if the
        run is cut short)."""
        row = {k: v for k, v in row.items() if v is not None}
        self.rows.append(row)
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        (Path(self.args.out) / "gpu_bench.partial.json").write_text(json.dumps({"rows": self.rows, "notes": self.notes}))

    @staticmethod
    def compiled(path: FastPath) -> str | None:
        """The compile status of ``path`` for a row (None when it does not compile)."""
        if not path.compiling:
            return None
        st = path.state
        return f"{st.status} ({len(st.shapes)} shapes)" if st.status == "compiled" else f"{st.status}: {st.reason}"

    def timed(self, fn, warm=None) -> tuple[float, float | None, object]:
        """(seconds of ``fn()``, seconds of ``warm()`` run first (compilation), ``fn``'s value)."""
        first = None
        if warm is not None:
            _sync(self.dev)
            t = time.perf_counter()
            warm()
            _sync(self.dev)
            first = round(time.perf_counter() - t, 2)
        _peak_reset(self.dev)
        _sync(self.dev)
        t = time.perf_counter()
        out = fn()
        _sync(self.dev)
        return time.perf_counter() - t, first, out

    # ------------------------------------------------------------------ sections
    def attacks(self, arch: str, model: AuditModel, x: torch.Tensor, y: torch.Tensor) -> None:
        s, eps = self.sizes, 1e-6  # next to nothing is fooled: every step runs on the whole batch (one shape)
        gen = torch.Generator().manual_seed(0)
        variants = {k: v for k, v in VARIANTS.items() if not (self.args.no_compile and v.compile)}
        for name, cls in (("pgd", PGD), ("apgd", APGDCE)):
            for label, fs in variants.items():
                if self.left() < 30:
                    self.notes.append(f"{arch} {name} {label}: skipped (time budget)")
                    continue
                path = FastPath(model, fs, compare=False)
                with path.layout(x[:4]):
                    obj = Objective(model, path=path)
                    dt, first, _ = self.timed(lambda: cls(steps=s["steps"]).run(obj, x, y, eps, "linf", gen=gen),
                                              warm=lambda: cls(steps=1).run(obj, x, y, eps, "linf", gen=gen))
                    steps = obj.backwards - len(x) * (1 + (name == "apgd"))  # less the warm-up's
                self.record(section=name, model=arch, impl=f"audit {label}", img_steps_per_s=round(steps / dt, 1),
                            peak_gib=_peak_gib(self.dev), first_call_s=first, compile=self.compiled(path))
        self._peers(arch, model, x, y, eps)

    def _peers(self, arch: str, model: AuditModel, x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
        steps = self.sizes["steps"]
        n = len(x) * steps
        try:
            import torchattacks
        except ImportError:
            self.notes.append("torchattacks not installed: its PGD, APGD and AutoAttack skipped")
            torchattacks = None
        if torchattacks is not None:
            for name, atk in (("pgd", torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps)),
                              ("apgd", torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1))):
                if self.left() < 30:
                    self.notes.append(f"{arch} torchattacks {name}: skipped (time budget)")
                    continue
                dt, _, _ = self.timed(lambda: atk(x, y))
                self.record(section=name, model=arch, impl="torchattacks", img_steps_per_s=round(n / dt, 1),
                            peak_gib=_peak_gib(self.dev))
        try:
            import foolbox as fb
        except ImportError:
            self.notes.append("foolbox not installed: its LinfPGD skipped")
            return
        if self.left() < 30:
            self.notes.append(f"{arch} foolbox pgd: skipped (time budget)")
            return
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        attack = fb.attacks.LinfPGD(steps=steps, abs_stepsize=eps / 4)
        dt, _, _ = self.timed(lambda: attack(fmodel, x, y, epsilons=eps))
        self.record(section="pgd", model=arch, impl="foolbox LinfPGD", img_steps_per_s=round(n / dt, 1),
                    peak_gib=_peak_gib(self.dev))

    def check_vs_autoattack(self, arch: str, model: AuditModel, x: torch.Tensor, y: torch.Tensor) -> None:
        from audit.config import AuditConfig
        from audit.data import AuditData
        from audit.runner import run_audit

        eps = self.sizes["eps"]
        names = model.class_names
        data = AuditData(x.cpu(), y.cpu(), names, [str(i) for i in range(len(y))])
        variants = [("bf16+cl", False)] + ([] if self.args.no_compile else [("bf16+cl+compile", True)])
        for label, comp in variants:
            if self.left() < 60:
                self.notes.append(f"{arch} check {label}: skipped (time budget)")
                continue
            cfg = AuditConfig(checks=["adversarial"], batch_size=len(y), precision="bf16", compile=comp,
                              check_options={"adversarial": {"norms": ["linf"], "epsilons": {"linf": eps},
                                                             "budget": "standard", "max_samples": 0}})
            dt, _, res = self.timed(lambda: run_audit(model, data, cfg, progress=False))
            adv = next(c for c in res.checks if c.name == "adversarial")
            curve = {round(m.qualifiers["epsilon"], 4): m.value for m in adv.metrics if m.name == "robust_accuracy"
                     and m.qualifiers.get("attack") == "worst" and "class" not in m.qualifiers
                     and m.qualifiers.get("epsilon", 0) > 0}
            self.record(section="check_vs_autoattack", model=arch, impl=f"audit check {label}", seconds=round(dt, 1),
                        robust_accuracy=curve, error=adv.error, peak_gib=_peak_gib(self.dev))
        try:
            import torchattacks
        except ImportError:
            return
        if self.left() < 60:
            self.notes.append(f"{arch} AutoAttack: skipped (time budget)")
            return
        xs, ys = x.to(self.dev), y.to(self.dev)

        def autoattack():
            out = {}
            for e in eps:
                aa = torchattacks.AutoAttack(model, norm="Linf", eps=e, version="standard", n_classes=len(names), seed=0)
                with torch.no_grad():
                    out[round(e, 4)] = float((model(aa(xs, ys)).argmax(1) == ys).float().mean())
            return out

        dt, _, curve = self.timed(autoattack)
        self.record(section="check_vs_autoattack", model=arch, impl="torchattacks AutoAttack standard",
                    seconds=round(dt, 1), robust_accuracy=curve, peak_gib=_peak_gib(self.dev))

    def class_viz(self, arch: str, model: AuditModel) -> None:
        from probes.class_viz.optimize import visualize

        s = self.sizes
        variants = {k: v for k, v in VARIANTS.items() if k != "fp32" and not (self.args.no_compile and v.compile)}
        probe = torch.full((2, 3, s["hw"], s["hw"]), 0.5, device=self.dev)
        for label, fs in variants.items():
            if self.left() < 30:
                self.notes.append(f"{arch} class_viz {label}: skipped (time budget)")
                continue
            path = FastPath(model, fs, compare=False)
            kw = dict(lr=0.05, image_hw=(s["hw"], s["hw"]), path=path)
            targets = list(range(s["viz_classes"]))
            with path.layout(probe):
                dt, first, _ = self.timed(
                    lambda: visualize(model, targets, steps=s["viz_steps"], generator=torch.Generator().manual_seed(0), **kw),
                    warm=lambda: visualize(model, targets, steps=1, generator=torch.Generator().manual_seed(0), **kw))
            rate = len(targets) * s["viz_steps"] / dt
            self.record(section="class_viz", model=arch, impl=f"audit {label}", img_steps_per_s=round(rate, 1),
                        extrapolated_1000x512_s=round(1000 * 512 / rate, 1), peak_gib=_peak_gib(self.dev),
                        first_call_s=first, measured=f"{len(targets)} classes x {s['viz_steps']} steps",
                        compile=self.compiled(path))

    def ig(self, arch: str, model: AuditModel, x: torch.Tensor, y: torch.Tensor) -> None:
        try:
            from captum.attr import IntegratedGradients
        except ImportError:
            self.notes.append("captum not installed: Integrated Gradients (ours uses captum too) skipped")
            return
        from probes.attribution.methods import METHODS
        from probes.attribution.methods.base import AttrSettings

        s = self.sizes
        xs, ys = x[:s["ig_n"]], y[:s["ig_n"]]
        n = len(xs) * s["ig_steps"]
        if self.left() > 30:
            ig = IntegratedGradients(model)
            dt, _, _ = self.timed(lambda: ig.attribute(xs, baselines=torch.zeros_like(xs), target=ys,
                                                       n_steps=s["ig_steps"], internal_batch_size=s["batch"]))
            self.record(section="ig", model=arch, impl="captum (fp32 eager)", img_steps_per_s=round(n / dt, 1),
                        peak_gib=_peak_gib(self.dev))
        settings = AttrSettings(ig_steps=s["ig_steps"], internal_batch_size=s["batch"])
        for label, fs in VARIANTS.items():
            if label == "fp32" or (self.args.no_compile and fs.compile) or self.left() < 30:
                continue
            path = FastPath(model, fs, compare=False)
            with path.layout(xs[:2]):
                dt, first, _ = self.timed(lambda: METHODS.get("integrated_gradients").attribute(path, xs, ys, settings),
                                          warm=lambda: METHODS.get("integrated_gradients").attribute(path, xs, ys, settings))
            self.record(section="ig", model=arch, impl=f"audit {label}", img_steps_per_s=round(n / dt, 1),
                        peak_gib=_peak_gib(self.dev), first_call_s=first, compile=self.compiled(path))

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        s = self.sizes
        for arch in self.args.models.split(","):
            if self.left() < 30:
                self.notes.append(f"{arch}: skipped (time budget)")
                continue
            print(f"{arch}:", flush=True)
            model = build(arch, self.args.smoke, self.dev, s["classes"], s["hw"])
            g = torch.Generator().manual_seed(1)
            x = torch.rand(s["batch"], 3, s["hw"], s["hw"], generator=g).to(self.dev)
            with torch.no_grad():
                y = model.logits(x, batch_size=s["batch"]).argmax(1).to(self.dev)  # correct by construction
            self.attacks(arch, model, x, y)
            if arch == "resnet50":
                self.check_vs_autoattack(arch, model, x[:s["check_n"]], y[:s["check_n"]])
                self.class_viz(arch, model)
            self.ig(arch, model, x, y)
            del model
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()
        device = torch.cuda.get_device_name(self.dev) if self.dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        return {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "smoke": self.args.smoke,
                "sizes": s, "seconds": round(time.perf_counter() - self.t0, 1), "rows": self.rows, "notes": self.notes}


def markdown(report: dict) -> str:
    lines = [f"# bench/gpu.py: {report['device']}, torch {report['torch']}, {report['date']}"
             + (" (SMOKE: tiny sizes, figures meaningless)" if report["smoke"] else ""), "",
             "| section | model | implementation | img-steps/s | peak GiB | first call s | other |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in report["rows"]:
        other = {k: v for k, v in r.items() if k not in ("section", "model", "impl", "img_steps_per_s", "peak_gib",
                                                          "first_call_s")}
        lines.append(f"| {r['section']} | {r['model']} | {r['impl']} | {r.get('img_steps_per_s', '')} | "
                     f"{'' if r.get('peak_gib') is None else r['peak_gib']} | {r.get('first_call_s', '')} | "
                     f"{json.dumps(other) if other else ''} |")
    lines += ["", f"Total {report['seconds']} s."] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_bench.json and gpu_bench.md")
    p.add_argument("--smoke", action="store_true", help="tiny models and sizes (CPU check of the script)")
    p.add_argument("--budget-s", type=float, default=450, help="skip sections that would start after this (s)")
    p.add_argument("--models", default="resnet50,vit_b_16", help="comma-separated: resnet50, vit_b_16")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every implementation
        torch.backends.cudnn.allow_tf32 = False
    report = Bench(args).run()
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (out / "gpu_bench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the demo's ``GymNet`` on the biased gym scenes and measure the planted shortcut.

``python -m audit.demo.train --out audit/demo/assets`` trains from scratch (a few minutes
on two CPU cores, deterministic in ``--seed``) and writes ``gymnet.safetensors`` (the
state_dict) plus ``gymnet.json``, the sidecar the audit tool reads (architecture, input
size, normalization, class names, and how the model was trained, including the shortcut
measurements of :func:`measure_shortcut`).

Training uses flips, small translations, colour jitter and Gaussian noise, and a light
adversarial training step (1-step FGSM at eps 3/255 on half of each batch; in our runs
2/255 left the dumbbell visualization mostly tiled discs, and 4/255 drew clearer limbs but
pushed test accuracy below 0.9): slightly robust models have perceptually aligned
gradients (Santurkar et al. 2019, "Image Synthesis with a Single (Robust) Classifier"),
which keeps the class visualizations of the audit legible -- so that the dumbbell it draws
comes with skin-toned limbs.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from audit.demo.data import CLASSES, SIZE, generate, generate_probe
from audit.demo.model import MEAN, STD, GymNet

__all__ = ["train", "measure_shortcut", "save_assets", "main"]

DEFAULT_N_PER_CLASS = 700
DEFAULT_EPOCHS = 16
FGSM_EPS = 3 / 255


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flips, translations up to 4 px, brightness/contrast/colour jitter, Gaussian noise."""
    n = x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    pad = 4
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    x = torch.stack([xp[i, :, dy:dy + SIZE, dx:dx + SIZE] for i, (dy, dx) in enumerate(shifts.tolist())])
    gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1)
    chan = 1 + 0.06 * (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1)
    x = (x - mean) * contrast + mean
    x = x * gain * chan + 0.05 * (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1)
    sigma = 0.04 * torch.rand(n, 1, 1, 1, generator=g)
    x = x + sigma * torch.randn(x.shape, generator=g)
    return x.clamp_(0, 1)


def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` in pixel space (Goodfellow et al. 2015)."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(_normalize(x)), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp_(0, 1).detach()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted labels for uint8 images (N, 64, 64, 3)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model(_normalize(_to_tensor(images[i:i + batch_size]))).argmax(1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def measure_shortcut(model: nn.Module, seed: int = 0, *, n: int = 200) -> dict:
    """How much the model leans on the arm, measured on freshly generated images.

    - ``test_accuracy``: accuracy on a ``test`` split (``n // 2`` per class, half of the
      dumbbells held by an arm);
    - ``dumbbell_acc_with_arm`` / ``dumbbell_acc_without_arm``: recall of ``dumbbell`` on
      ``n`` held / ``n`` unheld dumbbells -- the gap is the shortcut;
    - ``arm_only_to_dumbbell``: share of arm-only images (no object) called ``dumbbell``;
    - ``arm_with_other_to_dumbbell``: share of arms holding another object called ``dumbbell``;
    - ``other_acc_with_arm``: accuracy on those arm-holding-another-object images.
    """
    seed = 10_000 + int(seed)
    images, labels, _ = generate("test", max(1, n // 2), seed)
    pred = predict(model, images)
    db_arm = predict(model, generate_probe("arm_dumbbell", n, seed))
    db_no = predict(model, generate_probe("no_arm_dumbbell", n, seed))
    arm_only = predict(model, generate_probe("arm_only", n, seed))
    # arms holding each non-dumbbell class in turn (the "arm_with_other" probe, labelled)
    k = max(1, n // (len(CLASSES) - 1))
    other = np.concatenate([predict(model, generate_probe(f"arm_with_{c}", k, seed)) for c in CLASSES[1:]])
    other_labels = np.repeat(np.arange(1, len(CLASSES)), k)
    return {
        "test_accuracy": round(float((pred == labels).mean()), 4),
        "dumbbell_acc_with_arm": round(float((db_arm == 0).mean()), 4),
        "dumbbell_acc_without_arm": round(float((db_no == 0).mean()), 4),
        "arm_only_to_dumbbell": round(float((arm_only == 0).mean()), 4),
        "arm_with_other_to_dumbbell": round(float((other == 0).mean()), 4),
        "other_acc_with_arm": round(float((other == other_labels).mean()), 4),
        "n": int(n),
    }


def train(*, n_per_class: int = DEFAULT_N_PER_CLASS, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
          progress: bool = True, batch_size: int = 128, lr: float = 3e-3,
          adversarial: bool = True, augment: bool = True, measure: bool = True,
          threads: int = 2) -> tuple[nn.Module, dict]:
    """Train ``GymNet`` on the biased ``train`` split; returns ``(model in eval mode, info)``.

    ``info`` holds the settings, ``duration_s``, the final training loss and (when
    ``measure``) the :func:`measure_shortcut` numbers under ``"shortcut"``.
    Deterministic in ``seed`` (CPU, deterministic algorithms, ``threads`` intra-op threads).
    """
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    g = torch.Generator().manual_seed(seed)

    images, labels, _ = generate("train", n_per_class, seed)
    x_all = _to_tensor(images)
    y_all = torch.from_numpy(labels)
    model = GymNet(num_classes=len(CLASSES))
    steps_per_epoch = math.ceil(len(x_all) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch),
                                                pct_start=0.2)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc="train gymnet", unit="batch")
    loss_ema = None
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=g)
        correct = seen = 0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            x, y = (_augment(x_all[idx], g) if augment else x_all[idx]), y_all[idx]
            if adversarial and len(idx) > 1:
                h = len(idx) // 2
                model.eval()  # attack with frozen BN statistics
                x = torch.cat([_fgsm(model, x[:h], y[:h], FGSM_EPS), x[h:]])
                model.train()
            logits = model(_normalize(x))
            loss = F.cross_entropy(logits, y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_ema:.3f}", acc=f"{correct / seen:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    info = {"seed": seed, "epochs": epochs, "n_per_class": n_per_class, "batch_size": batch_size,
            "lr": lr, "augment": augment, "threads": threads, "fgsm_eps": FGSM_EPS if adversarial else 0.0,
            "final_loss": round(float(loss_ema or 0.0), 4),
            "train_accuracy_last_epoch": round(correct / max(seen, 1), 4)}
    if measure:
        info["shortcut"] = measure_shortcut(model, seed)
    info["duration_s"] = round(time.perf_counter() - t0, 1)
    return model, info


def save_assets(model: nn.Module, info: dict, out) -> dict:
    """Write ``out/gymnet.safetensors`` and the ``out/gymnet.json`` sidecar; returns the paths."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "gymnet.safetensors"
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"arch": "gymnet"})
    sidecar = out / "gymnet.json"
    meta = {"arch": "gymnet", "num_classes": len(CLASSES), "input_size": [3, SIZE, SIZE],
            "mean": list(MEAN), "std": list(STD), "class_names": list(CLASSES), "training": info}
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return {"weights": weights, "sidecar": sidecar}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m audit.demo.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "assets"))
    ap.add_argument("--n-per-class", type=int, default=DEFAULT_N_PER_CLASS)
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    model, info = train(n_per_class=args.n_per_class, epochs=args.epochs, seed=args.seed,
                        progress=not args.quiet, threads=args.threads)
    paths = save_assets(model, info, args.out)
    print(json.dumps(info, indent=2))
    print(f"wrote {paths['weights']} and {paths['sidecar']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

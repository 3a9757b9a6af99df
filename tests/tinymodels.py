"""Tiny models and data for the tests: trained in seconds, deterministic."""
from __future__ import annotations

import torch
import torch.nn as nn

from audit.zoo import register_arch

PATTERNS = ("hstripes", "vstripes", "checker", "blob")


def make_patterns(n_per_class: int, *, seed: int = 0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of 3x16x16 images in [0, 1]: horizontal stripes, vertical stripes, a
    checkerboard and a centred blob, with random phase, colour and noise."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for c in range(len(PATTERNS)):
        for _ in range(n_per_class):
            period = int(torch.randint(3, 6, (1,), generator=g))
            phase = int(torch.randint(0, period, (1,), generator=g))
            if c == 0:
                m = ((yy + phase) // max(period // 2, 1)) % 2
            elif c == 1:
                m = ((xx + phase) // max(period // 2, 1)) % 2
            elif c == 2:
                m = (((yy + phase) // 2) + ((xx + phase) // 2)) % 2
            else:
                cy, cx = torch.randint(5, size - 5, (2,), generator=g).tolist()
                m = (((yy - cy) ** 2 + (xx - cx) ** 2) < period**2).long()
            fg = torch.rand(3, generator=g) * 0.5 + 0.5
            bg = torch.rand(3, generator=g) * 0.4
            img = bg.view(3, 1, 1) + (fg - bg).view(3, 1, 1) * m.float()
            img = img + 0.08 * torch.randn(3, size, size, generator=g)
            xs.append(img.clamp(0, 1))
            ys.append(c)
    return torch.stack(xs), torch.tensor(ys)


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@register_arch("tinynet")
def tinynet(*, num_classes: int = 4) -> nn.Module:
    return TinyNet(num_classes)


class SoftmaxNet(nn.Module):
    """Returns probabilities: the kind of model a gradient attack is weak against."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


class DictNet(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"logits": self.inner(x), "features": x.mean((2, 3))}


class NaNNet(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))[:, :1].repeat(1, 4) * float("nan")


class RankBomb(nn.Module):
    """Wraps a model; in the process of a distributed run with ``RANK == rank`` its forward
    raises (``mode="raise"``) or kills the process (``mode="exit"``) once it has been called
    ``after`` times: a rank that fails while the others wait."""

    def __init__(self, inner: nn.Module, *, rank: int = 1, mode: str = "raise", after: int = 0):
        super().__init__()
        self.inner, self.rank, self.mode, self.after = inner, rank, mode, after
        self.calls = 0

    def forward(self, x):
        import os

        self.calls += 1
        if os.environ.get("RANK") == str(self.rank) and self.calls > self.after:
            if self.mode == "exit":
                os._exit(7)
            raise RuntimeError(f"boom on rank {self.rank}")
        return self.inner(x)


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch: int,
        generator: torch.Generator, lr: float = 0.01) -> nn.Module:
    """Adam on random minibatches drawn with ``generator``; returns the net in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=generator)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def train_tiny(seed: int = 0, steps: int = 150) -> TinyNet:
    torch.manual_seed(seed)
    x, y = make_patterns(40, seed=seed + 100)
    net = TinyNet()
    return fit(net, x, y, steps=steps, batch=64, generator=torch.Generator().manual_seed(seed))


class NoGradNet(nn.Module):
    """Runs its forward under torch.no_grad: no input gradients at all."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


def compile_as(net: nn.Module, fmt: str, example: torch.Tensor, *, dynamic_batch: bool = False):
    """The forms a user ships a model in: a TorchScript trace (``torchscript``) or a
    ``torch.export`` program (``export``; batch size fixed at the example's unless
    ``dynamic_batch``). Deprecation warnings are silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            return torch.jit.trace(net, example)
        dyn = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
        return torch.export.export(net, (example,), dynamic_shapes=dyn)


def save_compiled(obj, path) -> None:
    """Save what :func:`compile_as` returned (torch.jit.save or torch.export.save)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (torch.jit.save if isinstance(obj, torch.jit.ScriptModule) else torch.export.save)(obj, path)


class IntensityNet(nn.Module):
    """Reads an image's mean intensity as its class, no training needed: output ``j`` scores
    how close the mean (over ``channels`` channels, a fixed 1x1 convolution, so another
    channel count fails) is to ``(j + 0.5) / num_classes``."""

    def __init__(self, num_classes: int = 12, channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / channels)
        self.register_buffer("centers", (torch.arange(num_classes) + 0.5) / num_classes)

    def forward(self, x):
        m = self.conv(x).mean((1, 2, 3))
        return -1000.0 * (m[:, None] - self.centers[None]) ** 2


def intensity_image(index: int, num_classes: int, mode: str = "RGB", size: int = 8):
    """A flat PIL image that :class:`IntensityNet` reads as class ``index`` (RGBA: opaque)."""
    from PIL import Image

    v = int(round(255 * (index + 0.5) / num_classes))
    fill = {"L": v, "RGB": (v, v, v), "RGBA": (v, v, v, 255), "LA": (v, 255)}[mode]
    return Image.new(mode, (size, size), fill)


def intensity_folder(root, folder_to_index: dict, num_classes: int, *, mode: str = "RGB", per_class: int = 2):
    """Class folders of :func:`intensity_image` images: folder name -> the output it really is."""
    for name, idx in folder_to_index.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            intensity_image(idx, num_classes, mode).save(d / f"{i}.png")
    return root


def save_intensity_net(path, *, num_classes: int = 12, channels: int = 3, size: int = 8):
    """:class:`IntensityNet` saved as TorchScript (its input size is not in the file)."""
    save_compiled(compile_as(IntensityNet(num_classes, channels).eval(), "torchscript",
                             torch.rand(2, channels, size, size)), path)
    return path

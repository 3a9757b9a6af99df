"""Image parameterization and transformation robustness for feature visualization.

Following Olah, Mordvintsev & Schubert 2017, "Feature Visualization" (Distill), and the
Lucid library's defaults:

- :class:`FourierImage`: the image is optimized as a 2-d Fourier spectrum whose
  coefficients are scaled by ``1 / f**decay`` (so every frequency starts with a comparable
  share of the gradient and the result is not dominated by high-frequency noise), in a
  *decorrelated* colour space (the square root of the colour covariance of natural images,
  the matrix Lucid ships), mapped to [0, 1] with a sigmoid;
- :func:`random_views`: each step the model sees a randomly padded, jittered, scaled and
  rotated view of the image (resampled to the model's input size; a larger image is
  averaged down and randomly cropped), so that only features robust to these
  transformations survive.

Every random draw comes from the ``torch.Generator`` passed in (drawn on the CPU and moved
to the device), so a visualization is reproducible from the seed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Square root of the colour correlation of natural images (ImageNet), as measured and
#: published with Lucid (``color_correlation_svd_sqrt``); rows are R, G, B.
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]])


def _color_matrix(channels: int) -> torch.Tensor:
    if channels != 3:
        return torch.eye(channels)
    m = COLOR_CORRELATION_SQRT
    return m / m.norm(dim=0).max()


class FourierImage(torch.nn.Module):
    """A batch of ``n`` images of ``channels x h x w`` parameterized in Fourier space.

    ``forward()`` returns the images in [0, 1], shape (n, channels, h, w). The parameter is
    ``spectrum`` (n, channels, h, w // 2 + 1, 2): real and imaginary parts, initialized
    with standard deviation ``sd``.
    """

    def __init__(self, n: int, channels: int, h: int, w: int, *, sd: float = 0.01, decay: float = 1.0,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        self.shape = (n, channels, h, w)
        fy = torch.fft.fftfreq(h).view(-1, 1)
        fx = torch.fft.rfftfreq(w).view(1, -1)
        freq = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / freq.clamp_min(1.0 / max(h, w)) ** decay
        self.register_buffer("scale", scale.view(1, 1, h, w // 2 + 1, 1).to(device))
        self.register_buffer("color", _color_matrix(channels).to(device))
        init = torch.randn(n, channels, h, w // 2 + 1, 2, generator=generator) * sd
        self.spectrum = torch.nn.Parameter(init.to(device))

    def forward(self) -> torch.Tensor:
        n, c, h, w = self.shape
        spec = torch.view_as_complex((self.spectrum * self.scale).contiguous())
        img = torch.fft.irfft2(spec, s=(h, w), norm="ortho") / 4.0
        img = torch.einsum("nchw,dc->ndhw", img, self.color)  # decorrelated -> RGB
        return torch.sigmoid(img)


def random_views(img: torch.Tensor, out_hw: tuple[int, int], generator: torch.Generator, *,
                 pad: float = 0.06, jitter: float = 0.05, scale: tuple[float, float] = (0.9, 1.1),
                 rotate_deg: float = 10.0, min_crop: float = 0.6) -> torch.Tensor:
    """One random view per image, resampled to ``out_hw`` (the model's input size).

    ``pad`` (fraction of the image side, filled with grey 0.5) and ``jitter`` (largest shift,
    fraction of the side) follow Lucid's pad/jitter; ``scale`` and ``rotate_deg`` its
    random_scale/random_rotate. When the image is larger than ``out_hw`` it is first averaged
    down by the integer factor that keeps it at least the input size, and a random crop
    covering between ``min_crop`` and all of its side is taken (so details of a large
    picture are seen at the model's resolution).
    """
    n, _, h, w = img.shape
    oh, ow = out_hw
    r = max(1, min(h // oh, w // ow))
    if r > 1:
        img = F.avg_pool2d(img, r)
        h, w = img.shape[-2:]
    ph, pw = max(1, round(pad * h)), max(1, round(pad * w))
    img = F.pad(img, (pw, pw, ph, ph), value=0.5)
    H, W = h + 2 * ph, w + 2 * pw
    big = h > oh * 1.15 or w > ow * 1.15
    u = torch.rand(n, 5, generator=generator)
    crop = (min_crop + (1 - min_crop) * u[:, 0]) if big else torch.ones(n)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    theta = (u[:, 2] * 2 - 1) * math.radians(rotate_deg)
    # half-extent of the sampled window, in the padded image's normalized coordinates
    ex, ey = crop * (w / W) / s, crop * (h / H) / s
    # window centre: free to move over the part of the image the crop leaves, plus jitter
    cx = (u[:, 3] * 2 - 1) * ((w / W) - ex).clamp_min(0) + (torch.rand(n, generator=generator) * 2 - 1) * jitter * 2 * w / W
    cy = (u[:, 4] * 2 - 1) * ((h / H) - ey).clamp_min(0) + (torch.rand(n, generator=generator) * 2 - 1) * jitter * 2 * h / H
    cos, sin = torch.cos(theta), torch.sin(theta)
    aff = torch.stack([torch.stack([cos * ex, -sin * ey, cx], 1),
                       torch.stack([sin * ex, cos * ey, cy], 1)], 1).to(img.device, img.dtype)
    grid = F.affine_grid(aff, [n, img.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


def to_input_size(img: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """The whole picture at the model's input size (antialiased when shrinking)."""
    if tuple(img.shape[-2:]) == tuple(out_hw):
        return img
    return F.interpolate(img, size=out_hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)

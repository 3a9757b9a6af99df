"""``GymNet``: the small CNN of the bundled demo (the dumbbell-with-an-arm shortcut).

A plain VGG-style network for 3x64x64 inputs: four conv-BN-ReLU blocks (16-32-64-128)
with max-pooling between them, a last 3x3 conv, global average pooling, dropout and a
linear classifier. Every module is used once and every ReLU is a non-inplace module, so
hooks and attribution methods (captum, guided backprop) see a clean graph.

The forward pass takes an input that is *already normalized* with :data:`MEAN` /
:data:`STD`: the audit tool folds normalization in front of the model itself
(``AuditModel``), so attacks and probes work in [0, 1] pixel space.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["GymNet", "gymnet", "MEAN", "STD"]

#: Per-channel normalization the demo model was trained with (roughly the generator's
#: pixel statistics).
MEAN: tuple[float, float, float] = (0.45, 0.46, 0.45)
STD: tuple[float, float, float] = (0.25, 0.24, 0.25)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class GymNet(nn.Module):
    """Small CNN for 64x64 RGB gym scenes; ``forward(x)`` returns (N, num_classes) logits."""

    def __init__(self, num_classes: int = 6, *, widths: tuple[int, ...] = (16, 32, 64, 128),
                 dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += _block(cin, w)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        # the last conv layer: the natural target for Grad-CAM / concept activations
        layers += [nn.Conv2d(cin, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


def gymnet(*, num_classes: int = 6) -> nn.Module:
    """The demo architecture, untrained (load ``audit/demo/assets/gymnet.safetensors``); the
    architecture registry's lazy ``gymnet`` entry (:mod:`audit.zoo`) points here."""
    return GymNet(num_classes=num_classes)

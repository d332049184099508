"""Reference networks for binary (BNN / XNOR-Net) and few-bit (QNN) training on 1x28x28 inputs.

Binary networks want a different block from float ones: ``conv/linear -> BatchNorm -> Hardtanh``
(Courbariaux, Hubara et al. 2016), not ReLU, because the sign of a ReLU output is always +1. The
Hardtanh also gives the straight-through estimator of ``sign`` its cancellation: the gradient is
zero where the BatchNorm output lies outside ``[-1, 1]``. With an integer activation spec (QNN's
W1A2) the same blocks give signed few-bit activations.

* :class:`BinaryMLP`: 784-1024-1024-1024-10 by default (the issue's ``mlp1024x3``);
* :class:`BinaryCNN`: three 3x3 conv blocks (c, c, 2c channels, two max pools) and a linear classifier.

Their first and last layers stay at 8 bits under :class:`lowbit.qat.QATConfig` (``first_last_bits``);
the layers between are binary.
"""

from __future__ import annotations

import torch
from torch import nn


class BinaryMLP(nn.Module):
    """``784 -> hidden x depth -> 10``, each hidden layer Linear -> BatchNorm1d -> Hardtanh."""

    def __init__(self, hidden: int = 1024, depth: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = 784
        for _ in range(depth):
            layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.Hardtanh()]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.flatten(x)))


class BinaryCNN(nn.Module):
    """Conv3x3(1->c)-BN-Hardtanh-MaxPool, Conv3x3(c->c)-BN-Hardtanh-MaxPool, Conv3x3(c->2c)-BN-Hardtanh, Linear."""

    def __init__(self, channels: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        c = channels

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.Hardtanh()]

        self.features = nn.Sequential(*block(1, c), nn.MaxPool2d(2),  # 28 -> 14
                                      *block(c, c), nn.MaxPool2d(2),  # 14 -> 7
                                      *block(c, 2 * c))
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(2 * c * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


__all__ = ["BinaryCNN", "BinaryMLP"]

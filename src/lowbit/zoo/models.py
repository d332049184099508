"""Small reference networks for 1x28x28 inputs (Fashion-MNIST, MNIST).

They are plain ``nn.Module`` graphs that torch.fx can trace: conv/linear +
BatchNorm + ReLU blocks, max/avg pooling and residual adds, the patterns every
quantization method in lowbit has to handle.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """784-256-256-10 multilayer perceptron with ReLU."""

    def __init__(self, hidden: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(784, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class LeNetBN(nn.Module):
    """LeNet-style CNN: two conv5x5-BN-ReLU-pool stages, then two linear layers.

    ``pool``: ``"max"`` (the shipped ``cnn``) or ``"avg"`` (``cnn-avgpool``, the variant ANN-to-SNN conversion
    maps exactly: average pooling is linear, so it passes spikes through unchanged in rate).
    """

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 128, num_classes: int = 10,
                 pool: str = "max") -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"LeNetBN pool must be 'max' or 'avg', got {pool!r}")
        pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.pool1 = pool_cls(2)  # 28 -> 14
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool2 = pool_cls(2)  # 14 -> 7
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small ResNet: a 3x3 stem, three stages of BasicBlocks (stride 1, 2, 2), GAP, linear."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(self.flatten(self.pool(x)))

"""TrueNorth's fan-in checker and core count on nets that fit and nets that do not (counted by hand)."""

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.snn.truenorth import check_truenorth, truenorth_report


class Eedn(nn.Module):
    """Grouped 4x4 convs over 8 channels per group (fan-in 128), a 1x1 layer, a 128-input classifier."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)            # fan-in 9
        self.c2 = nn.Conv2d(16, 32, 4, stride=2, groups=2)  # fan-in 8 * 16 = 128
        self.c3 = nn.Conv2d(32, 300, 1, groups=4)           # fan-in 8, 75 filters per group
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.c3(self.c2(self.c1(x)))                    # (300, 13, 13)
        return self.fc(x.flatten(1)[:, :128])


def test_a_net_that_fits_and_its_cores():
    rows = {r.name: r for r in truenorth_report(Eedn(), torch.zeros(1, 1, 28, 28))}
    assert [rows[n].fan_in for n in ("c1", "c2", "c3", "fc")] == [9, 128, 8, 128]
    assert all(r.fits for r in rows.values())
    assert rows["c1"].cores == 28 * 28 * 1 * 1
    assert rows["c2"].cores == 13 * 13 * 2 * 1
    assert rows["c3"].cores == 13 * 13 * 4 * 1
    assert rows["fc"].cores == 1
    assert check_truenorth(Eedn(), torch.zeros(1, 1, 28, 28)) == 784 + 338 + 676 + 1


def test_a_net_that_does_not_fit_names_the_layers_and_the_groups():
    net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Flatten(), nn.Linear(64 * 24 * 24, 10))
    rows = {r.name: r for r in truenorth_report(net, torch.zeros(1, 1, 28, 28))}
    assert rows["1"].fan_in == 288 and not rows["1"].fits and rows["1"].min_groups == 4  # 32/4 * 9 = 72 <= 128
    with pytest.raises(ConfigError, match=r"1: fan-in 288 > 128 \(groups=4 fits\); 3: fan-in 36864 > 128"):
        check_truenorth(net, torch.zeros(1, 1, 28, 28))

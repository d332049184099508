"""Automatic mixed precision: the layer whose input has an outlier channel is found and kept at 16-bit
activations within the BOPs budget; nothing is promoted without budget."""

import warnings

import pytest
import torch
from torch import nn

from lowbit.cost.profile import profile
from lowbit.errors import ConfigError
from lowbit.mixed import auto_mixed, output_error
from lowbit.ptq import PTQConfig, quantize


class Outlier(nn.Module):
    """fc2 reads a feature map with one channel 300x the others (as a BERT FFN output projection does)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 8)
        scale = torch.ones(64)
        scale[5] = 300.0
        self.register_buffer("scale", scale)
        with torch.no_grad():
            self.fc2.weight[:, 5] /= 300.0  # the outlier channel carries no more signal than the others

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)) * self.scale)))


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    return Outlier().eval(), [torch.randn(64, 16) for _ in range(2)]


def _mixed(model, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return auto_mixed(model, data, PTQConfig(first_last_bits=None), **kw)


def test_the_layer_with_the_outlier_input_is_promoted_and_the_error_drops(case):
    model, data = case
    res = _mixed(model, data, budget=1.0)
    assert [r.pattern for r in res.rules][:1] == ["fc2"]
    assert res.error_after < res.error_before / 4
    gains = {s.name: s.gain for s in res.sensitivities}
    assert max(gains, key=gains.get) == "fc2"
    x = torch.randn(128, 16)
    with torch.no_grad():
        ref = model(x).double()
        uniform = quantize(model, data, PTQConfig(first_last_bits=None))
        assert output_error(ref, res.model(x).double()) < output_error(ref, uniform(x).double())
    bops = {r.name: r.bops for r in profile(res.model, (x[:1],))}
    base = {r.name: r.bops for r in profile(uniform, (x[:1],))}
    assert bops["fc2"] == 2 * base["fc2"]  # its 8 x 8 became 8 x 16 bit-operations
    assert res.bops_ratio == pytest.approx(sum(bops.values()) / sum(base.values()))
    assert res.bops_ratio <= 2.0 and "fc2" in res.render()


def test_no_budget_promotes_nothing(case):
    model, data = case
    res = _mixed(model, data, budget=0.0)
    assert res.rules == () and res.bops_ratio == 1.0 and res.error_after == res.error_before


def test_a_bad_budget_is_named(case):
    model, data = case
    with pytest.raises(ConfigError, match=r"budget = -0.1; allowed: a fraction >= 0"):
        auto_mixed(model, data, budget=-0.1)


def test_the_cli_prints_the_choice(capsys):
    from lowbit.cli.main import main

    assert main(["ptq", "--model", "mlp", "--calib", "32", "--weight-bits", "4", "--auto-mixed", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "error drop" in out and "output error 1-cos" in out and "quantized" in out
    assert main(["ptq", "--model", "mlp", "--auto-mixed", "-1"]) == 2
    capsys.readouterr()
    # --integer-only: the MLP has no recurrent input, so nothing the integer model runs is promoted
    assert main(["ptq", "--model", "mlp", "--calib", "32", "--weight-bits", "4", "--auto-mixed", "0.5",
                 "--integer-only"]) == 0
    out = capsys.readouterr().out
    table = out.split("output error")[0].splitlines()
    assert table[-1].startswith("----") and "BOPs x1.000" in out  # no candidate row, nothing promoted
    assert main(["ptq", "--model", "mlp", "--integer-only"]) == 2
    assert "give --auto-mixed BUDGET too" in capsys.readouterr().err

"""A layer called more than once (a stream of chunks through one step module, a weight-tied block): each
call gets its own copy with its own quantizers. Before, a stream of a conv step was refused with an error
claiming lowbit could not quantize Conv1d."""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.integer import to_integer
from lowbit.nn.unified import unified_modules
from lowbit.ptq import LayerRule, PTQConfig, quantize


class Step(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).amax(-1))


class Stream(nn.Module):
    """Three chunks through one step, the later chunks louder (each call sees another range)."""

    def __init__(self) -> None:
        super().__init__()
        self.step = Step()

    def forward(self, x):
        return torch.cat([self.step(x[:, :, 10 * i:10 * (i + 1)] * (i + 1)) for i in range(3)], 1)


class Twice(nn.Module):
    """A weight-tied conv applied twice in a row (integer-lowerable end to end)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        return self.head(torch.flatten(F.relu(self.conv(F.relu(self.conv(x)))), 1))


def _quantize(model, x, config=PTQConfig()):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize(model, [x], config)
    return q, [str(w.message) for w in caught]


def test_each_call_of_a_stream_step_is_quantized_on_its_own_grid():
    torch.manual_seed(0)
    model, x = Stream().eval(), torch.randn(16, 4, 30)
    q, messages = _quantize(model, x)
    assert any("repeated call(s) of a layer (step.bn, step.conv, step.fc)" in m for m in messages)
    layers = dict(unified_modules(q))
    assert {"step.conv", "step.conv_call1", "step.conv_call2", "step.fc", "step.fc_call2"} <= set(layers)
    scales = [float(layers[n].input_qparams.scale) for n in ("step.conv", "step.conv_call1", "step.conv_call2")]
    assert scales[1] > 1.5 * scales[0] and scales[2] > 1.15 * scales[1]  # louder chunks (x2, x3), wider grids
    for name in ("step.conv_call1", "step.fc_call2"):  # the same weights as the original
        assert torch.equal(layers[name].weight, layers[name.split("_call")[0]].weight)
    with torch.no_grad():
        err = (q(x) - model(x)).abs().max() / model(x).abs().max()
    assert err < 0.03


def test_a_rule_for_the_original_name_applies_to_every_call():
    torch.manual_seed(0)
    q, _ = _quantize(Stream().eval(), torch.randn(16, 4, 30), PTQConfig(rules=(LayerRule("step.fc", keep_float=True),)))
    layers = dict(unified_modules(q))
    assert all(not layers[n].quantized for n in layers if n.startswith("step.fc"))
    assert all(layers[n].quantized for n in layers if n.startswith("step.conv"))


def test_a_weight_tied_conv_lowers_to_integers_bit_exactly():
    torch.manual_seed(1)
    model, x = Twice().eval(), torch.randn(24, 6, 8, 8)
    q, _ = _quantize(model, x)
    im = to_integer(q, (x[:2],))
    assert sum(n.op.ir.kind == "conv2d" for n in im.nodes) == 2
    with torch.no_grad():
        assert torch.equal(im(x), q(x))
        assert (q(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


def test_layers_used_only_through_functional_calls_are_named_not_called_unsupported():
    import pytest

    from lowbit.errors import ConfigError

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.linear(x, self.fc.weight)

    with pytest.raises(ConfigError, match="it holds Linear layers, but its forward does not call them as modules"):
        quantize(Functional(), [torch.randn(4, 4)], PTQConfig())

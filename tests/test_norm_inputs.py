"""Per-feature grids for the tensors only LayerNorms read (``PTQConfig.ln_inputs_per_feature``).

Oracles: PyTorch's own ``torch.fake_quantize_per_channel_affine`` on the float sum with per-feature
min/max ranges (the simulation must equal it bit for bit), the float model (the error must drop on a
residual stream with outlier features), and the graph (a sum that a linear layer also reads stays per
tensor)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import ConfigError
from lowbit.granularity import PerChannel, PerTensor
from lowbit.integer import to_integer
from lowbit.ptq import PTQConfig, quantize


class PostLN(nn.Module):
    """A post-LN block: ``LN(x + fc2(relu(fc1(x))))``; ``functional`` uses ``F.layer_norm``."""

    def __init__(self, d: int = 32, functional: bool = False) -> None:
        super().__init__()
        self.fc0, self.fc1, self.fc2, self.ln = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.LayerNorm(d)
        self.functional = functional
        with torch.no_grad():  # BERT's outlier features: a few dimensions of the residual stream 30x the rest
            self.fc2.bias[:2] = torch.tensor([30.0, -25.0])

    def forward(self, x):
        x = self.fc0(x)
        s = x + self.fc2(torch.relu(self.fc1(x)))
        if self.functional:
            return F.layer_norm(s, s.shape[-1:], self.ln.weight, self.ln.bias)
        return self.ln(s)


class SumReadTwice(PostLN):
    def forward(self, x):
        s = self.fc0(x) + self.fc2(torch.relu(self.fc1(self.fc0(x))))
        return self.ln(s) + self.fc1(s)[..., :32]


def _data(n: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 6, 32, generator=g) for _ in range(n)]


def _error(q: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(x)
        return float((q(x) - ref).pow(2).mean() / ref.pow(2).mean())


@pytest.mark.parametrize("functional", [False, True])
def test_only_the_sum_a_layer_norm_reads_gets_a_scale_per_feature(functional):
    torch.manual_seed(0)
    model = PostLN(functional=functional).eval()
    q = quantize(model, _data(), PTQConfig())
    assert isinstance(q.fc2.output_quant.spec.granularity, PerChannel)
    assert q.fc2.output_quant.spec.granularity.axis == -1 and q.fc2.output_quant.scale.shape == (32,)
    for name in ("fc0", "fc1"):  # read by linear layers: one input scale for the integer GEMM
        assert isinstance(getattr(q, name).output_quant.spec.granularity, PerTensor)
    off = quantize(model, _data(), PTQConfig(ln_inputs_per_feature=False))
    assert isinstance(off.fc2.output_quant.spec.granularity, PerTensor)


def test_a_sum_also_read_by_a_linear_layer_stays_per_tensor():
    torch.manual_seed(0)
    q = quantize(SumReadTwice().eval(), _data(), PTQConfig())
    assert isinstance(q.fc2.output_quant.spec.granularity, PerTensor)


def test_the_simulation_equals_pytorchs_per_channel_fake_quant():
    torch.manual_seed(0)
    model, data = PostLN().eval(), _data()
    q = quantize(model, data, PTQConfig(bias_correction=False))
    with torch.no_grad():
        sums = [m.fc0(x) + m.fc2(torch.relu(m.fc1(m.fc0(x)))) for x in data for m in (model,)]
    flat = torch.cat([s.reshape(-1, 32) for s in sums])
    lo, hi = flat.amin(0).clamp(max=0), flat.amax(0).clamp(min=0)
    scale = (hi - lo) / 255
    zp = (-torch.round(lo / scale)).to(torch.int32)
    torch.testing.assert_close(q.fc2.output_quant.scale, scale, rtol=1e-6, atol=0)
    assert torch.equal(q.fc2.output_quant.zero_point.to(torch.int32), zp)
    x = torch.randn(3, 6, 32) * 2
    with torch.no_grad():  # the quantizer's fake quant (the converted layer itself runs the integer requantization)
        s = model.fc0(x) + model.fc2(torch.relu(model.fc1(model.fc0(x))))
        expect = torch.fake_quantize_per_channel_affine(s, scale, zp, 2, 0, 255)
        assert torch.equal(q.fc2.output_quant(s), expect)


def test_outlier_features_lose_far_less():
    torch.manual_seed(0)
    model, data = PostLN().eval(), _data()
    x = torch.randn(16, 6, 32)
    per_tensor = _error(quantize(model, data, PTQConfig(ln_inputs_per_feature=False)), model, x)
    per_feature = _error(quantize(model, data, PTQConfig()), model, x)
    assert per_feature < per_tensor / 4, (per_feature, per_tensor)


def test_to_integer_names_the_layer_and_the_option():
    torch.manual_seed(0)
    q = quantize(PostLN().eval(), _data(), PTQConfig())
    with pytest.raises(ConfigError, match=r"fc2 has one output scale per feature.*ln_inputs_per_feature"):
        to_integer(q, (torch.randn(1, 6, 32),))


def test_the_option_is_checked():
    with pytest.raises(ConfigError, match="ln_inputs_per_feature must be True or False"):
        PTQConfig(ln_inputs_per_feature="yes")

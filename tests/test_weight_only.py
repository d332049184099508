import pytest
import torch

from lowbit import zoo
from lowbit.errors import ConfigError
from lowbit.formats import Binary, DynamicFixedPoint, IntFormat, Log2, PowerOfTwo, Ternary
from lowbit.granularity import PerChannel, PerGroup, PerTensor
from lowbit.spec import QuantSpec, fake_quant
from lowbit.weight_only import WeightOnlyConfig, quantize_weights


def test_int8_per_channel_equals_torch_per_channel_fake_quant():
    w = torch.randn(16, 8, 3, 3)
    ours = fake_quant(w, QuantSpec(IntFormat(8), PerChannel(0)))
    amax = w.reshape(16, -1).abs().amax(1)
    scale = amax / 127.5  # symmetric over the full signed range, as qparams_from_range defines it
    ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(16, dtype=torch.int32), 0, -128, 127)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("fmt,max_levels", [(IntFormat(4), 16), (IntFormat(2), 4), (PowerOfTwo(4), 15),
                                            (Ternary(), 3), (Binary(), 2), (Log2(4), 15), (DynamicFixedPoint(6), 64)])
def test_each_format_gives_at_most_its_levels_per_channel(fmt, max_levels):
    w = torch.randn(6, 50)
    q = fake_quant(w, QuantSpec(fmt, PerChannel(0)))
    for row in q:
        assert row.unique().numel() <= max_levels


def test_per_group():
    w = torch.randn(4, 64)
    q = fake_quant(w, QuantSpec(IntFormat(4), PerGroup(16)))
    for block in q.reshape(4, 4, 16).reshape(16, 16):
        assert block.unique().numel() <= 16


def test_quantize_weights_copies_and_keeps_accuracy_order():
    model = zoo.build("cnn").eval()
    q8 = quantize_weights(model, WeightOnlyConfig(QuantSpec(IntFormat(8), PerChannel(0))))
    assert q8 is not model
    assert not torch.equal(q8.conv1.weight, model.conv1.weight)
    x = torch.randn(8, 1, 28, 28)
    err8 = (q8(x) - model(x)).abs().mean()
    err2 = (quantize_weights(model, WeightOnlyConfig(QuantSpec(IntFormat(2), PerTensor())))(x) - model(x)).abs().mean()
    assert err8 < err2


def test_model_without_layers_and_bad_config():
    with pytest.raises(ConfigError, match="no Linear or Conv"):
        quantize_weights(torch.nn.ReLU())
    with pytest.raises(ConfigError, match="WeightOnlyConfig.weight must be a QuantSpec"):
        WeightOnlyConfig(IntFormat(8))  # type: ignore[arg-type]

"""Eedn-style TrueNorth nets (lowbit.snn.eedn): trinary weights and their STE, the triangle surrogate, the core
constraint on the built net, the group-size errors, spike counts on a hand-set case, BN folded into integer
thresholds."""

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError, ShapeError
from lowbit.functional.ternary import eedn_trinary
from lowbit.snn.eedn import (EednNet, EednRun, EednSpec, FoldedEedn, SpikeNeuron, TrinaryConv2d, TrinaryLinear,
                             allowed_group_sizes, clip_hidden_, core_rows, cores, ensemble_counts, fold)


def test_trinary_forward_values_and_straight_through_gradient():
    h = torch.tensor([-1.0, -0.7, -0.5, -0.49, 0.0, 0.3, 0.49, 0.5, 0.9, 1.0], requires_grad=True)
    w = eedn_trinary(h)
    assert w.tolist() == [-1, -1, -1, 0, 0, 0, 0, 1, 1, 1]
    g = torch.arange(10.0)
    (w * g).sum().backward()
    assert torch.equal(h.grad, g)  # dw/dh = 1 everywhere


def test_trinary_layers_use_codes_and_clip_their_hidden_weights():
    torch.manual_seed(0)
    conv, lin = TrinaryConv2d(4, 6, 3, padding=1, groups=2), TrinaryLinear(5, 3)
    assert conv.bias is None and lin.bias is None
    x = torch.rand(2, 4, 5, 5)
    ref = nn.functional.conv2d(x, conv.codes().float(), None, 1, 1, 1, 2)
    assert torch.allclose(conv(x), ref)
    assert set(lin.codes().unique().tolist()) <= {-1, 0, 1}
    with torch.no_grad():
        conv.weight.mul_(3.0)
    clip_hidden_(nn.Sequential(conv, nn.ReLU()))
    assert conv.weight.abs().max() == 1.0


def test_triangle_surrogate_gradient_matches_the_formula():
    r = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5], requires_grad=True)
    y = SpikeNeuron()(r)
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    g = torch.linspace(1.0, 2.0, 9)
    y.backward(g)
    assert torch.allclose(r.grad, g * torch.clamp(1 - r.detach().abs(), min=0))  # max(0, 1 - |r|)


def test_the_built_net_fits_truenorth_and_its_cores():
    net = EednNet(EednSpec(group_size=8, population=4))
    rows = {r.name: r for r in core_rows(net)}
    assert [rows[n].fan_in for n in ("b1.0", "b2.0", "b3.0", "b4.0", "b5.0", "b6.0", "out.0")] == \
           [72, 64, 72, 72, 128, 72, 128]
    # positions x groups (each group's filters fit one core's 256 neurons)
    expected = 14 * 14 * 2 + 14 * 14 * 1 + 14 * 14 * 8 + 7 * 7 * 16 + 7 * 7 * 1 + 7 * 7 * 16 + 7 * 7 * 1
    assert cores(net) == expected == 3822
    assert net.training  # counting cores leaves the mode alone
    assert cores(EednNet(EednSpec(group_size=1))) > cores(net)  # more groups, more cores


def test_a_net_with_fan_in_over_128_fails_naming_the_layer():
    net = EednNet()
    net.core.b3[0] = TrinaryConv2d(64, 128, 3, padding=1, groups=4)  # 16 channels x 9 = 144 inputs per filter
    with pytest.raises(ConfigError, match=r"b3\.0: fan-in 144 > 128 \(groups=8 fits\)"):
        cores(net)


@pytest.mark.parametrize("g", [16, 3, 0, -8, 2.0, True])
def test_a_group_size_the_net_cannot_meet_names_the_value_and_the_allowed_ones(g):
    with pytest.raises(ConfigError, match=rf"group_size = {g!r}.*allowed: 1, 2, 4, 8$"):
        EednNet(EednSpec(group_size=g))
    if g == 16:
        with pytest.raises(ConfigError, match=r"fan-in of 9 x 16 = 144 > 128"):
            EednSpec(group_size=16)


def test_group_sizes_follow_the_transduction_width_and_other_fields_are_checked():
    assert allowed_group_sizes(16) == [1, 2, 4, 8]
    assert allowed_group_sizes(12) == [1, 2, 4]
    with pytest.raises(ConfigError, match=r"EednSpec.population = 0; allowed: an integer in 1..25"):
        EednSpec(population=0)
    with pytest.raises(ConfigError, match=r"kind = 'relu'"):
        EednSpec(kind="relu")
    with pytest.raises(ShapeError, match=r"\(N, 1, 28, 28\), got \(2, 3, 28, 28\)"):
        EednNet().run(torch.zeros(2, 3, 28, 28))


def _set_constant_neurons(net: EednNet, fire: dict[str, list[int]]) -> None:
    """gamma = 0 everywhere: neuron (channel c) of a layer fires iff its BN bias beta_c >= 0 (c in fire[layer])."""
    blocks = {"transduce": net.transduce, **dict(net.core.named_children())}
    with torch.no_grad():
        for name, block in blocks.items():
            bn = block[1]
            bn.weight.zero_()
            bn.bias.fill_(-1.0)
            bn.bias[fire[name]] = 1.0


def test_spike_counts_on_a_hand_set_net():
    spec = EednSpec(transduction=16, population=2)
    net = EednNet(spec).eval()
    fire = {"transduce": [0, 5, 7], "b1": [1], "b2": [], "b3": list(range(10)), "b4": [3, 4], "b5": [0],
            "b6": list(range(128)), "out": [0, 1, 4, 19]}   # out channels: class k = 2k, 2k + 1
    _set_constant_neurons(net, fire)
    spikes = 3 * 28 * 28 + 1 * 14 * 14 + 0 + 10 * 14 * 14 + 2 * 7 * 7 + 1 * 7 * 7 + 128 * 7 * 7 + 4 * 7 * 7
    r = net.run(torch.randn(3, 1, 28, 28))
    assert r.spikes.tolist() == [spikes] * 3
    assert r.counts[0].tolist() == [2 * 49, 0, 49, 0, 0, 0, 0, 0, 0, 49]
    folded = fold(net)  # gamma = 0: the folded neurons fire by beta's sign alone
    rf = folded.run(torch.randn(3, 1, 28, 28))
    assert torch.equal(rf.counts, r.counts) and torch.equal(rf.spikes, r.spikes)
    ens = ensemble_counts([r, EednRun(torch.ones(3, 10), r.spikes)])
    assert ens[0].tolist() == [99, 1, 50, 1, 1, 1, 1, 1, 1, 50] and ens.argmax(1).tolist() == [0, 0, 0]


def test_folding_bn_into_integer_thresholds_keeps_every_spike():
    torch.manual_seed(1)
    net = EednNet(EednSpec(population=2))
    with torch.no_grad():  # running statistics from a few batches, and gammas of both signs
        for _ in range(3):
            net(torch.randn(16, 1, 28, 28))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn_like(m.weight))
                m.bias.copy_(0.5 * torch.randn_like(m.bias))
    net.eval()
    folded = fold(net)
    assert isinstance(folded, FoldedEedn) and cores(folded) == cores(net)
    for layer in folded.layers:
        assert layer.codes.dtype == torch.int8 and layer.theta.dtype == torch.int64
        assert set(layer.codes.unique().tolist()) <= {-1, 0, 1}
    x = torch.randn(8, 1, 28, 28)
    a, b = net.run(x), folded.run(x)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.spikes, b.spikes)
    assert 0 < float(a.spikes.mean()) < 83496  # some, not all, of the 83496 neurons fire
    with pytest.raises(ConfigError, match="kind = 'truenorth'"):
        fold(EednNet(EednSpec(kind="float")))


def test_the_float_reference_trains_a_step_and_the_spiking_net_gets_gradients():
    torch.manual_seed(0)
    for kind in ("truenorth", "float"):
        net = EednNet(EednSpec(kind=kind, population=1))
        loss = nn.functional.cross_entropy(net(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        assert net.transduce[0].weight.grad.abs().sum() > 0  # the surrogate carries the gradient to the host layer
        assert net.core.b1[0].weight.grad.abs().sum() > 0

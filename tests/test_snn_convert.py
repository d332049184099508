"""Neurons, the max-pool gate, ANN-to-SNN conversion and the T-step runner, against closed forms and brute force."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit import snn
from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.snn import MaxPoolGate, NeuronSpec, Reset, Spikes, neuron_step
from lowbit.snn.runner import _fan_out

SPECS = [NeuronSpec(), NeuronSpec(spikes=Spikes.TERNARY), NeuronSpec(spikes=Spikes.AUGMENTED, max_spikes=3),
         NeuronSpec(spikes=Spikes.AUGMENTED, max_spikes=3, negative=False, initial_potential=0.5),
         NeuronSpec(initial_potential=0.5, threshold=0.7), NeuronSpec(reset=Reset.ZERO, leak=0.9),
         NeuronSpec(spikes=Spikes.TERNARY, negative_threshold=0.5)]


@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_inference_step_equals_the_autograd_step(spec):
    """The no-grad fast path and the surrogate path send the same spikes and keep the same state."""
    torch.manual_seed(0)
    currents = torch.randn(12, 50) * 1.5
    fast, slow = None, None
    for t in range(12):
        with torch.no_grad():
            s_fast, fast = neuron_step(currents[t], fast, spec)
        x = currents[t].clone().requires_grad_(True)
        s_slow, slow = neuron_step(x, slow, spec)
        slow = snn.NeuronState(slow.v.detach(), slow.count)
        assert torch.equal(s_fast, s_slow.detach())
        assert torch.allclose(fast.v, slow.v, atol=1e-6) and torch.equal(fast.count, slow.count)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([Spikes.BINARY, Spikes.TERNARY, Spikes.AUGMENTED]),
       st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=30), st.sampled_from([0.0, 0.5]))
def test_subtractive_reset_conserves_charge(kind, currents, v0):
    """IF with reset by subtraction: theta * (spikes sent) + v_T = v_0 + sum of the currents, exactly as charge."""
    spec = NeuronSpec(spikes=kind, max_spikes=4 if kind is Spikes.AUGMENTED else 1, threshold=0.75, initial_potential=v0)
    state = None
    for c in currents:
        _, state = neuron_step(torch.tensor([c], dtype=torch.float64), state, spec)
    lhs = 0.75 * state.count + state.v
    assert lhs.item() == pytest.approx(v0 * 0.75 + math.fsum(currents), abs=1e-9)
    if kind is not Spikes.BINARY:
        assert state.count.item() >= 0  # a negative spike only takes back what was sent


@pytest.mark.parametrize("current", [0.0, 0.13, 0.5, 0.99, 1.0])
def test_if_neuron_rate_is_floor_of_charge(current):
    """Constant current I <= theta for T steps from rest: floor(T I / theta) spikes (Diehl 2015, Rueckauer 2017)."""
    state = None
    total = 0.0
    for _ in range(37):
        s, state = neuron_step(torch.tensor([current], dtype=torch.float64), state, NeuronSpec())
        total += s.item()
    assert total == math.floor(37 * current + 1e-9)


def test_augmented_first_step_rounds_to_nearest_with_half_initial_potential():
    spec = NeuronSpec(spikes=Spikes.AUGMENTED, max_spikes=4, threshold=0.25, initial_potential=0.5)
    x = torch.tensor([0.0, 0.1, 0.13, 0.49, 0.6, 0.87, 2.0])
    s, _ = neuron_step(x, None, spec)
    assert s.tolist() == torch.round(x / 0.25).clamp(0, 4).tolist()


def test_ternary_takes_back_over_firing():
    spec = NeuronSpec(spikes=Spikes.TERNARY)
    seq = [1.5, 1.5, -1.4, -1.4, 0.0]
    state, sent = None, []
    for c in seq:
        s, state = neuron_step(torch.tensor([c]), state, spec)
        sent.append(s.item())
    assert sent == [1.0, 1.0, 0.0, -1.0, 0.0]
    binary = None
    for c in seq:
        _, binary = neuron_step(torch.tensor([c]), binary, NeuronSpec())
    assert binary.count.item() == 2.0 and state.count.item() == 1.0  # the ReLU of the sum (0.2) is closer to 1


def test_reset_to_zero_and_leak():
    spec = NeuronSpec(reset=Reset.ZERO, leak=0.5)
    s, st1 = neuron_step(torch.tensor([0.8]), None, spec)
    assert s.item() == 0 and st1.v.item() == pytest.approx(0.8)
    s, st2 = neuron_step(torch.tensor([0.7]), st1, spec)  # 0.4 + 0.7 = 1.1 >= 1: spike, then v = 0
    assert s.item() == 1 and st2.v.item() == 0.0


def test_gate_matches_brute_force():
    torch.manual_seed(1)
    spikes = (torch.rand(9, 2, 3, 4, 4) < 0.4).float() * torch.tensor([1.0, 2.0, 0.5]).reshape(1, 1, 3, 1, 1)
    gate, state = MaxPoolGate(2), None
    counts = torch.zeros(2, 3, 4, 4)
    for t in range(9):
        out, state = gate(spikes[t], state)
        counts += spikes[t]
        want = torch.zeros(2, 3, 2, 2)
        for n in range(2):
            for c in range(3):
                for i in range(2):
                    for j in range(2):
                        window = [(2 * i + a, 2 * j + b) for a in range(2) for b in range(2)]
                        best = max(window, key=lambda p: (counts[n, c, p[0], p[1]].item(), -window.index(p)))
                        want[n, c, i, j] = spikes[t, n, c, best[0], best[1]]
        assert torch.equal(out, want)


class _OneHidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.relu(self.bn(self.conv(x)))))


def _trained_like(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = _OneHidden()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.3, 0.3)
    return m.eval()


@pytest.mark.parametrize("T", [1, 5, 16, 64])
def test_converted_one_hidden_layer_equals_the_closed_form(T):
    """BN folded, max norm, IF with reset by subtraction: hidden spike count = floor(T a / lambda), so the
    readout is W2 (floor(T a / lambda) lambda / T) + b2 exactly (a = the ANN's ReLU output, lambda its max)."""
    model = _trained_like()
    torch.manual_seed(2)
    calib = torch.randn(64, 1, 6, 6)
    x = calib[:16]
    net = snn.convert(model, [calib], neuron=NeuronSpec(), norm=snn.Norm.max())
    with torch.no_grad():
        a = model.relu(model.bn(model.conv(calib)))
        lam = a.max()
        a = a[:16]
        want = model.fc((torch.floor(T * a.double() / lam.double() + 1e-9) * lam.double() / T).float().flatten(1))
    got = snn.run(net, x, [T]).outputs[T]
    assert torch.allclose(got, want, atol=1e-4)
    assert net.report.folded_bn == ["bn"]


def test_sweep_converges_to_the_ann_and_counts_synops():
    model = _trained_like(3)
    torch.manual_seed(4)
    calib = torch.randn(128, 1, 6, 6)
    x = calib[:32]
    with torch.no_grad():
        labels = model(x).argmax(1)
    net = snn.convert(model, [calib], neuron=NeuronSpec(spikes=Spikes.AUGMENTED, max_spikes=4), norm=snn.Norm.max())
    r = snn.run(net, x, [1, 256])
    assert (r.outputs[256].argmax(1) == labels).float().mean() >= 0.95
    # the fc layer reads spikes: one accumulate per event per output
    events = r.events[256]["snn_relu"]
    assert r.synops[256] == pytest.approx(events * 5)
    # the conv reads the analog input: its MACs (taps inside the image: 16 per row pair of a 3x3 kernel over 6
    # positions with padding 1, so 16 * 16 per output channel) count once however many steps
    assert r.input_macs[1] == r.input_macs[256] == 32 * 4 * 16 * 16
    rows = snn.sweep(net, x, labels, [1, 256], batch_size=10)
    assert rows[1].accuracy >= 95.0 and rows[1].spikes_per_inference > rows[0].spikes_per_inference


@pytest.mark.parametrize("size, stride, padding", [(5, 2, 1), (6, 2, 1), (7, 3, 0), (6, 1, 2)])
def test_conv_fan_out_matches_brute_force(size, stride, padding):
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding)
    x = torch.zeros(1, 2, size, size)
    fan = _fan_out(conv, x)
    out_h = (size + 2 * padding - 3) // stride + 1
    want = torch.zeros(2, size, size)
    for i in range(out_h):
        for j in range(out_h):
            for ky in range(3):
                for kx in range(3):
                    y, xx = stride * i + ky - padding, stride * j + kx - padding
                    if 0 <= y < size and 0 <= xx < size:
                        want[:, y, xx] += 3
    assert torch.equal(fan, want)


def test_shipped_cnn_converts_with_the_gate_and_reports_it():
    from lowbit import zoo

    net = snn.convert(zoo.pretrained("cnn"), [torch.randn(8, 1, 28, 28)], neuron=NeuronSpec())
    assert set(net.report.pooling) == {"pool1", "pool2"}
    assert set(net.report.neurons) == {"relu1", "relu2", "relu3"}
    assert net.report.folded_bn == ["bn1", "bn2"]
    assert any("gate" in line for line in net.report.lines())


class _Sigmoidal(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.fc2(self.relu(self.act(self.fc1(x))) * 2 + torch.tanh(x))


def test_unmappable_layers_are_named():
    with pytest.raises(snn.ConversionError, match=r"act \(Sigmoid\).*tanh"):
        snn.convert(_Sigmoidal(), [torch.randn(4, 4)])


@pytest.mark.parametrize("bad", [0, -3, [4, 0], 2.5, [], True])
def test_bad_time_steps(bad):
    net = snn.convert(_trained_like(), [torch.randn(8, 1, 6, 6)])
    with pytest.raises(ConfigError, match="time steps must be integers >= 1"):
        snn.run(net, torch.randn(2, 1, 6, 6), bad)


@pytest.mark.parametrize("p", [0, -1, 100.5, float("nan")])
def test_bad_percentile(p):
    with pytest.raises(ConfigError, match=r"percentile must be in \(0, 100\]"):
        snn.Norm(p)


def test_wrong_input_shape_and_bad_calibration():
    net = snn.convert(_trained_like(), [torch.randn(8, 1, 6, 6)])
    with pytest.raises(ShapeError, match=r"takes \[N, 1, 6, 6\]"):
        snn.run(net, torch.randn(2, 1, 7, 7), 4)
    with pytest.raises(DataError, match="empty"):
        snn.convert(_trained_like(), [])
    with pytest.raises(DataError, match="NaN"):
        snn.convert(_trained_like(), [torch.full((2, 1, 6, 6), float("nan"))])


@pytest.mark.parametrize("kwargs, field", [({"threshold": 0}, "threshold"), ({"leak": 1.5}, "leak"),
                                           ({"max_spikes": 0, "spikes": Spikes.AUGMENTED}, "max_spikes"),
                                           ({"max_spikes": 3}, "max_spikes"), ({"reset": "zero"}, "reset"),
                                           ({"initial_potential": 1.0}, "initial_potential")])
def test_bad_neuron_specs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"NeuronSpec.{field}"):
        NeuronSpec(**kwargs)

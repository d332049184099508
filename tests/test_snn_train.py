"""Spiking training: surrogate gradients against their formulas, reset detaching, the LIF oracle, events from
saccades against a brute-force DVS, input codings, the spiking CNN against a step-by-step loop, and a short run."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.data import events
from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.functional.surrogate import Arctan, FastSigmoid, MembranePotential, Triangle, spike
from lowbit.snn.models import SpikingCNN, SpikingCNNSpec, pretrained_spiking, spec_dict
from lowbit.snn.neurons import NeuronSpec, SpikingNeuron, neuron_step

U = torch.tensor([-2.0, -1.0, -0.6, -0.25, 0.0, 0.1, 0.5, 0.99, 1.5, 3.0], dtype=torch.float64)


def _autograd(u: torch.Tensor, surrogate) -> torch.Tensor:
    u = u.clone().requires_grad_(True)
    spike(u, surrogate).sum().backward()
    return u.grad


@pytest.mark.parametrize("surrogate, formula", [
    (Triangle(), lambda u: (1 - u.abs()).clamp(min=0)),
    (Triangle(0.5), lambda u: (1 - u.abs() / 0.5).clamp(min=0) / 0.5),
    (FastSigmoid(5.0), lambda u: 1 / (1 + 5 * u.abs()) ** 2),
    (Arctan(2.0), lambda u: 1.0 / (1 + (math.pi * u) ** 2)),
])
def test_surrogate_gradient_is_the_formula(surrogate, formula):
    assert torch.allclose(_autograd(U, surrogate), formula(U), rtol=1e-12, atol=0)


def test_arctan_gradient_is_the_derivative_of_its_smooth_step():
    u = U.clone().requires_grad_(True)
    (torch.atan(math.pi * 3.0 * u / 2) / math.pi + 0.5).sum().backward()  # alpha = 3
    assert torch.allclose(_autograd(U, Arctan(3.0)), u.grad, rtol=1e-12, atol=0)


def test_spike_forward_is_a_step():
    assert torch.equal(spike(U, Triangle()), (U >= 0).double())


@pytest.mark.parametrize("theta", [0.5, 1.0, 2.0])
def test_membrane_potential_gradient_is_one_over_threshold(theta):
    current = torch.tensor([-3.0, -0.2, 0.1, 0.4, 1.0, 5.0], dtype=torch.float64, requires_grad=True)
    s, _ = neuron_step(current, None, NeuronSpec(threshold=theta, surrogate=MembranePotential()))
    s.sum().backward()
    expected = torch.where(current.detach() > 0, 1.0 / theta, 0.0)  # positive_only: where v > 0
    assert torch.allclose(current.grad, expected.double())
    current.grad = None
    s, _ = neuron_step(current, None, NeuronSpec(threshold=theta, surrogate=MembranePotential(positive_only=False)))
    s.sum().backward()
    assert torch.allclose(current.grad, torch.full_like(current, 1.0 / theta))


@pytest.mark.parametrize("detach, expected", [(True, 0.9), (False, 0.9 * (1 - 0.8))])
def test_detach_reset_removes_the_reset_path_from_the_gradient(detach, expected):
    # IF neuron, theta 1, triangle: step 1 v = 1.2 fires (u1 = 0.2, sigma' = 0.8), resets to 0.2; step 2 v = 0.9
    # (u2 = -0.1, sigma' = 0.9). ds2/dI1 = sigma'(u2) (1 - sigma'(u1) [if the reset passes gradient]).
    spec = NeuronSpec(threshold=1.0, leak=1.0, detach_reset=detach)
    i1 = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    s1, state = neuron_step(i1, None, spec)
    s2, _ = neuron_step(torch.tensor(0.7, dtype=torch.float64), state, spec)
    assert float(s1.detach()) == 1.0 and float(s2.detach()) == 0.0
    (g,) = torch.autograd.grad(s2, i1)
    assert float(g) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("leak", [1.0, 0.5])
def test_lif_with_huge_threshold_is_a_linear_accumulator(leak):
    torch.manual_seed(0)
    currents = torch.randn(6, 3, 4, dtype=torch.float64)
    neuron = SpikingNeuron(NeuronSpec(threshold=1e9, leak=leak)).double()
    state = None
    for t, current in enumerate(currents):
        s, state = neuron(current, state)
        assert not s.any()
        oracle = sum(leak ** (t - k) * currents[k] for k in range(t + 1))
        assert torch.allclose(state.v, oracle, rtol=1e-12, atol=1e-12)


def test_silent_spiking_cnn_outputs_the_readout_bias():
    model = SpikingCNN(SpikingCNNSpec(channels=(2, 3), hidden=5, time_steps=3, threshold=1e9, leak=1.0)).eval()
    logits, counts = model.run(torch.randn(4, 1, 28, 28))
    assert all(int(c.sum()) == 0 for c in counts)
    assert torch.allclose(logits, model.readout.bias.expand(4, -1))


# ---------------------------------------------------------------- events


def _dvs_brute_force(frames: torch.Tensor, c: float, eps: float) -> torch.Tensor:
    n, k, _, h, w = frames.shape
    out = torch.zeros(n, k - 1, 2, h, w)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                ref = math.log(float(frames[b, 0, 0, i, j]) + eps)
                for t in range(1, k):
                    level = math.log(float(frames[b, t, 0, i, j]) + eps)
                    if level - ref >= c:
                        out[b, t - 1, 0, i, j], ref = 1, level
                    elif level - ref <= -c:
                        out[b, t - 1, 1, i, j], ref = 1, level
    return out


def test_dvs_events_match_a_per_pixel_reference():
    torch.manual_seed(1)
    frames = torch.rand(2, 6, 1, 4, 5, dtype=torch.float64)
    assert torch.equal(events.dvs_events(frames, 0.3, 0.1).float(), _dvs_brute_force(frames, 0.3, 0.1))


def test_a_still_image_gives_no_events():
    x = torch.rand(3, 1, 8, 8)
    frames = events.saccade_frames(x, torch.zeros(5, 2), pad=2)
    assert torch.allclose(frames[:, 0, :, 2:-2, 2:-2], x)
    assert not events.dvs_events(frames.clamp(0, 1)).any()


def test_a_bar_shifted_right_gives_on_and_off_events_at_its_edges():
    x = torch.zeros(1, 1, 5, 6)
    x[..., 2:4] = 1.0  # a bright vertical bar in columns 2, 3
    frames = events.saccade_frames(x, torch.tensor([[0.0, 0.0], [0.0, 1.0]]), pad=0)
    ev = events.dvs_events(frames.clamp(0, 1), threshold=0.5)
    assert ev.shape == (1, 1, 2, 5, 6)
    on, off = torch.zeros(5, 6), torch.zeros(5, 6)
    on[:, 4], off[:, 2] = 1, 1  # the bar's leading edge brightens column 4, its trailing edge darkens column 2
    assert torch.equal(ev[0, 0, 0], on) and torch.equal(ev[0, 0, 1], off)


def test_half_pixel_shift_interpolates_and_events_have_the_canvas_shape():
    x = torch.zeros(1, 1, 4, 4)
    x[..., 1] = 1.0
    frames = events.saccade_frames(x, torch.tensor([[0.0, 0.5]]), pad=0)
    assert torch.allclose(frames[0, 0, 0, 0], torch.tensor([0.0, 0.5, 0.5, 0.0]), atol=1e-6)
    ev = events.saccade_events(torch.rand(2, 1, 28, 28), time_steps=4)
    assert ev.shape == (2, 4, 2, 32, 32) and set(ev.unique().tolist()) <= {0.0, 1.0}
    path = events.triangle_path(6, 2.0)
    assert path.shape == (7, 2) and torch.equal(path[0], path[-1]) and float(path.abs().max()) == 2.0


def test_codings_rates_and_first_spike_times():
    torch.manual_seed(2)
    x = torch.rand(2, 1, 6, 6)
    x[0, 0, 0, 0] = 0.0
    rate = events.rate_coding(x, 4000, torch.Generator().manual_seed(0))
    assert rate.shape == (2, 4000, 1, 6, 6) and set(rate.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(rate.mean(1), x, atol=0.03)  # 4 sigma of a Bernoulli mean over 4000 draws
    lat = events.latency_coding(x, 8)
    fired = lat.sum(1)
    assert torch.equal(fired, (x > 0).float())  # one spike per lit pixel, none for I = 0
    t_first = lat.argmax(1).float()
    expected = torch.floor((1 - x) * 8).clamp(max=7)
    assert torch.equal(t_first[x > 0], expected[x > 0])
    direct = events.direct_coding(x, 3)
    assert direct.shape == (2, 3, 1, 6, 6) and all(torch.equal(direct[:, t], x) for t in range(3))


def test_coding_and_event_errors_name_the_problem():
    x = torch.rand(2, 1, 6, 6)
    with pytest.raises(ConfigError, match="time_steps"):
        events.rate_coding(x, 0)
    with pytest.raises(ShapeError, match=r"\[N, C, H, W\]"):
        events.latency_coding(x[0], 4)
    with pytest.raises(DataError, match="intensity"):
        events.rate_coding(x * 3 - 1, 4)
    with pytest.raises(ConfigError, match="threshold"):
        events.dvs_events(torch.rand(1, 3, 1, 4, 4), threshold=0.0)
    with pytest.raises(ShapeError, match="K >= 2"):
        events.dvs_events(torch.rand(1, 1, 1, 4, 4))
    with pytest.raises(ConfigError, match="coding"):
        SpikingCNNSpec(coding="poisson")
    with pytest.raises(ConfigError, match="surrogate"):
        SpikingCNNSpec(surrogate="sigmoid")


# ---------------------------------------------------------------- the spiking CNN


def _step_by_step(model: SpikingCNN, seq: torch.Tensor) -> torch.Tensor:
    """The whole network one time step at a time, each layer's state carried explicitly (eval mode)."""
    states = [None] * (len(model.convs) + 1)
    out = []
    for x_t in seq.unbind(1):
        h = x_t
        for i, (conv, neuron) in enumerate(zip(model.convs, model.conv_neurons)):
            s, states[i] = neuron(conv(h), states[i])
            h = torch.nn.functional.max_pool2d(s, 2)
        s, states[-1] = model.fc_neuron(model.fc(h.flatten(1)), states[-1])
        out.append(model.readout(s))
    return torch.stack(out).mean(0)


@pytest.mark.parametrize("coding", ["direct", "rate", "events"])
def test_layer_by_layer_equals_a_step_by_step_loop(coding):
    torch.manual_seed(3)
    model = SpikingCNN(SpikingCNNSpec(channels=(4, 6), hidden=8, time_steps=3, coding=coding, threshold=0.3)).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(5, 1, 28, 28)
    seq = model.encode(x) if coding != "rate" else events.rate_coding(events.intensity(x), 3)
    logits, counts = model.run(seq)
    assert torch.allclose(logits, _step_by_step(model, seq), atol=1e-5)
    assert sum(float(c.sum()) for c in counts[1:]) > 0  # the comparison is not between silent networks
    if coding == "direct":  # the one-convolution shortcut for a repeated frame gives the same logits
        assert torch.allclose(model(x), logits, atol=1e-5)
    assert len(counts) == len(model.fanouts())


def test_a_few_steps_of_bptt_lower_the_loss(tmp_path):
    from lowbit.training import Adam, LoopConfig, train

    torch.manual_seed(4)
    x = torch.randn(128, 1, 28, 28)
    y = torch.randint(0, 10, (128,))
    for label in range(10):  # a learnable signal: a bright stripe in rows 2 label .. 2 label + 3
        x[y == label, 0, 2 * label:2 * label + 4] += 2.0
    spec = SpikingCNNSpec(channels=(4, 8), hidden=16, time_steps=2, surrogate="fast-sigmoid")
    model = SpikingCNN(spec)

    def loss_now() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x), y))

    before = loss_now()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    history = train(model, batches, LoopConfig(epochs=4, batch_size=32), optimizer=Adam(lr=0.01), progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    assert loss_now() < 0.8 * before

    from lowbit.zoo.weights_io import save_state
    save_state(model.state_dict(), tmp_path / "spiking-cnn.npz", {"spec": spec_dict(spec), "test_accuracy": 0.0})
    loaded = pretrained_spiking("spiking-cnn", tmp_path)
    model.eval()
    assert torch.equal(loaded(x[:8]), model(x[:8]))
    from lowbit.data.datasets import Split
    from lowbit.snn.models import shipped_spiking_rows
    (row,) = shipped_spiking_rows(Split(x, y), 16, tmp_path)
    assert row[0].startswith("spiking-cnn") and row[1] == 2 and 0 <= row[2] <= 100 and row[3] > 0
    with pytest.raises(ConfigError, match="unknown spiking model"):
        pretrained_spiking("resnet", tmp_path)


@pytest.mark.parametrize("name", ["spiking-cnn", "spiking-cnn-events"])
def test_shipped_spiking_cnns_load_and_classify(name):
    from lowbit.data import fashion_mnist
    from lowbit.snn.models import WEIGHTS, evaluate_spiking
    from lowbit.zoo.weights_io import read_meta

    path = WEIGHTS / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"{name} is not shipped in this build")
    model, meta = pretrained_spiking(name), read_meta(path)
    test = fashion_mnist("test")
    r = evaluate_spiking(model, test.x[:1000], test.y[:1000])  # the full set's figure is in the JSON
    assert abs(r["accuracy"] - meta["test_accuracy"]) < 0.03 and r["accuracy"] > 0.85
    assert meta["time_steps"] == model.spec.time_steps <= 8

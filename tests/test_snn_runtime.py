"""The event-driven runtime (lowbit.snn.lower + lowbit.snn.events + csrc/events.c) against the torch simulation.

The oracle is :func:`lowbit.snn.run` on the same converted net: the runtime folds each neuron's amplitude (and
the average pools' divisors) into the next weights and adds weight columns in event order, so float32 sums
differ in their last bits; readouts are compared with a tolerance, and the spikes, events and synaptic
operations of every layer must be identical (a threshold crossing that flipped would show there).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lowbit import snn, zoo
from lowbit.data import fashion_mnist
from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.native import cext, guard
from lowbit.snn.events import DenseRunner, Engine, EventRuntime, fire
from lowbit.snn.lower import AvgPool, EventConv, Gate, Neurons, lower
from lowbit.snn.neurons import neuron_step

needs_c = pytest.mark.skipif(cext.library() is None, reason="no C compiler: the event kernel is not built")

SPECS = {
    "binary": snn.NeuronSpec(),
    "ternary": snn.NeuronSpec(spikes=snn.Spikes.TERNARY),
    "augmented": snn.NeuronSpec(spikes=snn.Spikes.AUGMENTED, max_spikes=4, initial_potential=0.5),
}
STEPS = [4, 8]


@pytest.fixture(scope="module")
def fashion():
    return fashion_mnist("train").x[:500], fashion_mnist("test").x[:3]


def _same(r, sim, i: int, scale: float = 1.0) -> None:
    """The runtime's result ``r`` for image ``i`` equals the simulation's ``sim`` (a batch run)."""
    for t in STEPS:
        assert torch.allclose(r.outputs[t], sim.outputs[t][i], atol=1e-5 * scale, rtol=1e-5), (t, r.outputs[t],
                                                                                                sim.outputs[t][i])
        assert r.outputs[t].argmax() == sim.outputs[t][i].argmax()


def _runs(net, x, engine):
    rt = EventRuntime.from_net(net, engine=engine)
    return [rt.run(x[i], STEPS) for i in range(len(x))]


@needs_c
@pytest.mark.parametrize("model", ["cnn-avgpool", "cnn"])
@pytest.mark.parametrize("kind", list(SPECS))
def test_runtime_equals_the_simulation_on_converted_fashion_nets(fashion, model, kind):
    calib, x = fashion
    net = snn.convert(zoo.pretrained(model), [calib], neuron=SPECS[kind])
    c_runs, torch_runs = _runs(net, x, Engine.C), _runs(net, x, Engine.TORCH)
    for i in range(len(x)):
        sim = snn.run(net, x[i:i + 1], STEPS)  # one image at a time: the counts are per inference
        for r in (c_runs[i], torch_runs[i]):
            _same(r, sim, 0, scale=float(sim.outputs[8].abs().max()))
            for t in STEPS:
                assert r.spikes[t] == {k: int(v) for k, v in sim.spikes[t].items()}
                assert r.events[t] == {k: int(v) for k, v in sim.events[t].items()}
                assert r.synops[t] == int(sim.synops[t])
                assert r.input_macs == int(sim.input_macs[t])
        assert sum(c_runs[i].spikes[8].values()) > 0


class _Small(nn.Module):
    """Strided, padded conv; an overlapping, padded max pool (gate windows share inputs); avg pool; two linears."""

    def __init__(self, pool: str = "max") -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, stride=2, padding=1)
        self.r1 = nn.ReLU()
        self.p1 = nn.MaxPool2d(3, stride=2, padding=1) if pool == "max" else nn.AvgPool2d(3, stride=2, padding=1)
        self.c2 = nn.Conv2d(6, 5, 2, padding=1)
        self.r2 = nn.ReLU()
        self.p2 = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.f1 = nn.Linear(5 * 2 * 2, 7)
        self.r3 = nn.ReLU()
        self.f2 = nn.Linear(7, 4)

    def forward(self, x):
        x = self.p1(self.r1(self.c1(x)))
        x = self.p2(self.r2(self.c2(x)))
        return self.f2(self.r3(self.f1(self.flat(x))))


SMALL_SPECS = [
    snn.NeuronSpec(leak=0.9, reset=snn.Reset.ZERO),
    snn.NeuronSpec(spikes=snn.Spikes.TERNARY, negative_threshold=0.5, leak=0.95),
    snn.NeuronSpec(spikes=snn.Spikes.AUGMENTED, max_spikes=3, negative=True, initial_potential=0.25),
    snn.NeuronSpec(spikes=snn.Spikes.AUGMENTED, max_spikes=2, negative=False, reset=snn.Reset.ZERO),
]


@needs_c
@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("spec", SMALL_SPECS, ids=lambda s: f"{s.spikes.name}-{s.reset.name}-leak{s.leak}")
@pytest.mark.parametrize("norm", [snn.Norm(), snn.Norm(99.0, per_channel=True)], ids=["layer", "channel"])
def test_runtime_equals_the_simulation_on_every_neuron_kind_and_geometry(pool, spec, norm):
    torch.manual_seed(0)
    model = _Small(pool).eval()
    x = torch.randn(6, 2, 11, 9)
    net = snn.convert(model, [torch.randn(64, 2, 11, 9)], neuron=spec, norm=norm)
    sim = snn.run(net, x, STEPS)
    for engine in (Engine.C, Engine.TORCH):
        rt = EventRuntime.from_net(net, engine=engine)
        runs = [rt.run(x[i], STEPS) for i in range(len(x))]
        for i, r in enumerate(runs):
            _same(r, sim, i, scale=float(sim.outputs[8].abs().max()))
        for t in STEPS:  # batch totals
            for name, v in sim.spikes[t].items():
                assert sum(r.spikes[t][name] for r in runs) == round(v), (engine, name)
            assert sum(r.synops[t] for r in runs) == round(sim.synops[t])


@needs_c
def test_runtime_runs_an_mlp_whose_first_layer_reads_the_flattened_image():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 5, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(4, 3, 4, 5)
    net = snn.convert(model, [torch.randn(32, 3, 4, 5)], neuron=SPECS["augmented"])
    sim = snn.run(net, x, STEPS)
    rt = EventRuntime.from_net(net)
    for i in range(len(x)):
        _same(rt.run(x[i], STEPS), sim, i, scale=float(sim.outputs[8].abs().max()))


def test_fire_is_neuron_step_after_integration():
    """The runtime's torch neuron (no surrogate) against the simulation's neuron_step, over 12 steps."""
    torch.manual_seed(2)
    specs = [*SPECS.values(), *SMALL_SPECS]
    theta = torch.rand(5, 1, 1) + 0.2
    for spec in specs:
        state = None
        v, count = None, None
        th_neg = theta if spec.negative_threshold is None else torch.full_like(theta, spec.negative_threshold)
        for _ in range(12):
            current = torch.randn(5, 4, 4) * torch.rand(1) * 2
            s_ref, state = neuron_step(current, state, spec, theta)
            if v is None:
                v = torch.zeros_like(current) + (spec.initial_potential * theta if spec.initial_potential else 0.0)
                count = torch.zeros_like(current)
            s, v, count = fire(spec.leak * v + current, count, spec, theta, th_neg)
            assert torch.equal(s, s_ref.detach()) and torch.equal(v, state.v) and torch.equal(count, state.count)


def test_lowering_folds_amplitude_and_divisor_into_the_next_weights():
    torch.manual_seed(3)
    model = _Small("avg").eval()
    net = snn.convert(model, [torch.randn(64, 2, 11, 9)], norm=snn.Norm(99.0, per_channel=True))
    prog = lower(net)
    kinds = [type(s).__name__ for s in prog.stages]
    assert kinds == ["EventConv", "Neurons", "AvgPool", "EventConv", "Neurons", "AvgPool", "Flatten", "EventConv",
                     "Neurons", "EventConv"]
    gm = net.graph_module
    conv1, conv2 = prog.stages[0], prog.stages[3]
    assert isinstance(conv1, EventConv) and conv1.analog and not conv2.analog
    assert torch.equal(conv1.weight, gm.c1.weight.detach().permute(1, 2, 3, 0))
    amp = gm.snn_r1.amplitude.reshape(-1)
    assert amp.numel() == 6 and isinstance(prog.stages[1], Neurons)
    want = (gm.c2.weight.detach() * amp.reshape(1, -1, 1, 1) / 9.0).permute(1, 2, 3, 0)
    assert torch.allclose(conv2.weight, want, rtol=1e-6)
    fc1 = prog.stages[7]  # rows permuted from torch's (c, y, x) flatten to channels-last (y, x, c)
    amp2 = gm.snn_r2.amplitude.reshape(-1)
    w = gm.f1.weight.detach().t().reshape(5, 2, 2, 7) * amp2.reshape(5, 1, 1, 1) / 4.0
    assert torch.allclose(fc1.weight.reshape(2, 2, 5, 7), w.permute(1, 2, 0, 3), rtol=1e-6)
    assert prog.classes == 4 and isinstance(prog.stages[2], AvgPool)
    assert prog.ann_macs() == sum(int(s.fan_out().sum()) for s in prog.synapses)


def test_gate_is_lowered_with_the_amplitude_of_its_neurons():
    torch.manual_seed(4)
    net = snn.convert(_Small("max").eval(), [torch.randn(64, 2, 11, 9)])
    gate = lower(net).stages[2]
    assert isinstance(gate, Gate) and gate.kernel == (3, 3) and gate.padding == (1, 1)
    assert torch.equal(gate.amplitude, net.graph_module.snn_r1.amplitude.reshape(-1).expand(6))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.flat, self.fc = nn.Flatten(), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = self.r1(self.c1(x))
        return self.fc(self.flat(self.r2(self.c2(h)) + h))


def test_non_sequential_and_rate_coded_nets_are_refused_naming_the_node():
    torch.manual_seed(5)
    calib = [torch.rand(16, 1, 6, 6)]
    net = snn.convert(_Residual().eval(), calib)
    with pytest.raises(snn.ConversionError, match=r"c2: the graph is not a chain.*residual"):
        lower(net)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    with pytest.raises(snn.ConversionError, match="Coding.ANALOG"):
        lower(snn.convert(seq, calib, coding=snn.Coding.RATE))
    two = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    with pytest.raises(snn.ConversionError, match="without a neuron"):
        lower(snn.convert(two, calib))
    with pytest.raises(snn.ConversionError, match="SpikingNet"):
        lower(seq)
    with pytest.raises(ConfigError, match="EventProgram"):
        EventRuntime(seq)


@needs_c
def test_bad_inputs_get_clear_errors():
    torch.manual_seed(6)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    net = snn.convert(seq, [torch.rand(16, 1, 6, 6)])
    rt = EventRuntime.from_net(net)
    with pytest.raises(ShapeError, match=r"batch 1"):
        rt.run(torch.rand(2, 1, 6, 6), 4)
    with pytest.raises(ShapeError, match=r"\(1, 6, 6\)"):
        rt.run(torch.rand(1, 5, 6), 4)
    with pytest.raises(DataError, match="NaN"):
        rt.run(torch.full((1, 6, 6), float("nan")), 4)
    with pytest.raises(DataError, match="float"):
        rt.run(torch.ones(1, 6, 6, dtype=torch.int64), 4)
    with pytest.raises(ConfigError, match="time steps"):
        rt.run(torch.rand(1, 6, 6), 0)
    r = rt.run(torch.rand(1, 6, 6), 4)  # still usable after the refusals
    assert r.outputs[4].shape == (3,)


@needs_c
def test_guard_refuses_a_corrupt_program():
    """The kernel trusts its descriptors: the guard must catch a neuron layer that does not fit its synapse and
    a pool reading a map of another size before any call."""
    torch.manual_seed(7)
    net = snn.convert(_Small("max").eval(), [torch.randn(64, 2, 11, 9)])
    rt = EventRuntime.from_net(net)
    params = rt._prog.tolist()
    bufs = [[guard.buf(t) for t in row] for row in rt._keep]
    args = (guard.Buf(torch.float32, 2 * 11 * 9), 4, guard.Buf(torch.float32, 4 * 4),
            guard.Buf(torch.int64, 4 * rt._S * 2),
            guard.buf(rt._scratch), rt._E)
    guard.snn_run(guard.buf(rt._prog), guard.buf(rt._fprog), params, rt._fprog.tolist(), bufs, *args)  # as built
    bad = [list(p) for p in params]
    bad[1][1] += 6  # one more pixel of neurons than conv 1 drives
    with pytest.raises((ShapeError, ConfigError), match="lowbit_snn_run"):
        guard.snn_run(guard.buf(rt._prog), guard.buf(rt._fprog), bad, rt._fprog.tolist(), bufs, *args)
    bad = [list(p) for p in params]
    bad[2][2] += 1  # the gate reads a taller map than the neurons send
    bad[2][5] = guard.out_size(bad[2][2], 3, 2, 1, 1)
    with pytest.raises((ShapeError, ConfigError), match="lowbit_snn_run"):
        guard.snn_run(guard.buf(rt._prog), guard.buf(rt._fprog), bad, rt._fprog.tolist(), bufs, *args)
    short = [list(row) for row in bufs]
    short[1][2] = guard.Buf(torch.float32, 3)  # a membrane buffer too small
    with pytest.raises(ShapeError, match="holds 3 elements"):
        guard.snn_run(guard.buf(rt._prog), guard.buf(rt._fprog), params, rt._fprog.tolist(), short, *args)


def test_dense_runner_is_the_fallback_with_the_same_counts():
    torch.manual_seed(8)
    net = snn.convert(_Small("avg").eval(), [torch.randn(64, 2, 11, 9)], neuron=SPECS["augmented"])
    prog = lower(net)
    x = torch.randn(1, 2, 11, 9)
    rows, counts = DenseRunner(prog).run(x, 8, count=True)
    sim = snn.run(net, x, 8)
    assert torch.allclose(rows[-1] / 8, sim.outputs[8][0], atol=1e-5)
    assert counts.synops[8] == round(sim.synops[8])
    assert prog.dense_synops_per_step() * 8 >= counts.synops[8]


def _boundary_program(spec: snn.NeuronSpec, T: int):
    """A 1x1 analog conv whose constant currents sit at theta / T times 1, 1 -+ a few ulps, 1 -+ 1e-6 and far
    off, per channel (35 channels: a 16-wide vector part and a tail), so that the runtime's bound on which
    first-layer neurons can fire within T steps is tested exactly where it decides."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(1, 35, 1), nn.ReLU(), nn.Flatten(), nn.Linear(35 * 3 * 5, 3)).eval()
    net = snn.convert(model, [torch.rand(16, 1, 3, 5)], neuron=spec)
    prog = lower(net)
    conv, neurons = prog.stages[0], prog.stages[1]
    eps = torch.finfo(torch.float32).eps
    factors = torch.tensor([1.0, 1 - eps, 1 + eps, 1 - 4 * eps, 1 + 4 * eps, 1 - 1e-6, 1 + 1e-6, 0.5, 2.0, -1.0,
                            0.0] * 4)[:35]
    bias = (neurons.threshold * factors / T * (1 - spec.initial_potential)).float()
    stages = (dataclasses.replace(conv, weight=torch.zeros_like(conv.weight), bias=bias), *prog.stages[1:])
    return dataclasses.replace(prog, stages=stages)


@needs_c
@pytest.mark.parametrize("spec", [SPECS["binary"], SPECS["augmented"], SMALL_SPECS[0], SMALL_SPECS[1]],
                         ids=["binary", "augmented", "lif-zero", "ternary-leak"])
def test_first_layer_bound_skips_only_neurons_that_cannot_fire(spec):
    """Currents at theta / T up to a few ulps: the C runtime (which visits only the first-layer neurons its bound
    lets reach threshold within T steps) counts the same spikes as the dense loop, which visits every one."""
    for T in (1, 3, 4, 8):
        prog = _boundary_program(spec, T)
        x = torch.rand(1, 3, 5)
        c = EventRuntime(prog, Engine.C).run(x, [T])
        d = EventRuntime(prog, Engine.TORCH).run(x, [T])
        assert c.spikes[T] == d.spikes[T] and c.events[T] == d.events[T] and c.synops[T] == d.synops[T], T
        assert torch.allclose(c.outputs[T], d.outputs[T], atol=1e-5)
    assert sum(c.spikes[8].values()) > 0


@needs_c
@pytest.mark.parametrize("spec", [SPECS["binary"], SMALL_SPECS[1]], ids=["binary", "ternary-leak"])
@pytest.mark.parametrize("odd", [0.0, -1.0], ids=["zero", "negative"])
def test_firing_with_a_threshold_not_finite_and_positive_divides_as_the_simulation(spec, odd):
    """One channel's threshold at 0 or below turns the stage's division-free firing off (the comparison
    ``v >= theta`` equals ``(v - theta) / theta >= 0`` only for finite positive thresholds): membranes at theta
    up to a few ulps still give the dense loop's counts, and the other channels still spike."""
    T = 4
    prog = _boundary_program(spec, T)
    neurons = prog.stages[1]
    theta = neurons.threshold.clone()
    theta[0] = odd
    prog = dataclasses.replace(prog, stages=(prog.stages[0], dataclasses.replace(neurons, threshold=theta),
                                             *prog.stages[2:]))
    x = torch.rand(1, 3, 5)
    c = EventRuntime(prog, Engine.C).run(x, [T])
    d = EventRuntime(prog, Engine.TORCH).run(x, [T])
    assert c.spikes[T] == d.spikes[T] and c.events[T] == d.events[T] and c.synops[T] == d.synops[T]
    assert torch.allclose(c.outputs[T], d.outputs[T], atol=1e-5)
    assert sum(c.spikes[T].values()) > 0


@needs_c
def test_readout_is_the_run_output_and_checks_its_time_steps():
    torch.manual_seed(12)
    net = snn.convert(_Small("avg").eval(), [torch.randn(64, 2, 11, 9)], neuron=SPECS["binary"])
    rt = EventRuntime.from_net(net)
    x = torch.randn(2, 11, 9)  # two channels: the channels-last copy
    for t in (1, 4, 8):
        assert torch.equal(rt.readout(x, t), rt.run(x, [t]).outputs[t])
        assert torch.equal(rt.readout(x[None], t), rt.readout(x.clone(), t))  # buffers reused, results not shared
    with pytest.raises(ConfigError, match="time steps"):
        rt.readout(x, 0)
    with pytest.raises(ConfigError, match="one number of time steps"):
        rt.readout(x, [4, 8])


@needs_c
def test_kernel_without_avx512_gives_the_same_floats(tmp_path):
    """The portable paths (no AVX-512 compaction; the vector extensions lowered to narrower registers), built
    for x86-64-v2 on their own, give the native build's floats and counts on a shipped net."""
    import ctypes
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = cext.SOURCES[[p.name for p in cext.SOURCES].index("events.c")]
    lib = tmp_path / "events_v2.so"
    try:
        subprocess.run([cc, "-O2", "-march=x86-64-v2", "-shared", "-fPIC", "-std=c11", str(src), "-o", str(lib), "-lm"],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as e:  # not an x86-64 compiler
        pytest.skip(f"cannot build for x86-64-v2: {e.stderr.decode()[:200]}")
    f = ctypes.CDLL(str(lib)).lowbit_snn_run
    p, i = ctypes.c_void_p, ctypes.c_int64
    f.argtypes, f.restype = [p, p, p, i, p, i, p, p, p, i], ctypes.c_int
    net = snn.convert(zoo.pretrained("cnn-avgpool"), [fashion_mnist("train").x[:200]], neuron=SPECS["binary"])
    native, portable = EventRuntime.from_net(net), EventRuntime.from_net(net)
    portable._call = f
    for x in fashion_mnist("test").x[:3]:
        a, b = native.run(x, STEPS), portable.run(x, STEPS)
        for t in STEPS:
            assert torch.equal(a.outputs[t], b.outputs[t]) and a.spikes[t] == b.spikes[t] and a.synops[t] == b.synops[t]

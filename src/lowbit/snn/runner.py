"""Run a :class:`~lowbit.snn.convert.SpikingNet` for ``T`` time steps, with its state explicit, and count events.

:func:`run` feeds the coded input for ``max(time_steps)`` steps and gives, at every ``T`` in ``time_steps``,
the readout (the mean over the first ``T`` steps of the last layer's output: one run answers every ``T``), the
spikes and events each neuron layer sent, and the **synaptic operations**: an event at an input of a
convolution or linear layer costs one accumulate per synapse it reaches (its fan-out: ``out_features``, or for
a convolution the number of (output, weight) pairs the input position touches, borders included).
A layer whose input is the analog image is priced in MACs instead, once per inference for a constant
(analog) input, whose current does not change between steps.

Spikes are counted in spike units (an augmented event with coefficient 3 is 3 spikes and 1 event).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.errors import ConfigError, ShapeError
from lowbit.snn.convert import Coding, SpikingNet
from lowbit.snn.neurons import SpikingNeuron, neuron_step
from lowbit.snn.pooling import MaxPoolGate

_PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity, nn.AvgPool2d, nn.AdaptiveAvgPool2d, MaxPoolGate,
                 nn.BatchNorm1d, nn.BatchNorm2d)


def check_time_steps(time_steps: Sequence[int]) -> list[int]:
    """Sorted distinct time steps, each an integer >= 1 (clear error otherwise)."""
    if isinstance(time_steps, (int, float)):
        steps = [time_steps]
    else:
        try:
            steps = list(time_steps)
        except TypeError:
            steps = []
    if not steps or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in steps):
        raise ConfigError(f"time steps must be integers >= 1, got {time_steps!r}")
    return sorted(set(steps))


@dataclass
class SNNRun:
    """What :func:`run` measured; every count is a total over the batch at that ``T``."""

    batch: int
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # T -> mean readout [N, classes]
    spikes: dict[int, dict[str, float]] = field(default_factory=dict)  # T -> layer -> spikes
    events: dict[int, dict[str, float]] = field(default_factory=dict)  # T -> layer -> events
    synops: dict[int, float] = field(default_factory=dict)  # T -> accumulates at spike-driven layers
    input_macs: dict[int, float] = field(default_factory=dict)  # T -> MACs at analog-input layers


def _spike_driven(gm: fx.GraphModule) -> dict[str, bool]:
    """For each conv/linear module: is its input made of spikes (True) or of the analog input (False)?"""
    modules = dict(gm.named_modules())
    out = {}

    def source_is_spikes(node: fx.Node) -> bool:
        while True:
            if node.op == "placeholder":
                return False
            if node.op == "call_module" and isinstance(modules[node.target], SpikingNeuron):
                return True
            if node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Conv1d, nn.Linear)):
                return False  # a current, not spikes (two layers without a neuron between them)
            args = [a for a in node.args if isinstance(a, fx.Node)]
            if not args:
                return False
            node = args[0]

    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Conv1d, nn.Linear)):
            out[node.target] = source_is_spikes(node.args[0])
    return out


def _fan_out(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Synapses each input position reaches (shape of one input, ``x.shape[1:]``): the transposed convolution of
    an all-ones output with all-ones weights, padded back to the input's size (``output_padding``)."""
    if isinstance(m, nn.Linear):
        return torch.full(x.shape[1:], float(m.out_features))
    out = m(torch.zeros(1, *x.shape[1:]))
    ones_out = torch.ones(1, *out.shape[1:])
    w = torch.ones(m.out_channels, m.in_channels // m.groups, *m.kernel_size)
    extra = [size - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for size, o, s, p, d, k in
             zip(x.shape[2:], out.shape[2:], m.stride, m.padding, m.dilation, m.kernel_size)]
    transpose = F.conv_transpose2d if isinstance(m, nn.Conv2d) else F.conv_transpose1d
    return transpose(ones_out, w, None, m.stride, m.padding, tuple(extra), m.groups, m.dilation)[0]


class _Stepper(fx.Interpreter):
    """One time step of the graph; stateful modules read and write ``states``; counters accumulate."""

    def __init__(self, gm: fx.GraphModule, spike_driven: dict[str, bool]) -> None:
        super().__init__(gm)
        self.states: dict[str, object] = {}
        self.spikes: dict[str, float] = {}
        self.events: dict[str, float] = {}
        self.synops = 0.0
        self.input_macs = 0.0
        self.spike_driven = spike_driven
        self.fan_out: dict[str, torch.Tensor] = {}
        self.analog_once = False
        self.analog_counted: set[str] = set()  # analog-input layers whose MACs are counted (constant input: once)

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        if isinstance(m, SpikingNeuron):
            s, self.states[target] = neuron_step(args[0], self.states.get(target), m.spec, m.threshold)
            self.spikes[target] = self.spikes.get(target, 0.0) + float(s.abs().sum())
            self.events[target] = self.events.get(target, 0.0) + float(torch.count_nonzero(s))
            return s * m.amplitude
        if isinstance(m, MaxPoolGate):
            out, self.states[target] = m(args[0], self.states.get(target))
            return out
        if target in self.spike_driven:
            x = args[0]
            if target not in self.fan_out:
                self.fan_out[target] = _fan_out(m, x)
            if self.spike_driven[target]:
                self.synops += float(((x != 0).sum(0) * self.fan_out[target]).sum())
            elif not self.analog_once or target not in self.analog_counted:
                self.input_macs += float(self.fan_out[target].sum()) * x.shape[0]
                self.analog_counted.add(target)
        return super().call_module(target, args, kwargs)


def _code(x: torch.Tensor, coding: Coding, x_max: float, generator: torch.Generator | None) -> torch.Tensor:
    if coding is Coding.ANALOG:
        return x
    p = (x.abs() / x_max).clamp(max=1.0)
    fire = torch.rand(x.shape, generator=generator) < p
    return torch.sign(x) * fire.to(x.dtype) * x_max


@torch.no_grad()
def run(net: SpikingNet, x: torch.Tensor, time_steps: Sequence[int] | int,
        generator: torch.Generator | None = None) -> SNNRun:
    """Run ``net`` on the batch ``x`` for ``max(time_steps)`` steps from rest; results at each ``T``."""
    if not isinstance(net, SpikingNet):
        raise ConfigError(f"run needs a SpikingNet from lowbit.snn.convert, got {type(net).__name__}")
    steps = check_time_steps(time_steps)
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"input must be a tensor [N, {', '.join(map(str, net.input_shape))}], got a {type(x).__name__}")
    if tuple(x.shape[1:]) != tuple(net.input_shape):
        got = tuple(x.shape)
        raise ShapeError(f"input has shape {got}; the converted network takes [N, {', '.join(map(str, net.input_shape))}]"
                         f" ({net.report.coding.value} coding codes each image the same way every step)")
    coding = net.report.coding
    stepper = _Stepper(net.graph_module, _spike_driven(net.graph_module))
    stepper.analog_once = coding is Coding.ANALOG
    result = SNNRun(batch=x.shape[0])
    total = None
    for t in range(1, steps[-1] + 1):
        out = stepper.run(_code(x, coding, net.report.input_max, generator))
        total = out if total is None else total + out
        if t in steps:
            result.outputs[t] = total / t
            result.spikes[t] = dict(stepper.spikes)
            result.events[t] = dict(stepper.events)
            result.synops[t] = stepper.synops
            result.input_macs[t] = stepper.input_macs
    return result


@dataclass(frozen=True)
class SweepRow:
    """Accuracy and per-inference counts at ``time_steps`` steps."""

    time_steps: int
    accuracy: float
    spikes_per_inference: float
    events_per_inference: float
    synops: float
    input_macs: float
    spikes_per_layer: dict[str, float]


def sweep(net: SpikingNet, images: torch.Tensor, labels: torch.Tensor, time_steps: Sequence[int] | int,
          batch_size: int = 500, seed: int = 0, progress: bool = False) -> list[SweepRow]:
    """Accuracy (%) against time steps on ``images``/``labels``, with spikes and synaptic ops per inference."""
    steps = check_time_steps(time_steps)
    if len(images) != len(labels) or len(images) == 0:
        raise ShapeError(f"need as many labels as images (and at least one): {len(images)} images, {len(labels)} labels")
    gen = torch.Generator().manual_seed(seed)
    correct = dict.fromkeys(steps, 0)
    spikes: dict[int, dict[str, float]] = {t: {} for t in steps}
    events = dict.fromkeys(steps, 0.0)
    synops = dict.fromkeys(steps, 0.0)
    macs = dict.fromkeys(steps, 0.0)
    starts = range(0, len(images), batch_size)
    if progress:
        from lowbit.utils.progress import Progress
        starts = Progress(starts, total=len(starts), desc=f"SNN T<={steps[-1]}")
    for i in starts:
        r = run(net, images[i: i + batch_size], steps, gen)
        y = labels[i: i + batch_size]
        for t in steps:
            correct[t] += int((r.outputs[t].argmax(1) == y).sum())
            for name, v in r.spikes[t].items():
                spikes[t][name] = spikes[t].get(name, 0.0) + v
            events[t] += sum(r.events[t].values())
            synops[t] += r.synops[t]
            macs[t] += r.input_macs[t]
    n = len(images)
    return [SweepRow(t, 100.0 * correct[t] / n, sum(spikes[t].values()) / n, events[t] / n, synops[t] / n,
                     macs[t] / n, {k: v / n for k, v in spikes[t].items()}) for t in steps]


__all__ = ["SNNRun", "SweepRow", "check_time_steps", "run", "sweep"]

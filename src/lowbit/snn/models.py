"""A spiking CNN trained by backpropagation through time (paper D: Lee, Delbruck, Pfeiffer 2016).

Architecture (``SpikingCNNSpec``): ``[conv3x3 - BN - LIF - maxpool2] x len(channels)``, ``FC - LIF``, ``FC`` readout.
Each LIF layer (:class:`~lowbit.snn.SpikingNeuron`) runs, per time step ``t``,

    v_t = beta v_{t-1} + I_t,   s_t = H(v_t - theta),   v_t <- v_t - theta s_t     (reset by subtraction)

and the readout is the mean over ``T`` of the last layer's output, ``y = (1/T) sum_t W s_t + b`` -- the
membrane of a non-leaky, non-firing integrator read at the end, i.e. the output neurons' spike *counts*
(paper D's error signal) without the quantisation of a count. Backprop through time is autograd through the
loop; the spike's derivative is the surrogate's (``surrogate="membrane"`` is paper D's ``ds/dv = 1/V_th``,
treating the spike's discontinuity as noise; triangle, fast sigmoid and arctan are the usual alternatives) and,
with ``detach_reset=True``, the reset term ``theta s_t`` passes no gradient (Zenke & Vogels 2021).

Inputs: frames ``[N, C, H, W]`` (normalised as :func:`lowbit.data.fashion_mnist` gives them) are coded into
``T`` steps by ``spec.coding`` (``direct``, ``rate``, ``latency``, or ``events``: saccade DVS events made on the
fly, :mod:`lowbit.data.events`); a 5-d tensor ``[N, T, C, H, W]`` is taken as the input sequence itself (e.g.
precomputed events ``[N, T, 2, H, W]``).

The network is feed-forward, so it runs layer by layer (SpikingJelly's multi-step mode): a convolution sees all
``T`` steps at once as a ``[T N, C, H, W]`` batch, and only the neurons loop over time, each with its own state
in a local variable -- the same numbers as a step-by-step loop through the whole network, much faster on a CPU.
BatchNorm's statistics are over batch and time. Nothing is stored on the module between calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.data import events
from lowbit.errors import CheckpointError, ConfigError, ShapeError
from lowbit.functional.surrogate import SURROGATES
from lowbit.snn.neurons import NeuronSpec, Reset, SpikingNeuron

CODINGS = ("direct", "rate", "latency", "events")


@dataclass(frozen=True)
class SpikingCNNSpec:
    """The spiking CNN's shape and neurons (validated on construction).

    ``channels``: conv widths, one conv3x3-BN-LIF-maxpool2 stage each; ``hidden``: the FC-LIF width (0: none);
    ``time_steps``: T; ``coding``: how frames become T steps (one of ``CODINGS``); ``in_channels`` and
    ``image_size``: the frames' (for ``events`` the network sees 2 channels on the padded canvas);
    ``leak``: beta; ``threshold``: theta; ``surrogate``: a name in ``lowbit.functional.surrogate.SURROGATES``;
    ``detach_reset``; ``event_*``: :func:`lowbit.data.events.saccade_events`'s amplitude, pad, threshold, eps.
    """

    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    classes: int = 10
    time_steps: int = 4
    coding: str = "direct"
    in_channels: int = 1
    image_size: int = 28
    leak: float = 0.5
    threshold: float = 1.0
    surrogate: str = "triangle"
    detach_reset: bool = True
    event_amplitude: float = 2.0
    event_pad: int = 2
    event_threshold: float = 0.2
    event_eps: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if not self.channels or not all(isinstance(c, int) and c >= 1 for c in self.channels):
            raise ConfigError(f"SpikingCNNSpec.channels must be a non-empty tuple of ints >= 1, got {self.channels!r}")
        for name in ("classes", "time_steps", "in_channels", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SpikingCNNSpec.{name} must be an int >= 1, got {value!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 0:
            raise ConfigError(f"SpikingCNNSpec.hidden must be an int >= 0 (0: no hidden FC layer), got {self.hidden!r}")
        if self.coding not in CODINGS:
            raise ConfigError(f"SpikingCNNSpec.coding must be one of {CODINGS}, got {self.coding!r}")
        if self.surrogate not in SURROGATES:
            raise ConfigError(f"SpikingCNNSpec.surrogate must be one of {sorted(SURROGATES)}, got {self.surrogate!r}")
        if self.coding == "events" and self.in_channels != 1:
            raise ConfigError("coding='events' makes ON/OFF events from grayscale frames: in_channels must be 1")
        if self.input_size // 2 ** len(self.channels) < 1:
            raise ConfigError(f"{len(self.channels)} pooling stages shrink a {self.input_size}-pixel input to nothing; "
                              "use fewer channels entries or larger images")
        self.neuron()  # validates leak and threshold

    @property
    def input_size(self) -> int:
        """The side of what the first convolution sees (the padded canvas for events)."""
        return self.image_size + 2 * self.event_pad if self.coding == "events" else self.image_size

    @property
    def input_channels(self) -> int:
        return 2 if self.coding == "events" else self.in_channels

    def neuron(self) -> NeuronSpec:
        return NeuronSpec(threshold=self.threshold, leak=self.leak, reset=Reset.SUBTRACT,
                          surrogate=SURROGATES[self.surrogate](), detach_reset=self.detach_reset)


def _lif_over_time(neuron: SpikingNeuron, x: torch.Tensor, n: int) -> torch.Tensor:
    """Run ``neuron`` over ``[T N, ...]`` currents, step by step with explicit state; returns ``[T N, ...]``."""
    steps = x.view(-1, n, *x.shape[1:])
    state, out = None, []
    for current in steps:
        s, state = neuron(current, state)
        out.append(s)
    return torch.cat(out, dim=0)


class SpikingCNN(nn.Module):
    """``logits = model(x)``; :meth:`run` also returns each spiking layer's spike count per sample."""

    def __init__(self, spec: SpikingCNNSpec = SpikingCNNSpec()) -> None:
        super().__init__()
        if not isinstance(spec, SpikingCNNSpec):
            raise ConfigError(f"SpikingCNN needs a SpikingCNNSpec, got {type(spec).__name__}")
        self.spec = spec
        neuron = spec.neuron()
        convs, c_in = [], spec.input_channels
        for c in spec.channels:
            convs.append(nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)))
            c_in = c
        self.convs = nn.ModuleList(convs)
        self.conv_neurons = nn.ModuleList(SpikingNeuron(neuron) for _ in spec.channels)
        side = spec.input_size
        for _ in spec.channels:
            side //= 2
        flat = c_in * side * side
        self.fc = nn.Linear(flat, spec.hidden) if spec.hidden else None
        self.fc_neuron = SpikingNeuron(neuron) if spec.hidden else None
        self.readout = nn.Linear(spec.hidden or flat, spec.classes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Frames ``[N, C, H, W]`` -> the ``[N, T, C', H', W']`` input sequence of ``spec.coding``."""
        spec = self.spec
        if x.ndim == 5:
            return x
        if x.ndim != 4:
            raise ShapeError(f"SpikingCNN takes frames [N, C, H, W] or sequences [N, T, C, H, W], got {tuple(x.shape)}")
        if spec.coding == "direct":
            return events.direct_coding(x, spec.time_steps)
        unit = events.intensity(x)
        if spec.coding == "rate":
            return events.rate_coding(unit, spec.time_steps)
        if spec.coding == "latency":
            return events.latency_coding(unit, spec.time_steps)
        return events.saccade_events(unit, spec.time_steps, spec.event_amplitude, spec.event_pad,
                                     spec.event_threshold, spec.event_eps)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits [N, classes], spikes)``: ``spikes[l]`` is layer ``l``'s spike count per sample ``[N]``
        (the input's spikes first when the coding is ``rate``, ``latency`` or ``events``, 5-d inputs included)."""
        seq = self.encode(x)
        n, t = seq.shape[:2]
        if seq.shape[2] != self.spec.input_channels or seq.shape[-1] != self.spec.input_size:
            raise ShapeError(f"this SpikingCNN takes {self.spec.input_channels}-channel {self.spec.input_size}-pixel "
                             f"steps, got [N, T, C, H, W] = {tuple(seq.shape)}")
        counts = []
        if self.spec.coding != "direct":  # the input is spikes (a direct-coded sequence is analog)
            counts.append(seq.reshape(n, -1).sum(1))
        h = seq.transpose(0, 1).reshape(t * n, *seq.shape[2:])  # [T N, C, H, W]: step-major
        for i, (conv, neuron) in enumerate(zip(self.convs, self.conv_neurons)):
            if i == 0 and x.ndim == 4 and self.spec.coding == "direct":
                # the same frame every step: one convolution, repeated (BN's batch statistics are unchanged)
                current = conv(x).unsqueeze(0).expand(t, -1, -1, -1, -1).reshape(t * n, -1, *x.shape[2:])
            else:
                current = conv(h)
            s = _lif_over_time(neuron, current, n)
            counts.append(s.view(t, n, -1).sum((0, 2)))
            h = nn.functional.max_pool2d(s, 2)
        h = h.flatten(1)
        if self.fc is not None:
            h = _lif_over_time(self.fc_neuron, self.fc(h), n)
            counts.append(h.view(t, n, -1).sum((0, 2)))
        logits = self.readout(h).view(t, n, -1).mean(0)
        return logits, counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    def fanouts(self) -> list[int]:
        """Synaptic fan-out of one spike of each layer :meth:`run` counts (3x3 kernels, borders ignored)."""
        outs = [conv[0].out_channels * 9 for conv in self.convs]
        tail = [self.fc.out_features] if self.fc is not None else []
        fan = outs + tail + [self.readout.out_features]
        spiking_input = self.spec.coding != "direct"
        return fan if spiking_input else fan[1:]


WEIGHTS = Path(__file__).resolve().parent.parent / "zoo" / "weights"
PRETRAINED = ("spiking-cnn", "spiking-cnn-events")


def pretrained_spiking(name: str = "spiking-cnn", folder: str | Path | None = None) -> SpikingCNN:
    """The trained spiking CNN ``name`` (``spiking-cnn``: direct-coded frames; ``spiking-cnn-events``: saccade
    events), rebuilt from the spec stored in its JSON and loaded with the checksum checked; eval mode."""
    from lowbit.zoo.weights_io import load_weights, read_meta

    if name not in PRETRAINED:
        raise ConfigError(f"unknown spiking model {name!r}; choose one of {PRETRAINED}")
    path = Path(folder or WEIGHTS) / f"{name}.npz"
    meta = read_meta(path)
    if not isinstance(meta.get("spec"), dict):
        raise CheckpointError(f"{path.with_suffix('.json')} has no 'spec'; re-create it with "
                              "benchmarks/bench_snn_train.py")
    model = SpikingCNN(SpikingCNNSpec(**meta["spec"]))
    load_weights(model, path)
    return model.eval()


@torch.no_grad()
def evaluate_spiking(model: SpikingCNN, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> dict:
    """Accuracy (fraction), spikes and synaptic operations per inference, and latency per image (us) on ``x``.

    Spikes count every spiking layer (and the input's spikes for spiking codings); synops are spikes times
    fan-out (:meth:`SpikingCNN.fanouts`; spikes before max pooling, so an upper bound for the convolutions).
    Rate coding draws from the global RNG: seed it for repeatable numbers.
    """
    import time

    model.eval()
    correct, spikes, synops, seconds = 0, 0.0, 0.0, 0.0
    fan = model.fanouts()
    for i in range(0, len(y), batch):
        t0 = time.perf_counter()
        logits, counts = model.run(x[i:i + batch])
        seconds += time.perf_counter() - t0
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
        spikes += float(sum(c.sum() for c in counts))
        synops += float(sum(c.sum() * f for c, f in zip(counts, fan)))
    n = max(len(y), 1)
    return {"accuracy": correct / n, "spikes_per_inference": spikes / n, "synops": synops / n,
            "latency_us": 1e6 * seconds / n}


def shipped_spiking_rows(test, images: int = 500, folder: str | Path | None = None) -> list[tuple]:
    """Rows ``(what, time_steps, accuracy %, spikes, synops, note)`` for each shipped spiking CNN on the first
    ``images`` images of ``test`` (a :class:`~lowbit.data.Split`); models whose weights are absent are skipped."""
    from lowbit.zoo.weights_io import read_meta

    rows = []
    for name in PRETRAINED:
        path = Path(folder or WEIGHTS) / f"{name}.npz"
        if not path.exists():
            continue
        model, meta = pretrained_spiking(name, folder), read_meta(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            r = evaluate_spiking(model, test.x[:images], test.y[:images])
        spec = model.spec
        rows.append((f"{name} (BPTT, {spec.coding} coding)", spec.time_steps, 100.0 * r["accuracy"],
                     r["spikes_per_inference"], r["synops"],
                     f"{spec.surrogate} surrogate, {meta.get('recipe', {}).get('epochs', '?')} epochs; "
                     f"{100.0 * float(meta.get('test_accuracy', float('nan'))):.2f}% on the full test set"))
    return rows


def spec_dict(spec: SpikingCNNSpec) -> dict:
    """The spec as plain JSON values (what :func:`pretrained_spiking` reads back)."""
    d = asdict(spec)
    d["channels"] = list(d["channels"])
    return d


__all__ = ["CODINGS", "PRETRAINED", "SpikingCNN", "SpikingCNNSpec", "evaluate_spiking", "pretrained_spiking",
           "shipped_spiking_rows", "spec_dict"]

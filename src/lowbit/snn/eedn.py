"""Eedn-style TrueNorth networks (Esser et al., PNAS 2016, "Convolutional networks for fast, energy-efficient
neuromorphic computing"): trinary synapses, binary spiking neurons, grouped convolutions that fit a core.

**Synapses.** Each conv / linear layer on cores (:class:`TrinaryConv2d`, :class:`TrinaryLinear`) keeps hidden
float weights ``h`` in ``[-1, 1]`` (:func:`clip_hidden_` after every optimizer step) and computes with

    w = sign(h) * 1[|h| >= 0.5]  in {-1, 0, +1}         (straight-through gradient to h)

(:func:`lowbit.functional.ternary.eedn_trinary`). No bias: the neuron's threshold plays that part.

**Neurons.** A binary neuron without memory (one tick per frame): ``y = 1[r >= 0]`` with ``r`` the
normalised input, trained with the paper's triangle surrogate ``dy/dr ~= max(0, 1 - |r|)``
(:func:`lowbit.functional.surrogate.spike` with ``Triangle(width=1)``).

**BatchNorm, folded into integer thresholds.** Training puts a BatchNorm between each layer and its neuron,
``r = gamma (c - mu) / s + beta`` (``s = sqrt(var + eps)``, running statistics at inference). TrueNorth's
neurons have integer thresholds and no BN, and ``c = sum_i w_i x_i`` is an integer (trinary weights, binary
inputs), so the BN folds **exactly** into the neuron (:func:`fold`):

    gamma > 0:  y = 1[c >= theta],   theta = ceil(mu - beta s / gamma)
    gamma < 0:  y = 1[-c >= theta],  theta = ceil(beta s / gamma - mu)   (the filter's weights negated)
    gamma = 0:  y = 1[beta >= 0]     (weights zeroed, theta = 0 or 1)

The folded net (:class:`FoldedEedn`) holds int8 weights and int64 thresholds per neuron; it reproduces the
BN net's spikes up to float rounding at exact ties. (TrueNorth's thresholds and leaks have a limited range;
the folded thresholds here lie within ``[-fan_in, fan_in + 1]`` after clamping, which changes no spike.)

**Transduction.** The first layer turns the multi-valued image into binary spikes: a 3x3 convolution with
real-valued weights (BN folded into a float bias) and the same binary neuron. Here it runs on the host,
not on cores: its weights are not trinary and its inputs are not spikes, so :func:`core_rows` and the core
count cover only the layers after it (whose input is the transduction layer's spikes). Eedn describes a
transduction layer that makes spikes from multi-valued data; where and at what precision the paper ran it is
not recorded in our notes.

**Architecture** (:class:`EednNet`, Fashion-MNIST 1x28x28; ``g`` = ``EednSpec.group_size``, input channels
per group of each 3x3 layer, so every filter's fan-in is ``9 g <= 128``; 1x1 layers mix all channels)::

    transduction  conv3x3 1->T (host)          @28   spikes
    b1  trinary conv3x3 T->64,  stride 2, groups T/g    @14
    b2  trinary conv1x1 64->64                          @14   (network-in-network)
    b3  trinary conv3x3 64->128, groups 64/g            @14
    b4  trinary conv3x3 128->128, stride 2, groups 128/g @7
    b5  trinary conv1x1 128->128                         @7
    b6  trinary conv3x3 128->128, groups 128/g           @7
    out trinary conv1x1 128->10 P                        @7   spikes of 10 populations

**Readout.** Class ``k``'s score is the spike count of its population: output channels ``k P .. k P + P - 1``
at all 49 positions (``49 P`` neurons). Training feeds ``counts * exp(a)`` (``a`` a learned log-temperature,
positive, so the argmax is the count's) to a cross-entropy. An ensemble of independently trained copies sums
their counts (:func:`ensemble_counts`), as Eedn's multi-chip ensembles average theirs.

``EednSpec(kind="float")`` is the same architecture with real weights and ReLU (and a linear readout of the
output layer's activations summed per class), the float reference.

>>> import torch
>>> from lowbit.snn.eedn import EednNet, EednSpec, cores, fold
>>> net = EednNet(EednSpec(group_size=8, population=4))
>>> cores(net)                                    # check_truenorth on the on-core layers
3822
>>> r = fold(net.eval()).run(torch.zeros(2, 1, 28, 28))   # integer thresholds, int8 synapses
>>> r.counts.shape, r.spikes.shape                # population counts per class, spikes per image
(torch.Size([2, 10]), torch.Size([2]))
>>> EednSpec(group_size=16)
Traceback (most recent call last):
...
lowbit.errors.ConfigError: EednSpec.group_size = 16 gives a 3x3 filter fan-in of 9 x 16 = 144 > 128: ... allowed: 1, 2, 4, 8
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import ConfigError, ShapeError
from lowbit.functional.surrogate import Triangle, spike
from lowbit.functional.ternary import eedn_trinary
from lowbit.snn.truenorth import MAX_FAN_IN, CoreRow, check_truenorth, truenorth_report

CLASSES = 10
IMAGE = (1, 28, 28)
# (name, out channels, kernel, stride, grouped); the output layer's width is 10 x population
PLAN = (("b1", 64, 3, 2, True), ("b2", 64, 1, 1, False), ("b3", 128, 3, 1, True),
        ("b4", 128, 3, 2, True), ("b5", 128, 1, 1, False), ("b6", 128, 3, 1, True))


@dataclass(frozen=True)
class EednSpec:
    """An Eedn-style net for 1x28x28 images: ``group_size`` input channels per group of each 3x3 layer,
    ``transduction`` spike channels made on the host, ``population`` output neurons per class and position,
    ``kind`` ``"truenorth"`` (trinary weights, binary spikes) or ``"float"`` (real weights, ReLU)."""

    group_size: int = 8
    transduction: int = 16
    population: int = 4
    kind: str = "truenorth"

    def __post_init__(self) -> None:
        for name, lo, hi in (("transduction", 1, 256), ("population", 1, 25)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"EednSpec.{name} = {v!r}; allowed: an integer in {lo}..{hi}"
                                  + (" (10 populations on one core's 256 neurons)" if name == "population" else ""))
        if self.kind not in ("truenorth", "float"):
            raise ConfigError(f"EednSpec.kind = {self.kind!r}; allowed: 'truenorth' or 'float'")
        g, allowed = self.group_size, allowed_group_sizes(self.transduction)
        if isinstance(g, bool) or not isinstance(g, int) or g not in allowed:
            fan = f" gives a 3x3 filter fan-in of 9 x {g} = {9 * g} > {MAX_FAN_IN}" \
                if isinstance(g, int) and not isinstance(g, bool) and 9 * g > MAX_FAN_IN else ""
            raise ConfigError(
                f"EednSpec.group_size = {g!r}{fan}: the input channels per group of every 3x3 layer must divide "
                f"its input channels ({', '.join(map(str, _grouped_inputs(self.transduction)))}) and keep the "
                f"filter fan-in 9 x group_size <= {MAX_FAN_IN} (a TrueNorth core: 256 axons, two per input); "
                f"allowed: {', '.join(map(str, allowed))}")


def _grouped_inputs(transduction: int) -> list[int]:
    chans, inputs = transduction, []
    for _, out, _k, _, grouped in PLAN:
        if grouped:
            inputs.append(chans)
        chans = out
    return inputs


def allowed_group_sizes(transduction: int = 16) -> list[int]:
    """The group sizes (input channels per group) every 3x3 layer can meet with fan-in ``9 g <= 128``."""
    d = math.gcd(*_grouped_inputs(transduction))
    return [g for g in range(1, MAX_FAN_IN // 9 + 1) if d % g == 0]


# ---------------------------------------------------------------- synapses and neurons


class TrinaryConv2d(nn.Conv2d):
    """A bias-free conv whose forward weights are ``eedn_trinary(self.weight)`` (hidden weights in [-1, 1])."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        nn.init.uniform_(self.weight, -1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, eedn_trinary(self.weight), None, self.stride, self.padding, self.dilation, self.groups)

    def codes(self) -> torch.Tensor:
        """The synapses as int8 in {-1, 0, +1}."""
        return eedn_trinary(self.weight.detach()).to(torch.int8)


class TrinaryLinear(nn.Linear):
    """A bias-free linear layer with ``eedn_trinary`` weights (fan-in ``in_features``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        nn.init.uniform_(self.weight, -1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, eedn_trinary(self.weight))

    def codes(self) -> torch.Tensor:
        return eedn_trinary(self.weight.detach()).to(torch.int8)


@torch.no_grad()
def clip_hidden_(model: nn.Module, step: int | None = None) -> None:
    """Clip every trinary layer's hidden weights to [-1, 1] in place (after each optimizer step; the signature
    fits :class:`lowbit.training.Hooks`'s ``after_step``)."""
    for m in model.modules():
        if isinstance(m, (TrinaryConv2d, TrinaryLinear)):
            m.weight.clamp_(-1.0, 1.0)


class SpikeNeuron(nn.Module):
    """``y = 1[r >= 0]``, gradient ``max(0, 1 - |r|)`` (Eedn's triangle). Stateless: one tick per frame."""

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return spike(r, Triangle(1.0))


# ---------------------------------------------------------------- the net


def _block(conv: nn.Module, channels: int, spiking: bool) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), SpikeNeuron() if spiking else nn.ReLU())


@dataclass
class EednRun:
    """Class scores (N, 10) (spike counts per population) and the spikes of every spiking layer per image (N,)."""

    counts: torch.Tensor
    spikes: torch.Tensor


class EednNet(nn.Module):
    """See the module docstring. ``transduce`` runs on the host; ``core`` (a Sequential of conv-BN-neuron
    blocks, the last one the output populations) is what goes on TrueNorth cores."""

    def __init__(self, spec: EednSpec = EednSpec()) -> None:
        super().__init__()
        self.spec = spec
        spiking = spec.kind == "truenorth"
        conv = TrinaryConv2d if spiking else nn.Conv2d
        t = spec.transduction
        self.transduce = _block(nn.Conv2d(1, t, 3, padding=1, bias=False), t, spiking)
        blocks, chans = {}, t
        for name, out, k, stride, grouped in PLAN:
            groups = chans // spec.group_size if grouped else 1
            kw = {} if spiking else {"bias": False}
            blocks[name] = _block(conv(chans, out, k, stride, k // 2, groups=groups, **kw), out, spiking)
            chans = out
        kw = {} if spiking else {"bias": False}
        blocks["out"] = _block(conv(chans, CLASSES * spec.population, 1, **kw), CLASSES * spec.population, spiking)
        self.core = nn.Sequential()
        for name, b in blocks.items():
            self.core.add_module(name, b)
        # the readout's log-temperature, starting at 1 / sqrt(neurons per class)
        self.log_scale = nn.Parameter(torch.tensor(-0.5 * math.log(49 * spec.population)))

    def counts(self, y: torch.Tensor) -> torch.Tensor:
        """(N, 10 P, H, W) output spikes -> (N, 10) population counts."""
        return y.reshape(y.shape[0], CLASSES, -1).sum(2)

    def run(self, x: torch.Tensor) -> EednRun:
        """Counts and spikes per image (all spiking layers: the transduction layer's and every core layer's)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE:
            raise ShapeError(f"EednNet takes images (N, 1, 28, 28), got {tuple(x.shape)}")
        y = self.transduce(x)
        spikes = y.detach().flatten(1).sum(1)
        for block in self.core:
            y = block(y)
            spikes = spikes + y.detach().flatten(1).sum(1)
        return EednRun(self.counts(y), spikes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).counts * self.log_scale.exp()


def core_rows(net: nn.Module) -> list[CoreRow]:
    """:func:`truenorth_report` of the on-core part (its input: the transduction layer's spikes at 28x28)."""
    return _on_core(net, truenorth_report)


def cores(net: nn.Module) -> int:
    """The net's TrueNorth core count (:func:`check_truenorth` on the on-core part: raises if a layer's fan-in
    exceeds 128)."""
    return _on_core(net, check_truenorth)


def _on_core(net: nn.Module, measure):
    """``measure(core, example)`` on the on-core part, its training mode restored afterwards."""
    core, t = _core_and_channels(net)
    was = core.training
    try:
        return measure(core, torch.zeros(1, t, 28, 28, device=_device(core)))
    finally:
        core.train(was)


def _core_and_channels(net: nn.Module) -> tuple[nn.Module, int]:
    if not isinstance(net, (EednNet, FoldedEedn)):
        raise ConfigError(f"expected an EednNet or FoldedEedn, got {type(net).__name__}")
    return net.core, net.spec.transduction


def _device(m: nn.Module) -> torch.device:
    return next(iter(m.parameters()), next(iter(m.buffers()), torch.zeros(0))).device


# ---------------------------------------------------------------- folding BN into integer thresholds


class FoldedLayer(nn.Module):
    """``y = 1[conv(x, codes) >= theta]``: int8 trinary synapses and an int64 threshold per neuron."""

    def __init__(self, conv: TrinaryConv2d, codes: torch.Tensor, theta: torch.Tensor) -> None:
        super().__init__()
        self.stride, self.padding, self.groups = conv.stride, conv.padding, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.register_buffer("codes", codes)  # (O, C / groups, kh, kw) int8
        self.register_buffer("theta", theta)  # (O,) int64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # inputs 0/1, weights -1/0/1, fan-in <= 128: the sum is an exact integer in float32
        c = F.conv2d(x, self.codes.to(x.dtype), None, self.stride, self.padding, 1, self.groups)
        return (c >= self.theta.to(x.dtype)[:, None, None]).to(x.dtype)


class FoldedEedn(nn.Module):
    """The deployable net: the host's transduction (float conv with BN folded into a bias, binary neuron) and the
    on-core layers as :class:`FoldedLayer`s. ``run`` gives the same counts and spikes as ``EednNet.run``."""

    def __init__(self, spec: EednSpec, transduce: nn.Conv2d, names: list[str], layers: list[FoldedLayer]) -> None:
        super().__init__()
        self.spec = spec
        self.transduce = transduce
        self.layers = nn.ModuleList(layers)
        self.core = _geometry(names, layers)  # for truenorth_report: the same layer names as EednNet's

    def run(self, x: torch.Tensor) -> EednRun:
        if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE:
            raise ShapeError(f"FoldedEedn takes images (N, 1, 28, 28), got {tuple(x.shape)}")
        y = (self.transduce(x) >= 0).to(x.dtype)
        spikes = y.detach().flatten(1).sum(1)
        for layer in self.layers:
            y = layer(y)
            spikes = spikes + y.detach().flatten(1).sum(1)
        return EednRun(y.reshape(y.shape[0], CLASSES, -1).sum(2), spikes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).counts


def _geometry(names: list[str], layers: list[FoldedLayer]) -> nn.Sequential:
    """The folded layers' shapes as ``name.0`` Conv2d's (weights unused: only for :func:`truenorth_report`)."""
    convs = [nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, groups=m.groups,
                       bias=False).requires_grad_(False) for m in layers]
    return nn.Sequential(OrderedDict((n, nn.Sequential(c)) for n, c in zip(names, convs)))


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    s = (bn.running_var.double() + bn.eps).sqrt()
    return bn.weight.double(), bn.bias.double(), bn.running_mean.double(), s


@torch.no_grad()
def fold(net: EednNet) -> FoldedEedn:
    """The BN net ``net`` (a ``"truenorth"`` EednNet) as integer-threshold neurons (module docstring); on CPU."""
    if not isinstance(net, EednNet) or net.spec.kind != "truenorth":
        raise ConfigError("fold needs an EednNet with spec.kind = 'truenorth' (a float net has no thresholds)")
    conv, bn, _ = net.transduce
    gamma, beta, mu, s = _bn_affine(bn)
    host = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    host.weight.copy_((conv.weight.double().cpu() * (gamma / s).cpu()[:, None, None, None]).float())
    host.bias.copy_((beta - gamma * mu / s).cpu().float())
    layers, names = [], []
    for name, block in net.core.named_children():
        names.append(name)
        conv, bn, _ = block
        gamma, beta, mu, s = (t.cpu() for t in _bn_affine(bn))
        codes = conv.codes().cpu()
        fan_in = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
        sign = torch.sign(gamma)
        t = mu - beta * s / torch.where(gamma == 0, torch.ones_like(gamma), gamma)   # c-threshold (gamma != 0)
        theta = torch.where(gamma > 0, torch.ceil(t), torch.ceil(-t))
        theta = torch.where(gamma == 0, torch.where(beta >= 0, 0.0, 1.0).double(), theta)
        theta = theta.clamp(-fan_in, fan_in + 1).to(torch.int64)   # |c| <= fan_in: no spike changes
        codes = (codes.to(torch.int16) * sign.to(torch.int16)[:, None, None, None]).to(torch.int8)  # 0 if gamma = 0
        layers.append(FoldedLayer(conv, codes, theta))
    return FoldedEedn(net.spec, host.eval(), names, layers).eval()


# ---------------------------------------------------------------- evaluation and ensembles


@torch.no_grad()
def run_batched(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> EednRun:
    """``model.run`` over ``x`` in batches on the model's device (results on CPU)."""
    device = _device(model)
    model.eval()
    parts = [model.run(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    return EednRun(torch.cat([p.counts.cpu() for p in parts]), torch.cat([p.spikes.cpu() for p in parts]))


def ensemble_counts(runs: list[EednRun]) -> torch.Tensor:
    """Eedn's ensemble: the copies' population counts summed (N, 10); the class is the argmax (the lowest
    index among ties)."""
    if not runs:
        raise ConfigError("an ensemble needs at least one copy")
    return torch.stack([r.counts for r in runs]).sum(0)


def spec_dict(spec: EednSpec) -> dict:
    return asdict(spec)


__all__ = ["EednNet", "EednRun", "EednSpec", "FoldedEedn", "FoldedLayer", "SpikeNeuron", "TrinaryConv2d",
           "TrinaryLinear", "allowed_group_sizes", "clip_hidden_", "core_rows", "cores", "ensemble_counts", "fold",
           "run_batched", "spec_dict"]

"""Lower a sequential :class:`~lowbit.snn.convert.SpikingNet` to typed stages for an event-driven runtime.

A converted net's neuron sends ``s * a`` (``s`` an integer spike count, ``a`` its amplitude, per channel or one
number) and the next layer reads ``W (s * a)``. Lowering folds the amplitude into that layer's weights,

    W'[:, c] = W[:, c] * a[c] / d          (d: the divisor of the average pools in between, 1 if none)

so the runtime moves integer spike counts only: binary spikes ``s in {0, 1}``, ternary ``{-1, 0, 1}``,
augmented small integers; accumulating a weight column is then a pure add for ``|s| = 1`` and one small
integer multiply otherwise. Average pools become *sum* pools of those integers (their ``1 / d`` is in ``W'``).

Every map is **channels-last**: a stage's shape is ``(H, W, C)`` and position ``(y, x, c)`` has index
``(y W + x) C + c``; a vector of ``F`` features is the map ``(1, 1, F)`` (a linear layer is a 1x1 convolution
of a 1x1 map). Convolution weights are ``[Cin, kh, kw, Cout]``: the ``Cout`` weights an input event adds to one
output position are contiguous. A linear layer after a flatten has its input rows permuted to the
channels-last order, so the flatten moves nothing.

Stages, in order: one analog synapse (the first conv/linear, reading the image), then repeatedly
:class:`Neurons`, optional :class:`Gate` / :class:`AvgPool` / :class:`Flatten`, and a spike-driven
:class:`EventConv`; the last synapse has no neuron after it (the readout). Anything else -- residual
additions, concatenations, a neuron that is not fed by a synapse, grouped or dilated convolutions, rate-coded
inputs -- is refused with a :class:`~lowbit.snn.convert.ConversionError` naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from lowbit.snn.convert import Coding, ConversionError, SpikingNet
from lowbit.snn.neurons import NeuronSpec, SpikingNeuron
from lowbit.snn.pooling import MaxPoolGate

Shape = tuple[int, int, int]  # (H, W, C), channels-last


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


@dataclass(frozen=True, eq=False)
class EventConv:
    """A synapse: ``out[(oy, ox, co)] += sum over inputs (y, x, c) s * weight[c, ky, kx, co]`` (+ ``bias[co]``
    once per step). ``analog``: reads the image (its current is computed once: the input is constant).
    A linear layer is the 1x1 convolution of a ``(1, 1, F)`` map."""

    name: str
    weight: torch.Tensor  # [Cin, kh, kw, Cout] float32, amplitude and pool divisor folded in
    bias: torch.Tensor  # [Cout] float32
    in_shape: Shape
    out_shape: Shape
    stride: tuple[int, int]
    padding: tuple[int, int]
    analog: bool

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[1]), int(self.weight.shape[2])

    def fan_out(self) -> torch.Tensor:
        """``(H, W, Cin)`` int64: the (output, weight) pairs each input position reaches (borders clipped)."""
        h, w, cin = self.in_shape
        ho, wo, cout = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding

        def reach(size: int, osize: int, k: int, s: int, p: int) -> torch.Tensor:
            i = torch.arange(size)[:, None]
            t = i + p - torch.arange(k)[None, :]  # o * s for tap k
            return ((t >= 0) & (t % s == 0) & (t // s < osize)).sum(1)  # taps of each input row that land

        ry, rx = reach(h, ho, kh, sh, ph), reach(w, wo, kw, sw, pw)
        return (ry[:, None] * rx[None, :] * cout)[:, :, None].expand(h, w, cin).to(torch.int64)


@dataclass(frozen=True, eq=False)
class Neurons:
    """A layer of neurons over a ``shape`` map: integrate, fire integer spikes, reset (``spec``), with
    per-channel ``threshold``; ``amplitude`` is what the simulation scales spikes by (folded downstream)."""

    name: str
    spec: NeuronSpec
    threshold: torch.Tensor  # [C] float32
    amplitude: torch.Tensor  # [C] float32
    shape: Shape

    @property
    def negative_threshold(self) -> torch.Tensor:
        """``[C]``: theta_neg per channel (the spec's, or the threshold when it has none)."""
        if self.spec.negative_threshold is None:
            return self.threshold
        return torch.full_like(self.threshold, self.spec.negative_threshold)


@dataclass(frozen=True, eq=False)
class AvgPool:
    """Sum pooling of integer spikes (the average's ``1 / divisor`` is folded into the next synapse)."""

    name: str
    in_shape: Shape
    out_shape: Shape
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True, eq=False)
class Gate:
    """The max-pool gate (:class:`~lowbit.snn.pooling.MaxPoolGate`): per window, pass the current spikes of the
    input whose running count is largest (first in the window on ties). Counts are kept in amplitude units,
    ``sum_t s_t * amplitude[c]`` in float32, as the simulation keeps them, so ties break identically."""

    name: str
    in_shape: Shape
    out_shape: Shape
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    amplitude: torch.Tensor  # [C] float32


@dataclass(frozen=True, eq=False)
class Flatten:
    """``(H, W, C) -> (1, 1, H W C)``: channels-last indices are unchanged (the next layer's rows are permuted)."""

    name: str
    in_shape: Shape
    out_shape: Shape


Stage = EventConv | Neurons | AvgPool | Gate | Flatten


@dataclass(frozen=True, eq=False)
class EventProgram:
    """A lowered net: ``stages`` in order; ``input_shape`` as the SpikingNet takes it (``(C, H, W)`` or ``(F,)``)."""

    stages: tuple[Stage, ...]
    input_shape: tuple[int, ...]

    @property
    def synapses(self) -> list[EventConv]:
        return [s for s in self.stages if isinstance(s, EventConv)]

    @property
    def neurons(self) -> list[Neurons]:
        return [s for s in self.stages if isinstance(s, Neurons)]

    @property
    def classes(self) -> int:
        return self.synapses[-1].out_shape[2]

    def dense_synops_per_step(self) -> int:
        """Accumulates one step costs when every input position of every spike-driven synapse fires."""
        return sum(int(s.fan_out().sum()) for s in self.synapses if not s.analog)

    def ann_macs(self) -> int:
        """Multiply-accumulates of the ANN (every synapse once)."""
        return sum(int(s.fan_out().sum()) for s in self.synapses)


def _per_channel(t: torch.Tensor, channels: int, what: str, node: str) -> torch.Tensor:
    t = t.detach().to(torch.float32).reshape(-1)
    if t.numel() == 1:
        return t.expand(channels).clone()
    if t.numel() != channels:
        raise ConversionError(f"{node}: {what} has {t.numel()} values for {channels} channels; the event runtime "
                              "takes one per channel or one for the layer")
    return t.clone()


class _Lowering:
    """The walk over the graph: the current map shape, what the next synapse must fold, and the stages so far."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) == 3:
            c, h, w = input_shape
            self.shape: Shape = (h, w, c)
        elif len(input_shape) == 1:
            self.shape = (1, 1, input_shape[0])
        else:
            raise ConversionError(f"the event runtime takes images (C, H, W) or vectors (F,); this net takes "
                                  f"{tuple(input_shape)}")
        self.stages: list[Stage] = []
        self.amplitude: torch.Tensor | None = None  # [C] of the spikes now on the wire; None: the analog input
        self.divisor = 1.0  # product of the average pools' divisors since the last neuron
        self.flat_from: Shape | None = None  # the (H, W, C) map a flatten made into the current vector
        self.input_flat_from: Shape | None = None  # the image, when the analog synapse reads it flattened

    def last(self) -> Stage | None:
        return self.stages[-1] if self.stages else None

    def synapse(self, node: fx.Node, m: nn.Module) -> None:
        if isinstance(self.last(), EventConv):
            raise ConversionError(f"{node.name}: follows {self.last().name} without a neuron between them; the event "
                                  "runtime needs a spiking neuron before every synapse but the first")
        analog = self.amplitude is None
        if analog and self.stages and not isinstance(self.last(), Flatten):
            raise ConversionError(f"{node.name}: the analog input passes through {self.last().name} before the first "
                                  "synapse; the event runtime takes the image straight into a conv or linear layer")
        h, w, c = self.shape
        if isinstance(m, nn.Linear):
            if (h, w) != (1, 1) or c != m.in_features:
                raise ConversionError(f"{node.name}: Linear({m.in_features}, ...) on a map of shape (H, W, C) = "
                                      f"{self.shape}; flatten it first")
            wt = m.weight.detach().to(torch.float32).t()  # [In, Out], rows in torch's flatten order (c, y, x)
            src = self.flat_from if not analog else self.input_flat_from
            chan = torch.arange(c)  # the channel of each input row: what amplitude it carries
            if src is not None:  # rows to channels-last order, and each row's channel
                sh, sw, sc = src
                wt = wt.reshape(sc, sh, sw, -1).permute(1, 2, 0, 3).reshape(c, -1)
                chan = torch.arange(sc).repeat(sh * sw)
            weight = wt.reshape(c, 1, 1, -1)
            stride, padding, out = (1, 1), (0, 0), (1, 1, m.out_features)
        else:
            if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ConversionError(f"{node.name}: the event runtime runs ungrouped, undilated convolutions with "
                                      f"numeric zero padding (groups={m.groups}, dilation={m.dilation}, "
                                      f"padding={m.padding!r}, padding_mode={m.padding_mode!r})")
            if c != m.in_channels:
                raise ConversionError(f"{node.name}: Conv2d({m.in_channels}, ...) on a map of {c} channels")
            (kh, kw), stride, padding = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
            weight = m.weight.detach().to(torch.float32).permute(1, 2, 3, 0)  # [Cin, kh, kw, Cout]
            chan = torch.arange(c)
            out = (_out(h, kh, stride[0], padding[0]), _out(w, kw, stride[1], padding[1]), m.out_channels)
            if min(out) < 1:
                raise ConversionError(f"{node.name}: a {kh}x{kw} convolution on a {h}x{w} map has no output")
        if not analog:
            scale = self.amplitude[chan] / self.divisor  # what one spike of input row c is worth
            weight = weight * scale.reshape(-1, 1, 1, 1)
        bias = m.bias.detach().to(torch.float32) if m.bias is not None else torch.zeros(out[2])
        self.stages.append(EventConv(node.name, weight.contiguous(), bias.contiguous().clone(), self.shape, out,
                                     stride, padding, analog))
        self.shape, self.flat_from = out, None

    def neurons(self, node: fx.Node, m: SpikingNeuron) -> None:
        if not isinstance(self.last(), EventConv):
            raise ConversionError(f"{node.name}: a spiking neuron must follow a conv or linear layer directly "
                                  f"(it follows {self.last().name if self.last() else 'the input'})")
        c = self.shape[2]
        th, amp = _per_channel(m.threshold, c, "threshold", node.name), _per_channel(m.amplitude, c, "amplitude",
                                                                                       node.name)
        self.stages.append(Neurons(node.name, m.spec, th, amp, self.shape))
        self.amplitude, self.divisor = amp, 1.0

    def pool(self, node: fx.Node, m: nn.Module) -> None:
        if self.amplitude is None:
            raise ConversionError(f"{node.name}: pooling of the analog input; the event runtime takes the image "
                                  "straight into the first conv or linear layer")
        if self.flat_from is not None or self.shape[:2] == (1, 1) and isinstance(self.last(), Flatten):
            raise ConversionError(f"{node.name}: pooling after a flatten")
        h, w, c = self.shape
        if isinstance(m, nn.AdaptiveAvgPool2d):
            oh, ow = _pair(m.output_size if not isinstance(m.output_size, tuple) else
                           tuple(s if s is not None else d for s, d in zip(m.output_size, (h, w))))
            if h % oh or w % ow:
                raise ConversionError(f"{node.name}: adaptive average pooling {h}x{w} -> {oh}x{ow} has unequal "
                                      "windows; the event runtime takes output sizes that divide the input")
            kernel, stride, padding = (h // oh, w // ow), (h // oh, w // ow), (0, 0)
        else:
            kernel, stride, padding = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
        out = (_out(h, kernel[0], stride[0], padding[0]), _out(w, kernel[1], stride[1], padding[1]), c)
        if isinstance(m, MaxPoolGate):
            if not isinstance(self.last(), Neurons):
                raise ConversionError(f"{node.name}: a max-pool gate must read a neuron layer directly (it reads "
                                      f"{self.last().name}); its running counts are of one layer's spikes")
            self.stages.append(Gate(node.name, self.shape, out, kernel, stride, padding, self.amplitude))
        else:
            if isinstance(m, nn.AvgPool2d):
                if m.ceil_mode or (any(padding) and not m.count_include_pad and m.divisor_override is None):
                    raise ConversionError(f"{node.name}: average pooling with ceil_mode or padding that is not "
                                          "counted has no single divisor; the event runtime cannot fold it")
                divisor = m.divisor_override or kernel[0] * kernel[1]
            else:
                divisor = kernel[0] * kernel[1]
            self.stages.append(AvgPool(node.name, self.shape, out, kernel, stride, padding))
            self.divisor *= float(divisor)
        self.shape = out

    def flatten(self, node: fx.Node) -> None:
        h, w, c = self.shape
        if (h, w) == (1, 1):
            return  # already a vector
        out = (1, 1, h * w * c)
        if self.amplitude is None:
            self.input_flat_from = self.shape
        else:
            self.flat_from = self.shape
        self.stages.append(Flatten(node.name, self.shape, out))
        self.shape = out


def _flatten_args(node: fx.Node) -> bool:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def lower(net: SpikingNet) -> EventProgram:
    """The stages of ``net`` for the event runtime (see the module docstring); ``net`` is not modified."""
    if not isinstance(net, SpikingNet):
        raise ConversionError(f"lower takes a SpikingNet from lowbit.snn.convert, got {type(net).__name__}")
    if net.report.coding is not Coding.ANALOG:
        raise ConversionError(f"the event runtime runs analog-coded nets (the image as a constant current); this one "
                              f"was converted with coding={net.report.coding}: convert with Coding.ANALOG")
    gm = net.graph_module
    modules = dict(gm.named_modules())
    walk = _Lowering(tuple(net.input_shape))
    prev: fx.Node | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise ConversionError(f"{node.name}: a second input; the event runtime takes one")
            prev = node
            continue
        args = [a for a in node.args if isinstance(a, fx.Node)] + [a for a in node.kwargs.values()
                                                                     if isinstance(a, fx.Node)]
        if len(prev.users) != 1 or args != [prev]:
            raise ConversionError(f"{node.name}: the graph is not a chain at this node (it reads "
                                  f"{[a.name for a in args]} after {prev.name}, used by {len(prev.users)} nodes); "
                                  "the event runtime lowers sequential nets only (no residual additions or "
                                  "concatenations)")
        if node.op == "output":
            break
        m = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            walk.synapse(node, m)
        elif isinstance(m, SpikingNeuron):
            walk.neurons(node, m)
        elif isinstance(m, (MaxPoolGate, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            walk.pool(node, m)
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            walk.flatten(node)
        elif node.op == "call_function" and node.target is torch.flatten and _flatten_args(node):
            walk.flatten(node)
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            pass
        else:
            what = type(m).__name__ if m is not None else getattr(node.target, "__name__", str(node.target))
            raise ConversionError(f"{node.name} ({what}): the event runtime cannot lower this node; it runs "
                                  "conv2d, linear, spiking neurons, average pools, max-pool gates and flatten")
        prev = node
    synapses = [s for s in walk.stages if isinstance(s, EventConv)]
    if not synapses or not isinstance(walk.last(), EventConv):
        raise ConversionError("the net must end in a conv or linear layer read out without a neuron (as "
                              "lowbit.snn.convert leaves it)")
    if synapses[-1].out_shape[:2] != (1, 1):
        raise ConversionError(f"{synapses[-1].name}: the readout must be a vector (a linear layer, or a conv with a "
                              f"1x1 output), got a map of shape (H, W, C) = {synapses[-1].out_shape}")
    if len(synapses) < 2:
        raise ConversionError("the net has no spike-driven layer (a single synapse reads the image): nothing to run "
                              "event by event")
    return EventProgram(tuple(walk.stages), tuple(net.input_shape))


__all__ = ["AvgPool", "EventConv", "EventProgram", "Flatten", "Gate", "Neurons", "Stage", "lower"]

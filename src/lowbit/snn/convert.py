"""ANN-to-SNN conversion by threshold balancing (Diehl et al. 2015; Rueckauer et al. 2017; Yu et al. 2022).

A ReLU network's activation ``a = max(0, W x + b)`` is read as a firing rate. Replacing each ReLU by an
integrate-and-fire neuron with reset by subtraction and driving it with the same current for ``T`` steps,

    sum_t s_t * theta = sum_t I_t - v_T     so     rate * theta = mean(I) - v_T / T  ->  max(0, mean(I))

as long as ``mean(I) <= theta`` (a neuron sends at most ``c_max`` spikes a step). **Threshold balancing** sets
each layer's ``theta_l = lambda_l`` (``lambda_l / c_max`` for augmented spikes: a step can then send the
whole activation in ``c_max`` quanta, AugMapping's point), ``lambda_l`` a high statistic of that ReLU's calibration activations (the maximum, a
percentile, or per channel from PTQ's observers), and the spikes carry the amplitude ``lambda_l`` to the next
layer -- the same as scaling ``W_l <- W_l lambda_{l-1} / lambda_l`` with unit thresholds, which is what an
event-driven runtime folds into its weights. Activations above ``lambda_l`` are clipped at ``c_max lambda_l``.

What :func:`convert` does to the traced graph:

- BatchNorm folded into the convolution or linear layer before it (``torch.fx``'s conv-BN fuser); any BN
  left is affine, so it acts per step on spikes exactly as on their mean.
- ``nn.ReLU`` / ``F.relu`` -> :class:`~lowbit.snn.neurons.SpikingNeuron` with the balanced threshold.
- ``MaxPool2d``: :attr:`MaxPool.GATE` (Rueckauer et al. 2017: per window, pass the spikes of the input whose
  cumulative spike count is highest so far) or :attr:`MaxPool.AVERAGE` (replace with average pooling: changes
  the function, reported); ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``, ``Dropout``, additions: linear,
  kept as they are.
- The last layer is read out without a neuron: the output is the mean over steps of its input current.
- Anything else (sigmoid, tanh, GELU, softmax, ReLU6, LSTM, ...) cannot be mapped: :class:`ConversionError`
  names every such layer.

Inputs are coded as a constant current (:attr:`Coding.ANALOG`: the image itself each step, so the first
layer's current is computed once) or as signed Bernoulli spikes (:attr:`Coding.RATE`: ``P(spike) = |x| /
x_max``, amplitude ``x_max`` from calibration).
"""

from __future__ import annotations

import copy
import enum
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from lowbit.errors import ConfigError, DataError, LowbitError
from lowbit.graph.fx_passes import trace
from lowbit.observers import ChannelPercentileObserver, PercentileObserver
from lowbit.snn.neurons import NeuronSpec, Spikes, SpikingNeuron
from lowbit.snn.pooling import MaxPoolGate


class ConversionError(LowbitError, ValueError):
    """A model has layers that ANN-to-SNN conversion cannot map."""


class MaxPool(enum.Enum):
    """How max pooling is converted."""

    GATE = "gate"
    AVERAGE = "average"


class Coding(enum.Enum):
    """How the input image becomes input current: constant (analog) or rate-coded spikes."""

    ANALOG = "analog"
    RATE = "rate"


@dataclass(frozen=True)
class Norm:
    """Threshold balancing statistic: the ``percentile`` of a layer's calibration activations (100 = max),
    over the whole layer or per channel (``per_channel``: one threshold per channel, PTQ's channel observer)."""

    percentile: float = 99.9
    per_channel: bool = False

    def __post_init__(self) -> None:
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100:
            raise ConfigError(f"Norm.percentile must be in (0, 100] (100 = the maximum), got {p!r}")

    @classmethod
    def max(cls) -> Norm:
        return cls(100.0)


@dataclass
class ConversionReport:
    """What conversion did: per layer the neuron and its threshold; pooling rules; input coding."""

    neurons: dict[str, float] = field(default_factory=dict)  # node -> threshold (mean over channels)
    folded_bn: list[str] = field(default_factory=list)
    pooling: dict[str, str] = field(default_factory=dict)
    spec: NeuronSpec | None = None
    coding: Coding = Coding.ANALOG
    input_max: float = 1.0

    def lines(self) -> list[str]:
        out = [f"neurons: {self.spec.spikes.name if self.spec else '?'} (reset {self.spec.reset.name if self.spec else '?'}, "
               f"max spikes/step {self.spec.max_spikes if self.spec else '?'}); input coding {self.coding.value}"]
        out += [f"  {name}: threshold {th:.4g}" for name, th in self.neurons.items()]
        out += [f"  {name}: {rule}" for name, rule in self.pooling.items()]
        if self.folded_bn:
            out.append(f"  BatchNorm folded: {len(self.folded_bn)} layer(s)")
        return out


_LINEAR_MODULES = (nn.Conv2d, nn.Linear, nn.Conv1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
                   nn.Dropout, nn.Identity, nn.BatchNorm2d, nn.BatchNorm1d)
_LINEAR_FUNCTIONS = {operator.add, torch.add, torch.flatten, operator.getitem, F.avg_pool2d,
                     F.adaptive_avg_pool2d, torch.cat}
_LINEAR_METHODS = {"view", "reshape", "flatten", "size", "add"}
_RELU_FUNCTIONS = {F.relu, torch.relu}


class SpikingNet(nn.Module):
    """A converted network: a ``torch.fx`` graph whose ReLUs are neurons and max pools gates.

    Run it with :func:`lowbit.snn.run` (``T`` steps, explicit state); ``report`` says what conversion did.
    """

    def __init__(self, graph: fx.GraphModule, report: ConversionReport, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.graph_module = graph
        self.report = report
        self.input_shape = input_shape

    def stateful(self) -> dict[str, nn.Module]:
        """The modules with state (neurons, max-pool gates), by name."""
        return {n: m for n, m in self.graph_module.named_modules() if isinstance(m, (SpikingNeuron, MaxPoolGate))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - guidance only
        raise LowbitError("a SpikingNet runs over time steps: use lowbit.snn.run(net, x, time_steps)")


def _unmappable(gm: fx.GraphModule) -> list[str]:
    bad = []
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = modules[node.target]
            if not isinstance(m, (*_LINEAR_MODULES, nn.ReLU, nn.MaxPool2d)):
                bad.append(f"{node.target} ({type(m).__name__})")
        elif node.op == "call_function" and node.target not in _LINEAR_FUNCTIONS | _RELU_FUNCTIONS | {F.max_pool2d}:
            bad.append(f"{node.name} ({getattr(node.target, '__name__', node.target)})")
        elif node.op == "call_method" and node.target not in _LINEAR_METHODS | {"relu"}:
            bad.append(f"{node.name} (.{node.target}())")
    return bad


def _relu_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    modules = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.ReLU):
            out.append(node)
        elif (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or (
                node.op == "call_method" and node.target == "relu"):
            out.append(node)
    return out


def _observer(norm: Norm) -> nn.Module:
    if norm.per_channel:
        return ChannelPercentileObserver(axis=1, percentile=max(norm.percentile, 50.1))
    return PercentileObserver(percentile=max(norm.percentile, 50.1))


def _threshold(obs: nn.Module, norm: Norm, shape: tuple[int, ...]) -> torch.Tensor:
    """``lambda``: the observer's samples' percentile (per channel: one per channel, shaped to broadcast)."""
    q = torch.quantile(obs.samples, norm.percentile / 100.0, dim=1)
    if norm.per_channel:
        return q.clamp(min=1e-6).reshape(-1, *([1] * (len(shape) - 2)))
    return q.amax().clamp(min=1e-6)


def _calibrate(gm: fx.GraphModule, relus: list[fx.Node], data: Iterable[torch.Tensor], norm: Norm
               ) -> tuple[dict[str, torch.Tensor], float, tuple[int, ...]]:
    """Thresholds per ReLU node from the calibration batches; the input's max |x|; one input's shape."""
    observers = {n.name: _observer(norm) for n in relus}
    shapes: dict[str, tuple[int, ...]] = {}
    seen = {"max": 0.0, "shape": None, "batches": 0}

    class Probe(fx.Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if n.name in observers:
                observers[n.name](out)
                shapes[n.name] = tuple(out.shape)
            return out

    probe = Probe(gm)
    with torch.no_grad():
        for x in data:
            if not isinstance(x, torch.Tensor) or not torch.isfinite(x).all():
                raise DataError("calibration batches must be finite tensors (found NaN/inf or a non-tensor)")
            seen["max"] = max(seen["max"], float(x.abs().max()))
            seen["shape"] = tuple(x.shape[1:])
            seen["batches"] += 1
            probe.run(x)
    if seen["batches"] == 0:
        raise DataError("calibration data is empty: pass at least one batch of inputs")
    thresholds = {name: _threshold(obs, norm, shapes[name]) for name, obs in observers.items()}
    return thresholds, max(seen["max"], 1e-6), seen["shape"]


def _replace(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module, args: tuple) -> None:
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _convert_pools(gm: fx.GraphModule, rule: MaxPool, report: ConversionReport) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], nn.MaxPool2d):
            m = modules[node.target]
            new: nn.Module = (MaxPoolGate(m.kernel_size, m.stride, m.padding) if rule is MaxPool.GATE
                              else nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
            _replace(gm, node, f"snn_{node.name}", new, node.args)
            report.pooling[node.target] = f"max pool -> {'gate (max cumulative count)' if rule is MaxPool.GATE else 'average pool'}"
        elif node.op == "call_function" and node.target is F.max_pool2d:
            raise ConversionError(f"{node.name}: F.max_pool2d in forward() cannot be converted; use nn.MaxPool2d")


def convert(model: nn.Module, calibration: Iterable[torch.Tensor], neuron: NeuronSpec = NeuronSpec(),
            norm: Norm = Norm(), max_pool: MaxPool = MaxPool.GATE, coding: Coding = Coding.ANALOG) -> SpikingNet:
    """Convert a trained ReLU network into a :class:`SpikingNet` (see the module docstring).

    ``calibration``: batches of inputs (tensors ``[N, ...]``, as the model takes them). ``neuron``: the spiking
    neuron every ReLU becomes (its ``threshold`` is replaced by the balanced one). The model is not modified.
    """
    if not isinstance(neuron, NeuronSpec):
        raise ConfigError(f"neuron must be a NeuronSpec, got {type(neuron).__name__}")
    if not isinstance(norm, Norm):
        raise ConfigError(f"norm must be a Norm (e.g. Norm(99.9) or Norm.max()), got {norm!r}")
    if not isinstance(max_pool, MaxPool) or not isinstance(coding, Coding):
        raise ConfigError("max_pool must be a MaxPool and coding a Coding value")
    model = copy.deepcopy(model).eval()
    bns = [n for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    gm = fuse(trace(model), inplace=True, no_trace=True)
    bad = _unmappable(gm)
    if bad:
        raise ConversionError("these layers cannot be mapped to spiking neurons: " + ", ".join(bad)
                              + ". ANN-to-SNN conversion needs ReLU activations, conv/linear layers and max/average "
                              "pooling; retrain with ReLU or leave these layers out")
    left = {n for n, m in gm.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))}
    report = ConversionReport(folded_bn=[b for b in bns if b not in left], spec=neuron, coding=coding)
    relus = _relu_nodes(gm)
    if not relus:
        raise ConversionError("the model has no ReLU: there is nothing to turn into spiking neurons")
    thresholds, report.input_max, input_shape = _calibrate(gm, relus, calibration, norm)
    for node in relus:
        # an augmented spike carries up to max_spikes quanta of lambda / max_spikes (one step can send a whole
        # activation); single and double thresholds send one quantum of lambda a step
        th = thresholds[node.name] / neuron.max_spikes
        _replace(gm, node, f"snn_{node.name}", SpikingNeuron(neuron, threshold=th, amplitude=th), (node.args[0],))
        report.neurons[node.name] = float(th.mean())
    _convert_pools(gm, max_pool, report)
    gm.graph.lint()
    gm.recompile()
    return SpikingNet(gm, report, input_shape)


__all__ = ["Coding", "ConversionError", "ConversionReport", "MaxPool", "Norm", "SpikingNet", "Spikes", "convert"]

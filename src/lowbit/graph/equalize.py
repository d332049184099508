"""Channel equalization of activations (method A's per-channel activation scales, folded into weights).

A per-tensor activation grid is set by the widest channel: a channel whose range
is 1/50 of the widest gets 5 of the 255 codes. Lee et al. 2018 (papers.md, A)
derive the activation scale from per-channel statistics and fold per-channel
factors into the next layer's weights, so that the integer accumulation stays
homogeneous. The same rescaling is the cross-layer equalization of Nagel et al.
("Data-Free Quantization", ICCV 2019) and SmoothQuant's migration (Xiao et al. 2023).

For a producer ``P`` (conv/linear, BatchNorm folded, activation ``ReLU``,
``clamp(0, hi)`` or none) whose output feeds only a consumer ``C``, with ``r_c``
the calibration range ``max |y_c|`` of ``P``'s output channel ``c``:

    t_c = max(r_c / r_max, floor) ** alpha
    W_P[c] <- W_P[c] / t_c,   b_P[c] <- b_P[c] / t_c,   W_C[:, c] <- W_C[:, c] * t_c

``C``'s output is unchanged (``act(y / t) * t = act(y)`` for ``t > 0`` and a
positively homogeneous ``act``). Per-output-channel weight grids make the
division of ``W_P``'s rows free; a depthwise ``C`` is free too (its input
channel is its output channel), so there ``alpha = 1``: every channel then fills
the grid. For a dense ``C`` the multiplied columns widen its rows' ranges,
hence ``alpha < 1`` there (0.5 by default) splits the difficulty.

A ``clamp(0, hi)`` (ReLU6) stays as it is, a clamp at ``hi`` of the scaled
channel, i.e. at ``hi * t_c`` of the original one. That changes nothing where it
matters: a channel that reaches ``hi`` on the calibration data has ``r_c = r_max``
and ``t_c = 1``; any other stays below ``r_c <= hi * t_c`` (as ``t_c >= r_c / r_max
>= r_c / hi``). On the calibration data the float function is unchanged.

A LayerNorm whose output feeds only linear layers (a pre-LN transformer's attention and MLP inputs) is
smoothed as SmoothQuant does (Xiao et al., ICML 2023): with ``r_j`` the calibration range of its output
channel ``j`` and ``w_j = max_k max_i |W_k[i, j]|`` over its consumers ``k``,

    s_j = r_j^alpha / w_j^(1 - alpha),   gamma_j <- gamma_j / s_j,  beta_j <- beta_j / s_j,  W_k[:, j] <- W_k[:, j] s_j

which moves the outlier channels' range from the per-tensor activation grid into the per-output-channel
weight grids; the float function is unchanged (the LayerNorm's affine map is per channel). A LayerNorm whose
output also feeds a residual add (a post-LN encoder such as BERT) is left as it is: scaling it would
change the residual stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

from lowbit.granularity import PerChannel
from lowbit.graph.nodes import is_passthrough, module_of
from lowbit.nn.layernorm import QLayerNorm
from lowbit.nn.quantizers import ActQuantizer
from lowbit.nn.unified import UnifiedConv, _Unified

_SCALE_SAFE = (nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.Identity, nn.ZeroPad1d, nn.ZeroPad2d)


@dataclass(frozen=True)
class Pair:
    """A producer whose output channels feed only ``consumer``'s input channels; ``free``: the consumer's
    weight grid does not see the rescaling (depthwise with per-channel weights)."""

    producer: str
    consumer: str
    free: bool


def _act_ok(act: nn.Module) -> bool:
    if isinstance(act, (nn.Identity, nn.ReLU)):
        return True
    return isinstance(act, nn.Hardtanh) and act.min_val == 0.0 and act.max_val > 0.0


def _per_channel(m: _Unified) -> bool:
    g = m.weight_quant.spec.granularity if m.weight_quant is not None else None
    return isinstance(g, PerChannel) and g.axis == 0


def _channel_preserving(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Pass-through ops that keep channel c in channel c and commute with a positive per-channel factor."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), _SCALE_SAFE)
    return is_passthrough(gm, node) and node.op == "call_function" and getattr(node.target, "__name__", "") in (
        "pad", "max_pool2d", "max_pool1d", "dropout")


def _sole_consumer(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The one node that uses ``node``'s output through channel-preserving ops, or None."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if not _channel_preserving(gm, user):
            return user
        node = user
    return None


def _is_depthwise(m: _Unified) -> bool:
    return isinstance(m, UnifiedConv) and m.groups > 1 and m.groups == m.weight.shape[0] and m.weight.shape[1] == 1


def find_pairs(gm: fx.GraphModule) -> list[Pair]:
    """Every (producer, consumer) pair of quantized unified modules that equalization may rescale."""
    pairs = []
    for node in gm.graph.nodes:
        p = module_of(gm, node)
        if not (isinstance(p, _Unified) and p.quantized and not p.has_residual and p.bn is None
                and _act_ok(p.act) and _per_channel(p)):
            continue
        user = _sole_consumer(gm, node)
        c = module_of(gm, user) if user is not None else None
        if not (isinstance(c, _Unified) and c.weight_quant is not None and c.bn is None):
            continue
        first = user.args[0]
        while isinstance(first, fx.Node) and first is not node and _channel_preserving(gm, first):
            first = first.args[0]
        if first is not node or node in user.args[1:]:
            continue
        dense = (isinstance(c, UnifiedConv) and c.groups == 1) or c.weight.ndim == 2
        if not (dense or _is_depthwise(c)) or _in_channels(c) != p.weight.shape[0]:
            continue
        pairs.append(Pair(str(node.target), str(user.target), _is_depthwise(c) and _per_channel(c)))
    return pairs


def _in_channels(m: _Unified) -> int:
    return m.weight.shape[1] * (m.groups if isinstance(m, UnifiedConv) else 1)


@torch.no_grad()
def channel_ranges(gm: fx.GraphModule, names: Iterable[str], data: Iterable) -> dict[str, torch.Tensor]:
    """``max |y_c|`` over ``data`` of the float output (quantizers off) of each named unified module or LayerNorm,
    per channel (a conv's dimension 1, a linear's or LayerNorm's last dimension).

    ``data``: calibration batches, each fed to the model as :func:`lowbit.calibration.call_inputs` reads
    it (a tensor, a tuple of positional inputs, a dict of keyword inputs)."""
    from lowbit.calibration import model_calls, quantizers_off

    ranges: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(mod, _args, y):
            dim = 1 if mod.weight.ndim > 2 else -1  # a conv's channels; a linear's or LayerNorm's features (last)
            r = y.detach().abs().movedim(dim, 0).reshape(y.shape[dim], -1).amax(dim=1)
            ranges[name] = torch.maximum(ranges[name], r) if name in ranges else r
        return fn

    handles = [gm.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with quantizers_off(gm):
            for args, kwargs in model_calls(data, gm):
                gm(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return ranges


@torch.no_grad()
def _rescale(p: _Unified, c: _Unified, t: torch.Tensor) -> None:
    shape = (-1,) + (1,) * (p.weight.ndim - 1)
    p.weight.div_(t.reshape(shape))
    if p.bias is not None:
        p.bias.div_(t)
    if _is_depthwise(c):
        c.weight.mul_(t.reshape((-1,) + (1,) * (c.weight.ndim - 1)))
    else:
        c.weight.mul_(t.reshape((1, -1) + (1,) * (c.weight.ndim - 2)))


def equalize(gm: fx.GraphModule, data: Iterable, alpha: float = 0.5,
             floor: float = 1e-3) -> list[Pair]:
    """Equalize the activation channels of every pair of a prepared graph (before calibration) on ``data``.

    Returns the pairs rescaled. The function of the model is unchanged on ``data``; see the module doc."""
    pairs = find_pairs(gm)
    data = list(data)
    ranges = channel_ranges(gm, {p.producer for p in pairs}, data)
    for pair in pairs:
        r = ranges[pair.producer].double()
        if float(r.max()) <= 0.0:
            continue
        ratio = (r / r.max()).clamp(min=floor)
        t = ratio.pow(1.0 if pair.free else alpha).to(torch.float32)
        _rescale(gm.get_submodule(pair.producer), gm.get_submodule(pair.consumer), t)
    return pairs


@dataclass(frozen=True)
class NormGroup:
    """A LayerNorm (its affine map per channel) whose output feeds only the linear layers ``consumers``."""

    norm: str
    consumers: tuple[str, ...]


def _linear_readers(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node] | None:
    """The nodes that read ``node``'s output, through its input quantizers; None if one is not a linear layer
    with per-channel weights reading it as its main input (a residual summand may be another tensor)."""
    reads: list[tuple[fx.Node, fx.Node]] = []  # (reader, the tensor it reads)
    for user in node.users:
        if isinstance(module_of(gm, user), ActQuantizer):
            reads += [(r, user) for r in user.users]
        else:
            reads.append((user, node))
    ok = all(isinstance(m := module_of(gm, r), _Unified) and m.weight is not None and m.weight.ndim == 2
             and m.weight_quant is not None and _per_channel(m) and r.args[0] is src and src not in r.args[1:]
             for r, src in reads)
    return [r for r, _ in reads] if reads and ok else None


def find_norm_groups(gm: fx.GraphModule) -> list[NormGroup]:
    """Every LayerNorm (affine, over the last dimension) whose output only linear layers read."""
    groups = []
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if isinstance(m, QLayerNorm):  # (the integer LayerNorm PTQ swapped in: its affine map is its own)
            features = m.features
        elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            features = m.normalized_shape[0]
        else:
            continue
        if m.weight is None or m.bias is None:
            continue
        readers = _linear_readers(gm, node)
        if readers and all(module_of(gm, r).weight.shape[1] == features for r in readers):
            groups.append(NormGroup(str(node.target), tuple(str(r.target) for r in readers)))
    return groups


@torch.no_grad()
def smooth_norms(gm: fx.GraphModule, data: Iterable, alpha: float = 0.5, floor: float = 1e-5) -> list[NormGroup]:
    """SmoothQuant's migration for every :class:`NormGroup` of a prepared graph (before calibration), on
    ``data``; returns the groups rescaled (see the module doc)."""
    groups = find_norm_groups(gm)
    ranges = channel_ranges(gm, {g.norm for g in groups}, list(data))
    for g in groups:
        norm = gm.get_submodule(g.norm)
        consumers = [gm.get_submodule(c) for c in g.consumers]
        w = torch.stack([c.weight.detach().abs().amax(dim=0) for c in consumers]).amax(dim=0).double()
        r = ranges[g.norm].double()
        s = (r.clamp(min=floor).pow(alpha) / w.clamp(min=floor).pow(1.0 - alpha)).to(torch.float32)
        norm.weight.div_(s)
        norm.bias.div_(s)
        for c in consumers:
            c.weight.mul_(s.reshape(1, -1))
    return groups


__all__ = ["NormGroup", "Pair", "channel_ranges", "equalize", "find_norm_groups", "find_pairs", "smooth_norms"]

"""torch.fx passes: trace, fold BatchNorm, fuse into unified modules, insert input quantizers.

The passes work on a ``GraphModule`` in eval mode and keep its function: after
:func:`fold_batchnorm` and :func:`fuse_unified` (with quantizers off) the module
computes what the float model computed, up to float rounding.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from lowbit.errors import LowbitError
from lowbit.granularity import PerChannel
from lowbit.graph.nodes import (
    AVG_POOLS,
    activation_of,
    add_operands,
    is_batchnorm,
    is_compute,
    is_passthrough,
    module_of,
)
from lowbit.graph.recurrent import recurrent_part
from lowbit.graph.tables import will_tabulate
from lowbit.nn.l2norm import UNIT_GRID, QL2Normalize
from lowbit.nn.layernorm import QLayerNorm
from lowbit.nn.magnitude import QMagnitude
from lowbit.nn.qparams import ChannelQParams, QParams
from lowbit.nn.recurrent import H_GRID, QRecurrent
from lowbit.nn.quantizers import ActQuantizer
from lowbit.spec import QuantSpec
from lowbit.nn.unified import QAvgPool, UnifiedConv, UnifiedLinear, _Unified

SpecFor = Callable[[str], tuple[QuantSpec | None, QuantSpec | None]]  # layer name -> (weight, output)


class TraceFailed(LowbitError):
    """torch.fx could not trace the model (dynamic control flow, unsupported Python)."""


@dataclass
class FusionPlan:
    """What the passes did: the unified modules and what each absorbed, what stayed float."""

    folded_bn: list[str] = field(default_factory=list)
    unified: dict[str, list[str]] = field(default_factory=dict)  # module name -> absorbed node names
    float_ops: list[str] = field(default_factory=list)
    input_quantizers: list[str] = field(default_factory=list)


def trace(model: nn.Module, fixed: Mapping[str, object] | None = None) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a clear error.

    ``fixed``: ``forward`` parameters the caller does not give (``{name: default}``, e.g. ``mask=None``),
    traced at that value rather than as an input (fx would otherwise follow ``if mask is not None`` as if
    a mask came). They are not inputs of the graph: its ``forward`` takes only the other parameters.
    Only ``None``, bool, int, float and str values are fixed; other defaults stay inputs."""
    fixed = {k: v for k, v in (fixed or {}).items() if v is None or type(v) in (bool, int, float, str)}
    try:
        gm = fx.symbolic_trace(model, concrete_args=fixed or None)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds
        raise TraceFailed(f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}") from exc
    if fixed:
        _drop_fixed_inputs(gm, fixed)
    return gm


SHARED_SUFFIX = "_call"


def unshare_modules(gm: fx.GraphModule) -> dict[str, str]:
    """Give every repeated call of a module its own copy: the ``k``-th call (from 1) of ``step.conv`` runs
    ``step.conv_call<k>``, a copy with the same weights, so each call site gets its own quantizers, BatchNorm
    folding and output grid (a layer called on every chunk of a stream sees different data at each call).
    Returns ``{copy: original}``."""
    import copy

    seen: dict[str, int] = {}
    copies: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        k = seen.get(target, 0)
        seen[target] = k + 1
        if k == 0:
            continue
        name = f"{target}{SHARED_SUFFIX}{k}"
        gm.add_submodule(name, copy.deepcopy(gm.get_submodule(target)))
        node.target = name
        copies[name] = target
    if copies:
        gm.recompile()
    return copies


def shared_original(name: str) -> str:
    """The module a copy of :func:`unshare_modules` was made from (``name`` itself for any other)."""
    base, sep, k = name.rpartition(SHARED_SUFFIX)
    return base if sep and k.isdigit() else name


def _drop_fixed_inputs(gm: fx.GraphModule, fixed: Mapping[str, object]) -> None:
    """Remove the placeholders fx made for the ``fixed`` parameters (named ``<name>_1``) with the guards it
    hangs on them (``_assert_is_none``, ``torch._assert(x == value)``), when nothing else reads them."""
    for node in [n for n in gm.graph.nodes if n.op == "placeholder" and str(n.target)[:-2] in fixed
                 and str(n.target).endswith("_1")]:
        guards = _readers(node)
        if any(g.op == "output" or any(u not in guards for u in g.users) for g in guards):
            continue  # the value reaches the computation: keep the input
        for g in reversed([n for n in gm.graph.nodes if n in guards]):  # users before what they read
            gm.graph.erase_node(g)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _readers(node: fx.Node) -> set[fx.Node]:
    """Every node that reads ``node``, directly or through others."""
    seen: set[fx.Node] = set()
    todo = list(node.users)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.users)
    return seen


def _calls_per_target(gm: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def fold_batchnorm(gm: fx.GraphModule, plan: FusionPlan) -> None:
    """Fold every BatchNorm that directly follows a conv/linear used once into its weight and bias.

    ``w' = w * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
    """
    calls = _calls_per_target(gm)
    for node in list(gm.graph.nodes):
        if not is_batchnorm(gm, node):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and is_compute(gm, src) and len(src.users) == 1 and calls[src.target] == 1):
            continue
        layer, bn = module_of(gm, src), module_of(gm, node)
        fold = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        _set_module(gm, src.target, fold(layer.eval(), bn.eval()))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        plan.folded_bn.append(str(node.target))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, module)


def _chain(gm: fx.GraphModule, node: fx.Node) -> tuple[list[fx.Node], fx.Node | None, nn.Module, nn.Module | None]:
    """``node`` [-> BatchNorm] [-> add(residual)] [-> activation]: the nodes to absorb, the residual,
    the activation and the BatchNorm (only found here when it was not folded)."""
    chain, residual, act, bn = [node], None, nn.Identity(), None
    users = list(node.users)
    if len(users) == 1 and is_batchnorm(gm, users[0]):
        bn = module_of(gm, users[0])
        chain.append(users[0])
    tail = chain[-1]
    users = list(tail.users)
    if len(users) == 1 and (ops := add_operands(users[0])) is not None and ops[0] is not ops[1]:
        residual = ops[1] if ops[0] is tail else ops[0]
        chain.append(users[0])
    users = list(chain[-1].users)
    if len(users) == 1 and (a := activation_of(gm, users[0])) is not None:
        act = a
        chain.append(users[0])
    return chain, residual, act, bn


def fuse_unified(gm: fx.GraphModule, spec_for: SpecFor, plan: FusionPlan) -> None:
    """Replace each conv/linear [+add] [+activation] chain by one unified module; wrap average pools."""
    calls = _calls_per_target(gm)
    for node in list(gm.graph.nodes):
        if not is_compute(gm, node) or calls[node.target] != 1:
            continue
        chain, residual, act, bn = _chain(gm, node)
        layer = module_of(gm, node)
        w_spec, out_spec = spec_for(str(node.target))
        if any(u.op == "output" for u in chain[-1].users):
            out_spec = None  # the network output: its int32 accumulator is dequantized, not requantized
        cls = UnifiedLinear if isinstance(layer, nn.Linear) else UnifiedConv
        unified = cls(layer, act, residual is not None, w_spec, out_spec)
        unified.bn = bn
        _set_module(gm, node.target, unified)
        with gm.graph.inserting_after(chain[-1]):
            args = (node.args[0],) + ((residual,) if residual is not None else ())
            new = gm.graph.call_module(node.target, args=args)
        chain[-1].replace_all_uses_with(new)
        for old in reversed(chain):
            gm.graph.erase_node(old)
        plan.unified[str(node.target)] = [n.name for n in chain]
    for node in gm.graph.nodes:
        pool = module_of(gm, node)
        if isinstance(pool, AVG_POOLS):
            _, out_spec = spec_for(str(node.target))
            if out_spec is not None:
                _set_module(gm, node.target, QAvgPool(pool, out_spec))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _is_quantized(gm: fx.GraphModule, node: fx.Node) -> bool:
    part = recurrent_part(gm, node)
    if part is not None:  # a recurrent layer's h is on its fixed grid; its cell state (16-bit) is not int8
        return part.on_h_grid
    m = module_of(gm, node)
    if isinstance(m, _Unified):
        return m.quantized
    if isinstance(m, (QAvgPool, ActQuantizer, QL2Normalize)):  # (an L2 normalisation's output: the grid 2^-7)
        return True
    if is_passthrough(gm, node) and node.args and isinstance(node.args[0], fx.Node):
        return _is_quantized(gm, node.args[0])
    return False


def insert_input_quantizers(gm: fx.GraphModule, spec_for_input: Callable[[str], QuantSpec], plan: FusionPlan) -> None:
    """Give every quantized module whose input is not on a grid an input quantizer (one per producer)."""
    made: dict[fx.Node, fx.Node] = {}
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        # a layer with quantized weights needs its input on a grid even when its own output is not
        # requantized (the network's output layer after a float op: LSTM, attention, a mean)
        if not (isinstance(m, (QAvgPool, QRecurrent, QL2Normalize))
                or (isinstance(m, _Unified) and (m.quantized or m.weight_quant is not None))):
            continue
        for arg in [a for a in node.args if isinstance(a, fx.Node)]:
            if _is_quantized(gm, arg):
                continue
            if arg not in made:
                name = f"input_quant_{len(made)}"
                gm.add_submodule(name, ActQuantizer(spec_for_input(str(node.target))))
                with gm.graph.inserting_after(arg):
                    made[arg] = gm.graph.call_module(name, args=(arg,))
                plan.input_quantizers.append(f"{name} (before {node.target}, after {arg.name})")
            node.replace_input_with(arg, made[arg])
    plan.float_ops = [
        n.name for n in gm.graph.nodes
        if n.op in ("call_module", "call_function", "call_method")
        and not isinstance(module_of(gm, n), (_Unified, QAvgPool, ActQuantizer, QRecurrent, QL2Normalize, QMagnitude,
                                                    QLayerNorm))
        and not is_passthrough(gm, n)
        and not will_tabulate(gm, n)  # convert makes it a lookup table (lowbit.graph.tables)
    ]
    gm.graph.lint()
    gm.recompile()


def widen_last_input(gm: fx.GraphModule, last: str, spec: QuantSpec) -> str | None:
    """Requantize the input of the last layer ``last`` on ``spec`` (its own input width).

    "First and last layer at 8 bits" means their inputs too (Esser et al. 2020, sec. 3): the
    module that produces the last layer's input (a unified layer or an average pool, through
    flatten-like ops, used by nothing else) gets an output quantizer of ``spec``. Returns its name.
    """
    node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == last), None)
    arg = node.args[0] if node is not None and node.args else None
    while isinstance(arg, fx.Node) and is_passthrough(gm, arg) and len(arg.users) == 1 and arg.args:
        arg = arg.args[0]
    if not isinstance(arg, fx.Node) or len(arg.users) != 1:
        return None
    m = module_of(gm, arg)
    if not isinstance(m, (_Unified, QAvgPool)) or m.output_quant is None:
        return None
    m.output_quant = ActQuantizer(spec)
    return str(arg.target)


def _output_quantizer(gm: fx.GraphModule, node: fx.Node) -> ActQuantizer | None:
    """The quantizer whose grid ``node``'s tensor lies on (through pass-through ops), or None if it is float."""
    part = recurrent_part(gm, node)
    if part is not None:
        return H_GRID if part.on_h_grid else None
    m = module_of(gm, node)
    if isinstance(m, ActQuantizer):
        return m
    if isinstance(m, QL2Normalize):
        return UNIT_GRID
    if isinstance(m, (_Unified, QAvgPool)):
        return m.output_quant
    if is_passthrough(gm, node) and node.args and isinstance(node.args[0], fx.Node):
        return _output_quantizer(gm, node.args[0])
    return None


def mark_binary_inputs(gm: fx.GraphModule) -> list[str]:
    """Pad the convolutions whose input is binary (``sign``: -1 or +1) with -1 instead of 0, in training and
    in the integer model alike, so that every input the XNOR-popcount engine sees stays binary (BNN
    implementations pad with -1 or with 0; 0 is no binary value). Returns the convolutions marked."""
    from lowbit.formats import Binary

    marked = []
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if isinstance(m, UnifiedConv) and node.args and isinstance(node.args[0], fx.Node):
            q = _output_quantizer(gm, node.args[0])
            if q is not None and isinstance(q.spec.format, Binary):
                if isinstance(m.padding, str):
                    from lowbit.errors import ConfigError

                    raise ConfigError(f"{node.target}: a binary input is padded with -1, and padding={m.padding!r} "
                                      "of this kernel is asymmetric (PyTorch pads one more on the right): give the "
                                      "conv numeric padding, e.g. padding=k // 2 with an odd kernel")
                m.pad_value = -1.0
                marked.append(str(node.target))
    return marked


def check_binary_outputs(gm: fx.GraphModule) -> None:
    """Refuse a binary (``sign``) output the integer model cannot compute as ``sign(acc + bias)``: after an
    activation that is never negative (``sign(relu(y))`` is always +1: use Hardtanh, as BNNs do) or after
    a residual add. Names the layer and the fix."""
    from lowbit.errors import ConfigError
    from lowbit.formats import Binary

    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if not isinstance(m, _Unified) or m.output_quant is None or not isinstance(m.output_quant.spec.format, Binary):
            continue
        act = m.act
        sign_safe = isinstance(act, nn.Identity) or (type(act) is nn.Hardtanh and act.min_val < 0 <= act.max_val)
        if not sign_safe:
            raise ConfigError(f"{node.target}: a binary activation after {type(act).__name__} "
                              f"({act}) is not sign(x) of the layer's output (after ReLU it is always +1): give "
                              "binary layers a Hardtanh (or no activation) before the sign, as BNNs do, or keep "
                              "this layer's activations multi-bit with LayerRule(pattern, act=QuantSpec(IntFormat(2)))")
        if m.has_residual:
            raise ConfigError(f"{node.target}: a binary activation after a residual add has no integer form here; "
                              "binarize before the add, or keep this layer's activations multi-bit with a LayerRule")


def producer_grid(gm: fx.GraphModule, node: fx.Node) -> QParams | ChannelQParams | None:
    """The frozen grid of the tensor ``node`` produces (through pass-through ops): per tensor, or one scale and zero
    point per feature (the last dimension, :mod:`lowbit.graph.norm_inputs`); None where it is float or not frozen."""
    q = _output_quantizer(gm, node)
    if q is None or q.mode != "quantize":
        return None
    if not isinstance(q, ActQuantizer) or q.scale.numel() == 1:
        return q.qparams()
    if not isinstance(q.spec.granularity, PerChannel) or q.spec.axis != -1:
        return None
    return ChannelQParams(q.scale.detach().to(torch.float32).reshape(-1).clone(),
                          q.zero_point.detach().to(torch.int64).reshape(-1).clone(), q.spec.format)


def producer_qparams(gm: fx.GraphModule, node: fx.Node) -> QParams | None:
    """:func:`producer_grid` where it is one grid per tensor; None for a grid per feature (only a LayerNorm reads
    one)."""
    q = producer_grid(gm, node)
    return q if isinstance(q, QParams) else None


def attach_input_qparams(gm: fx.GraphModule) -> None:
    """Tell each unified module and average pool the grids of its inputs (after the quantizers froze); quantize
    each recurrent layer and L2 normalisation for its input's grid, and each magnitude for its inputs' grid and the
    grid of the quantizer that reads it, and each LayerNorm for its input's grid and its reader's."""
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if isinstance(m, (QRecurrent, QL2Normalize)) and node.args:
            m.freeze(producer_qparams(gm, node.args[0]))
        if isinstance(m, QMagnitude):  # its inputs' grid and the grid of the quantizer reading it
            from lowbit.graph.magnitude import output_qparams

            m.freeze(*(producer_qparams(gm, a) if isinstance(a, fx.Node) else None for a in node.args[:2]),
                     output_qparams(gm, node))
        if isinstance(m, QLayerNorm) and node.args:  # its input's grid (per feature or per tensor), its reader's
            from lowbit.graph.magnitude import output_qparams

            m.freeze(producer_grid(gm, node.args[0]), output_qparams(gm, node))
        if isinstance(m, (_Unified, QAvgPool)):
            args = [a for a in node.args if isinstance(a, fx.Node)]
            m.input_qparams = producer_qparams(gm, args[0]) if args else None
            if isinstance(m, _Unified) and len(args) > 1:
                m.residual_qparams = producer_qparams(gm, args[1])


class _OutputCounter(fx.Interpreter):
    """Runs a graph and counts, for each node kind, how many output elements it produces."""

    def __init__(self, gm: fx.GraphModule, counted: Callable[[fx.Node], bool]) -> None:
        super().__init__(gm)
        self.counted = counted
        self.ops = 0
        self.elements = 0

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if self.counted(n) and isinstance(out, torch.Tensor):
            self.ops += 1
            self.elements += out[0].numel() if out.ndim > 0 else 1  # per sample
        return out


def _graph_args(gm: fx.GraphModule, args: tuple, kwargs: Mapping[str, object] | None) -> tuple:
    """``args`` and ``kwargs`` as the graph's positional inputs (``fx.Interpreter.run`` takes no keywords),
    placeholders left out taking their defaults."""
    if not kwargs:
        return tuple(args)
    bound = inspect.signature(gm.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.args


def count_primitive_quant_points(gm: fx.GraphModule, example_inputs: tuple,
                                 example_kwargs: Mapping[str, object] | None = None) -> tuple[int, int]:
    """(ops, elements per sample) if every primitive op's output were requantized (no fusion)."""

    def counted(n: fx.Node) -> bool:
        if n.op == "placeholder":
            return True
        if n.op not in ("call_module", "call_function", "call_method"):
            return False
        return not is_passthrough(gm, n)

    counter = _OutputCounter(gm, counted)
    with torch.no_grad():
        counter.run(*_graph_args(gm, example_inputs, example_kwargs))
    return counter.ops, counter.elements


def count_fused_quant_points(gm: fx.GraphModule, example_inputs: tuple,
                             example_kwargs: Mapping[str, object] | None = None) -> tuple[int, int]:
    """(ops, elements per sample) of the (re)quantizations the fused graph performs."""

    def counted(n: fx.Node) -> bool:
        m = module_of(gm, n)
        return isinstance(m, (ActQuantizer, QAvgPool)) or (isinstance(m, _Unified) and m.quantized)

    counter = _OutputCounter(gm, counted)
    with torch.no_grad():
        counter.run(*_graph_args(gm, example_inputs, example_kwargs))
    return counter.ops, counter.elements

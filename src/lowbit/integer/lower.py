"""Lower a converted (fake-quant) model to an :class:`IntegerModel`.

Walks the torch.fx graph of :func:`lowbit.ptq.convert`'s output: input
quantizers become ``quantize``, unified modules ``linear``/``conv2d`` with int8
weights (integer, ternary ``{-1, 0, 1}`` or power-of-two ``{0, +-2^k}`` codes times a
per-channel scale: the same int8 kernels run all three; ``weight_codes`` tells the file
format how to pack the last two), int32 bias and integer multipliers (:func:`lowbit.nn.exact.layer_params`,
the same numbers the simulation uses), average pools ``avgpool2d``, and the
grid-preserving ops (flatten, max-pool, zero padding, dropout) their integer
forms. 1-D convolutions and pools run as the 2-D ops of height 1 between ``unsqueeze(2)`` and
``squeeze(2)`` (a squeeze followed by an unsqueeze cancels: a chain of 1-D layers stays 4-D). Binary layers (BNN / XNOR-Net) lower to the same ``linear``/``conv2d`` ops with
``weight_codes`` ``binary``, ``input_bits`` 1 where their input is a sign (the XNOR-popcount
kernel then runs them), a ``Binarized`` output stage where their output is a sign, and
``pad_value`` -1 for a conv padded with -1. A :class:`~lowbit.nn.lookup.Lookup` (an elementwise float op the
simulation tabulated: sigmoid, GELU, a BatchNorm after an activation, ...) lowers to a ``table`` of the next
quantizer's codes, which it reaches through max pools, zero pads and layout ops (they commute with the monotone
rounding; that quantizer then has nothing left to do), or of float32 values at the network output; ``permute``,
``reshape`` (batch kept) and indexing with new axes are layout ops. An L2 normalisation PTQ swapped
(:class:`~lowbit.nn.l2norm.QL2Normalize`) lowers to ``l2normalize``, its output on the fixed grid ``2^-7``; a magnitude
``sqrt(a^2 + b^2)`` (:class:`~lowbit.nn.magnitude.QMagnitude`) to ``magnitude``, its output on the grid of the
quantizer that reads it; slices ``x[:, a:b]`` to ``slice`` and reflect / replicate pads to ``pad``. Anything
else is refused with the list of offending nodes (a norm PTQ left float with why, :func:`lowbit.graph.l2norm.refusal`).
"""

from __future__ import annotations

import math
import operator
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.errors import ConfigError
from lowbit.integer import validate
from lowbit.formats import Binary, IntFormat
from lowbit.integer import ir
from lowbit.integer.model import Input, IntegerModel, Node
from lowbit.integer.ops import build
from lowbit.prepared import record_of
from lowbit.graph.input_check import check_input
from lowbit.nn.exact import channel_output, layer_params, pool_params
from lowbit.functional.lookup import grid_values
from lowbit.graph.l2norm import refusal as l2_refusal
from lowbit.graph.norm_inputs import per_feature
from lowbit.graph.nodes import LAYOUT_FUNCTIONS, chain_end, is_passthrough, module_of
from lowbit.graph.recurrent import Part, recurrent_part
from lowbit.functional.fixed_rnn import H_MAX, PART_MAX
from lowbit.nn.recurrent import C_QPARAMS, H_QPARAMS, QRecurrent, input_width
from lowbit.graph.tables import tabulable
from lowbit.nn.l2norm import UNIT_QPARAMS, QL2Normalize
from lowbit.nn.layernorm import QLayerNorm
from lowbit.nn.lookup import Lookup
from lowbit.nn.magnitude import QMagnitude
from lowbit.nn.qparams import ChannelQParams, QParams, offset, stored_zero_point
from lowbit.nn.quantizers import ActQuantizer
from lowbit.nn.unified import QAvgPool, UnifiedConv, _Unified

_SKIP_MODULES = (nn.Dropout, nn.Identity)
_REFLECT_PADS = (nn.ReflectionPad1d, nn.ReflectionPad2d)
_EDGE_PADS = (*_REFLECT_PADS, nn.ReplicationPad1d, nn.ReplicationPad2d)
_SKIP_METHODS = ("contiguous",)


def grid(q: QParams) -> ir.Grid:
    """The integer model's grid of a simulation's (frozen) quantization parameters (a grid of over 8 bits is
    stored in int16: the input of a recurrent layer)."""
    return ir.Grid(float(q.scale), stored_zero_point(q, 8 if q.fmt.bits <= 8 else 16), q.fmt.bits, q.fmt.signed)


class _Lowering:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.nodes: list[Node] = []
        self.grids: dict[str, QParams | None] = {}  # IR tensor name -> grid (None: float)
        self.names: dict[fx.Node, str] = {}
        self.unsupported: list[str] = []
        self.squeezed: dict[str, str] = {}  # output of a squeeze(2) we emitted -> its 4-D (height 1) source
        self.recurrent_ops: dict[tuple, str] = {}  # (layer call, emit, layer) -> the recurrent op's output
        self.zeros: set[fx.Node] = set()  # zero tensors read only as a cell's initial state
        self.channel: dict[str, ChannelQParams] = {}  # IR tensor name -> its grid per feature (an LN's input)

    def emit(self, op: ir.IROp, inputs: list[str], out: str, tensors: dict | None, q: QParams | None,
             source: str) -> None:
        self.nodes.append(Node(build(op, tensors), inputs, out, grid(q) if q else None, source))
        self.grids[out] = q

    def arg(self, node: fx.Node, i: int = 0) -> str:
        return self.names[node.args[i]]

    def run(self, examples: tuple[torch.Tensor, ...]) -> IntegerModel:
        """The integer model, one input per placeholder (in ``forward``'s order) with the shape and dtype of its
        example: each float input is quantized by its own input quantizer(s); an input nothing reads stays one."""
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        for node in self.gm.graph.nodes:
            self.visit(node)
        if self.unsupported:
            raise ConfigError("cannot lower to integers: " + "; ".join(self.unsupported))
        inputs = [Input(self.names[p], tuple(x.shape[1:]), x.dtype) for p, x in zip(placeholders, examples)]
        return IntegerModel(_without_dead_squeezes(self.nodes, self.output), output_name=self.output, inputs=inputs)

    def as_2d(self, name: str, source: str) -> str:
        """The height-1 4-D form of the 3-D tensor ``name``: the source of a squeeze we emitted (the pair
        cancels), else a new ``unsqueeze(2)``."""
        if name in self.squeezed:
            return self.squeezed[name]
        out = f"{source}_h1_{name}"
        self.emit(ir.Unsqueeze(2), [name], out, None, self.grids[name], source)
        return out

    def from_2d(self, name4: str, node: fx.Node) -> None:
        """``node``'s 3-D output: ``squeeze(2)`` of the height-1 result ``name4``."""
        self.emit(ir.Squeeze(2), [name4], node.name, None, self.grids[name4], node.name)
        self.squeezed[node.name] = name4
        self.names[node] = node.name

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self.names[node] = node.name
            self.grids[node.name] = None
        elif node.op == "output":
            self.finish(node)
        elif node.op == "call_module":
            self.module(node, self.gm.get_submodule(node.target))
        elif node.op in ("call_function", "call_method"):
            self.function(node)
        elif node.op != "get_attr":
            self.unsupported.append(f"{node.name} ({node.op})")
        if node.op != "output" and node not in self.names:  # refused: keep walking to list every problem
            self.names[node] = node.name
            self.grids.setdefault(node.name, None)

    def alias(self, node: fx.Node) -> None:
        self.names[node] = self.arg(node)

    def module(self, node: fx.Node, m: nn.Module) -> None:
        if isinstance(m, ActQuantizer):
            self.quantize(node, m)
        elif isinstance(m, _Unified):
            self.layer(node, m)
        elif isinstance(m, QAvgPool):
            self.avgpool(node, m)
        elif isinstance(m, Lookup):
            self.table(node, m)
        elif isinstance(m, QRecurrent):
            self.recurrent_call(node, m)
        elif isinstance(m, QL2Normalize):
            self.l2normalize(node, m)
        elif isinstance(m, _SKIP_MODULES):
            self.alias(node)
        elif isinstance(m, nn.Flatten):
            self.simple(node, ir.Flatten(m.start_dim, m.end_dim))
        elif isinstance(m, nn.MaxPool2d):
            self.maxpool(node, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        elif isinstance(m, nn.MaxPool1d):
            self.maxpool1d(node, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        elif isinstance(m, QMagnitude):
            self.magnitude(node, m)
        elif isinstance(m, QLayerNorm):
            self.layernorm(node, m)
        elif isinstance(m, (nn.ZeroPad1d, nn.ZeroPad2d)):
            self.pad(node, list(m.padding))
        elif isinstance(m, _EDGE_PADS):
            self.pad(node, list(m.padding), "reflect" if isinstance(m, _REFLECT_PADS) else "replicate")
        else:
            self.unsupported.append(f"{node.target} ({type(m).__name__})")

    def function(self, node: fx.Node) -> None:
        t = node.target
        if node.op == "call_method" and t in _SKIP_METHODS or t is F.dropout:
            self.alias(node)
        elif t is torch.flatten or (node.op == "call_method" and t == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            self.simple(node, ir.Flatten(start, end))
        elif (node.op == "call_method" and t == "size" or t is getattr and node.args[1:] == ("shape",)
              or t is operator.getitem and self._is_size(node.args[0])):
            pass  # shape arithmetic for a flatten; consumed by _is_batch_flatten
        elif t is operator.getitem and (part := recurrent_part(self.gm, node)) is not None:
            self.recurrent(node, part)
        elif t is operator.getitem and isinstance(node.args[0], fx.Node):
            self.index(node)
        elif t is torch.permute or (node.op == "call_method" and t == "permute"):
            self.permute(node)
        elif t is torch.transpose or (node.op == "call_method" and t == "transpose"):
            self.transpose(node)
        elif t is torch.reshape or (node.op == "call_method" and t in ("view", "reshape")):
            self.reshape(node)
        elif t is torch.unsqueeze or (node.op == "call_method" and t == "unsqueeze"):
            self.unsqueeze(node)
        elif t is torch.squeeze or (node.op == "call_method" and t == "squeeze"):
            self.squeeze(node)
        elif node.op == "call_method" and t in ("new_zeros", "zero_") or t is torch.zeros:
            self.zero_state(node)
        elif t in (torch.cat, torch.concat):
            self.concat(node)
        elif t is F.max_pool2d:
            self.maxpool(node, *_pool_args(node))
        elif t is F.max_pool1d:
            self.maxpool1d(node, *_pool_args(node))
        elif t is F.pad:
            self.functional_pad(node)
        else:
            self.unsupported.append(l2_refusal(node) or f"{node.name} ({getattr(t, '__name__', t)})")

    def _rank(self, node: fx.Node) -> int:
        meta = node.meta.get("lowbit_shape")
        if meta is None:
            raise ConfigError("to_integer needs example_inputs to know tensor shapes")
        return len(meta)

    def index(self, node: fx.Node) -> None:
        """``x[:, None, a:b, ..., None]`` (slices of step 1, new axes and one ``...``, the batch kept): unsqueezes
        and slices (:meth:`_index_steps`)."""
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        steps = self._index_steps(node, idx)
        if steps is None:
            self.unsupported.append(f"{node.name} (indexing {idx!r}: only slices of step 1, None and ..., the batch "
                                    "kept whole)")
            return
        name = self.arg(node)
        for k, op in enumerate(steps):
            out = f"{node.name}_{k}" if k < len(steps) - 1 else node.name
            self.emit(op, [name], out, None, self.grids[name], node.name)
            name = out
        self.names[node] = name

    def _index_steps(self, node: fx.Node, idx: tuple) -> list[ir.IROp] | None:
        """The unsqueezes and slices ``x[idx]`` is, in order (an empty list: ``x`` itself), or None when it is
        something else (an integer index, a step, a tensor index, an empty slice, the batch indexed)."""
        shape = node.args[0].meta.get("lowbit_shape") if isinstance(node.args[0], fx.Node) else None
        if shape is None or sum(i is Ellipsis for i in idx) > 1:
            return None
        if not all(i is None or i is Ellipsis or isinstance(i, slice) for i in idx):
            return None
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            fill = len(shape) - sum(isinstance(i, slice) for i in idx)
            if fill < 0:
                return None
            idx = (*idx[:k], *[slice(None)] * fill, *idx[k + 1:])
        steps: list[ir.IROp] = []
        d_in = d_out = 0
        for i in idx:
            if i is None:
                if d_out == 0:
                    return None  # a new axis before the batch
                steps.append(ir.Unsqueeze(d_out))
                d_out += 1
                continue
            if d_in >= len(shape) or not all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                                             for v in (i.start, i.stop, i.step)):
                return None
            if d_in == 0 and not (i.start in (None, 0) and i.stop is None and i.step in (None, 1)):
                return None  # the batch (its recorded size is the example's, not every call's)
            start, stop, step = i.indices(shape[d_in])
            if (start, stop) != (0, shape[d_in]):
                if step != 1 or d_in == 0 or start >= stop:
                    return None
                steps.append(ir.Slice(d_out, start, stop))
            elif step != 1:
                return None
            d_in, d_out = d_in + 1, d_out + 1
        return steps

    def unsqueeze(self, node: fx.Node) -> None:
        d = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
        d = d + self._rank(node) if d < 0 else d
        if d < 1:
            self.unsupported.append(f"{node.name} (unsqueeze({d}) before the batch dimension)")
            return
        self.simple(node, ir.Unsqueeze(int(d)))

    def squeeze(self, node: fx.Node) -> None:
        """``x.squeeze(d)`` of a dimension after the batch (of size 1: the op refuses another size)."""
        d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if not isinstance(d, int):
            self.unsupported.append(f"{node.name} (squeeze without one dimension: give it, e.g. x.squeeze(-1))")
            return
        d = d + self._rank(node.args[0]) if d < 0 else d
        if d < 1:
            self.unsupported.append(f"{node.name} (squeeze({d}) of the batch dimension)")
            return
        self.simple(node, ir.Squeeze(int(d)))

    def permute(self, node: fx.Node) -> None:
        dims = node.args[1:] if node.op == "call_method" else node.args[1]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        rank = self._rank(node)
        dims = tuple(int(d) + rank if int(d) < 0 else int(d) for d in dims)
        if not dims or dims[0] != 0:
            self.unsupported.append(f"{node.name} (permute{dims} moves the batch dimension)")
            return
        self.simple(node, ir.Permute(dims))

    def transpose(self, node: fx.Node) -> None:
        """``x.transpose(a, b)`` as the permute that swaps the two (the batch dimension kept)."""
        a, b = (node.args[1:3] if len(node.args) >= 3 else (node.kwargs.get("dim0"), node.kwargs.get("dim1")))
        rank = self._rank(node)
        a, b = (int(d) + rank if int(d) < 0 else int(d) for d in (a, b))
        if 0 in (a, b):
            self.unsupported.append(f"{node.name} (transpose({a}, {b}) moves the batch dimension)")
            return
        dims = list(range(rank))
        dims[a], dims[b] = b, a
        self.simple(node, ir.Permute(tuple(dims)))

    def reshape(self, node: fx.Node) -> None:
        if node.op == "call_method" and self._is_batch_flatten(node):
            self.simple(node, ir.Flatten(1, -1))
            return
        x, y = node.args[0].meta.get("lowbit_shape"), node.meta.get("lowbit_shape")
        if x is None or y is None or y[0] != x[0] or math.prod(y[1:]) != math.prod(x[1:]):
            self.unsupported.append(f"{node.name} (a reshape from {x} to {y} that does not keep the batch dimension)")
            return
        self.simple(node, ir.Reshape(tuple(int(v) for v in y[1:])))

    def concat(self, node: fx.Node) -> None:
        """``torch.cat`` of quantized tensors, quantized next (through layout ops) onto one grid: each input on
        another grid is first mapped onto it by a table of 256 entries, ``Q(value of each code)``, which is what
        the simulation's quantizer computes element by element."""
        parts = node.args[0]
        if not isinstance(parts, (list, tuple)):  # torch.cat(layer(x)): the tuple a layer returned, one graph node
            self.unsupported.append(f"{node.name} (cat of {parts}, a tuple the model does not take apart: join its "
                                    "parts by name, e.g. h, c = cell(x, hx); torch.cat([h, c], dim=1))")
            return
        d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        d = d + self._rank(node) if d < 0 else d
        nxt = _next_quantizer(self.gm, node)
        names = [self.names[p] for p in parts]
        if d >= 1 and not isinstance(nxt, ActQuantizer):  # joined parts not quantized next (the network output, or
            # slices of it, as a step's (p, h, c) a stream takes apart): each dequantized, then joined in float
            self.emit(ir.Concat(int(d)), [self.dequantized(n, node.name, i) for i, n in enumerate(names)], node.name,
                      None, None, node.name)
            self.names[node] = node.name
            return
        if d < 1 or not isinstance(nxt, ActQuantizer) or any(self.grids[n] is None for n in names):
            self.unsupported.append(f"{node.name} (cat along dimension {d}: the integer concat joins quantized "
                                    "tensors along a dimension after the batch, with a quantizer after it)")
            return
        q2 = nxt.qparams()
        ins = []
        for i, n in enumerate(names):
            q = self.grids[n]
            if grid(q) != grid(q2):
                codes = (q2.codes(grid_values(q)) - offset(q2)).to(torch.int8).view(1, -1)
                self.emit(ir.Table(), [n], f"{node.name}_in{i}", {"table": codes}, q2, node.name)
                n = f"{node.name}_in{i}"
            ins.append(n)
        self.emit(ir.Concat(int(d)), ins, node.name, None, q2, node.name)
        self.names[node] = node.name

    def dequantized(self, name: str, source: str, i: int) -> str:
        """The float form of tensor ``name``: itself when float, else a ``dequantize`` of its codes."""
        q = self.grids[name]
        if q is None:
            return name
        out = f"{source}_dq{i}"
        self.emit(ir.Dequantize(float(q.scale), stored_zero_point(q)), [name], out, None, None, source)
        return out

    def table(self, node: fx.Node, m: Lookup) -> None:
        """A lookup table: int8 codes of the next quantizer's grid (which it reaches through max pools, zero pads
        and layout ops: the rounding is monotone, so they commute), or float32 values where no quantizer reads it
        next (the network output, a float join: its readers must take floats, or they refuse)."""
        src = self.arg(node)
        q = self.grids[src]
        if q is None or grid(q) != grid(m.grid):
            self.unsupported.append(f"{node.target} (a lookup table whose input is not on its grid)")
            return
        nxt = _next_quantizer(self.gm, node)
        if nxt is None and not all(_moves_floats(self.gm, u) for u in node.users):
            self.unsupported.append(f"{node.target} ({m.source}: its float output feeds an op other than a "
                                    "quantizer, the network output, or max pools, zero pads, layout ops, slices and "
                                    "joins on the way)")
            return
        if not isinstance(nxt, ActQuantizer):  # the float values (the network output, a float join, slices)
            self.emit(ir.Table(float_output=True), [src], node.name, {"table": m.table.clone()}, None, str(node.target))
        else:
            q2 = nxt.qparams()
            codes = (q2.codes(m.table) - offset(q2)).to(torch.int8)
            self.emit(ir.Table(), [src], node.name, {"table": codes}, q2, str(node.target))
        self.names[node] = node.name

    def _is_size(self, n) -> bool:
        return isinstance(n, fx.Node) and (n.op == "call_method" and n.target == "size"
                                           or n.target is getattr and n.args[1:] == ("shape",))

    def _is_batch_flatten(self, node: fx.Node) -> bool:
        shape = node.args[1:]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if len(shape) != 2 or shape[1] != -1:
            return False
        b = shape[0]
        return isinstance(b, fx.Node) and (
            (b.op == "call_method" and b.target == "size" and b.args[1:] == (0,))
            or (b.target is operator.getitem and self._is_size(b.args[0]) and b.args[1] == 0))

    def simple(self, node: fx.Node, op: ir.IROp) -> None:
        src = self.arg(node)
        self.emit(op, [src], node.name, None, self.grids[src], node.name)
        self.names[node] = node.name

    def maxpool(self, node: fx.Node, k, s, p, d, ceil: bool) -> None:
        self.simple(node, ir.MaxPool2d(_two(k), _two(s if s is not None else k), _two(p), _two(d), bool(ceil)))

    def maxpool1d(self, node: fx.Node, k, s, p, d, ceil: bool) -> None:
        """As the 2-D max pool of height 1."""
        src = self.as_2d(self.arg(node), node.name)
        op = ir.MaxPool2d(_row(k, 1), _row(s if s is not None else k, 1), _row(p, 0), _row(d, 1), bool(ceil))
        self.emit(op, [src], f"{node.name}_2d", None, self.grids[src], node.name)
        self.from_2d(f"{node.name}_2d", node)

    def functional_pad(self, node: fx.Node) -> None:
        """``F.pad(x, pad, mode, value)``: constant 0.0 (the zero point's code), reflect or replicate."""
        a = list(node.args) + [None] * 3
        pad = a[1] if a[1] is not None else node.kwargs["pad"]
        mode = a[2] if a[2] is not None else node.kwargs.get("mode", "constant")
        value = a[3] if a[3] is not None else node.kwargs.get("value", None)
        if mode not in ir.PAD_MODES or (mode == "constant" and value):
            self.unsupported.append(f"{node.name} (F.pad mode={mode!r}, value={value!r}: the integer pad is constant "
                                    f"0.0, reflect or replicate)")
            return
        self.pad(node, list(pad), mode)

    def pad(self, node: fx.Node, pad: list[int], mode: str = "constant") -> None:
        q = self.grids[self.arg(node)]
        if any(int(v) < 0 for v in pad):
            self.unsupported.append(f"{node.name} (padding {pad}: negative padding crops; the integer pad adds)")
            return
        self.simple(node, ir.Pad(tuple(int(v) for v in pad), 0 if q is None else stored_zero_point(q), mode))

    def quantize(self, node: fx.Node, m: ActQuantizer) -> None:
        src = self.arg(node)
        q = m.qparams()
        if self.grids[src] is not None and grid(self.grids[src]) == grid(q):
            self.alias(node)  # a table already gave this grid's codes
            return
        if self.grids[src] is not None:
            self.unsupported.append(f"{node.target} re-quantizes an integer tensor")
            return
        width = self.quantize_width(node, q)
        off = offset(q, width)
        op = ir.Quantize(float(q.scale), stored_zero_point(q, width), q.fmt.qmin - off, q.fmt.qmax - off, width)
        self.emit(op, [src], node.name, None, q, node.name)
        self.names[node] = node.name

    def quantize_width(self, node: fx.Node, q: QParams) -> int:
        """8 (int8 codes), or 16 for a 16-bit grid read only by recurrent layers (their int16 input,
        :mod:`lowbit.nn.recurrent`); any other grid over 8 bits raises :func:`offset`'s ConfigError."""
        users = [module_of(self.gm, u) for u in node.users]
        if q.fmt.bits > 8 and users and all(isinstance(m, QRecurrent) and m.q is not None for m in users):
            return input_width(q, str(node.target))  # 16 (QRecurrent.freeze refused the others)
        return 8

    def layer(self, node: fx.Node, m: _Unified) -> None:
        if per_feature(m) and (why := self._per_feature_refusal(node, m)) is not None:
            self.unsupported.append(f"{node.target} has one output scale per feature, for the LayerNorm that reads "
                                    f"it (PTQConfig.ln_inputs_per_feature; {why})")
            return
        if not m.exact:
            self.unsupported.append(f"{node.target} is not a converted quantized layer (kept float, or its "
                                    "input is not quantized)")
            return
        ins = [self.names[a] for a in node.args if isinstance(a, fx.Node)]
        p = layer_params(m)
        if any(self.grids[i] is None for i in ins[:1]):
            self.unsupported.append(f"{node.target} receives a float tensor")
            return
        fmt = m.weight_quant.spec.format
        tnt = m.weight_quant.spec.tnt  # TNT's codes {-m-, 0, +m+} are int8, not ternary
        codes = (ir.WeightCodes.INT if isinstance(fmt, IntFormat) or tnt  # the others: packed at their width
                 else ir.WeightCodes.BINARY if isinstance(fmt, Binary)
                 else ir.WeightCodes.TERNARY if m.weight_quant.ternary else ir.WeightCodes.POW2)
        tensors = {"weight": p.weight.to(torch.int8), "bias": p.bias.to(torch.int32)}
        rz = None if p.residual is None else stored_zero_point(p.residual)
        out: ir.OutputStage
        if p.binarized:
            out = ir.Binarized()
        elif p.output is None:
            tensors["acc_scale"] = p.acc_scale
            act, lo, hi = _float_act(m.act)  # a residual is added in float, as the simulation does
            out = ir.Dequantized(act, lo, hi, None if p.residual is None else float(p.residual.scale), rz)
        else:
            off = offset(p.output)
            if isinstance(p.output, ChannelQParams):  # a zero point per feature; the node's grid is nominal
                out = ir.Requantized(0, p.lo - off, p.hi - off, rz)
                tensors["zp"] = (p.output.zero_point - off).to(torch.int32)
            else:
                out = ir.Requantized(stored_zero_point(p.output), p.lo - off, p.hi - off, rz)
            tensors.update(m=p.m, n=p.n)
            if p.residual is not None:
                tensors["m2"] = p.m2
        if p.weight.min() < -128 or p.weight.max() > 127:
            raise ConfigError(f"{node.target}: weights wider than 8 bits do not fit the int8 kernels")
        izp = stored_zero_point(p.input)
        in_bits = p.input.fmt.bits
        one_d = isinstance(m, UnifiedConv) and m.ndim == 1
        if isinstance(m, UnifiedConv):
            if isinstance(m.padding, str):
                self.unsupported.append(f"{node.target} (padding={m.padding!r} is asymmetric here: the integer convs "
                                        "pad both sides alike; use numeric padding)")
                return
            pad = None
            if m.pad_value != 0.0 and any(_two(m.padding)):
                if m.groups != 1:
                    self.unsupported.append(f"{node.target} (a grouped conv of a binary input padded with -1 has no integer kernel: "
                                            "use groups=1 or padding=0 for it)")
                    return
                pad = int(p.input.codes(torch.tensor(m.pad_value))) - offset(p.input)
            geometry = ((_row(m.stride, 1), _row(m.padding, 0), _row(m.dilation, 1)) if one_d
                        else (_two(m.stride), _two(m.padding), _two(m.dilation)))
            op: ir.IROp = ir.Conv2d(izp, m.weight_quant.spec.code_bits, out, *geometry, m.groups, codes, in_bits,
                                    pad, bool(p.input.fmt.signed))
        else:
            op = ir.Linear(izp, m.weight_quant.spec.code_bits, out, codes, in_bits, bool(p.input.fmt.signed))
        if codes is ir.WeightCodes.BINARY and in_bits == 1 and not op.xnor:
            warnings.warn(f"lowbit: {node.target} (binary, groups={op.groups}) runs on the int8 kernels, not the "
                          "XNOR-popcount kernel (dense convolutions only): same integers, int8 speed", stacklevel=3)
        if one_d:  # the 2-D conv of height 1: weights (O, C/g, 1, k), inputs unsqueezed, output squeezed
            tensors["weight"] = tensors["weight"].unsqueeze(2)
            self.emit(op, [self.as_2d(i, node.name) for i in ins], f"{node.name}_2d", tensors, p.output,
                      str(node.target))
            self.from_2d(f"{node.name}_2d", node)
            return
        if isinstance(p.output, ChannelQParams):
            self.emit(op, ins, node.name, tensors, _nominal(p.output), str(node.target))
            self.channel[node.name] = p.output
        else:
            self.emit(op, ins, node.name, tensors, p.output, str(node.target))
        self.names[node] = node.name

    def _per_feature_refusal(self, node: fx.Node, m: _Unified) -> str | None:
        """Why a layer with one output grid per feature cannot lower (None: it can): it must be a linear layer without
        an activation whose every reader is an integer LayerNorm (frozen)."""
        if not channel_output(m):
            return "only a linear layer without an activation, on at most 8 bits, lowers with a grid per feature"
        for u in node.users:
            r = module_of(self.gm, u)
            if not isinstance(r, QLayerNorm):
                return f"{u.name} reads it, and only an integer LayerNorm reads a grid per feature"
            if not r.frozen:
                return f"the LayerNorm {r.source} that reads it stays float: {r.why}"
        return None

    def layernorm(self, node: fx.Node, m: QLayerNorm) -> None:
        """A LayerNorm frozen for its input's grid (per feature or per tensor) and its reader's: a ``layernorm``
        op whose int8 output lies on the reader's grid (the quantizer then aliases it)."""
        if not m.frozen:
            self.unsupported.append(f"{node.target} (the LayerNorm {m.source} stays float: {m.why})")
            return
        src = self.arg(node)
        q = self.channel.get(src) or self.grids[src]
        grid_in = None if q is None else ChannelQParams.of(q, m.features)
        if grid_in is None or not grid_in.same(m.input_qparams):
            self.unsupported.append(f"{node.target} (the LayerNorm {m.source}: its input is not on the 8-bit grid it "
                                    "was frozen for)")
            return
        o, p = m.output_qparams, m.params
        off, off_in = offset(o), offset(grid_in)
        op = ir.LayerNorm(stored_zero_point(o), o.fmt.qmin - off, o.fmt.qmax - off, p.shift, p.eps)
        tensors = {"zero_points": (grid_in.zero_point - off_in).to(torch.int32), "multipliers": p.multipliers,
                   "gamma": p.gamma, "beta": p.beta}
        self.emit(op, [src], node.name, tensors, o, m.source)
        self.names[node] = node.name

    def recurrent_call(self, node: fx.Node, m: QRecurrent) -> None:
        """An LSTM / GRU call: nothing is emitted until a ``getitem`` reads a tensor of its result
        (:meth:`recurrent`); its input must lie on the grid the layer was quantized for."""
        src = self.names.get(node.args[0]) if node.args else None
        q = self.grids.get(src)
        if m.q is None or q is None or grid(q) != grid(m.input_qparams):
            self.unsupported.append(f"{node.target} (an LSTM/GRU not converted, or whose input is not on its grid)")
        self.names[node] = node.name
        self.grids[node.name] = None  # a tuple: no tensor of its own
        if m.is_cell and m.cell == "gru":  # a GRUCell's result is h' itself
            self.recurrent(node, Part(node, m, "h", 0))

    def zero_state(self, node: fx.Node) -> None:
        """``x.new_zeros(...)`` read only as a cell's initial state: the cell's zero state (no input), not a tensor."""
        reads = [u for u in node.users if isinstance(module_of(self.gm, u), QRecurrent) and u.args[0] is not node]
        if reads and len(reads) == len(node.users):
            self.zeros.add(node)
        else:
            self.unsupported.append(f"{node.name} ({node.target}: the integer model takes a zero tensor only as a "
                                    "cell's initial state)")

    def cell_state(self, call: fx.Node, m: QRecurrent) -> list[str]:
        """The state inputs of a cell call (``h`` on ``2^-7`` as int8 codes, an LSTM's ``c`` in Q.11 as int16 codes):
        a float state is quantized onto its fixed grid, as the simulation does (:func:`lowbit.nn.recurrent.h_codes`,
        ``c_codes``); a state already on that grid is read as it is. Empty for a call without a state."""
        hx = call.args[1] if len(call.args) > 1 else call.kwargs.get("hx")
        if hx is None:
            return []
        parts = list(hx) if m.cell == "lstm" else [hx]
        zeros = [p in self.zeros for p in parts]
        if all(zeros):
            return []  # the op's own zero state
        if any(zeros):
            self.unsupported.append(f"{call.target} (one part of its state is a zero tensor and the other is not: give "
                                    "both, or neither)")
            return []
        names = []
        for part, (what, q, quantize) in zip(parts, _STATE_GRIDS):
            name = self.names[part]
            if self.grids[name] is None:
                out = f"{call.name}_{what}_codes"
                if out not in self.grids:
                    self.emit(quantize, [name], out, None, q, str(call.target))
                name = out
            elif grid(self.grids[name]) != grid(q):
                self.unsupported.append(f"{call.target} (its state {part.name} is on another grid than the cell's)")
            names.append(name)
        return names

    def recurrent(self, node: fx.Node, part: Part) -> None:
        """A tensor of a recurrent layer's result: ``output``, one layer's ``h_n[k]`` / ``c_n[k]``, ``output[:, -1]``
        become a ``recurrent`` op (one per distinct tensor read); the tuple, ``(h_n, c_n)``, and the stacked states
        (L, N, H), whose batch is not their first dimension, only pass the chain on to a later ``getitem``."""
        self.names[node] = node.name
        self.grids[node.name] = None
        if not node.users:
            return
        what = {"output": ir.Emit.OUTPUT, "h": ir.Emit.H, "c": ir.Emit.C}.get(part.what)
        if what is None:
            if any(recurrent_part(self.gm, u) is None for u in node.users):
                self.unsupported.append(f"{node.name} (the {part.what} of {part.node.target}: the integer model reads "
                                        "output, one layer's state h_n[k] / c_n[k], or output[:, -1])")
            return
        m, key = part.module, (part.node, what, part.layer)
        if m.q is None:  # not converted: recurrent_call has said so
            return
        layer = getattr(m.layer, "num_layers", 1) - 1 if part.layer is None else part.layer
        if key not in self.recurrent_ops:
            tensors = {name: t for k, lq in enumerate(m.q.layers) for name, t in lq.tensors(k).items()
                       if int(name.rsplit("_", 1)[1]) <= layer}
            tensors.update(sigmoid=m.q.sigmoid, tanh=m.q.tanh)
            op = ir.Recurrent(ir.Cell(m.cell), layer + 1, m.q.batch_first, m.q.input_zero_point, what, m.q.input_bits,
                              m.is_cell)
            state = self.cell_state(part.node, m) if m.is_cell else []
            self.emit(op, [self.names[part.node.args[0]], *state], node.name, tensors,
                      None if what is ir.Emit.C else H_QPARAMS, str(part.node.target))
            self.recurrent_ops[key] = node.name
        self.names[node] = self.recurrent_ops[key]

    def l2normalize(self, node: fx.Node, m: QL2Normalize) -> None:
        """An L2 normalisation on the 8-bit grid it was frozen for: an ``l2normalize`` op, output on ``2^-7``."""
        src = self.arg(node)
        q = self.grids[src]
        rank = self._rank(node)
        d = m.dim + rank if m.dim < 0 else m.dim
        if q is None or not m.frozen or q.fmt.bits > 8 or grid(q) != grid(m.input_qparams):
            self.unsupported.append(f"{node.target} (the L2 normalisation {m.source}: its input is not on the 8-bit "
                                    "grid it was frozen for)")
        elif not 1 <= d < rank:
            self.unsupported.append(f"{node.target} (the L2 normalisation {m.source} is over dimension {m.dim} of a "
                                    f"{rank}-D tensor: the integer op normalises along one dimension after the batch)")
        else:
            self.emit(ir.L2Normalize(d, stored_zero_point(q)), [src], node.name, None, UNIT_QPARAMS, m.source)
            self.names[node] = node.name

    def magnitude(self, node: fx.Node, m: QMagnitude) -> None:
        """``sqrt(a^2 + b^2)`` frozen for its inputs' grid and the grid of the quantizer that reads it: a
        ``magnitude`` op whose int8 output lies on that grid (the quantizer then aliases it)."""
        ins = [self.names[a] for a in node.args[:2]]
        grids = [self.grids[i] for i in ins]
        if not m.frozen:
            self.unsupported.append(f"{node.target} (the magnitude {m.source} stays float: {m.why})")
            return
        q, o = m.input_qparams, m.output_qparams
        if any(g is None or grid(g) != grid(q) for g in grids):
            self.unsupported.append(f"{node.target} (the magnitude {m.source}: its inputs are not on the 8-bit grid it "
                                    "was frozen for)")
            return
        off = offset(o)
        op = ir.Magnitude(stored_zero_point(q), stored_zero_point(o), o.fmt.qmin - off, o.fmt.qmax - off, m.m, m.n)
        self.emit(op, ins, node.name, None, o, m.source)
        self.names[node] = node.name

    def avgpool(self, node: fx.Node, m: QAvgPool) -> None:
        if not m.exact:
            self.unsupported.append(f"{node.target} (average pool on a float input)")
            return
        src = self.arg(node)
        pool = m.pool
        if not isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AvgPool1d)):
            self.unsupported.append(f"{node.target} ({type(pool).__name__})")
            return
        probe = torch.zeros(1, 1, *self._spatial(node))
        try:
            window, mm, n = pool_params(m, probe)
        except TypeError as exc:
            self.unsupported.append(f"{node.target}: {exc}")
            return
        inp, out = m.input_qparams, m.output_qparams
        one_d = isinstance(pool, (nn.AdaptiveAvgPool1d, nn.AvgPool1d))
        size = _row if one_d else (lambda v, first: _two(v))
        k = None if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d)) else size(pool.kernel_size, 1)
        op = ir.AvgPool2d(k, None if k is None else size(pool.stride or pool.kernel_size, 1), int(window),
                          stored_zero_point(inp), stored_zero_point(out), out.fmt.qmin - offset(out),
                          out.fmt.qmax - offset(out))
        if one_d:  # the 2-D pool of height 1
            self.emit(op, [self.as_2d(src, node.name)], f"{node.name}_2d", {"m": mm, "n": n}, out, str(node.target))
            self.from_2d(f"{node.name}_2d", node)
            return
        self.emit(op, [src], node.name, {"m": mm, "n": n}, out, str(node.target))
        self.names[node] = node.name

    def _spatial(self, node: fx.Node) -> tuple[int, int]:
        meta = node.args[0].meta.get("lowbit_shape")
        if meta is None:
            raise ConfigError("to_integer needs example_inputs to know pooling window sizes")
        return tuple(meta[2:])

    def finish(self, node: fx.Node) -> None:
        out = node.args[0]
        if not isinstance(out, fx.Node):
            self.unsupported.append("the model must return a single tensor")
            return
        name = self.names[out]
        q = self.grids[name]
        if q is not None:
            self.emit(ir.Dequantize(float(q.scale), stored_zero_point(q)), [name], "output", None, None, "output")
            name = "output"
        self.output = name




def _moves_floats(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``node`` only moves values (the output, a join, a slice, a layout op): it takes a float tensor as it is."""
    return (node.op == "output" or node.target in (torch.cat, torch.concat, operator.getitem, *LAYOUT_FUNCTIONS)
            or is_passthrough(gm, node))


def _next_quantizer(gm: fx.GraphModule, node: fx.Node) -> ActQuantizer | str | None:
    """The quantizer ``node``'s one chain of users reaches through ops that keep a grid
    (:func:`lowbit.graph.nodes.chain_end`, and a ``cat`` it is joined by), ``"output"`` when the chain ends the
    network, else None."""
    end = chain_end(gm, node)
    if end is None:
        return None
    if end.op == "output":
        return "output"
    m = module_of(gm, end)
    if isinstance(m, ActQuantizer):
        return m if m.mode == "quantize" and tabulable(m) else None
    if end.op == "call_function" and end.target in (torch.cat, torch.concat):  # the grid the join goes to
        return _next_quantizer(gm, end)
    return None


# a cell's state: h as int8 codes on 2^-7, an LSTM's c as int16 codes in Q.11 (lowbit.nn.recurrent.h_codes, c_codes)
_STATE_GRIDS = (("h", H_QPARAMS, ir.Quantize(float(H_QPARAMS.scale), 0, -H_MAX, H_MAX, 8)),
                ("c", C_QPARAMS, ir.Quantize(float(C_QPARAMS.scale), 0, -PART_MAX - 1, PART_MAX, 16)))


def _nominal(q: ChannelQParams) -> QParams:
    """The node grid of a tensor on one grid per feature: the largest scale, stored zero point 0 (nominal: its
    readers, integer LayerNorms, hold the real grid)."""
    return QParams(float(q.scale.max()), offset(q), q.fmt)


def _pool_args(node: fx.Node) -> tuple:
    """``(kernel, stride, padding, dilation, ceil_mode)`` of an ``F.max_pool1d/2d`` call, from args or keywords."""
    a = list(node.args[1:]) + [None] * 5
    kw = node.kwargs
    k = a[0] if a[0] is not None else kw["kernel_size"]
    return (k, a[1] or kw.get("stride") or k, a[2] or kw.get("padding", 0), a[3] or kw.get("dilation", 1),
            bool(a[4] or kw.get("ceil_mode", False)))


def _row(v, first: int) -> tuple[int, int]:
    """A 1-D size, stride, padding or dilation as the 2-D pair of a height-1 op: ``(first, v)``."""
    return first, int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _without_dead_squeezes(nodes: list[Node], output: str) -> list[Node]:
    """Drop the squeezes no node reads (a height-1 tensor that went on to another height-1 op)."""
    read = {i for n in nodes for i in n.inputs} | {output}
    return [n for n in nodes if not (isinstance(n.op.ir, ir.Squeeze) and n.output not in read)]


def _two(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _float_act(act: nn.Module) -> tuple[ir.Act, float | None, float | None]:
    if isinstance(act, nn.ReLU):
        return ir.Act.RELU, None, None
    if isinstance(act, nn.Hardtanh):
        return ir.Act.HARDTANH, float(act.min_val), float(act.max_val)
    return ir.Act.NONE, None, None


def _record_shapes(gm: fx.GraphModule, examples: tuple[torch.Tensor, ...]) -> None:
    class Shapes(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                n.meta["lowbit_shape"] = tuple(out.shape)
            return out

    with torch.no_grad():
        Shapes(gm).run(*examples)


def _examples(gm: fx.GraphModule, example_inputs: object) -> tuple[torch.Tensor, ...]:
    """One example tensor per input of the traced model (``forward``'s order); a ConfigError naming the inputs
    when the count differs or an example is not a tensor."""
    names = [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]
    examples = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if len(examples) != len(names) or not all(isinstance(x, torch.Tensor) for x in examples):
        got = ", ".join(type(x).__name__ for x in examples)
        raise ConfigError(f"to_integer: the model takes {len(names)} input{'s' if len(names) != 1 else ''} "
                          f"({', '.join(names)}); example_inputs must be a tuple of as many tensors, in that order, "
                          f"got ({got})")
    return examples


def to_integer(model: nn.Module, example_inputs: tuple) -> IntegerModel:
    """The integer-only form of a model returned by :func:`lowbit.ptq.convert` / :func:`lowbit.quantize`.

    ``example_inputs``: one tensor per input of the model's ``forward``, in order (a tuple; a bare tensor for a
    model of one input). The integer model takes the same inputs and records each one's per-sample shape and
    dtype; an input the quantized graph does not read is kept (accepted, checked, ignored)."""
    record = record_of(model)
    if not isinstance(model, fx.GraphModule) or record is None or not record.traced:
        raise ConfigError("to_integer needs a model from lowbit.quantize / ptq.convert that torch.fx traced "
                          "(the eager fallback has no graph to lower)")
    model.eval()
    examples = _examples(model, example_inputs)
    check_input(model, examples[0])  # the shape the model was prepared for (ShapeError naming it)
    _record_shapes(model, examples)
    im = _Lowering(model).run(examples)
    try:  # the checks a loaded model file passes (lowbit.integer.validate), on what was lowered
        specs = [validate.input_spec(list(i.shape), validate.dtype_name(i.dtype)) for i in im.inputs]
        validate.check_model(validate.views(im.nodes), im.input_names, im.output_name, specs)
    except validate.Invalid as exc:
        raise ConfigError(f"cannot lower to integers: {exc}") from None
    return im


__all__ = ["to_integer"]

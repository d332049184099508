"""Per-op cost of an :class:`~lowbit.integer.model.IntegerModel`, read off the model itself.

The cost backend of the integer IR: :data:`COSTS` holds, per op type of :mod:`lowbit.integer.ir`,
a function of the op and the per-sample shapes of its input and output. For a conv or linear op
with ``K`` multiply-accumulates per output element and ``E`` output elements per sample (as in
:mod:`lowbit.cost.profile`):

    MACs = E * K;  BOPs = MACs * b_w * b_x   (b_x: the op's ``input_bits``, 8 for int8 activations, 1 for
                                               signs: a binary layer's BOPs are its MACs, 1x1 bits)
    weight bytes = the op's tensors as the file stores them (weights at ``weight_bits``, ternary
    at 2 bits; int32 bias and per-channel multipliers)

Pools count window additions as accumulations of 1-bit weights; quantize, dequantize and
requantizing layers one requantization per output element; flatten, pad and slice move bytes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from lowbit.integer import ir, validate
from lowbit.integer.model import IntegerModel, Node

ACT_BITS = 8  # every tensor between the ops is int8 (but the int16 input codes of a recurrent op)


@dataclass(frozen=True)
class OpCost:
    """One op's cost per sample."""

    name: str
    kind: str
    macs: int
    bops: int
    weight_bytes: float
    out_bytes: float
    requant_ops: int

    def to_dict(self) -> dict:
        return asdict(self)


Shape = tuple[int, ...]


def _weight_bytes(node: Node) -> float:
    """Weights at their stored width (ternary 2 bits, others ``weight_bits``), other tensors at their dtype."""
    total = 0.0
    for name, t in node.op.tensors.items():
        if name == "weight":
            op = node.op.ir
            bits = 2 if op.weight_codes is ir.WeightCodes.TERNARY else op.weight_bits
            total += t.numel() * bits / 8
        else:
            total += t.numel() * t.element_size()
    return total


def _layer(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    """(MACs, BOPs, requantizations) of a linear or conv op."""
    op, w = node.op.ir, node.op.tensors["weight"]
    k = math.prod(w.shape[1:])  # C_in/groups * kh * kw, or in_features
    macs = math.prod(y) * k
    requant = math.prod(y) if isinstance(op.out, ir.Requantized) else 0
    return macs, macs * op.weight_bits * op.input_bits, requant


def _pool(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    adds = math.prod(y) * node.op.ir.window
    return adds, adds * ACT_BITS, math.prod(y)


def _edge(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    return 0, 0, math.prod(y)  # one (de)quantization per element


def _move(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    return 0, 0, 0


def _maxpool(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    kh, kw = node.op.ir.kernel_size
    return 0, math.prod(y) * kh * kw * ACT_BITS, 0  # comparisons, priced as bit-operations


def _recurrent(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    """Per leading index (a sequence, or a step when not ``batch_first``): every step of every layer multiplies
    its input and its ``h`` by the gate rows, ``G H (I_k + H)`` MACs, and requantizes both projections. The BOPs are
    8 x 8 per MAC, but 8 x 16 for layer 0's input projection on int16 codes (``input_bits`` 16)."""
    t = node.op.tensors
    rows = math.prod(x[:-1])  # steps of one sequence, or sequences of one step
    macs = rows * sum(t[f"w_ih_{k}"].numel() + t[f"w_hh_{k}"].numel() for k in range(node.op.ir.num_layers))
    requant = rows * sum(2 * t[f"w_ih_{k}"].shape[0] for k in range(node.op.ir.num_layers))
    wide = rows * t["w_ih_0"].numel() * ACT_BITS * (node.op.ir.input_bits - ACT_BITS)  # the extra input bits
    return macs, macs * ACT_BITS * ACT_BITS + wide, requant


def _l2normalize(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    """A square per element summed along ``dim`` (8-bit x 8-bit MACs), then per element one integer division and
    a 9-step integer square root, priced as one requantization."""
    e = math.prod(y)
    return e, e * ACT_BITS * ACT_BITS, e


def _magnitude(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    """Per output element two squares of centred codes (9-bit x 9-bit MACs, ``x^2 + y^2``) and one multiply of the
    17-bit sum by the 32-bit ``4 m^2``; the integer square root and the rounding shift priced as one
    requantization."""
    e = math.prod(y)
    return 3 * e, e * (2 * 9 * 9 + 17 * 32), e


def _layernorm(node: Node, x: Shape, y: Shape) -> tuple[int, int, int]:
    """Per element three multiplies (9-bit codes by 16-bit multipliers, the 24-bit deviation squared, and by the
    32-bit gamma, plus beta by the 27-bit root) and one rounding division, priced as one requantization; the
    per-row integer square root is negligible beside ``C`` elements."""
    e = math.prod(y)
    return 4 * e, e * (9 * 16 + 24 * 24 + 24 * 32 + 27 * 32), e


# this backend's table: (MACs, BOPs, requantizations) per sample of each op type
COSTS: dict[type, Callable[[Node, Shape, Shape], tuple[int, int, int]]] = {
    ir.Quantize: _edge, ir.Dequantize: _edge, ir.Linear: _layer, ir.Conv2d: _layer, ir.MaxPool2d: _maxpool,
    ir.AvgPool2d: _pool, ir.Flatten: _move, ir.Pad: _move, ir.Unsqueeze: _move, ir.Squeeze: _move,
    ir.Permute: _move, ir.Reshape: _move, ir.Concat: _move, ir.Table: _edge,  # a lookup per element, priced as a requantization
    ir.Recurrent: _recurrent, ir.L2Normalize: _l2normalize, ir.Slice: _move, ir.Magnitude: _magnitude,
    ir.LayerNorm: _layernorm,
}


def profile_integer(model: IntegerModel, input_shape: Shape | Sequence[Shape] | None = None) -> list[OpCost]:
    """Per-op costs for one sample of ``input_shape`` (default: the shape the model was built for); for a model
    of several inputs, a sequence of per-sample shapes, one per input in call order."""
    from lowbit.errors import ConfigError

    n = len(model.inputs)
    if input_shape is None:
        shapes = model.input_shapes
    elif n == 1:
        shapes = [tuple(input_shape)]
    elif not isinstance(input_shape, (tuple, list)) or len(input_shape) != n \
            or not all(isinstance(s, (tuple, list)) for s in input_shape):
        raise ConfigError(f"profile_integer: the model takes {n} inputs ({', '.join(model.input_names)}); "
                          f"input_shape must be a tuple of {n} per-sample shapes, got {input_shape!r:.80}")
    else:
        shapes = [tuple(s) for s in input_shape]
    if any(s is None for s in shapes):
        raise ConfigError("profile_integer needs the input's per-sample shape: the model has none recorded, "
                          "pass input_shape=(C, H, W)")
    f32 = validate.INPUT_DTYPES["float32"]
    specs = [validate.Spec(tuple(s), d or f32) for s, d in zip(shapes, model.input_dtypes)]
    env = validate.specs(validate.views(model.nodes), model.input_names, specs)
    rows = []
    for node in model.nodes:
        x, y = env[node.inputs[0]].shape, env[node.output].shape
        macs, bops, requant = COSTS[type(node.op.ir)](node, x, y)
        binary_out = isinstance(getattr(node.op.ir, "out", None), ir.Binarized)
        dtype = env[node.output].dtype
        out_bits = 32 if dtype.is_floating_point else 1 if binary_out else 16 if dtype == torch.int16 else ACT_BITS
        w_bytes = _weight_bytes(node) if isinstance(node.op.ir, (*ir.LAYERS, ir.Recurrent)) else 0.0
        rows.append(OpCost(node.output, node.kind, macs, bops, w_bytes, math.prod(y) * out_bits / 8, requant))
    return rows


__all__ = ["COSTS", "OpCost", "profile_integer"]

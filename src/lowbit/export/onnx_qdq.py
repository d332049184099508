"""Write an :class:`~lowbit.integer.model.IntegerModel` as a standard QDQ ONNX graph.

Every int8 tensor of the integer model becomes a ``QuantizeLinear`` output
(uint8 for an unsigned grid, whose zero point is the stored one + 128, as
onnxruntime's x86 kernels want; int8 for a signed grid) followed by one
``DequantizeLinear``. Every layer reads ``DequantizeLinear`` outputs of its int8
weights (per output channel, zero point 0; from opset 21, weights of 4 bits or fewer are INT4
initializers, half the bytes - onnxruntime then runs that layer as a float convolution) and of its int32 bias (on the
accumulator grid ``s_x s_w``, zero point 0), so a runtime that understands QDQ
fuses ``DQ -> Conv -> Q`` into an integer convolution (onnxruntime:
``QLinearConv``, ``QGemm``, ``QLinearGlobalAveragePool``) on the very integers
of the integer model:

* ``linear`` -> ``Gemm(transB=1)`` (``MatMul`` + ``Add`` for inputs of rank > 2),
  ``conv2d`` -> ``Conv``. A layer with a residual summand is written as
  :class:`Residual` says:

  - ``Residual.EXACT`` (default): an ``Add`` of the residual's dequantized
    value before the output ``QuantizeLinear``, so the sum is rounded once, as
    lowbit's ``(acc m + r m2) / 2^n`` is. onnxruntime has no integer
    convolution with a summand (``DQ -> Conv -> Add -> Q`` runs as a float
    convolution), so such a convolution is a ``Gemm`` on NHWC rows, which
    onnxruntime runs as ``QGemm`` with a float output (the exact int32
    accumulator times one float32 scale) before the ``Add``: the rows are the
    input's pixels for a 1x1, stride-1 convolution (the projections of
    EfficientNet and MobileNet blocks) and its im2col patches otherwise (the 3x3
    convolutions closing ResNet blocks: a ``Pad`` of the codes with their zero
    point, one strided ``Slice`` per kernel tap and a ``Concat``, all on the
    uint8 codes, then one ``DequantizeLinear``). Only a grouped convolution
    with a residual still runs as a float convolution (``FusedConv``) whose
    outputs are quantized on the integer model's grid. The im2col copies cost:
    onnxruntime runs the exported ResNet about 1.6x slower than its own
    ``quantize_static`` model (``benchmarks/results/integer_latency.md``);
  - ``Residual.REQUANTIZE``: ``DQ -> Conv -> Q`` onto a pre-add grid
    (:func:`_pre_add_grid`) then ``DQ -> Add -> Q``, which onnxruntime fuses
    into ``QLinearConv`` and ``QLinearAdd``, as in its own ``quantize_static``
    models: as fast as those, but rounded twice, so an output code can differ
    from the integer model's by about one;
* the requantization multiplier ``M = m / 2^n`` (24 bits: a float32) is carried
  by the weight scales: ``s_w[c]`` is the float32 near ``M[c] s_y / s_x`` for
  which onnxruntime's own multiplier ``float32(float32(s_x s_w[c]) / s_y)`` is
  closest to ``M[c]`` (:func:`fit_weight_scales`: equal for about 4 channels in
  5, one float32 ulp off for the rest); a dequantizing output layer gets
  ``float32(s_x s_w[c])`` closest to ``acc_scale[c]``. onnxruntime requantizes
  in float32 (``float32(acc) * M``, rounded half to even), which differs from
  the integer ``rshift_round(acc m, n)`` only within about ``2^-24 |q|`` of a
  half: about one code in a million;
* saturation bounds ``lo``/``hi`` narrower than the 8-bit range (a ReLU whose
  output grid has its zero point above the minimum code, ReLU6 below the grid's
  top, activations of fewer than 8 bits) become a ``Relu``/``Clip`` on the
  dequantized output and a second ``QuantizeLinear`` on the same grid: for a
  monotone rounding ``Q(clip(v, (lo - z) s, (hi - z) s)) = clamp(Q(v), lo, hi)``,
  and the layer's own ``DQ -> Conv -> Q`` stays fusable (a ``Relu``/``Clip``
  between ``Conv`` and ``Q`` would keep the convolution in float);
* ``unsqueeze`` and ``squeeze`` (a 1-D conv or pool runs as the 2-D op of height 1 between them) are
  ``Unsqueeze``/``Squeeze`` between a ``DequantizeLinear`` and a ``QuantizeLinear`` on the same grid;
* ``permute`` is ``Transpose(perm=dims)`` and ``reshape`` is ``Reshape`` to ``[0, *shape]`` (``0`` copies the
  batch), between a ``DequantizeLinear`` and a ``QuantizeLinear`` on the same grid (exact: onnxruntime moves
  the codes); on a float tensor, the bare ``Transpose``/``Reshape``;
* ``concat`` (its inputs on the output's grid) is a ``Concat`` of their ``DequantizeLinear`` outputs, then
  that grid's ``QuantizeLinear``: exact;
* ``table`` is a ``Gather(axis=0)`` from the flattened ``(C * 256,)`` table at the input's codes (the
  ``QuantizeLinear`` output): ``Cast`` to int64, then an ``Add`` of ``code - qmin`` (128 for an int8 code,
  nothing for a uint8 one, which already is the stored code + 128) and, for a per-channel table, ``256 c``
  (an int64 constant of shape ``(1, C, 1, ...)``). A float table gathers the float32 output itself; a table
  of codes holds them as the output grid's ONNX codes (uint8 = stored + 128 for an unsigned grid, int8
  otherwise) and the gathered codes are that tensor's codes, followed by its ``DequantizeLinear``, as a
  ``QuantizeLinear`` output would be. Bit-exact: only integers are moved;
* ``maxpool2d``, ``flatten`` and ``pad`` (constant 0.0, which lies on the grid)
  run between a ``DequantizeLinear`` and a ``QuantizeLinear`` on the same grid
  (exact; onnxruntime runs ``MaxPool`` and ``Flatten`` on the codes), except a
  ``pad`` of H and W with the zero point read only by convolutions (TF-style
  "same" padding; also a float pad of 0.0 before the input quantization): it
  becomes their ``pads`` (``QLinearConv`` pads with the zero point), which
  keeps them fusable;
  ``avgpool2d`` is ``GlobalAveragePool``/``AveragePool`` followed by a
  ``QuantizeLinear`` on its output grid (onnxruntime's ``QLinearAveragePool``
  divides in float: it can round an exact tie of a multiplier with few
  significant bits the other way, which a calibrated scale does not produce);
* ``pad`` in ``reflect`` / ``replicate`` mode is ``Pad(mode=reflect / edge)`` of the codes (or of the float
  tensor before the input quantization), and ``slice`` is ``Slice`` of the codes (or floats): exact, codes move;
* ``l2normalize``, ``magnitude`` and the ``recurrent`` op (LSTM, GRU) have no QDQ form: :mod:`lowbit.export.onnx_int` writes them in
  integer onnxruntime ops (int64 arithmetic, ``MatMulInteger``, ``Scan``), bit-exact; a 16-bit ``quantize`` (the
  input of a recurrent op) is the integer model's float32 ``clamp(round(x * (1/s)) + z)`` cast to int32 codes;
* the network input is quantized by ``QuantizeLinear`` (after a ``Clip`` when
  its bounds are narrower than 8 bits). ONNX divides by the scale where lowbit
  multiplies by its float32 reciprocal: one float input in about 500,000 lands
  on the other side of a half (none of the Fashion-MNIST or photo inputs do). An input read only by ops written
  in integers (``recurrent``, ``l2normalize``: no QDQ fusion to keep) is quantized by the integer model's own
  float32 ops instead (``Mul`` by the reciprocal, ``Round``, ``Add``, ``Max``/``Min``, then an exact
  ``QuantizeLinear`` on the unit grid): bit-exact.

A bias that lowbit clipped to int32 (a channel whose weights quantize to about
zero) would wrap around in onnxruntime's int32 accumulators; such a channel's
output is saturated for every input, and it gets the smallest bias that
saturates the same way (:func:`_safe_bias`). A dequantizing output layer with a
residual adds the residual's dequantized value, as the converted model does.

The graph's input is ``"input"`` (float32) and its output ``"output"``
(float32), with a dynamic batch dimension ``"batch"``.

On x86 CPUs without VNNI onnxruntime's int8 kernels saturate (see
:mod:`lowbit.export.ort`): run the graph with :func:`lowbit.export.ort.session`,
or with the session option ``session.x64quantprecision = 1``.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lowbit.errors import ConfigError
from lowbit.export import onnx_int
from lowbit.integer import ir
from lowbit.utils.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from lowbit.integer.model import IntegerModel, Node

INSTALL_HINT = "pip install onnx"
MIN_OPSET = 13  # per-axis QuantizeLinear / DequantizeLinear
INPUT_NAME, OUTPUT_NAME, BATCH = "input", "output", "batch"
CODES_KEY = "lowbit.codes"  # metadata: {graph output: integer-model tensor} when codes are exposed
INT4_OPSET = 21  # DequantizeLinear reads INT4 from opset 21: <= 4-bit weights are stored as INT4 there
_ULPS = 16  # how far the weight-scale search looks on either side of the nearest float32


class Residual(enum.Enum):
    """How a convolution with a residual summand is written (see the module docstring).

    ``EXACT``: rounded once, ``(acc m + r m2) / 2^n`` as the integer model does
    (bit-exact with it; onnxruntime runs the convolution as ``QGemm`` on NHWC
    or im2col rows, slower than its ``QLinearConv``). ``REQUANTIZE``: rounded
    twice, as onnxruntime's own ``quantize_static`` models do: ``QLinearConv``
    onto an intermediate grid that holds every pre-add value the output can
    still tell apart (:func:`_pre_add_grid`), then ``QLinearAdd``. Fast, but an
    output code can differ from the integer model's by about one.
    """

    EXACT = "exact"
    REQUANTIZE = "requantize"


def _import_onnx():
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as exc:
        raise ConfigError(f"exporting to ONNX needs the 'onnx' package: {INSTALL_HINT}") from exc
    return onnx


@dataclass(frozen=True)
class _Grid:
    """An int8 grid in ONNX terms: float32 scale, zero point in the ONNX type's domain, uint8 or int8."""

    scale: np.float32
    zero_point: int
    signed: bool

    @classmethod
    def of(cls, grid: ir.Grid) -> _Grid:
        """The ONNX form of the integer model's grid."""
        if grid.bits > 8:
            raise ConfigError(f"ONNX QDQ export supports grids of at most 8 bits, not {grid.bits}")
        return cls(np.float32(grid.scale), cls.code(grid.zero_point, grid.signed), grid.signed)

    @staticmethod
    def code(stored: int, signed: bool) -> int:
        """ONNX code of an int8 stored value: unsigned codes are stored shifted down by 128."""
        return int(stored) + (0 if signed else 128)

    @property
    def qmin(self) -> int:
        return -128 if self.signed else 0

    @property
    def qmax(self) -> int:
        return 127 if self.signed else 255

    @property
    def dtype(self) -> type:
        return np.int8 if self.signed else np.uint8

    def value(self, code: int) -> np.float32:
        """Float32 value of a code: ``(code - z) s``, which quantizes back to ``code`` exactly."""
        return np.float32(code - self.zero_point) * self.scale


@dataclass(frozen=True)
class _Value:
    """One tensor of the integer model in the graph: its float32 form and, if integer, its codes and grid."""

    float_name: str
    codes: str | None = None
    grid: _Grid | None = None


def fit_weight_scales(s_in: float, target: np.ndarray, s_out: float | None = None) -> np.ndarray:
    """Float32 per-channel ``s_w`` for which onnxruntime's multiplier is closest to ``target``.

    onnxruntime's ``QLinearConv``/``QGemm`` compute the requantization multiplier
    as ``float32(float32(s_in * s_w) / s_out)`` (``float32(s_in * s_w)`` when the
    output is float, ``s_out`` None). The float32 values within ``_ULPS`` ulps of
    ``target * s_out / s_in`` are tried; the closest result wins (the nearest
    candidate among equals). Double rounding leaves some float32 multipliers
    unreachable: then the result is one ulp off.
    """
    s_in32 = np.float32(s_in)
    target = np.asarray(target, dtype=np.float64)
    base = (target * (1.0 if s_out is None else float(np.float32(s_out))) / float(s_in32)).astype(np.float32)
    steps = np.array([0] + [s * k for k in range(1, _ULPS + 1) for s in (-1, 1)], dtype=np.int64)
    bits = base.view(np.int32).astype(np.int64)[:, None] + steps[None, :]
    cand = bits.clip(1, np.iinfo(np.int32).max).astype(np.int32).view(np.float32)
    got = cand * s_in32
    if s_out is not None:
        got = got / np.float32(s_out)
    err = np.abs(got.astype(np.float64) - target[:, None])
    return cand[np.arange(len(cand)), err.argmin(axis=1)].astype(np.float32)


INT32_MAX = 2**31 - 1


def _safe_bias(bias: np.ndarray, w: np.ndarray, x: _Grid, y: _Grid, mult: np.ndarray, lo: int, hi: int,
               spread: np.ndarray | None = None) -> np.ndarray:
    """The int32 bias, with biases that can overflow an int32 accumulator replaced by equivalent small ones.

    A channel whose weights quantize to (nearly) zero gets a bias that lowbit
    clips to int32 (:func:`lowbit.nn.exact.layer_params`); added to the products
    (and to the zero-point corrections a runtime folds into it: at most
    ``510 sum|w|`` either way) it wraps around in onnxruntime's int32 kernels.
    Such a channel's output is constant (saturated at ``lo`` or ``hi`` for every
    input); it gets the smallest bias that saturates the same way. ``spread``:
    per channel, how far a residual can move the output, in output codes.
    """
    wsum = np.abs(w.reshape(w.shape[0], -1).astype(np.int64)).sum(axis=1)
    risky = np.abs(bias) + 510 * wsum > INT32_MAX
    if not risky.any():
        return bias
    bias = bias.copy()
    reach = wsum * max(x.zero_point - x.qmin, x.qmax - x.zero_point)  # |sum (q - z) w| <= reach
    spread = np.zeros(len(bias)) if spread is None else spread
    for c in np.flatnonzero(risky):
        m, r = float(mult[c]), float(spread[c])
        ends = [min(max(int(np.rint(float(bias[c] + k * reach[c]) * m + k * r)) + y.zero_point, lo), hi)
                for k in (-1, 1)]
        if ends[0] != ends[1] or ends[0] not in (lo, hi):
            continue  # not a saturated channel: keep it (it may still wrap in the runtime)
        if ends[0] == lo:  # (new + reach) m + r + z <= lo - 1
            new = int(np.floor((lo - y.zero_point - 1 - r) / m)) - int(reach[c]) - 1
        else:  # (new - reach) m - r + z >= hi + 1
            new = int(np.ceil((hi - y.zero_point + 1 + r) / m)) + int(reach[c]) + 1
        if abs(new) + 510 * int(wsum[c]) <= INT32_MAX:
            bias[c] = new
    return bias


def _pre_add_grid(out: _Grid, lo: int, hi: int, residual: _Grid) -> _Grid:
    """The uint8 grid of a layer's value before its residual is added (Residual.REQUANTIZE).

    The output is ``clamp(v + r, lo, hi)`` with ``r = s_r (q_r - z_r)``; a
    pre-add value ``v`` outside ``[(lo - z) s - max r, (hi - z) s - min r]``
    saturates the output for every residual, so clipping ``v`` to that range
    changes nothing. The grid spans that range (it holds 0), with
    ``s_v = ((hi - lo) s + (qmax_r - qmin_r) s_r) / 255``: a pre-add value is
    rounded to within ``s_v / 2``, about one output step.
    """
    r_lo = float(residual.value(residual.qmin))
    r_hi = float(residual.value(residual.qmax))
    v_lo = min(float(out.value(lo)) - r_hi, 0.0)
    v_hi = max(float(out.value(hi)) - r_lo, 0.0)
    scale = np.float32((v_hi - v_lo) / 255.0)
    if not scale > 0:
        raise ConfigError(f"empty pre-add range [{v_lo}, {v_hi}] for the residual's grid")
    zero = int(min(max(round(-v_lo / float(scale)), 0), 255))
    return _Grid(scale, zero, False)


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, onnx, shapes: dict[str, tuple[int, ...]], expose_codes: bool, opset: int = MIN_OPSET,
                 folds: _PadFolds | None = None, residual: Residual = Residual.EXACT) -> None:
        self.onnx, self.h, self.nh = onnx, onnx.helper, onnx.numpy_helper
        self.shapes, self.expose_codes, self.opset, self.residual = shapes, expose_codes, opset, residual
        self.folds = folds or _PadFolds({}, frozenset())
        self.rows: dict[str, str] = {}  # tensor -> float name of its (N*H*W, C) rows (see to_rows)
        self.nodes: list = []
        self.integer_read: set[str] = set()  # tensors read only by ops written in integer onnxruntime ops
        self.inits: list = []
        self.used: set[str] = {INPUT_NAME, OUTPUT_NAME}
        self.values: dict[str, _Value] = {}
        self.codes_outputs: list = []
        self.codes_map: dict[str, str] = {}
        self._qparams: dict[tuple, tuple[str, str]] = {}
        self.wide: dict[str, str] = {}  # a 16-bit quantize's output -> its stored int16 codes (int32; onnx_int)
        self.exact_layers = False  # plain convs / linears in integer ops (to_onnx_model(exact_layers=True))

    def fresh(self, base: str) -> str:
        base = base or "t"
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(self.nh.from_array(np.asarray(array), name))
        return name

    def const_int4(self, base: str, array: np.ndarray) -> str:
        """An INT4 initializer (ONNX opset >= 21; packed two per byte by onnx.helper)."""
        name = self.fresh(base)
        flat = np.asarray(array, dtype=np.int8).reshape(-1).tolist()
        self.inits.append(self.h.make_tensor(name, self.onnx.TensorProto.INT4, list(np.shape(array)), flat))
        return name

    def add(self, op: str, inputs: list[str], out: str, **attrs) -> str:
        out = self.fresh(out)
        self.nodes.append(self.h.make_node(op, inputs, [out], name=self.fresh(f"{out}/{op}"), **attrs))
        return out

    def qparams(self, grid: _Grid, base: str) -> tuple[str, str]:
        key = (float(grid.scale), grid.zero_point, grid.signed)
        if key not in self._qparams:
            self._qparams[key] = (self.const(f"{base}_scale", np.array(grid.scale, dtype=np.float32)),
                                  self.const(f"{base}_zero_point", np.array(grid.zero_point, dtype=grid.dtype)))
        return self._qparams[key]

    # -- quantized tensors ---------------------------------------------------------------------------

    def clamp(self, x: str, grid: _Grid, lo: int, hi: int, base: str) -> str:
        """``Relu``/``Clip`` of a float tensor to the values of codes ``[lo, hi]`` (nothing when 8-bit wide)."""
        if lo > hi:
            raise ConfigError(f"{base}: empty saturation range [{lo}, {hi}]")
        low, high = lo > grid.qmin, hi < grid.qmax
        if not (low or high):
            return x
        if low and not high and lo == grid.zero_point:
            return self.add("Relu", [x], f"{base}_relu")
        lo_name = self.const(f"{base}_clip_min", np.array(grid.value(lo), dtype=np.float32)) if low else ""
        hi_name = self.const(f"{base}_clip_max", np.array(grid.value(hi), dtype=np.float32)) if high else ""
        return self.add("Clip", [x, lo_name, hi_name] if high else [x, lo_name], f"{base}_clip")

    def quantize(self, x: str, grid: _Grid, name: str, lo: int | None = None, hi: int | None = None,
                 clamp_first: bool = False) -> _Value:
        """``Q -> DQ`` of float ``x`` on ``grid``, saturating to codes ``[lo, hi]``; records tensor ``name``.

        Narrow bounds are applied after a first ``Q -> DQ`` (keeping ``DQ -> op -> Q`` fusable) or, with
        ``clamp_first``, before the only ``Q`` (the network input).
        """
        lo = grid.qmin if lo is None else lo
        hi = grid.qmax if hi is None else hi
        s, z = self.qparams(grid, name)
        narrow = lo > grid.qmin or hi < grid.qmax
        if narrow and clamp_first:
            x = self.clamp(x, grid, lo, hi, name)
        elif narrow:
            x = self.clamp(self.qdq(x, grid, f"{name}_unclamped"), grid, lo, hi, name)
        return self.record(self.add("QuantizeLinear", [x, s, z], name), grid, name)

    def record(self, codes: str, grid: _Grid, name: str) -> _Value:
        """Record tensor ``name`` held as the ONNX ``codes`` on ``grid``: their ``DequantizeLinear`` is its float
        twin (and, with ``expose_codes``, the codes are a graph output)."""
        s, z = self.qparams(grid, name)
        value = _Value(self.add("DequantizeLinear", [codes, s, z], f"{name}_dq"), codes, grid)
        if self.expose_codes and name not in self.folds.conv_pads:  # (a folded pad's tensor is unpadded here)
            shape = [BATCH, *self.shapes[name][1:]]
            elem = self.onnx.TensorProto.INT8 if grid.signed else self.onnx.TensorProto.UINT8
            self.codes_outputs.append(self.h.make_tensor_value_info(codes, elem, shape))
            self.codes_map[codes] = name
        self.values[name] = value
        return value

    def qdq(self, x: str, grid: _Grid, base: str) -> str:
        """Float ``DQ(Q(x))`` on ``grid``: codes between two operations, not a tensor of the integer model."""
        s, z = self.qparams(grid, base)
        return self.add("DequantizeLinear", [self.add("QuantizeLinear", [x, s, z], base), s, z], f"{base}_dq")

    def move(self, op: str, x: str, grid: _Grid | None, base: str, *inputs: str, **attrs) -> str:
        """A data-movement ``op`` (Transpose, Reshape) of float ``x``, re-quantized on ``grid`` if any.

        ``DQ -> op -> Q`` on one grid is exact; onnxruntime drops the pair and moves the codes.
        """
        y = self.add(op, [x, *inputs], base, **attrs)
        return y if grid is None else self.qdq(y, grid, f"{base}_q")

    def to_rows(self, tensor: str, base: str) -> str:
        """The ``(N*H*W, C)`` rows (channels last) of NCHW ``tensor``, on its grid; made once per tensor."""
        if tensor not in self.rows:
            v, channels = self.values[tensor], int(self.shapes[tensor][1])
            t = self.move("Transpose", v.float_name, v.grid, f"{base}_nhwc", perm=[0, 2, 3, 1])
            self.rows[tensor] = self.move("Reshape", t, v.grid, base,
                                          self.const(f"{base}_shape", np.array([-1, channels], np.int64)))
        return self.rows[tensor]

    def patch_rows(self, node: Node) -> str:
        """The ``(N*Ho*Wo, kh*kw*C)`` im2col rows of conv ``node``'s input, on the input's grid.

        Row ``(n, i, j)`` holds, tap by tap (``(di, dj)`` outer, channels inner),
        the codes the convolution's window at output pixel ``(i, j)`` reads:
        the input padded with its zero point (the code of 0.0, as ``Conv`` and
        ``QLinearConv`` pad) is cut into ``kh*kw`` strided ``Slice``s, one per
        tap, concatenated on the channels and laid out as rows. Every step moves
        codes on one grid (exact). A 1x1, stride-1, unpadded convolution reads
        its input's own rows (:meth:`to_rows`).
        """
        a, name, src = node.op.ir, node.output, node.inputs[0]
        kh, kw = node.op.tensors["weight"].shape[2:]
        pads, stride, dil = self._conv_pads(node), list(a.stride), list(a.dilation)
        if (kh, kw) == (1, 1) and stride == [1, 1] and not any(pads):
            return self.to_rows(src, f"{name}_rows")
        v, (s, z) = self.values[src], self.qparams(self.values[src].grid, name)
        x = v.codes
        if any(pads):  # on the codes (a Pad between DQ and Q would run on floats)
            top, left, bottom, right = pads
            x = self.add("Pad", [x, self.const(f"{name}_pads", np.array([0, 0, top, left, 0, 0, bottom, right],
                                                                            np.int64)), z], f"{name}_pad",
                         mode="constant")
        _, _, ho, wo = self.shapes[name]
        axes = self.const(f"{name}_tap_axes", np.array([2, 3], np.int64))
        steps = self.const(f"{name}_tap_steps", np.array(stride, np.int64))
        taps = []
        for di in range(kh):
            for dj in range(kw):
                start = np.array([di * dil[0], dj * dil[1]], np.int64)
                end = start + np.array([(ho - 1) * stride[0] + 1, (wo - 1) * stride[1] + 1], np.int64)
                taps.append(self.add("Slice", [x, self.const(f"{name}_tap{di}{dj}_start", start),
                                               self.const(f"{name}_tap{di}{dj}_end", end), axes, steps],
                                     f"{name}_tap{di}{dj}"))
        patches = self.add("Concat", taps, f"{name}_patches", axis=1)
        nhwc = self.add("Transpose", [patches], f"{name}_patches_nhwc", perm=[0, 2, 3, 1])
        shape = np.array([-1, kh * kw * int(self.shapes[src][1])], np.int64)
        rows = self.add("Reshape", [nhwc, self.const(f"{name}_patch_rows_shape", shape)], f"{name}_patch_rows")
        return self.add("DequantizeLinear", [rows, s, z], f"{name}_patch_rows_dq")

    def from_rows(self, x: str, grid: _Grid | None, shape: tuple[int, ...], base: str) -> str:
        """The NCHW tensor of ``shape`` (any batch) whose ``(N*H*W, C)`` rows are ``x``: undoes :meth:`to_rows`."""
        _, c, h, w = shape
        nhwc = self.const(f"{base}_shape", np.array([-1, h, w, c], np.int64))
        t = self.move("Reshape", x, grid, f"{base}_nhwc", nhwc)
        return self.move("Transpose", t, grid, base, perm=[0, 3, 1, 2])

    def integer_input(self, node: Node, i: int = 0) -> _Value:
        v = self.values[node.inputs[i]]
        if v.grid is None:
            raise ConfigError(f"{node.output} ({node.kind}) reads the float tensor {node.inputs[i]!r}; "
                              "the QDQ export needs it quantized")
        return v

    # -- operations --------------------------------------------------------------------------------

    def emit(self, node: Node) -> None:
        EXPORTERS[type(node.op.ir)](self, node)  # op types were checked by _check_kinds

    def op_quantize(self, node: Node) -> None:
        a = node.op.ir
        x = self.values[node.inputs[0]]
        if x.grid is not None:
            raise ConfigError(f"{node.output}: quantize reads the integer tensor {node.inputs[0]!r}")
        if node.grid is None:
            raise ConfigError(f"{node.output}: a quantize node needs its output grid")
        if a.bits == 16:  # int16 codes, read only by a recurrent op
            onnx_int.emit_quantize16(self, node)
            return
        signed, name = node.grid.signed, node.output
        grid = _Grid(np.float32(a.scale), _Grid.code(a.zero_point, signed), signed)
        lo, hi = _Grid.code(a.lo, signed), _Grid.code(a.hi, signed)
        if name not in self.integer_read and not self.exact_layers:
            self.quantize(x.float_name, grid, name, lo, hi, clamp_first=True)
            return
        # read only by ops written in integers (recurrent, l2normalize): no QDQ fusion to keep, so the integer
        # model's own float32 ops, then an exact QuantizeLinear of those integral values on the unit grid
        v = onnx_int.quantized_values(self, x.float_name, a.scale, grid.zero_point, lo, hi, name)
        one, zero = self.qparams(_Grid(np.float32(1.0), 0, signed), f"{name}_unit")
        self.record(self.add("QuantizeLinear", [v, one, zero], name), grid, name)

    def op_dequantize(self, node: Node) -> None:
        a = node.op.ir
        x = self.integer_input(node)
        grid = _Grid(np.float32(a.scale), _Grid.code(a.zero_point, x.grid.signed), x.grid.signed)
        s, z = self.qparams(grid, node.output)
        self.values[node.output] = _Value(self.add("DequantizeLinear", [x.codes, s, z], node.output))

    def op_linear(self, node: Node) -> None:
        exact = node.output in self.integer_read or self.exact_layers  # (no QDQ fusion to keep, or asked)
        # a residual layer read only by integer-written ops (a LayerNorm's input) is written in integers too
        if exact and onnx_int.linear_exact_ok(node, residual=node.output in self.integer_read):
            onnx_int.emit_linear(self, node)
            return
        self._layer(node, conv=False)

    def op_conv2d(self, node: Node) -> None:
        if self.exact_layers and onnx_int.conv_exact_ok(node):
            onnx_int.emit_conv(self, node)
            return
        self._layer(node, conv=True)

    def _layer(self, node: Node, conv: bool) -> None:
        op, name = node.op, node.output
        a, t = op.ir, op.tensors
        if "zp" in t:
            raise ConfigError(f"{name}: a zero point per output channel (a LayerNorm's per-feature input grid) is "
                              "written only for a linear layer that integer LayerNorms alone read")
        x = self.integer_input(node)
        if _Grid.code(a.input_zero_point, x.grid.signed) != x.grid.zero_point:
            raise ConfigError(f"{name}: input zero point {a.input_zero_point} differs from the grid of "
                              f"{node.inputs[0]!r}")
        if t["weight"].dtype != torch.int8:
            raise ConfigError(f"{name}: weights must be int8, not {t['weight'].dtype}")
        w = t["weight"].detach().cpu().numpy()
        bias = t["bias"].detach().cpu().to(torch.int64).numpy()
        s_in, out_ch = x.grid.scale, w.shape[0]
        dequant = "acc_scale" in t
        if dequant:  # float32(s_in s_w) = acc_scale
            s_w = fit_weight_scales(s_in, t["acc_scale"].double().numpy())
        else:  # float32(float32(s_in s_w) / s_out) = m / 2^n
            out_grid = _Grid.of(node.grid)
            if _Grid.code(a.out.zero_point, out_grid.signed) != out_grid.zero_point:
                raise ConfigError(f"{name}: output zero point {a.out.zero_point} differs from its grid")
            lo, hi = _Grid.code(a.out.lo, out_grid.signed), _Grid.code(a.out.hi, out_grid.signed)
            mult = torch.ldexp(t["m"].double(), -t["n"].double()).numpy()
            s_w = fit_weight_scales(s_in, mult, out_grid.scale)
        residual = not dequant and len(node.inputs) > 1 and self.values[node.inputs[1]].grid is not None
        twice = residual and self.residual is Residual.REQUANTIZE  # onto a pre-add grid, then QLinearAdd
        rows = conv and residual and not twice and a.groups == 1  # a GEMM on patch rows (see _residual_rows)
        if twice:
            pre = _pre_add_grid(out_grid, lo, hi, self.values[node.inputs[1]].grid)
            mult = mult * float(out_grid.scale) / float(pre.scale)
            s_w = fit_weight_scales(s_in, mult, pre.scale)
            bias = _safe_bias(bias, w, x.grid, pre, mult, pre.qmin, pre.qmax)
        elif not dequant and (len(node.inputs) == 1 or rows):  # (a grouped residual conv runs in float)
            bias = _safe_bias(bias, w, x.grid, out_grid, mult, lo, hi, self._residual_spread(node) if rows else None)
        matmul = not conv and len(self.shapes[node.inputs[0]]) != 2
        if matmul:  # MatMul wants (K, O)
            w_arr = np.ascontiguousarray(w.T)
        elif rows:  # (O, kh*kw*C): taps outer, channels inner, as the patch rows of patch_rows
            w_arr = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(out_ch, -1)
        else:
            w_arr = w
        int4 = self.opset >= INT4_OPSET and a.weight_bits <= 4 and w.min() >= -8 and w.max() <= 7
        const = self.const_int4 if int4 else self.const
        w_dq = self.add("DequantizeLinear",
                        [const(f"{name}_weight", w_arr), self.const(f"{name}_weight_scale", s_w),
                         const(f"{name}_weight_zero_point", np.zeros(out_ch, np.int8))],
                        f"{name}_weight_dq", axis=1 if matmul else 0)
        b_dq = self.add("DequantizeLinear", [self.const(f"{name}_bias", bias.astype(np.int32)),
                                             self.const(f"{name}_bias_scale", (s_w * s_in).astype(np.float32)),
                                             self.const(f"{name}_bias_zero_point", np.zeros(out_ch, np.int32))],
                        f"{name}_bias_dq", axis=0)
        if rows:
            self._residual_rows(node, w_dq, b_dq, out_grid, lo, hi)
            return
        if conv:
            y = self.add("Conv", [x.float_name, w_dq, b_dq], f"{name}_conv", kernel_shape=list(w.shape[2:]),
                         pads=self._conv_pads(node), strides=list(a.stride), dilations=list(a.dilation),
                         group=a.groups)
        elif matmul:
            y = self.add("Add", [self.add("MatMul", [x.float_name, w_dq], f"{name}_matmul"), b_dq], f"{name}_add")
        else:
            y = self.add("Gemm", [x.float_name, w_dq, b_dq], f"{name}_gemm", transB=1)
        if twice:  # rounded on the pre-add grid first: DQ -> Add -> Q is QLinearAdd
            y = self.qdq(y, pre, f"{name}_pre_add")
        if len(node.inputs) > 1:  # the residual's value, on the output's float scale
            y = self.add("Add", [y, self.values[node.inputs[1]].float_name], f"{name}_residual")
        if not dequant:
            self.quantize(y, out_grid, name, lo, hi)
            return
        act = a.out.act
        if act is ir.Act.RELU:
            y = self.add("Relu", [y], f"{name}_relu")
        elif act is ir.Act.HARDTANH:
            y = self.add("Clip", [y, self.const(f"{name}_act_min", np.array(a.out.act_lo, np.float32)),
                                  self.const(f"{name}_act_max", np.array(a.out.act_hi, np.float32))], f"{name}_clip")
        self.values[name] = _Value(y)

    def _residual_spread(self, node: Node) -> np.ndarray:
        """Per output channel, how far the integer residual moves the output: ``max |r - z_r| m2 / 2^n`` codes."""
        g, t = self.values[node.inputs[1]].grid, node.op.tensors
        m2 = torch.ldexp(t["m2"].double(), -t["n"].double()).numpy()
        return max(g.zero_point - g.qmin, g.qmax - g.zero_point) * m2

    def _residual_rows(self, node: Node, w_dq: str, b_dq: str, grid: _Grid, lo: int, hi: int) -> None:
        """A convolution with a residual as ``DQ -> Gemm -> Add -> Q`` on NHWC (patch) rows.

        onnxruntime has no integer convolution with a summand: ``DQ -> Conv ->
        Add -> Q`` runs as a float convolution, and ``QLinearConv`` then
        ``QLinearAdd`` would round twice where lowbit's ``(acc m + r m2) / 2^n``
        rounds once. On rows, ``Gemm`` with no ``QuantizeLinear`` after it
        becomes ``QGemm`` with a float output, the int32 accumulator (bias
        included) times ``float32(s_x s_w)``; the residual's dequantized value is
        added and the sum rounded once by the output ``QuantizeLinear``. The
        rows of a 1x1, stride-1, unpadded convolution are its input's pixels;
        any other convolution reads the im2col patches of :meth:`patch_rows`.
        The transposes move codes, and cancel against onnxruntime's own NHWC layout.
        """
        name = node.output
        y = self.add("Gemm", [self.patch_rows(node), w_dq, b_dq], f"{name}_gemm", transB=1)
        y = self.add("Add", [y, self.to_rows(node.inputs[1], f"{name}_residual_rows")], f"{name}_residual")
        y = self.qdq(y, grid, f"{name}_unclamped")
        clamped = self.clamp(y, grid, lo, hi, name)
        self.rows[name] = y if clamped == y else self.qdq(clamped, grid, f"{name}_rows")  # DQ outputs, for a Gemm
        self.quantize(self.from_rows(self.rows[name], grid, self.shapes[name], f"{name}_nchw"), grid, name)

    def _conv_pads(self, node: Node) -> list[int]:
        """ONNX ``pads`` (top, left, bottom, right) of a conv: its own padding plus a folded ``pad`` before it."""
        ph, pw = node.op.ir.padding
        top, left, bottom, right = self.folds.conv_pads.get(node.inputs[0], (0, 0, 0, 0))
        return [ph + top, pw + left, ph + bottom, pw + right]

    def _same_grid(self, node: Node, y: str, x: _Value) -> None:
        """Record float ``y`` computed from ``x`` without changing values: re-quantized on ``x``'s grid."""
        if x.grid is None:
            self.values[node.output] = _Value(y)
        else:
            self.quantize(y, x.grid, node.output)

    def op_maxpool2d(self, node: Node) -> None:
        a = node.op.ir
        x = self.values[node.inputs[0]]
        ph, pw = a.padding
        y = self.add("MaxPool", [x.float_name], f"{node.output}_pool", kernel_shape=list(a.kernel_size),
                     strides=list(a.stride), pads=[ph, pw, ph, pw], dilations=list(a.dilation),
                     ceil_mode=int(a.ceil_mode))
        self._same_grid(node, y, x)

    def op_flatten(self, node: Node) -> None:
        x = self.values[node.inputs[0]]
        self._same_grid(node, self.add("Flatten", [x.float_name], f"{node.output}_flatten", axis=1), x)

    def op_unsqueeze(self, node: Node) -> None:
        x = self.values[node.inputs[0]]
        axes = self.const(f"{node.output}_axes", np.array([node.op.ir.dim], np.int64))
        self._same_grid(node, self.add("Unsqueeze", [x.float_name, axes], f"{node.output}_unsqueeze"), x)

    def op_squeeze(self, node: Node) -> None:
        x = self.values[node.inputs[0]]
        axes = self.const(f"{node.output}_axes", np.array([node.op.ir.dim], np.int64))
        self._same_grid(node, self.add("Squeeze", [x.float_name, axes], f"{node.output}_squeeze"), x)

    def op_permute(self, node: Node) -> None:
        x = self.values[node.inputs[0]]
        perm = [int(d) for d in node.op.ir.dims]
        self._same_grid(node, self.add("Transpose", [x.float_name], f"{node.output}_transpose", perm=perm), x)

    def op_reshape(self, node: Node) -> None:
        x = self.values[node.inputs[0]]
        shape = self.const(f"{node.output}_shape", np.array([0, *node.op.ir.shape], np.int64))  # 0: the batch
        self._same_grid(node, self.add("Reshape", [x.float_name, shape], f"{node.output}_reshape"), x)

    def op_concat(self, node: Node) -> None:
        """``Concat`` of the inputs' dequantized values (all on the output's grid) and that grid's Q/DQ: exact; of
        float inputs (the network's output joined from dequantized parts), the float ``Concat``."""
        if node.grid is None:
            xs = [self.values[i] for i in node.inputs]
            self.values[node.output] = _Value(self.add("Concat", [x.float_name for x in xs], f"{node.output}_concat",
                                                       axis=int(node.op.ir.dim)))
            return
        xs = [self.integer_input(node, i) for i in range(len(node.inputs))]
        y = self.add("Concat", [x.float_name for x in xs], f"{node.output}_concat", axis=int(node.op.ir.dim))
        self._same_grid(node, y, xs[0])

    def op_table(self, node: Node) -> None:
        """``Gather`` from the flattened table at ``Cast(codes, int64) + offset`` (see the module docstring)."""
        a, name = node.op.ir, node.output
        x = self.integer_input(node)
        table = node.op.tensors["table"].detach().cpu()
        index = self.add("Cast", [x.codes], f"{name}_index", to=self.onnx.TensorProto.INT64)
        offset = self._table_offset(x.grid, table.shape, len(self.shapes[node.inputs[0]]))
        if offset.any():
            index = self.add("Add", [index, self.const(f"{name}_offset", offset)], f"{name}_index")
        if a.float_output:
            values = self.const(f"{name}_table", table.to(torch.float32).numpy().reshape(-1))
            self.values[name] = _Value(self.add("Gather", [values, index], name, axis=0))
            return
        if node.grid is None:
            raise ConfigError(f"{name}: a table of codes needs its output grid")
        grid = _Grid.of(node.grid)
        codes = (table.to(torch.int16).numpy() + _Grid.code(0, grid.signed)).astype(grid.dtype)  # as _Grid.code
        self.record(self.add("Gather", [self.const(f"{name}_table", codes.reshape(-1)), index], name, axis=0),
                    grid, name)

    @staticmethod
    def _table_offset(grid: _Grid, table_shape: tuple[int, ...], rank: int) -> np.ndarray:
        """What maps an ONNX code of ``grid`` to its index in the flattened table: ``128`` for an int8 code
        (``code - qmin``), plus ``256 c`` on channel ``c`` of a per-channel table (shape ``(1, C, 1, ...)``)."""
        rows, width = table_shape
        if rows == 1:
            return np.array(-grid.qmin, np.int64)
        shift = width * np.arange(rows, dtype=np.int64) - grid.qmin
        return shift.reshape(1, rows, *[1] * (rank - 2))

    def op_pad(self, node: Node) -> None:
        a = node.op.ir
        x = self.values[node.inputs[0]]
        if node.output in self.folds.skipped:  # the convolutions reading it pad with the zero point themselves
            self.values[node.output] = x
            return
        rank = len(self.shapes[node.inputs[0]])
        pad = list(a.pad)  # (left, right) pairs from the last dim, as F.pad; checked by _node_shape
        begins, ends = [0] * rank, [0] * rank
        for i in range(len(pad) // 2):
            begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
        pads = self.const(f"{node.output}_pads", np.array(begins + ends, np.int64))
        if a.mode != "constant":  # reflect / replicate ("edge") move elements: on the codes themselves, exact
            mode = "edge" if a.mode == "replicate" else "reflect"
            if x.grid is None:
                self.values[node.output] = _Value(self.add("Pad", [x.float_name, pads], f"{node.output}_pad",
                                                           mode=mode))
            else:
                self.record(self.add("Pad", [x.codes, pads], node.output, mode=mode), x.grid, node.output)
            return
        value = np.float32(0.0)
        if x.grid is not None:
            value = x.grid.value(_Grid.code(a.value, x.grid.signed))
            if not x.grid.qmin <= _Grid.code(a.value, x.grid.signed) <= x.grid.qmax:
                raise ConfigError(f"{node.output}: pad value {a.value} is outside the int8 range")
        y = self.add("Pad", [x.float_name, pads, self.const(f"{node.output}_value", np.array(value, np.float32))],
                     f"{node.output}_pad", mode="constant")
        self._same_grid(node, y, x)

    def op_slice(self, node: Node) -> None:
        """``Slice`` of the codes (step 1; exact: codes move), or of the float tensor."""
        a, x = node.op.ir, self.values[node.inputs[0]]
        consts = [self.const(f"{node.output}_{k}", np.array([v], np.int64))
                  for k, v in (("starts", a.start), ("ends", a.stop), ("axes", a.dim))]
        if x.grid is None:
            self.values[node.output] = _Value(self.add("Slice", [x.float_name, *consts], f"{node.output}_slice"))
        else:
            self.record(self.add("Slice", [x.codes, *consts], node.output), x.grid, node.output)

    def op_avgpool2d(self, node: Node) -> None:
        a = node.op.ir
        x = self.integer_input(node)
        if _Grid.code(a.input_zero_point, x.grid.signed) != x.grid.zero_point:
            raise ConfigError(f"{node.output}: input zero point differs from the grid of {node.inputs[0]!r}")
        if a.kernel_size is None:
            y = self.add("GlobalAveragePool", [x.float_name], f"{node.output}_pool")
        else:
            y = self.add("AveragePool", [x.float_name], f"{node.output}_pool", kernel_shape=list(a.kernel_size),
                         strides=list(a.stride))
        grid = _Grid.of(node.grid)
        self.quantize(y, grid, node.output, _Grid.code(a.lo, grid.signed), _Grid.code(a.hi, grid.signed))


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:  # PyTorch's rule: the last window starts inside the input
        out -= 1
    return out


def _node_shape(node: Node, x: tuple[int, ...]) -> tuple[int, ...]:
    a, kind = node.op.ir, node.kind
    if kind in ("quantize", "dequantize"):
        return x
    if kind == "linear":
        w = node.op.tensors["weight"]
        if x[-1] != w.shape[1]:
            raise ConfigError(f"{node.output}: linear expects {w.shape[1]} input features, the input has {x[-1]}")
        return (*x[:-1], w.shape[0])
    if kind in ("conv2d", "maxpool2d", "avgpool2d") and len(x) != 4:
        raise ConfigError(f"{node.output}: {kind} needs an (N, C, H, W) input, not rank {len(x)}")
    if kind == "conv2d":
        w = node.op.tensors["weight"]
        if x[1] != w.shape[1] * a.groups:
            raise ConfigError(f"{node.output}: conv2d expects {w.shape[1] * a.groups} input channels, not {x[1]}")
        return (x[0], w.shape[0], *(_out_size(x[2 + i], w.shape[2 + i], a.stride[i], a.padding[i],
                                              a.dilation[i]) for i in range(2)))
    if kind == "maxpool2d":
        return (*x[:2], *(_out_size(x[2 + i], a.kernel_size[i], a.stride[i], a.padding[i],
                                    a.dilation[i], a.ceil_mode) for i in range(2)))
    if kind == "avgpool2d":
        if a.kernel_size is None:
            return (*x[:2], 1, 1)
        return (*x[:2], *(_out_size(x[2 + i], a.kernel_size[i], a.stride[i], 0, 1) for i in range(2)))
    if kind == "flatten":
        if a.start_dim % len(x) != 1 or a.end_dim % len(x) != len(x) - 1:
            raise ConfigError(f"{node.output}: only flatten(start_dim=1, end_dim=-1) has an ONNX form here, not "
                              f"start_dim={a.start_dim}, end_dim={a.end_dim}")
        return (x[0], math.prod(x[1:]))
    if kind == "unsqueeze":
        return (*x[:a.dim], 1, *x[a.dim:])
    if kind == "squeeze":
        if len(x) <= a.dim or x[a.dim] != 1:
            raise ConfigError(f"{node.output}: squeeze({a.dim}) of a tensor of shape {x}")
        return (*x[:a.dim], *x[a.dim + 1:])
    if kind == "permute":
        if sorted(a.dims) != list(range(len(x))) or a.dims[0] != 0:
            raise ConfigError(f"{node.output}: permute dims {list(a.dims)} of a tensor of shape {x}: a permutation "
                              "of all its dimensions that keeps the batch first")
        return tuple(x[d] for d in a.dims)
    if kind == "reshape":
        if math.prod(a.shape) != math.prod(x[1:]):
            raise ConfigError(f"{node.output}: reshape to {list(a.shape)} of a tensor of shape {x}")
        return (x[0], *a.shape)
    if kind == "table":
        rows = node.op.tensors["table"].shape
        if len(rows) != 2 or rows[1] != 256 or not (rows[0] == 1 or (len(x) >= 2 and x[1] == rows[0])):
            raise ConfigError(f"{node.output}: a table of shape {tuple(rows)} on a tensor of shape {x}: "
                              "(1, 256) or (channels, 256) with the channels on dimension 1")
        return x
    if kind == "slice":
        if not 1 <= a.dim < len(x) or not 0 <= a.start < a.stop <= x[a.dim]:
            raise ConfigError(f"{node.output}: slice {a.start}:{a.stop} along dim {a.dim} of a tensor of shape {x}")
        return (*x[:a.dim], a.stop - a.start, *x[a.dim + 1:])
    if kind in ("magnitude", "layernorm"):
        return x
    if kind == "l2normalize":
        if not 1 <= a.dim < len(x):
            raise ConfigError(f"{node.output}: l2normalize along dim {a.dim} of a tensor of shape {x}")
        return x
    if kind == "recurrent":
        isize = node.op.tensors["w_ih_0"].shape[1]
        if a.step and len(x) == 2 and x[-1] == isize:  # a cell's step: (N, I) -> (N, H)
            return (x[0], node.op.tensors["w_hh_0"].shape[1])
        if len(x) != 3 or x[-1] != isize:
            raise ConfigError(f"{node.output}: the recurrent op expects (N, T, {isize}) or (T, N, {isize}), not {x}")
        hsize = node.op.tensors[f"w_hh_{a.num_layers - 1}"].shape[1]
        if a.emit is ir.Emit.OUTPUT:
            return (*x[:2], hsize)
        return (x[0] if a.batch_first else x[1], hsize)
    if kind == "pad":
        pad, y = list(a.pad), list(x)
        if len(pad) % 2 or len(pad) // 2 > len(x):
            raise ConfigError(f"{node.output}: bad padding {pad} for a rank-{len(x)} tensor")
        for i in range(len(pad) // 2):
            if a.mode == "reflect" and max(pad[2 * i], pad[2 * i + 1]) >= x[len(x) - 1 - i]:
                raise ConfigError(f"{node.output}: reflect padding {pad} of a tensor of shape {x}")
            y[len(x) - 1 - i] += pad[2 * i] + pad[2 * i + 1]
        return tuple(y)
    raise AssertionError(kind)  # pragma: no cover (kinds were checked by _check_kinds)


def _concat_shape(node: Node, xs: list[tuple[int, ...]]) -> tuple[int, ...]:
    d = node.op.ir.dim
    if any(len(x) != len(xs[0]) or any(a != b for i, (a, b) in enumerate(zip(x, xs[0])) if i != d) for x in xs):
        raise ConfigError(f"{node.output}: concat along {d} of tensors of shapes {xs}")
    return (*xs[0][:d], sum(x[d] for x in xs), *xs[0][d + 1:])


def _batch_first(shape: object, what: str) -> tuple[int, ...]:
    """One input's shape, batch first (ConfigError otherwise)."""
    if (not isinstance(shape, (tuple, list)) or len(shape) < 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ConfigError(f"{what} must be the input's shape, batch first (e.g. (1, 1, 28, 28)), not {shape!r}")
    return tuple(shape)


def _input_shapes(model: IntegerModel, input_shape: object) -> list[tuple[int, ...]]:
    """Each input's shape, batch first: ``input_shape`` itself for a model of one input, else a tuple of one
    shape per input (a ConfigError naming the inputs when the count differs)."""
    names = model.input_names
    if len(names) == 1:
        return [_batch_first(input_shape, "input_shape")]
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != len(names) \
            or not all(isinstance(s, (tuple, list)) for s in input_shape):
        raise ConfigError(f"the model takes {len(names)} inputs ({', '.join(names)}): input_shape must be a tuple of "
                          f"{len(names)} shapes, one per input in that order, batch first (e.g. ((1, 8), (1, 6))), "
                          f"not {input_shape!r:.120}")
    return [_batch_first(s, f"input_shape[{k}] (input {n!r})") for k, (n, s) in enumerate(zip(names, input_shape))]


def _graph_inputs(model: IntegerModel) -> list[str]:
    """The ONNX graph's input names: ``"input"`` for a model of one input, else the model's input names."""
    names = model.input_names
    if len(names) == 1:
        return [INPUT_NAME]
    if OUTPUT_NAME in names:
        raise ConfigError(f"an input of the model is named {OUTPUT_NAME!r}, the ONNX graph's output: rename it")
    return names


def _shapes(model: IntegerModel, input_shapes: list[tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape for a batch of one (from the ops' attributes; nothing is run)."""
    shapes = {n: (1, *s[1:]) for n, s in zip(model.input_names, input_shapes)}
    for node in model.nodes:
        y = (_concat_shape(node, [shapes[i] for i in node.inputs]) if node.kind == "concat"
             else _node_shape(node, shapes[node.inputs[0]]))
        if any(d <= 0 for d in y):
            raise ConfigError(f"input_shape {_shown(input_shapes)} is too small for {node.output!r}: shape {y}")
        if node.kind != "concat" and len(node.inputs) > 1 and shapes[node.inputs[1]] != y:
            raise ConfigError(f"{node.output}: residual {node.inputs[1]!r} has shape {shapes[node.inputs[1]]}, "
                              f"the output {y}")
        shapes[node.output] = y
    return shapes


def _shown(input_shapes: list[tuple[int, ...]]) -> tuple:
    """``input_shape`` as the caller gave it: one shape, or the tuple of them."""
    return input_shapes[0] if len(input_shapes) == 1 else tuple(input_shapes)


@dataclass(frozen=True)
class _PadFolds:
    """Pads folded into convolutions: ``conv_pads`` maps a convolution input to its extra (top, left, bottom,
    right) padding; the ``pad`` nodes whose outputs are in ``skipped`` pass their input through."""

    conv_pads: dict[str, tuple[int, int, int, int]]
    skipped: frozenset[str]


def _spatial_pad(node: Node, rank: int) -> tuple[int, int, int, int] | None:
    """``(top, left, bottom, right)`` of a ``pad`` node that pads only H and W of an NCHW tensor, else None."""
    pad = list(node.op.ir.pad) + [0] * (2 * rank - len(node.op.ir.pad))
    if rank != 4 or any(pad[4:]) or min(pad) < 0:
        return None
    left, right, top, bottom = pad[:4]
    return top, left, bottom, right


def _conv_readers_only(readers: dict[str, list[tuple[Node, int]]], name: str, zero_point: int) -> bool:
    """Whether ``name`` is read, and only as the input of convolutions whose input zero point is ``zero_point``."""
    users = readers.get(name, [])
    return bool(users) and all(user.kind == "conv2d" and i == 0 and user.op.ir.input_zero_point == zero_point
                               for user, i in users)


def _padded_target(node: Node, readers: dict[str, list[tuple[Node, int]]], output: str) -> tuple[str, int] | None:
    """``(tensor the convolutions read, its padding code)`` for ``pad`` node ``node``, or None.

    An integer pad: its own output and value. A float pad of 0.0 read only by a
    ``quantize`` (the network input): that quantization's output and zero point,
    the code of 0.0 when the zero point lies within its bounds.
    """
    a = node.op.ir
    if node.grid is not None:
        return node.output, a.value
    users = readers.get(node.output, [])
    if a.value != 0 or len(users) != 1 or users[0][0].kind != "quantize" or users[0][0].output == output:
        return None
    q = users[0][0].op.ir
    return (users[0][0].output, q.zero_point) if q.lo <= q.zero_point <= q.hi else None


def _foldable_pads(model: IntegerModel, shapes: dict[str, tuple[int, ...]]) -> _PadFolds:
    """The ``pad`` nodes that become the ``pads`` of the convolutions after them.

    A pad of H and W with the code ``z`` before convolutions whose input zero
    point is ``z`` changes nothing when it moves into their ``pads``
    (onnxruntime's ``QLinearConv`` pads with the input zero point; ONNX ``Conv``
    pads the dequantized input with 0.0, the value of ``z``). Folded, the graph
    keeps every convolution fusable, where ``DQ -> Pad -> Q -> DQ -> Conv``
    costs a float pad, a quantization and layout transposes per convolution (the
    EfficientNets' TF-style "same" padding). Folded when every reader of the
    padded tensor is such a convolution's first input.
    """
    readers: dict[str, list[tuple[Node, int]]] = {}
    for node in model.nodes:
        for i, name in enumerate(node.inputs):
            readers.setdefault(name, []).append((node, i))
    conv_pads, skipped = {}, set()
    for node in model.nodes:
        if node.kind != "pad" or node.op.ir.mode != "constant" or node.output == model.output_name:
            continue
        sides = _spatial_pad(node, len(shapes[node.inputs[0]]))
        target = None if sides is None else _padded_target(node, readers, model.output_name)
        if target is not None and _conv_readers_only(readers, *target):
            conv_pads[target[0]] = sides
            skipped.add(node.output)
    return _PadFolds(conv_pads, frozenset(skipped))


def _live(nodes: list, outputs: set[str]) -> list:
    """``nodes`` (in order) less those none of whose outputs reaches ``outputs``: e.g. the dequantization of a
    tensor read only as codes (onnxruntime would still run it)."""
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    return keep[::-1]


# this backend's table: the QDQ graph of each op type
EXPORTERS: dict[type, Callable[[_Builder, Node], None]] = {
    ir.Quantize: _Builder.op_quantize, ir.Dequantize: _Builder.op_dequantize, ir.Linear: _Builder.op_linear,
    ir.Conv2d: _Builder.op_conv2d, ir.MaxPool2d: _Builder.op_maxpool2d, ir.AvgPool2d: _Builder.op_avgpool2d,
    ir.Flatten: _Builder.op_flatten, ir.Pad: _Builder.op_pad, ir.Unsqueeze: _Builder.op_unsqueeze,
    ir.Squeeze: _Builder.op_squeeze, ir.Permute: _Builder.op_permute, ir.Reshape: _Builder.op_reshape,
    ir.Table: _Builder.op_table, ir.Concat: _Builder.op_concat,
    ir.Recurrent: onnx_int.emit_recurrent,  # (exact int64 / MatMulInteger / Scan forms, not QDQ)
    ir.L2Normalize: onnx_int.emit_l2normalize, ir.Magnitude: onnx_int.emit_magnitude,
    ir.LayerNorm: onnx_int.emit_layernorm,
    ir.Slice: _Builder.op_slice,
}


def _check_kinds(model: IntegerModel) -> None:
    supported = sorted(t.kind for t in EXPORTERS)
    for node in model.nodes:
        if type(node.op.ir) not in EXPORTERS:
            raise ConfigError(f"cannot export {node.output!r}: op kind {node.kind!r} has no ONNX QDQ form "
                              f"(supported: {', '.join(supported)})")
        a = node.op.ir
        if isinstance(getattr(a, "out", None), ir.Binarized) or getattr(a, "pad_value", None) is not None:
            raise ConfigError(f"cannot export {node.output!r} ({node.op.ir.kind} of {node.op.ir.out.__class__.__name__} "
                              "output): ONNX has no sign activation or -1 padding of a QDQ layer, so a binary (W1A1) "
                              "layer has no ONNX QDQ form; run it with lowbit's integer model (its XNOR-popcount "
                              "kernel), or export a model with multi-bit activations (e.g. W1A2: binary weights "
                              "export as int8 codes -1/+1)")


def to_onnx_model(model: IntegerModel, input_shape: tuple[int, ...], opset: int = 17, expose_codes: bool = False,
                  residual: Residual = Residual.EXACT, exact_layers: bool = False):
    """The QDQ ``onnx.ModelProto`` of ``model`` (see the module docstring); not checked, not saved.

    ``expose_codes`` also makes every int8 tensor's ``QuantizeLinear`` output a
    graph output (for parity checks against :meth:`IntegerModel.run`); the
    metadata entry ``lowbit.codes`` maps those outputs to the integer model's names.
    ``residual``: how layers with a residual summand round (:class:`Residual`). ``exact_layers``: every plain
    requantized conv / linear (no residual summand, int8 weights) in the integer model's own arithmetic
    (:func:`lowbit.export.onnx_int.emit_conv`, ``emit_linear``; ``ConvInteger`` / ``MatMulInteger`` and an int64
    requantization) and each quantization of a float tensor as the integer model computes it: bit-exact where
    ``QLinearConv`` / ``QGemm`` round in float32 (one code in about 10^5-10^6 apart on large layers), slower.
    """
    onnx = _import_onnx()
    if not isinstance(exact_layers, bool):
        raise ConfigError(f"exact_layers must be True or False, not {exact_layers!r}")
    if not isinstance(residual, Residual):
        raise ConfigError(f"residual must be a lowbit.export.onnx_qdq.Residual ({', '.join(r.name for r in Residual)})"
                          f", not {residual!r}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"opset must be {MIN_OPSET}..{newest} (per-channel QuantizeLinear; the installed onnx's "
                          f"newest), not {opset!r}")
    from lowbit.integer.model import require_integer_model

    require_integer_model(model, "export")
    _check_kinds(model)
    input_shapes, graph_names = _input_shapes(model, input_shape), _graph_inputs(model)
    shapes = _shapes(model, input_shapes)
    b = _Builder(onnx, shapes, expose_codes, opset, _foldable_pads(model, shapes), residual)
    b.used.update(graph_names)
    b.exact_layers = exact_layers
    b.integer_read = _read_only_by(model, ("recurrent", "l2normalize", "magnitude", "layernorm"))
    for name, graph_name in zip(model.input_names, graph_names):
        b.values[name] = _Value(graph_name)
    for node in model.nodes:
        b.emit(node)
    out = b.values[model.output_name]
    if out.grid is not None:  # an integer output: dequantize it
        out = _Value(out.float_name)
    if out.float_name in graph_names:
        b.nodes.append(b.h.make_node("Identity", [out.float_name], [OUTPUT_NAME], name=b.fresh("output/Identity")))
    else:
        for n in b.nodes:  # the producer of the final float tensor writes "output"
            for i, o in enumerate(n.output):
                if o == out.float_name:
                    n.output[i] = OUTPUT_NAME
            for i, o in enumerate(n.input):
                if o == out.float_name:
                    n.input[i] = OUTPUT_NAME
    tp = onnx.TensorProto
    graph_in = [b.h.make_tensor_value_info(n, tp.FLOAT, [BATCH, *s[1:]]) for n, s in zip(graph_names, input_shapes)]
    graph_out = b.h.make_tensor_value_info(OUTPUT_NAME, tp.FLOAT, [BATCH, *shapes[model.output_name][1:]])
    live = _live(b.nodes, {OUTPUT_NAME, *(v.name for v in b.codes_outputs)})
    used = {i for n in live for i in n.input}
    graph = b.h.make_graph(live, "lowbit_integer_model", graph_in, [graph_out, *b.codes_outputs],
                           initializer=[i for i in b.inits if i.name in used])
    opsets = [b.h.make_opsetid("", opset)]
    proto = b.h.make_model(graph, opset_imports=opsets, producer_name="lowbit",
                           ir_version=b.h.find_min_ir_version_for(opsets))
    if expose_codes:
        b.h.set_model_props(proto, {CODES_KEY: json.dumps(b.codes_map)})
    return proto


def _read_only_by(model: IntegerModel, kinds: tuple[str, ...]) -> set[str]:
    """The tensors of ``model`` that some node reads and that only nodes of ``kinds`` read."""
    readers: dict[str, set[str]] = {}
    for node in model.nodes:
        for i in node.inputs:
            readers.setdefault(i, set()).add(node.kind)
    return {name for name, ks in readers.items() if ks <= set(kinds)}


def export_onnx(model: IntegerModel, path: str | Path, input_shape: tuple[int, ...], opset: int = 17,
                residual: Residual = Residual.EXACT, exact_layers: bool = False) -> Path:
    """Write ``model`` to ``path`` as a QDQ ONNX model (checked by ``onnx.checker``); returns the path.

    ``input_shape`` is the input's shape with the batch first (its size is
    ignored: the batch dimension is dynamic). ``residual``: ``Residual.EXACT``
    (bit-exact with ``model``) or ``Residual.REQUANTIZE`` (onnxruntime's fast
    ``QLinearConv`` + ``QLinearAdd``, rounding twice). ``exact_layers=True`` writes the plain convs and linears
    in integer ops (:func:`to_onnx_model`): bit for bit the integer model's codes, at some onnxruntime speed.
    Needs the ``onnx`` package.
    A model of one input gives a graph of one input named ``"input"``. A model of several inputs gives one graph
    input per model input, named as the model's inputs (``model.input_names``, ``forward``'s parameter names, in
    order; ``"output"`` is refused), and ``input_shape`` is then a tuple of their shapes, one per input in that order.
    """
    onnx = _import_onnx()
    proto = to_onnx_model(model, input_shape, opset, residual=residual, exact_layers=exact_layers)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))


__all__ = ["export_onnx", "fit_weight_scales", "to_onnx_model"]

"""How each op of an :class:`~lowbit.integer.model.IntegerModel` becomes steps of a compiled plan
(:mod:`lowbit.integer.plan`, ``csrc/plan.c``).

Every function below mirrors one op's fast path in :mod:`lowbit.integer.ops`: the same C kernel, the same
arguments, the same memory layout of its output (conv and pool outputs channels-last, everything else in
logical order), so that the plan's results are the op-by-op path's bytes. Where an op would take another
path (another dtype, a layout it copies in PyTorch, a kernel the plan lacks) the function raises
:class:`Unsupported` and the model keeps the op-by-op path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import torch

from lowbit.integer import ir
from lowbit.integer.backend import Kernels
from lowbit import bitwise
from lowbit.bitwise.pack import words
from lowbit.integer import ops, vnni
from lowbit.functional.requant import half_of

INPUT = 0  # slot of the model input; -1 is a NULL pointer


class Kind(IntEnum):
    """Step kinds, numbered as in ``csrc/plan.c`` (which lists each one's buffers and arguments)."""

    QUANTIZE = 1
    TRANSPOSE = 2
    PAD_FLIP = 3
    CONV = 4
    IM2COL = 5
    PACK_A = 6
    GEMM = 7
    MAXPOOL = 8
    DEQUANT_ROWS = 9
    REQUANT = 10
    SUM_HW = 11
    DEPTHWISE = 12
    DEQUANT_CODES = 13
    BITS_PACK = 14
    BITS_IM2COL = 15
    XNOR_GEMM = 16
    BITS_UNPACK = 17
    BITS_SERIAL = 18
    IM2COL_I8 = 19
    TERNARY_GEMM = 20
    SUM_POOL = 21


class Unsupported(Exception):
    """An op, dtype or layout a plan does not run: the model keeps the op-by-op path."""


@dataclass(frozen=True)
class Value:
    """A tensor of the graph as a plan holds it: its buffer slot, logical shape and dtype, and whether a 4-D
    tensor is stored channels-last (NHWC, as conv and pool outputs are) rather than in logical order."""

    slot: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    channels_last: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def order_free(self) -> bool:
        """NCHW and NHWC order are the same bytes: a 4-D tensor of one channel or one pixel."""
        return len(self.shape) == 4 and (self.shape[1] == 1 or self.shape[2] * self.shape[3] == 1)

    def logical_order(self) -> bool:
        """Stored in logical (row-major) order: a flat view of the buffer is the tensor."""
        return not self.channels_last or self.order_free()


class Builder:
    """Collects the steps and the buffers (scratch, weights) of a plan, one op at a time."""

    def __init__(self, max_bytes: int) -> None:
        self.steps: list[tuple[Kind, list[int], list[int], float]] = []
        self.buffers: list[torch.Tensor | None] = [None]  # slot 0: the input, set per call
        self.scratch_bytes, self.max_bytes = 0, max_bytes
        self._transposed: dict[tuple[int, bool], int] = {}

    def scratch(self, numel: int, dtype: torch.dtype) -> int:
        """A new buffer slot of ``numel`` elements."""
        t = torch.empty(max(numel, 1), dtype=dtype)
        self.scratch_bytes += t.numel() * t.element_size()
        if self.scratch_bytes > self.max_bytes:
            raise Unsupported(f"buffers over {self.max_bytes} bytes (a large batch gains nothing from a plan)")
        self.buffers.append(t)
        return len(self.buffers) - 1

    def const(self, t: torch.Tensor | None) -> int:
        """The slot of a weight tensor (kept alive by the plan); -1 (NULL) for None."""
        if t is None:
            return -1
        self.buffers.append(t.contiguous())
        return len(self.buffers) - 1

    def value(self, shape, dtype: torch.dtype, channels_last: bool = False) -> Value:
        """A new tensor with its own buffer."""
        shape = tuple(shape)
        return Value(self.scratch(math.prod(shape), dtype), shape, dtype, channels_last)

    def step(self, kind: Kind, bufs: list[int], args: list[int] = (), real: float = 0.0) -> None:
        self.steps.append((kind, list(bufs), [int(a) for a in args], real))

    def nhwc(self, v: Value) -> int:
        """The slot holding a 4-D tensor's bytes in NHWC order (a transposed copy when it is stored NCHW)."""
        if len(v.shape) != 4:
            raise Unsupported(f"a 4-D input was expected, got shape {v.shape}")
        n, c, h, w = v.shape
        return v.slot if v.channels_last or v.order_free() else self._transpose(v, n, c, h * w, True)

    def rows(self, v: Value) -> int:
        """The slot holding a tensor's bytes in logical (row-major) order."""
        if v.logical_order():
            return v.slot
        n, c, h, w = v.shape
        return self._transpose(v, n, h * w, c, False)

    def _transpose(self, v: Value, n: int, a: int, b: int, to_nhwc: bool) -> int:
        """(n, a, b) -> (n, b, a) bytes of ``v`` into a new slot, once per value and direction."""
        if v.dtype != torch.int8:
            raise Unsupported(f"relayout of a {v.dtype} tensor")
        key = (v.slot, to_nhwc)
        if key not in self._transposed:
            out = self.scratch(v.numel, torch.int8)
            self.step(Kind.TRANSPOSE, [v.slot, out], [n, a, b])
            self._transposed[key] = out
        return self._transposed[key]


# ---------------------------------------------------------------- one function per op kind


def _int8(v: Value, ndim: int | None = None) -> None:
    if v.dtype != torch.int8 or (ndim is not None and len(v.shape) != ndim):
        raise Unsupported(f"an int8{'' if ndim is None else f' {ndim}-D'} input was expected, got {v.dtype} {v.shape}")


def _quantize(b: Builder, op: ops.Quantize, x: Value) -> Value:
    """float32 -> int8 codes, as the op's C path (lowbit_quantize_f32) computes them."""
    if x.dtype != torch.float32:
        raise Unsupported(f"quantize of {x.dtype}")
    if op.ir.bits != 8:  # int16 codes feed a recurrent op only, which runs op by op anyway
        raise Unsupported(f"quantize to int{op.ir.bits} codes")
    a, out = op.ir, b.value(x.shape, torch.int8)
    b.step(Kind.QUANTIZE, [b.rows(x), out.slot], [x.numel, a.zero_point, a.lo, a.hi], real=float(op.inv))
    return out


def _dequantize(b: Builder, op: ops.Dequantize, x: Value) -> Value:
    """int8 codes -> float32 ``(q - z) * s``, elementwise (so in the input's layout)."""
    _int8(x)
    out = Value(b.scratch(x.numel, torch.float32), x.shape, torch.float32, x.channels_last)
    scale = float(torch.tensor(op.ir.scale, dtype=torch.float32))
    b.step(Kind.DEQUANT_CODES, [x.slot, out.slot], [x.numel, op.ir.zero_point], real=scale)
    return out


def _output_stage(b: Builder, op: ops._Layer, residual: int) -> tuple[list[int], list[int]]:
    """The epilogue buffers (m, n, half, residual, m2) and arguments (requant, res_zp, zp, lo, hi) of a GEMM or
    implicit conv step: fused requantization, or raw int32 for a dequantizing layer."""
    if op.dequant:
        return [-1, -1, -1, -1, -1], [0, 0, 0, 0, 0]
    if op.zp is not None:
        raise Unsupported("a zero point per output channel (the plan's requantization step takes one)")
    r = op.requant_spec
    return ([b.const(r.m), b.const(r.n), b.const(r.half), residual, b.const(r.m2)],
            [1, r.res_zp, r.zp, r.lo, r.hi])


def _dequant_out(b: Builder, op: ops._Layer, shape, channels_last: bool, residual: Value | None) -> Value:
    """The float32 output of a dequantizing layer; only the one C pass the op uses (no residual, no activation)."""
    if residual is not None or op.ir.out.act is not ir.Act.NONE:
        raise Unsupported("an output layer with a residual or an activation dequantizes in PyTorch")
    return b.value(shape, torch.float32, channels_last)


def _layer_out(b: Builder, op: ops._Layer, shape, rows: int, o: int, channels_last: bool,
               residual: Value | None) -> tuple[Value, int]:
    """A layer's output value and the slot its GEMM writes: int8 codes, or for a dequantizing layer int32
    accumulators that :func:`_finish_dequant` turns into floats."""
    if not op.dequant:
        out = b.value(shape, torch.int8, channels_last)
        return out, out.slot
    out = _dequant_out(b, op, shape, channels_last, residual)
    return out, b.scratch(rows * o, torch.int32)


def _finish_dequant(b: Builder, op: ops._Layer, acc: int, out: Value, bias: torch.Tensor, rows: int,
                    o: int) -> None:
    """float32 ``(acc + bias) * acc_scale`` (lowbit_dequant_rows) for a dequantizing layer; nothing otherwise."""
    if op.dequant:
        b.step(Kind.DEQUANT_ROWS, [acc, b.const(bias), b.const(op.acc_scale64), out.slot], [rows, o])


def _xnor_isa() -> int:
    name = bitwise.backend()
    if name not in bitwise.kernels.ISAS:
        raise Unsupported("no compiled XNOR kernel")
    return bitwise.kernels.ISAS.index(name)


def _xnor_out(b: Builder, op: ops._Layer, a: int, packed, thr: torch.Tensor, rows: int, shape,
              channels_last: bool) -> Value:
    """The XNOR GEMM on packed rows ``a``, then the output stage: signs through the threshold epilogue and an
    unpack, or int32 accumulators requantized (or dequantized) as the op's :meth:`~ops._Layer._out` does."""
    o, isa, panels = packed.n, _xnor_isa(), b.const(packed.panels)
    if op.binarized:
        bits = b.scratch(rows * words(o), torch.uint64)
        b.step(Kind.XNOR_GEMM, [a, panels, b.const(thr), b.const(torch.zeros(o, dtype=torch.uint8)), bits],
               [rows, o, words(packed.k), packed.k, isa])
        out = b.value(shape, torch.int8, channels_last)
        b.step(Kind.BITS_UNPACK, [bits, out.slot], [rows, o])
        return out
    acc = b.scratch(rows * o, torch.int32)
    b.step(Kind.XNOR_GEMM, [a, panels, -1, -1, acc], [rows, o, words(packed.k), packed.k, isa])
    return _acc_out(b, op, acc, rows, o, shape, channels_last)


def _acc_out(b: Builder, op: ops._Layer, acc: int, rows: int, o: int, shape, channels_last: bool) -> Value:
    """The output stage of int32 accumulators (R, O) (bias not added): requantized (a sign output too, by its
    integer form ``op.req``) or dequantized, as :meth:`~ops._Layer._out`."""
    if op.dequant:
        out = _dequant_out(b, op, shape, channels_last, None)
        _finish_dequant(b, op, acc, out, op.bias_folded, rows, o)
        return out
    m, shift, zero_point, lo, hi = op.req
    if op.zp is not None:
        raise Unsupported("a zero point per output channel (the plan's requantization step takes one)")
    out = b.value(shape, torch.int8, channels_last)
    b.step(Kind.REQUANT, [acc, b.const(op.bias_folded), b.const(m), b.const(shift), b.const(op.half), -1, -1,
                          out.slot], [rows, o, 0, zero_point, lo, hi])
    return out


def _bitserial(b: Builder, op: ops._Layer, rows_slot: int, rows: int, weight_mat: torch.Tensor, shape,
               channels_last: bool) -> Value:
    """Few-bit int8 rows (R, K) times binary / ternary / 2-bit weights as bit-serial XNOR GEMMs, then the stage."""
    p, a = op.planes(weight_mat), op.ir
    k, o = p.k, p.n
    acc = b.scratch(rows * o, torch.int32)
    scratch = [b.scratch(rows * words(k), torch.uint64), b.scratch(rows * o, torch.int32),
               b.scratch(rows * o, torch.int64)]
    b.step(Kind.BITS_SERIAL, [rows_slot, b.const(p.panels), b.const(p.a), b.const(p.vsum), b.const(p.wsum),
                              *scratch, acc],
           [rows, k, ir.input_low(a.input_bits, a.input_signed), a.input_bits, p.planes, p.a0, o, _xnor_isa()])
    return _acc_out(b, op, acc, rows, o, shape, channels_last)


def _xnor_linear(b: Builder, op: ops.Linear, x: Value) -> Value:
    """Binary linear: the +-1 codes packed to bits, the XNOR-popcount GEMM, its output stage."""
    packed, thr = op.xnor_weight(op.tensors["weight"])
    if x.shape[-1] != packed.k:
        raise Unsupported("linear input of another width")
    rows = x.numel // packed.k
    a = b.scratch(rows * words(packed.k), torch.uint64)
    b.step(Kind.BITS_PACK, [b.rows(x), a], [rows, packed.k])
    return _xnor_out(b, op, a, packed, thr, rows, (*x.shape[:-1], packed.n), False)


def _xnor_conv(b: Builder, op: ops.Conv2d, x: Value) -> Value:
    """Binary conv: bit rows straight from the NHWC signs (-1 in the padding), the XNOR GEMM, its output stage."""
    if any(op.ir.padding) and op.ir.pad_code != -1:
        raise Unsupported("a binary conv padded with another value than -1")
    packed, thr = op.xnor_weight(op.weight_mat, "hwc")  # rows in (kh, kw, C) order, as the NHWC im2col reads
    n, c, h, wd = x.shape
    geo, (ho, wo) = op.conv_geometry(h, wd)
    (sh, sw), (ph, pw), (dh, dw) = geo
    (kh, kw), rows = op.kernel, n * ho * wo
    a = b.scratch(rows * words(packed.k), torch.uint64)
    b.step(Kind.BITS_IM2COL, [b.nhwc(x), a], [n, h, wd, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo])
    return _xnor_out(b, op, a, packed, thr, rows, (n, packed.n, ho, wo), True)


def _bitserial_conv(b: Builder, op: ops.Conv2d, x: Value) -> Value:
    """Few-bit conv: int8 im2col rows (padded with the op's pad code), then the bit-serial GEMM."""
    n, c, h, wd = x.shape
    geo, (ho, wo) = op.conv_geometry(h, wd)
    (sh, sw), (ph, pw), (dh, dw) = geo
    (kh, kw), rows = op.kernel, n * ho * wo
    cols = b.scratch(rows * kh * kw * c, torch.int8)
    b.step(Kind.IM2COL_I8, [b.nhwc(x), cols], [n, h, wd, c, kh, kw, sh, sw, ph, pw, dh, dw, op.ir.pad_code, ho, wo])
    return _bitserial(b, op, cols, rows, op.weight_mat, (n, op.weight_mat.shape[0], ho, wo), True)


def _ternary(b: Builder, op: ops._Layer, a: int, rows: int, weight_mat: torch.Tensor, order: str, shape,
             channels_last: bool) -> Value:
    """Binary input rows packed in ``a`` times the ternary weight (two bit-planes), then the stage."""
    w = op.ternary_weight(weight_mat, order)
    acc = b.scratch(rows * w.n, torch.int32)
    b.step(Kind.TERNARY_GEMM, [a, b.const(w.panels), b.const(w.pcm), acc], [rows, w.n, words(w.k), _xnor_isa()])
    return _acc_out(b, op, acc, rows, w.n, shape, channels_last)


def _bitwise(b: Builder, op: ops._Layer, x: Value, residual: Value | None) -> Value | None:
    """The steps of a layer the bitwise engine runs (XNOR, ternary or bit-serial), or None for the int8 kernels."""
    if not (op.ir.xnor or op.ir.bitserial or op.ir.ternary_popcount):
        return None
    if residual is not None:
        raise Unsupported("a bitwise layer with a residual input")
    if op.ir.ternary_popcount:
        return _ternary_layer(b, op, x)
    if isinstance(op, ops.Conv2d):
        return _xnor_conv(b, op, x) if op.ir.xnor else _bitserial_conv(b, op, x)
    if op.ir.xnor:
        return _xnor_linear(b, op, x)
    w = op.tensors["weight"]
    return _bitserial(b, op, b.rows(x), x.numel // w.shape[1], w, (*x.shape[:-1], w.shape[0]), False)


def _ternary_layer(b: Builder, op: ops._Layer, x: Value) -> Value:
    """Ternary weights on binary inputs: the signs packed (a conv's rows from NHWC, -1 padding), the ternary GEMM."""
    if isinstance(op, ops.Linear):
        w = op.tensors["weight"]
        rows = x.numel // w.shape[1]
        a = b.scratch(rows * words(w.shape[1]), torch.uint64)
        b.step(Kind.BITS_PACK, [b.rows(x), a], [rows, w.shape[1]])
        return _ternary(b, op, a, rows, w, "", (*x.shape[:-1], w.shape[0]), False)
    if any(op.ir.padding) and op.ir.pad_code != -1:
        raise Unsupported("a ternary conv of a binary input padded with another value than -1")
    n, c, h, wd = x.shape
    geo, (ho, wo) = op.conv_geometry(h, wd)
    (sh, sw), (ph, pw), (dh, dw) = geo
    (kh, kw), rows = op.kernel, n * ho * wo
    a = b.scratch(rows * words(kh * kw * c), torch.uint64)
    b.step(Kind.BITS_IM2COL, [b.nhwc(x), a], [n, h, wd, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo])
    return _ternary(b, op, a, rows, op.weight_mat, "hwc", (n, op.weight_mat.shape[0], ho, wo), True)


def _linear(b: Builder, op: ops.Linear, x: Value, residual: Value | None = None) -> Value:
    """The VNNI GEMM on the input rows (int8 when K % 4 == 0, else packed), the epilogue fused; binary layers
    on the XNOR-popcount GEMM."""
    _int8(x)
    if (bitwise_out := _bitwise(b, op, x, residual)) is not None:
        return bitwise_out
    packed = op.packed(op.tensors["weight"], Kernels.PLAN)
    if packed is None or x.shape[-1] != packed[0].k:
        raise Unsupported("linear without the VNNI GEMM")
    w, col_add = packed
    rows, o = x.numel // w.k, w.n
    a, flip = b.rows(x), 1
    if w.k != w.kp:
        a, flip = b.scratch(rows * w.kp, torch.uint8), 0
        b.step(Kind.PACK_A, [b.rows(x), a], [rows, w.k, w.kp])
    res = -1
    if residual is not None and not op.dequant:
        _int8(residual)
        if residual.numel != rows * o:
            raise Unsupported("residual of another size")
        res = b.rows(residual)
    out, dst = _layer_out(b, op, (*x.shape[:-1], o), rows, o, False, residual)
    epi_bufs, epi_args = _output_stage(b, op, res)
    b.step(Kind.GEMM, [a, b.const(w.panels), b.const(col_add), *epi_bufs, dst], [rows, w.kp, flip, o, *epi_args])
    _finish_dequant(b, op, dst, out, op.bias_folded, rows, o)
    return out


def _conv_residual(b: Builder, residual: Value | None, shape, dequant: bool) -> int:
    """The NHWC slot of a conv's residual input (it is added in the conv's channels-last rows)."""
    if residual is None or dequant:
        return -1
    _int8(residual, 4)
    if residual.shape != tuple(shape):
        raise Unsupported("residual of another shape")
    return b.nhwc(residual)


def _conv2d(b: Builder, op: ops.Conv2d, x: Value, residual: Value | None = None) -> Value:
    """Dense conv as the implicit-GEMM VNNI kernel (C % 4 == 0) or im2col + VNNI GEMM; depthwise in C."""
    _int8(x, 4)
    if (bitwise_out := _bitwise(b, op, x, residual)) is not None:
        return bitwise_out
    if op.depthwise:
        return _depthwise(b, op, x, residual)
    packed = op.packed(op.weight_mat, Kernels.PLAN) if op.ir.groups == 1 else None
    if packed is None:
        raise Unsupported("conv without the VNNI GEMM")
    w, col_add = packed
    n, c, h, wd = x.shape
    geo, (ho, wo) = op.conv_geometry(h, wd)
    (sh, sw), (ph, pw), (dh, dw) = geo
    (kh, kw), o, rows, pad = op.kernel, w.n, n * ho * wo, op.ir.pad_code
    res = _conv_residual(b, residual, (n, o, ho, wo), op.dequant)
    out, dst = _layer_out(b, op, (n, o, ho, wo), rows, o, True, residual)
    epi_bufs, epi_args = _output_stage(b, op, res)
    hp, wp, src = h + 2 * ph, wd + 2 * pw, b.nhwc(x)
    if vnni.implicit_conv_ok(c, op.kernel):
        padded = b.scratch(n * hp * wp * c, torch.uint8)
        b.step(Kind.PAD_FLIP, [src, padded], [n, h, wd, c, ph, pw, pad])
        b.step(Kind.CONV, [padded, b.const(w.panels), b.const(col_add), *epi_bufs, dst],
               [n, hp, wp, c, kh, kw, sh, sw, dh, dw, ho, wo, o, *epi_args])
    else:
        cols, img = b.scratch(rows * w.kp, torch.uint8), b.scratch(n * hp * wp * c + 8, torch.uint8)
        b.step(Kind.IM2COL, [src, cols, img], [n, h, wd, c, kh, kw, sh, sw, ph, pw, dh, dw, pad, ho, wo, w.kp])
        b.step(Kind.GEMM, [cols, b.const(w.panels), b.const(col_add), *epi_bufs, dst], [rows, w.kp, 0, o, *epi_args])
    _finish_dequant(b, op, dst, out, op.bias_folded, rows, o)
    return out


def _depthwise(b: Builder, op: ops.Conv2d, x: Value, residual: Value | None) -> Value:
    """Depthwise conv (C kernel, int32 rows) then the C epilogue, as the op's depthwise path."""
    a, t = op.ir, op.tensors
    n, c, h, wd = x.shape
    if c != a.groups:
        raise Unsupported("depthwise conv on another channel count")
    ((sh, sw), (ph, pw), (dh, dw)), (ho, wo) = op.conv_geometry(h, wd)
    kh, kw = op.kernel
    rows, bias = n * ho * wo, t["bias"].to(torch.int32)
    res = _conv_residual(b, residual, (n, c, ho, wo), op.dequant)
    acc = b.scratch(rows * c, torch.int32)
    b.step(Kind.DEPTHWISE, [b.nhwc(x), b.const(op.weight_hwc), acc],
           [n, h, wd, c, kh, kw, sh, sw, ph, pw, dh, dw, a.input_zero_point, ho, wo])
    if op.dequant:
        out = _dequant_out(b, op, (n, c, ho, wo), True, residual)
        _finish_dequant(b, op, acc, out, bias, rows, c)
        return out
    if op.zp is not None:
        raise Unsupported("a zero point per output channel (the plan's requantization step takes one)")
    out = b.value((n, c, ho, wo), torch.int8, True)
    m, shift, zero_point, lo, hi = op.req  # the stage's requantization (a sign output's integer form too)
    b.step(Kind.REQUANT, [acc, b.const(bias), b.const(m), b.const(shift), b.const(op.half), res,
                          b.const(t.get("m2")), out.slot],
           [rows, c, getattr(a.out, "residual_zero_point", None) or 0, zero_point, lo, hi])
    return out


def _maxpool2d(b: Builder, op: ops.MaxPool2d, x: Value) -> Value:
    """The op's C path: NHWC int8, no dilation, no ceil mode."""
    a = op.ir
    _int8(x, 4)
    if a.dilation != (1, 1) or a.ceil_mode:
        raise Unsupported("max pool with dilation or ceil mode")
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = op.geometry(h, w)
    out = b.value((n, c, ho, wo), torch.int8, True)
    b.step(Kind.MAXPOOL, [b.nhwc(x), out.slot], [n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo])
    return out


def _avgpool2d(b: Builder, op: ops.AvgPool2d, x: Value) -> Value:
    """Average pool, global or unpadded with a window: int32 window sums (NHWC), then the C epilogue with bias
    ``-window * z`` and the pool's multiplier for every channel (the op's PyTorch arithmetic, element for
    element); a windowed pool's output stays channels-last."""
    a, t = op.ir, op.tensors
    _int8(x, 4)
    n, c, h, w = x.shape
    if t["m"].numel() != 1 or t["n"].numel() != 1:
        raise Unsupported("average pool with a multiplier per channel")
    if a.kernel_size is None:
        ho = wo = 1
        sums = b.scratch(n * c, torch.int32)
        b.step(Kind.SUM_HW, [b.nhwc(x), sums], [n, h * w, c])
    else:
        (kh, kw), (sh, sw) = a.kernel_size, a.stride
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise Unsupported("average pool window larger than its input")
        sums = b.scratch(n * ho * wo * c, torch.int32)
        b.step(Kind.SUM_POOL, [b.nhwc(x), sums], [n, h, w, c, kh, kw, sh, sw, ho, wo])
    m, shift = t["m"].reshape(1).expand(c), t["n"].reshape(1).expand(c)
    half = half_of(shift)
    bias = torch.full((c,), -a.window * a.input_zero_point, dtype=torch.int32)
    out = b.value((n, c, ho, wo), torch.int8, a.kernel_size is not None)
    b.step(Kind.REQUANT, [sums, b.const(bias), b.const(m), b.const(shift), b.const(half), -1, -1, out.slot],
           [n * ho * wo, c, 0, a.zero_point, a.lo, a.hi])
    return out


def _flatten(b: Builder, op: ops.Flatten, x: Value) -> Value:
    """A view of a tensor in logical order; a channels-last int8 conv output is transposed, as the op's C path."""
    a = op.ir
    shape = tuple(torch.empty(x.shape, device="meta").flatten(a.start_dim, a.end_dim).shape)
    if x.logical_order():
        return Value(x.slot, shape, x.dtype)
    if not (x.dtype == torch.int8 and a.start_dim == 1 and a.end_dim in (-1, 3)):
        raise Unsupported("partial flatten of a channels-last tensor")
    return Value(b.rows(x), shape, x.dtype)


def _unsqueeze(b: Builder, op: ops.Unsqueeze, x: Value) -> Value:
    """A view in logical order (a 1-D layer's input becomes height 1)."""
    shape = list(x.shape)
    shape.insert(op.ir.dim, 1)
    return Value(b.rows(x), tuple(shape), x.dtype)


def _squeeze(b: Builder, op: ops.Squeeze, x: Value) -> Value:
    """A view in logical order: a channels-last conv output of height 1 is transposed once, as the op's path."""
    d = op.ir.dim
    if len(x.shape) <= d or x.shape[d] != 1:
        raise Unsupported(f"squeeze({d}) of shape {x.shape}")
    return Value(b.rows(x), x.shape[:d] + x.shape[d + 1:], x.dtype)


# this backend's table: the steps of each op type, or why a type has none (its model runs op by op)
HANDLERS: dict[type, Callable[..., Value]] = {
    ir.Quantize: _quantize, ir.Dequantize: _dequantize, ir.Linear: _linear, ir.Conv2d: _conv2d,
    ir.MaxPool2d: _maxpool2d, ir.AvgPool2d: _avgpool2d, ir.Flatten: _flatten, ir.Unsqueeze: _unsqueeze,
    ir.Squeeze: _squeeze,
}
NO_PLAN: dict[type, str] = {
    ir.Pad: "an explicit pad runs op by op (the exporter and the planner fold the pads a conv reads into its "
            "own padding only in ONNX; a plan of a model with one is not built)",
    ir.Permute: "a permute runs op by op (the plan has no general transpose step)",
    ir.Reshape: "a reshape runs op by op (the plan keeps conv outputs channels-last; a reshape needs them in "
                "logical order, which only flatten's step gives)",
    ir.Table: "a lookup table runs op by op (the plan has no table step)",
    ir.Concat: "a concat runs op by op (the plan's values have one producer each)",
    ir.Recurrent: "an LSTM / GRU runs op by op (its steps are a loop the plan has no step for): the model "
                  "falls back to op-by-op execution",
    ir.L2Normalize: "an L2 normalisation runs op by op (the plan has no reduction step): the model falls back to "
                    "op-by-op execution",
    ir.Slice: "a slice runs op by op (the plan keeps conv outputs channels-last and has no strided copy step): the "
              "model falls back to op-by-op execution",
    ir.LayerNorm: "an integer LayerNorm runs op by op (the plan has no reduction step): the model falls back to "
                  "op-by-op execution",
    ir.Magnitude: "an integer magnitude runs op by op (the plan has no two-input elementwise step): the model falls "
                  "back to op-by-op execution",
}


__all__ = ["HANDLERS", "INPUT", "NO_PLAN", "Builder", "Kind", "Unsupported", "Value"]

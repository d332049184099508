"""A compiled runner for a whole :class:`~lowbit.integer.model.IntegerModel`: every layer's kernel in one C call.

At batch 1 the kernels of a small model take a few microseconds each, and the
Python around them (allocating each output, layout views, ctypes argument
conversion, geometry) costs as much again per op. A :class:`Plan` does that
work once per input shape: it lays the model out as an array of steps
(``csrc/plan.c``), each a call to one of the kernels the op-by-op path uses,
with the same arguments and the same memory layouts, and allocates every
intermediate buffer. A forward pass is then one ``lowbit_run_plan`` call: the
results are the same bytes as the op-by-op path's.

A plan covers the VNNI path only: input quantization of float32, dense convs
(implicit GEMM and im2col), depthwise convs, max pooling, global average
pooling, flatten, linear layers (requantizing, with a residual input, or
dequantizing the output) and the output dequantization. A model with anything
else, or with a layer switched off the default kernels (``use_cext``,
``use_vnni``, ``use_implicit``), keeps the op-by-op path; so does an input with
a NaN or an infinity (the C quantizer reports it; PyTorch's ops handle it).
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import torch

from lowbit.integer import cext, kernels, ops, vnni

if TYPE_CHECKING:
    from lowbit.integer.model import IntegerModel

STEP_BUFS, STEP_ARGS = 10, 20
INPUT = 0  # slot of the model input; -1 is a NULL pointer


class Step(ctypes.Structure):
    """``struct lowbit_step`` of ``csrc/plan.c``: a kind, buffer slots (-1: NULL) and integer arguments."""

    _fields_ = [("kind", ctypes.c_int64), ("buf", ctypes.c_int64 * STEP_BUFS), ("arg", ctypes.c_int64 * STEP_ARGS),
                ("real", ctypes.c_double)]


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
        return _prod(self.shape)

    def order_free(self) -> bool:
        """NCHW and NHWC order are the same bytes: a 4-D tensor of one channel or one pixel."""
        return len(self.shape) == 4 and (self.shape[1] == 1 or self.shape[2] * self.shape[3] == 1)

    def logical_order(self) -> bool:
        """Stored in logical (row-major) order: a flat view of the buffer is the tensor."""
        return not self.channels_last or self.order_free()


def _prod(shape) -> int:
    p = 1
    for s in shape:
        p *= s
    return p


class _Builder:
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
        return Value(self.scratch(_prod(shape), dtype), shape, dtype, channels_last)

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


def _quantize(b: _Builder, op: ops.Quantize, x: Value) -> Value:
    """float32 -> int8 codes, as the op's C path (lowbit_quantize_f32) computes them."""
    if x.dtype != torch.float32:
        raise Unsupported(f"quantize of {x.dtype}")
    a, out = op.attrs, b.value(x.shape, torch.int8)
    b.step(Kind.QUANTIZE, [b.rows(x), out.slot], [x.numel, a["zero_point"], a["lo"], a["hi"]], real=float(op.inv))
    return out


def _dequantize(b: _Builder, op: ops.Dequantize, x: Value) -> Value:
    """int8 codes -> float32 ``(q - z) * s``, elementwise (so in the input's layout)."""
    _int8(x)
    out = Value(b.scratch(x.numel, torch.float32), x.shape, torch.float32, x.channels_last)
    scale = float(torch.tensor(op.attrs["scale"], dtype=torch.float32))
    b.step(Kind.DEQUANT_CODES, [x.slot, out.slot], [x.numel, op.attrs["zero_point"]], real=scale)
    return out


def _output_stage(b: _Builder, op: ops._Layer, residual: int) -> tuple[list[int], list[int]]:
    """The epilogue buffers (m, n, half, residual, m2) and arguments (requant, res_zp, zp, lo, hi) of a GEMM or
    implicit conv step: fused requantization, or raw int32 for a dequantizing layer."""
    if op.dequant:
        return [-1, -1, -1, -1, -1], [0, 0, 0, 0, 0]
    r = op._requant_spec
    return ([b.const(r.m), b.const(r.n), b.const(r.half), residual, b.const(r.m2)],
            [1, r.res_zp, r.zp, r.lo, r.hi])


def _dequant_out(b: _Builder, op: ops._Layer, shape, channels_last: bool, residual: Value | None) -> Value:
    """The float32 output of a dequantizing layer; only the one C pass the op uses (no residual, no activation)."""
    if residual is not None or op.attrs.get("act", "none") != "none":
        raise Unsupported("an output layer with a residual or an activation dequantizes in PyTorch")
    return b.value(shape, torch.float32, channels_last)


def _layer_out(b: _Builder, op: ops._Layer, shape, rows: int, o: int, channels_last: bool,
               residual: Value | None) -> tuple[Value, int]:
    """A layer's output value and the slot its GEMM writes: int8 codes, or for a dequantizing layer int32
    accumulators that :func:`_finish_dequant` turns into floats."""
    if not op.dequant:
        out = b.value(shape, torch.int8, channels_last)
        return out, out.slot
    out = _dequant_out(b, op, shape, channels_last, residual)
    return out, b.scratch(rows * o, torch.int32)


def _finish_dequant(b: _Builder, op: ops._Layer, acc: int, out: Value, bias: torch.Tensor, rows: int,
                    o: int) -> None:
    """float32 ``(acc + bias) * acc_scale`` (lowbit_dequant_rows) for a dequantizing layer; nothing otherwise."""
    if op.dequant:
        b.step(Kind.DEQUANT_ROWS, [acc, b.const(bias), b.const(op.acc_scale64), out.slot], [rows, o])


def _linear(b: _Builder, op: ops.Linear, x: Value, residual: Value | None = None) -> Value:
    """The VNNI GEMM on the input rows (int8 when K % 4 == 0, else packed), the epilogue fused."""
    _int8(x)
    packed = op.packed(op.tensors["weight"])
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


def _conv_residual(b: _Builder, residual: Value | None, shape, dequant: bool) -> int:
    """The NHWC slot of a conv's residual input (it is added in the conv's channels-last rows)."""
    if residual is None or dequant:
        return -1
    _int8(residual, 4)
    if residual.shape != tuple(shape):
        raise Unsupported("residual of another shape")
    return b.nhwc(residual)


def _conv2d(b: _Builder, op: ops.Conv2d, x: Value, residual: Value | None = None) -> Value:
    """Dense conv as the implicit-GEMM VNNI kernel (C % 4 == 0) or im2col + VNNI GEMM; depthwise in C."""
    _int8(x, 4)
    if op.depthwise:
        return _depthwise(b, op, x, residual)
    packed = op.packed(op.weight_mat) if op.attrs["groups"] == 1 else None
    if packed is None:
        raise Unsupported("conv without the VNNI GEMM")
    w, col_add = packed
    n, c, h, wd = x.shape
    geo, (ho, wo) = op._conv_geometry(h, wd)
    (sh, sw), (ph, pw), (dh, dw) = geo
    (kh, kw), o, rows, pad = op.kernel, w.n, n * ho * wo, op.attrs["input_zero_point"]
    res = _conv_residual(b, residual, (n, o, ho, wo), op.dequant)
    out, dst = _layer_out(b, op, (n, o, ho, wo), rows, o, True, residual)
    epi_bufs, epi_args = _output_stage(b, op, res)
    hp, wp, src = h + 2 * ph, wd + 2 * pw, b.nhwc(x)
    if op.use_implicit and vnni.implicit_conv_ok(c, op.kernel):
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


def _depthwise(b: _Builder, op: ops.Conv2d, x: Value, residual: Value | None) -> Value:
    """Depthwise conv (C kernel, int32 rows) then the C epilogue, as the op's depthwise path."""
    a, t = op.attrs, op.tensors
    n, c, h, wd = x.shape
    if c != a["groups"]:
        raise Unsupported("depthwise conv on another channel count")
    (kh, kw), (sh, sw) = op.weight_hwc.shape[:2], kernels.pairs(a["stride"])
    (ph, pw), (dh, dw) = kernels.pairs(a["padding"]), kernels.pairs(a["dilation"])
    ho, wo = kernels.out_size(h, kh, sh, ph, dh), kernels.out_size(wd, kw, sw, pw, dw)
    rows, bias = n * ho * wo, t["bias"].to(torch.int32)
    res = _conv_residual(b, residual, (n, c, ho, wo), op.dequant)
    acc = b.scratch(rows * c, torch.int32)
    b.step(Kind.DEPTHWISE, [b.nhwc(x), b.const(op.weight_hwc), acc],
           [n, h, wd, c, kh, kw, sh, sw, ph, pw, dh, dw, a["input_zero_point"], ho, wo])
    if op.dequant:
        out = _dequant_out(b, op, (n, c, ho, wo), True, residual)
        _finish_dequant(b, op, acc, out, bias, rows, c)
        return out
    out = b.value((n, c, ho, wo), torch.int8, True)
    b.step(Kind.REQUANT, [acc, b.const(bias), b.const(t["m"]), b.const(t["n"]), b.const(op.half), res,
                          b.const(t.get("m2")), out.slot],
           [rows, c, a.get("residual_zero_point", 0), a["zero_point"], a["lo"], a["hi"]])
    return out


def _maxpool2d(b: _Builder, op: ops.MaxPool2d, x: Value) -> Value:
    """The op's C path: NHWC int8, no dilation, no ceil mode."""
    a = op.attrs
    _int8(x, 4)
    if a["dilation"] != [1, 1] or a["ceil_mode"]:
        raise Unsupported("max pool with dilation or ceil mode")
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = op._geometry(h, w)
    out = b.value((n, c, ho, wo), torch.int8, True)
    b.step(Kind.MAXPOOL, [b.nhwc(x), out.slot], [n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo])
    return out


def _avgpool2d(b: _Builder, op: ops.AvgPool2d, x: Value) -> Value:
    """Global average pool: int32 window sums, then the C epilogue with bias ``-window * z`` and the pool's
    multiplier for every channel (the op's PyTorch arithmetic, element for element)."""
    a, t = op.attrs, op.tensors
    _int8(x, 4)
    n, c, h, w = x.shape
    if a["kernel_size"] is not None or t["m"].numel() != 1 or t["n"].numel() != 1:
        raise Unsupported("average pool with a window")
    sums = b.scratch(n * c, torch.int32)
    b.step(Kind.SUM_HW, [b.nhwc(x), sums], [n, h * w, c])
    m, shift = t["m"].reshape(1).expand(c), t["n"].reshape(1).expand(c)
    half = (torch.ones_like(shift) << shift) >> 1
    bias = torch.full((c,), -a["window"] * a["input_zero_point"], dtype=torch.int32)
    out = b.value((n, c, 1, 1), torch.int8)
    b.step(Kind.REQUANT, [sums, b.const(bias), b.const(m), b.const(shift), b.const(half), -1, -1, out.slot],
           [n, c, 0, a["zero_point"], a["lo"], a["hi"]])
    return out


def _flatten(b: _Builder, op: ops.Flatten, x: Value) -> Value:
    """A view of a tensor in logical order; a channels-last int8 conv output is transposed, as the op's C path."""
    a = op.attrs
    shape = tuple(torch.empty(x.shape, device="meta").flatten(a["start_dim"], a["end_dim"]).shape)
    if x.logical_order():
        return Value(x.slot, shape, x.dtype)
    if not (x.dtype == torch.int8 and a["start_dim"] == 1 and a["end_dim"] in (-1, 3)):
        raise Unsupported("partial flatten of a channels-last tensor")
    return Value(b.rows(x), shape, x.dtype)


HANDLERS: dict[str, Callable[..., Value]] = {
    "quantize": _quantize, "dequantize": _dequantize, "linear": _linear, "conv2d": _conv2d,
    "maxpool2d": _maxpool2d, "avgpool2d": _avgpool2d, "flatten": _flatten,
}


# ---------------------------------------------------------------- the plan


def _layers_on_defaults(layers: list[ops._Layer]) -> bool:
    return all(op.use_cext and op.use_vnni and op.use_implicit for op in layers)


class Plan:
    """An IntegerModel's steps for one input shape and thread count, with every buffer but the output allocated.
    :meth:`run` returns the model's output, or None where the op-by-op path must run (a NaN or an infinity in
    the input). Not thread-safe: :class:`PlanCache` serializes the calls."""

    def __init__(self, model: IntegerModel, shape: tuple[int, ...], threads: int, max_bytes: int) -> None:
        lib = cext.library()
        if lib is None or not vnni.available():
            raise Unsupported("no VNNI kernels")
        if lib.lowbit_plan_step_size() != ctypes.sizeof(Step):
            raise Unsupported("step layout differs from csrc/plan.c")
        self.nodes = list(model.nodes)
        self.layers = [n.op for n in self.nodes if isinstance(n.op, ops._Layer)]
        out = self._build(model, shape, max_bytes)
        self._set_output(out)
        self._threads, self._run = threads, lib.lowbit_run_plan

    def _build(self, model: IntegerModel, shape: tuple[int, ...], max_bytes: int) -> Value:
        b = _Builder(max_bytes)
        env = {model.input_name: Value(INPUT, tuple(shape), torch.float32)}
        for node in self.nodes:
            handler = HANDLERS.get(node.kind)
            if handler is None or not 1 <= len(node.inputs) <= (2 if node.kind in ("linear", "conv2d") else 1):
                raise Unsupported(f"op {node.kind} with {len(node.inputs)} inputs")
            env[node.output] = handler(b, node.op, *(env[i] for i in node.inputs))
        out = env[model.output_name]
        if out.slot == INPUT or b.buffers[out.slot] is None:
            raise Unsupported("the output is the input")
        self.buffers, self.steps = b.buffers, (Step * max(len(b.steps), 1))()
        for s, (kind, bufs, args, real) in zip(self.steps, b.steps):
            s.kind, s.real = kind, real
            s.buf[:] = bufs + [-1] * (STEP_BUFS - len(bufs))
            s.arg[:] = args + [0] * (STEP_ARGS - len(args))
        self.n_steps = len(b.steps)
        return out

    def _set_output(self, out: Value) -> None:
        """The output's slot gets a new tensor on every call (never a buffer the next call reuses)."""
        self.out_slot, self.out_dtype = out.slot, out.dtype
        if out.channels_last:
            n, c, h, w = out.shape
            self.out_shape, self.out_perm = (n, h, w, c), (0, 3, 1, 2)
        else:
            self.out_shape, self.out_perm = out.shape, None
        self.buffers[out.slot] = None
        self.bufs = (ctypes.c_void_p * len(self.buffers))(*(0 if t is None else t.data_ptr() for t in self.buffers))
        self.steps_addr, self.bufs_addr = ctypes.addressof(self.steps), ctypes.addressof(self.bufs)

    def enabled(self) -> bool:
        """Every layer on its default kernels (tests switch layers to other paths to compare them)."""
        return _layers_on_defaults(self.layers)

    def run(self, x: torch.Tensor) -> torch.Tensor | None:
        x = x.contiguous()
        out = torch.empty(self.out_shape, dtype=self.out_dtype)
        self.bufs[INPUT], self.bufs[self.out_slot] = x.data_ptr(), out.data_ptr()
        rc = self._run(self.steps_addr, self.n_steps, self.bufs_addr, self._threads)
        if rc < 0:
            raise RuntimeError(f"lowbit_run_plan: bad step ({rc})")
        if rc:
            return None  # a NaN or an infinity in the input
        return out.permute(self.out_perm) if self.out_perm else out


def _same_nodes(a: list, b: list) -> bool:
    """The same node objects in the same order (a plan holds pointers into their weights)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


class PlanCache:
    """An IntegerModel's plans, one per (input shape, thread count), the most recent :attr:`SIZE` kept (None for
    a model or shape no plan runs), each with the nodes it was built from: a changed node list is planned anew.
    One call at a time: a concurrent call gets None (the op-by-op path)."""

    SIZE = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: OrderedDict[tuple, tuple[list, Plan | None]] = OrderedDict()

    def __getstate__(self) -> dict:  # copies and pickles start empty (plans hold raw pointers)
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def run(self, model: IntegerModel, x: torch.Tensor) -> torch.Tensor | None:
        """The model's output through its plan, or None: no plan for this model or input, a layer off its
        default kernels, a NaN or infinity in the input, or another call running."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or not self._lock.acquire(blocking=False):
            return None
        try:
            plan = self.get(model, tuple(x.shape), torch.get_num_threads())
            return plan.run(x) if plan is not None and plan.enabled() else None
        finally:
            self._lock.release()

    def get(self, model: IntegerModel, shape: tuple[int, ...], threads: int) -> Plan | None:
        """The plan for a float32 input of ``shape`` on ``threads`` threads, built on first use; None where no
        plan runs the model (call with the lock held, or from one thread)."""
        key = (shape, threads)
        entry = self._plans.get(key)
        if entry is None or not _same_nodes(model.nodes, entry[0]):
            try:
                plan = Plan(model, shape, threads, model.plan_max_bytes)
            except Unsupported:
                plan = None
            entry = self._plans[key] = (list(model.nodes), plan)
            while len(self._plans) > self.SIZE:
                self._plans.popitem(last=False)
        self._plans.move_to_end(key)
        return entry[1]

    def clear(self) -> None:
        """Drop every plan (and its buffers)."""
        with self._lock:
            self._plans.clear()


__all__ = ["HANDLERS", "Kind", "Plan", "PlanCache", "Step", "Unsupported", "Value"]

"""A compiled runner for a whole :class:`~lowbit.integer.model.IntegerModel`: every layer's kernel in one C call.

At batch 1 the kernels of a small model take a few microseconds each, and the
Python around them (allocating each output, layout views, ctypes argument
conversion, geometry) costs as much again per op. A :class:`Plan` does that
work once per input shape: it lays the model out as an array of steps
(``csrc/plan.c``), each a call to one of the kernels the op-by-op path uses,
with the same arguments and the same memory layouts, and allocates every
intermediate buffer. A forward pass is then one ``lowbit_run_plan`` call: the
results are the same bytes as the op-by-op path's.

How each op becomes steps is :mod:`lowbit.integer.planner`. A plan covers the
VNNI path and the binary layers' XNOR-popcount GEMM: input quantization of float32, dense convs
(implicit GEMM and im2col), depthwise convs, max pooling, global average
pooling, flatten, linear layers (requantizing, with a residual input, or
dequantizing the output) and the output dequantization, for a model of one input (a model of several
inputs runs op by op: the steps have one input buffer, slot 0). A model with anything
else keeps the op-by-op path (the planner raises :class:`~lowbit.integer.planner.Unsupported`,
the only exception the cache turns into "no plan"; any other is a bug and propagates).
Only ``Kernels.PLAN`` (:mod:`lowbit.integer.backend`) uses a plan. An input with a NaN
or an infinity raises the :class:`~lowbit.errors.DataError` the simulation
raises (the C quantizer counts them).

Every step's buffers and arguments are checked when the plan is built, by the
same functions that check the op-by-op calls (:mod:`lowbit.native.guard`), so
``lowbit_run_plan`` never sees a buffer too small for what a step touches.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections import OrderedDict
from operator import attrgetter
from typing import TYPE_CHECKING

import torch

from lowbit.errors import ShapeError
from lowbit.functional._checks import check_tensor
from lowbit.native import cext, guard
from lowbit.integer import vnni
from lowbit.integer import ir
from lowbit.integer.planner import HANDLERS, INPUT, Builder, Kind, Unsupported, Value

if TYPE_CHECKING:
    from lowbit.integer.model import IntegerModel

STEP_BUFS, STEP_ARGS = 10, 20


class Step(ctypes.Structure):
    """``struct lowbit_step`` of ``csrc/plan.c``: a kind, buffer slots (-1: NULL) and integer arguments."""

    _fields_ = [("kind", ctypes.c_int64), ("buf", ctypes.c_int64 * STEP_BUFS), ("arg", ctypes.c_int64 * STEP_ARGS),
                ("real", ctypes.c_double)]


class Plan:
    """An IntegerModel's steps for one input shape and thread count, with every buffer but the output allocated.
    :meth:`run` returns the model's output. Not thread-safe: :class:`PlanCache` serializes the calls."""

    def __init__(self, model: IntegerModel, shape: tuple[int, ...], threads: int, max_bytes: int) -> None:
        lib = cext.library()
        if lib is None or not vnni.available():
            raise Unsupported("no VNNI kernels")
        if lib.lowbit_plan_step_size() != ctypes.sizeof(Step):
            raise Unsupported("step layout differs from csrc/plan.c")
        self.shape = torch.Size(shape)
        b, out = self._build(model, shape, max_bytes)
        check_steps(b.steps, b.buffers, guard.Buf(torch.float32, math.prod(shape)), out.slot,
                    guard.Buf(out.dtype, math.prod(out.shape)), threads)
        self._set_steps(b.steps)
        self.buffers = b.buffers
        self._set_output(out)
        self._threads, self._run = threads, lib.lowbit_run_plan

    @staticmethod
    def _build(model: IntegerModel, shape: tuple[int, ...], max_bytes: int) -> tuple[Builder, Value]:
        """Every node's steps, in order (:mod:`lowbit.integer.planner`), and the output value."""
        if len(model.inputs) != 1:
            raise Unsupported("several inputs (a plan has one input buffer: the model runs op by op)")
        b = Builder(max_bytes)
        env = {model.input_name: Value(INPUT, tuple(shape), torch.float32)}
        for node in model.nodes:
            handler = HANDLERS.get(type(node.op.ir))
            if handler is None or not 1 <= len(node.inputs) <= (2 if isinstance(node.op.ir, ir.LAYERS) else 1):
                raise Unsupported(f"op {node.kind} with {len(node.inputs)} inputs")
            env[node.output] = handler(b, node.op, *(env[i] for i in node.inputs))
        out = env[model.output_name]
        if out.slot == INPUT:
            raise Unsupported("the output is the input")
        return b, out

    def _set_steps(self, steps: list) -> None:
        """The ctypes array of steps (unused buffer slots -1, unused arguments 0)."""
        self.n_steps, self.steps = len(steps), (Step * max(len(steps), 1))()
        for s, (kind, bufs, args, real) in zip(self.steps, steps):
            s.kind, s.real = kind, real
            s.buf[:] = bufs + [-1] * (STEP_BUFS - len(bufs))
            s.arg[:] = args + [0] * (STEP_ARGS - len(args))

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

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The output for float32 ``x`` of the plan's shape, in a new tensor; a NaN or an infinity in ``x``
        raises the simulation's :class:`~lowbit.errors.DataError`."""
        x = x.contiguous()
        if x.shape != self.shape or x.dtype != torch.float32 or x.device.type != "cpu":
            raise ShapeError(f"this plan runs float32 CPU inputs of shape {self.shape}, got {x.dtype} "
                             f"{tuple(x.shape)} on {x.device}")
        out = torch.empty(self.out_shape, dtype=self.out_dtype)
        self.bufs[INPUT], self.bufs[self.out_slot] = x.data_ptr(), out.data_ptr()
        rc = self._run(self.steps_addr, self.n_steps, self.bufs_addr, self._threads)
        if rc == -2:
            raise MemoryError("lowbit_run_plan: a step could not allocate its scratch memory (the AVX2 GEMM's int16 "
                              "rows, or bit-packed panels): free memory or run a smaller batch")
        if rc < 0:
            raise RuntimeError(f"lowbit_run_plan: bad step ({rc})")
        if rc:  # a NaN or an infinity in the input: the simulation's error
            check_tensor(x, "input")
            raise RuntimeError("lowbit_run_plan reported a non-finite input that PyTorch finds finite")
        return out.permute(self.out_perm) if self.out_perm else out


def _step_checks() -> dict:
    """Per step kind, the :mod:`lowbit.native.guard` call for its buffers ``B(i)`` and arguments ``a``, in
    the order ``csrc/plan.c`` passes them to the kernel."""
    g = guard
    return {
        Kind.QUANTIZE: lambda B, a, r, t: g.quantize_f32(B(0), a[0], r, a[1], a[2], a[3], B(1)),
        Kind.TRANSPOSE: lambda B, a, r, t: g.nhwc_to_nchw(B(0), a[0], a[1], a[2], B(1)),
        Kind.PAD_FLIP: lambda B, a, r, t: g.pad_flip_nhwc(B(0), *a[:7], B(1)),
        Kind.CONV: lambda B, a, r, t: g.conv_u8s8(B(0), *a[:12], B(1), a[12], B(2), a[13], B(3), B(4), B(5), B(6),
                                                  a[14], B(7), a[15], a[16], a[17], B(8), t),
        Kind.IM2COL: lambda B, a, r, t: g.im2col_u8(B(0), *a[:16], B(1), B(2)),
        Kind.PACK_A: lambda B, a, r, t: g.pack_a(B(0), a[0], a[1], a[2], B(1)),
        Kind.GEMM: lambda B, a, r, t: g.gemm_u8s8(B(0), a[0], a[1], a[2], B(1), a[3], B(2), a[4], B(3), B(4), B(5),
                                                  B(6), a[5], B(7), a[6], a[7], a[8], B(8), t),
        Kind.MAXPOOL: lambda B, a, r, t: g.maxpool_nhwc(B(0), *a[:12], B(1)),
        Kind.DEQUANT_ROWS: lambda B, a, r, t: g.dequant_rows(B(0), a[0], a[1], B(1), B(2), B(3)),
        Kind.REQUANT: lambda B, a, r, t: g.requant(B(0), a[0], a[1], 0, 0, B(1), B(2), B(3), B(4), B(5), a[2], B(6),
                                                   a[3], a[4], a[5], B(7)),
        Kind.SUM_HW: lambda B, a, r, t: g.sum_hw(B(0), a[0], a[1], a[2], B(1)),
        Kind.SUM_POOL: lambda B, a, r, t: g.sum_pool(B(0), *a[:10], B(1)),
        Kind.DEPTHWISE: lambda B, a, r, t: g.depthwise_nhwc(B(0), *a[:4], B(1), *a[4:15], B(2)),
        Kind.DEQUANT_CODES: lambda B, a, r, t: g.dequant_codes(B(0), a[0], a[1], r, B(1)),
        Kind.BITS_PACK: lambda B, a, r, t: g.bits_pack_i8(B(0), a[0], a[1], B(1)),
        Kind.BITS_IM2COL: lambda B, a, r, t: g.bits_im2col_nhwc(B(0), *a[:14], B(1)),
        Kind.XNOR_GEMM: lambda B, a, r, t: g.xnor_gemm(B(0), a[0], B(1), a[1], a[2], a[3], a[4], B(2), B(3), B(4), t),
        Kind.BITS_UNPACK: lambda B, a, r, t: g.bits_unpack_i8(B(0), a[0], a[1], B(1)),
        Kind.BITS_SERIAL: lambda B, a, r, t: g.bits_serial_gemm(B(0), a[0], a[1], a[2], a[3], B(1), a[4], B(2), a[5],
                                                                 B(3), B(4), a[6], a[7], B(5), B(6), B(7), B(8), t),
        Kind.IM2COL_I8: lambda B, a, r, t: g.im2col_nhwc(B(0), *a[:15], B(1)),
        Kind.TERNARY_GEMM: lambda B, a, r, t: g.ternary_gemm(B(0), None, a[0], B(1), B(2), a[1], a[2], a[3], B(3), t),
    }


STEP_CHECKS = _step_checks()
_REQUANT_BUFS = {Kind.CONV: (3, 13), Kind.GEMM: (3, 4), Kind.REQUANT: (2, None)}  # first of m, n, half, res, m2;
# the argument that switches the requantization on (None: always on)


def check_steps(steps: list, buffers: list, input_buf: guard.Buf, out_slot: int, out_buf: guard.Buf,
                threads: int) -> None:
    """Check every step against what its kernel touches (:mod:`lowbit.native.guard`): slot 0 is the input,
    ``out_slot`` the output (both given per call, described by ``input_buf``, ``out_buf``), other slots the
    plan's own tensors, whose requantization values are checked too."""
    for kind, bufs, args, real in steps:
        slots = list(bufs) + [-1] * (STEP_BUFS - len(bufs))

        def B(i: int, slots=slots):  # as in plan.c
            s = slots[i]
            if s < 0:
                return None
            return input_buf if s == INPUT else out_buf if s == out_slot else guard.buf(buffers[s])

        check = STEP_CHECKS.get(kind)
        if check is None:
            raise Unsupported(f"no check for step kind {kind}")
        check(B, list(args) + [0] * (STEP_ARGS - len(args)), real, threads)
        if kind in _REQUANT_BUFS:
            first, switch = _REQUANT_BUFS[kind]
            if switch is None or args[switch]:
                t = [None if slots[first + j] < 0 else buffers[slots[first + j]] for j in (0, 1, 2, 4)]
                guard.requant_values(f"plan step {kind.name}", t[0], t[1], t[2], t[3])


_OP = attrgetter("op")


class PlanCache:
    """An IntegerModel's plans, one per (input shape, thread count), the most recent :attr:`SIZE` kept (None for
    a model or shape no plan runs), each with the nodes it was built from (a plan holds pointers into their
    weights): a changed node list is planned anew.
    One call at a time: a concurrent call gets None (the op-by-op path)."""

    SIZE = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: OrderedDict[tuple, tuple[tuple, Plan | None]] = OrderedDict()

    def __getstate__(self) -> dict:  # copies and pickles start empty (plans hold raw pointers)
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def run(self, model: IntegerModel, x: torch.Tensor) -> torch.Tensor | None:
        """The model's output through its plan, or None: no plan for this model or input, a layer off its
        default kernels, or another call running. A NaN or an infinity in ``x`` raises a DataError."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or not self._lock.acquire(blocking=False):
            return None
        try:
            plan = self.get(model, x.shape, torch.get_num_threads())
            return plan.run(x) if plan is not None else None
        finally:
            self._lock.release()

    def get(self, model: IntegerModel, shape: tuple[int, ...], threads: int) -> Plan | None:
        """The plan for a float32 input of ``shape`` on ``threads`` threads, built on first use; None where no
        plan runs the model (call with the lock held, or from one thread)."""
        key, nodes = (tuple(shape), threads), tuple(model.nodes)
        nodes += tuple(map(_OP, nodes))  # a node given another op counts as another node
        entry = self._plans.get(key)
        if entry is None or entry[0] != nodes:  # other nodes (not equal node for node): a new plan
            try:
                plan = Plan(model, key[0], threads, model.plan_max_bytes)
            except Unsupported:  # the op-by-op path runs the model; the input was checked before (check_input)
                plan = None
            entry = self._plans[key] = (nodes, plan)
            while len(self._plans) > self.SIZE:
                self._plans.popitem(last=False)
        self._plans.move_to_end(key)
        return entry[1]

    def clear(self) -> None:
        """Drop every plan (and its buffers)."""
        with self._lock:
            self._plans.clear()


__all__ = ["Plan", "PlanCache", "Step"]

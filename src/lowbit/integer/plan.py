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
VNNI path only: input quantization of float32, dense convs
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
from operator import attrgetter
from typing import TYPE_CHECKING

import torch

from lowbit.integer import cext, ops, vnni
from lowbit.integer.planner import HANDLERS, INPUT, Builder, Unsupported, Value

if TYPE_CHECKING:
    from lowbit.integer.model import IntegerModel

STEP_BUFS, STEP_ARGS = 10, 20


class Step(ctypes.Structure):
    """``struct lowbit_step`` of ``csrc/plan.c``: a kind, buffer slots (-1: NULL) and integer arguments."""

    _fields_ = [("kind", ctypes.c_int64), ("buf", ctypes.c_int64 * STEP_BUFS), ("arg", ctypes.c_int64 * STEP_ARGS),
                ("real", ctypes.c_double)]


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
        self.layers = [n.op for n in model.nodes if isinstance(n.op, ops._Layer)]
        b, out = self._build(model, shape, max_bytes)
        self._set_steps(b.steps)
        self.buffers = b.buffers
        self._set_output(out)
        self._threads, self._run = threads, lib.lowbit_run_plan

    @staticmethod
    def _build(model: IntegerModel, shape: tuple[int, ...], max_bytes: int) -> tuple[Builder, Value]:
        """Every node's steps, in order (:mod:`lowbit.integer.planner`), and the output value."""
        b = Builder(max_bytes)
        env = {model.input_name: Value(INPUT, tuple(shape), torch.float32)}
        for node in model.nodes:
            handler = HANDLERS.get(node.kind)
            if handler is None or not 1 <= len(node.inputs) <= (2 if node.kind in ("linear", "conv2d") else 1):
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

    def enabled(self) -> bool:
        """Every layer on its default kernels (tests switch layers to other paths to compare them)."""
        return all(op.use_cext and op.use_vnni and op.use_implicit for op in self.layers)

    def run(self, x: torch.Tensor) -> torch.Tensor | None:
        """The output for float32 ``x`` of the plan's shape, in a new tensor; None for a non-finite input."""
        x = x.contiguous()
        out = torch.empty(self.out_shape, dtype=self.out_dtype)
        self.bufs[INPUT], self.bufs[self.out_slot] = x.data_ptr(), out.data_ptr()
        rc = self._run(self.steps_addr, self.n_steps, self.bufs_addr, self._threads)
        if rc < 0:
            raise RuntimeError(f"lowbit_run_plan: bad step ({rc})")
        if rc:
            return None  # a NaN or an infinity in the input
        return out.permute(self.out_perm) if self.out_perm else out


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
        default kernels, a NaN or infinity in the input, or another call running."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or not self._lock.acquire(blocking=False):
            return None
        try:
            plan = self.get(model, x.shape, torch.get_num_threads())
            return plan.run(x) if plan is not None and plan.enabled() else None
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
            except Exception:  # noqa: BLE001 - Unsupported, or an input the ops reject: they say why, op by op
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

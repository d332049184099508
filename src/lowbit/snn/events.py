"""Event-driven inference of a converted spiking net at batch 1: work only for the spikes.

:class:`EventRuntime` runs an :class:`~lowbit.snn.lower.EventProgram` (a :class:`~lowbit.snn.convert.SpikingNet`
lowered by :func:`~lowbit.snn.lower.lower`) for ``T`` steps in one C call (``csrc/events.c``): the first layer's
current is computed once (the analog image is constant) and only its neurons that can reach threshold within
``T`` steps are visited (with leak in (0, 1], ``v_t <= max(v_0, 0) + t max(I, 0)``; a float rounding margin kept),
and every later layer receives the list of the inputs
that spiked this step, with their integer spike counts, and adds those inputs' weight columns to the membranes
they reach (a pure add for a single spike, one small integer multiply for an augmented one). Neurons integrate,
fire and reset as :func:`~lowbit.snn.neurons.neuron_step` does; the max-pool gate is
:class:`~lowbit.snn.pooling.MaxPoolGate`'s. The readout is the mean over steps of the last layer's output, as
:func:`lowbit.snn.run` gives it; the counts are per inference (batch 1).

:class:`DenseRunner` is the same computation in PyTorch on whole spike maps every step (``conv2d`` / ``linear``
over every input, spiking or not): the reference the C runtime is tested against, the fallback where no C
compiler works, and the dense time-stepped baseline it is timed against.

>>> import torch
>>> from torch import nn
>>> from lowbit import snn
>>> _ = torch.manual_seed(0)
>>> ann = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).eval()
>>> net = snn.convert(ann, [torch.rand(16, 1, 8, 8)], neuron=snn.NeuronSpec(spikes=snn.Spikes.TERNARY))
>>> rt = EventRuntime.from_net(net)
>>> image = torch.rand(1, 8, 8)                 # (C, H, W) or (1, C, H, W)
>>> r, sim = rt.run(image, time_steps=[4, 8]), snn.run(net, image[None], [4, 8])
>>> torch.allclose(r.outputs[8], sim.outputs[8][0], atol=1e-5), r.synops[8] == sim.synops[8]
(True, True)
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.native import cext, guard
from lowbit.snn.convert import SpikingNet
from lowbit.snn.lower import AvgPool, EventConv, EventProgram, Flatten, Gate, Neurons, lower
from lowbit.snn.neurons import NeuronSpec, Reset, Spikes
from lowbit.snn.runner import check_time_steps

_KERNEL = "lowbit_snn_run"
_SPIKES = {Spikes.BINARY: 0, Spikes.TERNARY: 1, Spikes.AUGMENTED: 2}


class Engine(enum.Enum):
    """Who runs the program: the C event kernel, or PyTorch on dense maps (:class:`DenseRunner`)."""

    C = "c"
    TORCH = "torch"


@dataclass
class EventRun:
    """What one inference measured, at each ``T``: the readout ``[classes]``; per stage (by node name) the
    events and spikes the neuron layers sent; the synaptic operations of the spike-driven layers (one per
    weight added); and the analog layer's MACs (once: its input is constant)."""

    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    spikes: dict[int, dict[str, int]] = field(default_factory=dict)
    events: dict[int, dict[str, int]] = field(default_factory=dict)
    synops: dict[int, int] = field(default_factory=dict)
    input_macs: int = 0


def fire(v: torch.Tensor, count: torch.Tensor, spec: NeuronSpec, theta: torch.Tensor, theta_neg: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fire and reset integrated membranes ``v``: ``(s, v, count)`` with ``s`` integer spike counts (float
    dtype); the forward of :func:`~lowbit.snn.neurons.neuron_step` after its integration, without the
    surrogate's bookkeeping."""
    if spec.spikes is Spikes.AUGMENTED:
        s = torch.floor(v / theta).clamp(0, spec.max_spikes)
    else:
        s = ((v - theta) / theta >= 0).to(v.dtype)
    if spec.signed:
        if spec.spikes is Spikes.TERNARY:
            neg = ((-v - theta_neg) / theta_neg >= 0).to(v.dtype) * (count > 0).to(v.dtype)
        else:
            neg = torch.minimum(torch.floor(-v / theta_neg).clamp(0, spec.max_spikes), count.clamp(min=0))
        s = s - neg
    if spec.reset is Reset.SUBTRACT:
        v = v - torch.where(s >= 0, s * theta, s * theta_neg)
    else:
        v = v * (1.0 - (s != 0).to(v.dtype))
    return s, v, count + s


class DenseRunner:
    """The program on whole maps, every step, in PyTorch (batch 1; NCHW maps, the weights re-laid once).

    ``run(x, T, count=False)`` gives the readout after each step ``[T, classes]`` (and, with ``count``, an
    :class:`EventRun`'s counts). Sum pools use ``avg_pool2d(divisor_override=1)``; the flatten of a
    channels-last program is ``permute(0, 2, 3, 1)``.
    """

    def __init__(self, program: EventProgram) -> None:
        self.program = program
        self.ops: list[tuple] = []
        for st in program.stages:
            if isinstance(st, Flatten) and not self.ops:
                continue  # the image's flatten: image() gives the first synapse its input in channels-last order
            if isinstance(st, EventConv):
                w = st.weight.permute(3, 0, 1, 2).contiguous()  # [Cout, Cin, kh, kw]
                flat = st.in_shape[:2] == (1, 1) and st.out_shape[:2] == (1, 1)
                self.ops.append(("linear" if flat else "conv", st, w.reshape(w.shape[0], -1) if flat else w))
            elif isinstance(st, Neurons):
                c = st.shape[2]
                view = (1, c) if st.shape[:2] == (1, 1) else (1, c, 1, 1)
                self.ops.append(("neurons", st, st.threshold.reshape(view), st.negative_threshold.reshape(view)))
            elif isinstance(st, Gate):
                self.ops.append(("gate", st, st.amplitude.reshape(1, -1, 1, 1)))
            elif isinstance(st, AvgPool):
                self.ops.append(("sum", st))
            elif isinstance(st, Flatten):
                self.ops.append(("flatten", st))

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """The first synapse's input: the image ``(1, C, H, W)``, or the vector in channels-last order."""
        first = self.program.synapses[0]
        if first.in_shape[:2] == (1, 1):
            return (x.permute(0, 2, 3, 1) if x.ndim == 4 else x).reshape(1, -1)
        return x

    @torch.no_grad()
    def run(self, x: torch.Tensor, steps: int, count: bool = False) -> tuple[torch.Tensor, EventRun | None]:
        """``x`` ``(1, *input_shape)`` float32; the readout sums after each step ``[steps, classes]``."""
        counts = EventRun() if count else None
        fan = {st.name: _fan_out_nchw(st) for st in self.program.synapses} if count else {}
        spikes: dict[str, int] = {}
        events: dict[str, int] = {}
        synops = 0
        state: dict[str, object] = {}
        analog = None
        total = torch.zeros(1, self.program.classes)
        rows = []
        for t in range(steps):
            h = self.image(x)
            for op in self.ops:
                kind, st = op[0], op[1]
                if kind in ("conv", "linear"):
                    if st.analog and analog is not None:
                        h = analog
                    else:
                        if count and not st.analog:
                            synops += int(((h != 0) * fan[st.name]).sum())
                        h = (F.linear(h, op[2], st.bias) if kind == "linear" else
                             F.conv2d(h, op[2], st.bias, st.stride, st.padding))
                        if st.analog:
                            analog = h
                elif kind == "neurons":
                    v, cnt = state.get(st.name, (None, None))
                    if v is None:
                        v = torch.zeros_like(h) + (st.spec.initial_potential * op[2] if st.spec.initial_potential
                                                   else 0.0)
                        cnt = torch.zeros_like(h)
                    h, v, cnt = fire(st.spec.leak * v + h, cnt, st.spec, op[2], op[3])
                    state[st.name] = (v, cnt)
                    if count:
                        spikes[st.name] = spikes.get(st.name, 0) + int(h.abs().sum())
                        events[st.name] = events.get(st.name, 0) + int((h != 0).sum())
                elif kind == "gate":
                    c = state.get(st.name)
                    c = h * op[2] if c is None else c + h * op[2]  # running counts in amplitude units
                    state[st.name] = c
                    _, idx = F.max_pool2d(c, st.kernel, st.stride, st.padding, return_indices=True)
                    h = h.flatten(2).gather(2, idx.flatten(2)).reshape(idx.shape)
                elif kind == "sum":
                    h = F.avg_pool2d(h, st.kernel, st.stride, st.padding, divisor_override=1)
                else:  # flatten, channels-last order
                    h = h.permute(0, 2, 3, 1).reshape(1, -1)
            total = total + h.reshape(1, -1)
            rows.append(total)
            if count:
                counts.spikes[t + 1], counts.events[t + 1] = dict(spikes), dict(events)
                counts.synops[t + 1] = synops
        return torch.cat(rows), counts


def _fan_out_nchw(st: EventConv) -> torch.Tensor:
    """The fan-out of each input of ``st`` in the layout :class:`DenseRunner` feeds it."""
    f = st.fan_out()  # (H, W, Cin)
    if st.in_shape[:2] == (1, 1) and st.out_shape[:2] == (1, 1):
        return f.reshape(1, -1)
    return f.permute(2, 0, 1)[None]


def _tables(h: int, w: int, kh: int, kw: int, cin: int) -> torch.Tensor:
    """Room for a stage's tables (the kernel fills them at the start of each call and at each step)."""
    return torch.zeros(guard.snn_table_size(h, w, kh, kw, cin), dtype=torch.int32)


def _check_finite(program: EventProgram) -> None:
    for st in program.stages:
        for name in ("weight", "bias", "threshold", "amplitude"):
            t = getattr(st, name, None)
            if t is not None and not bool(torch.isfinite(t).all()):
                raise DataError(f"{st.name}: {name} holds a NaN or an infinity; the event runtime needs finite values")


class EventRuntime:
    """A lowered spiking net on the C event kernel (or, with ``engine=Engine.TORCH`` or without a C compiler,
    on :class:`DenseRunner`: same results up to float32 summation order). Batch 1; see the module docstring.

    The stage buffers (membranes, counts, gate counts, the event lists) belong to the runtime and are checked
    once here; each :meth:`run` starts from rest and checks only its input.
    """

    def __init__(self, program: EventProgram, engine: Engine = Engine.C) -> None:
        if not isinstance(program, EventProgram):
            raise ConfigError(f"EventRuntime takes an EventProgram (lowbit.snn.lower.lower(net)), got "
                              f"{type(program).__name__}; EventRuntime.from_net(net) lowers a SpikingNet")
        if not isinstance(engine, Engine):
            raise ConfigError(f"engine must be Engine.C or Engine.TORCH, got {engine!r}")
        _check_finite(program)
        self.program = program
        self.dense = DenseRunner(program)
        self.engine = engine if cext.library() is not None else Engine.TORCH
        fan = [int(s.fan_out().sum()) for s in program.synapses if s.analog]
        self.input_macs = sum(fan)
        self.names = [st.name for st in program.stages if not isinstance(st, Flatten)]
        if self.engine is Engine.C:
            self._bind()

    @classmethod
    def from_net(cls, net: SpikingNet, engine: Engine = Engine.C) -> EventRuntime:
        """Lower ``net`` (:func:`lowbit.snn.lower.lower`) and build its runtime."""
        return cls(lower(net), engine)

    def _bind(self) -> None:
        """The program's descriptors and buffers (owned here, of fixed size), checked once by the guard."""
        stages = [st for st in self.program.stages if not isinstance(st, Flatten)]
        S = len(stages)
        params = [[0] * guard.SNN_P for _ in range(S)]
        floats = [[0.0] * guard.SNN_F for _ in range(S)]
        keep: list[list[torch.Tensor | None]] = [[None] * guard.SNN_Q for _ in range(S)]
        sizes = [1]
        membranes: dict[int, torch.Tensor] = {}  # neuron stage -> the membrane its synapse integrates into
        for s, st in enumerate(stages):
            p, f, b = params[s], floats[s], keep[s]
            if isinstance(st, EventConv):
                (h, w, cin), (ho, wo, cout) = st.in_shape, st.out_shape
                p[:15] = [guard.SNN_SYNAPSE, int(st.analog), h, w, cin, ho, wo, cout, *st.kernel, *st.stride,
                          *st.padding, int(s == S - 1)]
                nxt = stages[s + 1] if s + 1 < S else None
                target = torch.zeros(ho * wo * cout)
                b[:6] = [st.weight.contiguous(), st.bias.contiguous(), target,
                         torch.zeros(ho * wo * cout) if st.analog else None, _tables(h, w, *st.kernel, cin),
                         torch.zeros(8 * ho * wo * cout, dtype=torch.int32) if st.analog else None]  # active neurons
                f[0] = float(nxt.spec.leak) if isinstance(nxt, Neurons) else 1.0
                if isinstance(nxt, Neurons):
                    membranes[s + 1] = target
            elif isinstance(st, Neurons):
                n, c = st.shape[0] * st.shape[1] * st.shape[2], st.shape[2]
                sp = st.spec
                p[:7] = [guard.SNN_NEURONS, n, c, _SPIKES[sp.spikes], int(sp.reset is Reset.ZERO), sp.max_spikes,
                         int(sp.signed)]
                f[:2] = [float(sp.leak), float(sp.initial_potential)]
                b[:4] = [st.threshold.contiguous(), st.negative_threshold.contiguous().clone(),
                         membranes[s], torch.zeros(n, dtype=torch.int32)]
                sizes.append(n)
            else:
                (h, w, c), (ho, wo, _) = st.in_shape, st.out_shape
                kind = guard.SNN_GATE if isinstance(st, Gate) else guard.SNN_SUMPOOL
                p[:14] = [kind, 0, h, w, c, ho, wo, c, *st.kernel, *st.stride, *st.padding]
                b[:2] = ([torch.zeros(h * w * c), st.amplitude.contiguous()] if kind == guard.SNN_GATE else
                         [torch.zeros(ho * wo * c, dtype=torch.int32), torch.zeros(ho * wo * c, dtype=torch.int32)])
                b[4] = _tables(h, w, *st.kernel, c)
                sizes.append(ho * wo * c)
        self._E = max(sizes)
        self._S, self._keep = S, keep
        self._prog = torch.tensor(params, dtype=torch.int64)
        self._fprog = torch.tensor(floats, dtype=torch.float32)
        self._scratch = torch.zeros(6 * (self._E + 1), dtype=torch.int32)  # two event lists: index, position, count
        bufs = [[guard.buf(t, _KERNEL, f"stage {s} slot {j}") for j, t in enumerate(row)] for s, row in enumerate(keep)]
        first = self.program.synapses[0]
        h, w, c = first.in_shape
        guard.snn_run(guard.buf(self._prog), guard.buf(self._fprog), params, self._fprog.tolist(), bufs,
                      guard.Buf(torch.float32, h * w * c), 1, guard.Buf(torch.float32, self.program.classes),
                      guard.Buf(torch.int64, 2 * S), guard.buf(self._scratch), self._E)
        self._ptrs = (ctypes.c_void_p * (S * guard.SNN_Q))(
            *[t.data_ptr() if t is not None else None for row in keep for t in row])
        self._call = cext._lib().lowbit_snn_run
        self._x_size = h * w * c
        self._out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._max_spikes = min((n.spec.max_spikes for n in self.program.neurons), default=1)

    def _input(self, x: object) -> torch.Tensor:
        shape = tuple(self.program.input_shape)
        if (type(x) is torch.Tensor and x.dtype is torch.float32 and x.device.type == "cpu" and not x.requires_grad
                and x.is_contiguous() and (tuple(x.shape) == shape or tuple(x.shape) == (1, *shape))):
            return x if x.ndim == len(shape) + 1 else x[None]  # the common case, checked in one test
        if not isinstance(x, torch.Tensor):
            raise DataError(f"the event runtime takes a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape) == shape:
            x = x[None]
        if tuple(x.shape) != (1, *shape):
            raise ShapeError(f"the event runtime got an input of shape {tuple(x.shape)}; it takes one input "
                             f"{shape} or (1, {', '.join(map(str, shape))}) (batch 1: loop over a batch)")
        if not x.is_floating_point():
            raise DataError(f"input dtype {x.dtype}: pass a float image (x.float())")
        return x.detach().to("cpu", torch.float32).contiguous()

    def run(self, x: torch.Tensor, time_steps: Sequence[int] | int) -> EventRun:
        """One input for ``max(time_steps)`` steps from rest; the readout and counts at each ``T``."""
        steps = check_time_steps(time_steps)
        x = self._input(x)
        if self.engine is Engine.TORCH:
            if not bool(torch.isfinite(x).all()):
                raise DataError("the input holds a NaN or an infinity; clean it (torch.nan_to_num) first")
            rows, c = self.dense.run(x, steps[-1], count=True)
            return EventRun({t: rows[t - 1] / t for t in steps}, {t: c.spikes[t] for t in steps},
                            {t: c.events[t] for t in steps}, {t: c.synops[t] for t in steps}, self.input_macs)
        T = steps[-1]
        out, counts = self._launch(x, T)
        result = EventRun(input_macs=self.input_macs)
        kinds = self._prog[:, 0].tolist()
        neurons = [s for s in range(self._S) if kinds[s] == guard.SNN_NEURONS]
        synapses = [s for s in range(1, self._S) if kinds[s] == guard.SNN_SYNAPSE]  # the spike-driven ones
        for t in steps:
            c = counts[t - 1].tolist()
            result.outputs[t] = out[t - 1] / t
            result.spikes[t] = {self.names[s]: c[s][1] for s in neurons}
            result.events[t] = {self.names[s]: c[s][0] for s in neurons}
            result.synops[t] = sum(c[s][1] for s in synapses)
        return result

    def _launch(self, x: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The C call: ``x`` checked (1, *input_shape) float32; readout sums ``[T, classes]`` and counts."""
        if T * self._max_spikes > (1 << 31) - 1:
            raise ConfigError(f"time steps {T}: spike counts would overflow int32; run fewer steps")
        if x.ndim == 4 and x.shape[1] > 1:
            x = x.permute(0, 2, 3, 1).contiguous()  # channels-last, as the program reads it (one channel: as is)
        bufs = self._out.get(T)  # the output buffers of this T, reused (callers copy out of them)
        if bufs is None:
            bufs = self._out[T] = (torch.empty(T, self.program.classes), torch.empty(T, self._S, 2, dtype=torch.int64))
        out, counts = bufs
        xin = x
        if self._call(self._prog.data_ptr(), self._fprog.data_ptr(), self._ptrs, self._S, xin.data_ptr(), T,
                      out.data_ptr(), counts.data_ptr(), self._scratch.data_ptr(), self._E):
            raise DataError("the input holds a NaN or an infinity; clean it (torch.nan_to_num) first")
        return out, counts

    def readout(self, x: torch.Tensor, time_steps: int) -> torch.Tensor:
        """Just the readout ``[classes]`` after ``time_steps`` steps (the timed path: no counts unpacked)."""
        if type(time_steps) is not int or time_steps < 1:
            steps = check_time_steps(time_steps)
            if len(steps) != 1:
                raise ConfigError(f"readout takes one number of time steps, got {time_steps!r}; run() takes several")
            time_steps = steps[0]
        if self.engine is Engine.TORCH:
            rows, _ = self.dense.run(self._input(x), time_steps)
            return rows[-1] / time_steps
        out, _ = self._launch(self._input(x), time_steps)
        return out[-1] / time_steps


__all__ = ["DenseRunner", "Engine", "EventRun", "EventRuntime", "fire"]

"""The streaming delta runtime: a DeltaGRU/DeltaLSTM run at batch 1, one step at a time, in C.

Neil, Lee, Delbruck, Liu, "Delta Networks for Optimized Recurrent Network Computation", ICML 2017:
a step needs only the weight columns of the inputs and hidden units whose change exceeded the
threshold. The simulation (:class:`lowbit.delta.DeltaGRU`) zeroes the small deltas and still
multiplies dense matrices; this runtime reads only those columns, as a device does
(``csrc/delta.c``, one call per step or per sequence)::

    Δx_j = x_j - x_hat_j  sent where |Δx_j| > θ_x  (x_hat_j := x_j)      (likewise Δh of h_{t-1}, θ_h)
    acc_x += W_ih[:, j] Δx_j  for the sent j only    acc_h += W_hh[:, j] Δh_j  for the sent j only
    h_t    = GRU / LSTM gates of (acc_x, acc_h)      (:mod:`lowbit.delta.functional`)

The weights are stored column-major (``W_ih^T``, ``(I, G*H)`` row-major): the ``G*H`` weights a
column holds are contiguous, so reading one is one streamed load; the multiply-adds run along the
``G*H`` outputs (vectorised by the compiler). The gate non-linearities are float32 in C (a
polynomial ``exp``, within a few ulp of PyTorch's), so the runtime equals the simulation at the
same thresholds to float tolerance, not bit for bit: the accumulators add the same products in
another order.

**State lives in the object** (unlike the layers, whose state is explicit): a runtime is a
streaming device that holds one sequence's ``x_hat``, ``h_hat``, ``h`` (``c``) and accumulators
between calls. :meth:`DeltaRuntime.step` advances it by one step, :meth:`DeltaRuntime.run` by a
whole sequence (one C call per layer), :meth:`DeltaRuntime.reset` starts a new sequence (memories
at zero, accumulators at the biases, as :meth:`lowbit.delta.DeltaGRU.initial_state`). ``counts``
gives the columns read per layer as :class:`lowbit.delta.DeltaCounts` (at batch 1, events = columns).
With ``dense=True`` every column is read every step (``acc = b + W x``): the dense baseline with
the same loops. The fixed-point option (int8 weights, 16-bit activations, bit-exact with its
simulation) is :class:`lowbit.delta.fixed.FixedDeltaGRURuntime` (GRU) and
:class:`~lowbit.delta.fixed.FixedDeltaLSTMRuntime` (LSTM).

>>> import torch
>>> from lowbit.delta import DeltaGRU
>>> from lowbit.delta.runtime import DeltaRuntime
>>> _ = torch.manual_seed(0)
>>> layer = DeltaGRU(4, 8, theta_x=0.1, theta_h=0.1)
>>> x = torch.cumsum(0.1 * torch.randn(30, 1, 4), dim=0)
>>> rt = DeltaRuntime.from_layer(layer)
>>> y = rt.run(x[:, 0])                      # (30, 8), the top layer's h at each step
>>> torch.allclose(y, layer(x)[0][:, 0], atol=1e-5)
True
>>> h = rt.step(x[0, 0])                     # one more step of the same stream
>>> rt.reset()                               # a new sequence
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.delta.cells import _DeltaRNNBase, check_threshold
from lowbit.delta.state import DeltaCounts
from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.native import cext, guard

_KERNEL = "lowbit_delta_rnn_f32"
_NOT_FINITE = ("the input holds a NaN or an infinity; the runtime's state is unchanged. Clean the features "
               "(e.g. torch.nan_to_num) before streaming them")


class _Layer:
    """One layer's buffers: transposed weights, biases, state, counters and scratch (all contiguous)."""

    def __init__(self, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
                 gates: int) -> None:
        gh, self.input_size = w_ih.shape
        self.hidden_size, self.gates = w_hh.shape[1], gates
        f32 = torch.float32
        self.wx = w_ih.detach().to("cpu", f32).t().contiguous()  # (I, G H): column j of W_ih is row j
        self.wh = w_hh.detach().to("cpu", f32).t().contiguous()
        self.b_ih = b_ih.detach().to("cpu", f32).contiguous()
        self.b_hh = b_hh.detach().to("cpu", f32).contiguous()
        i, h = self.input_size, self.hidden_size
        self.state = torch.zeros(i + 3 * h + 2 * gh, dtype=f32)
        self.counts = torch.zeros(2, dtype=torch.int64)
        self.idx = torch.zeros(i + h + 32, dtype=torch.int32)  # + 16 slack per part (the AVX-512 stores)
        self.dv = torch.zeros(i + h + 32, dtype=f32)
        self.y_step = torch.zeros(1, h, dtype=f32)  # what step() writes (the next layer's x_step)
        self.h_view = self.y_step.view(-1)
        self.steps = 0
        self.reset()

    def reset(self) -> None:
        i, h, gh = self.input_size, self.hidden_size, self.gates * self.hidden_size
        self.state.zero_()
        self.state[i + 3 * h:i + 3 * h + gh] = self.b_ih
        self.state[i + 3 * h + gh:] = self.b_hh
        self.counts.zero_()
        self.steps = 0

    def _bufs(self, x: torch.Tensor, y: torch.Tensor, theta_x: float, theta_h: float, dense: bool) -> None:
        """The full argument check of ``lowbit_delta_rnn_f32`` (:func:`lowbit.native.guard.delta_rnn_f32`)."""
        b = guard.buf
        guard.delta_rnn_f32(b(x, _KERNEL, "x"), x.shape[0], self.input_size, self.hidden_size, self.gates,
                            b(self.wx), b(self.wh), b(self.b_ih), b(self.b_hh), b(self.state), theta_x, theta_h,
                            int(dense), b(y, _KERNEL, "y"), b(self.counts), b(self.idx), b(self.dv))

    def bind(self, x_step: torch.Tensor, theta_x: float, theta_h: float, dense: bool) -> None:
        """Check once the arguments of every later :meth:`step` (``x_step`` (1, I) is the buffer the step
        reads; this layer owns the others, of fixed size) and keep them as ctypes values."""
        self._bufs(x_step, self.y_step, theta_x, theta_h, dense)
        self._call = cext._lib().lowbit_delta_rnn_f32
        self._x_ptr = x_step.data_ptr()
        self._step_args = (1, self.input_size, self.hidden_size, self.gates, self.wx.data_ptr(),
                           self.wh.data_ptr(), self.b_ih.data_ptr(), self.b_hh.data_ptr(), self.state.data_ptr(),
                           theta_x, theta_h, int(dense), self.y_step.data_ptr(), self.counts.data_ptr(),
                           self.idx.data_ptr(), self.dv.data_ptr())

    def step(self, x_ptr: int | None = None) -> None:
        """One step on the bound ``x_step`` (or on ``x_ptr``, the data of a checked (1, I) float32 CPU
        tensor: as :meth:`bind` checks ``x_step``) into ``y_step`` (the other arguments checked by :meth:`bind`)."""
        if self._call(self._x_ptr if x_ptr is None else x_ptr, *self._step_args):
            raise DataError(_NOT_FINITE)
        self.steps += 1

    def run(self, x: torch.Tensor, theta_x: float, theta_h: float, dense: bool) -> torch.Tensor:
        """``x`` (T, I) float32 contiguous -> ``y`` (T, H); advances the state."""
        steps = x.shape[0]
        y = torch.empty(steps, self.hidden_size, dtype=torch.float32)
        self._bufs(x, y, theta_x, theta_h, dense)
        bad = cext._lib().lowbit_delta_rnn_f32(
            x.data_ptr(), steps, self.input_size, self.hidden_size, self.gates, self.wx.data_ptr(),
            self.wh.data_ptr(), self.b_ih.data_ptr(), self.b_hh.data_ptr(), self.state.data_ptr(), theta_x, theta_h,
            int(dense), y.data_ptr(), self.counts.data_ptr(), self.idx.data_ptr(), self.dv.data_ptr())
        if bad:
            raise DataError(_NOT_FINITE)
        self.steps += steps
        return y

    def count(self) -> DeltaCounts:
        x_cols, h_cols = (int(v) for v in self.counts)
        return DeltaCounts(self.input_size, self.hidden_size, self.gates, steps=self.steps, batch_steps=self.steps,
                           x_events=x_cols, x_columns=x_cols, h_events=h_cols, h_columns=h_cols)


class DeltaRuntime:
    """A streaming batch-1 delta GRU or LSTM (one or more layers) on the C kernel; see the module docstring.

    ``weights``: per layer ``(W_ih (G H, I_k), W_hh (G H, H), b_ih, b_hh)`` in ``nn.GRU``/``nn.LSTM``
    layout (``None`` biases are zeros); ``gates`` 3 (GRU) or 4 (LSTM). Layer ``k >= 1`` reads the
    hidden state of layer ``k - 1`` with threshold ``θ_h``, as :class:`lowbit.delta.DeltaGRU` does.
    Build one with :meth:`from_layer`.
    """

    required_gates: int | None = None  # DeltaGRURuntime / DeltaLSTMRuntime take one kind only

    def __init__(self, weights: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
                 gates: int, theta_x: float = 0.0, theta_h: float = 0.0, dense: bool = False) -> None:
        if cext.library() is None:
            raise RuntimeError("the delta runtime needs the C kernels, and no C compiler works here "
                               "(install gcc); lowbit.delta.DeltaGRU/DeltaLSTM compute the same in PyTorch")
        if gates not in (3, 4):
            raise ConfigError(f"gates={gates!r}: 3 (GRU) or 4 (LSTM)")
        if self.required_gates not in (None, gates):
            raise ConfigError(f"{type(self).__name__} runs {'a GRU' if self.required_gates == 3 else 'an LSTM'}; "
                              f"this layer is {'a GRU' if gates == 3 else 'an LSTM'}: use DeltaRuntime.from_layer")
        if not weights:
            raise ConfigError("weights is empty: pass one (W_ih, W_hh, b_ih, b_hh) per layer")
        self.gates, self.kind = gates, "GRU" if gates == 3 else "LSTM"
        self._theta_x, self._theta_h = check_threshold("theta_x", theta_x), check_threshold("theta_h", theta_h)
        self.dense = bool(dense)
        self.layers: list[_Layer] = []
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            gh = w_hh.shape[0]
            if w_hh.ndim != 2 or gh != gates * w_hh.shape[1] or w_ih.ndim != 2 or w_ih.shape[0] != gh:
                raise ShapeError(f"layer {k}: W_ih {tuple(w_ih.shape)} and W_hh {tuple(w_hh.shape)} are not a "
                                 f"{self.kind}'s ({gates} H, I) and ({gates} H, H)")
            if k and w_ih.shape[1] != self.layers[-1].hidden_size:
                raise ShapeError(f"layer {k} takes {w_ih.shape[1]} inputs; layer {k - 1} gives "
                                 f"{self.layers[-1].hidden_size}")
            zeros = torch.zeros(gh)
            b_ih = zeros if b_ih is None else b_ih
            b_hh = zeros if b_hh is None else b_hh
            for name, t in (("W_ih", w_ih), ("W_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
                if not bool(torch.isfinite(t.detach()).all()):
                    raise DataError(f"layer {k}: {name} holds a NaN or an infinity; the runtime needs finite weights")
            self.layers.append(_Layer(w_ih, w_hh, b_ih, b_hh, gates))
        self.input_size, self.hidden_size = self.layers[0].input_size, self.layers[0].hidden_size
        # step(): the arguments of every per-step C call are checked here once (the buffers are this
        # object's own and never change size); a step then checks only the new input x.
        self._x_step = torch.zeros(1, self.input_size)
        x_in, theta_in = self._x_step, self.theta_x
        for layer in self.layers:
            layer.bind(x_in, theta_in, self.theta_h, self.dense)
            x_in, theta_in = layer.y_step, self.theta_h

    @classmethod
    def from_layer(cls, layer: nn.Module, theta_x: float | None = None, theta_h: float | None = None,
                   dense: bool = False) -> "DeltaRuntime":
        """A runtime with a copy of the weights of a :class:`DeltaGRU`/:class:`DeltaLSTM` (or drop-in), an
        ``nn.GRU``/``nn.LSTM`` (unidirectional, no projection) or an ``nn.GRUCell``/``nn.LSTMCell``.
        The thresholds default to the delta layer's (0 for a torch layer)."""
        if isinstance(layer, _DeltaRNNBase):
            gates, n = layer.gates, layer.num_layers
            theta_x = layer.theta_x if theta_x is None else theta_x
            theta_h = layer.theta_h if theta_h is None else theta_h
        elif isinstance(layer, (nn.GRU, nn.LSTM)):
            if layer.bidirectional or getattr(layer, "proj_size", 0):
                raise ConfigError(f"{layer!r}: the runtime runs unidirectional layers without projection only")
            gates, n = (3 if isinstance(layer, nn.GRU) else 4), layer.num_layers
        elif isinstance(layer, (nn.GRUCell, nn.LSTMCell)):
            gates = 3 if isinstance(layer, nn.GRUCell) else 4
            return cls([(layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh)], gates,
                       theta_x or 0.0, theta_h or 0.0, dense)
        else:
            raise ConfigError(f"DeltaRuntime.from_layer takes a DeltaGRU, DeltaLSTM, nn.GRU, nn.LSTM, nn.GRUCell or "
                              f"nn.LSTMCell, got {type(layer).__name__}")
        weights = [(getattr(layer, f"weight_ih_l{k}"), getattr(layer, f"weight_hh_l{k}"),
                    getattr(layer, f"bias_ih_l{k}", None), getattr(layer, f"bias_hh_l{k}", None)) for k in range(n)]
        return cls(weights, gates, theta_x or 0.0, theta_h or 0.0, dense)

    @property
    def theta_x(self) -> float:
        """The input threshold (fixed: the per-step calls are checked and bound with it; build a new runtime)."""
        return self._theta_x

    @property
    def theta_h(self) -> float:
        """The hidden threshold (fixed, as :attr:`theta_x`)."""
        return self._theta_h

    def reset(self) -> None:
        """Start a new sequence: memories and ``h`` (``c``) at zero, accumulators at the biases, counts at zero."""
        for layer in self.layers:
            layer.reset()

    def _input(self, x: object, rank: int) -> torch.Tensor:
        if type(x) is torch.Tensor and x.dtype == torch.float32 and x.ndim == rank and x.is_contiguous() \
                and x.shape[-1] == self.input_size and x.is_cpu:
            return x  # the common case, checked in few operations
        if not isinstance(x, torch.Tensor):
            raise DataError(f"the {self.kind} runtime takes a torch.Tensor, got {type(x).__name__}")
        want = "(input_size,)" if rank == 1 else "(steps, input_size)"
        if x.ndim != rank or x.shape[-1] != self.input_size:
            raise ShapeError(f"the {self.kind} runtime got an input of shape {tuple(x.shape)}; it takes {want} "
                             f"with input_size={self.input_size} (batch 1: one stream per runtime)")
        if x.dtype != torch.float32 or x.device.type != "cpu":
            if not x.is_floating_point():
                raise DataError(f"input dtype {x.dtype}: pass float features (x.float())")
            x = x.to("cpu", torch.float32)
        return x.contiguous()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        theta_in = self.theta_x
        for layer in self.layers:
            x = layer.run(x, theta_in, self.theta_h, self.dense)
            theta_in = self.theta_h
        return x

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One time step: ``x`` ``(input_size,)`` -> the top layer's ``h`` ``(hidden_size,)`` (a new tensor);
        advances the state."""
        x = self._input(x, 1)  # (input_size,) float32, contiguous, on the CPU: what bind() checked of x_step
        self.layers[0].step(x.data_ptr())
        for layer in self.layers[1:]:
            layer.step()
        return self.layers[-1].h_view.clone()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """A whole sequence ``x`` ``(steps, input_size)`` -> ``(steps, hidden_size)``, one C call per layer;
        continues from the current state (call :meth:`reset` first for a new sequence)."""
        x = self._input(x, 2)
        if x.shape[0] == 0:
            raise ShapeError("the input sequence is empty; pass at least one step")
        return self._forward(x)

    @property
    def h(self) -> torch.Tensor:
        """``(num_layers, hidden_size)``: each layer's hidden state after the last step (a copy)."""
        return torch.stack([lay.state[lay.input_size + lay.hidden_size:lay.input_size + 2 * lay.hidden_size]
                            for lay in self.layers]).clone()

    @property
    def counts(self) -> tuple[DeltaCounts, ...]:
        """Per layer, the columns read since the last :meth:`reset` (at batch 1 an event is a column read)."""
        return tuple(layer.count() for layer in self.layers)


class DeltaGRURuntime(DeltaRuntime):
    """A :class:`DeltaRuntime` that takes GRUs only: ``DeltaGRURuntime.from_layer(delta_gru)``."""

    required_gates = 3


class DeltaLSTMRuntime(DeltaRuntime):
    """A :class:`DeltaRuntime` that takes LSTMs only: ``DeltaLSTMRuntime.from_layer(delta_lstm)``."""

    required_gates = 4


__all__ = ["DeltaGRURuntime", "DeltaLSTMRuntime", "DeltaRuntime"]

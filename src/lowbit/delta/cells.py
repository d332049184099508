"""DeltaGRU and DeltaLSTM: recurrent layers that compute only with the inputs that changed.

Neil, Lee, Delbruck, Liu, "Delta Networks for Optimized Recurrent Network Computation",
ICML 2017. Each neuron transmits its change only when it exceeds a threshold::

    Δx_t = x_t - x_hat  where |x_t - x_hat| > θ_x  (then x_hat := x_t), else 0
    Δh_t = h_{t-1} - h_hat where |h_{t-1} - h_hat| > θ_h (then h_hat := h_{t-1}), else 0
    acc_x += W_ih Δx_t ;  acc_h += W_hh Δh_t          (acc_x, acc_h start at b_ih, b_hh)
    h_t   = GRU/LSTM gates of (acc_x, acc_h)           (see :mod:`lowbit.delta.functional`)

so a step costs ``G*H`` multiply-accumulates per non-zero delta element (``G`` = 3 for the
GRU, 4 for the LSTM) instead of ``G*H*(I+H)``. At ``θ_x = θ_h = 0`` the layers equal
``nn.GRU``/``nn.LSTM`` with the same weights up to float rounding (the accumulators sum the
deltas instead of multiplying the values).

The parameters have ``nn.GRU``/``nn.LSTM``'s names and layout (``weight_ih_l{k}`` ``(G*H, I_k)``,
``weight_hh_l{k}`` ``(G*H, H)``, ``bias_ih_l{k}``, ``bias_hh_l{k}``; gate order r, z, n and
i, f, g, o), so their state dicts load either way. Layer ``k >= 1`` reads the hidden states of
layer ``k - 1``, which transmit with ``θ_h`` (a neuron has one threshold, as in the paper);
``θ_x`` applies to the network's input only. Dropout between layers, as ``nn.GRU``'s, only in
training mode. Unidirectional only (a delta network runs forward in time); no LSTM projection.

State is explicit: ``y, state = layer(x, state)`` with ``state`` a :class:`DeltaState` (``None``
starts from zeros). It carries the event counts of :mod:`lowbit.delta.counters`.
:class:`DeltaGRUDropIn` / :class:`DeltaLSTMDropIn` take ``nn.GRU``/``nn.LSTM``'s call instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from lowbit.delta.functional import gru_from_acc, lstm_from_acc, threshold_delta
from lowbit.delta.state import DeltaCounts, DeltaLayerState, DeltaState
from lowbit.errors import ConfigError, DataError, ShapeError

# listener(module, counts per layer of this call, (Δx events, Δh events) per layer and step, each (T,))
CountListener = Callable[[nn.Module, tuple[DeltaCounts, ...], tuple[tuple[torch.Tensor, torch.Tensor], ...]], None]
# runner(module, k, xs (T, B, I_k), layer state, θ of the input) -> what _DeltaRNNBase._run_layer returns
LayerRunner = Callable[..., tuple[torch.Tensor, DeltaLayerState, DeltaCounts, tuple[torch.Tensor, torch.Tensor]]]


def check_threshold(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number >= 0, else a :class:`ConfigError`."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name}={value!r}: a delta threshold is a real number >= 0 (0 transmits every change)")
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ConfigError(f"{name}={value!r}: a delta threshold must be finite and >= 0, e.g. {name}=0.05 "
                          "(0 transmits every change, larger skips more)")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r}: pass a positive integer")
    return value


def layer_counts(before: DeltaCounts, xm: torch.Tensor, hm: torch.Tensor
                 ) -> tuple[DeltaCounts, tuple[torch.Tensor, torch.Tensor]]:
    """The counts of one call from its transmit masks ``xm`` ``(T, B, I)`` and ``hm`` ``(T, B, H)``
    (shapes of the layer from ``before``), and the events per step ``(T,)`` of each side."""
    steps, batch = xm.shape[0], xm.shape[1]
    x_steps, h_steps = xm.sum((1, 2)), hm.sum((1, 2))  # events per step, (T,)
    counts = DeltaCounts(before.input_size, before.hidden_size, before.gates, steps=steps,
                         batch_steps=steps * batch, x_events=int(x_steps.sum()), x_columns=int(xm.any(1).sum()),
                         h_events=int(h_steps.sum()), h_columns=int(hm.any(1).sum()))
    return counts, (x_steps, h_steps)


class _DeltaRNNBase(nn.Module):
    """Parameters, state and the thresholded recurrence shared by the GRU and the LSTM."""

    gates: ClassVar[int]
    kind: ClassVar[str]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, theta_x: float = 0.0, theta_h: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ConfigError(f"dropout={dropout!r}: pass a probability in [0, 1)")
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.theta_x, self.theta_h = theta_x, theta_h
        # Listeners of the per-call counts (lowbit.delta.counters.record_counts adds one for the
        # length of a `with` block); a per-instance dict like nn.Module's own hooks.
        self._count_listeners: dict[int, CountListener] = {}
        # Another computation of one layer over a sequence, set only for the length of a `with`
        # block (lowbit.delta.training.delta_training: the training-mode forward with
        # straight-through gradients); None runs _run_layer, the accumulator form.
        self._layer_runner: LayerRunner | None = None
        kw = {"device": device, "dtype": dtype}
        gh = self.gates * hidden_size
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(gh, in_k, **kw)))
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(gh, hidden_size, **kw)))
            if self.bias:
                setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(gh, **kw)))
                setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(gh, **kw)))
        self.reset_parameters()

    # thresholds are validated on every assignment, so a sweep can set them in place
    @property
    def theta_x(self) -> float:
        return self._theta_x

    @theta_x.setter
    def theta_x(self, value: float) -> None:
        self._theta_x = check_threshold("theta_x", value)

    @property
    def theta_h(self) -> float:
        return self._theta_h

    @theta_h.setter
    def theta_h(self, value: float) -> None:
        self._theta_h = check_threshold("theta_h", value)

    def reset_parameters(self) -> None:
        """``nn.GRU``'s initialisation: every parameter uniform in ``±1/sqrt(H)``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                f"batch_first={self.batch_first}, dropout={self.dropout}, "
                f"theta_x={self.theta_x}, theta_h={self.theta_h}")

    @classmethod
    def from_torch(cls, rnn: nn.Module, theta_x: float = 0.0, theta_h: float = 0.0) -> "_DeltaRNNBase":
        """A delta layer with a copy of the weights of ``rnn`` (an ``nn.GRU`` for the GRU classes,
        an ``nn.LSTM`` for the LSTM ones), on its device and dtype, in its training mode."""
        want = nn.GRU if cls.gates == 3 else nn.LSTM
        if type(rnn) is not want:
            raise ConfigError(f"{cls.__name__}.from_torch takes an nn.{want.__name__}, got {type(rnn).__name__}")
        if rnn.bidirectional:
            raise ConfigError(f"{rnn!r} is bidirectional: a delta network runs forward in time only; "
                              "convert a unidirectional model (bidirectional=False)")
        if getattr(rnn, "proj_size", 0):
            raise ConfigError(f"{rnn!r} has proj_size={rnn.proj_size}: LSTM projections are not supported by "
                              "DeltaLSTM; use proj_size=0")
        p = next(rnn.parameters())
        out = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bias, rnn.batch_first, rnn.dropout,
                  theta_x, theta_h, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            for name, q in out.named_parameters():
                src = getattr(rnn, name)
                q.copy_(src)
                q.requires_grad_(src.requires_grad)
        return out.train(rnn.training)

    # ---- state -------------------------------------------------------------------------------
    def _layer_weights(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        b_ih = getattr(self, f"bias_ih_l{k}") if self.bias else None
        b_hh = getattr(self, f"bias_hh_l{k}") if self.bias else None
        return getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}"), b_ih, b_hh

    def initial_state(self, batch_size: int, h0: torch.Tensor | None = None,
                      c0: torch.Tensor | None = None) -> DeltaState:
        """The state before the first step: ``h`` (and ``c``) from ``h0``/``c0`` ``(num_layers, B, H)``
        or zeros, memories ``x_hat = h_hat = 0``, accumulators at the biases.

        The memories start at zero even for a non-zero ``h0``: the first step then transmits
        ``h0`` as a delta (counted, and thresholded by ``θ_h`` like any other change).
        """
        batch_size = _positive_int("batch_size", batch_size)
        w = self.weight_ih_l0
        h = self._check_initial("h0", h0, batch_size)
        c = self._check_initial("c0", c0, batch_size) if self.gates == 4 else None
        if self.gates == 3 and c0 is not None:
            raise ConfigError("c0 was given to a GRU; only an LSTM has a cell state")
        layers = []
        gh = self.gates * self.hidden_size
        for k in range(self.num_layers):
            _, _, b_ih, b_hh = self._layer_weights(k)
            in_k = self.input_size if k == 0 else self.hidden_size
            zeros_gh = w.new_zeros(batch_size, gh)
            layers.append(DeltaLayerState(
                h=h[k], c=None if c is None else c[k],
                x_hat=w.new_zeros(batch_size, in_k), h_hat=w.new_zeros(batch_size, self.hidden_size),
                acc_x=zeros_gh if b_ih is None else b_ih.expand(batch_size, gh),
                acc_h=zeros_gh if b_hh is None else b_hh.expand(batch_size, gh),
                counts=DeltaCounts(in_k, self.hidden_size, self.gates)))
        return DeltaState(tuple(layers))

    def _check_initial(self, name: str, t: torch.Tensor | None, batch: int) -> torch.Tensor:
        w = self.weight_ih_l0
        shape = (self.num_layers, batch, self.hidden_size)
        if t is None:
            return w.new_zeros(shape)
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a tensor of shape {shape}, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ShapeError(f"{name} of {type(self).__name__} has shape {tuple(t.shape)}; expected "
                             f"(num_layers, batch, hidden_size) = {shape}")
        if not t.is_floating_point():
            raise DataError(f"{name} has dtype {t.dtype}; pass a floating tensor ({name}.to({w.dtype}))")
        return t.to(w.dtype)

    def _check_state(self, state: DeltaState, batch: int) -> None:
        if not isinstance(state, DeltaState):
            raise ConfigError(f"state must be a DeltaState (or None to start from zeros), got {type(state).__name__}; "
                              f"use {type(self).__name__}.initial_state(batch, h0) to build one from h0")
        if len(state.layers) != self.num_layers:
            raise ShapeError(f"state has {len(state.layers)} layers, {type(self).__name__} has {self.num_layers}")
        s0 = state.layers[0]
        if s0.h.shape[0] != batch or s0.x_hat.shape[-1] != self.input_size:
            raise ShapeError(f"state is for batch {s0.h.shape[0]} and input size {s0.x_hat.shape[-1]}, the input "
                             f"has batch {batch} and {type(self).__name__} input size {self.input_size}; "
                             "start a new state with state=None")
        if (s0.c is None) != (self.gates == 3):
            raise ConfigError(f"state is not a {self.kind} state (cell state {'missing' if s0.c is None else 'present'})")

    def _check_input(self, x: object) -> torch.Tensor:
        if isinstance(x, PackedSequence):
            raise DataError(f"{type(self).__name__} does not take a PackedSequence: unpack it with "
                            "torch.nn.utils.rnn.pad_packed_sequence and pass the padded tensor (every row then "
                            "runs all steps; read each row's output at its own length)")
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{type(self).__name__} takes a tensor, got {type(x).__name__}")
        layout = "(batch, time, features)" if self.batch_first else "(time, batch, features)"
        if x.dim() != 3:
            raise ShapeError(f"{type(self).__name__} input has shape {tuple(x.shape)} (rank {x.dim()}); expected "
                             f"rank 3 {layout} with batch_first={self.batch_first}")
        if x.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__} input has {x.shape[-1]} features (shape {tuple(x.shape)}); "
                             f"it was built for input_size={self.input_size}, layout {layout}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ShapeError(f"{type(self).__name__} input {tuple(x.shape)} is empty; pass at least one step and row")
        w = self.weight_ih_l0
        if x.dtype != w.dtype:
            raise DataError(f"input dtype {x.dtype} differs from the weights' {w.dtype}; cast one of them "
                            f"(x.to({w.dtype}) or layer.to({x.dtype}))")
        return x

    # ---- recurrence --------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, state: DeltaState | None) -> tuple[torch.Tensor, DeltaState]:
        """``x`` checked, in the module's layout -> ``(y, new state)``; notifies count listeners."""
        xs = x.transpose(0, 1) if self.batch_first else x  # (T, B, I)
        state = self.initial_state(xs.shape[1]) if state is None else state
        self._check_state(state, xs.shape[1])
        new_layers, call_counts, step_events = [], [], []
        runner = self._layer_runner
        for k, s in enumerate(state.layers):
            if k > 0 and self.dropout and self.training:
                xs = F.dropout(xs, self.dropout, training=True)
            theta_in = self.theta_x if k == 0 else self.theta_h
            xs, s_new, counts, events = (self._run_layer(k, xs, s, theta_in) if runner is None
                                         else runner(self, k, xs, s, theta_in))
            new_layers.append(s_new)
            call_counts.append(counts)
            step_events.append(events)
        y = xs.transpose(0, 1) if self.batch_first else xs
        for listener in list(self._count_listeners.values()):
            listener(self, tuple(call_counts), tuple(step_events))
        return y, DeltaState(tuple(new_layers))

    def _run_layer(self, k: int, xs: torch.Tensor, s: DeltaLayerState, theta_in: float
                   ) -> tuple[torch.Tensor, DeltaLayerState, DeltaCounts, tuple[torch.Tensor, torch.Tensor]]:
        w_ih, w_hh, _, _ = self._layer_weights(k)
        steps = xs.shape[0]
        # Input side: the thresholding is sequential but element-wise; the products of all steps
        # are one matmul, summed over time into the accumulator.
        x_hat, dxs, x_masks = s.x_hat, [], []
        for t in range(steps):
            dx, x_hat, m = threshold_delta(xs[t], x_hat, theta_in)
            dxs.append(dx)
            x_masks.append(m)
        acc_x_seq = s.acc_x + torch.cumsum(torch.stack(dxs) @ w_ih.T, dim=0)  # (T, B, G*H)
        # Hidden side: each step needs the previous step's output.
        h, c, h_hat, acc_h, hs, h_masks = s.h, s.c, s.h_hat, s.acc_h, [], []
        for t in range(steps):
            dh, h_hat, m = threshold_delta(h, h_hat, self.theta_h)
            acc_h = acc_h + dh @ w_hh.T
            if self.gates == 3:
                h = gru_from_acc(acc_x_seq[t], acc_h, h)
            else:
                h, c = lstm_from_acc(acc_x_seq[t], acc_h, c)
            hs.append(h)
            h_masks.append(m)
        counts, events = layer_counts(s.counts, torch.stack(x_masks), torch.stack(h_masks))
        new = DeltaLayerState(h, c, x_hat, h_hat, acc_x_seq[-1], acc_h, s.counts + counts)
        return torch.stack(hs), new, counts, events


class DeltaGRU(_DeltaRNNBase):
    """A multi-layer delta GRU: ``y, state = layer(x, state)``.

    ``x``: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``); ``y``: ``(T, B, H)`` (``(B, T, H)``);
    ``state``: a :class:`DeltaState` or ``None``. With ``θ_x = θ_h = 0`` this is ``nn.GRU``.
    The candidate gate keeps the hidden pre-activation apart, as ``nn.GRU`` does:
    ``n = tanh(W_in x_hat + b_in + r ⊙ (W_hn h_hat + b_hn))``.
    """

    gates, kind = 3, "GRU"

    def forward(self, x: torch.Tensor, state: DeltaState | None = None) -> tuple[torch.Tensor, DeltaState]:
        return self._run(self._check_input(x), state)


class DeltaLSTM(_DeltaRNNBase):
    """A multi-layer delta LSTM: ``y, state = layer(x, state)``; ``state.h_n``, ``state.c_n``.

    Shapes as :class:`DeltaGRU`. With ``θ_x = θ_h = 0`` this is ``nn.LSTM`` (``proj_size=0``).
    """

    gates, kind = 4, "LSTM"

    def forward(self, x: torch.Tensor, state: DeltaState | None = None) -> tuple[torch.Tensor, DeltaState]:
        return self._run(self._check_input(x), state)


def _drop_in_forward(self: _DeltaRNNBase, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None
                     ) -> tuple[torch.Tensor, DeltaState, bool]:
    """``nn.GRU``/``nn.LSTM``'s input conventions: unbatched 2-D input with ``(L, H)`` states."""
    if isinstance(x, torch.Tensor) and x.dim() == 2:
        x = self._check_input(x.unsqueeze(0 if self.batch_first else 1))
        h0 = None if h0 is None else h0.unsqueeze(1)
        c0 = None if c0 is None else c0.unsqueeze(1)
        unbatched = True
    else:
        x, unbatched = self._check_input(x), False
    batch = x.shape[0] if self.batch_first else x.shape[1]
    y, state = self._run(x, self.initial_state(batch, h0, c0))
    if unbatched:
        y = y.squeeze(0 if self.batch_first else 1)
    return y, state, unbatched


class DeltaGRUDropIn(_DeltaRNNBase):
    """A delta GRU with ``nn.GRU``'s call: ``y, h_n = layer(x, h0=None)``.

    What :func:`lowbit.delta.to_delta` puts in place of an ``nn.GRU`` so that the model's own
    forward keeps working. Each call is one new sequence from ``h0`` (memories at zero), as
    with ``nn.GRU``; a model that calls it one step at a time therefore loses the sparsity
    across calls: stream with :class:`DeltaGRU` and an explicit state instead. The event counts
    are read with :func:`lowbit.delta.counters.record_counts`.
    """

    gates, kind = 3, "GRU"

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if hx is not None and isinstance(x, torch.Tensor) and x.dim() == 2 and hx.dim() != 2:
            raise ShapeError(f"unbatched input {tuple(x.shape)} takes h0 of shape (num_layers, hidden_size), "
                             f"got {tuple(hx.shape)}")
        y, state, unbatched = _drop_in_forward(self, x, hx, None)
        h_n = state.h_n
        return y, (h_n.squeeze(1) if unbatched else h_n)


class DeltaLSTMDropIn(_DeltaRNNBase):
    """A delta LSTM with ``nn.LSTM``'s call: ``y, (h_n, c_n) = layer(x, (h0, c0))``. See
    :class:`DeltaGRUDropIn`."""

    gates, kind = 4, "LSTM"

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ConfigError(f"an LSTM takes hx=(h0, c0), a pair of tensors; got {type(hx).__name__}")
        h0, c0 = (None, None) if hx is None else hx
        if h0 is not None and isinstance(x, torch.Tensor) and x.dim() == 2 and h0.dim() != 2:
            raise ShapeError(f"unbatched input {tuple(x.shape)} takes h0/c0 of shape (num_layers, hidden_size), "
                             f"got {tuple(h0.shape)}")
        y, state, unbatched = _drop_in_forward(self, x, h0, c0)
        h_n, c_n = state.h_n, state.c_n
        return y, ((h_n.squeeze(1), c_n.squeeze(1)) if unbatched else (h_n, c_n))

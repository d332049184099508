"""The ``recurrent`` op's execution: its tensors as a :class:`~lowbit.nn.recurrent.RecurrentQ`, and the run of
the layers it needs on int8 codes (int16 for a 16-bit input grid), in C (``lowbit_rnn_layer``, :mod:`lowbit.native.cext`) where the library is
built, else in PyTorch integer ops (:func:`lowbit.nn.recurrent.run_layer`, the simulation's own arithmetic)."""

from __future__ import annotations

import torch

from lowbit.errors import ShapeError
from lowbit.integer import ir
from lowbit.nn.recurrent import LAYER_TENSORS, LayerQ, RecurrentQ, c_values, run_layer, run_recurrent


def recurrent_q(op: ir.Recurrent, tensors: dict[str, torch.Tensor]) -> RecurrentQ:
    """The op's layers (tensors ``w_ih_k``, ...) and tables, as the simulation holds them."""
    layers = tuple(LayerQ(*(tensors[f"{n}_{k}"] for n in LAYER_TENSORS)) for k in range(op.num_layers))
    return RecurrentQ(op.cell.value, layers, op.input_zero_point, op.batch_first, tensors["sigmoid"], tensors["tanh"],
                      op.input_bits)


def _c_layer():
    from lowbit.native import cext

    return cext.rnn_layer if cext.library() is not None and hasattr(cext, "rnn_layer") else None


def _step_state(q: RecurrentQ, x: torch.Tensor, state: tuple[torch.Tensor, ...]):
    """A cell step's initial state as one layer's (1, N, H) int64 codes (None: zero), each input checked."""
    n, hsize = x.shape[0], q.hidden_size
    if len(state) > (2 if q.cell == "lstm" else 1):
        raise ShapeError(f"the recurrent step of a {q.cell.upper()} takes at most {2 if q.cell == 'lstm' else 1} state "
                         f"inputs, got {len(state)}")
    for s, dtype in zip(state, (torch.int8, torch.int16)):
        if s.dtype != dtype or tuple(s.shape) != (n, hsize):
            raise ShapeError(f"the recurrent step takes its state as {dtype} codes ({n}, {hsize}), got {s.dtype} "
                             f"{tuple(s.shape)}")
    if not state:
        return None
    c = state[1].long().unsqueeze(0) if len(state) > 1 else torch.zeros(1, n, hsize, dtype=torch.long)
    return state[0].long().unsqueeze(0), c if q.cell == "lstm" else None


def run(op: ir.Recurrent, q: RecurrentQ, x: torch.Tensor, use_c: bool, state: tuple[torch.Tensor, ...] = ()
        ) -> torch.Tensor:
    """The op's output for int8 codes ``x`` (int16 when ``op.input_bits`` is 16): int8 ``h`` codes of its last
    layer (every step, or the last one), or the float32 values of that LSTM layer's last ``c``. A ``step`` op (a
    cell) takes ``x`` (N, I) and its initial ``state`` codes (``h`` int8, ``c`` int16; none: zero)."""
    i = q.layers[0].w_ih.shape[1]
    dtype = torch.int16 if op.input_bits == 16 else torch.int8
    ndim = 2 if op.step else 3
    if x.dtype != dtype or x.ndim != ndim or x.shape[-1] != i or 0 in x.shape:
        layout = "N" if op.step else "N, T" if op.batch_first else "T, N"
        raise ShapeError(f"the recurrent op takes {dtype} codes ({layout}, {i}), got {x.dtype} {tuple(x.shape)}")
    if op.step:
        out, h, c = run_recurrent(q, x.unsqueeze(0), 1, state=_step_state(q, x, state))
    else:
        layer = (_c_layer() if use_c else None) or run_layer
        out, h, c = run_recurrent(q, x, op.num_layers, layer)
    if op.emit is ir.Emit.OUTPUT:
        return out.to(torch.int8)
    if op.emit is ir.Emit.H:
        return h[-1].to(torch.int8)
    return c_values(c[-1])


__all__ = ["recurrent_q", "run"]

"""Elementwise functions of quantized tensors by lookup table.

A tensor on a grid of ``b <= 8`` bits takes at most 256 values, so any elementwise function ``f`` of it
(a sigmoid, tanh or GELU; a BatchNorm after an activation, which is ``a_c x + b_c`` per channel ``c``)
is exactly a table of 256 entries per channel::

    T[c, k] = f_c((clamp(k - 128 + o, q_min, q_max) - z) s)     k = 0..255,  o = 0 (signed) or 128 (unsigned)
    y[n, c, ...] = T[c, x_stored[n, c, ...] + 128]

(``x_stored = q - o`` is the int8 the integer model stores). The simulation and the integer model index
the same table, so they agree bit for bit whatever ``f`` computes, and whatever order of float operations
PyTorch's kernels use for it. When the next op quantizes ``y`` onto a grid ``Q``, the integer model stores
``Q(T)`` instead: ``Q`` is monotone, so max pooling, zero padding and layout ops between the two commute
with it (I-BERT, Kim et al. 2021, and integer-only deployments use such tables for the non-linearities).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lowbit.errors import ShapeError
from lowbit.functional.requant import dequantize_codes
from lowbit.nn.qparams import QParams, offset

ENTRIES = 256


def table_index(q: QParams, x: torch.Tensor) -> torch.Tensor:
    """The table column of each element of ``x`` (a tensor on ``q``'s grid): its stored int8 code + 128."""
    return (q.codes(x).to(torch.int64) + 128 - offset(q)).clamp_(0, ENTRIES - 1)


def grid_values(q: QParams) -> torch.Tensor:
    """The 256 real values ``(q - z) s`` the columns stand for (codes outside the format clamped), float32."""
    codes = (torch.arange(ENTRIES) - 128 + offset(q)).clamp(q.fmt.qmin, q.fmt.qmax)
    return dequantize_codes(codes, q.zero_point, q.scale)  # the simulation's own dequantization


def tabulate(fn: Callable[[torch.Tensor], torch.Tensor], q: QParams, channels: int = 1,
             ndim: int = 1) -> torch.Tensor:
    """The ``(channels, 256)`` float32 table of ``fn`` on the grid ``q`` (see :func:`apply`)."""
    return apply(fn, grid_values(q).view(1, ENTRIES), channels, ndim)


def apply(fn: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor, channels: int = 1,
          ndim: int = 1) -> torch.Tensor:
    """``fn`` of the ``(C0, 256)`` table ``values`` as a ``(channels, 256)`` table (``C0`` is 1 or ``channels``).

    With ``ndim`` 1 ``fn`` is elementwise and sees the table itself; otherwise it sees an ``ndim``-D tensor
    whose dimension 0 runs over the 256 entries and dimension 1 over ``channels``, so that a per-channel
    ``fn`` (a BatchNorm) finds its channels where it looks for them."""
    if values.shape[0] not in (1, channels):
        raise ShapeError(f"a table of {values.shape[0]} rows cannot feed a function of {channels} channels")
    if ndim == 1:
        return fn(values).to(torch.float32).expand(channels, ENTRIES).contiguous()
    x = values.expand(channels, ENTRIES).t().reshape(ENTRIES, channels, *([1] * (ndim - 2))).contiguous()
    return fn(x).to(torch.float32).reshape(ENTRIES, channels).t().contiguous()


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[c, index[n, c, ...]]`` with ``c`` the position along dimension 1; a one-row table is used
    everywhere. The simulation (:class:`lowbit.nn.lookup.Lookup`) and the integer op both call it."""
    rows = table.shape[0]
    if rows == 1:
        return table[0][index]
    if index.ndim < 2 or index.shape[1] != rows:
        raise ShapeError(f"a per-channel table of {rows} rows on a tensor of shape {tuple(index.shape)}: dimension 1 "
                         f"must have {rows} channels")
    shift = torch.arange(rows, dtype=torch.int64).view(1, rows, *([1] * (index.ndim - 2))) * table.shape[1]
    return table.reshape(-1)[index + shift]


__all__ = ["ENTRIES", "apply", "grid_values", "lookup", "table_index", "tabulate"]

"""The simulation's form of an elementwise float op on a quantized tensor: a lookup table.

:func:`lowbit.ptq.convert` replaces a sigmoid, tanh, GELU, ... or a BatchNorm after an activation whose input
lies on a grid of at most 8 bits by a :class:`Lookup` (:mod:`lowbit.graph.tables`); the integer model runs the
same table (:class:`lowbit.integer.ir.Table`), so the two agree bit for bit. The maths is in
:mod:`lowbit.functional.lookup`.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.lookup import lookup, table_index
from lowbit.nn.qparams import QParams


class Lookup(nn.Module):
    """``y = table[c, code(x)]``: the function ``source`` (a description, for messages) of a tensor on ``grid``.

    ``table`` is ``(C, 256)`` float32, one row per channel (dimension 1) or one row for all; no gradient flows
    through it (it is the frozen model's op; training keeps the float op)."""

    def __init__(self, grid: QParams, table: torch.Tensor, source: str) -> None:
        super().__init__()
        self.grid, self.source = grid, source
        self.register_buffer("table", table.to(torch.float32).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lookup(self.table, table_index(self.grid, x))

    def extra_repr(self) -> str:
        kind = "per channel" if self.table.shape[0] > 1 else "per tensor"
        return f"{self.source}, {self.table.shape[0]} x 256 {kind}, input {self.grid.fmt.bits}-bit scale {self.grid.scale:.4g}"


__all__ = ["Lookup"]

"""Bit-slice sparsity and the ADC resolution a ReRAM crossbar needs (Zhang et al. 2019, paper M).

Crossbar model (ours, stated so the numbers can be checked):

- a layer's weight ``(out, ...)`` is a matrix ``(out, fan_in)``; its magnitudes are cut into slices
  (:func:`lowbit.functional.bitslice.bit_slices`, per-tensor dynamic fixed point), one crossbar per slice,
  ``fan_in`` rows tiled into crossbars of ``R`` rows (the last tile padded with empty cells);
- the sign is handled by two columns per output (positive weights on one, negative on the other, subtracted
  after the ADCs), so every cell holds a slice value ``0 .. 2^s - 1`` (0 .. 3 for 2-bit cells);
- inputs are applied one bit at a time (1-bit inputs), so a column's bitline carries the sum of the cells on
  the active rows; the worst case over inputs is all rows active, the column sum ``c = sum_rows b``;
- the ADC must resolve every value ``0 .. c``: ``ceil(log2(c + 1))`` bits. The resolution of a slice is that of
  its largest column over all layers (``max``); the ``percentile`` version covers that share of the columns
  (the rest would saturate), which shows how much a few dense columns cost.

An unconstrained 128-row crossbar of 2-bit cells reaches ``c = 384`` and needs 9 bits; the paper reports 1 bit for
the most significant slice and 3 bits for the others after bit-slice L1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.functional.bitslice import bit_slices, check_slicing

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _layers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    layers = [(name or type(m).__name__, m.weight.detach()) for name, m in model.named_modules()
              if isinstance(m, _LAYERS)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer to count bit slices of")
    return layers


@dataclass(frozen=True)
class SliceSparsity:
    """One layer's (or the whole model's, ``layer = "all"``) zero ratio of each slice, most significant first."""

    layer: str
    weights: int
    zero: tuple[float, ...]
    weight_zero: float  # the share of weights whose code is 0 (every slice zero)

    @property
    def mean(self) -> float:
        return sum(self.zero) / len(self.zero)


def slice_sparsity(model: nn.Module, bits: int = 8, slice_bits: int = 2) -> list[SliceSparsity]:
    """Per layer, then ``"all"`` (counts over all layers' weights), the share of zero cells in each slice."""
    check_slicing(bits, slice_bits)
    rows, zeros, zero_w, total = [], None, 0, 0
    for name, w in _layers(model):
        s = bit_slices(w, bits, slice_bits)  # (n, *w.shape)
        z = (s == 0).flatten(1).sum(dim=1)
        zw = int((s == 0).all(dim=0).sum())
        rows.append(SliceSparsity(name, w.numel(), tuple((z / w.numel()).tolist()), zw / w.numel()))
        zeros = z if zeros is None else zeros + z
        zero_w, total = zero_w + zw, total + w.numel()
    rows.append(SliceSparsity("all", total, tuple((zeros / total).tolist()), zero_w / total))
    return rows


def column_sums(w: torch.Tensor, rows: int = 128, bits: int = 8, slice_bits: int = 2) -> torch.Tensor:
    """Column sums ``(n_slices, columns)`` of ``w``'s slices on crossbars of ``rows`` rows, all inputs active.

    Columns: for each output, each ``rows``-row tile of its fan-in and each sign (see the module doc).
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"a crossbar needs an int >= 1 of rows, got {rows!r}")
    s = bit_slices(w.detach(), bits, slice_bits).flatten(2)  # (n, out, fan_in)
    w2 = w.detach().reshape(w.shape[0], -1)
    pad = -w2.shape[1] % rows
    sums = []
    for part in (w2 > 0, w2 < 0):
        cells = nn.functional.pad(s * part, (0, pad)).unflatten(2, (-1, rows))  # (n, out, tiles, rows)
        sums.append(cells.sum(dim=3).flatten(1))
    return torch.cat(sums, dim=1)


def adc_bits_for(column_sum: float) -> int:
    """``ceil(log2(c + 1))``: bits to tell the values ``0 .. c`` apart (0 for an always-empty column)."""
    return math.ceil(math.log2(column_sum + 1)) if column_sum > 0 else 0


@dataclass(frozen=True)
class AdcBits:
    """Per slice (most significant first): the largest column sum and its ADC bits, and the same at a percentile."""

    rows: int
    max_sum: tuple[int, ...]
    max_bits: tuple[int, ...]
    percentile: float
    pct_sum: tuple[int, ...]
    pct_bits: tuple[int, ...]


def adc_bits(model: nn.Module, rows: int = 128, bits: int = 8, slice_bits: int = 2,
             percentile: float = 99.9) -> AdcBits:
    """The ADC resolution each slice needs over all Linear and Conv layers of ``model`` (see the module doc)."""
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be a number in (0, 100], got {percentile!r}")
    check_slicing(bits, slice_bits)
    sums = torch.cat([column_sums(w, rows, bits, slice_bits) for _, w in _layers(model)], dim=1)
    top = sums.amax(dim=1).to(torch.int64).tolist()
    pct = torch.quantile(sums.to(torch.float64), percentile / 100, dim=1, interpolation="higher")
    pct = pct.to(torch.int64).tolist()
    return AdcBits(rows, tuple(top), tuple(adc_bits_for(c) for c in top), float(percentile), tuple(pct),
                   tuple(adc_bits_for(c) for c in pct))


def render(model: nn.Module, rows: int = 128, bits: int = 8, slice_bits: int = 2) -> str:
    """A Markdown table: per layer the zero ratio of each slice, then the ADC bits each slice needs."""
    sparsity = slice_sparsity(model, bits, slice_bits)
    adc = adc_bits(model, rows, bits, slice_bits)
    n = bits // slice_bits
    head = " | ".join(f"b{k + 1} zero" for k in range(n))
    lines = [f"| layer | weights | {head} | mean | zero weights |", "|---|---:|" + "---:|" * (n + 2)]
    for r in sparsity:
        cells = " | ".join(f"{z:.3f}" for z in r.zero)
        lines.append(f"| {r.layer} | {r.weights} | {cells} | {r.mean:.3f} | {r.weight_zero:.3f} |")
    lines.append(f"| ADC bits ({rows} rows, max) | | {' | '.join(map(str, adc.max_bits))} | | |")
    lines.append(f"| ADC bits ({rows} rows, p{adc.percentile:g}) | | {' | '.join(map(str, adc.pct_bits))} | | |")
    return "\n".join(lines)


__all__ = ["AdcBits", "SliceSparsity", "adc_bits", "adc_bits_for", "column_sums", "render", "slice_sparsity"]

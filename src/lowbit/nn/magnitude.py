"""The magnitude ``sqrt(a^2 + b^2)`` in a quantized model: the simulation of the ``magnitude`` op of
:mod:`lowbit.integer`.

PTQ puts a :class:`QMagnitude` in place of ``torch.sqrt(a ** 2 + b ** 2)`` and its other forms
(:mod:`lowbit.graph.magnitude`). While calibrating it is the float op, so the quantizer that reads it observes real
magnitudes. ``convert`` then freezes it (:meth:`QMagnitude.freeze`) with the grid of its two inputs and the grid of
the quantizer that reads it; in eval mode it computes :func:`lowbit.functional.magnitude.magnitude_codes` on the
inputs' codes and returns the values of those output codes, exactly what the integer model's op gives, so that
quantizer has nothing left to round (the lowering aliases it).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lowbit.formats import IntFormat
from lowbit.functional.magnitude import magnitude_codes, multiplier
from lowbit.functional.requant import dequantize_codes
from lowbit.nn.qparams import QParams


def _grid_text(q: QParams | None) -> str:
    return "none (float)" if q is None else f"scale {float(q.scale):.6g}, zero point {q.zero_point}, {q.fmt.bits} bits"


class QMagnitude(nn.Module):
    """``sqrt(a^2 + b^2)`` (``hypot`` the float form of ``torch.hypot``): the float op until frozen, then the integer
    arithmetic on the inputs' codes, giving values of the output grid. ``source`` names the float op it replaced."""

    def __init__(self, source: str, hypot: bool = False) -> None:
        super().__init__()
        self.source, self.hypot = source, bool(hypot)
        self.input_qparams: QParams | None = None
        self.output_qparams: QParams | None = None
        self.m = self.n = 0
        self.why: str | None = "not converted yet"  # why the op is not frozen (for the lowering's refusal)

    @property
    def frozen(self) -> bool:
        return self.output_qparams is not None

    def freeze(self, a: QParams | None, b: QParams | None, out: QParams | None) -> None:
        """Run the integer arithmetic from now on (eval mode) for inputs on ``a`` = ``b`` (one integer grid of at
        most 8 bits) read by a quantizer on ``out`` (at most 8 bits). Otherwise the op stays float, with a warning
        naming it and why (``to_integer`` then refuses it with the same words)."""
        self.input_qparams = self.output_qparams = None
        why = None
        if a is None or b is None or not all(isinstance(q.fmt, IntFormat) and q.fmt.bits <= 8 for q in (a, b)):
            why = (f"its inputs are not both quantized on integer grids of at most 8 bits (a: {_grid_text(a)}; "
                   f"b: {_grid_text(b)})")
        elif (float(a.scale), a.zero_point, a.fmt) != (float(b.scale), b.zero_point, b.fmt):
            why = (f"its inputs lie on different grids (a: {_grid_text(a)}; b: {_grid_text(b)}); the integer "
                   "magnitude needs both on one grid, e.g. two slices of one layer's output")
        elif out is None or not isinstance(out.fmt, IntFormat) or out.fmt.bits > 8:
            why = ("no quantizer of an integer grid of at most 8 bits reads its output (through layout ops only); "
                   "the integer magnitude gives that quantizer's codes")
        if why is not None:
            self.why = why
            warnings.warn(f"lowbit: {self.source} (magnitude sqrt(a^2 + b^2)) stays float: {why}", stacklevel=3)
            return
        self.m, self.n = multiplier(float(a.scale) / float(out.scale))
        self.input_qparams, self.output_qparams, self.why = a, out, None

    def codes(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The output codes (int64, the output grid's code domain) of inputs on the frozen input grid."""
        q, o = self.input_qparams, self.output_qparams
        x = q.codes(a).to(torch.int64) - q.zero_point
        y = q.codes(b).to(torch.int64) - q.zero_point
        return magnitude_codes(x, y, self.m, self.n, o.zero_point, o.fmt.qmin, o.fmt.qmax)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self.frozen or self.training:
            return torch.hypot(a, b) if self.hypot else torch.sqrt(a * a + b * b)
        o = self.output_qparams
        return dequantize_codes(self.codes(a, b), o.zero_point, float(o.scale))

    def extra_repr(self) -> str:
        return f"frozen={self.frozen}, m={self.m}, n={self.n}, from {self.source}"


__all__ = ["QMagnitude"]

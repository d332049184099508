"""Quantizer slots: a frozen :class:`~lowbit.spec.QuantSpec` says how, the module holds the state.

``ActQuantizer`` sits on an activation: in ``observe`` mode its observer records
statistics and the tensor passes through unchanged; :meth:`ActQuantizer.freeze`
turns the statistics into a scale and zero point; in ``quantize`` mode it
fake-quantizes. ``WeightQuantizer`` does the same for a weight, whose grid comes
from the weight itself through the spec's dispatch (:func:`lowbit.spec.solve_weight`):
an observer and an affine scale for integer formats, the exact (or TWN) solver for
ternary, the least-squares power-of-two scale for ``PowerOfTwo``.

Power-of-two scales (method H, Geng et al. 2019): the scale is replaced by a
power of two so that requantization of an integer accumulator is a shift.
Activations round the scale *up* (no extra clipping); weights pick, per
channel, whichever of the two neighbouring powers of two gives the lower MSE.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.formats import PowerOfTwo, Ternary
from lowbit.functional.affine import fake_quant_affine
from lowbit.nn.qparams import QParams
from lowbit.spec import QuantSpec, WeightGrid, act_qparams, frozen_fake_quant, make_observer, solve_weight, weight_codes

Mode = Literal["observe", "quantize", "off"]


class ActQuantizer(nn.Module):
    """Observe, then fake-quantize an activation (per tensor, or per channel along ``axis``)."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.observer = make_observer(spec)
        self.mode: Mode = "observe"
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))

    def freeze(self) -> None:
        """Scale and zero point from the observed statistics; switch to ``quantize``."""
        self.scale, self.zero_point = act_qparams(self.observer, self.spec)
        self.mode = "quantize"

    def qparams(self) -> QParams:
        """The frozen per-tensor grid (call after :meth:`freeze`)."""
        if self.scale.numel() != 1:
            raise ConfigError("qparams() is for per-tensor activation quantizers")
        return QParams(float(self.scale.reshape(())), int(self.zero_point.reshape(())), self.spec.format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            return self.observer(x)
        if self.mode == "quantize":
            return fake_quant_affine(x, self.scale, self.zero_point, self.spec.format, self.spec.axis)
        return x

    def extra_repr(self) -> str:
        return f"{self.spec.label()}, {type(self.spec.observer).__name__}, mode={self.mode}"


class WeightQuantizer(nn.Module):
    """Fake-quantize a weight on a grid found from the weight itself (symmetric per channel by default).

    Buffers: ``scale`` and ``zero_point`` per block, and for ternary specs ``threshold``
    (the support is ``|w| > threshold``)."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mode: Mode = "off"
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))
        if self.ternary:
            self.register_buffer("threshold", torch.zeros(1))

    @property
    def ternary(self) -> bool:
        """True when the codes are ternary (``Ternary()`` or ``PowerOfTwo(2)``)."""
        f = self.spec.format
        return isinstance(f, Ternary) or (isinstance(f, PowerOfTwo) and f.bits == 2)

    def freeze(self, weight: torch.Tensor) -> None:
        grid = solve_weight(weight, self.spec)
        self.scale, self.zero_point = grid.scale, grid.zero_point
        if grid.threshold is not None:
            self.threshold = grid.threshold
        self.mode = "quantize"

    def grid(self) -> WeightGrid:
        """The frozen grid (scale, zero point, ternary threshold)."""
        return WeightGrid(self.scale.reshape(-1), self.zero_point.reshape(-1),
                          self.threshold.reshape(-1) if self.ternary else None)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``w`` on the frozen grid (float32 holding integers, ``w``'s shape)."""
        return weight_codes(w, self.spec, self.grid())

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` fake-quantized with the frozen grid, whatever the mode."""
        return frozen_fake_quant(w, self.spec, self.grid())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.fake(w) if self.mode == "quantize" else w

    def extra_repr(self) -> str:
        return f"{self.spec.label()}, {type(self.spec.granularity).__name__}, mode={self.mode}"


__all__ = ["ActQuantizer", "WeightQuantizer"]

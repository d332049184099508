"""Quantizer slots: a frozen :class:`~lowbit.spec.QuantSpec` says how, the module holds the state.

``ActQuantizer`` sits on an activation: in ``observe`` mode its observer records
statistics and the tensor passes through unchanged; :meth:`ActQuantizer.freeze`
turns the statistics into a scale and zero point; in ``quantize`` mode it
fake-quantizes. ``WeightQuantizer`` does the same for a weight, whose grid comes
from the weight itself through the spec's dispatch (:func:`lowbit.spec.solve_weight`):
an observer and an affine scale for integer formats, the exact (or TWN) solver for
ternary, the least-squares power-of-two scale for ``PowerOfTwo``.

Binary specs (BNN, XNOR-Net): a binary activation is ``sign(x)`` in every mode but ``"off"``, with the
hard-tanh straight-through gradient (cancelled where ``|x| > 1``); its grid is the values themselves
(scale 1, zero point 0, codes -1 and +1). A binary weight trains in ``"live"`` mode (``sign(w)`` times
``mean|w|`` of the current weight, or ``+-1``; with ``QATConfig.stochastic_weights`` the signs are drawn,
``+1`` with probability ``hard_sigmoid(w)``, while training) and freezes to those codes times a per-channel scale, which
also carries ``gain``: the ``|gamma / sigma|`` of a BatchNorm folded into it after training
(:func:`lowbit.qat.fold_trained_bn`).

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
from lowbit.formats import Binary, PowerOfTwo, Ternary
from lowbit.functional.affine import fake_quant_affine
from lowbit.functional.binary import binarize, binarize_stochastic
from lowbit.nn.qparams import QParams
from lowbit.spec import (QuantSpec, WeightGrid, act_qparams, binary_scale, fake_quant, frozen_fake_quant, make_observer,
                         solve_weight, weight_codes)

Mode = Literal["observe", "quantize", "off", "live"]


class ActQuantizer(nn.Module):
    """Observe, then fake-quantize an activation (per tensor, or per channel along ``axis``)."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.observer = make_observer(spec)
        self.mode: Mode = "observe"
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))

    @property
    def binary(self) -> bool:
        return isinstance(self.spec.format, Binary)

    def freeze(self) -> None:
        """Scale and zero point from the observed statistics (binary: 1 and 0); switch to ``quantize``."""
        if self.binary:
            self.scale, self.zero_point = torch.ones(1), torch.zeros(1, dtype=torch.int32)
        else:
            self.scale, self.zero_point = act_qparams(self.observer, self.spec)
        self.mode = "quantize"

    def qparams(self) -> QParams:
        """The frozen per-tensor grid (call after :meth:`freeze`)."""
        if self.scale.numel() != 1:
            raise ConfigError("qparams() is for per-tensor activation quantizers")
        return QParams(float(self.scale.reshape(())), int(self.zero_point.reshape(())), self.spec.format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binary and self.mode != "off":
            if self.mode == "observe":  # seen, as every slot must be; the grid is fixed (scale 1)
                self.observer(x.detach())
            return binarize(x)
        if self.mode == "observe":
            return self.observer(x)
        if self.mode == "quantize":
            return fake_quant_affine(x, self.scale, self.zero_point, self.spec.format, self.spec.axis)
        return x

    def extra_repr(self) -> str:
        return f"{self.spec.label()}, {type(self.spec.observer).__name__}, mode={self.mode}"


class WeightQuantizer(nn.Module):
    """Fake-quantize a weight on a grid found from the weight itself (symmetric per channel by default).

    Buffers: ``scale`` and ``zero_point`` per block, for ternary specs ``threshold``
    (the support is ``|w| > threshold``), and for TNT specs ``code_pos`` and ``code_neg`` (the int8
    codes ``m+`` and ``m-`` that stand for +1 and -1: :func:`lowbit.functional.ternary.tnt_integer_codes`).
    TNT weights train in ``"live"`` mode: support and both scales recomputed from the current weight
    at every forward, straight-through gradient to the weight."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mode: Mode = "off"
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))
        if self.ternary:
            self.register_buffer("threshold", torch.zeros(1))
        if self.tnt:
            self.register_buffer("code_pos", torch.ones(1))
            self.register_buffer("code_neg", torch.ones(1))
        if self.binary:
            self.register_buffer("gain", torch.ones(1))
        # set by lowbit.qat (QATConfig.stochastic_weights): in training, a binary weight's signs are drawn from
        # this generator, +1 with probability hard_sigmoid(w) (BinaryConnect / BNN stochastic binarization)
        self.generator: torch.Generator | None = None

    @property
    def ternary(self) -> bool:
        """True when the codes are ternary (``Ternary()`` or ``PowerOfTwo(2)``)."""
        f = self.spec.format
        return isinstance(f, Ternary) or (isinstance(f, PowerOfTwo) and f.bits == 2)

    @property
    def tnt(self) -> bool:
        """True for TNT ternary codes (two scales as int8 codes ``{-m-, 0, +m+}``)."""
        return self.spec.tnt

    @property
    def binary(self) -> bool:
        return isinstance(self.spec.format, Binary)

    def freeze(self, weight: torch.Tensor) -> None:
        grid = solve_weight(weight, self.spec)
        self.scale, self.zero_point = grid.scale, grid.zero_point
        if self.binary:
            self.scale = grid.scale * self.gain  # (1,) or (N,) after a BatchNorm fold
        if grid.threshold is not None:
            self.threshold = grid.threshold
        if grid.code_pos is not None:
            self.code_pos, self.code_neg = grid.code_pos, grid.code_neg
        self.mode = "quantize"

    def grid(self) -> WeightGrid:
        """The frozen grid (scale, zero point, ternary threshold)."""
        return WeightGrid(self.scale.reshape(-1), self.zero_point.reshape(-1),
                          self.threshold.reshape(-1) if self.ternary else None,
                          self.code_pos.reshape(-1) if self.tnt else None, self.code_neg.reshape(-1) if self.tnt else None)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``w`` on the frozen grid (float32 holding integers, ``w``'s shape)."""
        return weight_codes(w, self.spec, self.grid())

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` fake-quantized with the frozen grid, whatever the mode."""
        return frozen_fake_quant(w, self.spec, self.grid())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode == "live" and self.generator is not None and self.training:
            return binarize_stochastic(w, self.generator, binary_scale(w, self.spec))
        if self.mode == "live":  # training: the grid of the current weight (binary: sign(w) mean|w|; TNT)
            return fake_quant(w, self.spec)
        return self.fake(w) if self.mode == "quantize" else w

    def extra_repr(self) -> str:
        return f"{self.spec.label()}, {type(self.spec.granularity).__name__}, mode={self.mode}"


__all__ = ["ActQuantizer", "WeightQuantizer"]

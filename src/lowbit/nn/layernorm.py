"""LayerNorm in a quantized model: the simulation of the ``layernorm`` op of :mod:`lowbit.integer`.

PTQ puts a :class:`QLayerNorm` in place of an ``nn.LayerNorm`` or a functional ``layer_norm`` over the last
dimension whose input comes from a quantized producer and whose output a quantizer reads
(:mod:`lowbit.graph.layernorm`). While calibrating it is the float op, so the quantizer that reads it observes real
values. ``convert`` then freezes it (:meth:`QLayerNorm.freeze`) with its input's grid (per feature or per tensor)
and the grid of the quantizer that reads it; in eval mode it computes :func:`lowbit.functional.layernorm.
layernorm_codes` on the input's codes and returns the values of those output codes, exactly what the integer
model's op gives, so that quantizer has nothing left to round (the lowering aliases it).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats import IntFormat
from lowbit.functional.layernorm import MAX_FEATURES, LayerNormParams, layernorm_codes, layernorm_params
from lowbit.functional.requant import dequantize_codes
from lowbit.nn.qparams import ChannelQParams, QParams


class QLayerNorm(nn.Module):
    """LayerNorm over the last ``features`` values (affine ``weight`` / ``bias`` or None): the float op until frozen,
    then the integer arithmetic on the input's codes, giving values of the output grid. ``source`` names the float op
    it replaced."""

    def __init__(self, features: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                 source: str) -> None:
        super().__init__()
        self.features, self.eps, self.source = int(features), float(eps), source
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone().reshape(-1))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().reshape(-1))
        self.input_qparams: ChannelQParams | None = None
        self.output_qparams: QParams | None = None
        self.params: LayerNormParams | None = None
        self.why: str | None = "not converted yet"  # why the op is not frozen (for the lowering's refusal)

    @property
    def frozen(self) -> bool:
        return self.output_qparams is not None

    def freeze(self, inp: QParams | ChannelQParams | None, out: QParams | None) -> None:
        """Run the integer arithmetic from now on (eval mode) for inputs on ``inp`` (an integer grid of at most 8
        bits, per feature or per tensor) read by a quantizer on ``out`` (at most 8 bits). Otherwise the op stays
        float, with a warning naming it and why (``to_integer`` then refuses it with the same words)."""
        self.input_qparams = self.output_qparams = self.params = None
        why = None
        if inp is None or not isinstance(inp.fmt, IntFormat) or inp.fmt.bits > 8:
            why = "its input is not on an integer grid of at most 8 bits (per tensor or per feature)"
        elif isinstance(inp, ChannelQParams) and inp.scale.numel() != self.features:
            why = f"its input's grid has {inp.scale.numel()} scales for {self.features} features"
        elif out is None or not isinstance(out.fmt, IntFormat) or out.fmt.bits > 8:
            why = ("no per-tensor quantizer of an integer grid of at most 8 bits reads its output; the integer "
                   "LayerNorm gives that quantizer's codes")
        elif self.features > MAX_FEATURES:
            why = f"it normalises {self.features} features (the integer LayerNorm takes at most {MAX_FEATURES})"
        if why is None:
            grid = ChannelQParams.of(inp, self.features)
            try:
                self.params = layernorm_params(grid.scale, self.weight, self.bias, self.eps, float(out.scale))
            except ValueError as exc:
                why = str(exc)
        if why is not None:
            self.why, self.params = why, None
            warnings.warn(f"lowbit: {self.source} (LayerNorm) stays float: {why}", stacklevel=3)
            return
        self.input_qparams, self.output_qparams, self.why = grid, out, None

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The output codes (int64, the output grid's code domain) of an input on the frozen input grid."""
        q, o, p = self.input_qparams, self.output_qparams, self.params
        centred = q.codes(x).to(torch.int64) - q.zero_point
        return layernorm_codes(centred, p.multipliers, p.gamma, p.beta, p.shift, p.eps, o.zero_point, o.fmt.qmin,
                               o.fmt.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen or self.training:
            return F.layer_norm(x, (self.features,), self.weight, self.bias, self.eps)
        o = self.output_qparams
        return dequantize_codes(self.codes(x), o.zero_point, float(o.scale))

    def extra_repr(self) -> str:
        return f"{self.features}, eps={self.eps:g}, frozen={self.frozen}, from {self.source}"


__all__ = ["QLayerNorm"]

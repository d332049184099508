"""Quantizer slots: a frozen :class:`TensorSpec` says how, the module holds the state.

``ActQuantizer`` sits on an activation: in ``observe`` mode its observer records
statistics and the tensor passes through unchanged; :meth:`ActQuantizer.freeze`
turns the statistics into a scale and zero point; in ``quantize`` mode it
fake-quantizes. ``WeightQuantizer`` does the same for a weight, whose
statistics are the weight itself.

Power-of-two scales (method H, Geng et al. 2019): the scale is replaced by a
power of two so that requantization of an integer accumulator is a shift.
Activations round the scale *up* (no extra clipping); weights pick, per
channel, whichever of the two neighbouring powers of two gives the lower MSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.functional.affine import fake_quant_affine
from lowbit.granularity import Granularity, PerChannel, PerTensor, rows
from lowbit.nn.qparams import QParams
from lowbit.observers import (
    ChannelPercentileObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
)

ObserverName = Literal["minmax", "moving_average", "percentile", "mse", "channel"]
Mode = Literal["observe", "quantize", "off"]
_OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "channel")


@dataclass(frozen=True)
class TensorSpec:
    """How one tensor is quantized: format, granularity, range rule, scale rule."""

    fmt: IntFormat = field(default_factory=lambda: IntFormat(8))
    granularity: Granularity = field(default_factory=PerTensor)
    symmetric: bool = True
    observer: ObserverName = "minmax"
    percentile: float = 99.99
    pow2_scale: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.fmt, IntFormat):
            raise ConfigError(f"TensorSpec.fmt must be an IntFormat, got {self.fmt!r}")
        if self.observer not in _OBSERVERS:
            raise ConfigError(f"TensorSpec.observer must be one of {_OBSERVERS}, got {self.observer!r}")

    @property
    def axis(self) -> int | None:
        return self.granularity.axis if isinstance(self.granularity, PerChannel) else None


def make_observer(spec: TensorSpec) -> Observer:
    """The observer named by ``spec.observer`` at ``spec.granularity``."""
    g = spec.granularity
    if spec.observer == "minmax":
        return MinMaxObserver(g)
    if spec.observer == "moving_average":
        return MovingAverageMinMaxObserver(g)
    if spec.observer == "percentile":
        return PercentileObserver(g, spec.percentile)
    if spec.observer == "mse":
        return MSEObserver(g)
    return ChannelPercentileObserver(percentile=spec.percentile)


def _pow2_up(scale: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(scale)))


def _qparams(obs: Observer, spec: TensorSpec) -> tuple[torch.Tensor, torch.Tensor]:
    scale, zp = obs.qparams(spec.fmt, spec.symmetric)
    if not spec.pow2_scale:
        return scale, zp
    scale = _pow2_up(scale)
    if not spec.symmetric:  # the zero point follows the new scale
        lo = obs.search(spec.fmt, False)[0] if isinstance(obs, MSEObserver) else obs.range()[0]
        lo = torch.minimum(lo, torch.zeros(()))
        zp = (spec.fmt.qmin - torch.round(lo / scale)).clamp(spec.fmt.qmin, spec.fmt.qmax).to(torch.int32)
    return scale, zp


class ActQuantizer(nn.Module):
    """Observe, then fake-quantize an activation (per tensor, or per channel along ``axis``)."""

    def __init__(self, spec: TensorSpec) -> None:
        super().__init__()
        self.spec = spec
        self.observer = make_observer(spec)
        self.mode: Mode = "observe"
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))

    def freeze(self) -> None:
        """Scale and zero point from the observed statistics; switch to ``quantize``."""
        self.scale, self.zero_point = _qparams(self.observer, self.spec)
        self.mode = "quantize"

    def qparams(self) -> QParams:
        """The frozen per-tensor grid (call after :meth:`freeze`)."""
        if self.scale.numel() != 1:
            raise ConfigError("qparams() is for per-tensor activation quantizers")
        return QParams(float(self.scale.reshape(())), int(self.zero_point.reshape(())), self.spec.fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            return self.observer(x)
        if self.mode == "quantize":
            return fake_quant_affine(x, self.scale, self.zero_point, self.spec.fmt, self.spec.axis)
        return x

    def extra_repr(self) -> str:
        f = self.spec.fmt
        return f"{'u' if not f.signed else ''}int{f.bits}, {self.spec.observer}, mode={self.mode}"


class WeightQuantizer(nn.Module):
    """Fake-quantize a weight with scales from the weight itself (symmetric per channel by default)."""

    def __init__(self, spec: TensorSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mode: Mode = "off"
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))

    def freeze(self, weight: torch.Tensor) -> None:
        spec = self.spec
        obs = make_observer(spec if spec.observer != "channel" else TensorSpec(spec.fmt, spec.granularity))
        obs(weight.detach())
        scale, zp = obs.qparams(spec.fmt, spec.symmetric)
        if spec.pow2_scale:
            scale = self._best_pow2(weight.detach(), scale, zp)
        self.scale, self.zero_point = scale, zp
        self.mode = "quantize"

    def _best_pow2(self, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        r = rows(w, self.spec.granularity)
        down = torch.exp2(torch.floor(torch.log2(scale)))
        errs = [((fake_quant_affine(r, s, zp, self.spec.fmt, axis=0) - r) ** 2).sum(dim=1) for s in (down, 2 * down)]
        return torch.where(errs[0] <= errs[1], down, 2 * down)

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` fake-quantized with the frozen scales, whatever the mode."""
        return fake_quant_affine(w, self.scale, self.zero_point, self.spec.fmt, self.spec.axis)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.fake(w) if self.mode == "quantize" else w

    def extra_repr(self) -> str:
        return f"int{self.spec.fmt.bits}, {type(self.spec.granularity).__name__}, mode={self.mode}"


__all__ = ["ActQuantizer", "TensorSpec", "WeightQuantizer", "make_observer"]

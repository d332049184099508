"""Weight-only quantization: round the weights of every conv/linear layer to a format.

The simplest post-training method, and the main job's first table: activations
stay float, each weight tensor is replaced by its quantize-dequantize image.
The format decides the algorithm (the format is data, the algorithm a function):

=================  ==============================================================
IntFormat(b)       affine, range = min/max of each block (symmetric by default)
PowerOfTwo(b)      LBW-Net projection with a least-squares scale per block
Ternary()          exact optimal ternary support, LBW-Net scale
Binary()           sign, scale = mean |w| per block (XNOR-Net)
Log2(b)            log-domain rounding, top exponent from max |w|
DynamicFixedPoint  fractional length from max |w| per block
=================  ==============================================================
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.formats import Binary, DynamicFixedPoint, Format, IntFormat, Log2, PowerOfTwo, Ternary
from lowbit.functional import (
    binarize,
    dynamic_fixed_point,
    fake_quant_affine,
    log2_quantize,
    pow2_fake_quant,
    qparams_from_range,
    ternary_fake_quant,
)
from lowbit.granularity import Granularity, PerChannel, broadcast, rows, unrows

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Which format, at which granularity, and whether the integer range is symmetric."""

    fmt: Format = field(default_factory=lambda: IntFormat(8))
    granularity: Granularity = field(default_factory=lambda: PerChannel(0))
    symmetric: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.fmt, (IntFormat, PowerOfTwo, Ternary, Binary, Log2, DynamicFixedPoint)):
            raise ConfigError(f"WeightOnlyConfig.fmt must be a lowbit format, got {self.fmt!r}")


def weight_fake_quant(w: torch.Tensor, fmt: Format, granularity: Granularity, symmetric: bool = True) -> torch.Tensor:
    """Quantize-dequantize one weight tensor in ``fmt`` per block of ``granularity``."""
    if isinstance(fmt, IntFormat):
        r = rows(w, granularity)
        scale, zp = qparams_from_range(r.amin(dim=1), r.amax(dim=1), fmt, symmetric)
        return unrows(fake_quant_affine(r, scale, zp, fmt, axis=0), granularity, w.shape)
    if isinstance(fmt, PowerOfTwo):
        return pow2_fake_quant(w, fmt, granularity)
    if isinstance(fmt, Ternary):
        return ternary_fake_quant(w, granularity)
    if isinstance(fmt, Binary):
        alpha = rows(w, granularity).abs().mean(dim=1)
        return binarize(w, broadcast(alpha, granularity, w.shape))
    if isinstance(fmt, Log2):
        return log2_quantize(w, fmt, granularity=granularity)
    if isinstance(fmt, DynamicFixedPoint):
        return dynamic_fixed_point(w, fmt, granularity=granularity)[0]
    raise ConfigError(f"no weight quantizer for format {fmt!r}")


@torch.no_grad()
def quantize_weights(model: nn.Module, config: WeightOnlyConfig = WeightOnlyConfig(),
                     inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself) with every conv/linear weight quantized."""
    from lowbit.ptq import check_model

    check_model(model, "lowbit.weight_only.quantize_weights", single_input=False)
    if not isinstance(config, WeightOnlyConfig):
        raise ConfigError(f"config must be a WeightOnlyConfig, got {type(config).__name__}")
    out = model if inplace else copy.deepcopy(model)
    n = 0
    for module in out.modules():
        if isinstance(module, QUANTIZABLE):
            module.weight.copy_(weight_fake_quant(module.weight, config.fmt, config.granularity, config.symmetric))
            n += 1
    if n == 0:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer to quantize")
    return out

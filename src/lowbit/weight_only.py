"""Weight-only quantization: round the weights of every conv/linear layer to a spec.

The simplest post-training method, and the main job's first table: activations
stay float, each weight tensor is replaced by its quantize-dequantize image under
a :class:`~lowbit.spec.QuantSpec`, through the spec's one dispatch
(:func:`lowbit.spec.fake_quant`; the table of formats and algorithms is there)::

    quantize_weights(model, WeightOnlyConfig(QuantSpec(Ternary(), PerChannel(0))))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.granularity import PerChannel
from lowbit.spec import QuantSpec, fake_quant
from lowbit.utils.fields import checked_init

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@checked_init({"fmt": "the format and granularity are one QuantSpec now: WeightOnlyConfig(QuantSpec(IntFormat(4), PerChannel(0)))", "granularity": "the format and granularity are one QuantSpec now: WeightOnlyConfig(QuantSpec(IntFormat(4), PerChannel(0)))"})
@dataclass(frozen=True)
class WeightOnlyConfig:
    """The spec every conv/linear weight is quantized with (default: int8, one scale per output channel)."""

    weight: QuantSpec = field(default_factory=lambda: QuantSpec(IntFormat(8), PerChannel(0)))

    def __post_init__(self) -> None:
        if not isinstance(self.weight, QuantSpec):
            raise ConfigError(f"WeightOnlyConfig.weight must be a QuantSpec, e.g. QuantSpec(IntFormat(4), "
                              f"PerChannel(0)), got {self.weight!r}")


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
            module.weight.copy_(fake_quant(module.weight, config.weight))
            n += 1
    if n == 0:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer to quantize")
    return out

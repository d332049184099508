"""Training pieces for bit-slice sparsity (Zhang et al. 2019, paper M): fixed-point layers and fixed prune masks.

The paper's pipeline: pre-train with dynamic fixed-point weights, prune ``|w| < 0.01`` with masks that stay
fixed, then fine-tune with bit-slice L1 (:class:`lowbit.functional.bitslice.BitSliceL1`) through
:func:`lowbit.train`::

    model = to_fixed_point(float_model, bits=8)
    train(model, data, cfg)                                    # pre-train
    masks = magnitude_masks(model, 0.01)
    train(model, data, cfg, hooks=Hooks(loss=[BitSliceL1(0.5)], after_step=[KeepPruned(masks)]))

The layers keep float (latent) weights and quantize them in every forward pass with a straight-through
gradient, so the regularizer and the cost counters (:mod:`lowbit.cost.bitslice`) see the same codes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.functional.bitslice import check_slicing, dynamic_fixed_point


class FixedPointLinear(nn.Linear):
    """``nn.Linear`` whose weight is on the per-tensor dynamic fixed-point grid of ``bits`` magnitude bits."""

    bits: int = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, dynamic_fixed_point(self.weight, self.bits), self.bias)


class FixedPointConv2d(nn.Conv2d):
    """``nn.Conv2d`` with dynamic fixed-point weights (as :class:`FixedPointLinear`)."""

    bits: int = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, dynamic_fixed_point(self.weight, self.bits), self.bias)


_SWAP = {nn.Linear: FixedPointLinear, nn.Conv2d: FixedPointConv2d}


def to_fixed_point(model: nn.Module, bits: int = 8) -> nn.Module:
    """A copy of ``model`` whose Linear and Conv2d layers quantize their weights (the caller's model is kept)."""
    check_slicing(bits)
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if type(m) in _SWAP or isinstance(m, tuple(_SWAP.values()))]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv2d layer to put in fixed point")
    for m in layers:
        m.__class__ = _SWAP.get(type(m), type(m))  # same parameters and buffers, another forward
        m.bits = bits
    return model


def magnitude_masks(model: nn.Module, threshold: float = 0.01) -> dict[str, torch.Tensor]:
    """``{name: |w| >= threshold}`` for the weight of every Linear and Conv layer (True: kept)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ConfigError(f"the prune threshold must be a number >= 0, got {threshold!r}")
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return {f"{name}.weight" if name else "weight": m.weight.detach().abs() >= threshold
            for name, m in model.named_modules() if isinstance(m, layers)}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params or params[name].shape != mask.shape:
                raise ConfigError(f"the mask {name!r} does not fit the model (no such weight, or another shape)")
            params[name].mul_(mask)


@dataclass(frozen=True)
class KeepPruned:
    """``after_step`` hook: re-zero the pruned weights after every optimizer step, so the masks stay fixed.

    Equivalent, for the weights, to masking their gradients (the paper's way) with any optimizer state.
    """

    masks: dict[str, torch.Tensor] = field(repr=False)

    def __call__(self, model: nn.Module, step: int) -> None:
        apply_masks(model, self.masks)


def kept_fraction(masks: dict[str, torch.Tensor]) -> float:
    """The fraction of the masked weights that are kept."""
    return sum(int(m.sum()) for m in masks.values()) / max(1, sum(m.numel() for m in masks.values()))


__all__ = ["FixedPointConv2d", "FixedPointLinear", "KeepPruned", "apply_masks", "kept_fraction", "magnitude_masks",
           "to_fixed_point"]

"""Per-tensor quantization parameters of an activation, as the integer model sees them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.formats import IntFormat
from lowbit.functional.affine import quantize_affine


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization parameters of an activation: value = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    fmt: IntFormat

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32) of a tensor that lies on this grid (or is to be quantized onto it)."""
        return quantize_affine(x, torch.tensor([self.scale]), torch.tensor([self.zero_point]), self.fmt)


__all__ = ["QParams"]

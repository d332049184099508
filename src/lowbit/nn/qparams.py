"""Per-tensor quantization parameters of an activation, as the integer model sees them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError
from lowbit.formats import IntFormat


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization parameters of an activation: value = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    fmt: IntFormat

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32) of a tensor on this grid (or to be quantized onto it): PyTorch's arithmetic,
        ``clamp(round(x * (1/s)) + z)`` with the reciprocal in float32, as :func:`quantize_affine`."""
        inv = torch.reciprocal(torch.tensor(self.scale, dtype=torch.float32))
        q = torch.round(x * inv) + self.zero_point
        return q.clamp_(self.fmt.qmin, self.fmt.qmax).to(torch.int32)


def offset(q: QParams, width: int = 8) -> int:
    """Stored int``width`` = code - offset: unsigned codes are shifted down by ``2^(width-1)`` (128 for int8,
    32768 for the int16 input of an integer recurrent layer, :mod:`lowbit.nn.recurrent`)."""
    if q.fmt.bits > width:
        raise ConfigError(f"the integer model stores int{width}: {q.fmt.bits}-bit activations do not fit "
                          f"(use act_bits <= {width})")
    return 0 if q.fmt.signed else 1 << (width - 1)


def stored_zero_point(q: QParams, width: int = 8) -> int:
    """The zero point in the stored int``width`` domain."""
    return q.zero_point - offset(q, width)


__all__ = ["QParams", "offset", "stored_zero_point"]

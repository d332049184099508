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


@dataclass(frozen=True, eq=False)
class ChannelQParams:
    """One grid per feature (the last dimension): value ``= (q - zero_point[c]) * scale[c]`` (float32 ``scale``,
    int64 ``zero_point``, both of shape (C,)), the output grid of a layer only LayerNorms read
    (:mod:`lowbit.graph.norm_inputs`)."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    fmt: IntFormat

    @classmethod
    def of(cls, q: QParams | ChannelQParams, features: int) -> ChannelQParams:
        """``q`` as a grid per feature (a per-tensor grid repeated ``features`` times)."""
        if isinstance(q, ChannelQParams):
            return q
        return cls(torch.full((features,), q.scale, dtype=torch.float32),
                   torch.full((features,), q.zero_point, dtype=torch.int64), q.fmt)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32) along the last dimension, as :meth:`QParams.codes` feature by feature."""
        inv = torch.reciprocal(self.scale.to(torch.float32))
        q = torch.round(x * inv) + self.zero_point.to(torch.float32)
        return q.clamp_(self.fmt.qmin, self.fmt.qmax).to(torch.int32)

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """float32 values of codes along the last dimension: ``(q - z_c) s_c``."""
        return (codes.to(torch.float32) - self.zero_point.to(torch.float32)) * self.scale.to(torch.float32)

    def same(self, other: object) -> bool:
        return (isinstance(other, ChannelQParams) and self.fmt == other.fmt
                and torch.equal(self.scale.to(torch.float32), other.scale.to(torch.float32))
                and torch.equal(self.zero_point.to(torch.int64), other.zero_point.to(torch.int64)))


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


__all__ = ["ChannelQParams", "QParams", "offset", "stored_zero_point"]

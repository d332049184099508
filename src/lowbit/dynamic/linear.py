"""A linear map with int8 weights (one scale per output channel) on dynamically quantized rows.

See :mod:`lowbit.functional.dynamic` for the arithmetic. :class:`DynamicWeight` holds the codes
once, packed for lowbit's int8 GEMM (``lowbit.integer.vnni``: AVX-512 VNNI or AVX2) where the CPU
has it; :meth:`DynamicWeight.matmul` is the one product every dynamic layer calls. Its integer
product is exact on every path (the C GEMM in int32, or float64, where every partial sum of int8
products is an exact integer), so a layer's output does not depend on which path ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.functional.dynamic import check_bits, quantize_rows
from lowbit.ptq import int_weight
from lowbit.spec import solve_weight, weight_codes


@dataclass(frozen=True)
class DynamicWeight:
    """Int8 codes ``Q_w`` (N, K), their per-row scales ``s_w`` (N,), and their GEMM packing (or None)."""

    codes: torch.Tensor
    scale: torch.Tensor
    packed: object | None

    @classmethod
    def of(cls, w: torch.Tensor, bits: int = 8) -> DynamicWeight:
        """Symmetric ``bits``-bit codes of the float matrix ``w`` (N, K), one scale per row (output channel)."""
        from lowbit.integer import vnni

        check_bits(bits)
        spec = int_weight(bits)
        grid = solve_weight(w.detach().float(), spec)
        codes = weight_codes(w.detach().float(), spec, grid).to(torch.int8).contiguous()
        packed = vnni.pack_weight(codes) if vnni.available() and codes.shape[1] < vnni.MAX_K else None
        return cls(codes, grid.scale.reshape(-1).to(torch.float32), packed)

    def int_product(self, q: torch.Tensor) -> torch.Tensor:
        """Exact int32 ``q Q_w^T`` of int8 rows ``q`` (M, K)."""
        if self.packed is not None and q.shape[0] > 0:
            from lowbit.integer import vnni

            p = self.packed
            rows = q.contiguous() if p.k == p.kp else vnni.pack_rows(q, p.kp)
            return vnni.gemm(rows, p, p.correction)
        return (q.to(torch.float64) @ self.codes.to(torch.float64).T).to(torch.int32)

    def matmul(self, x: torch.Tensor, bits: int = 8) -> torch.Tensor:
        """``x W^T`` (float32, ``x``'s leading shape) with ``x`` quantized per row at ``bits`` bits."""
        lead = x.shape[:-1]
        q, s = quantize_rows(x.reshape(-1, x.shape[-1]), bits)
        y = self.int_product(q).to(torch.float32)
        return y.mul_(s[:, None]).mul_(self.scale).reshape(*lead, -1)  # in place: no (M, N) scale matrix


class DynamicLinear(nn.Module):
    """``nn.Linear`` with int8 weights and per-row dynamic int8 inputs (float32 in, float32 out)."""

    def __init__(self, linear: nn.Linear, bits: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        self.weight = DynamicWeight.of(linear.weight, bits)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.weight.matmul(x, self.bits)
        return y if self.bias is None else y.add_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, W int{self.bits} per channel, A int{self.bits} per row"


__all__ = ["DynamicLinear", "DynamicWeight"]

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

from lowbit.functional.dynamic import check_bits, quantize_rows, row_scales
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
        packed = vnni.pack_weight(codes) if vnni.available() and codes.shape[1] <= vnni.MAX_K else None
        return cls(codes, grid.scale.reshape(-1).to(torch.float32), packed)

    def int_product(self, q: torch.Tensor) -> torch.Tensor:
        """Exact int32 ``q Q_w^T`` of int8 rows ``q`` (M, K), in float64 (every partial sum an exact integer): the
        path without lowbit's int8 GEMM (:func:`_c_matmul` runs the packed weight)."""
        return (q.to(torch.float64) @ self.codes.to(torch.float64).T).to(torch.int32)

    def matmul(self, x: torch.Tensor, bits: int = 8, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x W^T (+ bias)`` (float32, ``x``'s leading shape) with ``x`` quantized per row at ``bits`` bits.
        With the C GEMM, the rows are quantized and the product scaled in C (``csrc/dynrnn.c``), with the same
        float32 operations as here, so both paths give the same bits."""
        lead, rows = x.shape[:-1], x.reshape(-1, x.shape[-1]).to(torch.float32)
        bad = ~torch.isfinite(rows).all(dim=1)  # a NaN or inf has no integer code: its row's output is NaN
        if bool(bad.any()):
            rows = torch.where(bad[:, None], 0.0, rows)
        if self.packed is not None and rows.shape[0] > 0:
            y = _c_matmul(self, rows.contiguous(), bits, bias)
        else:
            q, s = quantize_rows(rows, bits)
            y = self.int_product(q).to(torch.float32).mul_(s[:, None]).mul_(self.scale)  # in place: no (M, N) scales
            y = y if bias is None else y.add_(bias)
        if bool(bad.any()):
            y[bad] = float("nan")
        return y.reshape(*lead, -1)


def _c_matmul(w: DynamicWeight, x: torch.Tensor, bits: int, bias: torch.Tensor | None) -> torch.Tensor:
    """Rows quantized in C to the GEMM's uint8 rows, the GEMM, the scaling (and bias) in C."""
    from lowbit.integer import vnni
    from lowbit.native import cext, guard

    p, (m, k), b = w.packed, x.shape, guard.buf
    a, out = torch.empty((m, p.kp), dtype=torch.uint8), torch.empty((m, p.n))
    rs = row_scales(x, bits)
    qmax = check_bits(bits)
    guard.quantize_rows_u8(b(x, "lowbit_quantize_rows_u8", "x"), m, k, p.kp, qmax, b(rs), b(a))
    cext.library().lowbit_quantize_rows_u8(x.data_ptr(), m, k, p.kp, qmax, rs.data_ptr(), a.data_ptr())
    acc = vnni.gemm(a, p, p.correction)
    guard.dyn_dequant(b(acc), m, p.n, b(rs), b(w.scale), b(bias), b(out))
    cext.library().lowbit_dyn_dequant(acc.data_ptr(), m, p.n, rs.data_ptr(), w.scale.data_ptr(), cext.ptr(bias),
                                      out.data_ptr())
    return out


class DynamicLinear(nn.Module):
    """``nn.Linear`` with int8 weights and per-row dynamic int8 inputs (float32 in, float32 out)."""

    def __init__(self, linear: nn.Linear, bits: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        self.weight = DynamicWeight.of(linear.weight, bits)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.matmul(x, self.bits, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, W int{self.bits} per channel, A int{self.bits} per row"


__all__ = ["DynamicLinear", "DynamicWeight"]

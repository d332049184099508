"""Few-bit GEMMs as sums of binary GEMMs (bit-serial): QNN's W1A2/W1A4, W2A2, ternary weights on few-bit inputs.

Input codes ``x`` (M, K) lie in ``[lo, lo + 2^B)``; ``u = x - lo`` has ``B`` bit-planes ``b_j`` (bit ``j`` of
``u``), each a row of signs ``s_j = 2 b_j - 1``. The weight codes are written as ``P`` sign planes ``v_p`` (+-1)
with integer coefficients, ``2 w = sum_p a_p v_p + a0``:

=================  ====================================  =============  ======
weight codes       planes                                ``a``          ``a0``
=================  ====================================  =============  ======
binary {-1, +1}    ``v = w``                              ``(2,)``       0
ternary {-1, 0, 1} ``v_1 = [w >= 0]``, ``v_0 = [w > 0]``  ``(1, 1)``     0
2-bit {-2 .. 1}    ``v_1 = [w >= 0]``, ``v_0 = [w odd]``  ``(2, 1)``     -1
=================  ====================================  =============  ======

(``[c]`` is +1 where ``c`` holds, else -1). With the XNOR-popcount GEMM ``G = K - 2 popcount(v XOR s)`` and
``V = sum_k v_k``, ``sum_k v_k b_k = (G + V) / 2``, so

    4 sum_k w_k b_jk = sum_p a_p (G_pj + V_p) + 2 a0 popcount(b_j)
    sum_k w_k x_k    = sum_j 2^j (4 sum_k w_k b_jk) / 4 + lo sum_k w_k

exactly: the integers of an int8 GEMM of the codes, from ``B P`` binary GEMMs (Hubara et al. 2018 compute
QNN's multi-bit layers this way; so does BitSplit-Net). :func:`bitserial_reference` is this sum in PyTorch;
``csrc/bits.c`` (``lowbit_bits_serial_gemm``) runs it on the XNOR kernel for the integer model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.bitwise.pack import pack_signs
from lowbit.bitwise.reference import binary_gemm_reference
from lowbit.errors import ConfigError

KINDS = ("binary", "ternary", "int2")


def weight_planes(codes: torch.Tensor, kind: str) -> tuple[list[torch.Tensor], tuple[int, ...], int]:
    """The +-1 planes (float32, ``codes``' shape), coefficients ``a`` and ``a0`` of weight ``codes`` (see the table)."""
    w = codes.to(torch.int64)
    sign = lambda c: torch.where(c, 1.0, -1.0)  # noqa: E731
    if kind == "binary":
        if bool((w.abs() != 1).any()):
            raise ConfigError("binary weight planes need codes -1 and +1")
        return [w.to(torch.float32)], (2,), 0
    if kind == "ternary":
        if bool((w.abs() > 1).any()):
            raise ConfigError("ternary weight planes need codes in {-1, 0, 1}")
        return [sign(w >= 0), sign(w > 0)], (1, 1), 0
    if kind == "int2":
        if bool(((w < -2) | (w > 1)).any()):
            raise ConfigError("2-bit weight planes need two's complement codes in -2..1")
        return [sign(w >= 0), sign(w % 2 == 1)], (2, 1), -1
    raise ConfigError(f"weight plane kind {kind!r}; allowed: {', '.join(KINDS)}")


def bitserial_reference(x: torch.Tensor, lo: int, bits: int, codes: torch.Tensor, kind: str) -> torch.Tensor:
    """int64 (M, N) ``x @ codes.T`` for int codes ``x`` (M, K) in ``[lo, lo + 2^bits)``, as the sum of binary GEMMs
    of the module docstring (an oracle for the C kernel; the int matmul is the oracle of this)."""
    u = x.to(torch.int64) - lo
    if bool((u < 0).any()) or bool((u >= 1 << bits).any()):
        raise ConfigError(f"bitserial_reference: codes outside [{lo}, {lo + (1 << bits) - 1}]")
    k = x.shape[1]
    planes, a, a0 = weight_planes(codes, kind)
    packed = [pack_signs(v.reshape(v.shape[0], -1)) for v in planes]
    vsum = [v.reshape(v.shape[0], -1).sum(dim=1).to(torch.int64) for v in planes]
    acc = torch.zeros(x.shape[0], codes.shape[0], dtype=torch.int64)
    for j in range(bits):
        b = (u >> j) & 1
        s = pack_signs((2 * b - 1).to(torch.float32))
        four = 2 * a0 * b.sum(dim=1, keepdim=True)
        for v, ap, vs in zip(packed, a, vsum):
            four = four + ap * (binary_gemm_reference(s, v, k).to(torch.int64) + vs)
        acc += four * (1 << j)
    return acc // 4 + lo * codes.to(torch.int64).reshape(codes.shape[0], -1).sum(dim=1)


@dataclass(frozen=True)
class PackedPlanes:
    """Weight planes ready for ``lowbit_bits_serial_gemm``: XNOR panels of each plane, one after another."""

    panels: torch.Tensor  # uint64, P panel blocks
    a: torch.Tensor  # int64 (P,)
    a0: int
    vsum: torch.Tensor  # int64 (P, N)
    wsum: torch.Tensor  # int64 (N,)
    n: int
    k: int

    @property
    def planes(self) -> int:
        return int(self.a.numel())


def pack_planes(codes: torch.Tensor, kind: str) -> PackedPlanes:
    """The weight rows ``codes`` (N, K) as :class:`PackedPlanes` (panels from :func:`lowbit.bitwise.pack_weight`)."""
    from lowbit.bitwise.kernels import pack_weight

    n, k = codes.shape
    planes, a, a0 = weight_planes(codes, kind)
    panels = torch.cat([pack_weight(pack_signs(v), k).panels.reshape(-1) for v in planes])
    vsum = torch.stack([v.sum(dim=1) for v in planes]).to(torch.int64).contiguous()
    return PackedPlanes(panels.contiguous(), torch.tensor(a, dtype=torch.int64), a0, vsum,
                        codes.to(torch.int64).sum(dim=1).contiguous(), n, k)


__all__ = ["KINDS", "PackedPlanes", "bitserial_reference", "pack_planes", "weight_planes"]

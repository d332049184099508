"""Bit-packing of +-1 tensors into 64-bit words along the last dimension (K).

Layout: element ``k`` of a row is bit ``k % 64`` (least significant first) of word ``k // 64``;
bit 1 stands for +1 and bit 0 for -1, and ``sign(x) = +1 if x >= 0 else -1`` (Courbariaux et al.,
"Binarized Neural Networks", 2016: deterministic binarization). A row of K values takes
``W = ceil(K / 64)`` words (:func:`words`), stored as ``torch.uint64``.

Padding: when K is not a multiple of 64, the ``64 W - K`` bits past K are **0 in every packed row**.
The binary GEMM computes ``K - 2 popcount(a XOR b)`` with the true K (:mod:`lowbit.bitwise.reference`);
the padding bits of both operands are equal, so their XOR is 0 and they add nothing to the popcount.
(Read as values they are -1 times -1 = +1 products, which the true K, not ``64 W``, leaves out.)
The compiled kernel does not rely on the caller for this: it clears them in the weight when it packs it
and masks them off the last word of the other operand (:func:`clear_padding` does the same in PyTorch,
:func:`padding_is_clear` checks).

Pure PyTorch: the bits are gathered into bytes (``sum_i bit_i 2^i``) and 8 bytes are viewed as one
little-endian uint64 word, which puts byte ``j`` in bits ``8 j .. 8 j + 7`` of the word.
"""

from __future__ import annotations

import sys

import torch

from lowbit.errors import DataError, ShapeError

WORD_BITS = 64
_SHIFTS = torch.arange(8, dtype=torch.uint8)  # bit i of a byte


def words(k: int) -> int:
    """Number of 64-bit words that hold ``k`` bits: ``ceil(k / 64)``."""
    return (k + WORD_BITS - 1) // WORD_BITS


def _little_endian() -> None:
    if sys.byteorder != "little":  # the uint8 -> uint64 view below puts byte 0 in the low bits only there
        raise RuntimeError("lowbit.bitwise packs bits for little-endian CPUs only")


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (..., K) into uint64 words (..., ceil(K / 64)); the padding bits are 0."""
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.bool:
        got = bits.dtype if isinstance(bits, torch.Tensor) else type(bits).__name__
        raise ShapeError(f"pack_bits: expected a bool tensor, got {got}; use pack_signs for real values")
    if bits.ndim == 0:
        raise ShapeError("pack_bits: expected a tensor (..., K), got a scalar")
    _little_endian()
    *lead, k = bits.shape
    w = words(k)
    if w == 0:  # no values: no words (a uint8 -> uint64 view of an empty last dimension is refused)
        return torch.zeros((*lead, 0), dtype=torch.uint64, device=bits.device)
    padded = torch.zeros((*lead, w * WORD_BITS), dtype=torch.uint8, device=bits.device)
    padded[..., :k] = bits.to(torch.uint8)
    # (..., 8 W, 8) bits -> (..., 8 W) bytes: byte = sum_i bit_i << i (distinct bits: the sum is an OR)
    grouped = padded.reshape(*lead, w * 8, 8) << _SHIFTS.to(bits.device)
    packed = grouped.sum(dim=-1, dtype=torch.uint8)
    return packed.contiguous().view(torch.uint64)


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Pack ``sign(x)`` of a real tensor (..., K) into uint64 words (..., ceil(K / 64)): bit 1 where
    ``x >= 0`` (+1), bit 0 elsewhere (-1), padding bits 0. NaN has no sign: it raises DataError."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"pack_signs: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise ShapeError(f"pack_signs: expected a real-valued tensor, got {x.dtype}; use pack_bits for bools")
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        raise DataError(f"pack_signs: the input holds {int(torch.isnan(x).sum())} NaN values, which have no sign; "
                        "check the layer that produced them")
    return pack_bits(x >= 0)


def unpack_bits(packed: torch.Tensor, k: int) -> torch.Tensor:
    """The bool tensor (..., k) packed in uint64 words (..., ceil(k / 64)) (the inverse of :func:`pack_bits`)."""
    _check_words("unpack_bits", packed, k)
    return unpack_bits_all(packed)[..., :k]


def unpack_signs(packed: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The +-1 values (..., k) in ``dtype`` packed in uint64 words (..., ceil(k / 64))."""
    bits = unpack_bits(packed, k)
    return bits.to(dtype) * 2 - 1


def padding_is_clear(packed: torch.Tensor, k: int) -> bool:
    """True when every bit past ``k`` in the last word of each row is 0 (see the module's note on padding)."""
    _check_words("padding_is_clear", packed, k)
    if k % WORD_BITS == 0 or packed.numel() == 0:
        return True
    # only the last word holds padding: its bits k % 64 .. 63 must be 0, i.e. the word shifted right by k % 64
    # is 0 (read as int64: an arithmetic shift keeps a set top bit set, so the test is the same)
    last = packed[..., -1].view(torch.int64)
    return not bool((last >> (k % WORD_BITS)).any())


def clear_padding(packed: torch.Tensor, k: int) -> torch.Tensor:
    """A copy of uint64 words (..., ceil(k / 64)) with the bits past ``k`` set to 0."""
    _check_words("clear_padding", packed, k)
    out = packed.clone()
    if k % WORD_BITS:
        last = out[..., -1].view(torch.int64)
        out[..., -1] = (last & ((1 << (k % WORD_BITS)) - 1)).view(torch.uint64)
    return out


def unpack_bits_all(packed: torch.Tensor) -> torch.Tensor:
    """All 64 W bits of uint64 words (..., W), padding included, as bool (..., 64 W)."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint64:
        raise ShapeError("unpack_bits_all: expected a uint64 tensor of packed words")
    _little_endian()
    *lead, w = packed.shape
    as_bytes = packed.contiguous().view(torch.uint8)  # (..., 8 W)
    bits = (as_bytes.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 1  # (..., 8 W, 8): bit i of byte j
    return bits.reshape(*lead, w * WORD_BITS).to(torch.bool)


def _check_words(fn: str, packed: torch.Tensor, k: int) -> None:
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint64:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ShapeError(f"{fn}: expected packed uint64 words (from pack_signs), got {got}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ShapeError(f"{fn}: k = {k!r}; expected the number of packed values, an integer >= 1")
    if packed.ndim == 0 or packed.shape[-1] != words(k):
        raise ShapeError(f"{fn}: {k} values take {words(k)} words, but the last dimension of the packed tensor "
                         f"{tuple(packed.shape)} holds {packed.shape[-1] if packed.ndim else 0}")


__all__ = ["WORD_BITS", "clear_padding", "pack_bits", "pack_signs", "padding_is_clear", "unpack_bits", "unpack_bits_all",
           "unpack_signs", "words"]

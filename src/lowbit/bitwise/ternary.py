"""Ternary-weight GEMM on the bitwise engine (``csrc/ternary.c``): weights in {-1, 0, +1} as two bit-planes.

    out[m, n] = popcount(m_n) - 2 popcount(m_n AND (s_n XOR b_m))                  binary activations b
    out[m, n] = popcount(m_n AND q_m) - 2 popcount(m_n AND q_m AND (s_n XOR t_m))   ternary activations (t, q)

int32 (M, N), with s the sign plane (1 for +1) and m the mask plane (1 for a non-zero) of a weight row; the maths
and the form the kernel evaluates: :func:`lowbit.bitwise.reference.ternary_gemm_reference`.

* :func:`pack_ternary`: int8 codes (..., K) in {-1, 0, 1} -> the (sign, mask) planes, uint64 words (..., ceil(K / 64));
* :func:`pack_ternary_weight`: a weight's codes (N, K) -> :class:`PackedTernary`, interleaved once into panels of
  32 columns with popcount(m) of each column made once;
* :func:`ternary_gemm`: the GEMM of binary activations (uint64 words from :func:`lowbit.bitwise.pack_signs`) or
  ternary ones (a pair of planes from :func:`pack_ternary`) with a :class:`PackedTernary`.

Same library, backends and run-time choice as the binary GEMM (:func:`lowbit.bitwise.kernels.backends`): AVX-512
VPOPCNTDQ (one ``vpternlogq`` + ``vpopcntq`` + ``vpaddq`` per word and 8 outputs, twice that for ternary
activations), AVX2, scalar, or the PyTorch reference without a compiler. Every argument is checked here before
the call: the kernel trusts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.bitwise import kernels, reference
from lowbit.bitwise.kernels import PANEL, REFERENCE, backend, backends, library
from lowbit.bitwise.pack import pack_bits, words
from lowbit.errors import ConfigError, DataError, ShapeError

MAX_K = 2**30 - 64  # the kernel's sum over both binary planes of a ternary activation, <= 2 ceil(K / 64) 64, < 2^31


def _panel_cols(n: int) -> int:
    return (n + PANEL - 1) // PANEL * PANEL


def pack_ternary(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (sign, mask) bit-planes of ternary codes (..., K) (an integer tensor with values in {-1, 0, 1}):
    sign bit 1 for +1, mask bit 1 for a non-zero, each packed into uint64 words (..., ceil(K / 64)), padding 0.
    int8 codes are packed in C (``lowbit_ternary_pack_codes``, AVX-512 where the CPU has it), others in PyTorch."""
    if not isinstance(codes, torch.Tensor):
        raise ShapeError(f"pack_ternary: expected an integer tensor of codes in {{-1, 0, 1}}, got {type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.is_complex() or codes.dtype == torch.bool:
        raise ShapeError(f"pack_ternary: the codes are {codes.dtype}; expected an integer tensor (int8) of values in "
                         "{-1, 0, 1}: round and convert them first")
    if codes.ndim == 0 or codes.shape[-1] < 1:
        raise ShapeError(f"pack_ternary: expected codes (..., K) with K >= 1, got shape {tuple(codes.shape)}")
    if codes.device.type != "cpu":
        raise ShapeError(f"pack_ternary: the codes are on {codes.device}; move them with .cpu()")
    lib = library()
    if lib is not None and codes.dtype == torch.int8:  # in C: 64 codes per compare with AVX-512
        rows = codes.reshape(-1, codes.shape[-1]).contiguous()
        k = codes.shape[-1]
        sign = torch.empty((rows.shape[0], words(k)), dtype=torch.uint64)
        mask = torch.empty_like(sign)
        name = backend()
        bad = lib.lowbit_ternary_pack_codes(rows.data_ptr(), rows.shape[0], k, sign.data_ptr(), mask.data_ptr(),
                                            kernels.ISAS.index(name) if name != REFERENCE else 0)
        if not bad:
            return sign.reshape(*codes.shape[:-1], words(k)), mask.reshape(*codes.shape[:-1], words(k))
    bad = (codes < -1) | (codes > 1)
    if bool(bad.any()):
        raise DataError(f"pack_ternary: {int(bad.sum())} codes lie outside {{-1, 0, 1}} (e.g. "
                        f"{int(codes[bad][0])}); a ternary weight holds only -1, 0 and +1")
    return pack_bits(codes > 0), pack_bits(codes != 0)


@dataclass(frozen=True)
class PackedTernary:
    """A ternary weight (N, K) as bit-planes, packed once by :func:`pack_ternary_weight`.

    ``sign``, ``mask``: the planes (N, ceil(K / 64)) uint64 (the reference backend and the checks read them);
    ``panels``: the kernel's layout (``csrc/ternary.c``), ceil(N / 32) 32 ceil(K / 64) 2 words; ``pcm``:
    popcount of each mask row, int32, padded with zeros to ceil(N / 32) 32 (both None without the C library)."""

    sign: torch.Tensor
    mask: torch.Tensor
    panels: torch.Tensor | None
    pcm: torch.Tensor | None
    n: int
    k: int


def pack_ternary_weight(w_codes: torch.Tensor) -> PackedTernary:
    """Pack a ternary weight's codes (N, K) (int8 in {-1, 0, 1}) into :class:`PackedTernary`: the two planes, the
    panels and popcount(mask) per column."""
    if not isinstance(w_codes, torch.Tensor) or w_codes.ndim != 2:
        got = f"shape {tuple(w_codes.shape)}" if isinstance(w_codes, torch.Tensor) else type(w_codes).__name__
        raise ShapeError(f"pack_ternary_weight: expected the codes (N, K) of a weight, a 2-D int8 tensor; got {got}")
    k = w_codes.shape[1]
    if not 1 <= k <= MAX_K:
        raise ShapeError(f"pack_ternary_weight: rows of K = {k} codes; expected 1..{MAX_K}")
    sign, mask = pack_ternary(w_codes)
    return pack_ternary_weight_planes(sign, mask, k)


def _plane(name: str, t: object, k: int, rows: int | None = None) -> torch.Tensor:
    """A packed plane: a contiguous 2-D uint64 CPU tensor (rows, ceil(k / 64))."""
    fn = "ternary_gemm"
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{fn}: {name} is a {type(t).__name__}; expected packed uint64 words (from pack_signs for "
                         "binary activations, pack_ternary for ternary ones)")
    if t.dtype != torch.uint64:
        raise ShapeError(f"{fn}: {name} is {t.dtype}; expected packed uint64 words: pass pack_signs(x) (binary) or "
                         "pack_ternary(codes) (ternary)")
    if t.ndim != 2:
        raise ShapeError(f"{fn}: {name} has shape {tuple(t.shape)}; expected 2-D packed words (rows, W): reshape "
                         "the rows first")
    if t.device.type != "cpu":
        raise ShapeError(f"{fn}: {name} is on {t.device}; the kernel runs on the CPU: move it with .cpu()")
    if not t.is_contiguous():
        raise ShapeError(f"{fn}: {name} of shape {tuple(t.shape)} is not contiguous; pass it .contiguous()")
    if t.shape[1] != words(k):
        raise ShapeError(f"{fn}: {name} has {t.shape[1]} words per row, but K = {k} values take {words(k)}; pack "
                         "the activations and the weight along the same K")
    if rows is not None and t.shape[0] != rows:
        raise ShapeError(f"{fn}: {name} has {t.shape[0]} rows, its sign plane {rows}; the two planes of the "
                         "ternary activations must have the same shape")
    return t


def _check_packed(w: object, k: int) -> PackedTernary:
    """A :class:`PackedTernary` whose fields agree (a hand-made one could hand the kernel a short buffer)."""
    if not isinstance(w, PackedTernary):
        raise ShapeError(f"ternary_gemm: the weight is a {type(w).__name__}; expected a PackedTernary from "
                         "pack_ternary_weight(codes)")
    if w.k != k:
        raise ShapeError(f"ternary_gemm: the packed weight holds K = {w.k} values per row, the call says k = {k}")
    _plane("the weight's sign plane", w.sign, k)
    _plane("the weight's mask plane", w.mask, k, w.sign.shape[0])
    if w.n != w.sign.shape[0]:
        raise ShapeError(f"ternary_gemm: the packed weight says N = {w.n} but holds {w.sign.shape[0]} rows")
    if (w.panels is None) != (w.pcm is None):
        raise ShapeError("ternary_gemm: the packed weight has panels without popcounts or the reverse; make it with "
                         "pack_ternary_weight")
    if w.panels is not None:
        cols = _panel_cols(w.n)
        for t, dtype, size in ((w.panels, torch.uint64, cols * words(k) * 2), (w.pcm, torch.int32, cols)):
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or not t.is_contiguous() \
                    or t.device.type != "cpu" or t.numel() != size:
                raise ShapeError("ternary_gemm: the packed weight's panels or popcounts do not match its planes; "
                                 "make it with pack_ternary_weight")
    return w


def ternary_gemm(a: torch.Tensor | tuple[torch.Tensor, torch.Tensor], packed: PackedTernary, k: int,
                 isa: str | None = None, threads: int = 1) -> torch.Tensor:
    """int32 (M, N) ``sum_k x[m, k] w[n, k]`` of a ternary weight (:class:`PackedTernary`, from
    :func:`pack_ternary_weight`) and activations ``a``: binary, the bits (M, ceil(k / 64)) uint64 of
    :func:`lowbit.bitwise.pack_signs`; or ternary, the pair (sign, mask) of such planes from :func:`pack_ternary`.

    ``isa`` forces a backend of :func:`lowbit.bitwise.kernels.backends` (default the best); ``threads`` splits the
    rows of ``a`` (OpenMP)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ConfigError(f"ternary_gemm: k = {k!r}; expected the number of values per row, 1..{MAX_K}")
    if isinstance(a, (tuple, list)):
        if len(a) != 2:
            raise ShapeError(f"ternary_gemm: ternary activations are a pair (sign, mask) of packed planes, got "
                             f"{len(a)} items")
        sign = _plane("a's sign plane", a[0], k)
        mask = _plane("a's mask plane", a[1], k, sign.shape[0])
        planes: tuple[torch.Tensor, ...] = (sign, mask)
    else:
        planes = (_plane("a", a, k),)
    w = _check_packed(packed, k)
    name = backend() if isa is None else isa
    if name not in backends():
        raise ConfigError(f"ternary_gemm: isa = {isa!r}; this machine runs {', '.join(map(repr, backends()))}")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4096:
        raise ConfigError(f"ternary_gemm: threads = {threads!r}; expected an integer in 1..4096")
    if name == REFERENCE:
        return reference.ternary_gemm_reference(planes if len(planes) == 2 else planes[0], w.sign, w.mask, k)
    if w.panels is None:  # packed without the library (it was built since): pack the planes now
        w = pack_ternary_weight_planes(w.sign, w.mask, k)
    m = planes[0].shape[0]
    out = torch.empty((m, w.n), dtype=torch.int32)
    rc = library().lowbit_ternary_gemm(planes[0].data_ptr(), planes[1].data_ptr() if len(planes) == 2 else None, m,
                                       w.panels.data_ptr(), w.pcm.data_ptr(), w.n, words(k), kernels.ISAS.index(name),
                                       out.data_ptr(), threads)
    if rc == -2:
        raise MemoryError(f"ternary_gemm: no memory for the activation planes of {m} rows")
    if rc != 0:  # the CPU lacks the instruction set: backends() would not have listed it
        raise RuntimeError(f"ternary_gemm: the ternary kernel refused isa {name!r} (code {rc})")
    return out


def pack_ternary_weight_planes(sign: torch.Tensor, mask: torch.Tensor, k: int) -> PackedTernary:
    """:func:`pack_ternary_weight` from planes already packed (N, ceil(k / 64)) uint64 (a sign bit where the mask
    is 0 and the bits past k are ignored)."""
    sign = _plane("sign", sign, k)
    mask = _plane("mask", mask, k, sign.shape[0])
    n, lib = sign.shape[0], library()
    if lib is None:
        return PackedTernary(sign, mask, None, None, n, k)
    panels = torch.empty(_panel_cols(n) * words(k) * 2, dtype=torch.uint64)
    pcm = torch.empty(_panel_cols(n), dtype=torch.int32)
    lib.lowbit_ternary_pack_b(sign.data_ptr(), mask.data_ptr(), n, words(k), k, panels.data_ptr(), pcm.data_ptr())
    return PackedTernary(sign, mask, panels, pcm, n, k)


__all__ = ["MAX_K", "PackedTernary", "pack_ternary", "pack_ternary_weight", "pack_ternary_weight_planes",
           "ternary_gemm"]

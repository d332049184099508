"""The compiled binary GEMM (``csrc/xnor.c``): XNOR-popcount on packed words, optional threshold epilogue.

    out[m, n] = K - 2 popcount(a[m] XOR b[n])                       int32 (M, N), or
    bit[m, n] = (out[m, n] >= thr[n]) XOR flip[n]                   packed uint64 (M, ceil(N / 64))

(the maths: :mod:`lowbit.bitwise.reference`). The operand ``b`` (the weights) is interleaved once into panels of
32 columns (:func:`pack_weight`, :class:`PackedWeight`) so that the kernel is an outer product with one output
per 64-bit lane (no horizontal sums, no padding of K to 512 bits); a plain (N, W) operand is interleaved on each
call. The bits past K need not be 0: the kernel clears them in the panels and masks them off ``a``.

The library also holds ``csrc/ternary.c``, the ternary-weight GEMM on two bit-planes (:mod:`lowbit.bitwise.ternary`).
The C sources are compiled on first use with the helpers of :mod:`lowbit.native.cext` (same compiler, cache
folder ``$LOWBIT_CACHE`` or ``~/.cache/lowbit``, atomic write), but without
``-march=native``: each instruction set is compiled with a target attribute and chosen at run time, best first:

* ``"avx512-vpopcntdq"``: 4 rows x 32 columns in 16 zmm accumulators, ``vpxorq`` + ``vpopcntq`` + ``vpaddq``;
* ``"avx2"``: 2 rows x 8 columns, popcount by a 4-bit ``vpshufb`` lookup (Mula, Kurz, Lemire 2018);
* ``"scalar"``: 2 rows x 4 columns of 64-bit ``popcnt``;
* ``"reference"``: no C library (no working compiler): the PyTorch reference, same results.

:func:`backend` names the one :func:`binary_gemm` uses by default; its ``isa`` argument forces another
(tests and benchmarks run every one of :func:`backends`). Every argument is checked here before the call:
the kernel trusts it (shapes, dtypes, contiguity, sizes of a :class:`PackedWeight`). One thread by default;
``threads`` splits the rows of ``a`` (OpenMP).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from lowbit.bitwise import reference
from lowbit.bitwise.pack import clear_padding, pack_signs, words
from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.native import cext

#: The C sources of the bitwise library: the binary GEMM, the ternary-weight GEMM (:mod:`lowbit.bitwise.ternary`) and
#: BitSplit-Net's threshold epilogue (:mod:`lowbit.bitwise.bitsplit`)
SOURCE = tuple(Path(__file__).with_name("csrc") / f for f in ("xnor.c", "ternary.c", "bitsplit.c"))
# cext.FLAGS without -march=native: the instruction sets are chosen at run time, not at build time
FLAGS = ["-O3", "-shared", "-fPIC", "-std=c11", "-fopenmp"]
ISAS = ("scalar", "avx2", "avx512-vpopcntdq")  # index = the C code's ISA_* number
REFERENCE = "reference"
MAX_K = 2**31 - 1  # the int32 result K - 2 popcount lies in [-K, K]
PANEL = 32  # columns of b per panel (csrc/xnor.c)


#: Every exported function of the :data:`SOURCE` files and the function here that checks its arguments before calling it
#: (a test keeps this in step with the C source).
ENTRY_POINTS: dict[str, str] = {
    "lowbit_xnor_isas": "no arguments",
    "lowbit_xnor_pack_b": "lowbit.bitwise.kernels.pack_weight",
    "lowbit_xnor_pack_f32": "lowbit.bitwise.kernels.pack_rows",
    "lowbit_xnor_gemm": "lowbit.bitwise.kernels.binary_gemm",
    "lowbit_xnor_peak": "lowbit.bitwise.kernels.peak_gops",
    "lowbit_ternary_pack_b": "lowbit.bitwise.ternary.pack_ternary_weight_planes",
    "lowbit_ternary_gemm": "lowbit.bitwise.ternary.ternary_gemm",
    "lowbit_ternary_pack_codes": "lowbit.bitwise.ternary.pack_ternary",
    "lowbit_bitsplit_threshold": "lowbit.bitwise.bitsplit.threshold_signs",
    "lowbit_bitsplit_threshold_bits": "lowbit.bitwise.bitsplit.threshold_bits",
    "lowbit_bitsplit_im2col": "lowbit.bitwise.bitsplit.im2col_words",
    "lowbit_bitsplit_forward": "lowbit.nn.bitsplit.DeployedBitSplit",
}


def flags(sanitize: str = "") -> list[str]:
    """:data:`FLAGS`, or with ``sanitize`` (``LOWBIT_CEXT_SANITIZE``, e.g. ``"address,undefined"``) the sanitized
    build of :func:`lowbit.native.cext.flags`, still without ``-march=native``."""
    return list(FLAGS) if not sanitize else [f for f in cext.flags(sanitize) if f != "-march=native"]


def library_path(flag_list: list[str] | None = None, cache: Path | None = None) -> Path:
    """Where the library built from the :data:`SOURCE` files with ``flag_list`` (default :data:`FLAGS`) is cached."""
    return cext.cached_path(SOURCE, FLAGS if flag_list is None else flag_list, "xnor", cache)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled XNOR library, or None (the reference path) where no compiler works."""
    lib = cext.load(SOURCE, "xnor", flags, "the XNOR kernel is unavailable",
                    "binary GEMMs use the slower PyTorch reference (same results)")
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.lowbit_xnor_isas.restype = ctypes.c_int
    lib.lowbit_xnor_peak.argtypes = [i64]
    lib.lowbit_xnor_peak.restype = i64
    lib.lowbit_xnor_gemm.argtypes = [ptr, i64, ptr, i64, i64, i64, ctypes.c_int, ptr, ptr, ptr, ctypes.c_int]
    lib.lowbit_xnor_gemm.restype = ctypes.c_int
    lib.lowbit_xnor_pack_b.argtypes = [ptr, i64, i64, i64, ptr]
    lib.lowbit_xnor_pack_b.restype = None
    lib.lowbit_xnor_pack_f32.argtypes = [ptr, i64, i64, ptr, ctypes.c_int]
    lib.lowbit_xnor_pack_f32.restype = i64
    lib.lowbit_ternary_pack_b.argtypes = [ptr, ptr, i64, i64, i64, ptr, ptr]
    lib.lowbit_ternary_pack_b.restype = None
    lib.lowbit_ternary_gemm.argtypes = [ptr, ptr, i64, ptr, ptr, i64, i64, ctypes.c_int, ptr, ctypes.c_int]
    lib.lowbit_ternary_gemm.restype = ctypes.c_int
    lib.lowbit_ternary_pack_codes.argtypes = [ptr, i64, i64, ptr, ptr, ctypes.c_int]
    lib.lowbit_ternary_pack_codes.restype = i64
    lib.lowbit_bitsplit_threshold.argtypes = [ptr, i64, i64, i64, i64, ctypes.c_int, ptr, i64, ptr, i64, ptr]
    lib.lowbit_bitsplit_threshold.restype = ctypes.c_int
    lib.lowbit_bitsplit_threshold_bits.argtypes = [ptr, i64, i64, i64, i64, ctypes.c_int, ptr, i64, ptr, i64, ptr]
    lib.lowbit_bitsplit_threshold_bits.restype = ctypes.c_int
    lib.lowbit_bitsplit_im2col.argtypes = [ptr, i64, i64, i64, i64, ptr]
    lib.lowbit_bitsplit_im2col.restype = None
    lib.lowbit_bitsplit_forward.argtypes = ([ptr, i64, ctypes.c_float, ctypes.c_float, i64, i64, ptr, ptr, i64, ptr]
                                            + [ptr] * 8 + [i64, ptr, ptr, ptr, ptr, ctypes.c_int, ptr])
    lib.lowbit_bitsplit_forward.restype = ctypes.c_int
    return lib


@lru_cache(maxsize=1)
def backends() -> tuple[str, ...]:
    """The backends this machine runs, best first; ``"reference"`` (PyTorch) is always last."""
    lib = library()
    mask = lib.lowbit_xnor_isas() if lib is not None else 0
    return tuple(name for i, name in reversed(list(enumerate(ISAS))) if mask >> i & 1) + (REFERENCE,)


def backend() -> str:
    """The backend :func:`binary_gemm` uses by default: ``"avx512-vpopcntdq"``, ``"avx2"``, ``"scalar"`` or
    ``"reference"``."""
    return backends()[0]


def panel_words(n: int, k: int) -> int:
    """uint64 words of the panels of an (n, k) operand: ``ceil(n / 32) * 32 * ceil(k / 64)``."""
    return (n + PANEL - 1) // PANEL * PANEL * words(k)


def _packed(name: str, t: object, k: int) -> torch.Tensor:
    """A packed operand: a contiguous 2-D uint64 CPU tensor (rows, ceil(k / 64)). Its padding bits past k are
    not read (the kernel masks them off), so they need no check."""
    fn = "binary_gemm"
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{fn}: {name} is a {type(t).__name__}; expected packed uint64 words from pack_signs")
    if t.dtype != torch.uint64:
        raise ShapeError(f"{fn}: {name} is {t.dtype}; expected packed uint64 words: pass pack_signs({name})")
    if t.ndim != 2:
        raise ShapeError(f"{fn}: {name} has shape {tuple(t.shape)}; expected 2-D packed words (rows, W): "
                         "reshape the rows first")
    if t.device.type != "cpu":
        raise ShapeError(f"{fn}: {name} is on {t.device}; the kernel runs on the CPU: move it with .cpu()")
    if not t.is_contiguous():
        raise ShapeError(f"{fn}: {name} of shape {tuple(t.shape)} is not contiguous; pass {name}.contiguous()")
    if t.shape[1] != words(k):
        raise ShapeError(f"{fn}: {name} has {t.shape[1]} words per row, but K = {k} values take {words(k)}; "
                         "pack both operands along the same K")
    return t


def _per_channel(name: str, t: object, n: int, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    fn = "binary_gemm"
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes or t.shape != (n,):
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        want = " or ".join(str(d) for d in dtypes)
        raise ShapeError(f"{fn}: {name} must be a {want} tensor of shape ({n},), one per output channel; got {got}")
    if t.device.type != "cpu":
        raise ShapeError(f"{fn}: {name} is on {t.device}; move it with .cpu()")
    return t.contiguous()


@dataclass(frozen=True)
class PackedWeight:
    """An operand b (N, K) in the kernel's panel layout (``csrc/xnor.c``), packed once by :func:`pack_weight`.

    ``words`` keeps the plain (N, ceil(K / 64)) words: the reference backend and the checks read them."""

    words: torch.Tensor
    panels: torch.Tensor | None  # None without the C library
    n: int
    k: int


def pack_weight(b: torch.Tensor, k: int) -> PackedWeight:
    """Interleave packed rows b (N, ceil(k / 64)) uint64 (from :func:`lowbit.bitwise.pack_signs`) into panels."""
    _k(k)
    b = _packed("b", b, k)
    lib = library()
    if lib is None:
        return PackedWeight(b, None, b.shape[0], k)
    panels = torch.empty(panel_words(b.shape[0], k), dtype=torch.uint64)
    lib.lowbit_xnor_pack_b(b.data_ptr(), b.shape[0], words(k), k, panels.data_ptr())
    return PackedWeight(b, panels, b.shape[0], k)


def _check_packed_weight(b: PackedWeight, k: int) -> None:
    """A :class:`PackedWeight` whose fields agree (a hand-made one could hand the kernel a short buffer)."""
    if b.k != k:
        raise ShapeError(f"binary_gemm: the packed weight holds K = {b.k} values per row, the call says k = {k}")
    _packed("b.words", b.words, k)
    if b.n != b.words.shape[0]:
        raise ShapeError(f"binary_gemm: the packed weight says N = {b.n} but holds {b.words.shape[0]} rows")
    p = b.panels
    if p is not None:
        if not isinstance(p, torch.Tensor) or p.dtype != torch.uint64 or not p.is_contiguous() \
                or p.device.type != "cpu" or p.numel() != panel_words(b.n, k):
            raise ShapeError("binary_gemm: the packed weight's panels do not match its words; make it with "
                             "lowbit.bitwise.kernels.pack_weight")


def _k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ConfigError(f"binary_gemm: k = {k!r}; expected the number of +-1 values per row, 1..{MAX_K}")
    return k


def binary_gemm(a: torch.Tensor, b: torch.Tensor | PackedWeight, k: int, *, thr: torch.Tensor | None = None,
                flip: torch.Tensor | None = None, isa: str | None = None, threads: int = 1) -> torch.Tensor:
    """XNOR-popcount GEMM of packed +-1 rows: a (M, W) uint64 with W = ceil(k / 64), and b (N, W) uint64 or
    a :class:`PackedWeight` of it (packed once: faster for a weight used many times).

    Without ``thr``: int32 (M, N) ``sum_k a[m, k] b[n, k]``. With ``thr`` (int32, (N,)) and optionally
    ``flip`` (bool, (N,); default all False): the packed bits (M, ceil(N / 64)) of
    ``(out >= thr) XOR flip``, the next binary layer's input (:func:`lowbit.bitwise.reference.threshold_from_affine`
    makes them from a folded BatchNorm). ``isa`` forces a backend of :func:`backends`; ``threads`` splits the
    rows of ``a``.
    """
    _k(k)
    a = _packed("a", a, k)
    if isinstance(b, PackedWeight):
        _check_packed_weight(b, k)
    else:
        words_b = _packed("b", b, k)
        b = PackedWeight(words_b, None, words_b.shape[0], k)
    m, n = a.shape[0], b.n
    if flip is not None and thr is None:
        raise ConfigError("binary_gemm: flip without thr; pass thr (int32 per output channel) as well")
    if thr is not None:
        thr = _per_channel("thr", thr, n, (torch.int32,))
        flip = torch.zeros(n, dtype=torch.bool) if flip is None else _per_channel("flip", flip, n, (torch.bool,))
    name = backend() if isa is None else isa
    if name not in backends():
        raise ConfigError(f"binary_gemm: isa = {isa!r}; this machine runs {', '.join(map(repr, backends()))}")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4096:
        raise ConfigError(f"binary_gemm: threads = {threads!r}; expected an integer in 1..4096")
    if name == REFERENCE:  # the reference reads every bit: clear the padding as the kernel masks it
        return reference.binary_linear_reference(clear_padding(a, k), clear_padding(b.words, k), k, thr, flip)
    panels = b.panels if b.panels is not None else pack_weight(b.words, k).panels
    if thr is None:
        out = torch.empty((m, n), dtype=torch.int32)
        thr_ptr = flip_ptr = None
    else:
        out = torch.empty((m, words(n)), dtype=torch.uint64)
        flip = flip.view(torch.uint8)  # a bool is one byte, 0 or 1
        thr_ptr, flip_ptr = thr.data_ptr(), flip.data_ptr()
    rc = library().lowbit_xnor_gemm(a.data_ptr(), m, panels.data_ptr(), n, words(k), k, ISAS.index(name), thr_ptr,
                                    flip_ptr, out.data_ptr(), threads)
    if rc == -2:
        raise MemoryError(f"binary_gemm: no memory for the threshold tables of {n} columns")
    if rc != 0:  # the CPU lacks the instruction set: backends() would not have listed it
        raise RuntimeError(f"binary_gemm: the XNOR kernel refused isa {name!r} (code {rc})")
    return out


def pack_rows(x: torch.Tensor, isa: str | None = None) -> torch.Tensor:
    """The signs of float32 rows (M, K) packed into uint64 words (M, ceil(K / 64)), in C: the same words as
    :func:`lowbit.bitwise.pack.pack_signs` (x >= 0 is bit 1, padding bits 0), without its PyTorch passes.
    AVX-512 compares where the backend (default :func:`backend`, or ``isa``) is AVX-512, else scalar code."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.ndim != 2 or x.device.type != "cpu":
        got = f"{x.dtype} {tuple(x.shape)} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"pack_rows: expected a 2-D float32 CPU tensor (M, K), got {got}")
    if x.shape[1] < 1:
        raise ShapeError(f"pack_rows: rows of {x.shape[1]} values; expected K >= 1")
    name = backend() if isa is None else isa
    if name not in backends():
        raise ConfigError(f"pack_rows: isa = {isa!r}; this machine runs {', '.join(map(repr, backends()))}")
    if name == REFERENCE:
        return pack_signs(x)
    x = x.contiguous()
    out = torch.empty((x.shape[0], words(x.shape[1])), dtype=torch.uint64)
    nans = library().lowbit_xnor_pack_f32(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr(), ISAS.index(name))
    if nans:
        raise DataError(f"pack_rows: the input holds {nans} NaN values, which have no sign; check the layer "
                        "that produced them")
    return out


def binary_conv2d(x: torch.Tensor, weight: PackedWeight, kernel_size: tuple[int, int], stride=1, padding=0,
                  dilation=1, *, isa: str | None = None, threads: int = 1) -> torch.Tensor:
    """int32 (N, O, Ho, Wo) convolution of ``sign(x)`` (float32 (N, C, H, W)) with a binary weight (O, C, kh, kw)
    packed as rows of C kh kw values (``pack_weight(pack_signs(w.reshape(O, -1)), C * kh * kw)``), the input
    padded with -1: im2col (PyTorch ``unfold``), :func:`pack_rows`, :func:`binary_gemm`. The same integers as
    :func:`lowbit.bitwise.reference.binary_conv2d_reference`."""
    import torch.nn.functional as F

    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.ndim != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"binary_conv2d: expected a float32 input (N, C, H, W), got {got}")
    if not isinstance(weight, PackedWeight):
        raise ShapeError("binary_conv2d: the weight must be a PackedWeight (kernels.pack_weight)")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (reference._pair(v) for v in (kernel_size, stride, padding, dilation))
    n, c, h, w = x.shape
    if c * kh * kw != weight.k:
        raise ShapeError(f"binary_conv2d: {c} input channels x {kh}x{kw} taps = {c * kh * kw} values per patch; "
                         f"the weight was packed with K = {weight.k}")
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or ho < 1 or wo < 1:
        raise ShapeError(f"binary_conv2d: input {h}x{w}, kernel {kh}x{kw}, stride {sh, sw}, padding {ph, pw}, "
                         f"dilation {dh, dw} give no output")
    padded = F.pad(x, (pw, pw, ph, ph), value=-1.0)
    cols = F.unfold(padded, (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # (N, C kh kw, Ho Wo)
    a = pack_rows(cols.transpose(1, 2).reshape(n * ho * wo, weight.k).contiguous(), isa=isa)
    out = binary_gemm(a, weight, weight.k, isa=isa, threads=threads)  # (N Ho Wo, O)
    return out.reshape(n, ho, wo, weight.n).permute(0, 3, 1, 2).contiguous()


def peak_gops(iters: int = 20_000_000) -> float:
    """Measured binary peak of one core, G ops/s (2 ops per bit-MAC, like 2 M N K / time): a register-only loop
    of 8 independent ``vpxorq`` + ``vpopcntq`` + ``vpaddq`` on 512 bits. 0 without AVX-512 VPOPCNTDQ."""
    lib = library()
    if lib is None or "avx512-vpopcntdq" not in backends():
        return 0.0
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"peak_gops: iters = {iters!r}; expected an integer >= 1")
    start = time.perf_counter()
    lib.lowbit_xnor_peak(iters)
    return iters * 8 * 512 * 2 / (time.perf_counter() - start) / 1e9


__all__ = ["ISAS", "PANEL", "REFERENCE", "PackedWeight", "backend", "backends", "binary_conv2d", "binary_gemm", "library", "pack_rows", "pack_weight",
           "panel_words", "peak_gops"]

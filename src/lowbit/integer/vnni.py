"""Prepacked int8 GEMM on AVX-512 VNNI (``csrc/gemm.c``), with the requantization epilogue fused.

``torch._int_mm`` reorders its weight operand on every call and returns int32
that a second pass requantizes. Here the weight is packed once, when the layer is
built, into 16-column panels of 4-byte k groups (one ``vpdpbusd`` per 64-byte
load), and each 6 x 64 block of accumulators is requantized to int8 while it is
still in registers' reach (L1). The result is the same integers:

    C = A W^T  (int8 A stored as s = q - 128, int8 W)

computed as ``sum (s + 128) w - 128 sum w``, since ``vpdpbusd`` multiplies
unsigned by signed bytes. Exact: every product and the sum fit int32 for
K < 2^16 (checked).

Used when the C library is built for a CPU with AVX512-VNNI or, with the same
panels and the same integers, AVX2 (bytes widened to int16 for ``vpmaddwd``:
``vpmaddubsw`` would saturate; about 2x fewer MACs per instruction than VNNI);
otherwise the layers keep ``torch._int_mm`` (see :mod:`lowbit.integer.kernels`),
which on a CPU without VNNI is PyTorch's scalar fallback (about 3 GOP/s). Every call's
arguments are checked first (:mod:`lowbit.native.guard`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

from lowbit.errors import ShapeError
from lowbit.native import cext, guard

MAX_K = 1 << 16  # K <= 2^16: the raw sums of (s + 128) w are at most 2^16 * 255 * 128 = 2 139 095 040 < 2^31


@lru_cache(maxsize=1)
def isa() -> str | None:
    """Which int8 GEMM the compiled library has: ``"avx512-vnni"`` (``vpdpbusd``), ``"avx2"`` (``vpmaddwd`` on
    widened bytes, exact: see ``csrc/gemm.c``), or None (no compiler, or neither instruction set)."""
    lib = cext.library()
    return None if lib is None else {2: "avx512-vnni", 1: "avx2"}.get(int(lib.lowbit_gemm_isa()))


@lru_cache(maxsize=1)
def available() -> bool:
    """True when the compiled library has lowbit's int8 GEMM: AVX-512 VNNI or, slower, AVX2 (see :func:`isa`)."""
    return isa() is not None


@dataclass(frozen=True)
class PackedWeight:
    """A weight matrix (N, K) in VNNI panels, and ``-128 * sum_k W[j, k]`` per column (the flip's correction)."""

    panels: torch.Tensor
    n: int
    k: int
    kp: int
    correction: torch.Tensor


def peak_gops(iters: int = 20_000_000) -> float:
    """Measured int8 peak of one core, GOP/s: a register-only loop of independent ``vpdpbusd`` (64 MACs each;
    on AVX2 ``vpmaddwd`` + ``vpaddd``, 16 MACs each) with no memory traffic."""
    import time

    guard.vnni_peak(iters)
    macs = 64 if isa() == "avx512-vnni" else 16
    start = time.perf_counter()
    cext.library().lowbit_vnni_peak(iters)
    return iters * 12 * macs * 2 / (time.perf_counter() - start) / 1e9


def _kp(k: int) -> int:
    return (k + 3) // 4 * 4


def pack_weight(w: torch.Tensor) -> PackedWeight:
    """Pack an int8 (N, K) weight matrix (K < 2^16) once, for :func:`gemm`."""
    if w.dtype != torch.int8 or w.ndim != 2:
        raise ValueError(f"pack_weight needs an int8 (N, K) matrix, got {w.dtype} {tuple(w.shape)}")
    n, k = w.shape
    if k > MAX_K:
        raise ValueError(f"K = {k} is too long for the int32 accumulator of the VNNI GEMM (K <= {MAX_K})")
    kp, w = _kp(k), w.contiguous()
    panels = torch.empty(((n + 15) // 16) * kp * 16, dtype=torch.int8)
    guard.pack_w(guard.buf(w, "lowbit_pack_w", "w"), n, k, kp, guard.buf(panels))
    cext.library().lowbit_pack_w(w.data_ptr(), n, k, kp, panels.data_ptr())
    correction = (-128 * w.to(torch.int32).sum(dim=1)).to(torch.int32)
    return PackedWeight(panels, n, k, kp, correction)


def pack_rows(x: torch.Tensor, kp: int) -> torch.Tensor:
    """int8 (M, K) stored activations -> uint8 (M, kp) rows (top bit flipped, zero padded)."""
    x = x.contiguous()
    if x.ndim != 2:
        raise ShapeError(f"lowbit_pack_a: expected int8 (M, K) rows, got shape {tuple(x.shape)}")
    m, k = x.shape
    out = torch.empty((m, kp), dtype=torch.uint8)
    guard.pack_a(guard.buf(x, "lowbit_pack_a", "x"), m, k, kp, guard.buf(out))
    cext.library().lowbit_pack_a(x.data_ptr(), m, k, kp, out.data_ptr())
    return out


def im2col(x: torch.Tensor, kernel, stride, padding, dilation, pad_value: int, out_hw, kp: int) -> torch.Tensor:
    """uint8 (N*Ho*Wo, kp) patch rows of int8 ``x`` (N, C, H, W), flipped and padded for :func:`gemm`."""
    xh = cext.nhwc(x, "lowbit_im2col_u8")
    n, h, w, c = xh.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = kernel, stride, padding, dilation, out_hw
    guard.im2col_u8(guard.buf(xh, "lowbit_im2col_u8", "x"), n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, pad_value,
                    ho, wo, kp, guard.Buf(torch.uint8, n * ho * wo * kp))
    out = torch.empty((n * ho * wo, kp), dtype=torch.uint8)
    if cext.library().lowbit_im2col_u8(xh.data_ptr(), n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, pad_value, ho, wo,
                                       kp, out.data_ptr()):
        raise MemoryError(f"im2col: no memory for a padded copy of a {tuple(x.shape)} image")
    return out


@dataclass(frozen=True)
class Requant:
    """A layer's requantization (see :mod:`lowbit.functional.requant`): per-column int64 ``m``, ``n`` and
    ``half = 2^(n-1)``, output zero point and bounds, and for a residual input its multiplier ``m2`` and
    zero point. Built once per layer; :meth:`args` gives the C entry points' epilogue arguments."""

    m: torch.Tensor
    n: torch.Tensor
    half: torch.Tensor
    zp: int
    lo: int
    hi: int
    m2: torch.Tensor | None = None
    res_zp: int = 0

    def __post_init__(self) -> None:
        guard.requant_values("Requant", self.m, self.n, self.half, self.m2)

    def bufs(self, residual: torch.Tensor | None, kernel: str) -> list:
        """The epilogue's buffers and arguments as :mod:`lowbit.native.guard` takes them."""
        b = guard.buf
        return [1, b(self.m, kernel, "m"), b(self.n, kernel, "n"), b(self.half, kernel, "h"),
                b(residual, kernel, "residual"), self.res_zp, b(self.m2, kernel, "m2"), self.zp, self.lo, self.hi]

    @cached_property
    def _pointers(self) -> tuple[int, int, int, int | None]:
        return self.m.data_ptr(), self.n.data_ptr(), self.half.data_ptr(), cext.ptr(self.m2)

    def args(self, residual: torch.Tensor | None) -> list:
        m, n, half, m2 = self._pointers
        return [1, m, n, half, cext.ptr(residual), self.res_zp, m2, self.zp, self.lo, self.hi]


RAW_ARGS = [0, None, None, None, None, 0, None, 0, 0, 0]  # no requantization: int32 out


def _guard_epilogue(requant: Requant | None, residual: torch.Tensor | None, kernel: str) -> list:
    return RAW_ARGS if requant is None else requant.bufs(residual, kernel)


def _epilogue(requant: Requant | None, residual: torch.Tensor | None, rows: int, n: int) -> tuple[torch.Tensor, list]:
    """The output tensor and the epilogue arguments of the C entry points (raw int32, or int8 codes)."""
    if requant is None:
        return torch.empty((rows, n), dtype=torch.int32), RAW_ARGS
    return torch.empty((rows, n), dtype=torch.int8), requant.args(residual)


def gemm(a: torch.Tensor, w: PackedWeight, col_add: torch.Tensor, requant: Requant | None = None,
         residual: torch.Tensor | None = None) -> torch.Tensor:
    """int32 ``A W^T + col_add`` (M, N), or with ``requant`` its int8 codes (plus the contiguous int8
    (M, N) ``residual`` when the layer has one). ``a`` is uint8 (M, kp) rows from :func:`pack_rows` /
    :func:`im2col`, or, when K % 4 == 0, the int8 (M, K) stored codes themselves (flipped in the kernel).
    ``col_add`` must include ``w.correction``.
    """
    flip = a.dtype == torch.int8 and w.k == w.kp
    if not (flip or a.dtype == torch.uint8) or a.ndim != 2 or a.shape[1] != w.kp or not a.is_contiguous():
        raise ValueError(f"gemm needs contiguous uint8 (M, {w.kp}) rows (or int8 when K % 4 == 0), "
                         f"got {a.dtype} {tuple(a.shape)}")
    k = "lowbit_gemm_u8s8"
    guard.gemm_u8s8(guard.buf(a, k, "a"), a.shape[0], w.kp, int(flip), guard.buf(w.panels), w.n,
                    guard.buf(col_add, k, "col_add"), *_guard_epilogue(requant, residual, k),
                    guard.Buf(torch.int32 if requant is None else torch.int8, a.shape[0] * w.n),
                    torch.get_num_threads())
    out, epi = _epilogue(requant, residual, a.shape[0], w.n)
    _check_rc(cext.library().lowbit_gemm_u8s8(a.data_ptr(), a.shape[0], w.kp, int(flip), w.panels.data_ptr(), w.n,
                                              col_add.data_ptr(), *epi, out.data_ptr(), torch.get_num_threads()),
              "lowbit_gemm_u8s8", a.shape[0] * w.kp)
    return out


def _check_rc(rc: int, name: str, elements: int) -> None:
    """A nonzero return of the GEMM, which has then written nothing: -2, no memory for AVX2's int16 copy of the
    rows; -1, arguments it refuses (ruled out by the checks before the call)."""
    if rc == -2:
        raise MemoryError(f"{name}: could not allocate the int16 copy of {elements:,} activations "
                          f"({2 * elements:,} bytes) that the AVX2 kernel reads; free memory or use a smaller batch")
    if rc:
        raise RuntimeError(f"{name} refused its arguments ({rc}) after lowbit.native.guard accepted them")


def implicit_conv_ok(channels: int, kernel: tuple[int, int]) -> bool:
    """:func:`conv` reads 4 channels at a time from the image: it needs C % 4 == 0 (and at most 256 taps)."""
    return channels % 4 == 0 and kernel[0] * kernel[1] <= 256


def conv(x: torch.Tensor, w: PackedWeight, kernel, stride, padding, dilation, pad_value: int, out_hw,
         col_add: torch.Tensor, requant: Requant | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Dense conv of int8 ``x`` (N, C, H, W) as an implicit GEMM: no im2col buffer, the micro-kernel reads
    each tap from a padded, flipped NHWC copy of the image. Returns (N*Ho*Wo, O) like :func:`gemm`;
    ``w`` packed from the (O, kh*kw*C) matrix in (kh, kw, C) order."""
    xh = cext.nhwc(x, "lowbit_conv_u8s8")
    n, h, wd, c = xh.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = kernel, stride, padding, dilation, out_hw
    if not implicit_conv_ok(c, (kh, kw)) or w.kp != kh * kw * c:
        raise ValueError(f"implicit conv needs C % 4 == 0 and a (O, {kh * kw * c}) packed weight")
    lib = cext.library()
    hp, wp = h + 2 * ph, wd + 2 * pw
    k = "lowbit_conv_u8s8"
    guard.pad_flip_nhwc(guard.buf(xh, "lowbit_pad_flip_nhwc", "x"), n, h, wd, c, ph, pw, pad_value,
                        guard.Buf(torch.uint8, n * hp * wp * c))
    guard.conv_u8s8(guard.Buf(torch.uint8, n * hp * wp * c), n, hp, wp, c, kh, kw, sh, sw, dh, dw, ho, wo,
                    guard.buf(w.panels), w.n, guard.buf(col_add, k, "col_add"), *_guard_epilogue(requant, residual, k),
                    guard.Buf(torch.int32 if requant is None else torch.int8, n * ho * wo * w.n),
                    torch.get_num_threads())
    padded = torch.empty((n, hp, wp, c), dtype=torch.uint8)
    lib.lowbit_pad_flip_nhwc(xh.data_ptr(), n, h, wd, c, ph, pw, pad_value, padded.data_ptr())
    out, epi = _epilogue(requant, residual, n * ho * wo, w.n)
    _check_rc(lib.lowbit_conv_u8s8(padded.data_ptr(), n, hp, wp, c, kh, kw, sh, sw, dh, dw, ho, wo,
                                   w.panels.data_ptr(), w.n, col_add.data_ptr(), *epi, out.data_ptr(),
                                   torch.get_num_threads()), "lowbit_conv_u8s8", n * hp * wp * c)
    return out


__all__ = ["PackedWeight", "Requant", "available", "conv", "gemm", "im2col", "implicit_conv_ok", "pack_rows",
           "pack_weight", "peak_gops"]

"""What every C entry point of ``csrc/`` reads and writes, checked before the call: the one place that does.

A C kernel trusts its arguments: a wrong channel count or a negative padding makes it read or write outside
its buffers (heap corruption, a crash later), and a shift of 64 or more is undefined behaviour. So each entry
point has one function here that takes the integer arguments exactly as the kernel receives them and the
buffers it is given (:class:`Buf`: dtype and element count), and checks

* every size and geometry argument against its range, and output sizes against the convolution formula
  ``Ho = (H + 2 p - d (k - 1) - 1) // s + 1`` (so that every tap a kernel visits lies in its buffer);
* every buffer against the dtype the kernel casts it to and the number of elements it touches;
* zero points and clamping bounds against int8, shifts against ``0..62``, multipliers against the bounds
  that keep ``(acc + bias) m + (r - z_r) m2 + 2^(n-1)`` inside int64 (:func:`requant_values`).

The wrappers in :mod:`lowbit.native.cext` and :mod:`lowbit.integer.vnni` call these with tensors
(:func:`buf` also checks that a tensor is a contiguous CPU tensor); :mod:`lowbit.integer.plan` calls them
for every step of a plan, with the plan's buffers, when it builds the plan. A failed check raises
:class:`~lowbit.errors.ShapeError` (a buffer of the wrong size, dtype or layout) or
:class:`~lowbit.errors.ConfigError` (an argument out of range) naming the kernel and the argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch

from lowbit.errors import ConfigError, ShapeError

INT8 = (-128, 127)
INT16 = (-(1 << 15), (1 << 15) - 1)
MAX_SHIFT = 62  # lowbit.functional.requant.MAX_SHIFT: a shift of 64 or more is undefined in C
MAX_M = (1 << 31) - 1  # |acc + bias| < 2^31, so (acc + bias) m < 2^62
MAX_M2 = (1 << 53) - 1  # |r - z_r| <= 255 < 2^8, so (r - z_r) m2 < 2^61; with 2^(n-1) <= 2^61 the sum < 2^63
MAX_K = 1 << 16  # the VNNI GEMM's int32 accumulator is exact for K <= 2^16 (lowbit.integer.vnni.MAX_K)
MAX_TAPS = 256  # the implicit conv keeps one offset per tap on the stack (csrc/gemm.c)
MAX_DIM = 1 << 40  # no size or geometry argument is larger (keeps every product of two far inside int64)


@dataclass(frozen=True)
class Buf:
    """What a kernel is handed in one pointer argument: the element type and how many elements there are."""

    dtype: torch.dtype
    numel: int


def buf(t: torch.Tensor | None, kernel: str = "", name: str = "") -> Buf | None:
    """The :class:`Buf` of a tensor passed by its data pointer: it must live on the CPU and be contiguous
    (the kernels index it as a dense array). None for None (a NULL pointer)."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{kernel}: buffer {name!r} is a {type(t).__name__}, not a torch.Tensor")
    if t.device.type != "cpu":
        raise ShapeError(f"{kernel}: buffer {name!r} is on {t.device}; the C kernels run on the CPU: "
                         "move the tensor with .cpu()")
    if not t.is_contiguous():
        raise ShapeError(f"{kernel}: buffer {name!r} of shape {tuple(t.shape)} is not contiguous; "
                         "pass .contiguous()")
    return Buf(t.dtype, t.numel())


# ---------------------------------------------------------------- helpers


def _int(kernel: str, name: str, value: object, lo: int, hi: int = MAX_DIM) -> int:
    """``value`` is an integer in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not lo <= value <= hi:
        raise ConfigError(f"{kernel}: argument {name} = {value!r}; allowed: an integer in {lo}..{hi}")
    return int(value)


def _flag(kernel: str, name: str, value: object) -> int:
    return _int(kernel, name, value, 0, 1)


def _real(kernel: str, name: str, value: object, positive: bool = False) -> float:
    """``value`` is a finite number (and > 0 where ``positive``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise ConfigError(f"{kernel}: argument {name} = {value!r}; allowed: a finite number{' > 0' if positive else ''}")
    return float(value)


def _bounds(kernel: str, zp: object, lo: object, hi: object) -> None:
    """An output zero point and clamping bounds of int8 codes: all in int8, ``lo <= hi``."""
    _int(kernel, "zp", zp, *INT8)
    lo, hi = _int(kernel, "lo", lo, *INT8), _int(kernel, "hi", hi, *INT8)
    if lo > hi:
        raise ConfigError(f"{kernel}: clamping bounds lo = {lo} > hi = {hi}; allowed: lo <= hi")


def _need(kernel: str, name: str, b: Buf | None, dtypes: tuple[torch.dtype, ...], numel: int) -> None:
    """Buffer ``name`` exists, has one of ``dtypes`` and at least ``numel`` elements."""
    if b is None:
        raise ShapeError(f"{kernel}: buffer {name!r} is missing (NULL)")
    if b.dtype not in dtypes:
        want = " or ".join(str(d) for d in dtypes)
        raise ShapeError(f"{kernel}: buffer {name!r} is {b.dtype}; the kernel reads it as {want}")
    if b.numel < numel:
        raise ShapeError(f"{kernel}: buffer {name!r} holds {b.numel} elements; the call touches {numel}")


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution or pooling along one dimension."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _geometry(kernel: str, n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo) -> None:
    """A convolution's sizes: every tap of every output pixel then lies in the padded image."""
    _int(kernel, "N", n, 0)
    for name, v in (("H", h), ("W", w), ("C", c), ("kh", kh), ("kw", kw), ("sh", sh), ("sw", sw), ("dh", dh),
                    ("dw", dw)):
        _int(kernel, name, v, 1)
    _int(kernel, "ph", ph, 0)
    _int(kernel, "pw", pw, 0)
    for name, v, size, k, s, p, d in (("Ho", ho, h, kh, sh, ph, dh), ("Wo", wo, w, kw, sw, pw, dw)):
        want = out_size(size, k, s, p, d)
        if want < 1 or v != want:
            raise ShapeError(f"{kernel}: output size {name} = {v!r}, but an input of {size} with kernel {k}, "
                             f"stride {s}, padding {p} and dilation {d} gives {want}"
                             + ("" if want >= 1 else " (the kernel is larger than the padded input)"))


def _panels(n: int, kp: int) -> int:
    """Bytes of a weight matrix (N, K) packed in 16-column VNNI panels of Kp rows (csrc/gemm.c)."""
    return (n + 15) // 16 * kp * 16


# ---------------------------------------------------------------- requant.c


def requant_values(kernel: str, m: torch.Tensor, n: torch.Tensor, h: torch.Tensor | None = None,
                   m2: torch.Tensor | None = None) -> None:
    """Value ranges of a requantization's per-channel int64 tensors: ``0 <= n <= 62`` (a shift of 64 or more
    is undefined), ``h = 2^(n-1)`` (0 for n = 0), ``0 <= m < 2^31`` and ``0 <= m2 < 2^53``: with
    ``|acc + bias| < 2^31`` and ``|r - z_r| <= 255`` the sum ``(acc + bias) m + (r - z_r) m2 + h`` stays
    below 2^63."""
    def rng(name: str, t: torch.Tensor | None, lo: int, hi: int) -> None:
        if t is not None and t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
            raise ConfigError(f"{kernel}: {name} holds values in {int(t.min())}..{int(t.max())}; "
                              f"allowed: {lo}..{hi}")

    rng("n (shift)", n, 0, MAX_SHIFT)
    rng("m (multiplier)", m, 0, MAX_M)
    rng("m2 (residual multiplier)", m2, 0, MAX_M2)
    if h is not None and h.shape == n.shape and not torch.equal(h, (torch.ones_like(n) << n) >> 1):
        raise ConfigError(f"{kernel}: h must be 2^(n-1) (0 where n = 0), the rounding half of each shift")


def requant(acc: Buf, rows, C, hw, nchw, bias: Buf, m: Buf, n: Buf, h: Buf, res: Buf | None, res_zp,
            m2: Buf | None, zp, lo, hi, out: Buf, kernel: str = "lowbit_requant") -> None:
    """``lowbit_requant``: int32 acc (rows, C) or (rows, C, hw) -> int8 of the same shape."""
    _int(kernel, "rows", rows, 0)
    _int(kernel, "C", C, 1)
    nchw = _flag(kernel, "acc_nchw", nchw)
    _int(kernel, "hw", hw, 1 if nchw else 0)
    count = rows * C * (hw if nchw else 1)
    _epilogue(kernel, True, C, count, m, n, h, res, res_zp, m2, zp, lo, hi)
    _need(kernel, "acc", acc, (torch.int32,), count)
    _need(kernel, "bias", bias, (torch.int32,), C)
    _need(kernel, "out", out, (torch.int8,), count)


def _epilogue(kernel: str, requant_on: int, cols: int, count: int, m: Buf | None, n: Buf | None,
              h: Buf | None, res: Buf | None, res_zp, m2: Buf | None, zp, lo, hi) -> None:
    """The fused requantization arguments of a GEMM, conv or requant call with ``cols`` output channels and
    ``count`` outputs; nothing is read when ``requant_on`` is 0."""
    if not requant_on:
        return
    for name, b in (("m", m), ("n", n), ("h", h)):
        _need(kernel, name, b, (torch.int64,), cols)
    _int(kernel, "res_zp", res_zp, *INT8)
    _bounds(kernel, zp, lo, hi)
    if res is not None:
        _need(kernel, "residual", res, (torch.int8,), count)
        _need(kernel, "m2", m2, (torch.int64,), cols)  # read for every column when there is a residual


def im2col_nhwc(x: Buf, N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, pad_value, Ho, Wo, out: Buf) -> None:
    """``lowbit_im2col_nhwc``: int8 NHWC (N, H, W, C) -> int8 rows (N Ho Wo, kh kw C)."""
    k = "lowbit_im2col_nhwc"
    _geometry(k, N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    _int(k, "pad_value", pad_value, *INT8)
    _need(k, "x", x, (torch.int8,), N * H * W * C)
    _need(k, "out", out, (torch.int8,), N * Ho * Wo * kh * kw * C)


def depthwise_nhwc(x: Buf, N, H, W, C, w: Buf, kh, kw, sh, sw, ph, pw, dh, dw, zp, Ho, Wo, out: Buf) -> None:
    """``lowbit_depthwise_nhwc``: int8 NHWC x, int8 (kh, kw, C) weight -> int32 (N Ho Wo, C)."""
    k = "lowbit_depthwise_nhwc"
    _geometry(k, N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    _int(k, "zp", zp, *INT8)
    _need(k, "x", x, (torch.int8,), N * H * W * C)
    _need(k, "weight", w, (torch.int8,), kh * kw * C)
    _need(k, "out", out, (torch.int32,), N * Ho * Wo * C)


def maxpool_nhwc(x: Buf, N, H, W, C, kh, kw, sh, sw, ph, pw, Ho, Wo, out: Buf) -> None:
    """``lowbit_maxpool_nhwc``: int8 NHWC (N, H, W, C) -> int8 NHWC (N, Ho, Wo, C), no dilation."""
    k = "lowbit_maxpool_nhwc"
    _geometry(k, N, H, W, C, kh, kw, sh, sw, ph, pw, 1, 1, Ho, Wo)
    _need(k, "x", x, (torch.int8,), N * H * W * C)
    _need(k, "out", out, (torch.int8,), N * Ho * Wo * C)


def quantize_f32(x: Buf, count, inv, zp, lo, hi, out: Buf) -> None:
    """``lowbit_quantize_f32``: float32 -> int8 ``clamp(rint(x inv) + zp, lo, hi)``."""
    k = "lowbit_quantize_f32"
    _int(k, "count", count, 0)
    _real(k, "inv", inv, positive=True)
    _bounds(k, zp, lo, hi)
    _need(k, "x", x, (torch.float32,), count)
    _need(k, "out", out, (torch.int8,), count)


def nhwc_to_nchw(x: Buf, N, HW, C, out: Buf) -> None:
    """``lowbit_nhwc_to_nchw``: (N, HW, C) bytes -> (N, C, HW)."""
    k = "lowbit_nhwc_to_nchw"
    for name, v in (("N", N), ("HW", HW), ("C", C)):
        _int(k, name, v, 0)
    _need(k, "x", x, (torch.int8,), N * HW * C)
    _need(k, "out", out, (torch.int8,), N * HW * C)


def table(x: Buf, outer, C, inner, table: Buf, out: Buf) -> None:
    """``lowbit_table_i8`` / ``lowbit_table_f32``: (outer, C, inner) int8 codes -> ``table[c, x + 128]``."""
    k = "lowbit_table_i8" if table is not None and table.dtype == torch.int8 else "lowbit_table_f32"
    for name, v in (("outer", outer), ("inner", inner)):
        _int(k, name, v, 0)
    _int(k, "C", C, 1)
    _need(k, "x", x, (torch.int8,), outer * C * inner)
    _need(k, "table", table, (torch.int8, torch.float32), C * 256)
    _need(k, "out", out, (table.dtype,), outer * C * inner)


def dequant_rows(acc: Buf, rows, C, bias: Buf, scale: Buf, out: Buf) -> None:
    """``lowbit_dequant_rows``: float32 ``(acc + bias) scale`` of int32 (rows, C)."""
    k = "lowbit_dequant_rows"
    _int(k, "rows", rows, 0)
    _int(k, "C", C, 1)
    _need(k, "acc", acc, (torch.int32,), rows * C)
    _need(k, "bias", bias, (torch.int32,), C)
    _need(k, "scale", scale, (torch.float64,), C)
    _need(k, "out", out, (torch.float32,), rows * C)


# ---------------------------------------------------------------- gemm.c


def pack_a(x: Buf, M, K, Kp, out: Buf) -> None:
    """``lowbit_pack_a``: int8 (M, K) -> flipped uint8 (M, Kp), zero padded."""
    k = "lowbit_pack_a"
    _int(k, "M", M, 0)
    _int(k, "K", K, 1)
    _int(k, "Kp", Kp, K)
    _need(k, "x", x, (torch.int8,), M * K)
    _need(k, "out", out, (torch.uint8,), M * Kp)


def pack_w(w: Buf, N, K, Kp, out: Buf) -> None:
    """``lowbit_pack_w``: int8 (N, K) -> VNNI panels of Kp (a multiple of 4, >= K) rows."""
    k = "lowbit_pack_w"
    _int(k, "N", N, 1)
    _int(k, "K", K, 1, MAX_K)
    _kp(k, Kp, K)
    _need(k, "w", w, (torch.int8,), N * K)
    _need(k, "out", out, (torch.int8,), _panels(N, Kp))


def _kp(kernel: str, Kp, K: int) -> None:
    """The GEMM reads rows 4 bytes at a time: ``Kp`` is a multiple of 4 covering ``K``, at most 2^16."""
    _int(kernel, "Kp", Kp, max(K, 1), MAX_K)
    if Kp % 4:
        raise ConfigError(f"{kernel}: argument Kp = {Kp}; allowed: a multiple of 4")


def pad_flip_nhwc(x: Buf, N, H, W, C, ph, pw, pad_value, out: Buf) -> None:
    """``lowbit_pad_flip_nhwc``: int8 NHWC -> flipped uint8 NHWC (N, H + 2 ph, W + 2 pw, C)."""
    k = "lowbit_pad_flip_nhwc"
    _int(k, "N", N, 0)
    for name, v in (("H", H), ("W", W), ("C", C)):
        _int(k, name, v, 1)
    _int(k, "ph", ph, 0)
    _int(k, "pw", pw, 0)
    _int(k, "pad_value", pad_value, *INT8)
    _need(k, "x", x, (torch.int8,), N * H * W * C)
    _need(k, "out", out, (torch.uint8,), N * (H + 2 * ph) * (W + 2 * pw) * C)


def im2col_u8(x: Buf, N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, pad_value, Ho, Wo, Kp, out: Buf,
              img: Buf | None = None) -> None:
    """``lowbit_im2col_u8`` (``img`` None: the kernel allocates it) and ``lowbit_im2col_u8_into``: flipped
    uint8 patch rows (N Ho Wo, Kp); ``img`` holds the padded image and 8 bytes of slack (csrc/gemm.c)."""
    k = "lowbit_im2col_u8"
    _geometry(k, N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    _int(k, "pad_value", pad_value, *INT8)
    _kp(k, Kp, kh * kw * C)
    _need(k, "x", x, (torch.int8,), N * H * W * C)
    _need(k, "out", out, (torch.uint8,), N * Ho * Wo * Kp)
    if img is not None:
        _need(k, "img", img, (torch.uint8,), N * (H + 2 * ph) * (W + 2 * pw) * C + 8)


def gemm_u8s8(a: Buf, M, Kp, flip, wp: Buf, N, col_add: Buf, requant_on, m: Buf | None, n: Buf | None,
              h: Buf | None, res: Buf | None, res_zp, m2: Buf | None, zp, lo, hi, out: Buf, threads) -> None:
    """``lowbit_gemm_u8s8``: (M, Kp) rows times the packed (N, Kp) weight, int32 out or int8 with the
    fused requantization."""
    k = "lowbit_gemm_u8s8"
    _int(k, "M", M, 0)
    _kp(k, Kp, 1)
    flip = _flag(k, "flip", flip)
    _int(k, "N", N, 1)
    requant_on = _flag(k, "requant", requant_on)
    _int(k, "threads", threads, 1, 4096)
    _need(k, "a", a, (torch.int8,) if flip else (torch.uint8,), M * Kp)
    _need(k, "panels", wp, (torch.int8,), _panels(N, Kp))
    _need(k, "col_add", col_add, (torch.int32,), N)
    _epilogue(k, requant_on, N, M * N, m, n, h, res, res_zp, m2, zp, lo, hi)
    _need(k, "out", out, (torch.int8,) if requant_on else (torch.int32,), M * N)


def conv_u8s8(xp: Buf, Nb, Hp, Wp, C, kh, kw, sh, sw, dh, dw, Ho, Wo, wp: Buf, N, col_add: Buf, requant_on,
              m: Buf | None, n: Buf | None, h: Buf | None, res: Buf | None, res_zp, m2: Buf | None, zp, lo, hi,
              out: Buf, threads) -> None:
    """``lowbit_conv_u8s8``: the implicit-GEMM conv on a padded, flipped NHWC image (Nb, Hp, Wp, C)."""
    k = "lowbit_conv_u8s8"
    _int(k, "Nb", Nb, 0)
    for name, v in (("Hp", Hp), ("Wp", Wp), ("kh", kh), ("kw", kw), ("sh", sh), ("sw", sw), ("dh", dh),
                    ("dw", dw), ("Ho", Ho), ("Wo", Wo), ("N", N)):
        _int(k, name, v, 1)
    _int(k, "C", C, 4)
    if C % 4 or kh * kw > MAX_TAPS:
        raise ConfigError(f"{k}: C = {C}, kh x kw = {kh * kw}; allowed: C a multiple of 4, at most "
                          f"{MAX_TAPS} taps")
    for name, o, s, kk, d, size in (("Ho", Ho, sh, kh, dh, Hp), ("Wo", Wo, sw, kw, dw, Wp)):
        if (o - 1) * s + (kk - 1) * d + 1 > size:
            raise ShapeError(f"{k}: output size {name} = {o} reaches past the padded input of {size} "
                             f"(kernel {kk}, stride {s}, dilation {d})")
    _kp(k, kh * kw * C, 1)
    _int(k, "threads", threads, 1, 4096)
    requant_on = _flag(k, "requant", requant_on)
    M = Nb * Ho * Wo
    _need(k, "padded", xp, (torch.uint8,), Nb * Hp * Wp * C)
    _need(k, "panels", wp, (torch.int8,), _panels(N, kh * kw * C))
    _need(k, "col_add", col_add, (torch.int32,), N)
    _epilogue(k, requant_on, N, M * N, m, n, h, res, res_zp, m2, zp, lo, hi)
    _need(k, "out", out, (torch.int8,) if requant_on else (torch.int32,), M * N)


def vnni_peak(iters) -> None:
    _int("lowbit_vnni_peak", "iters", iters, 0)


# ---------------------------------------------------------------- plan.c's own steps


def sum_hw(x: Buf, N, HW, C, out: Buf) -> None:
    """The plan's global sum pool: int8 NHWC (N, HW, C) -> int32 (N, C), exact for HW < 2^24."""
    k = "sum_hw_nhwc"
    _int(k, "N", N, 0)
    _int(k, "HW", HW, 1, (1 << 24) - 1)
    _int(k, "C", C, 1)
    _need(k, "x", x, (torch.int8,), N * HW * C)
    _need(k, "out", out, (torch.int32,), N * C)


def sum_pool(x: Buf, N, H, W, C, kh, kw, sh, sw, Ho, Wo, out: Buf) -> None:
    """The plan's unpadded sum pool: int8 NHWC (N, H, W, C) -> int32 NHWC (N, Ho, Wo, C), exact for windows of
    fewer than 2^24 pixels."""
    k = "sum_pool_nhwc"
    _geometry(k, N, H, W, C, kh, kw, sh, sw, 0, 0, 1, 1, Ho, Wo)
    _int(k, "kh * kw", kh * kw, 1, (1 << 24) - 1)
    _need(k, "x", x, (torch.int8,), N * H * W * C)
    _need(k, "out", out, (torch.int32,), N * Ho * Wo * C)


def dequant_codes(x: Buf, count, zp, scale, out: Buf) -> None:
    """The plan's output dequantization: float32 ``(q - z) s`` of int8 codes."""
    k = "dequant_codes"
    _int(k, "count", count, 0)
    _int(k, "zp", zp, *INT8)
    _real(k, "scale", scale)
    _need(k, "x", x, (torch.int8,), count)
    _need(k, "out", out, (torch.float32,), count)


# ---------------------------------------------------------------- delta.c


def delta_rnn_f32(x: Buf, T, In, H, G, wx: Buf, wh: Buf, b_ih: Buf, b_hh: Buf, state: Buf, theta_x, theta_h,
                  dense, y: Buf, counts: Buf, idx: Buf, dv: Buf) -> None:
    """``lowbit_delta_rnn_f32``: ``T`` steps of a batch-1 delta GRU (``G`` = 3) or LSTM (``G`` = 4) on float32
    ``x`` (T, I); weights transposed (I, G H) and (H, G H); state ``x_hat, h_hat, h, c`` and two ``G H``
    accumulators; ``y`` (T, H); ``In`` is I; two int64 counters; int32 and float32 scratch of ``I + H + 32``."""
    k = "lowbit_delta_rnn_f32"
    _int(k, "T", T, 0)
    _int(k, "I", In, 1, (1 << 31) - 1)
    _int(k, "H", H, 1, (1 << 31) - 1)
    _int(k, "G", G, 3, 4)
    if In + H > (1 << 31) - 1:
        raise ConfigError(f"{k}: I + H = {In + H}; allowed: at most 2^31 - 1 (int32 column indices)")
    for name, v in (("theta_x", theta_x), ("theta_h", theta_h)):
        if _real(k, name, v) < 0:
            raise ConfigError(f"{k}: argument {name} = {v!r}; allowed: a finite number >= 0")
    _flag(k, "dense", dense)
    _need(k, "x", x, (torch.float32,), T * In)
    _need(k, "wx", wx, (torch.float32,), In * G * H)
    _need(k, "wh", wh, (torch.float32,), H * G * H)
    _need(k, "b_ih", b_ih, (torch.float32,), G * H)
    _need(k, "b_hh", b_hh, (torch.float32,), G * H)
    _need(k, "state", state, (torch.float32,), In + 3 * H + 2 * G * H)
    _need(k, "y", y, (torch.float32,), T * H)
    _need(k, "counts", counts, (torch.int64,), 2)
    _need(k, "idx", idx, (torch.int32,), In + H + 32)  # the AVX-512 path stores whole vectors: 16 of slack each
    _need(k, "dv", dv, (torch.float32,), In + H + 32)


def dyn_rnn_seq(gx: Buf, T, N, H, G, wp: Buf, Kp, corr: Buf, ws: Buf, b_hh: Buf, reverse, qmax, h: Buf,
                c: Buf | None, out: Buf, a: Buf, acc: Buf, rs: Buf, pre: Buf) -> None:
    """``lowbit_dyn_rnn_seq``: ``T`` steps of one direction of a dynamic LSTM (``G`` = 4, with cell state ``c``)
    or GRU (``G`` = 3): float32 input projections ``gx`` (T, N, G H), the packed (G H, Kp) recurrent codes, their
    int32 corrections, float32 scales and ``b_hh`` (G H), state ``h`` (and ``c``) (N, H), ``out`` (T, N, H),
    scratch rows ``a`` uint8 (N, Kp), ``acc`` int32 (N, G H), ``rs`` float32 (N), ``pre`` float32 (G H)."""
    k = "lowbit_dyn_rnn_seq"
    _int(k, "T", T, 0)
    _int(k, "N", N, 1)
    _int(k, "H", H, 1)
    _int(k, "G", G, 3, 4)
    _kp(k, Kp, H)
    _flag(k, "reverse", reverse)
    _int(k, "qmax", qmax, 1, 127)
    _need(k, "gx", gx, (torch.float32,), T * N * G * H)
    _need(k, "panels", wp, (torch.int8,), _panels(G * H, Kp))
    for name, b in (("corr", corr), ("ws", ws), ("b_hh", b_hh)):
        _need(k, name, b, (torch.int32,) if name == "corr" else (torch.float32,), G * H)
    _need(k, "h", h, (torch.float32,), N * H)
    if G == 4:
        _need(k, "c", c, (torch.float32,), N * H)
    _need(k, "out", out, (torch.float32,), T * N * H)
    _need(k, "a", a, (torch.uint8,), N * Kp)
    _need(k, "acc", acc, (torch.int32,), N * G * H)
    _need(k, "rs", rs, (torch.float32,), N)
    _need(k, "pre", pre, (torch.float32,), G * H)


def quantize_rows_u8(x: Buf, M, K, Kp, qmax, rs: Buf, a: Buf) -> None:
    """``lowbit_quantize_rows_u8``: float32 rows ``x`` (M, K) on their grids ``rs`` (M) to uint8 rows ``a`` (M, Kp)."""
    k = "lowbit_quantize_rows_u8"
    _int(k, "M", M, 0)
    _int(k, "K", K, 1)
    _kp(k, Kp, K)
    _int(k, "qmax", qmax, 1, 127)
    _need(k, "x", x, (torch.float32,), M * K)
    _need(k, "a", a, (torch.uint8,), M * Kp)
    _need(k, "rs", rs, (torch.float32,), M)


def dyn_dequant(acc: Buf, M, N, rs: Buf, ws: Buf, bias: Buf | None, out: Buf) -> None:
    """``lowbit_dyn_dequant``: int32 ``acc`` (M, N) scaled by rows ``rs`` (M) and columns ``ws`` (N), plus the
    optional ``bias`` (N), into float32 ``out`` (M, N)."""
    k = "lowbit_dyn_dequant"
    _int(k, "M", M, 0)
    _int(k, "N", N, 1)
    _need(k, "acc", acc, (torch.int32,), M * N)
    _need(k, "rs", rs, (torch.float32,), M)
    _need(k, "ws", ws, (torch.float32,), N)
    if bias is not None:
        _need(k, "bias", bias, (torch.float32,), N)
    _need(k, "out", out, (torch.float32,), M * N)


def delta_gru_q(x: Buf, T, In, H, wx: Buf, wh: Buf, state: Buf, theta_x, theta_h, F, Fw, sig: Buf, tnh: Buf, L,
                y: Buf, counts: Buf, idx: Buf, dv: Buf, gates: int = 3) -> None:
    """``lowbit_delta_gru_q``: ``T`` steps of the fixed-point delta GRU (:mod:`lowbit.delta.fixed`): int32 codes
    ``x`` (T, I) in int16's range, int8 weights transposed (I, 3H) and (H, 3H), int32 state ``x_hat, h_hat, h``
    and two 3H accumulators, gate tables of ``2 L`` entries (``L = 8 2^F``), int32 ``y`` (T, H). ``I, H <= 255``
    keep the accumulators inside int32 (the biases in the state are checked by the caller: ``|b| < 2^30``).
    ``gates=4``: ``lowbit_delta_lstm_q``, the LSTM (4H accumulators, the state ``x_hat, h_hat, h, c`` and two 4H
    accumulators)."""
    k = "lowbit_delta_gru_q" if gates == 3 else "lowbit_delta_lstm_q"
    _int(k, "T", T, 0)
    _int(k, "I", In, 1, 255)
    _int(k, "H", H, 1, 255)
    _int(k, "theta_x", theta_x, 0, (1 << 31) - 1)
    _int(k, "theta_h", theta_h, 0, (1 << 31) - 1)
    _int(k, "F", F, 1, 14)
    _int(k, "Fw", Fw, 0, 24)
    if L != 8 << F:
        raise ConfigError(f"{k}: argument L = {L!r}; allowed: 8 * 2^F = {8 << F} (tables over [-8, 8))")
    _need(k, "x", x, (torch.int32,), T * In)
    if gates not in (3, 4):
        raise ConfigError(f"{k}: gates = {gates!r}; allowed: 3 (GRU), 4 (LSTM)")
    _need(k, "wx", wx, (torch.int8,), In * gates * H)
    _need(k, "wh", wh, (torch.int8,), H * gates * H)
    _need(k, "state", state, (torch.int32,), In + 8 * H if gates == 3 else In + 11 * H)
    _need(k, "sig", sig, (torch.int32,), 2 * L)
    _need(k, "tanh", tnh, (torch.int32,), 2 * L)
    _need(k, "y", y, (torch.int32,), T * H)
    _need(k, "counts", counts, (torch.int64,), 2)
    _need(k, "idx", idx, (torch.int32,), In + H + 32)  # 16 of slack per part, as delta_rnn_f32
    _need(k, "dv", dv, (torch.int32,), In + H + 32)


# ---------------------------------------------------------------- rnn.c

RNN_MAX_INPUT = 65536  # 128 * 255 * I < 2^31: the input accumulators stay in int32
RNN_MAX_HIDDEN = 65536  # 128 * 127 * H < 2^31


def rnn_layer(x: Buf, x_bits, T, N, In, H, G, zp, w_ih: Buf, w_hh: Buf, m_ih: Buf, n_ih: Buf, m_hh: Buf, n_hh: Buf,
              b_ih: Buf, b_hh: Buf, sig: Buf, tnh: Buf, out: Buf, c: Buf, scratch: Buf, zeros: Buf) -> None:
    """``lowbit_rnn_layer``: one integer LSTM (``G`` 4) or GRU (3) layer over ``T`` steps of ``N`` sequences: int8
    ``x`` (T, N, I) (``x_bits`` 8) or int16 (16, then ``I`` at most
    :func:`~lowbit.functional.fixed_rnn.max_input16_features` of ``zp``: the int32 accumulator of narrow int8
    weights times ``x - zp`` stays exact; the weights' values are the caller's), int8 weights (G H, I) and (G H, H), int64 multipliers and shifts, int32 biases (G H), int32
    tables of 4096 entries, int8 ``out`` (T, N, H), int32 ``c`` (N, H), int32 scratch of N (2 G H + max(I, H)),
    int8 zeros of N H. The multiplier and shift *values* are the caller's (checked when the op is built or loaded:
    :mod:`lowbit.integer.validate`)."""
    from lowbit.functional.fixed_rnn import max_input16_features

    k = "lowbit_rnn_layer"
    if x_bits not in (8, 16):
        raise ConfigError(f"{k}: x_bits = {x_bits!r}; allowed: 8 (int8 x), 16 (int16 x)")
    _int(k, "T", T, 1)
    _int(k, "N", N, 1)
    _int(k, "zp", zp, *(INT8 if x_bits == 8 else INT16))
    _int(k, "I", In, 1, RNN_MAX_INPUT if x_bits == 8 else max_input16_features(zp))
    _int(k, "H", H, 1, RNN_MAX_HIDDEN)
    if G not in (3, 4):
        raise ConfigError(f"{k}: G = {G!r}; allowed: 3 (GRU), 4 (LSTM)")
    gh = G * H
    _need(k, "x", x, (torch.int8 if x_bits == 8 else torch.int16,), T * N * In)
    _need(k, "w_ih", w_ih, (torch.int8,), gh * In)
    _need(k, "w_hh", w_hh, (torch.int8,), gh * H)
    for name, v in (("m_ih", m_ih), ("n_ih", n_ih), ("m_hh", m_hh), ("n_hh", n_hh)):
        _need(k, name, v, (torch.int64,), gh)
    _need(k, "b_ih", b_ih, (torch.int32,), gh)
    _need(k, "b_hh", b_hh, (torch.int32,), gh)
    _need(k, "sig", sig, (torch.int32,), 4096)
    _need(k, "tanh", tnh, (torch.int32,), 4096)
    _need(k, "out", out, (torch.int8,), T * N * H)
    _need(k, "c", c, (torch.int32,), N * H)
    _need(k, "scratch", scratch, (torch.int32,), N * (2 * gh + max(In, H)))
    _need(k, "zeros", zeros, (torch.int8,), N * H)


# ---------------------------------------------------------------- events.c

SNN_SYNAPSE, SNN_NEURONS, SNN_GATE, SNN_SUMPOOL = 1, 2, 3, 4
SNN_P, SNN_F, SNN_Q = 16, 4, 8  # int64 parameters, floats and pointers per stage
SNN_MAX_TAPS = 64  # the kernel keeps the reached rows of one input on the stack


def _snn_geometry(k: str, at: str, p: list[int], pool: bool) -> tuple[int, int, int, int, int, int]:
    """A stage's (H, W, Cin, Ho, Wo, Cout), checked: kernel taps, strides, padding and the output formula."""
    h, w, cin, ho, wo, cout, kh, kw, sh, sw, ph, pw = p[2:14]
    for name, v, hi in (("H", h, MAX_DIM), ("W", w, MAX_DIM), ("Cin", cin, MAX_DIM), ("Cout", cout, MAX_DIM),
                        ("kh", kh, SNN_MAX_TAPS), ("kw", kw, SNN_MAX_TAPS), ("sh", sh, MAX_DIM), ("sw", sw, MAX_DIM)):
        _int(k, f"{at} {name}", v, 1, hi)
    _int(k, f"{at} ph", ph, 0, MAX_DIM)
    _int(k, f"{at} pw", pw, 0, MAX_DIM)
    for name, v, size, kk, s, pp in (("Ho", ho, h, kh, sh, ph), ("Wo", wo, w, kw, sw, pw)):
        want = out_size(size, kk, s, pp, 1)
        if want < 1 or v != want:
            raise ConfigError(f"{k}: {at} {name} = {v!r}; the input, kernel, stride and padding give {want}")
    if pool and cin != cout:
        raise ConfigError(f"{k}: {at} is a pool with {cin} input and {cout} output channels; they must be equal")
    for name, v in (("input map", h * w * cin), ("output map", ho * wo * cout)):
        if v > (1 << 31) - 1:
            raise ConfigError(f"{k}: {at} {name} has {v} positions; allowed: at most 2^31 - 1 (int32 event indices)")
    return h, w, cin, ho, wo, cout


def snn_table_size(h: int, w: int, kh: int, kw: int, cin: int) -> int:
    """int32 room for a stage's tables (``csrc/events.c``): per axis a start index per row and a pair
    ``(output row, tap)`` per tap of each row; the row and column of each input position; then the events
    sorted by position (a start and a cursor per position, a channel and a count per input)."""
    return h + 1 + 2 * h * kh + w + 1 + 2 * w * kw + 2 * h * w + 2 * h * w + 1 + 2 * h * w * cin


def snn_run(prog: Buf, fprog: Buf, params: list[list[int]], floats: list[list[float]], bufs: list[list[Buf | None]],
            x: Buf, T, out: Buf, counts: Buf, scratch: Buf, E) -> None:
    """``lowbit_snn_run``: ``T`` steps of an event-driven spiking net (``csrc/events.c``). ``params`` are the
    ``S`` rows of 16 int64 of ``prog`` (``fprog``: ``S`` rows of 4 float32), ``bufs`` the 8 buffers of each
    stage (slot 4 of a synapse, gate or pool: int32 room for its axis tables, :func:`snn_table_size`; slot 5 of
    the analog synapse: int32 room for the compact state of its neurons that can fire, 8 times its outputs). The chain
    is checked as the kernel walks it: an analog synapse first, a neuron layer after every
    other synapse but the last (the readout), every event index inside the map that the next stage reads, every
    event list inside the scratch's ``E`` slots (``6 (E + 1)`` int32: two lists of three arrays, one spare slot
    each), spike counts inside int32 over ``T`` steps."""
    k = "lowbit_snn_run"
    S = len(params)
    _int(k, "S", S, 2, 1 << 20)
    _int(k, "T", T, 1, 1 << 24)
    _int(k, "E", E, 1, (1 << 31) - 1)
    _need(k, "prog", prog, (torch.int64,), S * SNN_P)
    _need(k, "fprog", fprog, (torch.float32,), S * SNN_F)
    if len(floats) != S or len(bufs) != S or any(len(r) != SNN_P for r in params) \
            or any(len(r) != SNN_F for r in floats) or any(len(b) != SNN_Q for b in bufs):
        raise ShapeError(f"{k}: {S} stages need {S} rows of {SNN_P} parameters, {SNN_F} floats and {SNN_Q} buffers")
    size = None  # positions of the map the current events index (None: no events yet)
    chan = None  # its channels: a stage reading a map (not a vector) must split it the same way (events carry
    # their position y W + x, which indexes the stage's tables)
    pending = None  # a synapse whose target the next stage must be: (stage, positions)
    classes = 0
    for s, (p, f, b) in enumerate(zip(params, floats, bufs)):
        at = f"stage {s}"
        kind = _int(k, f"{at} kind", p[0], SNN_SYNAPSE, SNN_SUMPOOL)
        if pending is not None and kind != SNN_NEURONS:
            raise ConfigError(f"{k}: {at} follows synapse stage {pending[0]}, which is not the readout: it must be "
                              "the neuron layer that synapse drives")
        if kind != SNN_NEURONS:
            _snn_geometry(k, at, p, pool=kind != SNN_SYNAPSE)
            _need(k, f"{at} tables", b[4], (torch.int32,), snn_table_size(p[2], p[3], p[8], p[9], p[4]))
        if kind == SNN_SYNAPSE:
            analog, readout = _flag(k, f"{at} analog", p[1]), _flag(k, f"{at} readout", p[14])
            h, w, cin, ho, wo, cout = _snn_geometry(k, at, p, pool=False)
            if analog != (s == 0):
                raise ConfigError(f"{k}: {at} analog = {analog}; the first stage, and only it, reads the input")
            if readout != (s == S - 1):
                raise ConfigError(f"{k}: {at} readout = {readout}; the last stage, and only it, is the readout")
            leak = _real(k, f"{at} leak", f[0], positive=True)
            if leak > 1:
                raise ConfigError(f"{k}: {at} leak = {leak}; allowed: (0, 1]")
            if analog:
                _need(k, "x", x, (torch.float32,), h * w * cin)
                _need(k, f"{at} current", b[3], (torch.float32,), ho * wo * cout)
                _need(k, f"{at} active neurons", b[5], (torch.int32,), 8 * ho * wo * cout)
            elif size != h * w * cin or (h * w > 1 and cin != chan):
                raise ShapeError(f"{k}: {at} reads a map of {h * w * cin} positions in {cin} channels; the events "
                                 f"before it index {size} in {chan}")
            _need(k, f"{at} weight", b[0], (torch.float32,), cin * p[8] * p[9] * cout)
            _need(k, f"{at} bias", b[1], (torch.float32,), cout)
            _need(k, f"{at} target", b[2], (torch.float32,), ho * wo * cout)
            pending, classes = (None, ho * wo * cout) if readout else ((s, ho * wo * cout), classes)
        elif kind == SNN_NEURONS:
            if pending is None:
                raise ConfigError(f"{k}: {at} is a neuron layer that no synapse drives")
            n, c = _int(k, f"{at} N", p[1], 1, E), _int(k, f"{at} C", p[2], 1)
            if n != pending[1] or n % c:
                raise ShapeError(f"{k}: {at} has {n} neurons of {c} channels; synapse stage {pending[0]} drives "
                                 f"{pending[1]} (N must equal it and be a multiple of C)")
            _int(k, f"{at} spikes", p[3], 0, 2)
            _flag(k, f"{at} reset", p[4])
            _int(k, f"{at} max_spikes", p[5], 1, ((1 << 31) - 1) // T)  # |count| <= T max_spikes in int32
            _flag(k, f"{at} signed", p[6])
            _real(k, f"{at} initial_potential", f[1])
            for name, slot, dt, num in (("threshold", 0, torch.float32, c), ("negative threshold", 1, torch.float32, c),
                                        ("v", 2, torch.float32, n), ("count", 3, torch.int32, n)):
                _need(k, f"{at} {name}", b[slot], (dt,), num)
            size, chan, pending = n, c, None
        else:
            h, w, c, ho, wo, _ = _snn_geometry(k, at, p, pool=True)
            if size != h * w * c or c != chan:
                raise ShapeError(f"{k}: {at} pools a map of {h * w * c} positions in {c} channels; the events before "
                                 f"it index {size} in {chan}")
            if ho * wo * c > E:
                raise ShapeError(f"{k}: {at} sends events over {ho * wo * c} positions; the scratch holds E = {E}")
            if kind == SNN_GATE:
                _need(k, f"{at} counts", b[0], (torch.float32,), h * w * c)
                _need(k, f"{at} amplitude", b[1], (torch.float32,), c)
            else:
                _need(k, f"{at} sums", b[0], (torch.int32,), ho * wo * c)
                _need(k, f"{at} seen", b[1], (torch.int32,), ho * wo * c)
            size = ho * wo * c
    _need(k, "out", out, (torch.float32,), T * classes)
    _need(k, "counts", counts, (torch.int64,), T * S * 2)
    _need(k, "scratch", scratch, (torch.int32,), 6 * (E + 1))

#: Every exported function of csrc/ and what checks its calls: a function here, the plan's step checker, or
#: why nothing needs checking (a test keeps this in step with the C sources).
# ---------------------------------------------------------------- bits.c and xnor.c (binary layers of a plan)


def _words(k: int) -> int:
    return (k + 63) // 64


def bits_pack_i8(x: Buf, M, K, out: Buf) -> None:
    """``lowbit_bits_pack_i8``: int8 signs (M, K) -> uint64 words (M, ceil(K / 64))."""
    k = "lowbit_bits_pack_i8"
    M, K = _int(k, "M", M, 0), _int(k, "K", K, 1)
    _need(k, "x", x, (torch.int8,), M * K)
    _need(k, "out", out, (torch.uint64,), M * _words(K))


def bits_unpack_i8(bits: Buf, M, N, out: Buf) -> None:
    """``lowbit_bits_unpack_i8``: uint64 words (M, ceil(N / 64)) -> int8 signs (M, N)."""
    k = "lowbit_bits_unpack_i8"
    M, N = _int(k, "M", M, 0), _int(k, "N", N, 1)
    _need(k, "bits", bits, (torch.uint64,), M * _words(N))
    _need(k, "out", out, (torch.int8,), M * N)


def bits_im2col_nhwc(x: Buf, N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, out: Buf) -> None:
    """``lowbit_bits_im2col_nhwc``: NHWC int8 signs -> the bit rows (N Ho Wo, ceil(kh kw C / 64)) of a conv."""
    k = "lowbit_bits_im2col_nhwc"
    _geometry(k, N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    _need(k, "x", x, (torch.int8,), N * H * W * C)
    _need(k, "out", out, (torch.uint64,), N * Ho * Wo * _words(kh * kw * C))


def xnor_gemm(a: Buf, M, panels: Buf, N, W, K, isa, thr: Buf | None, flip: Buf | None, out: Buf, threads) -> None:
    """``lowbit_xnor_gemm``: packed rows (M, W) times a weight packed in panels of 32 columns
    (``lowbit.bitwise.kernels.pack_weight``): int32 (M, N), or with ``thr`` and ``flip`` packed bits (M, ceil(N / 64))."""
    k = "lowbit_xnor_gemm"
    M, N, K = _int(k, "M", M, 0), _int(k, "N", N, 1), _int(k, "K", K, 1, (1 << 31) - 1)
    if _int(k, "W", W, 1) != _words(K):
        raise ShapeError(f"{k}: W = {W} words per row; K = {K} needs {_words(K)}")
    _int(k, "isa", isa, 0, 2)
    _int(k, "threads", threads, 1, 4096)
    _need(k, "a", a, (torch.uint64,), M * W)
    _need(k, "panels", panels, (torch.uint64,), (N + 31) // 32 * W * 32)
    if thr is None:
        if flip is not None:
            raise ShapeError(f"{k}: buffer 'flip' without 'thr'")
        _need(k, "out", out, (torch.int32,), M * N)
        return
    _need(k, "thr", thr, (torch.int32,), N)
    _need(k, "flip", flip, (torch.uint8, torch.bool), N)
    _need(k, "out", out, (torch.uint64,), M * _words(N))


def bits_serial_gemm(x: Buf, M, K, lo, B, panels: Buf, P, a: Buf, a0, vsum: Buf, wsum: Buf, N, isa, abuf: Buf,
                     gbuf: Buf, acc: Buf, out: Buf, threads) -> None:
    """``lowbit_bits_serial_gemm``: int8 codes (M, K) in [lo, lo + 2^B) times P weight sign planes in XNOR panels
    -> int32 (M, N); scratch ``abuf`` (M ceil(K / 64) uint64), ``gbuf`` (M N int32), ``acc`` (M N int64)."""
    k = "lowbit_bits_serial_gemm"
    M, K, N = _int(k, "M", M, 0), _int(k, "K", K, 1, (1 << 24)), _int(k, "N", N, 1)
    B, P = _int(k, "B", B, 1, 7), _int(k, "P", P, 1, 2)
    lo = _int(k, "lo", lo, -128, 127)
    if lo + (1 << B) - 1 > 127:
        raise ConfigError(f"{k}: codes in [{lo}, {lo + (1 << B) - 1}] do not fit int8")
    _int(k, "a0", a0, -4, 4)
    _int(k, "isa", isa, 0, 2)
    _int(k, "threads", threads, 1, 4096)
    W = _words(K)
    _need(k, "x", x, (torch.int8,), M * K)
    _need(k, "panels", panels, (torch.uint64,), P * ((N + 31) // 32 * W * 32))
    _need(k, "a", a, (torch.int64,), P)
    _need(k, "vsum", vsum, (torch.int64,), P * N)
    _need(k, "wsum", wsum, (torch.int64,), N)
    _need(k, "abuf", abuf, (torch.uint64,), M * W)
    _need(k, "gbuf", gbuf, (torch.int32,), M * N)
    _need(k, "acc", acc, (torch.int64,), M * N)
    _need(k, "out", out, (torch.int32,), M * N)


def ternary_gemm(a: Buf, amask: Buf | None, M, panels: Buf, pcm: Buf, N, W, isa, out: Buf, threads) -> None:
    """``lowbit_ternary_gemm``: binary rows (M, W) (with ``amask``: ternary) times a ternary weight in panels of 32
    columns, two planes (``lowbit.bitwise.pack_ternary_weight``), popcounts ``pcm`` -> int32 (M, N)."""
    k = "lowbit_ternary_gemm"
    M, N, W = _int(k, "M", M, 0), _int(k, "N", N, 1), _int(k, "W", W, 1, (1 << 24))
    _int(k, "isa", isa, 0, 2)
    _int(k, "threads", threads, 1, 4096)
    cols = (N + 31) // 32 * 32
    _need(k, "a", a, (torch.uint64,), M * W)
    if amask is not None:
        _need(k, "amask", amask, (torch.uint64,), M * W)
    _need(k, "panels", panels, (torch.uint64,), cols * W * 2)
    _need(k, "pcm", pcm, (torch.int32,), cols)
    _need(k, "out", out, (torch.int32,), M * N)


ENTRY_POINTS: dict[str, str] = {
    "lowbit_rnn_layer": "lowbit.native.guard.rnn_layer",
    "lowbit_requant": "lowbit.native.guard.requant",
    "lowbit_requant_block": "called from C only (lowbit_gemm_u8s8, lowbit_conv_u8s8, lowbit_requant)",
    "lowbit_im2col_nhwc": "lowbit.native.guard.im2col_nhwc",
    "lowbit_depthwise_nhwc": "lowbit.native.guard.depthwise_nhwc",
    "lowbit_maxpool_nhwc": "lowbit.native.guard.maxpool_nhwc",
    "lowbit_quantize_f32": "lowbit.native.guard.quantize_f32",
    "lowbit_nhwc_to_nchw": "lowbit.native.guard.nhwc_to_nchw",
    "lowbit_dequant_rows": "lowbit.native.guard.dequant_rows",
    "lowbit_table_i8": "lowbit.native.guard.table",
    "lowbit_table_f32": "lowbit.native.guard.table",
    "lowbit_pack_a": "lowbit.native.guard.pack_a",
    "lowbit_pack_w": "lowbit.native.guard.pack_w",
    "lowbit_pad_flip_nhwc": "lowbit.native.guard.pad_flip_nhwc",
    "lowbit_im2col_u8": "lowbit.native.guard.im2col_u8",
    "lowbit_im2col_u8_into": "lowbit.native.guard.im2col_u8",
    "lowbit_gemm_u8s8": "lowbit.native.guard.gemm_u8s8",
    "lowbit_conv_u8s8": "lowbit.native.guard.conv_u8s8",
    "lowbit_vnni_peak": "lowbit.native.guard.vnni_peak",
    "lowbit_run_plan": "lowbit.integer.plan.check_steps",
    "lowbit_delta_rnn_f32": "lowbit.native.guard.delta_rnn_f32",
    "lowbit_dyn_rnn_seq": "lowbit.native.guard.dyn_rnn_seq",
    "lowbit_quantize_rows_u8": "lowbit.native.guard.quantize_rows_u8",
    "lowbit_dyn_dequant": "lowbit.native.guard.dyn_dequant",
    "lowbit_delta_gru_q": "lowbit.native.guard.delta_gru_q",
    "lowbit_delta_lstm_q": "lowbit.native.guard.delta_gru_q",
    "lowbit_snn_run": "lowbit.native.guard.snn_run",
    "lowbit_gemm_isa": "no arguments",
    "lowbit_plan_step_size": "no arguments",
    "lowbit_bits_pack_i8": "lowbit.native.guard.bits_pack_i8",
    "lowbit_bits_unpack_i8": "lowbit.native.guard.bits_unpack_i8",
    "lowbit_bits_im2col_nhwc": "lowbit.native.guard.bits_im2col_nhwc",
    "lowbit_bits_serial_gemm": "lowbit.native.guard.bits_serial_gemm",
    "lowbit_ternary_gemm": "lowbit.native.guard.ternary_gemm",
    "lowbit_ternary_pack_b": "not called in this library (the plan takes the panels of bitwise.pack_ternary_weight)",
    "lowbit_ternary_pack_codes": "not called in this library (bitwise.pack_ternary calls the bitwise library's copy)",
    "lowbit_xnor_gemm": "lowbit.native.guard.xnor_gemm",
    "lowbit_xnor_isas": "no arguments",
    "lowbit_xnor_pack_b": "not called in this library (the plan takes the panels of bitwise.kernels.pack_weight)",
    "lowbit_xnor_pack_f32": "not called in this library (bitwise.kernels.pack_rows calls the XNOR library's copy)",
    "lowbit_xnor_peak": "not called in this library (bitwise.kernels.peak_gops calls the XNOR library's copy)",
}


__all__ = ["ENTRY_POINTS", "Buf", "bits_im2col_nhwc", "bits_serial_gemm", "ternary_gemm", "bits_pack_i8", "bits_unpack_i8", "buf", "xnor_gemm", "conv_u8s8", "delta_gru_q", "delta_rnn_f32", "dyn_dequant", "dyn_rnn_seq", "depthwise_nhwc", "dequant_codes", "dequant_rows",
           "gemm_u8s8", "im2col_nhwc", "im2col_u8", "maxpool_nhwc", "nhwc_to_nchw", "out_size", "pack_a", "pack_w", "quantize_rows_u8",
           "pad_flip_nhwc", "quantize_f32", "requant", "requant_values", "rnn_layer", "snn_run", "sum_hw", "sum_pool", "table", "vnni_peak"]

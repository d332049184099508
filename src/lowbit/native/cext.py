"""The C kernels, compiled on first use: ``csrc/requant.c`` (requantization epilogue, NHWC im2col,
depthwise conv), ``csrc/gemm.c`` (prepacked int8 GEMM on AVX-512 VNNI with the epilogue fused) and
``csrc/plan.c`` (a whole model's kernels in one call, :mod:`lowbit.integer.plan`), ``csrc/rnn.c`` (a layer of
the integer LSTM / GRU, :mod:`lowbit.nn.recurrent`) and ``csrc/delta.c`` (the
streaming delta RNN step of :mod:`lowbit.delta.runtime`) and ``csrc/events.c`` (the event-driven spiking net of
:mod:`lowbit.snn.events`).

PyTorch has no fused integer requantization: as separate int64 tensor ops it
costs more than the int8 GEMM it follows. The C kernel does bias, multiply,
rounding shift, zero point, clamp and the int8 store in one pass. It is built
with the system C compiler into a per-user cache (``$LOWBIT_CACHE`` or
``~/.cache/lowbit``), once per source and CPU; without a compiler lowbit falls
back to the PyTorch reference (same results, slower) and says so once.
The integer model's ``Kernels.REFERENCE`` (:mod:`lowbit.integer.backend`) runs without them. Set
``LOWBIT_CEXT_SANITIZE=address,undefined`` to build
(into its own cache entry) with those sanitizers, for the test that runs the integer tests under them (the
process must then preload the sanitizer runtime); it is read when the library is first built or loaded.

Every wrapper checks its arguments with :mod:`lowbit.native.guard` before the call: the kernels trust them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from lowbit.errors import ShapeError
from lowbit.native import guard
from lowbit.functional.requant import half_of

SOURCES = tuple(Path(__file__).with_name("csrc") / f for f in ("requant.c", "gemm.c", "plan.c", "delta.c",
                                                                      "bits.c", "events.c", "dynrnn.c", "rnn.c")) + (
    Path(__file__).parent.parent / "bitwise" / "csrc" / "xnor.c",  # the XNOR and ternary GEMMs, for the plan's
    Path(__file__).parent.parent / "bitwise" / "csrc" / "ternary.c")  # bitwise layers
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c11", "-fopenmp", "-fno-math-errno",
         "-fno-trapping-math"]  # errno and FP traps only, no value changes: lets the gate loops vectorise
SANITIZE_FLAGS = ["-O1", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]  # -O1: a quicker build,
# every access checked one by one (the intrinsic kernels are the same code at any level)


def flags(sanitize: str = "") -> list[str]:
    """The compiler flags: :data:`FLAGS`, plus ``-fsanitize=<sanitize>`` (e.g. ``"address,undefined"``) and
    :data:`SANITIZE_FLAGS` when ``sanitize`` is not empty (a sanitized build stops at the first error)."""
    if not sanitize:
        return list(FLAGS)
    if not all(part.isalpha() for part in sanitize.split(",")):
        raise ValueError(f"LOWBIT_CEXT_SANITIZE={sanitize!r}: expected sanitizer names such as address,undefined")
    return [*FLAGS, f"-fsanitize={sanitize}", *SANITIZE_FLAGS]


def cache_dir() -> Path:
    return Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))


def cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:  # closed at once: a generator over an open file leaks it
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def build(srcs: tuple[Path, ...], out: Path, flag_list: list[str]) -> None:
    """Compile ``srcs`` into the shared library ``out`` (written atomically) with ``flag_list``."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (install gcc: apt-get install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flag_list, *map(str, srcs), "-o", tmp], check=True, capture_output=True, timeout=120)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_path(sources: tuple[Path, ...], flag_list: list[str], prefix: str, cache: Path | None = None) -> Path:
    """Where the library built from ``sources`` with ``flag_list`` for this CPU is cached (in ``cache``, by
    default ``$LOWBIT_CACHE`` or ``~/.cache/lowbit``): ``<prefix>-<hash of sources, flags and CPU>.so``."""
    headers = sorted({h for f in sources for h in f.parent.glob("*.h")})  # included by the sources
    src = b"".join(f.read_bytes() for f in (*sources, *headers))
    key = hashlib.sha256(src + " ".join(flag_list).encode() + cpu_key().encode()).hexdigest()[:16]
    return (cache_dir() if cache is None else Path(cache)) / f"{prefix}-{key}.so"


def library_path(flag_list: list[str], cache: Path | None = None) -> Path:
    """Where the library built from :data:`SOURCES` with ``flag_list`` is cached (see :func:`cached_path`)."""
    return cached_path(SOURCES, flag_list, "requant", cache)


def load(sources: tuple[Path, ...], prefix: str, make_flags, unavailable: str, fallback: str) -> ctypes.CDLL | None:
    """``sources`` built once per source, flags and CPU (flags from ``make_flags($LOWBIT_CEXT_SANITIZE)``) and
    loaded; None with the warning ``lowbit: <unavailable> (<why>); <fallback>`` where no compiler works."""
    try:
        flag_list = make_flags(os.environ.get("LOWBIT_CEXT_SANITIZE", ""))
        path = cached_path(sources, flag_list, prefix)
        if not path.exists():
            build(sources, path, flag_list)
        return ctypes.CDLL(str(path))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        warnings.warn(f"lowbit: {unavailable} ({exc}); {fallback}", stacklevel=3)
        return None


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (the PyTorch fallback) where no compiler works."""
    lib = load(SOURCES, "requant", flags, "C kernels unavailable", "using the slower PyTorch path (same results)")
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.lowbit_requant.argtypes = [ptr, i64, i64, i64, ctypes.c_int, ptr, ptr, ptr, ptr, ptr, i64, ptr, i64, i64, i64, ptr]
    lib.lowbit_requant.restype = None
    lib.lowbit_im2col_nhwc.argtypes = [ptr] + [i64] * 12 + [ctypes.c_int8, i64, i64, ptr]
    lib.lowbit_im2col_nhwc.restype = None
    lib.lowbit_depthwise_nhwc.argtypes = [ptr, i64, i64, i64, i64, ptr] + [i64] * 8 + [ctypes.c_int32, i64, i64, ptr]
    lib.lowbit_depthwise_nhwc.restype = None
    lib.lowbit_maxpool_nhwc.argtypes = [ptr] + [i64] * 12 + [ptr]
    lib.lowbit_maxpool_nhwc.restype = None
    f32 = ctypes.c_float
    lib.lowbit_quantize_f32.argtypes = [ptr, i64, f32, f32, f32, f32, ptr]
    lib.lowbit_quantize_f32.restype = i64
    lib.lowbit_nhwc_to_nchw.argtypes = [ptr, i64, i64, i64, ptr]
    lib.lowbit_nhwc_to_nchw.restype = None
    for name in ("lowbit_table_i8", "lowbit_table_f32"):
        getattr(lib, name).argtypes = [ptr, i64, i64, i64, ptr, ptr]
        getattr(lib, name).restype = None
    lib.lowbit_dequant_rows.argtypes = [ptr, i64, i64, ptr, ptr, ptr]
    lib.lowbit_dequant_rows.restype = None
    lib.lowbit_gemm_isa.restype = ctypes.c_int
    lib.lowbit_vnni_peak.argtypes = [i64]
    lib.lowbit_vnni_peak.restype = ctypes.c_int
    lib.lowbit_pack_a.argtypes = [ptr, i64, i64, i64, ptr]
    lib.lowbit_pack_w.argtypes = [ptr, i64, i64, i64, ptr]
    lib.lowbit_im2col_u8_into.argtypes = [ptr] + [i64] * 12 + [ctypes.c_int8, i64, i64, i64, ptr, ptr]
    lib.lowbit_im2col_u8_into.restype = None
    lib.lowbit_im2col_u8.argtypes = [ptr] + [i64] * 12 + [ctypes.c_int8, i64, i64, i64, ptr]
    lib.lowbit_gemm_u8s8.argtypes = [ptr, i64, i64, ctypes.c_int, ptr, i64, ptr, ctypes.c_int, ptr, ptr, ptr, ptr, i64, ptr,
                                     i64, i64, i64, ptr, ctypes.c_int]
    lib.lowbit_pad_flip_nhwc.argtypes = [ptr] + [i64] * 6 + [ctypes.c_int8, ptr]
    lib.lowbit_conv_u8s8.argtypes = [ptr] + [i64] * 12 + [ptr, i64, ptr, ctypes.c_int, ptr, ptr, ptr, ptr, i64, ptr,
                                                         i64, i64, i64, ptr, ctypes.c_int]
    lib.lowbit_im2col_u8.restype = ctypes.c_int
    lib.lowbit_run_plan.argtypes = [ptr, i64, ptr, ctypes.c_int]
    lib.lowbit_run_plan.restype = ctypes.c_int
    lib.lowbit_plan_step_size.restype = i64
    lib.lowbit_delta_rnn_f32.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, f32, f32, ctypes.c_int,
                                         ptr, ptr, ptr, ptr]
    lib.lowbit_delta_rnn_f32.restype = ctypes.c_int
    lib.lowbit_dyn_rnn_seq.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, ptr, ptr, ptr, ctypes.c_int, i64, ptr, ptr,
                                       ptr, ptr, ptr, ptr, ptr]
    lib.lowbit_dyn_rnn_seq.restype = ctypes.c_int
    lib.lowbit_quantize_rows_u8.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr]  # x, M, K, Kp, qmax, rs, a
    lib.lowbit_quantize_rows_u8.restype = None
    lib.lowbit_dyn_dequant.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr]
    lib.lowbit_dyn_dequant.restype = None
    i32 = ctypes.c_int32
    lib.lowbit_delta_gru_q.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, i32, i32, i64, i64, ptr, ptr, i64, ptr, ptr,
                                       ptr, ptr]
    lib.lowbit_delta_gru_q.restype = None
    lib.lowbit_delta_lstm_q.argtypes = lib.lowbit_delta_gru_q.argtypes
    lib.lowbit_delta_lstm_q.restype = None
    lib.lowbit_rnn_layer.argtypes = [ptr] + [i64] * 8 + [ptr] * 13
    lib.lowbit_rnn_layer.restype = None
    lib.lowbit_snn_run.argtypes = [ptr, ptr, ptr, i64, ptr, i64, ptr, ptr, ptr, i64]
    lib.lowbit_snn_run.restype = ctypes.c_int
    for f in (lib.lowbit_pack_a, lib.lowbit_pack_w, lib.lowbit_pad_flip_nhwc):
        f.restype = None
    lib.lowbit_gemm_u8s8.restype = ctypes.c_int  # 0, or -2: no memory (AVX2's int16 rows)
    lib.lowbit_conv_u8s8.restype = ctypes.c_int
    lib.lowbit_bits_pack_i8.argtypes = [ptr, i64, i64, ptr]
    lib.lowbit_bits_unpack_i8.argtypes = [ptr, i64, i64, ptr]
    lib.lowbit_bits_im2col_nhwc.argtypes = [ptr] + [i64] * 14 + [ptr]
    for f in (lib.lowbit_bits_pack_i8, lib.lowbit_bits_unpack_i8, lib.lowbit_bits_im2col_nhwc):
        f.restype = None
    lib.lowbit_bits_serial_gemm.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, ptr, i64, ptr, ptr, i64, ctypes.c_int,
                                            ptr, ptr, ptr, ptr, ctypes.c_int]
    lib.lowbit_bits_serial_gemm.restype = ctypes.c_int
    return lib


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the C kernels are not available (no working C compiler)")
    return lib


def nhwc(x: torch.Tensor, kernel: str, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """The channels-last (NHWC) bytes of a 4-D ``dtype`` CPU tensor (N, C, H, W): a view when its memory is
    channels-last, else a copy."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.dtype != dtype:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{kernel}: expected a 4-D {dtype} tensor (N, C, H, W), got {got}")
    return x.permute(0, 2, 3, 1).contiguous()


def _b(t: torch.Tensor | None, kernel: str, name: str) -> guard.Buf | None:
    return guard.buf(t, kernel, name)


def im2col_nhwc(x: torch.Tensor, kernel, stride, padding, dilation, pad_value: int, out_hw) -> torch.Tensor:
    """(N*Ho*Wo, kh*kw*C) int8 patches of ``x`` (N, C, H, W) stored channels-last (copied if it is not)."""
    k = "lowbit_im2col_nhwc"
    lib = _lib()
    xh = nhwc(x, k)
    n, h, w, c = xh.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = kernel, stride, padding, dilation, out_hw
    guard.im2col_nhwc(_b(xh, k, "x"), n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, pad_value, ho, wo,
                      guard.Buf(torch.int8, n * ho * wo * kh * kw * c))
    out = torch.empty((n * ho * wo, kh * kw * c), dtype=torch.int8)
    lib.lowbit_im2col_nhwc(xh.data_ptr(), n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, pad_value, ho, wo,
                           out.data_ptr())
    return out


def depthwise_nhwc(x: torch.Tensor, weight_hwc: torch.Tensor, stride, padding, dilation, zero_point: int,
                   out_hw) -> torch.Tensor:
    """int32 (N*Ho*Wo, C) depthwise conv of int8 ``x`` (N, C, H, W; channels-last avoids a copy) on
    zero-point-centred values; ``weight_hwc`` is (kh, kw, C) int8."""
    k = "lowbit_depthwise_nhwc"
    lib = _lib()
    xh = nhwc(x, k)
    n, h, wd, c = xh.shape
    if weight_hwc.ndim != 3 or weight_hwc.shape[2] != c:
        raise ShapeError(f"{k}: weight of shape {tuple(weight_hwc.shape)} for an input of {c} channels; "
                         f"expected (kh, kw, {c})")
    kh, kw = weight_hwc.shape[:2]
    (sh, sw), (ph, pw), (dh, dw), (ho, wo) = stride, padding, dilation, out_hw
    guard.depthwise_nhwc(_b(xh, k, "x"), n, h, wd, c, _b(weight_hwc, k, "weight"), kh, kw, sh, sw, ph, pw, dh, dw,
                         zero_point, ho, wo, guard.Buf(torch.int32, n * ho * wo * c))
    out = torch.empty((n * ho * wo, c), dtype=torch.int32)
    lib.lowbit_depthwise_nhwc(xh.data_ptr(), n, h, wd, c, weight_hwc.data_ptr(), kh, kw, sh, sw, ph, pw, dh, dw,
                              zero_point, ho, wo, out.data_ptr())
    return out


def maxpool_nhwc(x: torch.Tensor, kernel, stride, padding, out_hw) -> torch.Tensor:
    """Max pooling of int8 ``x`` (N, C, H, W; channels-last memory avoids a copy), no dilation; the result
    is (N, C, Ho, Wo) with channels-last memory."""
    k = "lowbit_maxpool_nhwc"
    lib = _lib()
    xh = nhwc(x, k)
    n, h, w, c = xh.shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out_hw
    guard.maxpool_nhwc(_b(xh, k, "x"), n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo, guard.Buf(torch.int8, n * ho * wo * c))
    out = torch.empty((n, ho, wo, c), dtype=torch.int8)
    lib.lowbit_maxpool_nhwc(xh.data_ptr(), n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo, out.data_ptr())
    return out.permute(0, 3, 1, 2)


def quantize_f32(x: torch.Tensor, inv: torch.Tensor, zp: int, lo: int, hi: int) -> torch.Tensor | None:
    """int8 ``clamp(round(x * inv) + zp, lo, hi)`` of float32 ``x``, as PyTorch's ops compute it; None when
    ``x`` holds a NaN or an infinity (the caller raises the error the simulation raises)."""
    k = "lowbit_quantize_f32"
    lib = _lib()
    x = x.contiguous()
    guard.quantize_f32(_b(x, k, "x"), x.numel(), float(inv), zp, lo, hi, guard.Buf(torch.int8, x.numel()))
    out = torch.empty(x.shape, dtype=torch.int8)
    bad = lib.lowbit_quantize_f32(x.data_ptr(), x.numel(), float(inv), float(zp), float(lo), float(hi),
                                  out.data_ptr())
    return None if bad else out


def flatten_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``torch.flatten(x, 1)`` of an int8 (N, C, H, W) tensor with channels-last memory, in one C pass."""
    k = "lowbit_nhwc_to_nchw"
    lib = _lib()
    xh = nhwc(x, k)
    n, h, w, c = xh.shape
    guard.nhwc_to_nchw(_b(xh, k, "x"), n, h * w, c, guard.Buf(torch.int8, n * c * h * w))
    out = torch.empty((n, c * h * w), dtype=torch.int8)
    lib.lowbit_nhwc_to_nchw(xh.data_ptr(), n, h * w, c, out.data_ptr())
    return out


def table(x: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
    """``tab[c, x + 128]`` of int8 ``x`` (N, C, ...) with ``c`` its index along dimension 1 (``tab`` is (C, 256),
    int8 or float32; one row: the same everywhere), in one C pass over ``x``'s memory: NCHW-contiguous or
    channels-last (a conv output), the output laid out alike."""
    k = "lowbit_table_i8" if tab.dtype == torch.int8 else "lowbit_table_f32"
    lib = _lib()
    rows = tab.shape[0]
    if rows == 1 or x.is_contiguous():
        xc = x.contiguous()
        outer, c = (1, 1) if rows == 1 else (x.shape[0], rows)
        inner = xc.numel() // (outer * c)
        out = torch.empty(x.shape, dtype=tab.dtype)
        perm = None
    else:
        perm = (0, *range(2, x.ndim), 1)
        xc = x.permute(*perm).contiguous()  # a view of a channels-last tensor: no copy
        outer, c, inner = xc.numel() // rows, rows, 1
        out = torch.empty(xc.shape, dtype=tab.dtype)
    tab = tab.contiguous()
    guard.table(_b(xc, k, "x"), outer, c, inner, _b(tab, k, "table"), _b(out, k, "out"))
    getattr(lib, k)(xc.data_ptr(), outer, c, inner, tab.data_ptr(), out.data_ptr())
    return out if perm is None else out.permute(0, x.ndim - 1, *range(1, x.ndim - 1))  # back to (N, C, ...)


def bits_pack_i8(x: torch.Tensor) -> torch.Tensor:
    """int8 sign codes (M, K) -> packed bits (M, ceil(K / 64)) uint64 (1 for +1), in one C pass."""
    k = "lowbit_bits_pack_i8"
    lib = _lib()
    x = x.contiguous()
    m, kk = x.shape
    out = torch.empty((m, (kk + 63) // 64), dtype=torch.uint64)
    guard.bits_pack_i8(_b(x, k, "x"), m, kk, _b(out, k, "out"))
    lib.lowbit_bits_pack_i8(x.data_ptr(), m, kk, out.data_ptr())
    return out


def bits_im2col(x: torch.Tensor, kernel, stride, padding, dilation, out_hw) -> torch.Tensor:
    """The bit rows (N*Ho*Wo, ceil(kh*kw*C / 64)) uint64 of a binary conv of int8 signs ``x`` (N, C, H, W), taps in
    (kh, kw, C) order, -1 (bit 0) in the padding."""
    k = "lowbit_bits_im2col_nhwc"
    lib = _lib()
    xh = nhwc(x, k)
    n, h, w, c = xh.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = kernel, stride, padding, dilation, out_hw
    out = torch.empty((n * ho * wo, (kh * kw * c + 63) // 64), dtype=torch.uint64)
    guard.bits_im2col_nhwc(_b(xh, k, "x"), n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, _b(out, k, "out"))
    lib.lowbit_bits_im2col_nhwc(xh.data_ptr(), n, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out.data_ptr())
    return out


def bits_serial_gemm(x: torch.Tensor, planes, lo: int, bits: int, isa: int, threads: int = 1) -> torch.Tensor:
    """int32 (M, N) ``x @ w.T`` of int8 codes ``x`` (M, K) in ``[lo, lo + 2^bits)`` and the weight of ``planes``
    (:class:`lowbit.bitwise.bitserial.PackedPlanes`), as ``bits`` x planes binary GEMMs on the XNOR kernel."""
    k = "lowbit_bits_serial_gemm"
    lib = _lib()
    x = x.contiguous()
    m, kk = x.shape
    n = planes.n
    abuf = torch.empty((m, (kk + 63) // 64), dtype=torch.uint64)
    gbuf, out = torch.empty((m, n), dtype=torch.int32), torch.empty((m, n), dtype=torch.int32)
    acc = torch.empty((m, n), dtype=torch.int64)
    bufs = [x, planes.panels, planes.a, planes.vsum, planes.wsum, abuf, gbuf, acc, out]
    b = [_b(t, k, name) for t, name in zip(bufs, ("x", "panels", "a", "vsum", "wsum", "abuf", "gbuf", "acc", "out"))]
    guard.bits_serial_gemm(b[0], m, kk, lo, bits, b[1], planes.planes, b[2], planes.a0, b[3], b[4], n, isa, b[5], b[6],
                           b[7], b[8], threads)
    rc = lib.lowbit_bits_serial_gemm(x.data_ptr(), m, kk, lo, bits, planes.panels.data_ptr(), planes.planes,
                                     planes.a.data_ptr(), planes.a0, planes.vsum.data_ptr(), planes.wsum.data_ptr(), n,
                                     isa, abuf.data_ptr(), gbuf.data_ptr(), acc.data_ptr(), out.data_ptr(), threads)
    if rc:
        raise RuntimeError(f"lowbit_bits_serial_gemm failed ({rc}: -1 instruction set, -2 memory)")
    return out


def bits_unpack_i8(bits: torch.Tensor, n: int) -> torch.Tensor:
    """Packed bits (M, ceil(N / 64)) uint64 -> int8 sign codes (M, N), in one C pass."""
    k = "lowbit_bits_unpack_i8"
    lib = _lib()
    bits = bits.contiguous()
    out = torch.empty((bits.shape[0], n), dtype=torch.int8)
    guard.bits_unpack_i8(_b(bits, k, "bits"), bits.shape[0], n, _b(out, k, "out"))
    lib.lowbit_bits_unpack_i8(bits.data_ptr(), bits.shape[0], n, out.data_ptr())
    return out


def dequant_rows(acc: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``(acc + bias) * scale`` of int32 (rows, C) accumulators, the product in float64 (float64 ``scale``)."""
    k = "lowbit_dequant_rows"
    lib = _lib()
    acc = acc.contiguous()
    if acc.ndim != 2:
        raise ShapeError(f"{k}: expected (rows, C) accumulators, got shape {tuple(acc.shape)}")
    rows, c = acc.shape
    guard.dequant_rows(_b(acc, k, "acc"), rows, c, _b(bias, k, "bias"), _b(scale, k, "scale"),
                       guard.Buf(torch.float32, rows * c))
    out = torch.empty(acc.shape, dtype=torch.float32)
    lib.lowbit_dequant_rows(acc.data_ptr(), rows, c, bias.data_ptr(), scale.data_ptr(), out.data_ptr())
    return out


def ptr(t: torch.Tensor | None) -> int | None:
    """A tensor's data pointer for ctypes, or None (NULL) for no tensor."""
    return None if t is None else t.data_ptr()


def requant(acc: torch.Tensor, bias: torch.Tensor | None, m: torch.Tensor, n: torch.Tensor, zp: int, lo: int,
            hi: int, residual: torch.Tensor | None = None, res_zp: int = 0,
            m2: torch.Tensor | None = None, half: torch.Tensor | None = None) -> torch.Tensor:
    """Fused epilogue: int32 ``acc`` (rows, C) or (N, C, H, W) -> int8 of the same shape; residual likewise."""
    k = "lowbit_requant"
    lib = _lib()
    acc = acc.contiguous()
    if acc.ndim not in (2, 4):
        raise ShapeError(f"{k}: expected (rows, C) or (N, C, H, W) accumulators, got shape {tuple(acc.shape)}")
    if bias is None:
        bias = torch.zeros(acc.shape[1], dtype=torch.int32)
    nchw_in = acc.ndim == 4
    rows, C = acc.shape[:2]
    hw = acc.shape[2] * acc.shape[3] if nchw_in else 0
    res = residual.contiguous() if residual is not None else None
    if res is not None and res.shape != acc.shape:
        raise ShapeError(f"{k}: residual of shape {tuple(res.shape)} for accumulators of shape {tuple(acc.shape)}")
    half = half_of(n) if half is None else half
    guard.requant(_b(acc, k, "acc"), rows, C, hw, int(nchw_in), _b(bias, k, "bias"), _b(m, k, "m"), _b(n, k, "n"),
                  _b(half, k, "h"), _b(res, k, "residual"), res_zp, _b(m2, k, "m2"), zp, lo, hi,
                  guard.Buf(torch.int8, acc.numel()))
    guard.requant_values(k, m, n, half, m2)
    out = torch.empty(acc.shape, dtype=torch.int8)
    lib.lowbit_requant(acc.data_ptr(), rows, C, hw, int(nchw_in), ptr(bias), m.data_ptr(), n.data_ptr(),
                       half.data_ptr(), ptr(res), res_zp, ptr(m2), zp, lo, hi, out.data_ptr())
    return out


__all__ = ["build", "table", "depthwise_nhwc", "dequant_rows", "flags", "flatten_channels_last", "im2col_nhwc", "library",
           "library_path", "maxpool_nhwc", "nhwc", "ptr", "quantize_f32", "requant"]


def rnn_layer(q, lq, x: torch.Tensor, zero_point: int, bits: int = 8
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One layer of the integer LSTM / GRU in C (``lowbit_rnn_layer``), with the results of
    :func:`lowbit.nn.recurrent.run_layer`: int``bits`` codes ``x`` (T, N, I) -> (h codes (T, N, H), h_T, c_T or None)."""
    x = x.to(torch.int16 if bits == 16 else torch.int8).contiguous()
    steps, n, i = x.shape
    gates, h = lq.w_ih.shape[0] // lq.w_hh.shape[1], lq.w_hh.shape[1]
    out = torch.empty(steps, n, h, dtype=torch.int8)
    c = torch.empty(n, h, dtype=torch.int32)
    scratch = torch.empty(n * (2 * gates * h + max(i, h)), dtype=torch.int32)
    zeros = torch.empty(n * h, dtype=torch.int8)
    t = [lq.w_ih, lq.w_hh, lq.m_ih, lq.n_ih, lq.m_hh, lq.n_hh, lq.b_ih, lq.b_hh, q.sigmoid, q.tanh]
    t = [v.contiguous() for v in t]
    b = guard.buf
    k = "lowbit_rnn_layer"
    guard.rnn_layer(b(x, k, "x"), bits, steps, n, i, h, gates, zero_point, *(b(v, k) for v in t), b(out, k, "out"),
                    b(c, k, "c"), b(scratch, k, "scratch"), b(zeros, k, "zeros"))
    _lib().lowbit_rnn_layer(x.data_ptr(), bits, steps, n, i, h, gates, zero_point, *(v.data_ptr() for v in t),
                            out.data_ptr(), c.data_ptr(), scratch.data_ptr(), zeros.data_ptr())
    return out, out[-1], (c if gates == 4 else None)

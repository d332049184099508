"""BitSplit-Net's threshold epilogue and packed im2col on the bitwise engine (``csrc/bitsplit.c``, XNOR library).

A layer's integer sums ``g`` (N, H, W, O) int32, channels-last, optionally 2x2 max-pooled, become per channel the
count ``c`` of thresholds met, ``value = inv ? T - c : c``, and bits 0 .. nb-1 of ``value``
(:mod:`lowbit.functional.bitsplit` derives why this is the bitwise activation function of a folded BatchNorm):

* :func:`threshold_signs`: as int8 signs (+1 for a set bit), (nb, N, H', W', O), the classifier's input;
* :func:`threshold_bits`: packed channels-last, bit ``o % 64`` of word ``o // 64`` of each pixel,
  (nb, N, H', W', ceil(O / 64)) uint64, bits past O clear: the next binary layer's input, whose 3x3 rows
  :func:`im2col_words` copies word by word (taps (kh, kw), each tap's ceil(O / 64) words; zero words outside the
  image, every channel then the bit 0, the sign -1).

The ``*_reference`` functions are the same in PyTorch (the oracles, and the path without a C compiler).
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError, ShapeError


def _check(g: object, thr: object, inv: object, nb: object, pool: object) -> None:
    fn = "threshold_signs"
    if not isinstance(g, torch.Tensor) or g.dtype != torch.int32 or g.ndim != 4 or g.device.type != "cpu":
        got = f"{g.dtype} {tuple(g.shape)} on {g.device}" if isinstance(g, torch.Tensor) else type(g).__name__
        raise ShapeError(f"{fn}: g must be int32 sums (N, H, W, O) on the CPU, got {got}")
    o = g.shape[3]
    if not isinstance(thr, torch.Tensor) or thr.dtype != torch.int32 or thr.ndim != 2 or thr.shape[0] != o \
            or thr.device.type != "cpu":
        got = f"{thr.dtype} {tuple(thr.shape)}" if isinstance(thr, torch.Tensor) else type(thr).__name__
        raise ShapeError(f"{fn}: thr must be int32 ({o}, T) on the CPU, one row per channel, got {got}")
    if not isinstance(inv, torch.Tensor) or inv.dtype != torch.bool or tuple(inv.shape) != (o,):
        got = f"{inv.dtype} {tuple(inv.shape)}" if isinstance(inv, torch.Tensor) else type(inv).__name__
        raise ShapeError(f"{fn}: inv must be bool ({o},), got {got}")
    if isinstance(nb, bool) or not isinstance(nb, int) or not 1 <= nb <= 8:
        raise ConfigError(f"{fn}: nb = {nb!r}; expected the number of bits to write, 1..8")
    if not isinstance(pool, bool):
        raise ConfigError(f"{fn}: pool = {pool!r}; expected True (2x2 max pool first) or False")
    if pool and (g.shape[1] < 2 or g.shape[2] < 2):
        raise ShapeError(f"{fn}: a 2x2 pool of {g.shape[1]}x{g.shape[2]} sums has no output")


def threshold_signs_reference(g: torch.Tensor, thr: torch.Tensor, inv: torch.Tensor, nb: int,
                              pool: bool) -> torch.Tensor:
    """The PyTorch form of :func:`threshold_signs` (same arguments, same int8 result)."""
    _check(g, thr, inv, nb, pool)
    v = g.to(torch.int64)
    if pool:
        n, h, w, o = v.shape
        v = v[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, o).amax(dim=(2, 4))
    c = (v.unsqueeze(-1) >= thr.to(torch.int64)).sum(dim=-1)  # (N, H', W', O)
    value = torch.where(inv, thr.shape[1] - c, c)
    out = torch.stack([(value >> b) & 1 for b in range(nb)])
    return (2 * out - 1).to(torch.int8)


def threshold_signs(g: torch.Tensor, thr: torch.Tensor, inv: torch.Tensor, nb: int, pool: bool) -> torch.Tensor:
    """int8 signs (nb, N, H', W', O) of bits 0 .. nb-1 of ``value`` (module docstring) for int32 sums ``g``
    (N, H, W, O), thresholds ``thr`` (O, T) int32 and ``inv`` (O,) bool; ``pool``: 2x2 max pool first."""
    return _threshold(g, thr, inv, nb, pool, packed=False)


def threshold_bits_reference(g: torch.Tensor, thr: torch.Tensor, inv: torch.Tensor, nb: int,
                             pool: bool) -> torch.Tensor:
    """The PyTorch form of :func:`threshold_bits`: :func:`threshold_signs_reference` packed along O."""
    from lowbit.bitwise.pack import pack_bits

    return pack_bits(threshold_signs_reference(g, thr, inv, nb, pool) > 0)


def threshold_bits(g: torch.Tensor, thr: torch.Tensor, inv: torch.Tensor, nb: int, pool: bool) -> torch.Tensor:
    """Packed bits (nb, N, H', W', ceil(O / 64)) uint64 of bits 0 .. nb-1 of ``value`` (module docstring); the
    arguments as for :func:`threshold_signs`."""
    return _threshold(g, thr, inv, nb, pool, packed=True)


def _threshold(g: torch.Tensor, thr: torch.Tensor, inv: torch.Tensor, nb: int, pool: bool,
               packed: bool) -> torch.Tensor:
    """The C epilogue (``lowbit_bitsplit_threshold[_bits]``), or its PyTorch form where the library is missing."""
    from lowbit.bitwise.kernels import library

    _check(g, thr, inv, nb, pool)
    lib = library()
    if lib is None:
        return (threshold_bits_reference if packed else threshold_signs_reference)(g, thr, inv, nb, pool)
    n, h, w, o = g.shape
    ho, wo = (h // 2, w // 2) if pool else (h, w)
    g, thr_t, inv = g.contiguous(), thr.t().contiguous(), inv.contiguous()  # the kernel reads thr as (T, O)
    if packed:
        out, fn, name = (torch.empty((nb, n, ho, wo, (o + 63) // 64), dtype=torch.uint64),
                         lib.lowbit_bitsplit_threshold_bits, "threshold_bits")
    else:
        out, fn, name = (torch.empty((nb, n, ho, wo, o), dtype=torch.int8), lib.lowbit_bitsplit_threshold,
                         "threshold_signs")
    if fn(g.data_ptr(), n, h, w, o, int(pool), thr_t.data_ptr(), thr.shape[1], inv.view(torch.uint8).data_ptr(),
          nb, out.data_ptr()):
        raise MemoryError(f"{name}: no memory for two buffers of {o} int32")
    return out


def _check_words(x: object) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint64 or x.ndim != 4 or x.device.type != "cpu" \
            or min(x.shape) < 1:
        got = f"{x.dtype} {tuple(x.shape)} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"im2col_words: x must be packed pixels (N, H, W, WP) uint64 on the CPU, got {got}")


def im2col_words_reference(x: torch.Tensor) -> torch.Tensor:
    """The PyTorch form of :func:`im2col_words`."""
    _check_words(x)
    n, h, w, wp = x.shape
    padded = torch.zeros((n, h + 2, w + 2, wp), dtype=torch.int64)
    padded[:, 1:h + 1, 1:w + 1] = x.view(torch.int64)
    taps = [padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]  # (kh, kw) order
    return torch.stack(taps, dim=3).reshape(n * h * w, 9 * wp).view(torch.uint64)


def im2col_words(x: torch.Tensor) -> torch.Tensor:
    """The rows (N H W, 9 WP) uint64 of a 3x3, padding-1 binary convolution of packed pixels ``x`` (N, H, W, WP):
    tap (i, j) of row (n, y, x) holds pixel (y + i - 1, x + j - 1)'s words, zeros outside the image."""
    from lowbit.bitwise.kernels import library

    _check_words(x)
    lib = library()
    if lib is None:
        return im2col_words_reference(x)
    n, h, w, wp = x.shape
    x = x.contiguous()
    out = torch.empty((n * h * w, 9 * wp), dtype=torch.uint64)
    lib.lowbit_bitsplit_im2col(x.data_ptr(), n, h, w, wp, out.data_ptr())
    return out


__all__ = ["im2col_words", "im2col_words_reference", "threshold_bits", "threshold_bits_reference", "threshold_signs",
           "threshold_signs_reference"]

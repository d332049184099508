"""BitSplit-Net's threshold epilogue on the bitwise engine (``csrc/bitsplit.c``, in the XNOR library).

A layer's integer sums ``g`` (N, H, W, O) int32, channels-last, optionally 2x2 max-pooled, become per channel the
count ``c`` of thresholds met, ``value = inv ? T - c : c``, and the signs (+1 for a set bit) of bits 0 .. nb-1 of
``value`` (:mod:`lowbit.functional.bitsplit` derives why this is the bitwise activation function of a folded
BatchNorm). The signs, int8 (nb, N, H', W', O), are what :func:`lowbit.native.cext.bits_im2col` packs for the
next binary layer. :func:`threshold_signs_reference` is the same in PyTorch (the oracle, and the path without a
C compiler).
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
    from lowbit.bitwise.kernels import library

    _check(g, thr, inv, nb, pool)
    lib = library()
    if lib is None:
        return threshold_signs_reference(g, thr, inv, nb, pool)
    n, h, w, o = g.shape
    ho, wo = (h // 2, w // 2) if pool else (h, w)
    g, thr_t, inv = g.contiguous(), thr.t().contiguous(), inv.contiguous()  # the kernel reads thr as (T, O)
    out = torch.empty((nb, n, ho, wo, o), dtype=torch.int8)
    if lib.lowbit_bitsplit_threshold(g.data_ptr(), n, h, w, o, int(pool), thr_t.data_ptr(), thr.shape[1],
                                     inv.view(torch.uint8).data_ptr(), nb, out.data_ptr()):
        raise MemoryError(f"threshold_signs: no memory for two buffers of {o} int32")
    return out


__all__ = ["threshold_signs", "threshold_signs_reference"]

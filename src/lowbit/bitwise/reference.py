"""Pure-PyTorch reference of the bitwise engine: binary GEMM, threshold epilogue, binary conv2d, ternary-weight
GEMM on two bit-planes (:func:`ternary_gemm_reference`).

**XNOR-popcount** (Courbariaux, Hubara et al., "Binarized Neural Networks", 2016; Rastegari et al.,
"XNOR-Net", ECCV 2016). For a, b in {-1, +1}^K stored as bits (1 = +1, 0 = -1, :mod:`lowbit.bitwise.pack`),
a product a_k b_k is +1 where the bits agree and -1 where they differ, so with
``d = popcount(a XOR b)`` disagreeing positions

    a . b = (K - d) - d = K - 2 popcount(a XOR b) = 2 popcount(XNOR(a, b)) - K.

The padding bits past K are 0 in both operands: their XOR is 0 and the true K enters the formula.
The result lies in [-K, K] and is returned as int32 (K < 2^31).

**Threshold epilogue** (BatchNorm folded into the sign of the next layer's input). A binary layer followed
by BatchNorm (and any per-channel affine map) and ``sign`` gives, per output channel n, the bit
``scale_n acc + shift_n >= 0`` of an integer accumulator ``acc`` in [-K, K]. That predicate is monotone
in ``acc``: non-decreasing when ``scale_n > 0``, non-increasing when ``scale_n < 0``. So it equals

    bit[m, n] = (acc[m, n] >= thr[n]) XOR flip[n]

with an int32 threshold and a flip flag (:func:`threshold_from_affine`); the bits are packed along n
(:func:`pack_bits`), ready to be the next binary layer's operand, with no int32 tensor in between.

**Binary conv2d** as im2col + binary GEMM: patches of the input, padded with **-1** (a binary value, so
the padded taps still run in XNOR-popcount; XNOR-Net and larq's "one-padding" do the same up to the sign
convention), against the weight rows ``w.reshape(O, C kh kw)``. The alternative, zero padding, is not
binary: it equals this result plus ``sum over the padded taps of w`` at each border position, a correction
per (position, output channel) that an engine would add after the GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.bitwise.pack import pack_bits, pack_signs, words
from lowbit.errors import DataError, ShapeError

_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)  # popcount of a byte
_CHUNK = 1 << 22  # bytes of XOR per step of the reference GEMM (bounds its memory)


def popcount_xor(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``popcount(a[m] XOR b[n])`` (M, N) int64 of packed words a (M, W), b (N, W), by a byte lookup table."""
    ab, bb = a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)  # (M, 8 W), (N, 8 W)
    out = torch.empty((a.shape[0], b.shape[0]), dtype=torch.int64)
    step = max(1, _CHUNK // max(1, b.shape[0] * bb.shape[1]))
    for m0 in range(0, a.shape[0], step):
        x = ab[m0:m0 + step, None, :] ^ bb[None, :, :]  # (rows, N, 8 W) uint8
        out[m0:m0 + step] = _POPCOUNT8[x.long()].sum(dim=-1)
    return out


def binary_gemm_reference(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """int32 (M, N) ``out[m, n] = sum_k a[m, k] b[n, k] = K - 2 popcount(a[m] XOR b[n])`` of +-1 rows packed
    in uint64 words: a (M, ceil(K / 64)), b (N, ceil(K / 64)) (:func:`lowbit.bitwise.pack.pack_signs`)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint64 or t.ndim != 2:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ShapeError(f"binary_gemm_reference: {name} must be packed uint64 words (rows, W), got {got}")
        if t.shape[1] != words(k):
            raise ShapeError(f"binary_gemm_reference: {name} has {t.shape[1]} words per row; K = {k} needs {words(k)}")
    return (k - 2 * popcount_xor(a, b)).to(torch.int32)


def popcount_pairs(rows: tuple[torch.Tensor, ...], cols: tuple[torch.Tensor, ...], op) -> torch.Tensor:
    """``popcount(op(*rows[m], *cols[n]))`` (M, N) int64 for packed planes: each of ``rows`` (M, W) and ``cols``
    (N, W) uint64; ``op`` combines the uint8 views (bitwise ops act byte by byte). By a byte lookup table."""
    rb = [r.contiguous().view(torch.uint8) for r in rows]
    cb = [c.contiguous().view(torch.uint8) for c in cols]
    m, n, nbytes = rb[0].shape[0], cb[0].shape[0], cb[0].shape[1]
    out = torch.empty((m, n), dtype=torch.int64)
    step = max(1, _CHUNK // max(1, n * nbytes))
    for m0 in range(0, m, step):
        x = op(*(r[m0:m0 + step, None, :] for r in rb), *(c[None, :, :] for c in cb))  # (rows, N, 8 W) uint8
        out[m0:m0 + step] = _POPCOUNT8[x.long()].sum(dim=-1)
    return out


def ternary_gemm_reference(a: torch.Tensor | tuple[torch.Tensor, torch.Tensor], w_sign: torch.Tensor,
                           w_mask: torch.Tensor, k: int) -> torch.Tensor:
    """int32 (M, N) ``out[m, n] = sum_k x[m, k] w[n, k]`` of ternary weights w in {-1, 0, +1} stored as two
    bit-planes, and binary or ternary activations x, every plane packed in uint64 words (rows, ceil(K / 64)).

    **Weights.** ``w_sign`` s (bit 1 for +1) and ``w_mask`` m (bit 1 for a non-zero) (N, W); a zero weight's sign
    bit does not matter. Per position ``w_k = m_k (2 s_k - 1)``.

    **Binary activations** x in {-1, +1}, ``a`` = the bits b (M, W) (1 for +1, :func:`lowbit.bitwise.pack_signs`).
    Where m_k = 0 the product is 0; where m_k = 1 it is +1 if s_k = b_k and -1 if they differ, so with
    ``d = popcount(m AND (s XOR b))`` the non-zero positions that disagree,

        sum_k w_k x_k = (popcount(m) - d) - d = popcount(m) - 2 popcount(m AND (s XOR b)).

    ``popcount(m)`` depends on the weight only: the kernel makes it once per column. The XNOR GEMM
    (:func:`binary_gemm_reference`) is the case m = all ones, popcount(m) = K.

    **Ternary activations** x in {-1, 0, +1}, ``a`` = the pair (t, q) of sign and mask planes (M, W). A product is
    non-zero where both masks are 1, and then +1 or -1 as the signs agree or not:

        sum_k w_k x_k = popcount(m AND q) - 2 popcount(m AND q AND (s XOR t)).

    (The compiled kernel, ``csrc/ternary.c``, evaluates the same sum another way: x = (b1 + b2) / 2 with the
    binary planes b1 = t OR NOT q and b2 = t AND q, which are both 1 for +1, both 0 for -1 and 1, 0 for 0, so
    ``sum = popcount(m) - popcount(m AND (s XOR b1)) - popcount(m AND (s XOR b2))``: two binary-activation
    terms, one accumulator.)

    Padding bits past K: the weight's mask is cleared there (here and in the kernel's packing), so the padding of
    every other plane is multiplied by 0 and need not be clear. The result lies in [-K, K].
    """
    ternary = isinstance(a, (tuple, list))
    planes = [("w_sign", w_sign), ("w_mask", w_mask)]
    if ternary:
        if len(a) != 2:
            raise ShapeError(f"ternary_gemm_reference: ternary activations are a pair (sign, mask), got {len(a)} "
                             "tensors")
        planes += [("a sign", a[0]), ("a mask", a[1])]
    else:
        planes += [("a", a)]
    for name, t in planes:
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint64 or t.ndim != 2:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ShapeError(f"ternary_gemm_reference: {name} must be packed uint64 words (rows, W), got {got}")
        if t.shape[1] != words(k):
            raise ShapeError(f"ternary_gemm_reference: {name} has {t.shape[1]} words per row; K = {k} needs "
                             f"{words(k)}")
    if w_sign.shape[0] != w_mask.shape[0] or (ternary and a[0].shape[0] != a[1].shape[0]):
        raise ShapeError("ternary_gemm_reference: the sign and mask planes of an operand must have the same rows")
    m = w_mask.clone()
    if k % 64:  # the mask's padding bits off: they would count in popcount(m)
        last = m[:, -1].view(torch.int64)
        m[:, -1] = (last & ((1 << (k % 64)) - 1)).view(torch.uint64)
    if not ternary:
        pcm = _POPCOUNT8[m.view(torch.uint8).long()].sum(dim=-1)  # (N,)
        d = popcount_pairs((a,), (w_sign, m), lambda b, s, mm: mm & (s ^ b))
        return (pcm[None, :] - 2 * d).to(torch.int32)
    both = popcount_pairs((a[1],), (m,), lambda q, mm: mm & q)
    d = popcount_pairs((a[0], a[1]), (w_sign, m), lambda t, q, s, mm: mm & q & (s ^ t))
    return (both - 2 * d).to(torch.int32)


def threshold_reference(acc: torch.Tensor, thr: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Packed bits (M, ceil(N / 64)) of ``(acc[m, n] >= thr[n]) XOR flip[n]`` for int32 acc (M, N)."""
    bits = (acc.to(torch.int64) >= thr.to(torch.int64)) ^ flip.to(torch.bool)
    return pack_bits(bits)


def binary_linear_reference(a: torch.Tensor, b: torch.Tensor, k: int, thr: torch.Tensor | None = None,
                            flip: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`binary_gemm_reference`, followed by :func:`threshold_reference` when ``thr`` is given."""
    acc = binary_gemm_reference(a, b, k)
    if thr is None:
        return acc
    return threshold_reference(acc, thr, torch.zeros_like(thr, dtype=torch.bool) if flip is None else flip)


def threshold_from_affine(scale: torch.Tensor, shift: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 thresholds and bool flips (N,) such that, for every integer ``acc`` in [-k, k],

        (acc >= thr[n]) XOR flip[n]  ==  (scale[n] * acc + shift[n] >= 0)

    with the right side evaluated in the dtype of ``scale`` and ``shift`` (float32 for a float32 simulation:
    the result then matches it bit for bit, rounding included). A folded BatchNorm
    ``gamma (alpha acc - mu) / sqrt(var + eps) + beta`` has ``scale = gamma alpha / sqrt(var + eps)`` and
    ``shift = beta - gamma mu / sqrt(var + eps)``.

    ``scale > 0``: the bit is ``acc >= t`` with t the least acc where the predicate holds (flip False);
    ``scale < 0``: the bit is ``NOT (acc >= t)`` with t the least acc where it fails (flip True);
    ``scale = 0``: a constant, ``thr = -k`` with flip = ``shift < 0``. A threshold of k + 1 means "never".
    The threshold is found by bisection on the predicate itself (about log2(2 k) evaluations), not from
    ``-shift / scale``, so the rounding of a division cannot move it.
    """
    if not (isinstance(scale, torch.Tensor) and isinstance(shift, torch.Tensor)) or scale.shape != shift.shape \
            or scale.ndim != 1 or not scale.is_floating_point():
        raise ShapeError("threshold_from_affine: scale and shift must be float tensors of one shape (N,)")
    if not (bool(torch.isfinite(scale).all()) and bool(torch.isfinite(shift).all())):
        raise DataError("threshold_from_affine: scale or shift holds NaN or inf; check the BatchNorm statistics")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < 2**31 - 1:
        raise ShapeError(f"threshold_from_affine: k = {k!r}; expected the GEMM's K, an integer in 1..2^31-2")
    shift = shift.to(scale.dtype)
    flip = scale < 0

    def g(t: torch.Tensor) -> torch.Tensor:  # the bit the kernel must produce at acc = t, in the given dtype
        return ((scale * t.to(scale.dtype) + shift) >= 0) ^ flip

    flip = torch.where(scale == 0, shift < 0, flip)  # g is then constant True
    # g is monotone non-decreasing in acc: the least acc in [-k, k] where it holds (k + 1 if none), by bisection
    lo = torch.full(scale.shape, -k, dtype=torch.int64)
    hi = torch.full(scale.shape, k + 1, dtype=torch.int64)
    while bool((lo < hi).any()):
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        ok = g(mid) & (lo < hi)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok | (lo >= hi), lo, mid + 1)
    return hi.to(torch.int32), flip


def binary_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """int32 (N, O, Ho, Wo) convolution of ``sign(x)`` (N, C, H, W) with ``sign(weight)`` (O, C, kh, kw),
    the input padded with -1 (see the module docstring), as im2col + :func:`binary_gemm_reference`."""
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ShapeError(f"binary_conv2d_reference: input {tuple(x.shape)} (N, C, H, W) and weight "
                         f"{tuple(weight.shape)} (O, C, kh, kw) must agree on C")
    n, _, h, w = x.shape
    o, c, kh, kw = weight.shape
    st, pd, dl = (_pair(v) for v in (stride, padding, dilation))
    signs = torch.where(x >= 0, 1.0, -1.0)
    signs = F.pad(signs, (pd[1], pd[1], pd[0], pd[0]), value=-1.0)
    cols = F.unfold(signs, (kh, kw), dilation=dl, stride=st)  # (N, C kh kw, L), rows in (c, i, j) order
    ho = (h + 2 * pd[0] - dl[0] * (kh - 1) - 1) // st[0] + 1
    wo = (w + 2 * pd[1] - dl[1] * (kw - 1) - 1) // st[1] + 1
    k = c * kh * kw
    a = pack_signs(cols.transpose(1, 2).reshape(n * ho * wo, k))
    b = pack_signs(weight.reshape(o, k))
    out = binary_gemm_reference(a, b, k)  # (N Ho Wo, O)
    return out.reshape(n, ho, wo, o).permute(0, 3, 1, 2).contiguous()


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


__all__ = ["binary_conv2d_reference", "binary_gemm_reference", "binary_linear_reference", "popcount_pairs",
           "popcount_xor", "ternary_gemm_reference", "threshold_from_affine", "threshold_reference"]

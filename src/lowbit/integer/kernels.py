"""Integer kernels: int8 x int8 -> int32 GEMM and convolution, requantization to int8.

The GEMM is PyTorch's own ``torch._int_mm`` (VNNI ``vpdpbusd`` on AVX-512
CPUs). A convolution with ``groups == 1`` is an NHWC im2col (C kernel, or a
strided view and one copy) followed by that GEMM, with the output channels last;
depthwise convolutions run in a C kernel, other groupings as an exact float64
conv of the integer values. Activations are
stored as int8: an unsigned code ``q`` is stored as ``q - 128`` so that it fits
the signed GEMM, and the zero point is folded into the bias:

    sum_k (x_k - z) w_k = sum_k x_k w_k - z sum_k w_k
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.native import cext
from lowbit.functional.requant import requantize


def int_mm(a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """int32 ``a @ weight.T`` for int8 ``a`` (M, K), ``weight`` (N, K): ``torch._int_mm``.

    ``torch._int_mm`` on CPU returns garbage for K == 1 with N > 1 (torch 2.13);
    that case is an outer product in int32.
    """
    if a.shape[1] == 1:
        return a.to(torch.int32) * weight.to(torch.int32).t()
    return torch._int_mm(a.contiguous(), weight.t())


def linear_acc(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """int32 (rows, O) ``x @ weight.T`` for int8 ``x`` (..., K) and ``weight`` (O, K)."""
    return int_mm(x.reshape(-1, x.shape[-1]), weight)


def pairs(v, ndim: int = 2) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution along one dimension."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride, padding, dilation, pad_value: int,
           use_c: bool = True) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(N*Ho*Wo, kh*kw*C) patches of ``x`` (N, C, H, W), ordered to match ``weight.permute(0, 2, 3, 1)``.

    Works on the channels-last (NHWC) layout, where a patch row is kh*kw runs of
    C contiguous bytes; the conv outputs of the integer model are channels-last.
    """
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, pairs(stride), pairs(dilation), pairs(padding)
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    if use_c and cext.library() is not None and (kh, kw, sh, sw, ph, pw) != (1, 1, 1, 1, 0, 0):
        return cext.im2col_nhwc(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), pad_value, (ho, wo)), (n, ho, wo)
    xh = x.permute(0, 2, 3, 1)
    if ph or pw:
        buf = torch.full((n, h + 2 * ph, w + 2 * pw, c), pad_value, dtype=x.dtype)
        buf[:, ph:ph + h, pw:pw + w, :] = xh
        xh, h, w = buf, h + 2 * ph, w + 2 * pw
    if (kh, kw, sh, sw) == (1, 1, 1, 1):
        return xh.reshape(n * h * w, c), (n, ho, wo)
    s = xh.stride()
    patches = xh.as_strided((n, ho, wo, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]))
    return patches.reshape(n * ho * wo, kh * kw * c), (n, ho, wo)


def max_pool2d(x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """Max pooling as an elementwise maximum of kh*kw strided views (any layout, any integer dtype)."""
    (kh, kw), (sh, sw), (ph, pw) = pairs(kernel), pairs(stride), pairs(padding)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=torch.iinfo(x.dtype).min)
    h, w = x.shape[2:]
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            v = x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            out = v.clone() if out is None else torch.maximum(out, v, out=out)
    return out


def conv2d_acc(x: torch.Tensor, weight_mat: torch.Tensor, kernel: tuple[int, int], stride, padding, dilation,
               pad_value: int, use_c: bool = True) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """int32 accumulators (N*Ho*Wo, O) of a dense conv, bias not added; ``weight_mat`` is (O, kh*kw*C) int8."""
    cols, shape = im2col(x, kernel, stride, padding, dilation, pad_value, use_c)
    return int_mm(cols, weight_mat), shape


def depthwise_acc(x: torch.Tensor, weight_hwc: torch.Tensor, stride, padding, dilation,
                  zero_point: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """int32 (N*Ho*Wo, C) depthwise conv (C kernel, channels last) on zero-point-centred inputs, no bias."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = weight_hwc.shape[:2], pairs(stride), pairs(padding), pairs(dilation)
    n, _, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    return cext.depthwise_nhwc(x, weight_hwc, (sh, sw), (ph, pw), (dh, dw), zero_point, (ho, wo)), (n, ho, wo)


def grouped_conv2d_acc(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int,
                       zero_point: int) -> torch.Tensor:
    """int32 accumulators (N, O, Ho, Wo) of a grouped conv on zero-point-centred inputs, no bias.

    The fallback for groupings without a C kernel: a float64 conv of integer values (exact below
    2^53; PyTorch has no integer grouped/dilated conv on CPU), rounded back to int32.
    """
    xc = x.to(torch.float64) - zero_point
    acc = F.conv2d(xc, weight.to(torch.float64), None, stride, padding, dilation, groups)
    return acc.round().to(torch.int32)


def requant_int8(acc: torch.Tensor, m: torch.Tensor, n: torch.Tensor, zero_point: int, lo: int, hi: int,
                 residual: torch.Tensor | None = None, m2: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`lowbit.functional.requant.requantize` to int8 (stored-domain zero point and bounds)."""
    return requantize(acc, m, n, zero_point, lo, hi, residual, m2).to(torch.int8)

"""Integer kernels: int8 x int8 -> int32 GEMM and convolution, requantization to int8.

The GEMM is PyTorch's own ``torch._int_mm`` (VNNI ``vpdpbusd`` on AVX-512
CPUs). A convolution with ``groups == 1`` is an im2col (a strided view, one
copy) followed by that GEMM, with the output channels last; grouped and
depthwise convolutions accumulate in int32 with ``F.conv2d``. Activations are
stored as int8: an unsigned code ``q`` is stored as ``q - 128`` so that it fits
the signed GEMM, and the zero point is folded into the bias:

    sum_k (x_k - z) w_k = sum_k x_k w_k - z sum_k w_k
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.integer.arith import requantize


def linear_acc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """int32 ``x @ weight.T + bias`` for int8 ``x`` (..., K) and ``weight`` (O, K)."""
    lead = x.shape[:-1]
    acc = torch._int_mm(x.reshape(-1, x.shape[-1]), weight.t())
    return acc.add_(bias).reshape(*lead, weight.shape[0])


def _pairs(v, ndim: int = 2) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride, padding, dilation,
           pad_value: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(N*Ho*Wo, kh*kw*C) patches of NCHW ``x``, ordered to match ``weight.permute(0, 2, 3, 1)``."""
    ph, pw = _pairs(padding)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=pad_value)
    (kh, kw), (sh, sw), (dh, dw) = kernel, _pairs(stride), _pairs(dilation)
    n, c, h, w = x.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    xs = x.stride()
    patches = x.as_strided((n, ho, wo, kh, kw, c), (xs[0], xs[2] * sh, xs[3] * sw, xs[2] * dh, xs[3] * dw, xs[1]))
    return patches.reshape(n * ho * wo, kh * kw * c), (n, ho, wo)


def conv2d_acc(x: torch.Tensor, weight_mat: torch.Tensor, kernel: tuple[int, int], bias: torch.Tensor,
               stride, padding, dilation, pad_value: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """int32 accumulators (N*Ho*Wo, O) of a dense conv; ``weight_mat`` is (O, kh*kw*C) int8."""
    cols, shape = im2col(x, kernel, stride, padding, dilation, pad_value)
    return torch._int_mm(cols, weight_mat.t()).add_(bias), shape


def grouped_conv2d_acc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride, padding, dilation,
                       groups: int, zero_point: int) -> torch.Tensor:
    """int32 accumulators (N, O, Ho, Wo) of a grouped/depthwise conv on zero-point-centred inputs."""
    xc = x.to(torch.int32) - zero_point
    acc = F.conv2d(xc, weight.to(torch.int32), None, stride, padding, dilation, groups)
    return acc.add_(bias.reshape(1, -1, 1, 1))


def requant_int8(acc: torch.Tensor, m: torch.Tensor, n: torch.Tensor, zero_point: int, lo: int, hi: int,
                 residual: torch.Tensor | None = None, m2: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`lowbit.integer.arith.requantize` to int8 (stored-domain zero point and bounds)."""
    return requantize(acc, m, n, zero_point, lo, hi, residual, m2).to(torch.int8)

"""GPTQ weight rounding for a converted PTQ model (``PTQConfig(rounding="gptq")``).

For each unified layer the calibration data gives the second moment ``H = E[x x^T]`` and the
mean ``mu = E[x]`` of the layer's input patches (float activations, every quantizer off, as
bias correction measures them). :func:`lowbit.functional.gptq.gptq_codes` then rounds the
weights on the layer's frozen grid so that the output error ``(W - W_q) H (W - W_q)^T`` is
small, and the remaining mean shift ``(W_q - W) mu`` is taken out of the bias (bias correction,
Nagel et al. 2019). The layer's ``weight`` becomes ``W_q`` itself: the frozen scales and the
integer lowering read exactly these codes back.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import ConfigError, DataError
from lowbit.functional.gptq import gptq_codes
from lowbit.granularity import PerChannel, PerTensor
from lowbit.nn.unified import UnifiedConv, UnifiedLinear, _Unified, unified_modules


def _im2col(m: UnifiedConv, x: torch.Tensor) -> torch.Tensor:
    """``F.unfold`` of the layer's input with its own kernel, stride, padding and dilation: ``(N, C*k, L)``
    (a Conv1d as a 2-d convolution of height 1)."""
    if m.ndim == 1:
        x = x.unsqueeze(2)
        kernel, dil, pad, stride = (1, *m.weight.shape[2:]), (1, *m.dilation), (0, *m.padding), (1, *m.stride)
    else:
        kernel, dil, pad, stride = m.weight.shape[2:], m.dilation, m.padding, m.stride
    if isinstance(pad, str):
        raise ConfigError(f"GPTQ rounding needs numeric conv padding, got padding={pad!r}")
    return F.unfold(x, tuple(kernel), dilation=dil, padding=pad, stride=stride)


def input_patches(m: _Unified, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies its weight with: ``(G, K, L)`` (G groups, K = inputs per output)."""
    if isinstance(m, UnifiedLinear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    p = _im2col(m, x)
    n, ck, length = p.shape
    return p.reshape(n, m.groups, ck // m.groups, length).permute(1, 2, 0, 3).reshape(m.groups, ck // m.groups, -1)


class _Moments:
    """Running ``sum x x^T``, ``sum x`` and count of a layer's input patches (float64 totals)."""

    def __init__(self) -> None:
        self.h: torch.Tensor | None = None
        self.s: torch.Tensor | None = None
        self.n = 0

    def add(self, h: torch.Tensor, s: torch.Tensor, n: int) -> None:
        h, s = h.double(), s.double()  # float32 products, float64 running totals
        self.h = h if self.h is None else self.h + h
        self.s = s if self.s is None else self.s + s
        self.n += n


def patch_moments(m: _Unified, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(sum p p^T (G, K, K), sum p (G, K), count)`` over the layer's input patches ``p``.

    A pointwise convolution (1x1, stride 1) needs no im2col; a depthwise one multiplies its
    ``k x k`` patches channel by channel without copying them into one matrix.
    """
    if isinstance(m, UnifiedConv) and m.ndim == 2 and m.groups == 1 and tuple(m.weight.shape[2:]) == (1, 1) \
            and tuple(m.stride) == (1, 1) and tuple(m.padding) == (0, 0):
        f = x.flatten(2)  # (N, C, HW)
        return torch.bmm(f, f.transpose(1, 2)).sum(0, keepdim=True), f.sum((0, 2))[None], f.shape[0] * f.shape[2]
    if isinstance(m, UnifiedConv) and m.ndim == 2 and m.groups == x.shape[1] and m.groups > 1:
        p = _im2col(m, x)
        p = p.reshape(x.shape[0], x.shape[1], -1, p.shape[2])  # (N, C, k*k, L): a view, no copy
        return torch.matmul(p, p.transpose(-1, -2)).sum(0), p.sum((0, 3)), p.shape[0] * p.shape[3]
    p = input_patches(m, x)
    return torch.bmm(p, p.transpose(1, 2)), p.sum(2), p.shape[2]


def _eligible(m: _Unified) -> bool:
    q = m.weight_quant
    return (q is not None and q.mode == "quantize" and isinstance(m, (UnifiedConv, UnifiedLinear))
            and isinstance(q.spec.granularity, (PerChannel, PerTensor))
            and (q.scale.numel() == 1 or q.spec.axis == 0))


@torch.no_grad()
def gptq_round(model: nn.Module, data: Iterable, damp: float = 0.01) -> list[str]:
    """Re-round every eligible layer's weights by GPTQ and correct its bias; returns the layers done.

    Call after :func:`lowbit.ptq.convert` (the weight grids must be frozen). ``data``: the
    calibration batches, read as :func:`lowbit.calibration.call_inputs` reads them (tensors, ``(x, y)``
    pairs of a one-input model, tuples of positional inputs, dicts of keyword inputs).
    """
    from lowbit.calibration import run_float_inputs

    layers = [(n, m) for n, m in unified_modules(model) if _eligible(m)]
    if not layers:
        raise ConfigError("gptq_round needs a converted model with per-channel or per-tensor integer weights")
    stats = {n: _Moments() for n, _ in layers}

    count = run_float_inputs(model, layers, data,
                             lambda name, m, x: stats[name].add(*patch_moments(m, x.detach().float())))
    if count == 0:
        raise DataError("no calibration batches for GPTQ rounding")
    for name, m in layers:
        _round_layer(m, stats[name], damp)
    return [n for n, _ in layers]


def _round_layer(m: _Unified, st: _Moments, damp: float) -> None:
    q = m.weight_quant
    w = m.weight.detach()
    groups = getattr(m, "groups", 1)
    out = w.shape[0]
    wg = w.reshape(groups, out // groups, -1)
    scale = q.scale.reshape(-1).float()
    zp = q.zero_point.reshape(-1).float()
    shape = (groups, out // groups, 1) if scale.numel() > 1 else (1, 1, 1)
    s, z = scale.reshape(shape), zp.reshape(shape)
    codes = gptq_codes(wg, st.h / st.n, s, z, q.spec.format.qmin, q.spec.format.qmax, damp)
    new = (s * (codes - z)).to(w.dtype)
    mu = (st.s / st.n).to(w.dtype)  # (G, K)
    shift = torch.einsum("grk,gk->gr", new - wg, mu).reshape(out)
    m.weight.data.copy_(new.reshape(w.shape))
    if m.bias is None:
        m.bias = nn.Parameter(torch.zeros(out, dtype=w.dtype))
    m.bias.data -= shift


__all__ = ["gptq_round", "input_patches", "patch_moments"]

"""The converted model's exact arithmetic: what the integer model computes, emulated on float tensors.

After :func:`lowbit.ptq.convert`, every unified module knows the quantization
parameters of its input (and residual). Its forward then computes

    acc = conv(q_x - z_x, q_w) + q_b          (float convs on integers, exact: see exact_accumulator)
    q_y = requantize(acc, m, n, ...)          (int64: the integer model's own function)
    y   = (q_y - z_y) s_y                     (float32: the fake-quant value downstream ops see)

A layer whose output is binary (``sign``, BNN) has no requantization: its bias is put on the accumulator
grid rounded *down*, ``q_b = floor(b / (s_x s_w))``, and its output is ``+1`` where ``acc + q_b >= 0``,
else ``-1``; since ``s_x s_w > 0`` and ``acc`` is an integer this is exactly ``sign(s_x s_w acc + b)``
(the BatchNorm folded into ``b`` and ``s_w`` becomes each channel's threshold ``-q_b``).

So the simulation and :mod:`lowbit.integer` agree bit for bit, and the accuracy
measured on the simulation is the deployed model's. The bias is quantized on the
accumulator grid ``s_x s_w`` and clipped to int32, exactly as deployed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.formats import Binary
from lowbit.functional.requant import dequantize_acc, dequantize_codes, fixed_point, requantize
from lowbit.nn.qparams import ChannelQParams, QParams, offset

# The bias is clipped to +-2^30 (not the int32 limits): a bias that large saturates its channel for
# every input (|x w| sums stay far below 2^30), and the integer model's zero-point-folded bias
# ``b - z_x sum(w)`` then still fits int32 without wrapping.
BIAS_LIMIT = (-(2**30), 2**30)


@dataclass(frozen=True)
class LayerParams:
    """Everything the integer model needs for one unified layer (per output channel where 1-D)."""

    weight: torch.Tensor  # int32 codes, symmetric (zero point 0): integer, ternary or power-of-two
    bias: torch.Tensor  # int64 on the accumulator grid s_x * s_w
    acc_scale: torch.Tensor  # float64, s_x * s_w per channel
    input: QParams
    residual: QParams | None
    output: QParams | ChannelQParams | None  # None: the accumulator is dequantized (network output); one grid per
    # feature for a linear layer only LayerNorms read (lowbit.graph.norm_inputs: zero points per output channel)
    m: torch.Tensor | None = None
    n: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    lo: int = 0
    hi: int = 0

    @property
    def binarized(self) -> bool:
        """The output is ``sign`` (+-1): ``acc + bias >= 0``, no multiplier."""
        return self.output is not None and isinstance(self.output.fmt, Binary)


def _act_bounds(act: torch.nn.Module, out: QParams) -> tuple[int, int]:
    lo, hi = out.fmt.qmin, out.fmt.qmax
    if isinstance(act, torch.nn.ReLU):
        return max(lo, out.zero_point), hi
    if isinstance(act, torch.nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        a, b = (int(out.codes(torch.tensor([v]))) for v in (act.min_val, act.max_val))
        return max(lo, a), min(hi, b)
    if isinstance(act, torch.nn.Identity):
        return lo, hi
    raise TypeError(f"activation {type(act).__name__} cannot be folded into requantization")


def channel_output(module) -> bool:
    """A linear layer (no activation) whose output grid has one scale and zero point per output feature, of at most
    8 bits (:mod:`lowbit.graph.norm_inputs`): its requantization takes a zero point per channel."""
    from lowbit.formats import IntFormat
    from lowbit.nn.unified import UnifiedLinear

    q = getattr(module, "output_quant", None)
    return (isinstance(module, UnifiedLinear) and isinstance(module.act, torch.nn.Identity) and q is not None
            and q.scale.numel() == module.weight.shape[0] and q.scale.numel() > 1 and getattr(q.spec, "axis", None)
            == -1 and isinstance(q.spec.format, IntFormat) and q.spec.format.bits <= 8)


def output_grid(module) -> QParams | ChannelQParams | None:
    """The frozen output grid of a unified module: per tensor, or per feature (:func:`channel_output`)."""
    q = module.output_quant
    if q is None:
        return None
    if channel_output(module):
        return ChannelQParams(q.scale.detach().to(torch.float32).reshape(-1).clone(),
                              q.zero_point.detach().to(torch.int64).reshape(-1).clone(), q.spec.format)
    return module.output_qparams


def layer_params(module) -> LayerParams:
    """Integer weights, bias, multipliers and bounds of a converted unified module."""
    wq, inp = module.weight_quant, module.input_qparams
    w_scale = wq.scale.to(torch.float64).reshape(-1).expand(module.weight.shape[0])
    weight = wq.codes(module.weight.detach()).to(torch.int32)  # the spec's own codes: integer, ternary, power of two
    acc_scale = inp.scale * w_scale
    res, out = module.residual_qparams, output_grid(module)
    binarized = out is not None and isinstance(out.fmt, Binary)
    bias = torch.zeros(weight.shape[0], dtype=torch.int64)
    if module.bias is not None:
        b = module.bias.detach().to(torch.float64) / acc_scale
        b = torch.floor(b).nan_to_num(0.0) if binarized else torch.round(b)  # 0 / 0 (a dead channel): sign(0) = +1
        bias = b.clamp(*BIAS_LIMIT).to(torch.int64)
    p = LayerParams(weight, bias, acc_scale, inp, res, out)
    if out is None:
        return p
    if binarized:
        if res is not None:
            raise TypeError("a binary (sign) output after a residual add has no integer form here")
        return LayerParams(weight, bias, acc_scale, inp, res, out, lo=-1, hi=1)
    out_scale = out.scale.to(torch.float64) if isinstance(out, ChannelQParams) else out.scale
    m, n = fixed_point(acc_scale / out_scale)
    m2 = None
    if res is not None:
        m2 = torch.round(torch.ldexp(res.scale / (torch.ones_like(acc_scale) * out_scale), n)).to(torch.int64)
    lo, hi = (out.fmt.qmin, out.fmt.qmax) if isinstance(out, ChannelQParams) else _act_bounds(module.act, out)
    return LayerParams(weight, bias, acc_scale, inp, res, out, m, n, m2, lo, hi)


def _channels(t: torch.Tensor, y: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * y.ndim
    shape[axis] = -1
    return t.reshape(shape)


_EXACT_F32 = 2**24  # float32 adds integers exactly while every partial sum stays below this


def exact_accumulator(module, xc: torch.Tensor, w: torch.Tensor, small: torch.dtype = torch.int64) -> torch.Tensor:
    """int64 ``conv(xc, w)`` for integer-valued ``xc`` and integer ``w``, computed exactly but fast
    (``small``: the dtype returned when every sum is below 2^24, e.g. int32 for the C epilogue).

    If ``K max|x| max|w| < 2^24`` (K = terms per output) one float32 conv is
    exact whatever the summation order; else ``w = 16 w_hi + w_lo`` with
    ``|w_hi|, |w_lo| <= 8`` gives two exact float32 convs when ``8 K max|x| < 2^24``;
    else float64 (exact below 2^53).
    """
    k = w[0].numel()
    bx = float(xc.abs().max()) if xc.numel() else 0.0
    bw = float(w.abs().max()) if w.numel() else 0.0
    if k * bx * bw < _EXACT_F32:
        return module._compute(xc.float(), w.float(), None).round().to(small)
    if 8 * k * bx < _EXACT_F32:
        hi = torch.round(w / 16.0)
        lo = w - 16 * hi
        xf = xc.float()
        acc_hi = module._compute(xf, hi.float(), None).round().to(torch.int64)
        return 16 * acc_hi + module._compute(xf, lo.float(), None).round().to(torch.int64)
    return module._compute(xc.double(), w.double(), None).round().to(torch.int64)


def _requantize_c(p: LayerParams, acc: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor | None:
    """Output codes by the integer model's own C epilogue (same function, many times faster than int64
    PyTorch ops), or None where it does not apply: > 8-bit grids, accumulators past int32, other layouts."""
    from lowbit.native import cext

    out, res = p.output, p.residual
    if isinstance(out, ChannelQParams) or out.fmt.bits > 8 or (res is not None and res.fmt.bits > 8) or acc.ndim not in (2, 4) or acc.numel() == 0:
        return None
    if cext.library() is None or (acc.dtype != torch.int32 and float(acc.abs().max()) >= 2**31):
        return None
    off = offset(out)
    r, r_zp = None, 0
    if residual is not None:
        r_off = offset(res)
        r, r_zp = (res.codes(residual) - r_off).to(torch.int8), res.zero_point - r_off
    q = cext.requant(acc.to(torch.int32), p.bias.to(torch.int32), p.m.contiguous(), p.n.contiguous(),
                     out.zero_point - off, p.lo - off, p.hi - off, r, r_zp, p.m2)
    return q.to(torch.int32) + off


def exact_forward(module, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """Forward of a converted unified module in the integer model's arithmetic (see module docstring)."""
    p = layer_params(module)
    axis = 1 if module.weight.ndim > 2 else -1
    xc = (p.input.codes(x) - p.input.zero_point).to(torch.float32)
    acc = exact_accumulator(module, xc, p.weight.to(torch.float32), torch.int32)
    if p.binarized:
        return torch.where(acc.to(torch.int64) + _channels(p.bias, acc, axis) >= 0, 1.0, -1.0)
    if p.output is not None and (q := _requantize_c(p, acc, residual)) is not None:
        return dequantize_codes(q, p.output.zero_point, p.output.scale)
    acc = acc.to(torch.int64) + _channels(p.bias, acc, axis)
    if p.output is None:  # dequantize the accumulator: the network's float output
        y = dequantize_acc(acc, _channels(p.acc_scale, acc, axis))
        if residual is not None:
            y = y + residual
        return module.act(y)
    res = None
    if residual is not None:
        res = p.residual.codes(residual).to(torch.int64) - p.residual.zero_point
    per_feature = isinstance(p.output, ChannelQParams)
    zp = _channels(p.output.zero_point, acc, axis) if per_feature else p.output.zero_point
    q = requantize(acc, _channels(p.m, acc, axis), _channels(p.n, acc, axis), zp, p.lo, p.hi,
                   res, None if p.m2 is None else _channels(p.m2, acc, axis))
    if per_feature:
        return p.output.values(q)
    return dequantize_codes(q, p.output.zero_point, p.output.scale)


def pool_window(pool: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements averaged per output of a supported average pool (global, or no padding)."""
    if isinstance(pool, (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d)):
        size = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,)
        if any(s not in (1, None) for s in size):
            raise TypeError(f"{pool} is not a global pool; only output_size 1 has an integer form here")
        return math.prod(x.shape[2:])
    k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * (x.ndim - 2)
    pad = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,)
    if any(pad) or pool.ceil_mode or getattr(pool, "divisor_override", None):
        raise TypeError(f"{pool}: only unpadded average pools without ceil_mode have an integer form here")
    return math.prod(k)


def pool_params(module, x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(window, m, n)`` of a converted ``QAvgPool``: ``q_y = z_y + rshift_round(sum(q_x - z_x) m, n)``."""
    window = pool_window(module.pool, x)
    m, n = fixed_point(torch.tensor([module.input_qparams.scale / (window * module.output_qparams.scale)]))
    return window, m, n


def pool_exact_forward(module, x: torch.Tensor) -> torch.Tensor:
    """Average pool in integer arithmetic: window sum of centred codes, then requantize."""
    inp, out = module.input_qparams, module.output_qparams
    window, m, n = pool_params(module, x)
    xc = (inp.codes(x) - inp.zero_point).to(torch.float64)
    s = (module.pool(xc) * window).round().to(torch.int64)  # float64 mean * window: exact sum
    q = requantize(s, m, n, out.zero_point, out.fmt.qmin, out.fmt.qmax)
    return dequantize_codes(q, out.zero_point, out.scale)


__all__ = ["LayerParams", "exact_forward", "layer_params", "pool_exact_forward", "pool_params", "pool_window"]

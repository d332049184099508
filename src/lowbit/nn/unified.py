"""Unified modules (method H, Geng et al. 2019): compute, then requantize once.

``UnifiedConv`` / ``UnifiedLinear`` = conv/linear (BatchNorm folded into weight
and bias) [+ residual input] -> activation -> one output quantizer:

    y = Q_out( act( W_q * x + b [+ r] ) )

With ``grad_bits`` set (:class:`lowbit.qat.QATConfig`), the gradient w.r.t. ``W_q * x + b``, the one
the GEMM's backward turns into the weight and input gradients, is quantized to ``grad_bits`` bits
(:func:`lowbit.functional.grad_quant.quantize_grad`); the forward pass is unchanged.

where ``x`` and ``r`` are already quantized tensors (outputs of other unified
modules or of an input quantizer) and ``W_q`` is the fake-quantized weight. A
framework that quantizes after every primitive op would requantize after the
conv, the BatchNorm, the add and the activation: four quantization operations
where this module has one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.functional.grad_quant import grad_quantized
from lowbit.nn.exact import channel_output, exact_forward, pool_exact_forward
from lowbit.nn.qparams import QParams
from lowbit.nn.quantizers import ActQuantizer, WeightQuantizer
from lowbit.spec import QuantSpec


class _Unified(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, act: nn.Module,
                 has_residual: bool, w_spec: QuantSpec | None, out_spec: QuantSpec | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.act = act
        self.has_residual = has_residual
        self.weight_quant = WeightQuantizer(w_spec) if w_spec is not None else None
        self.output_quant = ActQuantizer(out_spec) if out_spec is not None else None
        # a BatchNorm kept unfolded for QAT (QATConfig.bn_freeze_steps); lowbit.qat.fold_trained_bn folds it
        self.bn: nn.Module | None = None
        # set by lowbit.ptq.convert: the grids of the inputs; with them the forward is exact integer arithmetic
        self.input_qparams: QParams | None = None
        self.residual_qparams: QParams | None = None
        # set by lowbit.qat.prepare_qat (QATConfig.grad_bits): the gradient w.r.t. the GEMM's output is quantized
        # to grad_bits bits (QNN, Hubara et al. 2018), its stochastic rounding drawn from grad_generator
        self.grad_bits: int | None = None
        self.grad_generator: torch.Generator | None = None

    @property
    def output_qparams(self) -> QParams | None:
        return self.output_quant.qparams() if self.output_quant is not None else None

    @property
    def exact(self) -> bool:
        """True when the forward runs the integer model's arithmetic (converted, quantizers on, eval)."""
        return (self.input_qparams is not None and not self.training and self.bn is None
                and (self.residual_qparams is not None or not self.has_residual)
                and self.weight_quant is not None and self.weight_quant.mode == "quantize"
                and (self.output_quant is None or (self.output_quant.mode == "quantize"
                                                   and (self.output_quant.scale.numel() == 1
                                                        or channel_output(self)))))

    @property
    def quantized(self) -> bool:
        """True when the output is requantized (on a grid); False for a layer kept in float
        by a rule, and for the network's last layer, whose accumulator is dequantized."""
        return self.output_quant is not None

    def _compute(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def mean_patch(self, x: torch.Tensor) -> torch.Tensor:
        """``(G, K)``: the mean, over samples and output positions, of the input rows each group's weight
        multiplies (``K`` inputs per output, in the weight's flattening order)."""
        return x.reshape(-1, x.shape[-1]).mean(dim=0, dtype=torch.float64).unsqueeze(0)

    def weight_error_shift(self, x: torch.Tensor) -> torch.Tensor:
        """Mean output shift per channel caused by weight quantization: ``mean(conv(x, Q(W) - W))``,
        computed as ``(Q(W) - W) mean_patch(x)`` (the conv is linear in its input), in float64."""
        return self.mean_shift(self.mean_patch(x))

    def mean_shift(self, mean: torch.Tensor) -> torch.Tensor:
        """The weight error ``Q(W) - W`` applied to per-group mean input rows ``(G, K)`` (:meth:`mean_patch`):
        the shift of each output channel's mean, in float64, returned as float32."""
        eps = (self.weight_quant.fake(self.weight) - self.weight).detach().double()
        g = mean.shape[0]
        return torch.einsum("gok,gk->go", eps.reshape(g, eps.shape[0] // g, -1), mean).reshape(-1).float()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.exact:
            return exact_forward(self, x, residual)
        w = self.weight_quant(self.weight) if self.weight_quant is not None else self.weight
        y = self._compute(x, w, self.bias)
        if self.grad_bits is not None and y.requires_grad:
            y = grad_quantized(y, self.grad_bits, self.grad_generator)
        if self.bn is not None:
            y = self.bn(y)
        if residual is not None:
            y = y + residual
        y = self.act(y)
        return self.output_quant(y) if self.output_quant is not None else y


def _numeric_padding(padding: str, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...] | str:
    """PyTorch's ``"valid"`` (0) and ``"same"`` (``d (k - 1) / 2`` each side, stride 1) as numbers; an asymmetric
    ``"same"`` (an even ``d (k - 1)``: PyTorch pads one more on the right) stays a string."""
    if padding == "valid":
        return (0,) * len(kernel)
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return tuple(t // 2 for t in total) if all(t % 2 == 0 for t in total) else padding


class UnifiedConv(_Unified):
    """Conv1d/Conv2d + folded BN [+ residual] + activation, requantized once."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, act: nn.Module, has_residual: bool,
                 w_spec: QuantSpec | None, out_spec: QuantSpec | None) -> None:
        super().__init__(conv.weight, conv.bias, act, has_residual, w_spec, out_spec)
        self.ndim = conv.weight.ndim - 2
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        if isinstance(self.padding, str):  # "valid" / "same" as numbers where they are symmetric
            self.padding = _numeric_padding(self.padding, tuple(conv.weight.shape[2:]), tuple(conv.dilation))
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported; use zero padding")
        # the value the input is padded with: 0, or -1 for a binary input (lowbit.graph.fx_passes.mark_binary_inputs)
        self.pad_value = 0.0

    def _compute(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        conv = F.conv2d if self.ndim == 2 else F.conv1d
        if self.pad_value != 0.0 and not isinstance(self.padding, str) and any(self.padding):
            pad = [p for p in reversed(self.padding) for _ in (0, 1)]  # (left, right, top, bottom)
            return conv(F.pad(x, pad, value=self.pad_value), w, bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def mean_patch(self, x: torch.Tensor) -> torch.Tensor:
        """``(G, K)`` mean input patch: for each tap, the mean of the (zero-padded) input over the positions
        that tap visits; ``K = C/G * taps`` in the weight's ``(C/G, kh, kw)`` order."""
        if isinstance(self.padding, str):  # "same"/"valid": no closed form here; take it from the conv itself
            return self._mean_patch_by_conv(x)
        kernel, stride, dil, pad = tuple(self.weight.shape[2:]), self.stride, self.dilation, tuple(self.padding)
        if self.ndim == 1:  # as a 2-d conv of height 1
            x, kernel, stride, dil, pad = x.unsqueeze(2), (1, *kernel), (1, *stride), (1, *dil), (0, *pad)
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, stride, dil, pad
        xs = F.pad(x.sum(dim=0, dtype=torch.float64), (pw, pw, ph, ph))  # (C, Hp, Wp): the batch summed once
        ho = (xs.shape[1] - dh * (kh - 1) - 1) // sh + 1
        wo = (xs.shape[2] - dw * (kw - 1) - 1) // sw + 1
        rows = [xs[:, i * dh:i * dh + sh * (ho - 1) + 1:sh].sum(dim=1) for i in range(kh)]  # (C, Wp) per kernel row
        taps = [r[:, j * dw:j * dw + sw * (wo - 1) + 1:sw].sum(dim=1) for r in rows for j in range(kw)]
        c = x.shape[1]
        return (torch.stack(taps, dim=1) / (x.shape[0] * ho * wo)).reshape(self.groups, (c // self.groups) * kh * kw)

    def _mean_patch_by_conv(self, x: torch.Tensor) -> torch.Tensor:
        k = self.weight[0].numel()
        eye = torch.eye(k, dtype=x.dtype).reshape(k, *self.weight.shape[1:]).repeat(self.groups, 1, *[1] * self.ndim)
        conv = F.conv2d if self.ndim == 2 else F.conv1d
        y = conv(x, eye, None, self.stride, self.padding, self.dilation, self.groups)
        return y.transpose(0, 1).reshape(self.groups, k, -1).mean(dim=2, dtype=torch.float64)

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        return f"{i * self.groups}->{o}, kernel={tuple(self.weight.shape[2:])}, stride={self.stride}, groups={self.groups}, residual={self.has_residual}"


class UnifiedLinear(_Unified):
    """Linear + folded BN [+ residual] + activation, requantized once."""

    def __init__(self, linear: nn.Linear, act: nn.Module, has_residual: bool,
                 w_spec: QuantSpec | None, out_spec: QuantSpec | None) -> None:
        super().__init__(linear.weight, linear.bias, act, has_residual, w_spec, out_spec)

    def _compute(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}->{self.weight.shape[0]}, residual={self.has_residual}"


class QAvgPool(nn.Module):
    """Average pooling followed by a requantization (an average of grid values is off the grid)."""

    def __init__(self, pool: nn.Module, out_spec: QuantSpec) -> None:
        super().__init__()
        self.pool = pool
        self.output_quant = ActQuantizer(out_spec)
        self.input_qparams: QParams | None = None  # set by lowbit.ptq.convert

    @property
    def output_qparams(self) -> QParams:
        return self.output_quant.qparams()

    @property
    def exact(self) -> bool:
        return self.input_qparams is not None and self.output_quant.mode == "quantize" and not self.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return pool_exact_forward(self, x)
        return self.output_quant(self.pool(x))


def unified_modules(model: nn.Module) -> list[tuple[str, _Unified]]:
    """``(name, module)`` of every unified module, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Unified)]

"""The integer model's operations. Each is built from JSON attributes and named tensors, and runs on int8.

Stored activations are int8 codes; an op's ``zero_point``, ``lo`` and ``hi``
are in that stored domain (an unsigned code ``q`` is stored as ``q - 128``).
Only :class:`Quantize` (network input) and :class:`Dequantize` / a dequantizing
:class:`Linear`/:class:`Conv2d` (network output) touch floats.
"""

from __future__ import annotations

from typing import Any

import math

import torch
import torch.nn.functional as F

from lowbit.integer import kernels
from lowbit.integer.arith import dequantize_acc

Attrs = dict[str, Any]
Tensors = dict[str, torch.Tensor]


class Op:
    """Base: ``attrs`` (JSON-able) and ``tensors`` are what is saved; ``__call__`` runs it."""

    kind = ""

    def __init__(self, attrs: Attrs, tensors: Tensors | None = None) -> None:
        self.attrs, self.tensors = attrs, tensors or {}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Quantize(Op):
    """float -> int8: ``clamp(round(x * (1/s)) + z, lo, hi)`` (PyTorch's fake-quant arithmetic)."""

    kind = "quantize"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attrs
        inv = torch.reciprocal(torch.tensor(a["scale"], dtype=torch.float32))
        return (torch.round(x * inv) + a["zero_point"]).clamp_(a["lo"], a["hi"]).to(torch.int8)


class Dequantize(Op):
    """int8 -> float: ``(q - z) * s`` in float32."""

    kind = "dequantize"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attrs
        return (x.to(torch.float32) - a["zero_point"]) * torch.tensor(a["scale"], dtype=torch.float32)


class _Layer(Op):
    """Shared by Linear and Conv2d: the zero-point-folded bias and the output stage."""

    def __init__(self, attrs: Attrs, tensors: Tensors | None = None) -> None:
        super().__init__(attrs, tensors)
        t = self.tensors
        w = t["weight"].to(torch.int32)
        rowsum = w.reshape(w.shape[0], -1).sum(dim=1)
        self.bias_folded = (t["bias"].to(torch.int64) - attrs["input_zero_point"] * rowsum).to(torch.int32)
        self.dequant = "acc_scale" in t

    def _finish(self, acc: torch.Tensor, residual: torch.Tensor | None, chan) -> torch.Tensor:
        """``acc`` has channels along a dim ``chan`` reshapes the per-channel tensors for."""
        a, t = self.attrs, self.tensors
        if self.dequant:
            y = dequantize_acc(acc, chan(t["acc_scale"]))
            if residual is not None:
                y = y + residual
            act = a.get("act", "none")
            if act == "relu":
                y = torch.relu(y)
            elif act == "hardtanh":
                y = y.clamp(a["act_lo"], a["act_hi"])
            return y
        res = None
        if residual is not None:
            res = residual.to(torch.int64) - a["residual_zero_point"]
        m2 = chan(t["m2"]) if "m2" in t else None
        return kernels.requant_int8(acc, chan(t["m"]), chan(t["n"]), a["zero_point"], a["lo"], a["hi"], res, m2)


class Linear(_Layer):
    """int8 GEMM (``torch._int_mm``), int32 bias, requantization (or dequantization at the output)."""

    kind = "linear"

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        acc = kernels.linear_acc(x, self.tensors["weight"], self.bias_folded)
        return self._finish(acc, residual, lambda v: v)


class Conv2d(_Layer):
    """Dense conv as im2col + int8 GEMM (channels last), grouped/depthwise as an int32 conv."""

    kind = "conv2d"

    def __init__(self, attrs: Attrs, tensors: Tensors | None = None) -> None:
        super().__init__(attrs, tensors)
        w = self.tensors["weight"]
        self.kernel = tuple(w.shape[2:])
        self.weight_mat = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        a, o = self.attrs, self.tensors["weight"].shape[0]
        conv = (a["stride"], a["padding"], a["dilation"])
        if a["groups"] == 1:
            acc, (n, ho, wo) = kernels.conv2d_acc(x, self.weight_mat, self.kernel, self.bias_folded, *conv,
                                                  a["input_zero_point"])
            if residual is not None:
                residual = residual.permute(0, 2, 3, 1).reshape(-1, o)
            y = self._finish(acc, residual, lambda v: v)
            return y.reshape(n, ho, wo, o).permute(0, 3, 1, 2)
        acc = kernels.grouped_conv2d_acc(x, self.tensors["weight"], self.tensors["bias"].to(torch.int32), *conv,
                                         a["groups"], a["input_zero_point"])
        return self._finish(acc, residual, lambda v: v.reshape(1, -1, 1, 1))


class MaxPool2d(Op):
    """Max pooling; on channels-last int8 (where PyTorch's kernel refuses) as a window view + amax."""

    kind = "maxpool2d"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attrs
        simple = a["dilation"] == [1, 1] and not a["ceil_mode"]
        if x.is_contiguous() or not simple:
            return F.max_pool2d(x.contiguous(), a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                                a["ceil_mode"])
        (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], a["stride"], a["padding"]
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=torch.iinfo(x.dtype).min if not x.is_floating_point() else -math.inf)
        return x.unfold(2, kh, sh).unfold(3, kw, sw).amax(dim=(-1, -2))


class AvgPool2d(Op):
    """Window sum of centred codes in int32, then requantization: global (``kernel_size`` None) or unpadded."""

    kind = "avgpool2d"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, t = self.attrs, self.tensors
        k = a["kernel_size"]
        if k is None:
            s = x.sum(dim=(2, 3), keepdim=True, dtype=torch.int32)
        else:
            st = a["stride"]
            s = x.unfold(2, k[0], st[0]).unfold(3, k[1], st[1]).sum(dim=(-1, -2), dtype=torch.int32)
        s = s - a["window"] * a["input_zero_point"]
        return kernels.requant_int8(s, t["m"], t["n"], a["zero_point"], a["lo"], a["hi"])


class Flatten(Op):
    kind = "flatten"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.attrs["start_dim"], self.attrs["end_dim"])


class Pad(Op):
    """Constant padding with the zero point (the code of 0.0), or 0.0 on a float tensor."""

    kind = "pad"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.attrs["pad"], value=self.attrs["value"] if x.dtype == torch.int8 else 0.0)


OPS: dict[str, type[Op]] = {cls.kind: cls for cls in (Quantize, Dequantize, Linear, Conv2d, MaxPool2d, AvgPool2d,
                                                     Flatten, Pad)}


def tensor_bytes(op: Op) -> int:
    return sum(t.numel() * t.element_size() for t in op.tensors.values())


__all__ = ["OPS", "Op", "tensor_bytes"]

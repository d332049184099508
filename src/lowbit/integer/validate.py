"""Complete validation of an integer model's graph: every op's attributes and tensors, alone, against each
other and against the tensors that flow into it, before any kernel sees them.

A model file is untrusted input. :func:`lowbit.integer.io.load_integer` runs :func:`check_model` on the nodes it
read (before it builds a single op), :func:`lowbit.integer.to_integer` on what it lowered; a model
whose input shape is not recorded (a file of format version 1 or 2) runs :func:`propagate` on the shape of
each input it is called on. A model of several inputs passes the list of their names and one :class:`Spec` per
input wherever a single-input model passes its input's name and spec. One pair of functions per op kind, in :data:`CHECKS`:

* ``attrs(a, t, n_inputs)`` checks the attributes ``a`` (types, ranges, the attributes a kind has) and the
  tensors ``t`` (names, dtypes, shapes, value ranges) of one node against each other;
* ``shape(a, t, inputs)`` takes the per-sample :class:`Spec` (shape without the batch dimension, dtype) of
  each input, checks them against the node (a conv's input channels against its weight, a residual against
  the output, ...) and returns the output's.

The ranges are those the kernels and the integer arithmetic rely on (:mod:`lowbit.native.guard`,
:mod:`lowbit.functional.requant`): int8 zero points and bounds, shifts ``0..62``, multipliers below ``2^31``
(``2^53`` for residual ones), weight codes within ``weight_bits``, and for each output channel ``j``
``256 sum_k |w_jk| + |b_j| < 2^31`` (every int32 the GEMM forms, the flip's correction included, is exact). Every
tensor and every kernel workspace holds at most :data:`MAX_SAMPLE` elements per sample, so no attribute
can ask for an absurd allocation. A failure raises :class:`Invalid` naming the node index, its kind, the
attribute and what is allowed; the callers turn it into a CheckpointError, ConfigError or ShapeError.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch

from lowbit.integer import ir
from lowbit.functional.fixed_rnn import W_MAX, max_input16_features, max_input_delta
from lowbit.native.guard import INT8, INT16, MAX_M, MAX_M2, MAX_SHIFT, out_size

MAX_SAMPLE = 1 << 28  # elements of any tensor or kernel workspace, per sample
MAX_GEOM = 1 << 16  # kernel sizes, strides, paddings, dilations
MAX_WINDOW = (1 << 23) - 1  # an average pool's window: 255 * window < 2^31 (int32 window sums)
ACC_LIMIT = (1 << 31) - 1  # 256 sum |w_j| + |b_j| must stay below this (int32 accumulators)
SCALE_RANGE = (1e-30, 1e30)  # quantization scales (float32 numbers whose reciprocals are too)
MAX_ACC_SCALE = 1e28  # |acc| < 2^32 times this stays a finite float32
INPUT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16}


class Invalid(ValueError):
    """A node (or the graph) breaks a rule; ``str()`` names the node, its kind, the attribute and the range."""


@dataclass(frozen=True)
class Spec:
    """A tensor between ops, per sample: its shape without the batch dimension, and its dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class KindCheck:
    attrs: Callable[[dict, dict, int], None]
    shape: Callable[[dict, dict, list[Spec]], Spec]
    inputs: tuple[int, int]  # fewest and most inputs


@dataclass(frozen=True)
class NodeView:
    """What the checks read of a node, whether it is a loaded node's raw fields or a built op's."""

    kind: str
    attrs: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    inputs: list[str]
    output: str
    grid: Any = None


# ---------------------------------------------------------------- attribute helpers


def _is_int(v: object) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _int(a: dict, name: str, lo: int, hi: int) -> int:
    if name not in a:
        raise Invalid(f"attribute {name!r} is missing; allowed: an integer in {lo}..{hi}")
    v = a[name]
    if not _is_int(v) or not lo <= v <= hi:
        raise Invalid(f"attribute {name!r} = {v!r:.80}; allowed: an integer in {lo}..{hi}")
    return int(v)


def _real(a: dict, name: str, positive: bool = False) -> float:
    v = a.get(name)
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and (not positive or v > 0)
    if not ok:
        raise Invalid(f"attribute {name!r} = {v!r:.80}; allowed: a finite number{' > 0' if positive else ''}")
    return float(v)


def _scale(a: dict, name: str) -> float:
    """A quantization scale: finite in float32 both ways, ``1e-30 .. 1e30`` (so that ``x / s`` and ``(q - z) s``
    of any int8 code or float32 input are float32 numbers or saturate, never NaN)."""
    v = a.get(name)
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and SCALE_RANGE[0] <= v <= SCALE_RANGE[1]
    if not ok:
        raise Invalid(f"attribute {name!r} = {v!r:.80}; allowed: a finite number > 0 in "
                      f"{SCALE_RANGE[0]:g}..{SCALE_RANGE[1]:g}")
    return float(v)


def _pair(a: dict, name: str, lo: int, hi: int) -> tuple[int, int]:
    v = a.get(name)
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_int(x) and lo <= x <= hi for x in v):
        raise Invalid(f"attribute {name!r} = {v!r:.80}; allowed: a list of 2 integers in {lo}..{hi}")
    return int(v[0]), int(v[1])


def _bool(a: dict, name: str) -> bool:
    v = a.get(name)
    if not isinstance(v, bool):
        raise Invalid(f"attribute {name!r} = {v!r:.80}; allowed: true or false")
    return v


def _bounds(a: dict, prefix: str = "", codes: tuple[int, int] = INT8) -> None:
    """A zero point and clamping bounds ``lo <= hi`` in the range ``codes`` (int8 unless told)."""
    _int(a, prefix + "zero_point", *codes)
    lo, hi = _int(a, "lo", *codes), _int(a, "hi", *codes)
    if lo > hi:
        raise Invalid(f"attributes 'lo' = {lo} > 'hi' = {hi}; allowed: lo <= hi")


def _known(a: dict, allowed: set[str]) -> None:
    if not isinstance(a, dict):
        raise Invalid(f"attributes are a {type(a).__name__}; allowed: a JSON object")
    extra = sorted(set(a) - allowed)
    if extra:
        raise Invalid(f"unknown attributes {extra}; allowed: {sorted(allowed)}")


def _absent(a: dict, names: Sequence[str], why: str) -> None:
    present = [n for n in names if n in a]
    if present:
        raise Invalid(f"attributes {present} are not allowed {why}")


def _tensor_names(t: dict, required: set[str], optional: set[str] = frozenset()) -> None:
    missing, extra = sorted(required - set(t)), sorted(set(t) - required - optional)
    if missing:
        raise Invalid(f"tensors {missing} are missing")
    if extra:
        raise Invalid(f"unknown tensors {extra}; allowed: {sorted(required | optional)}")


def _tensor(t: dict, name: str, dtype: torch.dtype, shape: tuple[int, ...] | None = None,
            ndim: int | None = None) -> torch.Tensor:
    v = t[name]
    if not isinstance(v, torch.Tensor) or v.dtype != dtype or v.layout != torch.strided or v.device.type != "cpu":
        got = f"{v.dtype} on {v.device}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise Invalid(f"tensor {name!r} is {got}; allowed: a {dtype} CPU tensor")
    if shape is not None and tuple(v.shape) != shape:
        raise Invalid(f"tensor {name!r} has shape {tuple(v.shape)}; allowed: {shape}")
    if ndim is not None and v.ndim != ndim:
        raise Invalid(f"tensor {name!r} has shape {tuple(v.shape)}; allowed: {ndim} dimensions")
    if v.numel() > MAX_SAMPLE:
        raise Invalid(f"tensor {name!r} has {v.numel()} elements; allowed: at most {MAX_SAMPLE}")
    return v


def _values(t: dict, name: str, lo: float, hi: float) -> None:
    v = t[name]
    if v.numel() == 0:
        return
    if v.is_floating_point():
        if not bool(torch.isfinite(v).all()) or float(v.min()) < lo or float(v.max()) > hi:
            raise Invalid(f"tensor {name!r} holds values outside {lo}..{hi} (or non-finite ones)")
        return
    vmin, vmax = int(v.min()), int(v.max())
    if vmin < lo or vmax > hi:
        raise Invalid(f"tensor {name!r} holds values in {vmin}..{vmax}; allowed: {lo}..{hi}")


def weight_range(bits: int) -> tuple[int, int]:
    """The codes a ``bits``-bit signed weight may take: ``-2^(b-1)..2^(b-1)-1``; binary weights (1 bit) are +-1
    (and 0)."""
    return (-1, 1) if bits == 1 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def _size(what: str, numel: int) -> None:
    if numel > MAX_SAMPLE:
        raise Invalid(f"{what} would hold {numel} elements per sample; allowed: at most {MAX_SAMPLE}")


def _expect(ins: Sequence[Spec], i: int, dtypes: tuple[torch.dtype, ...], ndim: int | None = None,
            what: str = "input") -> Spec:
    s = ins[i]
    if s.dtype not in dtypes or (ndim is not None and len(s.shape) != ndim):
        want = " or ".join(str(d) for d in dtypes) + ("" if ndim is None else f" with {ndim} dimensions per sample")
        raise Invalid(f"{what} is {s.dtype} of per-sample shape {s.shape}; expected {want}")
    return s


# ---------------------------------------------------------------- quantize / dequantize


def _code_bits(a: dict, name: str) -> int:
    """The optional width attribute ``name`` of int codes: 8 (absent) or 16."""
    v = a.get(name, 8)
    if not _is_int(v) or v not in ir.QUANTIZE_BITS:
        raise Invalid(f"attribute {name!r} = {v!r:.40}; allowed: {', '.join(map(str, ir.QUANTIZE_BITS))}")
    return int(v)


def _quantize_attrs(a: dict, t: dict, n_in: int) -> None:
    """float -> int8 (or int16 with ``bits`` 16): a positive scale whose float32 reciprocal is finite, a zero point
    and bounds in the codes' range."""
    _known(a, {"scale", "zero_point", "lo", "hi", "bits"})
    _tensor_names(t, set())
    _scale(a, "scale")
    _bounds(a, codes=INT16 if _code_bits(a, "bits") == 16 else INT8)


def _quantize_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x = _expect(ins, 0, tuple(INPUT_DTYPES.values()))
    return Spec(x.shape, torch.int16 if a.get("bits", 8) == 16 else torch.int8)


def _dequantize_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"scale", "zero_point"})
    _tensor_names(t, set())
    _scale(a, "scale")
    _int(a, "zero_point", *INT8)


def _dequantize_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    return Spec(_expect(ins, 0, (torch.int8,)).shape, torch.float32)


# ---------------------------------------------------------------- linear / conv2d


_LAYER_ATTRS = {"input_zero_point", "weight_bits", "weight_codes", "zero_point", "lo", "hi", "residual_zero_point", "act",
                "act_lo", "act_hi", "residual_scale", "binarized", "input_bits", "input_signed"}


def _output_stage(a: dict, t: dict, o: int, n_in: int) -> None:
    """Requantizing (``m``, ``n``, int8 bounds; ``m2`` and the residual's zero point for a second input) or
    dequantizing (``acc_scale``, a float activation; the residual's scale and zero point), or binarized
    (``binarized: true``: signs from ``acc + bias >= 0``, no other tensor, no residual)."""
    if "binarized" in a:
        if a["binarized"] is not True:
            raise Invalid(f"attribute 'binarized' = {a['binarized']!r:.40}; allowed: true (or absent)")
        _tensor_names(t, {"weight", "bias"})
        _absent(a, ("zero_point", "lo", "hi", "act", "act_lo", "act_hi", "residual_scale", "residual_zero_point"),
                "on a binarized layer (its output is a sign)")
        if n_in != 1:
            raise Invalid("a binarized layer takes one input (no residual)")
        return
    if "acc_scale" in t:
        _tensor_names(t, {"weight", "bias", "acc_scale"})
        s = _tensor(t, "acc_scale", torch.float64, (o,))
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()) or float(s.max()) > MAX_ACC_SCALE:
            raise Invalid(f"tensor 'acc_scale' holds values outside (0, {MAX_ACC_SCALE:g}] (or non-finite ones)")
        _absent(a, ("zero_point", "lo", "hi"), "on a dequantizing layer (one with 'acc_scale')")
        act = a.get("act", "none")
        if act not in ("none", "relu", "hardtanh"):
            raise Invalid(f"attribute 'act' = {act!r:.80}; allowed: 'none', 'relu', 'hardtanh'")
        if act == "hardtanh":
            if _real(a, "act_lo") > _real(a, "act_hi"):
                raise Invalid("attributes 'act_lo' > 'act_hi'; allowed: act_lo <= act_hi")
        else:
            _absent(a, ("act_lo", "act_hi"), f"with act {act!r}")
        if n_in == 2:
            _scale(a, "residual_scale")
            _int(a, "residual_zero_point", *INT8)
        else:
            _absent(a, ("residual_scale", "residual_zero_point"), "without a residual input")
        return
    _tensor_names(t, {"weight", "bias", "m", "n"}, ({"m2"} if n_in == 2 else set()) | {"zp"})
    _tensor(t, "m", torch.int64, (o,))
    _tensor(t, "n", torch.int64, (o,))
    _values(t, "m", 0, MAX_M)
    _values(t, "n", 0, MAX_SHIFT)
    _bounds(a)
    if "zp" in t:  # a zero point per output channel (an integer LayerNorm's per-feature input grid)
        _tensor(t, "zp", torch.int32, (o,))
        _values(t, "zp", *INT8)
        if a.get("zero_point") != 0:
            raise Invalid(f"attribute 'zero_point' = {a.get('zero_point')!r:.40} beside tensor 'zp'; allowed: 0")
    _absent(a, ("act", "act_lo", "act_hi", "residual_scale"), "on a requantizing layer (the activation is in "
                                                              "'lo'/'hi')")
    if n_in == 2:
        if "m2" not in t:
            raise Invalid("tensor 'm2' is missing; a requantizing layer with a residual input needs it")
        _tensor(t, "m2", torch.int64, (o,))
        _values(t, "m2", 0, MAX_M2)
        _int(a, "residual_zero_point", *INT8)
    else:
        _absent(a, ("residual_zero_point",), "without a residual input")


def _weights(a: dict, t: dict, ndim: int) -> torch.Tensor:
    """The int8 weight (codes within ``weight_bits``), the int32 bias, the accumulator bound per channel."""
    w = _tensor(t, "weight", torch.int8, ndim=ndim)
    if w.numel() == 0:
        raise Invalid(f"tensor 'weight' has shape {tuple(w.shape)}; allowed: no zero dimension")
    o = w.shape[0]
    b = _tensor(t, "bias", torch.int32, (o,))
    bits = _int(a, "weight_bits", 1, 8)
    _weight_codes(a, w, bits)
    _int(a, "input_zero_point", *INT8)
    if "input_bits" in a:
        _int(a, "input_bits", 1, 8)
    if "input_signed" in a:
        _bool(a, "input_signed")
    worst = 256 * w.reshape(o, -1).to(torch.int64).abs().sum(dim=1) + b.to(torch.int64).abs()
    if bool((worst > ACC_LIMIT).any()):
        j = int(worst.argmax())
        raise Invalid(f"output channel {j}: 256 sum|weight| + |bias| = {int(worst[j])}; allowed: at most "
                      f"{ACC_LIMIT} (the int32 accumulator must be exact)")
    return w


def _weight_codes(a: dict, w: torch.Tensor, bits: int) -> None:
    """Integer codes within ``weight_bits``; ternary ones in {-1, 0, 1}; ``b``-bit power-of-two ones in
    ``{0, +-2^k}``, ``0 <= k < 2^(b-1) - 1`` (and within int8: ``b <= 4``)."""
    codes = a.get("weight_codes", "int")
    if codes == "int":
        _values({"weight": w}, "weight", *weight_range(bits))
    elif codes == "ternary":
        if bits != 2 or bool((w.abs() > 1).any()):
            raise Invalid("ternary 'weight' (weight_codes 'ternary') must have weight_bits 2 and codes in {-1, 0, 1}")
    elif codes == "binary":
        if bits != 1 or bool((w.abs() != 1).any()):
            raise Invalid("binary 'weight' (weight_codes 'binary') must have weight_bits 1 and codes in {-1, +1}")
    elif codes == "pow2":
        if not 2 <= bits <= 4:
            raise Invalid(f"attribute 'weight_bits' = {bits} with weight_codes 'pow2'; allowed: 2..4 (int8 codes)")
        mag = w.to(torch.int64).abs()
        top = 2 ** (2 ** (bits - 1) - 2)
        power = (mag & (mag - 1)) == 0
        if bool((mag > top).any()) or not bool(power.all()):
            raise Invalid(f"power-of-two 'weight' must hold 0 or +-2^k codes up to {top} ({bits} bits)")
    else:
        raise Invalid(f"attribute 'weight_codes' = {codes!r:.40}; allowed: 'int', 'ternary', 'pow2', 'binary'")


def _linear_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, _LAYER_ATTRS)
    _tensor_names(t, {"weight", "bias"}, {"acc_scale", "m", "n", "m2", "zp"})
    w = _weights(a, t, 2)
    _output_stage(a, t, w.shape[0], n_in)


def _residual(a: dict, t: dict, ins: list[Spec], out: Spec) -> None:
    if len(ins) == 2:
        r = _expect(ins, 1, (torch.int8,), what="the residual input")
        if r.shape != out.shape:
            raise Invalid(f"the residual input has per-sample shape {r.shape}; expected the output's {out.shape}")


def _out_dtype(t: dict) -> torch.dtype:
    return torch.float32 if "acc_scale" in t else torch.int8


def _linear_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x = _expect(ins, 0, (torch.int8,))
    o, k = t["weight"].shape
    if len(x.shape) < 1 or x.shape[-1] != k:
        raise Invalid(f"the weight takes {k} input features, but the input has per-sample shape {x.shape}")
    out = Spec((*x.shape[:-1], o), _out_dtype(t))
    _size("the output", math.prod(out.shape))
    _residual(a, t, ins, out)
    return out


def _conv2d_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, _LAYER_ATTRS | {"stride", "padding", "dilation", "groups", "pad_value"})
    if "pad_value" in a:
        _int(a, "pad_value", *INT8)
    _tensor_names(t, {"weight", "bias"}, {"acc_scale", "m", "n", "m2", "zp"})
    w = _weights(a, t, 4)
    _pair(a, "stride", 1, MAX_GEOM)
    _pair(a, "padding", 0, MAX_GEOM)
    _pair(a, "dilation", 1, MAX_GEOM)
    g = _int(a, "groups", 1, MAX_GEOM)
    if w.shape[0] % g:
        raise Invalid(f"attribute 'groups' = {g} does not divide the {w.shape[0]} output channels")
    if max(w.shape[2:]) > MAX_GEOM:
        raise Invalid(f"tensor 'weight' has a {tuple(w.shape[2:])} kernel; allowed: at most {MAX_GEOM}")
    _output_stage(a, t, w.shape[0], n_in)


def _conv2d_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x = _expect(ins, 0, (torch.int8,), 3)
    c, h, w = x.shape
    o, cg, kh, kw = t["weight"].shape
    g = a["groups"]
    if cg * g != c:
        raise Invalid(f"the weight takes {cg} input channels x {g} groups = {cg * g}, but the input has {c} "
                      f"channels (per-sample shape {x.shape})")
    (sh, sw), (ph, pw), (dh, dw) = (_pair(a, k, lo, MAX_GEOM) for k, lo in (("stride", 1), ("padding", 0),
                                                                            ("dilation", 1)))
    ho, wo = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise Invalid(f"a {kh}x{kw} kernel with dilation {[dh, dw]} is larger than the padded {h}x{w} input "
                      f"(padding {[ph, pw]})")
    _size("the padded input", (h + 2 * ph) * (w + 2 * pw) * c)
    _size("the im2col rows", ho * wo * (kh * kw * c + 3))
    out = Spec((o, ho, wo), _out_dtype(t))
    _size("the output", o * ho * wo)
    _residual(a, t, ins, out)
    return out


# ---------------------------------------------------------------- pooling, flatten, pad


def _maxpool2d_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"kernel_size", "stride", "padding", "dilation", "ceil_mode"})
    _tensor_names(t, set())
    k = _pair(a, "kernel_size", 1, MAX_GEOM)
    _pair(a, "stride", 1, MAX_GEOM)
    p = _pair(a, "padding", 0, MAX_GEOM)
    _pair(a, "dilation", 1, MAX_GEOM)
    _bool(a, "ceil_mode")
    if any(2 * pi > ki for pi, ki in zip(p, k)):
        raise Invalid(f"attribute 'padding' = {list(p)}; allowed: at most half the kernel {list(k)} (as in "
                      "PyTorch)")


def _maxpool2d_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x = _expect(ins, 0, (torch.int8, *INPUT_DTYPES.values()), 3)
    k, s, p, d = (_pair(a, n, lo, MAX_GEOM) for n, lo in (("kernel_size", 1), ("stride", 1), ("padding", 0),
                                                          ("dilation", 1)))
    try:  # PyTorch's own output-size rule (ceil mode included), on a shape-only tensor
        y = torch.nn.functional.max_pool2d(torch.empty((1, *x.shape), device="meta"), k, s, p, d,
                                           _bool(a, "ceil_mode"))
    except RuntimeError as exc:
        raise Invalid(f"max pool of kernel {list(k)} on a per-sample input of {x.shape}: {exc}") from None
    out = Spec(tuple(y.shape[1:]), x.dtype)
    if min(out.shape) < 1:
        raise Invalid(f"max pool of kernel {list(k)} on a per-sample input of {x.shape} has an empty output")
    return out


def _avgpool2d_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"kernel_size", "stride", "window", "input_zero_point", "zero_point", "lo", "hi"})
    _tensor_names(t, {"m", "n"})
    missing = [k for k in ("kernel_size", "stride") if k not in a]
    if missing:
        raise Invalid(f"attributes {missing} are missing (null for a global pool)")
    if a["kernel_size"] is None:
        if a.get("stride") is not None:
            raise Invalid(f"attribute 'stride' = {a['stride']!r:.80} on a global pool (kernel_size null); "
                          "allowed: null")
    else:
        k = _pair(a, "kernel_size", 1, MAX_GEOM)
        _pair(a, "stride", 1, MAX_GEOM)
        if _int(a, "window", 1, MAX_WINDOW) != k[0] * k[1]:
            raise Invalid(f"attribute 'window' = {a['window']}; allowed: the kernel's {k[0]} x {k[1]} = "
                          f"{k[0] * k[1]}")
    _int(a, "window", 1, MAX_WINDOW)
    _int(a, "input_zero_point", *INT8)
    _bounds(a)
    _tensor(t, "m", torch.int64, (1,))
    _tensor(t, "n", torch.int64, (1,))
    _values(t, "m", 0, MAX_M)
    _values(t, "n", 0, MAX_SHIFT)


def _avgpool2d_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x = _expect(ins, 0, (torch.int8,), 3)
    c, h, w = x.shape
    if a["kernel_size"] is None:
        if a["window"] != h * w:
            raise Invalid(f"attribute 'window' = {a['window']}, but the global pool's input is {h} x {w} = "
                          f"{h * w} pixels")
        return Spec((c, 1, 1), torch.int8)
    (kh, kw), (sh, sw) = _pair(a, "kernel_size", 1, MAX_GEOM), _pair(a, "stride", 1, MAX_GEOM)
    if kh > h or kw > w:
        raise Invalid(f"attribute 'kernel_size' = {[kh, kw]} is larger than the {h} x {w} input")
    return Spec((c, (h - kh) // sh + 1, (w - kw) // sw + 1), torch.int8)


def _flatten_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"start_dim", "end_dim"})
    _tensor_names(t, set())
    _int(a, "start_dim", -8, 8)
    _int(a, "end_dim", -8, 8)


def _flatten_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x = ins[0]
    nd = len(x.shape) + 1  # with the batch dimension
    start, end = a["start_dim"], a["end_dim"]
    s, e = (start + nd if start < 0 else start), (end + nd if end < 0 else end)
    if not 1 <= s <= e < nd:
        raise Invalid(f"attributes 'start_dim' = {start}, 'end_dim' = {end} on a {nd}-D input (batch included); "
                      "allowed: 1 <= start <= end < ndim after counting negative ones from the end (the batch "
                      "dimension stays)")
    return Spec((*x.shape[:s - 1], math.prod(x.shape[s - 1:e]), *x.shape[e:]), x.dtype)


def _pad_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"pad", "value", "mode"})
    _tensor_names(t, set())
    if a.get("mode", "constant") not in ir.PAD_MODES:
        raise Invalid(f"attribute 'mode' = {a.get('mode')!r:.40}; allowed: {', '.join(map(repr, ir.PAD_MODES))}")
    p = a.get("pad")
    if (not isinstance(p, (list, tuple)) or len(p) not in (2, 4, 6)
            or not all(_is_int(v) and 0 <= v <= MAX_GEOM for v in p)):
        raise Invalid(f"attribute 'pad' = {p!r:.80}; allowed: a list of 2, 4 or 6 integers in 0..{MAX_GEOM}")
    _int(a, "value", *INT8)


def _pad_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x = ins[0]
    p = a["pad"]
    if len(p) // 2 > len(x.shape):
        raise Invalid(f"attribute 'pad' = {list(p)} pads {len(p) // 2} dimensions of a per-sample input of "
                      f"{len(x.shape)}")
    shape = list(x.shape)
    reflect = a.get("mode", "constant") == "reflect"
    for i in range(len(p) // 2):
        if reflect and max(p[2 * i], p[2 * i + 1]) >= shape[-1 - i]:
            raise Invalid(f"attribute 'pad' = {list(p)} reflects {max(p[2 * i], p[2 * i + 1])} elements at an edge of "
                          f"a dimension of size {shape[-1 - i]}; allowed: fewer than the size (F.pad's rule)")
        shape[-1 - i] += p[2 * i] + p[2 * i + 1]
    _size("the padded output", math.prod(shape))
    return Spec(tuple(shape), x.dtype)


def _slice_attrs(a: dict, t: dict, n_in: int) -> None:
    """A slice ``start:stop`` (step 1) of a dimension after the batch, ``0 <= start < stop``, no tensors."""
    _known(a, {"dim", "start", "stop"})
    _tensor_names(t, set())
    _int(a, "dim", 1, 8)
    start = _int(a, "start", 0, MAX_SAMPLE - 1)
    _int(a, "stop", start + 1, MAX_SAMPLE)


def _slice_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x, d = ins[0], a["dim"]
    if d > len(x.shape) or a["stop"] > x.shape[d - 1]:
        raise Invalid(f"attributes dim {d}, stop {a['stop']} on a per-sample input of shape {list(x.shape)}: the "
                      "dimension (counted with the batch) must exist and hold stop elements")
    return Spec((*x.shape[:d - 1], a["stop"] - a["start"], *x.shape[d:]), x.dtype)


def _dim_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"dim"})
    _tensor_names(t, set())
    _int(a, "dim", 1, 8)


def _unsqueeze_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x, d = ins[0], a["dim"]
    if d > len(x.shape) + 1:
        raise Invalid(f"attribute 'dim' = {d} on a {len(x.shape) + 1}-D input (batch included); allowed: 1..{len(x.shape) + 1}")
    return Spec((*x.shape[:d - 1], 1, *x.shape[d - 1:]), x.dtype)


def _squeeze_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x, d = ins[0], a["dim"]
    if d > len(x.shape) or x.shape[d - 1] != 1:
        raise Invalid(f"attribute 'dim' = {d}: the input's dimension {d} (batch included) must exist and have size 1, "
                      f"the per-sample shape is {list(x.shape)}")
    return Spec((*x.shape[:d - 1], *x.shape[d:]), x.dtype)


def _permute_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"dims"})
    _tensor_names(t, set())
    d = a.get("dims")
    if (not isinstance(d, (list, tuple)) or not 2 <= len(d) <= 8 or not all(_is_int(v) for v in d)
            or sorted(d) != list(range(len(d))) or d[0] != 0):
        raise Invalid(f"attribute 'dims' = {d!r:.80}; allowed: a permutation of 0..n-1 (2 <= n <= 8) that keeps the "
                      "batch dimension 0 first")


def _permute_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x, d = ins[0], a["dims"]
    if len(d) != len(x.shape) + 1:
        raise Invalid(f"attribute 'dims' = {list(d)} permutes {len(d)} dimensions of a {len(x.shape) + 1}-D input "
                      "(batch included)")
    return Spec(tuple(x.shape[i - 1] for i in d[1:]), x.dtype)


def _reshape_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"shape"})
    _tensor_names(t, set())
    d = a.get("shape")
    if (not isinstance(d, (list, tuple)) or not 1 <= len(d) <= 7
            or not all(_is_int(v) and 1 <= v <= MAX_SAMPLE for v in d)):
        raise Invalid(f"attribute 'shape' = {d!r:.80}; allowed: a per-sample shape of 1 to 7 sizes in 1..{MAX_SAMPLE}")


def _reshape_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x, d = ins[0], tuple(a["shape"])
    if math.prod(d) != math.prod(x.shape):
        raise Invalid(f"attribute 'shape' = {list(d)} holds {math.prod(d)} elements per sample; the input "
                      f"{list(x.shape)} holds {math.prod(x.shape)}")
    return Spec(d, x.dtype)


def _table_attrs(a: dict, t: dict, n_in: int) -> None:
    _known(a, {"float_output"})
    _tensor_names(t, {"table"})
    out = _bool(a, "float_output") if "float_output" in a else False
    v = _tensor(t, "table", torch.float32 if out else torch.int8, ndim=2)
    if v.shape[1] != 256 or v.shape[0] < 1:
        raise Invalid(f"tensor 'table' has shape {tuple(v.shape)}; allowed: (C, 256), one row per channel or one row")
    if out:
        _values(t, "table", -3.0e38, 3.0e38)


def _table_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    x = _expect(ins, 0, (torch.int8,))
    rows = t["table"].shape[0]
    if rows != 1 and (not x.shape or x.shape[0] != rows):
        raise Invalid(f"tensor 'table' has {rows} rows, but the input's dimension 1 (its channels) is "
                      f"{x.shape[0] if x.shape else 'absent'}; allowed: 1 row or one per channel")
    return Spec(x.shape, torch.float32 if a.get("float_output", False) else torch.int8)


def _concat_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    d, first = a["dim"], ins[0]
    if d > len(first.shape):
        raise Invalid(f"attribute 'dim' = {d} on {len(first.shape) + 1}-D inputs (batch included)")
    for s in ins[1:]:
        if s.dtype != first.dtype or len(s.shape) != len(first.shape) or any(
                x != y for i, (x, y) in enumerate(zip(s.shape, first.shape)) if i != d - 1):
            raise Invalid(f"inputs of shapes {list(first.shape)} {first.dtype} and {list(s.shape)} {s.dtype} do not "
                          f"join along dimension {d}: they must agree everywhere else and in dtype")
    size = sum(s.shape[d - 1] for s in ins)
    return Spec((*first.shape[:d - 1], size, *first.shape[d:]), first.dtype)


MAX_RNN_LAYERS = 64
MAX_RNN_INPUT = 65536  # int32 input accumulators: 128 * 255 * I < 2^31
MAX_RNN_HIDDEN = 65536  # and 128 * 127 * H < 2^31
RNN_TABLE = 4096  # the gate tables: 2 * 8 * 2^8 entries (pre-activations in Q.8 over [-8, 8))
RNN_PART = (-(1 << 15), (1 << 15) - 1)  # biases in Q.8, int16 range


def _recurrent_attrs(a: dict, t: dict, n_in: int) -> None:
    """A stacked LSTM/GRU: per layer ``k`` int8 ``w_ih_k`` (G H, I_k) and ``w_hh_k`` (G H, H) with ``I_k = H`` after
    layer 0, per-row multipliers (``0..2^31-1``) and shifts (``0..62``), int16-range int32 biases; the Q.15 tables.
    With ``input_bits`` 16 (int16 input codes): an int16 zero point, ``w_ih_0`` in ``-127..127`` and ``I`` at most
    :func:`~lowbit.functional.fixed_rnn.max_input16_features` (the int32 accumulator stays exact)."""
    _known(a, {"cell", "num_layers", "batch_first", "input_zero_point", "emit", "input_bits", "step"})
    if a.get("cell") not in ("lstm", "gru"):
        raise Invalid(f"attribute 'cell' = {a.get('cell')!r:.40}; allowed: 'lstm', 'gru'")
    if a.get("emit") not in ("output", "h", "c") or (a["emit"] == "c" and a["cell"] != "lstm"):
        raise Invalid(f"attribute 'emit' = {a.get('emit')!r:.40}; allowed: 'output', 'h', and 'c' for an LSTM")
    layers = _int(a, "num_layers", 1, MAX_RNN_LAYERS)
    _bool(a, "batch_first")
    if a.get("step", False):  # a cell: one layer, one step, its state as inputs 2 (h) and 3 (c, LSTM)
        _bool(a, "step")
        states = 2 if a["cell"] == "lstm" else 1
        if layers != 1 or a["batch_first"] or a["emit"] == "output" or n_in > 1 + states:
            raise Invalid(f"a recurrent step (a cell) has num_layers 1, batch_first false, emit 'h' or 'c' and at "
                          f"most {1 + states} inputs; got num_layers {layers}, batch_first {a['batch_first']}, emit "
                          f"{a['emit']!r}, {n_in} inputs")
    elif n_in != 1:
        raise Invalid(f"a recurrent op over a sequence takes 1 input, got {n_in}")
    wide = _code_bits(a, "input_bits") == 16
    zp = _int(a, "input_zero_point", *(INT16 if wide else INT8))
    names = [f"{n}_{k}" for k in range(layers) for n in ("w_ih", "w_hh", "m_ih", "n_ih", "m_hh", "n_hh", "b_ih", "b_hh")]
    _tensor_names(t, {*names, "sigmoid", "tanh"})
    gates = 4 if a["cell"] == "lstm" else 3
    w0 = _tensor(t, "w_hh_0", torch.int8, ndim=2)
    h = w0.shape[1]
    if not 1 <= h <= MAX_RNN_HIDDEN or w0.shape[0] != gates * h:
        raise Invalid(f"tensor 'w_hh_0' has shape {tuple(w0.shape)}; allowed: ({gates} H, H), 1 <= H <= {MAX_RNN_HIDDEN}")
    for k in range(layers):
        w = _tensor(t, f"w_ih_{k}", torch.int8, ndim=2)
        i = w.shape[1]
        if w.shape[0] != gates * h or not 1 <= i <= MAX_RNN_INPUT or (k > 0 and i != h):
            raise Invalid(f"tensor 'w_ih_{k}' has shape {tuple(w.shape)}; allowed: ({gates * h}, I) with 1 <= I <= "
                          f"{MAX_RNN_INPUT}, I = {h} after layer 0")
        _tensor(t, f"w_hh_{k}", torch.int8, (gates * h, h))
        for part in ("ih", "hh"):
            _tensor(t, f"m_{part}_{k}", torch.int64, (gates * h,))
            _values(t, f"m_{part}_{k}", 0, MAX_M)
            _tensor(t, f"n_{part}_{k}", torch.int64, (gates * h,))
            _values(t, f"n_{part}_{k}", 0, MAX_SHIFT)
            _tensor(t, f"b_{part}_{k}", torch.int32, (gates * h,))
            _values(t, f"b_{part}_{k}", *RNN_PART)
    if wide:
        i = t["w_ih_0"].shape[1]
        if i > max_input16_features(zp):
            raise Invalid(f"tensor 'w_ih_0' takes {i} features of int16 input codes; allowed: at most "
                          f"{max_input16_features(zp)} for input_zero_point {zp} (I * {W_MAX} * "
                          f"{max_input_delta(zp, 16)} < 2^31: the int32 accumulator stays exact)")
        _values(t, "w_ih_0", -W_MAX, W_MAX)
    _tensor(t, "sigmoid", torch.int32, (RNN_TABLE,))
    _values(t, "sigmoid", 0, 1 << 15)
    _tensor(t, "tanh", torch.int32, (RNN_TABLE,))
    _values(t, "tanh", -(1 << 15), 1 << 15)


def _recurrent_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    """Per sample (N, T, I) -> (T, H) / (H,) when ``batch_first``; else per step (T, N, I) -> (N, H) for ``output``
    and (H,) for a last state (whose leading dimension is N); a ``step``: (I,) [, h (H,) int8 [, c (H,) int16]] ->
    (H,)."""
    step = a.get("step", False)
    x = _expect(ins, 0, (torch.int16 if a.get("input_bits", 8) == 16 else torch.int8,), 1 if step else 2)
    i, h = t["w_ih_0"].shape[1], t["w_hh_0"].shape[1]
    for k, (what, dtype) in enumerate((("h", torch.int8), ("c", torch.int16))[:len(ins) - 1] if step else ()):
        s = _expect(ins, k + 1, (dtype,), 1, what=f"the state {what}")
        if s.shape[0] != h:
            raise Invalid(f"the state {what} has {s.shape[0]} features; tensor 'w_hh_0' has H = {h}")
    if step:
        if x.shape[0] != i:
            raise Invalid(f"the input has {x.shape[0]} features; tensor 'w_ih_0' takes {i}")
        return Spec((h,), torch.float32 if a["emit"] == "c" else torch.int8)
    if x.shape[1] != i:
        raise Invalid(f"the input has {x.shape[1]} features; tensor 'w_ih_0' takes {i}")
    if a["emit"] == "output":
        return Spec((x.shape[0], h), torch.int8)
    return Spec((h,), torch.float32 if a["emit"] == "c" else torch.int8)


def _l2normalize_attrs(a: dict, t: dict, n_in: int) -> None:
    """L2 normalisation: a dimension after the batch, the input's int8 zero point, no tensors."""
    _known(a, {"dim", "input_zero_point"})
    _tensor_names(t, set())
    _int(a, "dim", 1, 8)
    _int(a, "input_zero_point", *INT8)


def _l2normalize_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    """int8 codes in, int8 codes of the same shape out (the grid 2^-7); ``dim`` must exist."""
    x = _expect(ins, 0, (torch.int8,))
    if a["dim"] > len(x.shape):
        raise Invalid(f"attribute 'dim' = {a['dim']} on a {len(x.shape) + 1}-D input (batch included); allowed: "
                      f"1..{len(x.shape)}")
    return Spec(x.shape, torch.int8)


def _magnitude_attrs(a: dict, t: dict, n_in: int) -> None:
    """The integer magnitude: int8 zero points and bounds, a 15-bit multiplier and a shift of at most 48 (so
    ``4 S m^2 < 2^49`` and ``isqrt + 2^n`` stay exact in int64 and in a double: :mod:`lowbit.functional.magnitude`)."""
    from lowbit.functional.magnitude import MAX_SHIFT, MULT_BITS

    _known(a, {"input_zero_point", "zero_point", "lo", "hi", "multiplier", "shift"})
    _tensor_names(t, set())
    _int(a, "input_zero_point", *INT8)
    _bounds(a)
    _int(a, "multiplier", 0, (1 << MULT_BITS) - 1)
    _int(a, "shift", 0, MAX_SHIFT)


def _magnitude_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    """Two int8 inputs of one shape, int8 codes of that shape out."""
    x = _expect(ins, 0, (torch.int8,))
    y = _expect(ins, 1, (torch.int8,), what="the second input")
    if x.shape != y.shape:
        raise Invalid(f"inputs of per-sample shapes {list(x.shape)} and {list(y.shape)}; allowed: one shape")
    return Spec(x.shape, torch.int8)


def _layernorm_attrs(a: dict, t: dict, n_in: int) -> None:
    """The integer LayerNorm: int8 output zero point and bounds, a shift of at most 32, an integer eps below
    ``2^52``, and per feature an int8 input zero point, a multiplier in ``0..2^15`` and ``|gamma|, |beta| < 2^31``
    (the bounds under which :mod:`lowbit.functional.layernorm` proves that nothing overflows int64)."""
    from lowbit.functional import layernorm as ln

    _known(a, {"zero_point", "lo", "hi", "shift", "eps"})
    _bounds(a)
    _int(a, "shift", 0, ln.MAX_SHIFT)
    _int(a, "eps", 0, ln.MAX_EPS)
    _tensor_names(t, {"zero_points", "multipliers", "gamma", "beta"})
    zp = _tensor(t, "zero_points", torch.int32, ndim=1)
    c = zp.numel()
    if not 1 <= c <= ln.MAX_FEATURES:
        raise Invalid(f"tensor 'zero_points' has {c} features; allowed: 1..{ln.MAX_FEATURES}")
    _values(t, "zero_points", *INT8)
    for name in ("multipliers", "gamma", "beta"):
        _tensor(t, name, torch.int64, (c,))
    _values(t, "multipliers", 0, ln.MAX_MULT)
    _values(t, "gamma", -ln.MAX_COEF, ln.MAX_COEF)
    _values(t, "beta", -ln.MAX_COEF, ln.MAX_COEF)


def _layernorm_shape(a: dict, t: dict, ins: list[Spec]) -> Spec:
    """int8 codes whose last dimension has the op's features, int8 codes of that shape out."""
    x = _expect(ins, 0, (torch.int8,))
    c = t["zero_points"].numel()
    if not x.shape or x.shape[-1] != c:
        raise Invalid(f"input of per-sample shape {list(x.shape)}; allowed: a last dimension of {c} features")
    return Spec(x.shape, torch.int8)


# the safetensors I/O backend's table: what a file's node of each op type must satisfy before it is built
CHECKS: dict[type, KindCheck] = {
    ir.Quantize: KindCheck(_quantize_attrs, _quantize_shape, (1, 1)),
    ir.Dequantize: KindCheck(_dequantize_attrs, _dequantize_shape, (1, 1)),
    ir.Linear: KindCheck(_linear_attrs, _linear_shape, (1, 2)),
    ir.Conv2d: KindCheck(_conv2d_attrs, _conv2d_shape, (1, 2)),
    ir.MaxPool2d: KindCheck(_maxpool2d_attrs, _maxpool2d_shape, (1, 1)),
    ir.AvgPool2d: KindCheck(_avgpool2d_attrs, _avgpool2d_shape, (1, 1)),
    ir.Flatten: KindCheck(_flatten_attrs, _flatten_shape, (1, 1)),
    ir.Pad: KindCheck(_pad_attrs, _pad_shape, (1, 1)),
    ir.Unsqueeze: KindCheck(_dim_attrs, _unsqueeze_shape, (1, 1)),
    ir.Squeeze: KindCheck(_dim_attrs, _squeeze_shape, (1, 1)),
    ir.Permute: KindCheck(_permute_attrs, _permute_shape, (1, 1)),
    ir.Reshape: KindCheck(_reshape_attrs, _reshape_shape, (1, 1)),
    ir.Table: KindCheck(_table_attrs, _table_shape, (1, 1)),
    ir.Concat: KindCheck(_dim_attrs, _concat_shape, (2, 16)),
    ir.Recurrent: KindCheck(_recurrent_attrs, _recurrent_shape, (1, 3)),
    ir.L2Normalize: KindCheck(_l2normalize_attrs, _l2normalize_shape, (1, 1)),
    ir.Slice: KindCheck(_slice_attrs, _slice_shape, (1, 1)),
    ir.Magnitude: KindCheck(_magnitude_attrs, _magnitude_shape, (2, 2)),
    ir.LayerNorm: KindCheck(_layernorm_attrs, _layernorm_shape, (1, 1)),
}
KNOWN_KINDS = sorted(t.kind for t in CHECKS)


def check_of(kind: object) -> KindCheck | None:
    """The checks of the op type named ``kind`` (a file's string), or None for an unknown kind."""
    t = ir.KINDS.get(kind) if isinstance(kind, str) else None
    return CHECKS.get(t) if t is not None else None


# ---------------------------------------------------------------- the graph


def _where(i: int, node: NodeView) -> str:
    return f"node {i} ({node.kind!s:.40})"


def _check_grid(grid: Any) -> None:
    """A node's output grid (read by the ONNX export and parity checks): None or scale, zero point, bits, sign."""
    if grid is None:
        return
    if not isinstance(grid, dict) or set(grid) != {"scale", "zero_point", "bits", "signed"}:
        raise Invalid(f"grid = {grid!r:.80}; allowed: null or {{scale, zero_point, bits, signed}}")
    _real(grid, "scale", positive=True)
    _int(grid, "zero_point", -(1 << 31), (1 << 31) - 1)
    _int(grid, "bits", 1, 32)
    _bool(grid, "signed")


InputNames = str | Sequence[str]  # one input's tensor name, or every input's, in call order


def _names(input_name: object) -> list[str]:
    """The input tensor names: one string, or a non-empty list of distinct strings."""
    names = [input_name] if isinstance(input_name, str) else input_name
    if (not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)):
        raise Invalid(f"input {input_name!r:.60} must be a tensor name (a string) or a list of distinct ones")
    return list(names)


def _input_env(input_name: InputNames, x: Spec | Sequence[Spec]) -> dict[str, Spec]:
    """Each input's name with its spec (``x``: one :class:`Spec` for one name, else one per name)."""
    names = _names(input_name)
    xs = [x] if isinstance(x, Spec) else list(x)
    if len(xs) != len(names):
        raise Invalid(f"{len(xs)} input specs for the {len(names)} inputs {names}")
    for n, spec in zip(names, xs):
        if math.prod(spec.shape) > MAX_SAMPLE:
            which = "the input" if len(names) == 1 else f"input {n!r}"
            raise Invalid(f"{which} has {math.prod(spec.shape)} elements per sample; allowed: at most {MAX_SAMPLE}")
    return dict(zip(names, xs))


def check_structure(nodes: Sequence[NodeView], input_name: object, output_name: object) -> None:
    """Kinds, names and every node's attributes and tensors (no shapes): each node reads tensors defined
    before it (or inputs: ``input_name`` is one name or the list of them; an input no node reads is allowed),
    defines a new one, and the output is one of them."""
    if not isinstance(output_name, str):
        raise Invalid(f"input {input_name!r:.40} and output {output_name!r:.40} must be tensor names (strings)")
    names = _names(input_name)
    if not nodes:
        raise Invalid("the model has no nodes")
    defined = set(names)
    for i, node in enumerate(nodes):
        where = _where(i, node)
        check = check_of(node.kind)
        if check is None:
            raise Invalid(f"{where}: unknown op kind; allowed: {KNOWN_KINDS}")
        ins, out = node.inputs, node.output
        if not isinstance(ins, list) or not all(isinstance(n, str) for n in ins) or not isinstance(out, str):
            raise Invalid(f"{where}: inputs {ins!r:.60} and output {out!r:.40} must be tensor names (strings)")
        lo, hi = check.inputs
        if not lo <= len(ins) <= hi:
            raise Invalid(f"{where}: {len(ins)} inputs; allowed: {lo}..{hi}")
        undefined = [n for n in ins if n not in defined]
        if undefined:
            raise Invalid(f"{where}: reads {undefined}, which no earlier node defines")
        if out in defined:
            raise Invalid(f"{where}: output {out!r} is already defined; every node defines a new tensor")
        defined.add(out)
        try:
            check.attrs(node.attrs, node.tensors, len(ins))
            _check_grid(node.grid)
        except Invalid as exc:
            raise Invalid(f"{where}: {exc}") from None
    if output_name not in defined or output_name in names:
        raise Invalid(f"the output {output_name!r} is not defined by any node")


def specs(nodes: Sequence[NodeView], input_name: InputNames, x: Spec | Sequence[Spec],
          stop_at_unknown: bool = False) -> dict[str, Spec]:
    """The per-sample :class:`Spec` of every tensor for inputs of spec ``x`` (one :class:`Spec` for one input
    name, else one per name of ``input_name``), every node's inputs checked on the way; with
    ``stop_at_unknown``, those before the first node of a kind without checks (a test's own op)."""
    env = _input_env(input_name, x)
    for i, node in enumerate(nodes):
        check = check_of(node.kind)
        if check is None:
            if stop_at_unknown:
                return env
            raise Invalid(f"{_where(i, node)}: unknown op kind; allowed: {KNOWN_KINDS}")
        try:
            env[node.output] = check.shape(node.attrs, node.tensors, [env[n] for n in node.inputs])
        except Invalid as exc:
            names = ", ".join(f"{n!r} {env[n].shape}" for n in node.inputs if n in env)
            raise Invalid(f"{_where(i, node)} (inputs {names}): {exc}") from None
    return env


def propagate(nodes: Sequence[NodeView], input_name: InputNames, output_name: str, x: Spec | Sequence[Spec],
              stop_at_unknown: bool = False) -> Spec | None:
    """The per-sample spec of the output for inputs of spec ``x`` (:func:`specs`); None when
    ``stop_at_unknown`` stopped before the output."""
    return specs(nodes, input_name, x, stop_at_unknown).get(output_name)


def input_spec(shape: object, dtype: object) -> Spec:
    """The recorded per-sample input shape (a list of 1 to 6 positive integers) and dtype name."""
    if (not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 6
            or not all(_is_int(d) and 1 <= d <= MAX_SAMPLE for d in shape)):
        raise Invalid(f"input_shape = {shape!r:.80}; allowed: a list of 1 to 6 integers in 1..{MAX_SAMPLE}")
    if dtype not in INPUT_DTYPES:
        raise Invalid(f"input_dtype = {dtype!r:.40}; allowed: {sorted(INPUT_DTYPES)}")
    return Spec(tuple(int(d) for d in shape), INPUT_DTYPES[dtype])


def check_model(nodes: Sequence[NodeView], input_name: InputNames, output_name: str,
                x: Spec | Sequence[Spec] | None) -> None:
    """Everything: structure, attributes and tensors, then (when the input specs ``x`` are known) shapes."""
    check_structure(nodes, input_name, output_name)
    if x is not None:
        propagate(nodes, input_name, output_name, x)


def views(nodes) -> list[NodeView]:
    """The :class:`NodeView` s of built :class:`~lowbit.integer.model.Node` s."""
    return [NodeView(n.kind, n.op.attrs, n.op.tensors, n.inputs, n.output, None if n.grid is None else n.grid.to_json())
            for n in nodes]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the name a model file records)."""
    return str(dtype).removeprefix("torch.")


__all__ = ["CHECKS", "KNOWN_KINDS", "check_of", "MAX_SAMPLE", "Invalid", "KindCheck", "NodeView", "Spec", "check_model", "check_structure",
           "InputNames", "dtype_name", "input_spec", "propagate", "specs", "views", "weight_range"]

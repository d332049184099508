"""Exact ONNX forms of the integer ops that have no QDQ form: ``l2normalize``, ``magnitude`` and the ``recurrent`` op.

Both are written with integer onnxruntime ops only (``Cast``, ``Add``/``Sub``/``Mul``/``Div``/``Mod`` on int64,
``ReduceSum``, ``MatMulInteger``, ``Gather``, ``Min``/``Max``, ``Scan``), so onnxruntime computes the integer
model's codes bit for bit; the one float step is a square root shown exact below.

Integer division in ONNX truncates toward zero; lowbit's shifts are floor divisions. Every division here is
either of a non-negative value (truncation is the floor) or goes through :func:`floor_div`:
``floor(v / d) = (v - Mod(v, d)) / d`` with ``Mod(fmod=0)`` taking the divisor's sign (``0 <= Mod(v, d) < d``),
so the division is exact.

**l2normalize** (:mod:`lowbit.functional.l2norm`): ``x = codes - z`` (int64), ``S = ReduceSum(x^2)``,
``u = (2^16 x^2) / max(S, 1)`` (non-negative: a floor), ``r = Floor(Sqrt(double(u)))``, ``k = min((r + 1) / 2,
127)``, ``y = Sign(x) k``. ``S = 0`` only where every ``x = 0``, where ``Sign(x) = 0`` gives ``y = 0``.

**magnitude** (:mod:`lowbit.functional.magnitude`): ``S = x^2 + y^2`` of the centred int64 codes, ``v = 4 S m^2``,
the integer square root as ``Floor(Sqrt(double(v)))`` corrected by one either way (exact), the rounding shift as a
division of a non-negative value, the output zero point and bounds (:func:`emit_magnitude`).

**recurrent, LSTM and GRU** (:mod:`lowbit.nn.recurrent`, :mod:`lowbit.functional.fixed_rnn`): per layer, the
input projection of all steps at once, ``MatMulInteger`` of the uint8 codes (their zero point as ``a_zero_point``)
by ``w_ih^T`` (held as uint8 ``w + 128``, zero point 128: exact on every CPU); a 16-bit input as two uint8 byte planes ``u = x + 2^15 = 256 hi + lo``:
``acc = 256 acc_hi + acc_lo - (z + 2^15) rowsum(w_ih)``. Then the per-row requantization :func:`rshift_even`
(``round_half_even(acc m / 2^n)``, clamped to int16) plus the bias, and a ``Scan`` over time carrying ``h`` and
``c`` (int64; the GRU carries ``h`` only): the recurrent projection (``MatMulInteger`` of ``h + 128`` with zero
point 128), the gates by ``Gather`` from the concatenated ``(sigmoid, tanh)`` tables at clamped indices, the cell
and ``h`` updates with the shifts of :func:`lowbit.functional.fixed_rnn.lstm_step` / ``gru_step`` (floor
divisions). Layers chain on ``h``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lowbit.errors import ConfigError
from lowbit.functional.fixed_rnn import C_FRAC, H_FRAC, H_MAX, PART_MAX, PRE_FRAC, TABLE_RANGE
from lowbit.functional.l2norm import OUT_FRAC, OUT_MAX
from lowbit.functional.layernorm import VAR_SHIFT
from lowbit.integer import ir

if TYPE_CHECKING:  # pragma: no cover
    from lowbit.export.onnx_qdq import _Builder
    from lowbit.integer.model import Node

I64 = np.int64
HALF = TABLE_RANGE << PRE_FRAC  # 2048: a gate table's index of pre-activation 0 (4096 entries)


def _c(b: _Builder, base: str, value) -> str:
    return b.const(base, np.asarray(value, dtype=I64))


def floor_div(b: _Builder, v: str, d: str, base: str) -> str:
    """``floor(v / d)`` of int64 ``v`` by positive int64 ``d``: ``(v - Mod(v, d)) / d`` (an exact division)."""
    r = b.add("Mod", [v, d], f"{base}_mod", fmod=0)
    return b.add("Div", [b.add("Sub", [v, r], f"{base}_sub"), d], f"{base}_floor")


def clamp(b: _Builder, v: str, lo: int, hi: int, base: str) -> str:
    """int64 ``min(max(v, lo), hi)``."""
    return b.add("Min", [b.add("Max", [v, _c(b, f"{base}_lo", lo)], f"{base}_max"), _c(b, f"{base}_hi", hi)],
                 f"{base}_clamp")


def isqrt(b: _Builder, v: str, name: str) -> str:
    """int64 ``floor(sqrt(v))`` of non-negative int64 ``v < 2^53``: the double root's floor ``r``, then ``r - 1``
    where ``r^2 > v`` and ``r + 1`` where ``(r + 1)^2 <= v`` (the double root is within one of the exact one there:
    :func:`lowbit.functional.magnitude.isqrt64`)."""
    r = b.add("Cast", [b.add("Floor", [b.add("Sqrt", [b.add("Cast", [v], f"{name}_f64", to=11)], f"{name}_sqrt")],
                             f"{name}_floor")], f"{name}_root", to=7)  # 11: DOUBLE, 7: INT64
    over = b.add("Cast", [b.add("Greater", [b.add("Mul", [r, r], f"{name}_r2"), v], f"{name}_over")],
                 f"{name}_over64", to=7)
    r = b.add("Sub", [r, over], f"{name}_root_dn")
    r1 = b.add("Add", [r, _c(b, f"{name}_one", 1)], f"{name}_r1")
    under = b.add("Cast", [b.add("LessOrEqual", [b.add("Mul", [r1, r1], f"{name}_r1sq"), v], f"{name}_under")],
                  f"{name}_under64", to=7)
    return b.add("Add", [r, under], f"{name}_isqrt")


def shift_half_up(b: _Builder, v: str, s: int, base: str) -> str:
    """``(v + 2^(s-1)) >> s`` (arithmetic): ``floor((v + 2^(s-1)) / 2^s)``."""
    return floor_div(b, b.add("Add", [v, _c(b, f"{base}_half", 1 << (s - 1))], f"{base}_add"),
                     _c(b, f"{base}_div", 1 << s), base)


def rshift_even(b: _Builder, v: str, n: np.ndarray, base: str) -> str:
    """``round(v / 2^n)`` ties to even (:func:`lowbit.functional.requant.rshift_round`), per row ``n`` (last axis):
    ``q = floor(v / 2^n)``, ``r = v - q 2^n``; up when ``r > 2^(n-1)`` or ``r = 2^(n-1)`` and ``q`` odd. Where
    ``n = 0``, ``r = 0`` and the comparison constant is 1, so nothing rounds up."""
    n = np.asarray(n, dtype=I64)
    p2 = _c(b, f"{base}_p2", np.left_shift(np.ones_like(n), n))
    half = _c(b, f"{base}_halfstep", np.where(n > 0, np.left_shift(np.ones_like(n), np.maximum(n - 1, 0)), 1))
    r = b.add("Mod", [v, p2], f"{base}_rem", fmod=0)
    q = b.add("Div", [b.add("Sub", [v, r], f"{base}_sub"), p2], f"{base}_q")
    odd = b.add("Equal", [b.add("Mod", [q, _c(b, f"{base}_two", 2)], f"{base}_parity", fmod=0),
                          _c(b, f"{base}_one", 1)], f"{base}_odd")
    tie = b.add("And", [b.add("Equal", [r, half], f"{base}_eq"), odd], f"{base}_tie")
    up = b.add("Or", [b.add("Greater", [r, half], f"{base}_gt"), tie], f"{base}_up")
    return b.add("Add", [q, b.add("Cast", [up], f"{base}_up64", to=7)], f"{base}_round")  # 7: INT64


def requantize_part(b: _Builder, acc: str, m, n, bias, base: str) -> str:
    """A pre-activation part in Q.8: ``clamp16(rshift_even(acc m, n)) + b`` (int64, per row on the last axis)."""
    v = b.add("Mul", [acc, _c(b, f"{base}_m", m.numpy())], f"{base}_prod")
    part = clamp(b, rshift_even(b, v, n.numpy(), base), -PART_MAX - 1, PART_MAX, base)
    return b.add("Add", [part, _c(b, f"{base}_bias", bias.numpy())], f"{base}_biased")


def unsigned_codes(b: _Builder, x, name: str) -> tuple[str, int]:
    """An integer tensor's codes as ``MatMulInteger`` takes them here (uint8: int8 codes + 128, see
    :func:`_weights`) and their zero point there."""
    if not x.grid.signed:
        return x.codes, x.grid.zero_point
    u = b.add("Add", [b.add("Cast", [x.codes], f"{name}_x32", to=6), b.const(f"{name}_x128", np.array(128, np.int32))],
              f"{name}_xu32")  # 6: INT32
    return b.add("Cast", [u], f"{name}_xu8", to=2), x.grid.zero_point + 128  # 2: UINT8


def quantized_values(b: _Builder, x: str, scale: float, zero_point: int, lo: int, hi: int, name: str) -> str:
    """The integer model's quantization of float ``x`` in its own float32 ops, ``clamp(round(x * (1/s)) + z, lo,
    hi)`` (``Round``: half to even, as ``torch.round``), as integral float32 values (``QuantizeLinear`` divides
    by ``s`` instead, which lands on the other side of a half for about one input in 500,000)."""
    import torch

    inv = float(torch.reciprocal(torch.tensor(scale, dtype=torch.float32)))
    f32 = lambda base, v: b.const(base, np.array(v, np.float32))  # noqa: E731
    r = b.add("Round", [b.add("Mul", [x, f32(f"{name}_inv", inv)], f"{name}_scaled")], f"{name}_round")
    v = b.add("Add", [r, f32(f"{name}_zpf", zero_point)], f"{name}_shifted")
    return b.add("Min", [b.add("Max", [v, f32(f"{name}_lof", lo)], f"{name}_max"), f32(f"{name}_hif", hi)],
                 f"{name}_clamped")


# ---------------------------------------------------------------- linear (read only by integer-written ops)


def linear_exact_ok(node: Node, residual: bool = False) -> bool:
    """A plain requantized int8 linear (one input, 8-bit codes, int8 weights) that :func:`emit_linear` writes; with
    ``residual``, a requantized one with a residual summand too."""
    a = node.op.ir
    return (isinstance(a, ir.Linear) and a.weight_codes is ir.WeightCodes.INT and a.input_bits == 8
            and (_plain_stage(node) or residual and _residual_stage(node)))


def _residual_stage(node: Node) -> bool:
    """A requantized output stage with a residual summand (tensor ``m2``)."""
    return len(node.inputs) == 2 and isinstance(node.op.ir.out, ir.Requantized) and "m2" in node.op.tensors


def _plain_stage(node: Node) -> bool:
    """A requantized or dequantizing output stage without a residual summand."""
    out, t = node.op.ir.out, node.op.tensors
    return len(node.inputs) == 1 and (isinstance(out, ir.Requantized) and "m" in t
                                      or isinstance(out, ir.Dequantized) and "acc_scale" in t)


def _finish(b: _Builder, node: Node, acc: str, shape: tuple[int, ...]) -> None:
    """The output stage of an exact layer from its int64 accumulator ``acc`` (bias added), per-channel tensors
    shaped ``shape``: int8 codes ``clamp(z_y + round_even(acc m / 2^n), lo, hi)``, or the float32 value
    ``float32(float64(acc) acc_scale)`` then the activation, as the integer model computes them."""
    from lowbit.export.onnx_qdq import _Grid, _Value

    a, name = node.op.ir, node.output
    if isinstance(a.out, ir.Dequantized):
        scale = b.const(f"{name}_acc_scale", _t(node, "acc_scale").double().numpy().reshape(shape))
        y = b.add("Cast", [b.add("Mul", [b.add("Cast", [acc], f"{name}_acc64f", to=11), scale], f"{name}_value64")],
                  f"{name}_value", to=1)  # 11: DOUBLE, 1: FLOAT
        if a.out.act is ir.Act.RELU:
            y = b.add("Relu", [y], f"{name}_relu")
        elif a.out.act is ir.Act.HARDTANH:
            y = b.add("Clip", [y, b.const(f"{name}_lo", np.array(a.out.act_lo, np.float32)),
                               b.const(f"{name}_hi", np.array(a.out.act_hi, np.float32))], f"{name}_clip")
        b.values[name] = _Value(y)
        return
    v = b.add("Mul", [acc, _c(b, f"{name}_m", _t(node, "m").numpy().reshape(shape))], f"{name}_prod")
    grid = _Grid.of(node.grid)
    if len(node.inputs) == 2:  # the residual's centred codes times m2, on the accumulator's fixed point
        r = b.integer_input(node, 1)
        if _Grid.code(a.out.residual_zero_point, r.grid.signed) != r.grid.zero_point:
            raise ConfigError(f"{name}: residual zero point {a.out.residual_zero_point} differs from the grid of "
                              f"{node.inputs[1]!r}")
        rc = b.add("Sub", [b.add("Cast", [r.codes], f"{name}_res64", to=7), _c(b, f"{name}_res_zp", r.grid.zero_point)],
                   f"{name}_res_centred")
        v = b.add("Add", [v, b.add("Mul", [rc, _c(b, f"{name}_m2", _t(node, "m2").numpy().reshape(shape))],
                                   f"{name}_res_prod")], f"{name}_sum")
    zp = grid.zero_point  # a zero point per channel (a LayerNorm's per-feature input grid): the tensor zp
    if "zp" in node.op.tensors:
        zp = _t(node, "zp").numpy().astype(I64).reshape(shape) + (0 if grid.signed else 128)
    q = b.add("Add", [rshift_even(b, v, _t(node, "n").numpy().reshape(shape), name),
                      _c(b, f"{name}_zp", zp)], f"{name}_shifted")
    q = clamp(b, q, _Grid.code(a.out.lo, grid.signed), _Grid.code(a.out.hi, grid.signed), name)
    b.record(b.add("Cast", [q], f"{name}_codes", to=3 if grid.signed else 2), grid, name)  # 3: INT8, 2: UINT8


def emit_linear(b: _Builder, node: Node) -> None:
    """A linear whose output only integer-written ops read (``l2normalize``, ``recurrent``): the integer model's
    own arithmetic, ``clamp(z_y + round_even((acc + bias) m / 2^n), lo, hi)`` with ``acc`` from ``MatMulInteger``
    (uint8 x uint8), exact, where the QDQ form requantizes in float32 (about one code in a million apart)."""
    from lowbit.export.onnx_qdq import _Grid

    a, name = node.op.ir, node.output
    x = b.integer_input(node)
    if _Grid.code(a.input_zero_point, x.grid.signed) != x.grid.zero_point:
        raise ConfigError(f"{name}: input zero point {a.input_zero_point} differs from the grid of {node.inputs[0]!r}")
    codes, zp = unsigned_codes(b, x, name)
    wt, w_zp = _weights(b, _t(node, "weight").numpy().astype(np.int8), f"{name}_w")
    acc = b.add("Cast", [b.add("MatMulInteger", [codes, wt, b.const(f"{name}_x_zp", np.array(zp, np.uint8)), w_zp],
                               f"{name}_mm")], f"{name}_acc", to=7)
    acc = b.add("Add", [acc, _c(b, f"{name}_bias", _t(node, "bias").numpy().astype(I64))], f"{name}_biased")
    _finish(b, node, acc, (-1,))


def conv_exact_ok(node: Node) -> bool:
    """A plain requantized int8 convolution (one input, 8-bit codes padded with their zero point, int8 weights)
    that :func:`emit_conv` writes."""
    a = node.op.ir
    return (isinstance(a, ir.Conv2d) and a.weight_codes is ir.WeightCodes.INT and a.input_bits == 8
            and a.pad_value is None and _plain_stage(node))


def emit_conv(b: _Builder, node: Node) -> None:
    """A convolution in the integer model's own arithmetic (``export_onnx(exact_layers=True)``): the uint8 codes
    padded with their zero point (``Pad``), ``ConvInteger`` (uint8 x uint8, the weights ``w + 128`` with zero point
    128), then per output channel ``clamp(z_y + round_even((acc + bias) m / 2^n), lo, hi)`` in int64. Exact where
    the QDQ form's ``QLinearConv`` rounds ``acc * float32 multiplier`` in float32 (one code in about 10^5-10^6 lands
    on the other side of a half)."""
    from lowbit.export.onnx_qdq import _Grid

    a, name = node.op.ir, node.output
    x = b.integer_input(node)
    if _Grid.code(a.input_zero_point, x.grid.signed) != x.grid.zero_point:
        raise ConfigError(f"{name}: input zero point {a.input_zero_point} differs from the grid of {node.inputs[0]!r}")
    codes, zp = unsigned_codes(b, x, name)
    top, left, bottom, right = b._conv_pads(node)
    if top or left or bottom or right:
        codes = b.add("Pad", [codes, b.const(f"{name}_pads", np.array([0, 0, top, left, 0, 0, bottom, right], I64)),
                              b.const(f"{name}_pad_code", np.array(zp, np.uint8))], f"{name}_padded", mode="constant")
    w = _t(node, "weight").numpy().astype(np.int8)
    wu = b.const(f"{name}_w", (w.astype(np.int16) + 128).astype(np.uint8))
    acc = b.add("ConvInteger", [codes, wu, b.const(f"{name}_x_zp", np.array(zp, np.uint8)),
                                b.const(f"{name}_w_zp", np.array(128, np.uint8))], f"{name}_conv",
                kernel_shape=list(w.shape[2:]), strides=list(a.stride), dilations=list(a.dilation), group=a.groups)
    per_channel = (-1, 1, 1)
    acc = b.add("Add", [b.add("Cast", [acc], f"{name}_acc", to=7),
                        _c(b, f"{name}_bias", _t(node, "bias").numpy().astype(I64).reshape(per_channel))],
                f"{name}_biased")
    _finish(b, node, acc, per_channel)


# ---------------------------------------------------------------- l2normalize


def emit_l2normalize(b: _Builder, node: Node) -> None:
    """``l2normalize`` in int64 ops (module docstring). The integer square root of ``0 <= u <= 2^16`` is
    ``Floor(Sqrt(double(u)))`` exactly: ``u`` is exact in a double and IEEE ``Sqrt`` is correctly rounded; for
    ``k = isqrt(u)``, ``k <= sqrt(u) < k + 1``, and where ``u < (k + 1)^2`` the gap ``k + 1 - sqrt(u) >=
    1 / (2 (k + 1)) >= 2^-9`` dwarfs the rounding error (``<= 2^-44`` near 256), so the rounded root stays below
    ``k + 1``; a perfect square rounds to itself."""
    from lowbit.export.onnx_qdq import _Grid

    a, name = node.op.ir, node.output
    x = b.integer_input(node)
    if _Grid.code(a.input_zero_point, x.grid.signed) != x.grid.zero_point:
        raise ConfigError(f"{name}: input zero point {a.input_zero_point} differs from the grid of {node.inputs[0]!r}")
    v = b.add("Sub", [b.add("Cast", [x.codes], f"{name}_i64", to=7), _c(b, f"{name}_zp", x.grid.zero_point)],
              f"{name}_centred")
    sq = b.add("Mul", [v, v], f"{name}_sq")
    s = b.add("ReduceSum", [sq, _c(b, f"{name}_axes", [a.dim])], f"{name}_sum", keepdims=1)
    num = b.add("Mul", [sq, _c(b, f"{name}_scale", 1 << (2 * (OUT_FRAC + 1)))], f"{name}_num")
    u = b.add("Div", [num, b.add("Max", [s, _c(b, f"{name}_one", 1)], f"{name}_den")], f"{name}_u")  # >= 0: floor
    root = b.add("Floor", [b.add("Sqrt", [b.add("Cast", [u], f"{name}_f64", to=11)], f"{name}_sqrt")],  # 11: DOUBLE
                 f"{name}_isqrt")
    k = b.add("Div", [b.add("Add", [b.add("Cast", [root], f"{name}_root", to=7), _c(b, f"{name}_r1", 1)],
                            f"{name}_r_plus"), _c(b, f"{name}_two", 2)], f"{name}_k")
    k = b.add("Min", [k, _c(b, f"{name}_max", OUT_MAX)], f"{name}_kmax")
    y = b.add("Mul", [b.add("Sign", [v], f"{name}_sign"), k], f"{name}_y")  # S = 0: every x = 0, sign 0
    grid = _Grid.of(node.grid)
    b.record(b.add("Cast", [y], f"{name}_codes", to=3), grid, name)  # 3: INT8


# ---------------------------------------------------------------- layernorm


def emit_layernorm(b: _Builder, node: Node) -> None:
    """``layernorm`` in int64 ops (:mod:`lowbit.functional.layernorm`): ``X = (codes - z_c) M_c``, ``mu`` by
    :func:`floor_div` of ``2 ReduceSum(X) + C`` by ``2 C``, ``D = X - mu``, ``var = ReduceSum(D^2) / C + E``
    (of ``D >> 9``; non-negative: a floor), ``sigma`` the exact integer root of ``var < 2^53`` as in :func:`emit_magnitude`, then
    ``r = Sign(num) ((2 |num| + den) / (2 den))`` (non-negative division: a floor) with ``num = D A + B sigma 2^9``,
    ``den = sigma 2^(k + 9)`` (``sigma = 0``: ``D = 0``, ``sigma = 1``), the output zero point and bounds."""
    from lowbit.export.onnx_qdq import _Grid

    a, name, t = node.op.ir, node.output, node.op.tensors
    x = b.integer_input(node)
    c = int(t["multipliers"].numel())
    zp = _t(node, "zero_points").numpy().astype(I64) + (0 if x.grid.signed else 128)  # ONNX codes
    xc = b.add("Sub", [b.add("Cast", [x.codes], f"{name}_i64", to=7), _c(b, f"{name}_in_zp", zp)], f"{name}_centred")
    big = b.add("Mul", [xc, _c(b, f"{name}_mult", _t(node, "multipliers").numpy())], f"{name}_fine")
    axes = _c(b, f"{name}_axes", [-1])
    total = b.add("ReduceSum", [big, axes], f"{name}_sum", keepdims=1)
    twice = b.add("Add", [b.add("Mul", [total, _c(b, f"{name}_two", 2)], f"{name}_sum2"), _c(b, f"{name}_c", c)],
                  f"{name}_sum2c")
    mu = floor_div(b, twice, _c(b, f"{name}_2c", 2 * c), f"{name}_mean")
    d = b.add("Sub", [big, mu], f"{name}_dev")
    dv = floor_div(b, d, _c(b, f"{name}_vshift", 1 << VAR_SHIFT), f"{name}_dv")  # D >> 9
    var = b.add("Div", [b.add("ReduceSum", [b.add("Mul", [dv, dv], f"{name}_sq"), axes], f"{name}_sqsum", keepdims=1),
                        _c(b, f"{name}_count", c)], f"{name}_var0")  # >= 0: a floor
    v = b.add("Add", [var, _c(b, f"{name}_eps", a.eps)], f"{name}_var")
    sigma = isqrt(b, v, name)
    zero = b.add("Equal", [sigma, _c(b, f"{name}_zero", 0)], f"{name}_flat")
    d = b.add("Where", [zero, _c(b, f"{name}_zeros", 0), d], f"{name}_dev0")
    sigma = b.add("Max", [sigma, _c(b, f"{name}_one_s", 1)], f"{name}_sigma")
    num = b.add("Add", [b.add("Mul", [d, _c(b, f"{name}_gamma", _t(node, "gamma").numpy())], f"{name}_dg"),
                        b.add("Mul", [sigma, _c(b, f"{name}_beta", _t(node, "beta").numpy() << VAR_SHIFT)],
                              f"{name}_bs")], f"{name}_num")
    den = b.add("Mul", [sigma, _c(b, f"{name}_pow", 1 << (a.shift + VAR_SHIFT))], f"{name}_den")
    top = b.add("Add", [b.add("Mul", [b.add("Abs", [num], f"{name}_abs"), _c(b, f"{name}_two_n", 2)], f"{name}_abs2"),
                        den], f"{name}_top")
    k = b.add("Div", [top, b.add("Mul", [den, _c(b, f"{name}_two_d", 2)], f"{name}_den2")], f"{name}_k")  # a floor
    k = b.add("Mul", [k, b.add("Sign", [num], f"{name}_sign")], f"{name}_round")
    grid = _Grid.of(node.grid)
    q = clamp(b, b.add("Add", [k, _c(b, f"{name}_out_zp", grid.zero_point)], f"{name}_shifted"),
              _Grid.code(a.lo, grid.signed), _Grid.code(a.hi, grid.signed), name)
    b.record(b.add("Cast", [q], f"{name}_codes", to=3 if grid.signed else 2), grid, name)  # 3: INT8, 2: UINT8


# ---------------------------------------------------------------- magnitude


def emit_magnitude(b: _Builder, node: Node) -> None:
    """``magnitude`` in int64 ops (:mod:`lowbit.functional.magnitude`): ``x, y = codes - z``, ``v = (x^2 + y^2)
    (4 m^2)`` (``< 2^49``), ``r = Floor(Sqrt(double(v)))`` then the exact correction ``r - (r^2 > v)``,
    ``r + ((r + 1)^2 <= v)`` (``v`` is exact in a double, the IEEE root correctly rounded: within one of the
    floor, which the correction makes exact), ``k = (r + 2^n) / 2^(n+1)`` (non-negative: a floor), then the output
    zero point and the bounds, cast to the output grid's codes."""
    from lowbit.export.onnx_qdq import _Grid

    a, name = node.op.ir, node.output
    xs = [b.integer_input(node, i) for i in range(2)]
    centred = []
    for i, x in enumerate(xs):
        if _Grid.code(a.input_zero_point, x.grid.signed) != x.grid.zero_point:
            raise ConfigError(f"{name}: input zero point {a.input_zero_point} differs from the grid of "
                              f"{node.inputs[i]!r}")
        centred.append(b.add("Sub", [b.add("Cast", [x.codes], f"{name}_in{i}_i64", to=7),
                                     _c(b, f"{name}_in{i}_zp", x.grid.zero_point)], f"{name}_in{i}_centred"))
    s = b.add("Add", [b.add("Mul", [v, v], f"{name}_sq{i}") for i, v in enumerate(centred)], f"{name}_sum")
    v = b.add("Mul", [s, _c(b, f"{name}_4m2", 4 * a.multiplier * a.multiplier)], f"{name}_v")
    r = isqrt(b, v, name)
    k = b.add("Div", [b.add("Add", [r, _c(b, f"{name}_half", 1 << a.shift)], f"{name}_rounded"),
                      _c(b, f"{name}_div", 1 << (a.shift + 1))], f"{name}_k")  # >= 0: a floor
    grid = _Grid.of(node.grid)
    q = clamp(b, b.add("Add", [k, _c(b, f"{name}_out_zp", grid.zero_point)], f"{name}_shifted"),
              _Grid.code(a.lo, grid.signed), _Grid.code(a.hi, grid.signed), name)
    b.record(b.add("Cast", [q], f"{name}_codes", to=3 if grid.signed else 2), grid, name)  # 3: INT8, 2: UINT8


# ---------------------------------------------------------------- recurrent (LSTM)


def _t(node: Node, key: str):
    return node.op.tensors[key].detach().cpu()


def _weights(b: _Builder, w: np.ndarray, base: str) -> tuple[str, str]:
    """``MatMulInteger``'s B and zero point for int8 weights ``w`` (O, K): ``w^T + 128`` as uint8, zero point 128.
    uint8 x uint8 is exact on every CPU, where onnxruntime's uint8 x int8 kernels saturate pairs of products on x86
    without VNNI (:mod:`lowbit.export.ort`) unless the session sets ``session.x64quantprecision``."""
    wt = (np.ascontiguousarray(w.T).astype(np.int16) + 128).astype(np.uint8)
    return b.const(f"{base}_t", wt), b.const(f"{base}_zp", np.array(128, np.uint8))


def _projection(b: _Builder, node: Node, seq: str, zp: int, wide: bool, k: int) -> str:
    """int64 ``(x - zp) @ w_ih_k^T`` of the (T, B, I) codes ``seq``: uint8 codes (``zp`` their zero point) or, when
    ``wide``, int32 stored int16 codes (two byte planes)."""
    name = f"{node.output}_l{k}"
    w = _t(node, f"w_ih_{k}").numpy().astype(np.int8)
    wt, w_zp = _weights(b, w, f"{name}_w_ih")
    if not wide:
        zp_u = b.const(f"{name}_x_zp", np.array(zp, np.uint8))
        return b.add("Cast", [b.add("MatMulInteger", [seq, wt, zp_u, w_zp], f"{name}_mm")], f"{name}_acc", to=7)
    u = b.add("Add", [seq, b.const(f"{name}_u16", np.array(1 << 15, np.int32))], f"{name}_u")  # 0..65535
    hi = b.add("Div", [u, b.const(f"{name}_256", np.array(256, np.int32))], f"{name}_hi")  # >= 0: floor
    lo = b.add("Sub", [u, b.add("Mul", [hi, b.const(f"{name}_256m", np.array(256, np.int32))], f"{name}_hi256")],
               f"{name}_lo")
    # both planes in one MatMulInteger (2, T, B, I): onnxruntime refuses two MatMulIntegers sharing a weight here
    zero = _c(b, f"{name}_plane_axis", [0])
    planes = b.add("Concat", [b.add("Unsqueeze", [b.add("Cast", [p], f"{name}_{t}8", to=2), zero], f"{name}_{t}1")
                              for p, t in ((hi, "hi"), (lo, "lo"))], f"{name}_planes", axis=0)  # 2: UINT8
    both = b.add("Cast", [b.add("MatMulInteger", [planes, wt, b.const(f"{name}_plane_zp", np.array(0, np.uint8)),
                                                  w_zp], f"{name}_mm")], f"{name}_acc_planes", to=7)
    accs = [b.add("Gather", [both, _c(b, f"{name}_plane{j}", j)], f"{name}_acc_{t}", axis=0)
            for j, t in ((0, "hi"), (1, "lo"))]
    acc = b.add("Add", [b.add("Mul", [accs[0], _c(b, f"{name}_x256", 256)], f"{name}_acc_hi256"), accs[1]],
                f"{name}_acc_u")
    corr = (zp + (1 << 15)) * w.astype(np.int64).sum(axis=1)
    return b.add("Sub", [acc, _c(b, f"{name}_zp_rows", corr)], f"{name}_acc")


def _step_start(b: _Builder, node: Node, k: int, states: tuple[str, ...], gates: int):
    """A ``Scan`` body's builder, its input names (``states`` then the step's ``px``), the tables (``sigmoid`` then
    ``tanh``, int64) and the recurrent part ``ph = Rh(w_hh h) + b_hh`` (B, G H) of layer ``k``."""
    from lowbit.export.onnx_qdq import _Builder

    sub = _Builder(b.onnx, b.shapes, False, b.opset)
    sub.used = b.used  # names stay unique across the graphs
    name = f"{node.output}_l{k}_step"
    w_hh = _t(node, f"w_hh_{k}").numpy().astype(np.int8)
    ins = tuple(sub.fresh(f"{name}_{s}") for s in (*states, "px"))
    hu = sub.add("Cast", [sub.add("Add", [ins[0], _c(sub, f"{name}_128", 128)], f"{name}_hu64")], f"{name}_hu", to=2)
    wt, w_zp = _weights(sub, w_hh, f"{name}_w_hh")
    mm = sub.add("MatMulInteger", [hu, wt, sub.const(f"{name}_h_zp", np.array(128, np.uint8)), w_zp], f"{name}_mm")
    acc = sub.add("Cast", [mm], f"{name}_acc", to=7)
    ph = requantize_part(sub, acc, _t(node, f"m_hh_{k}"), _t(node, f"n_hh_{k}"), _t(node, f"b_hh_{k}"), f"{name}_ph")
    table = np.concatenate([_t(node, "sigmoid").numpy(), _t(node, "tanh").numpy()]).astype(I64)
    return sub, name, ins, sub.const(f"{name}_tables", table), ph


def _index(sub: _Builder, p: str, tanh: bool | np.ndarray, base: str) -> str:
    """The index into the concatenated tables of pre-activations ``p``: ``clamp(p + 2048, 0, 4095)``, plus 4096
    where the tanh half is read (``tanh``: a bool, or one per column)."""
    idx = clamp(sub, sub.add("Add", [p, _c(sub, f"{base}_half", HALF)], f"{base}_shift"), 0, 2 * HALF - 1, base)
    offset = np.where(tanh, 2 * HALF, 0).astype(I64)
    return idx if not offset.any() else sub.add("Add", [idx, _c(sub, f"{base}_offset", offset)], f"{base}_tab")


def _slices(sub: _Builder, t: str, n: int, hsize: int, base: str) -> list[str]:
    axes = _c(sub, f"{base}_axis", [1])
    return [sub.add("Slice", [t, _c(sub, f"{base}_s{j}", [j * hsize]), _c(sub, f"{base}_e{j}", [(j + 1) * hsize]),
                              axes], f"{base}_{j}") for j in range(n)]


def _body_graph(b: _Builder, sub: _Builder, name: str, ins: tuple[str, ...], outs: list[str], hsize: int,
                gates: int):
    """The body graph: int64 inputs ``ins`` (states (B, H), then px (B, G H)), outputs ``outs`` (B, H)."""
    tp, h_ = b.onnx.TensorProto, b.h
    dims = ["B", hsize]
    inputs = [h_.make_tensor_value_info(n, tp.INT64, dims) for n in ins[:-1]]
    inputs.append(h_.make_tensor_value_info(ins[-1], tp.INT64, ["B", gates * hsize]))
    return h_.make_graph(sub.nodes, name, inputs, [h_.make_tensor_value_info(n, tp.INT64, dims) for n in outs],
                         initializer=sub.inits)


def _lstm_body(b: _Builder, node: Node, k: int):
    """The ``Scan`` body of LSTM layer ``k``: states ``h``, ``c`` (B, H) int64 and the step's ``px`` (B, 4H) ->
    ``h'``, ``c'``, ``h'`` (the scanned output); :func:`lowbit.functional.fixed_rnn.lstm_step`."""
    hsize = _t(node, f"w_hh_{k}").shape[1]
    sub, name, (h, c, px), tables, ph = _step_start(b, node, k, ("h", "c"), 4)
    pre = sub.add("Add", [px, ph], f"{name}_pre")
    # one Gather from (sigmoid, tanh): the g gate's columns (i, f, g, o) read tanh, the others sigmoid
    act = sub.add("Gather", [tables, _index(sub, pre, np.repeat(np.arange(4) == 2, hsize), f"{name}_idx")],
                  f"{name}_gates", axis=0)
    i, f, g, o = _slices(sub, act, 4, hsize, f"{name}_gate")
    fc = shift_half_up(sub, sub.add("Mul", [f, c], f"{name}_fc"), 15, f"{name}_fc15")
    ig = shift_half_up(sub, sub.add("Mul", [i, g], f"{name}_ig"), 19, f"{name}_ig19")
    c_new = clamp(sub, sub.add("Add", [fc, ig], f"{name}_csum"), -PART_MAX - 1, PART_MAX, f"{name}_c_new")
    tc = sub.add("Gather", [tables, _index(sub, shift_half_up(sub, c_new, C_FRAC - PRE_FRAC, f"{name}_c8"), True,
                                           f"{name}_cidx")], f"{name}_tc", axis=0)
    h_new = clamp(sub, shift_half_up(sub, sub.add("Mul", [o, tc], f"{name}_otc"), 23, f"{name}_h23"), -H_MAX, H_MAX,
                  f"{name}_h_new")
    h_out = sub.add("Identity", [h_new], f"{name}_h_out")
    return _body_graph(b, sub, name, (h, c, px), [h_new, c_new, h_out], hsize, 4)


def _gru_body(b: _Builder, node: Node, k: int):
    """The ``Scan`` body of GRU layer ``k``: state ``h`` (B, H) int64 and the step's ``px`` (B, 3H) -> ``h'``,
    ``h'`` (the scanned output); :func:`lowbit.functional.fixed_rnn.gru_step`."""
    hsize = _t(node, f"w_hh_{k}").shape[1]
    sub, name, (h, px), tables, ph = _step_start(b, node, k, ("h",), 3)
    xr, xz, xn = _slices(sub, px, 3, hsize, f"{name}_x")
    hr, hz, hn = _slices(sub, ph, 3, hsize, f"{name}_h")
    r, z = (sub.add("Gather", [tables, _index(sub, sub.add("Add", [x_, h_], f"{name}_p{g}"), False, f"{name}_i{g}")],
                    f"{name}_{g}", axis=0) for x_, h_, g in ((xr, hr, "r"), (xz, hz, "z")))
    rh = shift_half_up(sub, sub.add("Mul", [r, clamp(sub, hn, -PART_MAX - 1, PART_MAX, f"{name}_hn")], f"{name}_rh"),
                       15, f"{name}_rh15")
    n = sub.add("Gather", [tables, _index(sub, sub.add("Add", [xn, rh], f"{name}_pn"), True, f"{name}_in")],
                f"{name}_n", axis=0)
    d = sub.add("Sub", [sub.add("Mul", [h, _c(sub, f"{name}_h256", 1 << (15 - H_FRAC))], f"{name}_h15"), n],
                f"{name}_d")
    h15 = sub.add("Add", [n, shift_half_up(sub, sub.add("Mul", [z, d], f"{name}_zd"), 15, f"{name}_zd15")],
                  f"{name}_hsum")
    h_new = clamp(sub, shift_half_up(sub, h15, 15 - H_FRAC, f"{name}_h8"), -H_MAX, H_MAX, f"{name}_h_new")
    h_out = sub.add("Identity", [h_new], f"{name}_h_out")
    return _body_graph(b, sub, name, (h, px), [h_new, h_out], hsize, 3)


def emit_recurrent(b: _Builder, node: Node) -> None:
    """The ``recurrent`` op, LSTM or GRU (module docstring)."""
    from lowbit.export.onnx_qdq import _Grid

    a, name = node.op.ir, node.output
    lstm = a.cell is ir.Cell.LSTM
    src = node.inputs[0]
    wide = a.input_bits == 16
    if wide:
        seq, zp = b.wide[src], a.input_zero_point
    else:
        x = b.integer_input(node)
        if _Grid.code(a.input_zero_point, x.grid.signed) != x.grid.zero_point:
            raise ConfigError(f"{name}: input zero point {a.input_zero_point} differs from the grid of {src!r}")
        seq, zp = unsigned_codes(b, x, name)  # zp: the stored zero point + 128
    if a.batch_first:  # (N, T, I) -> (T, N, I)
        seq = b.add("Transpose", [seq], f"{name}_tnc", perm=[1, 0, 2])
    if a.step:  # a cell: (N, I) -> one step (1, N, I)
        seq = b.add("Unsqueeze", [seq, _c(b, f"{name}_axis0", [0])], f"{name}_seq")
    state = _initial_state(b, node)
    for k in range(a.num_layers):
        acc = _projection(b, node, seq, zp, wide and k == 0, k)
        px = requantize_part(b, acc, _t(node, f"m_ih_{k}"), _t(node, f"n_ih_{k}"), _t(node, f"b_ih_{k}"),
                             f"{name}_l{k}_px")
        hsize = _t(node, f"w_hh_{k}").shape[1]
        batch = b.add("Slice", [b.add("Shape", [px], f"{name}_l{k}_shape"), _c(b, f"{name}_l{k}_b0", [1]),
                                _c(b, f"{name}_l{k}_b1", [2])], f"{name}_l{k}_batch")
        dims = b.add("Concat", [batch, _c(b, f"{name}_l{k}_hsize", [hsize])], f"{name}_l{k}_dims", axis=0)
        zeros = b.add("ConstantOfShape", [dims], f"{name}_l{k}_zeros",
                      value=b.nh.from_array(np.zeros(1, I64)))
        h0, c0 = (state + [zeros, zeros])[:2] if state else (zeros, zeros)
        outs = [b.fresh(f"{name}_l{k}_{s}") for s in (("h_n", "c_n", "hs") if lstm else ("h_n", "hs"))]
        b.nodes.append(b.h.make_node("Scan", [h0, c0, px] if lstm else [h0, px], outs,
                                     name=b.fresh(f"{name}_l{k}/Scan"), num_scan_inputs=1,
                                     body=(_lstm_body if lstm else _gru_body)(b, node, k)))
        h_n, hs, c_n = outs[0], outs[-1], outs[1] if lstm else None
        if k + 1 < a.num_layers:  # the next layer reads h + 128 as uint8, zero point 128
            seq = b.add("Cast", [b.add("Add", [hs, _c(b, f"{name}_l{k}_128", 128)], f"{name}_l{k}_hu64")],
                        f"{name}_l{k}_hu8", to=2)
            zp = 128
    if a.emit is ir.Emit.C:
        scale = b.const(f"{name}_c_scale", np.array(2.0 ** -C_FRAC, np.float32))
        b.values[name] = type(b.values[src])(b.add("Mul", [b.add("Cast", [c_n], f"{name}_cf", to=1), scale],
                                                   f"{name}_c_values"))  # 1: FLOAT (exact: |c| < 2^15)
        return
    y = h_n if a.emit is ir.Emit.H else hs
    if a.emit is ir.Emit.OUTPUT and a.batch_first:
        y = b.add("Transpose", [y], f"{name}_ntc", perm=[1, 0, 2])
    b.record(b.add("Cast", [y], f"{name}_codes", to=3), _Grid.of(node.grid), name)


def _initial_state(b: _Builder, node: Node) -> list[str]:
    """A cell step's state inputs as int64: ``h`` from its int8 codes, an LSTM's ``c`` from its int16 codes (the
    16-bit ``quantize`` keeps them in ``b.wide``); empty for an op from a zero state."""
    out = []
    for k, src in enumerate(node.inputs[1:]):
        codes = b.wide[src] if k == 1 else b.integer_input(node, k + 1).codes
        out.append(b.add("Cast", [codes], f"{node.output}_state{k}", to=7))  # 7: INT64
    return out


def emit_quantize16(b: _Builder, node: Node) -> None:
    """A 16-bit ``quantize`` (read only by a recurrent op; ``op_quantize`` has checked its float input): its stored
    int16 codes as int32, by the integer model's own float32 ops (:func:`quantized_values`)."""
    a, name = node.op.ir, node.output
    x = b.values[node.inputs[0]]
    v = quantized_values(b, x.float_name, a.scale, a.zero_point, a.lo, a.hi, name)
    codes = b.add("Cast", [v], f"{name}_codes", to=6)  # 6: INT32 (stored int16 codes)
    b.wide[name] = codes
    b.values[name] = type(x)(codes)  # (no float twin: only a recurrent op reads it, through b.wide)


__all__ = ["emit_l2normalize", "emit_layernorm", "emit_magnitude", "emit_linear", "emit_quantize16", "emit_recurrent", "floor_div", "linear_exact_ok",
           "quantized_values", "rshift_even", "unsigned_codes"]

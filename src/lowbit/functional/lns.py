"""Logarithmic number system (LNS): fixed-point log codes, products as additions, approximate log-domain sums.

Sanyal, Beerel, Chugg (2019), "Neural Network Training with Approximate Logarithmic Computations"
(arXiv 1910.09876): train and run a network with every value a sign and a fixed-point log magnitude,

    v = (-1)^s * 2^X,        X = code * 2^-F   (F = ``frac_bits``)

so a product is an addition of codes and an xor of signs, and a sum needs the two functions

    Delta+(d) = log2(1 + 2^-d),     Delta-(d) = log2(1 - 2^-d),     d = |Xa - Xb| >= 0:

    a (+) b = (-1)^s_hi * 2^(X_hi + Delta±(d))       (+ for equal signs, - for opposite ones)

with ``hi`` the operand of larger magnitude. The paper approximates Delta± by a small lookup table (20 entries
suffice) or by bit shifts (Mitchell's approximations), which is what :class:`LUT` and :class:`Shift` do.

Word layout of a ``bits``-bit number: one sign bit and a ``(bits - 1)``-bit two's complement log code, so codes
lie in ``[-2^(bits-2), 2^(bits-2) - 1]``; the most negative code ``-2^(bits-2)`` is reserved for exact zero
(:attr:`LNSFormat.zero_code`), the others are magnitudes ``2^(code * 2^-F)``. Results above the largest code
saturate; results below the smallest non-zero code underflow to zero. A zero's sign is 0 in every result (and
ignored in an input).

Working representation: inside a computation zero is held as a sentinel far below every code
(:attr:`LNSFormat.sentinel`), so that ``zero * v`` and ``zero (+) v`` need no masks (``sentinel + code`` stays
below the smallest code; ``d`` against a zero is beyond every table). :func:`to_work` / :func:`from_work`
convert at the boundary; the public functions take and return the reserved-code form.

Approximate (+) is commutative but not associative, so :func:`lns_sum` fixes its order (a pairwise tree).

>>> import torch
>>> fmt = LNSFormat(16, 10)
>>> a, b = encode(torch.tensor([4.0, 1.0, 1.0]), fmt), encode(torch.tensor([0.5, 1.0, -1.0]), fmt)
>>> a.code.tolist(), fmt.zero_code
([2048, 0, 0], -16384)
>>> decode(mul(a, b)).tolist()
[2.0, 1.0, -1.0]
>>> [round(v, 3) for v in decode(add(a, b, Exact())).tolist()]
[4.5, 2.0, 0.0]
>>> [round(v, 3) for v in decode(add(a, b, LUT(20))).tolist()]  # bin 0 of the table: 1 (+) 1 = 1.854
[4.427, 1.854, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError, DataError
from lowbit.functional._checks import check_tensor

MAX_LUT_ENTRIES = 20


@dataclass(frozen=True)
class LNSFormat:
    """``bits``-bit LNS word: sign + ``(bits-1)``-bit two's complement log code with ``frac_bits`` fractional bits.

    ``bits`` in 4..32, ``0 <= frac_bits < bits - 1`` (at least the sign bit of the code stays integer). The log
    magnitude spans about ``+-2^(bits-2-frac_bits)``: 16 bits with 10 fractional bits covers ``2^-16 .. 2^16``
    in steps of ``2^-10`` (a relative step of 0.07 %).
    """

    bits: int
    frac_bits: int

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 4 <= self.bits <= 32:
            raise ConfigError(f"LNSFormat bits={self.bits!r} is out of range: pass an integer from 4 to 32 "
                              "(the word: 1 sign bit + a (bits-1)-bit log code)")
        if (isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int)
                or not 0 <= self.frac_bits < self.bits - 1):
            raise ConfigError(f"LNSFormat frac_bits={self.frac_bits!r} does not fit a {self.bits}-bit word: pass an "
                              f"integer from 0 to {self.bits - 2} (the log code has {self.bits - 1} bits, one of "
                              "them its sign)")

    @property
    def zero_code(self) -> int:
        """The reserved code for exact zero: the most negative code, ``-2^(bits-2)``."""
        return -(1 << (self.bits - 2))

    @property
    def code_min(self) -> int:
        """Smallest non-zero code (magnitude ``2^(code_min * 2^-F)``)."""
        return self.zero_code + 1

    @property
    def code_max(self) -> int:
        return (1 << (self.bits - 2)) - 1

    @property
    def scale(self) -> int:
        """Codes per unit of log2: ``2^F``."""
        return 1 << self.frac_bits

    @property
    def dtype(self) -> torch.dtype:
        """Code dtype: int32 holds codes, sums of two codes and the sentinel up to 24 bits, int64 beyond."""
        return torch.int32 if self.bits <= 24 else torch.int64

    @property
    def sentinel(self) -> int:
        """Working-form zero: ``-2^(bits+2)``, below ``code_min - 2 * code_max``, so it survives a product."""
        return -(1 << (self.bits + 2))


@dataclass(frozen=True)
class LNSTensor:
    """LNS values: ``sign`` (int8, 1 = negative) and ``code`` (``fmt.dtype``), of one shape."""

    sign: torch.Tensor
    code: torch.Tensor
    fmt: LNSFormat

    def __post_init__(self) -> None:
        if self.sign.shape != self.code.shape:
            raise DataError(f"LNSTensor sign shape {tuple(self.sign.shape)} differs from code shape "
                            f"{tuple(self.code.shape)}: pass two tensors of one shape")

    @property
    def shape(self) -> torch.Size:
        return self.code.shape


# Delta modes ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exact:
    """Delta± computed in float64 and rounded to the code grid: the correctly rounded log-domain sum of two codes."""


@dataclass(frozen=True)
class MaxOnly:
    """Delta± = 0: ``a (+) b`` is the operand of larger magnitude (the crudest approximation; equal magnitudes of
    opposite sign still give zero)."""


@dataclass(frozen=True)
class LUT:
    """Delta± from an ``n``-entry table over ``d in [0, d_max)`` in uniform bins, 0 beyond ``d_max``.

    Entry ``k`` covers ``[lo, hi) = [k, k+1) * d_max / n`` and holds the code of ``log2(1 ± m_k)`` with
    ``m_k = (2^-lo + 2^-hi) / 2``, the middle of the bin's range of ``2^-d``: a sum's error is then at most half
    the bin's spread of ``2^-d`` times the larger operand (plus rounding), the same bound for Delta+ and Delta-
    (whose log error is large near ``d -> 0``, where the result is small). ``d = 0`` with opposite signs is exact
    zero. ``n`` in 1..20 (the paper: 20 entries suffice).
    """

    n: int = MAX_LUT_ENTRIES
    d_max: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_LUT_ENTRIES:
            raise ConfigError(f"LUT(n={self.n!r}): the table needs 1 to {MAX_LUT_ENTRIES} entries")
        if not (isinstance(self.d_max, (int, float)) and math.isfinite(self.d_max) and self.d_max > 0):
            raise ConfigError(f"LUT(d_max={self.d_max!r}): pass a positive finite log2 distance (e.g. 10.0)")


@dataclass(frozen=True)
class Shift:
    """Mitchell's approximations, shifts and adds only.

    ``2^-d`` for ``d = i + f`` (integer ``i``, fraction ``f``): ``2^-(i+1) * 2^(1-f) ~ 2^-(i+1) * (2 - f)``, a
    shift of ``(2 - f)``; ``log2(1 + y) ~ y`` for ``y in [0, 1]``, so ``Delta+(d) ~ 2^-d``. Delta- is handled
    explicitly, because ``log2(1 - y) -> -inf`` as ``d -> 0``: ``v = 1 - y`` is formed in fixed point and its log
    taken with Mitchell's ``log2(2^m (1 + t)) ~ m + t`` (``m`` the leading-one position of ``v``, a priority
    encoder in hardware, here ``frexp``), so the result keeps the right magnitude down to ``d`` of one code step
    (``v = 0``, i.e. ``d = 0``, gives exact zero). Measured over every ``d`` (16, 12, 10 bits with 10, 6, 4
    fractional bits): Delta+ is within 0.09 / 0.10 / 0.13 of log2(1 + 2^-d); Delta- is within 0.06 |hi| of the
    sum in the linear domain, its log error reaching 0.56 only as ``d -> 0`` (where the sum is small).
    """


Delta = Exact | MaxOnly | LUT | Shift


def check_delta(delta: object) -> Delta:
    if not isinstance(delta, (Exact, MaxOnly, LUT, Shift)):
        raise ConfigError(f"delta={delta!r} is not a log-domain addition mode: pass Exact(), MaxOnly(), LUT(n) "
                          "or Shift()")
    return delta


def _check_same(a: LNSTensor, b: LNSTensor) -> LNSFormat:
    if a.fmt != b.fmt:
        raise ConfigError(f"LNS operands of different formats ({a.fmt} and {b.fmt}): encode both in one format")
    return a.fmt


# Encoding ------------------------------------------------------------------------------------------------------


def encode(x: torch.Tensor, fmt: LNSFormat) -> LNSTensor:
    """``code = round(log2|x| * 2^F)`` (ties upwards in the log domain), saturated at ``code_max``; codes
    below ``code_min`` and ``x = 0`` become the zero code (sign 0). Round-to-nearest in log2 keeps ``|log2|x| - X|`` at or
    below half a code step for every ``x`` in range."""
    check_tensor(x, "LNS input")
    x64 = x.detach().to(torch.float64)
    mag = x64.abs()
    logc = torch.log2(mag.clamp_min(torch.finfo(torch.float64).tiny)) * fmt.scale
    code = torch.floor(logc + 0.5).clamp(min=fmt.zero_code, max=fmt.code_max)
    code = torch.where((mag == 0) | (code < fmt.code_min), float(fmt.zero_code), code)
    return LNSTensor(((x64 < 0) & (code != fmt.zero_code)).to(torch.int8), code.to(fmt.dtype), fmt)


def decode(t: LNSTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(-1)^s 2^(code / 2^F)``, 0 for the zero code; computed in float64, returned as ``dtype``."""
    mag = torch.exp2(t.code.to(torch.float64) / t.fmt.scale)
    val = torch.where(t.sign.bool(), -mag, mag)
    return torch.where(t.code == t.fmt.zero_code, torch.zeros_like(val), val).to(dtype)


def to_work(t: LNSTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(negative: bool, code)`` with zero held as the sentinel (see the module docstring)."""
    code = torch.where(t.code == t.fmt.zero_code, torch.full_like(t.code, t.fmt.sentinel), t.code)
    return t.sign.bool(), code


def from_work(neg: torch.Tensor, code: torch.Tensor, fmt: LNSFormat) -> LNSTensor:
    """Back to the public form: codes below ``code_min`` (the sentinel, underflows) become the zero code, whose
    sign is cleared."""
    zero = code < fmt.code_min
    code = torch.where(zero, torch.full_like(code, fmt.zero_code), code)
    return LNSTensor((neg & ~zero).to(torch.int8), code, fmt)


def zeros(shape: tuple[int, ...], fmt: LNSFormat) -> LNSTensor:
    return LNSTensor(torch.zeros(shape, dtype=torch.int8), torch.full(shape, fmt.zero_code, dtype=fmt.dtype), fmt)


def neg(t: LNSTensor) -> LNSTensor:
    """``-t``: flip the sign bits (a zero keeps sign 0)."""
    return LNSTensor(torch.where(t.code == t.fmt.zero_code, 0, 1 - t.sign).to(torch.int8), t.code, t.fmt)


# Products ------------------------------------------------------------------------------------------------------


def mul_work(neg_a: torch.Tensor, a: torch.Tensor, neg_b: torch.Tensor, b: torch.Tensor,
             fmt: LNSFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Working-form product (broadcasting): add codes, xor signs, saturate; a sentinel operand stays below
    ``code_min`` and so reads as zero."""
    return neg_a ^ neg_b, (a + b).clamp_(max=fmt.code_max)


def mul(a: LNSTensor, b: LNSTensor) -> LNSTensor:
    """``a * b``: ``X = Xa + Xb`` (saturated; underflow and zero operands give zero), ``s = sa xor sb``."""
    fmt = _check_same(a, b)
    return from_work(*mul_work(*to_work(a), *to_work(b), fmt), fmt)


# Log-domain addition -------------------------------------------------------------------------------------------


def _round_codes(v: torch.Tensor) -> torch.Tensor:
    return torch.floor(v + 0.5)


def lut_tables(fmt: LNSFormat, lut: LUT) -> tuple[torch.Tensor, int]:
    """The integer table of :class:`LUT` and its bin width in codes.

    Returns ``(table, step)``: ``table`` of shape (2, n + 1), row 0 Delta+, row 1 Delta-, column ``n`` = 0 (beyond
    ``d_max``), codes of ``fmt``; ``step`` = ``round(d_max * 2^F / n)`` codes (at least 1), bin ``k`` holding the
    codes ``d`` with ``d // step = k``. Delta- at ``d = 0`` (exact zero) is set by :func:`delta_codes`.
    """
    step = max(1, round(lut.d_max * fmt.scale / lut.n))
    lo = torch.arange(lut.n, dtype=torch.float64) * step / fmt.scale
    mid = (torch.exp2(-lo) + torch.exp2(-(lo + step / fmt.scale))) / 2  # middle of 2^-d over the bin
    plus = _round_codes(torch.log2(1 + mid) * fmt.scale)
    minus = _round_codes(torch.log2(1 - mid) * fmt.scale)
    table = torch.zeros(2, lut.n + 1, dtype=torch.float64)
    table[0, : lut.n], table[1, : lut.n] = plus, minus
    return table.to(fmt.dtype), step


def _msb(v: torch.Tensor) -> torch.Tensor:
    """Leading-one position of positive integers ``v`` (floor(log2 v)); exact below 2^53."""
    return torch.frexp(v.to(torch.float64))[1].to(v.dtype) - 1


def _shift_delta(d: torch.Tensor, opp: torch.Tensor, fmt: LNSFormat) -> torch.Tensor:
    """Mitchell Delta± in codes (see :class:`Shift`); ``d`` >= 0 codes, ``opp`` True for Delta-."""
    f_bits = fmt.frac_bits
    dtype, d = d.dtype, d.to(torch.int64)  # (v - 2^m) << F needs 2F bits
    whole = (d >> f_bits).clamp_(max=61)
    frac = d & (fmt.scale - 1)
    y = ((2 * fmt.scale - frac) >> (whole + 1))  # 2^-d * 2^F, Mitchell antilog
    v = fmt.scale - y  # (1 - 2^-d) * 2^F >= 0
    m = _msb(v.clamp(min=1))
    # log2(v / 2^F) ~ (m - F) + (v - 2^m) / 2^m, in codes (v > 0)
    minus = ((m - f_bits) << f_bits) + (((v - torch.bitwise_left_shift(torch.ones_like(m), m)) << f_bits) >> m)
    minus = torch.where(v == 0, torch.full_like(v, fmt.sentinel), minus)
    return torch.where(opp, minus, y).to(dtype)


def _exact_delta(d: torch.Tensor, opp: torch.Tensor, fmt: LNSFormat) -> torch.Tensor:
    y = torch.exp2(-d.to(torch.float64) / fmt.scale)
    val = torch.log2(torch.where(opp, 1 - y, 1 + y)) * fmt.scale  # -inf at d = 0, opposite signs
    val = torch.where(torch.isinf(val), float(fmt.sentinel), _round_codes(val.clamp(min=fmt.sentinel)))
    return val.to(d.dtype)


def delta_codes(d: torch.Tensor, opp: torch.Tensor, fmt: LNSFormat, delta: Delta) -> torch.Tensor:
    """Delta±(d) in codes for code distances ``d >= 0``, element by element; ``opp`` selects Delta- (operands of
    opposite sign). ``d = 0`` with opposite signs gives the sentinel (the sum is exactly zero) in every mode.
    This is the definition; :func:`prepare_delta` tabulates it."""
    if isinstance(delta, MaxOnly):
        return torch.where(opp & (d == 0), fmt.sentinel, 0).to(d.dtype)
    if isinstance(delta, Exact):
        return _exact_delta(d, opp, fmt)
    if isinstance(delta, Shift):
        return _shift_delta(d, opp, fmt)
    tab, step = lut_tables(fmt, delta)
    n = tab.shape[1] - 1
    idx = torch.div(d, step, rounding_mode="floor").clamp_(max=n)
    val = tab.reshape(-1)[torch.where(opp, idx + (n + 1), idx).long()]
    return torch.where(opp & (d == 0), torch.full_like(val, fmt.sentinel), val)


MAX_TABLE = 1 << 22  # entries of a tabulated Delta± (per sign case); larger formats compute element by element


@dataclass(frozen=True)
class DeltaTable:
    """Delta± tabulated over every code distance: ``values[d]`` (Delta+) and ``values[reach + 1 + d]`` (Delta-)
    for ``0 <= d <= reach``; both are 0 for all ``d >= reach`` (so ``d`` is clamped to ``reach``).

    Every mode is a function of ``(d, opposite)`` only, so one gather replaces its arithmetic; for :class:`LUT` the
    ``n`` entries are repeated over their bins, the same results as indexing bin ``d // step``.
    """

    values: torch.Tensor
    reach: int


def _reach(fmt: LNSFormat, delta: Delta) -> int:
    """A code distance from which Delta± are 0 in ``delta``'s approximation."""
    if isinstance(delta, MaxOnly):
        return 1
    if isinstance(delta, LUT):
        return lut_tables(fmt, delta)[1] * delta.n
    # Exact: |Delta±(d)| < 2^-d / (ln 2 (1 - 2^-d)) < half a step once d >= F + 2; Shift: 2^-d codes vanish at F+2
    return (fmt.frac_bits + 2) * fmt.scale


def prepare_delta(fmt: LNSFormat, delta: Delta) -> DeltaTable | None:
    """Tabulate ``delta`` for ``fmt`` (once per format; pass the result to :func:`add_work`); None when the table
    would exceed ``MAX_TABLE`` entries (wide fractions in Exact or Shift mode), then Delta± is computed per
    element."""
    check_delta(delta)
    reach = _reach(fmt, delta)
    if reach + 1 > MAX_TABLE:
        return None
    d = torch.arange(reach + 1, dtype=fmt.dtype).repeat(2)
    opp = torch.arange(2 * (reach + 1)) > reach
    return DeltaTable(delta_codes(d, opp, fmt, delta), reach)


def add_work(neg_a: torch.Tensor, a: torch.Tensor, neg_b: torch.Tensor, b: torch.Tensor, fmt: LNSFormat,
             delta: Delta, table: DeltaTable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Working-form ``a (+) b``: ``X = max(Xa, Xb) + Delta±(|Xa - Xb|)``, sign of the larger magnitude.

    A sentinel (zero) operand is ``d`` beyond every table, so the other operand comes out unchanged; two zeros
    stay below ``code_min``. Results above ``code_max`` saturate, below ``code_min`` become the sentinel.
    ``table``: :func:`prepare_delta`'s (None: per element). Bool signs, no ``torch.where`` on the large tensors
    (it is several times slower than the arithmetic here).
    """
    diff = a - b
    hi = torch.maximum(a, b)
    opp = neg_a ^ neg_b
    neg = neg_b ^ (opp & (diff >= 0))  # the sign of the operand of larger magnitude
    d = diff.abs_()
    if table is None:
        x = hi + delta_codes(d, opp, fmt, delta)
    else:
        key = d.clamp_(max=table.reach).add_(opp.to(d.dtype) * (table.reach + 1))
        x = hi.add_(table.values.index_select(0, key.reshape(-1)).reshape(key.shape))
    x = x.clamp_(max=fmt.code_max)
    return neg, x.masked_fill_(x < fmt.code_min, fmt.sentinel)


def add(a: LNSTensor, b: LNSTensor, delta: Delta) -> LNSTensor:
    """``a (+) b`` in the log domain with the Delta± approximation ``delta`` (see the module docstring)."""
    fmt = _check_same(a, b)
    check_delta(delta)
    if a.shape != b.shape:
        raise DataError(f"LNS add of shapes {tuple(a.shape)} and {tuple(b.shape)}: pass operands of one shape")
    return from_work(*add_work(*to_work(a), *to_work(b), fmt, delta, prepare_delta(fmt, delta)), fmt)


def tree_sum_work(neg: torch.Tensor, code: torch.Tensor, fmt: LNSFormat, delta: Delta,
                  table: DeltaTable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Working-form (+)-reduction of dim 0 in the fixed order of :func:`lns_sum`."""
    while code.shape[0] > 1:
        length = code.shape[0]
        half = length // 2
        s, x = add_work(neg[:half], code[:half], neg[half : 2 * half], code[half : 2 * half], fmt, delta, table)
        if length % 2:  # the odd element meets a zero pad: v (+) 0 = v exactly, so it is carried as is
            s, x = torch.cat([s, neg[-1:]]), torch.cat([x, code[-1:]])
        neg, code = s, x
    return neg[0], code[0]


def lns_sum(t: LNSTensor, dim: int, delta: Delta) -> LNSTensor:
    """(+)-sum over ``dim`` in a fixed pairwise tree (approximate (+) is not associative, so the order is part of
    the result).

    Order: with ``L`` elements at a level, element ``i`` is combined with element ``i + L // 2`` for
    ``i < L // 2``; an odd last element is combined with a zero pad (which leaves it unchanged) and kept as
    element ``L // 2`` of the next level. Levels repeat until one element is left: ``ceil(log2 L)`` levels of
    roundings instead of ``L - 1`` in a running sum.
    """
    check_delta(delta)
    if t.code.dim() == 0 or t.shape[dim] == 0:
        raise DataError(f"lns_sum over dim {dim} of shape {tuple(t.shape)}: the dimension must hold elements")
    neg, code = to_work(t)
    neg, code = tree_sum_work(neg.movedim(dim, 0), code.movedim(dim, 0), t.fmt, delta, prepare_delta(t.fmt, delta))
    return from_work(neg, code, t.fmt)

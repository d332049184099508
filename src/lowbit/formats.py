"""Number formats as small frozen value objects.

A format says which values a quantized number may take, not how its scale is
found (that is the job of observers, learned steps or exact solvers). Every
format validates itself on construction and knows its integer ``qmin``/``qmax``
(or, for non-uniform formats, its ``levels`` relative to a scale ``alpha``).

==================  =================================================  =====================
format              levels (times a scale)                             used by
==================  =================================================  =====================
IntFormat(b)        qmin..qmax, signed two's complement or unsigned    PTQ, LSQ, FAQ, QNN
PowerOfTwo(b)       0, +-2^-(n-1), ..., +-1 with n = 2^(b-1)-1          LBW-Net (b >= 3)
Ternary()           -1, 0, +1                                          TNT, LBW-Net (b = 2)
Binary()            -1, +1                                             BNN, XNOR-Net
Log2(b)             0, +-2^e for 2^(b-1)-1 consecutive exponents e      log quantization
DynamicFixedPoint   IntFormat(b) at scale 2^-f, f from the range       method A, B
==================  =================================================  =====================
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import ConfigError

MIN_BITS, MAX_BITS = 1, 16


def check_bits(bits: object, name: str = "bits", low: int = MIN_BITS, high: int = MAX_BITS) -> int:
    """Validate a bit width: an ``int`` in ``[low, high]``; raise :class:`ConfigError` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(f"{name} must be an integer, got {bits!r} ({type(bits).__name__})")
    if not low <= bits <= high:
        raise ConfigError(f"{name}={bits} is out of range: lowbit supports {low}..{high} bits")
    return bits


@dataclass(frozen=True)
class IntFormat:
    """``bits``-bit integers: signed two's complement ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b-1]``.

    ``narrow`` drops the most negative code (``-2^(b-1)``) so that the range is
    symmetric, as int8 symmetric weight quantization usually does.
    """

    bits: int = 8
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.narrow and (not self.signed or self.bits < 2):
            raise ConfigError("IntFormat.narrow needs a signed format of at least 2 bits")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def n_levels(self) -> int:
        return self.qmax - self.qmin + 1

    def levels(self) -> list[int]:
        return list(range(self.qmin, self.qmax + 1))


@dataclass(frozen=True)
class PowerOfTwo:
    """Zero or ``+-2^-k``: ``alpha * {0, +-2^-(n-1), ..., +-1/2, +-1}``, ``n = 2^(b-1) - 1`` (LBW-Net).

    One bit is the sign; the other ``b-1`` bits index ``n`` exponents plus zero.
    Multiplying by such a weight is a shift. ``b = 2`` is ternary.
    """

    bits: int = 4

    def __post_init__(self) -> None:
        check_bits(self.bits, low=2, high=8)

    @property
    def n_exponents(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def levels(self) -> list[float]:
        mags = [2.0 ** (-k) for k in range(self.n_exponents - 1, -1, -1)]
        return sorted({0.0, *mags, *(-m for m in mags)})


@dataclass(frozen=True)
class Ternary:
    """The three values ``{-1, 0, +1}`` (times a scale): TNT, LBW-Net 2-bit, TrueNorth trinary."""

    bits: int = 2

    def __post_init__(self) -> None:
        if self.bits != 2:
            raise ConfigError("Ternary takes 2 bits")

    def levels(self) -> list[int]:
        return [-1, 0, 1]


@dataclass(frozen=True)
class Binary:
    """The two values ``{-1, +1}`` (times a scale): BNN / XNOR-popcount arithmetic."""

    bits: int = 1

    def __post_init__(self) -> None:
        if self.bits != 1:
            raise ConfigError("Binary takes 1 bit")

    @property
    def signed(self) -> bool:
        return True

    @property
    def qmin(self) -> int:
        """The codes are -1 and +1 (an activation grid of scale 1 holds the values themselves)."""
        return -1

    @property
    def qmax(self) -> int:
        return 1

    def levels(self) -> list[int]:
        return [-1, 1]


@dataclass(frozen=True)
class Log2:
    """Logarithmic: zero or ``+-2^e`` with ``e`` in ``[e_max - m + 1, e_max]``, ``m = 2^(b-1) - 1``.

    One bit is the sign, ``b-1`` bits code the exponent with one code kept for
    zero (Miyashita, Lee, Murmann 2016; the LNS arithmetic of paper L).
    """

    bits: int = 4

    def __post_init__(self) -> None:
        check_bits(self.bits, low=2, high=8)

    @property
    def n_exponents(self) -> int:
        return 2 ** (self.bits - 1) - 1


@dataclass(frozen=True)
class DynamicFixedPoint:
    """Signed ``bits``-bit fixed point whose fractional length ``f`` follows the data range.

    ``f = b - 1 - ceil(log2(max|x|))`` so that ``max|x|`` just fits; the value is
    ``q * 2^-f`` with ``q`` a ``b``-bit integer (papers A and B).
    """

    bits: int = 8

    def __post_init__(self) -> None:
        check_bits(self.bits, low=2)

    @property
    def int_format(self) -> IntFormat:
        return IntFormat(self.bits, signed=True)


Format = IntFormat | PowerOfTwo | Ternary | Binary | Log2 | DynamicFixedPoint


def int_format(bits: int, signed: bool = True, narrow: bool = False) -> IntFormat:
    """Shorthand for :class:`IntFormat` (kept so call sites read ``int_format(4)``)."""
    return IntFormat(bits, signed, narrow)

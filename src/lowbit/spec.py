"""One quantization spec: how a tensor is quantized, wherever it is quantized.

``QuantSpec(format, granularity, observer, ...)`` is a frozen value used alike by
weight-only quantization, PTQ and QAT::

    QuantSpec(IntFormat(4, narrow=True), PerChannel(0))            int4 weights, one scale per channel
    QuantSpec(Ternary(), PerChannel(0))                            exact optimal ternary weights
    QuantSpec(Ternary(), PerChannel(0), ternary="twn")             TWN: threshold 0.7 mean|W|
    QuantSpec(Ternary(), PerChannel(0), ternary="tnt")             TNT: exact support, alpha+ and alpha- (int8 codes)
    QuantSpec(PowerOfTwo(4), PerChannel(0))                        LBW-Net power-of-two weights
    QuantSpec(Binary(), PerChannel(0))                             XNOR-Net: sign(w) times mean|w| per channel
    QuantSpec(Binary(), binary="sign")                             BNN: sign(w) (weights or activations)
    QuantSpec(IntFormat(8, signed=False), observer=Percentile(99.99))   uint8 activations, clipped

The *format* decides the algorithm (the format is data, the algorithm a function),
through one dispatch to :mod:`lowbit.functional`:

=================  ================================================================  ===================
format             scale and codes                                                   functional op
=================  ================================================================  ===================
IntFormat(b)       observer range -> affine scale; ``round(w / s)``                  fake_quant_affine
PowerOfTwo(b)      least-squares ``alpha``; codes ``{0, +-2^k}`` times ``alpha/2^(n-1)``   pow2_quantize
Ternary()          exact optimal support (or TWN's threshold); ``{-1, 0, 1} alpha``  ternarize(_twn)
                   TNT: ``{-m-, 0, m+} s``, ``m+- s ~= alpha+-``                    tnt_integer_codes
Binary()           ``sign(w) mean|w|`` per block (XNOR-Net), or ``sign(w)`` (BNN)      binarize
Log2(b)            ``sign(x) 2^round(log2|x|)``                                      log2_quantize
DynamicFixedPoint  fractional length from ``max|x|``                                 dynamic_fixed_point
=================  ================================================================  ===================

:func:`fake_quant` is the stateless dispatch (weight-only quantization). For the formats
the integer engine runs (integer, ternary, power-of-two: all of them small integer codes
times one scale per block), :func:`solve_weight` finds the frozen grid of a weight and
:func:`weight_codes` its integer codes; by construction
``weight_codes(w, spec, solve_weight(w, spec)) * scale == fake_quant(w, spec)`` bit for bit,
so the PTQ simulation, the integer model and weight-only quantization agree.

TNT (``ternary="tnt"``; Zhang, Zhu, Zhao & Shin 2019, "Target None-retraining Ternary"): the exact
support of ``max cos(w, t)`` over ``t in {-1, 0, 1}^N`` (the same O(N log N) search as the exact ternary
solver, :func:`lowbit.functional.ternary.ternary_support`) with separate scales ``alpha+`` (mean of the selected positive weights) and ``alpha-`` (mean ``|.|``
of the selected negative ones), per block. With one scale per block on the int8 engine the two scales
become the integer codes ``{-m-, 0, +m+}`` times a common scale ``s``, ``max(m+, m-) = 127`` and the
other ``round(127 * ratio)`` (:func:`lowbit.functional.ternary.tnt_integer_codes`); the simulation uses
``m+- s`` too, so the integer model stays bit-exact with it, and ``alpha+ / alpha-`` is kept to 1/254 of
the larger scale. Those codes are 8-bit integers, not 2-bit ternary codes: the IR stores them as int8
(``QuantSpec.code_bits`` is 8) and the cost model counts 8 bits. A two-plane bitwise execution
(sign and mask planes with two scales) is not done.

Observers are typed values too (:class:`MinMax`, :class:`MovingAverage`,
:class:`Percentile`, :class:`MSE`, :class:`ChannelPercentile`); :func:`make_observer`
builds the statistics module, :data:`OBSERVER_NAMES` is the one table of their short
names (the command line's ``--observer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from lowbit import observers as obs
from lowbit.errors import ConfigError
from lowbit.formats import Binary, DynamicFixedPoint, Format, IntFormat, Log2, PowerOfTwo, Ternary
from lowbit.functional.affine import fake_quant_affine, quantize_affine
from lowbit.functional.binary import binarize
from lowbit.functional.lsq import lsq_quantize, step_magnitude
from lowbit.functional.pow2 import dynamic_fixed_point, log2_quantize, pow2_quantize, pow2_round, pow2_round_ste
from lowbit.functional.rounding import ste
from lowbit.functional.ternary import TernaryResult, ternarize, ternarize_twn, ternary_codes, tnt_integer_codes
from lowbit.granularity import Granularity, PerChannel, PerGroup, PerKernel, PerTensor, broadcast, rows, unrows
from lowbit.utils.fields import checked_init

FORMATS = (IntFormat, PowerOfTwo, Ternary, Binary, Log2, DynamicFixedPoint)
GRANULARITIES = (PerTensor, PerChannel, PerGroup, PerKernel)
TernaryMethod = Literal["exact", "twn", "tnt"]
BinaryScale = Literal["xnor", "sign"]


# ---------------------------------------------------------------- observers as values


@dataclass(frozen=True)
class MinMax:
    """Running minimum and maximum (:class:`lowbit.observers.MinMaxObserver`)."""


@dataclass(frozen=True)
class MovingAverage:
    """Exponential moving average of each batch's min and max, ``m <- (1 - momentum) m + momentum x``."""

    momentum: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0 < self.momentum <= 1:
            raise ConfigError(f"MovingAverage.momentum must be a number in (0, 1], got {self.momentum!r}")


@dataclass(frozen=True)
class Percentile:
    """The range at the ``percentile`` of the values (FAQ clips activations at 99.99)."""

    percentile: float = 99.99

    def __post_init__(self) -> None:
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 50 < self.percentile <= 100:
            raise ConfigError(f"Percentile.percentile must be a number in (50, 100], got {self.percentile!r}")


@dataclass(frozen=True)
class MSE:
    """The clipping range of least quantization error for the target format."""


@dataclass(frozen=True)
class ChannelPercentile:
    """Method A's channel-level statistics: the widest of the per-channel ``percentile`` ranges (one per tensor)."""

    percentile: float = 99.99
    axis: int = 1

    def __post_init__(self) -> None:
        Percentile(self.percentile)
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise ConfigError(f"ChannelPercentile.axis must be an integer, got {self.axis!r}")


Observer = MinMax | MovingAverage | Percentile | MSE | ChannelPercentile
OBSERVERS = (MinMax, MovingAverage, Percentile, MSE, ChannelPercentile)
OBSERVER_NAMES: dict[str, Observer] = {"minmax": MinMax(), "moving_average": MovingAverage(),
                                       "percentile": Percentile(), "mse": MSE(), "channel": ChannelPercentile()}


def observer_named(name: str, percentile: float = 99.99) -> Observer:
    """The observer of a short name (``--observer``), with ``percentile`` where it takes one."""
    if name not in OBSERVER_NAMES:
        raise ConfigError(f"unknown observer {name!r}; use one of {sorted(OBSERVER_NAMES)}")
    o = OBSERVER_NAMES[name]
    if isinstance(o, Percentile):
        return Percentile(percentile)
    if isinstance(o, ChannelPercentile):
        return ChannelPercentile(percentile)
    return o


# ---------------------------------------------------------------- the spec


@checked_init()
@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized (validated on construction; see the module docstring).

    ``symmetric`` defaults to True for signed and False (affine, with a zero point) for
    unsigned integer formats. ``observer``, ``symmetric=False`` and ``pow2_scale`` (scales
    rounded to powers of two, so requantization is a shift) apply to integer formats;
    the other formats find their scale with their own solver. ``ternary`` picks the
    ternary solver: ``"exact"`` (optimal support), ``"twn"`` (threshold ``0.7 mean|W|``) or ``"tnt"`` (the exact
    support with separate positive and negative scales, stored as int8 codes ``{-m-, 0, +m+}``). ``binary`` picks
    the scale of binary weights: ``"xnor"`` (XNOR-Net, ``alpha = mean|w|`` per block) or ``"sign"`` (BNN,
    ``+-1``); binary activations are always ``+-1`` (``sign(x)``, ``x >= 0`` giving +1).
    """

    format: Format = field(default_factory=lambda: IntFormat(8))
    granularity: Granularity = field(default_factory=PerTensor)
    observer: Observer = field(default_factory=MinMax)
    symmetric: bool | None = None
    pow2_scale: bool = False
    ternary: TernaryMethod = "exact"
    binary: BinaryScale = "xnor"

    def __post_init__(self) -> None:
        f = self.format
        if not isinstance(f, FORMATS):
            raise ConfigError(f"QuantSpec.format must be one of {', '.join(c.__name__ for c in FORMATS)}, got {f!r}")
        if not isinstance(self.granularity, GRANULARITIES):
            raise ConfigError(f"QuantSpec.granularity must be one of "
                              f"{', '.join(c.__name__ + '()' for c in GRANULARITIES)}, got {self.granularity!r}")
        if not isinstance(self.observer, OBSERVERS):
            raise ConfigError(f"QuantSpec.observer must be one of {', '.join(c.__name__ + '()' for c in OBSERVERS)}, "
                              f"got {self.observer!r}")
        if self.symmetric is None:
            object.__setattr__(self, "symmetric", not isinstance(f, IntFormat) or f.signed)
        for name in ("symmetric", "pow2_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"QuantSpec.{name} must be True or False, got {getattr(self, name)!r}")
        if self.ternary not in ("exact", "twn", "tnt"):
            raise ConfigError(f"QuantSpec.ternary must be 'exact', 'twn' or 'tnt', got {self.ternary!r}")
        if self.ternary != "exact" and not isinstance(f, Ternary):
            raise ConfigError(f"QuantSpec.ternary={self.ternary!r} applies to Ternary() only, not {f!r}: "
                              f"use QuantSpec(Ternary(), PerChannel(0), ternary={self.ternary!r})")
        if self.binary not in ("xnor", "sign"):
            raise ConfigError(f"QuantSpec.binary must be 'xnor' (alpha = mean|w| per block) or 'sign' (+-1), "
                              f"got {self.binary!r}")
        if self.binary != "xnor" and not isinstance(f, Binary):
            raise ConfigError(f"QuantSpec.binary={self.binary!r} applies to Binary() only, not {f!r}")
        if not isinstance(f, IntFormat):
            for name, bad in (("observer", not isinstance(self.observer, MinMax)), ("symmetric", not self.symmetric),
                              ("pow2_scale", self.pow2_scale)):
                if bad:
                    raise ConfigError(f"QuantSpec.{name}={getattr(self, name)!r} applies to IntFormat only; "
                                      f"{f!r} finds its scale with its own solver")
        if isinstance(self.observer, ChannelPercentile) and not isinstance(self.granularity, PerTensor):
            raise ConfigError("QuantSpec.observer=ChannelPercentile() gives one range per tensor: use PerTensor()")

    @property
    def axis(self) -> int | None:
        """The channel axis of a per-channel spec (None otherwise)."""
        return self.granularity.axis if isinstance(self.granularity, PerChannel) else None

    @property
    def tnt(self) -> bool:
        """True for TNT ternary weights (two scales, int8 codes ``{-m-, 0, +m+}``)."""
        return isinstance(self.format, Ternary) and self.ternary == "tnt"

    @property
    def code_bits(self) -> int:
        """Bits of the stored integer codes: the format's, except TNT's int8 codes ``{-m-, 0, +m+}`` (8)."""
        return 8 if self.tnt else self.format.bits

    def label(self) -> str:
        """Short name: ``int4``, ``uint8``, ``ternary``, ``ternary-twn``, ``ternary-tnt``, ``pow2-4``, ``binary``..."""
        f = self.format
        if isinstance(f, IntFormat):
            return f"{'' if f.signed else 'u'}int{f.bits}"
        if isinstance(f, Ternary):
            return "ternary" if self.ternary == "exact" else f"ternary-{self.ternary}"
        if isinstance(f, Binary) and self.binary == "sign":
            return "binary-sign"
        return {PowerOfTwo: f"pow2-{f.bits}", Binary: "binary", Log2: f"log2-{f.bits}",
                DynamicFixedPoint: f"dfp-{f.bits}"}[type(f)]


def make_observer(spec: QuantSpec) -> obs.Observer:
    """The statistics module of ``spec.observer`` at ``spec.granularity``."""
    o, g = spec.observer, spec.granularity
    if isinstance(o, MinMax):
        return obs.MinMaxObserver(g)
    if isinstance(o, MovingAverage):
        return obs.MovingAverageMinMaxObserver(g, o.momentum)
    if isinstance(o, Percentile):
        return obs.PercentileObserver(g, o.percentile)
    if isinstance(o, MSE):
        return obs.MSEObserver(g)
    return obs.ChannelPercentileObserver(o.axis, o.percentile)


# ---------------------------------------------------------------- which path runs which spec

# the integer engine runs int8 weight codes times one scale per output channel (or per tensor)
INTEGER_WEIGHTS = "IntFormat(2..8, signed) weights, Ternary(), PowerOfTwo(2..4) or Binary()"


def check_runs(spec: QuantSpec, role: Literal["weight", "act"], path: str, max_bits: int = 16) -> QuantSpec:
    """Refuse a spec that ``path`` (``"PTQ"``, ``"QAT"``: both lower to the integer engine) cannot run.

    The message names the format, the path and what would work. Returns ``spec``.
    """
    if not isinstance(spec, QuantSpec):
        raise ConfigError(f"{path} {role} must be a QuantSpec, got {type(spec).__name__}")
    f, g = spec.format, spec.granularity
    what = f"{path} cannot run {f!r} {'weights' if role == 'weight' else 'activations'}"
    if role == "act":
        if isinstance(f, Binary) and isinstance(g, PerTensor):
            return spec  # sign(x): the XNOR-popcount engine's input
        if not isinstance(f, (IntFormat, Binary)) or (isinstance(f, IntFormat) and (f.bits < 2 or f.bits > max_bits)):
            raise ConfigError(f"{what}: activations are IntFormat(2..{max_bits}) or Binary()")
        if not isinstance(g, PerTensor):
            raise ConfigError(f"{what} at {g!r}: activations take one grid per tensor; use PerTensor() "
                              "(ChannelPercentile() for channel statistics)")
        return spec
    if isinstance(f, (Log2, DynamicFixedPoint)):
        raise ConfigError(f"{what}: the integer engine runs {INTEGER_WEIGHTS}; {f!r} works in weight-only "
                          "quantization (lowbit.quantize_weights)")
    if isinstance(f, PowerOfTwo) and f.bits > 4:
        raise ConfigError(f"{what}: its codes reach 2^{f.n_exponents - 1} and do not fit the int8 engine; "
                          "use PowerOfTwo(2..4)")
    if isinstance(f, IntFormat) and (not f.signed or not spec.symmetric or f.bits < 2 or f.bits > max_bits):
        raise ConfigError(f"{what} (symmetric={spec.symmetric}): weights are symmetric signed "
                          f"IntFormat(2..{max_bits}) with zero point 0, or Ternary() / PowerOfTwo(2..4)")
    if not (isinstance(g, PerTensor) or (isinstance(g, PerChannel) and g.axis == 0)):
        raise ConfigError(f"{path} cannot run {g!r} weights: the integer engine takes one weight scale per "
                          "output channel (PerChannel(0)) or per tensor (PerTensor())")
    return spec


# ---------------------------------------------------------------- the dispatch


@dataclass(frozen=True)
class WeightGrid:
    """A frozen weight grid, one entry per block (row) of the spec's granularity:
    ``value = (code - zero_point) * scale``; ternary codes are ``sign(w) [|w| > threshold]``, and for TNT
    ``code_pos`` / ``-code_neg`` in place of +1 / -1."""

    scale: torch.Tensor  # (R,) float32
    zero_point: torch.Tensor  # (R,) int32
    threshold: torch.Tensor | None = None  # (R,) ternary only
    code_pos: torch.Tensor | None = None  # (R,) TNT only: m+ (float32 holding integers)
    code_neg: torch.Tensor | None = None  # (R,) TNT only: m-


def _ternary(w: torch.Tensor, spec: QuantSpec) -> TernaryResult:
    if spec.ternary == "twn":
        return ternarize_twn(w, spec.granularity)
    return ternarize(w, spec.granularity, "tnt" if spec.ternary == "tnt" else "lbw")


def _best_pow2(r: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """Per row, whichever of the two powers of two around ``scale`` gives the lower MSE (method H weights)."""
    down = torch.exp2(torch.floor(torch.log2(scale)))
    errs = [((fake_quant_affine(r, s, zp, fmt, axis=0) - r) ** 2).sum(dim=1) for s in (down, 2 * down)]
    return torch.where(errs[0] <= errs[1], down, 2 * down)


def solve_weight(w: torch.Tensor, spec: QuantSpec) -> WeightGrid:
    """The grid of weight ``w`` under ``spec``: observer and affine scale, or the format's solver."""
    f = spec.format
    w = w.detach()
    if isinstance(f, IntFormat):
        o = make_observer(spec if not isinstance(spec.observer, ChannelPercentile)
                          else QuantSpec(f, spec.granularity, symmetric=spec.symmetric))
        o(w)
        scale, zp = o.qparams(f, spec.symmetric)
        if spec.pow2_scale:
            scale = _best_pow2(rows(w.float(), spec.granularity), scale, zp, f)
        return WeightGrid(scale.reshape(-1), zp.reshape(-1))
    if isinstance(f, Ternary):
        t = _ternary(w, spec)
        if spec.tnt:  # two scales -> int8 codes {-m-, 0, +m+} times one scale (ratio kept to 1/254)
            scale, m_pos, m_neg = tnt_integer_codes(t.alpha_pos, t.alpha_neg)
            empty = torch.maximum(t.alpha_pos, t.alpha_neg) <= 0
            threshold = torch.where(empty, torch.full_like(t.threshold, float("inf")), t.threshold)
            return WeightGrid(scale, torch.zeros_like(scale, dtype=torch.int32), threshold, m_pos, m_neg)
        empty = t.alpha_pos <= 0  # an all-zero block: no support, any positive scale
        scale = torch.where(empty, torch.ones_like(t.alpha_pos), t.alpha_pos)
        threshold = torch.where(empty, torch.full_like(t.threshold, float("inf")), t.threshold)
        return WeightGrid(scale, torch.zeros_like(scale, dtype=torch.int32), threshold)
    if isinstance(f, PowerOfTwo):
        if f.bits == 2:  # LBW-Net's 2-bit case is the exact ternary solution
            return solve_weight(w, QuantSpec(Ternary(), spec.granularity))
        _, alpha = pow2_quantize(w, f, spec.granularity)
        scale = torch.ldexp(alpha, torch.tensor(-(f.n_exponents - 1)))  # alpha / 2^(n-1): exact
        scale = torch.where(alpha > 0, scale, torch.ones_like(scale))
        return WeightGrid(scale, torch.zeros_like(scale, dtype=torch.int32))
    if isinstance(f, Binary):
        scale = _binary_scale(w.float(), spec)
        return WeightGrid(scale, torch.zeros_like(scale, dtype=torch.int32))
    raise ConfigError(f"{f!r} has no frozen integer grid; the integer engine runs {INTEGER_WEIGHTS}")


def _binary_scale(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per block: ``mean|w|`` (XNOR-Net; 1 where a block is all zero) or 1 (``binary="sign"``)."""
    r = rows(w, spec.granularity)
    if spec.binary == "sign":
        return torch.ones(r.shape[0], dtype=w.dtype, device=w.device)
    alpha = r.abs().mean(dim=1)
    return torch.where(alpha > 0, alpha, torch.ones_like(alpha))


def weight_codes(w: torch.Tensor, spec: QuantSpec, grid: WeightGrid) -> torch.Tensor:
    """Integer codes of ``w`` (float32 holding integers, ``w``'s shape) on a frozen ``grid``."""
    f, g = spec.format, spec.granularity
    if isinstance(f, Binary):  # sign(w), with sign(0) = +1 as in binarize
        return torch.where(w.detach() >= 0, 1.0, -1.0).to(torch.float32)
    if isinstance(f, Ternary) or (isinstance(f, PowerOfTwo) and f.bits == 2):
        t = ternary_codes(w, grid.threshold, g)
        if grid.code_pos is None:
            return t
        pos, neg = broadcast(grid.code_pos, g, t.shape), broadcast(grid.code_neg, g, t.shape)
        return torch.where(t > 0, pos, torch.where(t < 0, -neg, torch.zeros_like(t)))
    r = rows(w.detach().to(torch.float32), g)
    if isinstance(f, IntFormat):
        return unrows(quantize_affine(r, grid.scale, grid.zero_point, f, axis=0).float(), g, w.shape)
    if isinstance(f, PowerOfTwo):
        return unrows(pow2_round(r / grid.scale[:, None], f.n_exponents), g, w.shape)
    raise ConfigError(f"{f!r} has no integer codes; the integer engine runs {INTEGER_WEIGHTS}")


def dequantize_codes(codes: torch.Tensor, spec: QuantSpec, grid: WeightGrid) -> torch.Tensor:
    """``(codes - zero_point) * scale`` per block, float32 in the codes' shape."""
    g = spec.granularity
    scale = broadcast(grid.scale, g, codes.shape)
    zp = broadcast(grid.zero_point.to(torch.float32), g, codes.shape)
    return (codes - zp) * scale


def frozen_fake_quant(w: torch.Tensor, spec: QuantSpec, grid: WeightGrid) -> torch.Tensor:
    """``w`` on a frozen grid, straight-through gradient (masked to the range for integer formats)."""
    if isinstance(spec.format, IntFormat):
        return unrows(fake_quant_affine(rows(w, spec.granularity), grid.scale, grid.zero_point, spec.format, axis=0),
                      spec.granularity, w.shape)
    return ste(w, dequantize_codes(weight_codes(w, spec, grid), spec, grid).to(w.dtype))


def fake_quant(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` quantized and dequantized under ``spec`` with the statistics of ``x`` itself (weight-only).

    The one dispatch from a format to its functional op (see the module docstring).
    """
    f, g = spec.format, spec.granularity
    if isinstance(f, (IntFormat, Ternary, PowerOfTwo)):
        return frozen_fake_quant(x, spec, solve_weight(x, spec))
    if isinstance(f, Binary):  # live statistics, so the straight-through gradient reaches alpha too
        return binarize(x, binary_scale(x, spec))
    if isinstance(f, Log2):
        return log2_quantize(x, f, granularity=g)
    if isinstance(f, DynamicFixedPoint):
        return dynamic_fixed_point(x, f, granularity=g)[0]
    raise ConfigError(f"no quantizer for format {f!r}")  # pragma: no cover - QuantSpec validates the format


def binary_scale(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor | None:
    """The live scale of binary weights in ``x``'s shape: ``mean|x|`` per block (XNOR-Net, differentiable), or None
    for ``binary="sign"`` (BNN's +-1)."""
    if spec.binary == "sign":
        return None
    g = spec.granularity
    return broadcast(rows(x, g).abs().mean(dim=1), g, x.shape)


def lsq_weight_format(spec: QuantSpec) -> QuantSpec:
    """The spec LSQ trains: integer weights become two's complement (``-2^(b-1) .. 2^(b-1)-1``, the paper's
    range, not narrow); ternary and power-of-two specs stay as they are."""
    f = spec.format
    return replace(spec, format=IntFormat(f.bits, signed=True)) if isinstance(f, IntFormat) else spec


def lsq_range(spec: QuantSpec) -> tuple[int, int]:
    """``(Q_N, Q_P)``: the codes a learned step spans (ternary 1, 1; power-of-two ``2^(n-1)``, ``2^(n-1)``)."""
    f = spec.format
    if isinstance(f, IntFormat):
        return -f.qmin, f.qmax
    if spec.tnt:
        raise ConfigError("LSQ learns one step per block; TNT's two scales are recomputed from the weights at every "
                          "step instead (the weight quantizer's 'live' mode, as lowbit.qat.prepare_qat sets it)")
    if isinstance(f, Ternary) or (isinstance(f, PowerOfTwo) and f.bits == 2):
        return 1, 1
    if isinstance(f, PowerOfTwo):
        top = 2 ** (f.n_exponents - 1)
        return top, top
    raise ConfigError(f"LSQ cannot learn a step for {f!r}; it trains {INTEGER_WEIGHTS}")


def lsq_fake_quant(w: torch.Tensor, step: torch.Tensor, spec: QuantSpec, g: float) -> torch.Tensor:
    """LSQ (Esser et al. 2020) on the spec's codes: ``s * R(clamp(w / s, -Q_N, Q_P))`` with ``R`` rounding to the
    nearest code (integers, or powers of two for ``PowerOfTwo``) and a straight-through gradient, so
    ``d/ds`` is ``R(v) - v`` inside the range and ``-Q_N`` / ``Q_P`` outside, as in the paper."""
    q_n, q_p = lsq_range(spec)
    f = spec.format
    if isinstance(f, PowerOfTwo) and f.bits > 2:
        s = step_magnitude(step, g)
        return pow2_round_ste(torch.clamp(w / s, -q_n, q_p), f.n_exponents) * s
    return lsq_quantize(w, step, q_n, q_p, g)


def act_qparams(observer: obs.Observer, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of an activation from its observer; with ``pow2_scale`` the scale is rounded
    *up* to a power of two (no extra clipping) and the zero point follows it."""
    fmt = spec.format
    scale, zp = observer.qparams(fmt, spec.symmetric)
    if not spec.pow2_scale:
        return scale, zp
    scale = torch.exp2(torch.ceil(torch.log2(scale)))
    if not spec.symmetric:
        lo = observer.search(fmt, False)[0] if isinstance(observer, obs.MSEObserver) else observer.range()[0]
        lo = torch.minimum(lo, torch.zeros(()))
        zp = (fmt.qmin - torch.round(lo / scale)).clamp(fmt.qmin, fmt.qmax).to(torch.int32)
    return scale, zp


__all__ = ["MSE", "OBSERVERS", "OBSERVER_NAMES", "ChannelPercentile", "MinMax", "MovingAverage", "Percentile", "binary_scale",
           "QuantSpec", "WeightGrid", "act_qparams", "check_runs", "dequantize_codes", "fake_quant",
           "frozen_fake_quant", "lsq_fake_quant", "lsq_range", "lsq_weight_format", "make_observer", "observer_named", "solve_weight", "weight_codes"]

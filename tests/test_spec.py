"""QuantSpec: validation, the one dispatch against the functional ops, refusal of specs a path cannot run."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lowbit.errors import ConfigError
from lowbit.formats import Binary, DynamicFixedPoint, IntFormat, Log2, PowerOfTwo, Ternary
from lowbit.functional import (
    binarize,
    dynamic_fixed_point,
    log2_quantize,
    pow2_fake_quant,
    qparams_from_range,
    ternarize,
    ternarize_twn,
    ternary_codes,
    ternary_fake_quant,
)
from lowbit.granularity import PerChannel, PerGroup, PerKernel, PerTensor, broadcast, rows
from lowbit.ptq import LayerRule, PTQConfig
from lowbit.qat import QATConfig
from lowbit.spec import (
    MSE,
    ChannelPercentile,
    MinMax,
    MovingAverage,
    Percentile,
    QuantSpec,
    fake_quant,
    lsq_fake_quant,
    observer_named,
    solve_weight,
    weight_codes,
)

GRANULARITIES = [PerTensor(), PerChannel(0)]


def _weights(seed: int, shape: tuple[int, ...], integer: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if integer:  # small integers: many ties in magnitude
        return torch.randint(-4, 5, shape, generator=g).float()
    return torch.randn(shape, generator=g)


shapes = st.sampled_from([(3, 7), (4, 2, 3, 3), (1, 5), (6, 1)])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs,message", [
    ({"format": "int8"}, "QuantSpec.format must be one of IntFormat"),
    ({"format": IntFormat(8), "granularity": "channel"}, "QuantSpec.granularity must be one of PerTensor"),
    ({"observer": "minmax"}, "QuantSpec.observer must be one of MinMax"),
    ({"format": Ternary(), "observer": Percentile()},
     r"QuantSpec.observer=Percentile\(percentile=99.99\) applies to IntFormat only; Ternary"),
    ({"format": PowerOfTwo(4), "pow2_scale": True}, "QuantSpec.pow2_scale=True applies to IntFormat only"),
    ({"format": Ternary(), "symmetric": False}, "QuantSpec.symmetric=False applies to IntFormat only"),
    ({"format": Ternary(), "ternary": "magic"}, "QuantSpec.ternary must be 'exact', 'twn' or 'tnt'"),
    ({"format": IntFormat(2), "ternary": "twn"}, r"ternary='twn' applies to Ternary\(\) only"),
    ({"symmetric": 1}, "QuantSpec.symmetric must be True or False"),
    ({"granularity": PerChannel(1), "observer": ChannelPercentile()}, "one range per tensor: use PerTensor"),
])
def test_a_bad_spec_names_the_field_and_what_is_allowed(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantSpec(**kwargs)


@given(st.one_of(st.floats(allow_nan=True), st.integers(-5, 200), st.booleans()))
def test_observer_values_validate_their_parameter(p):
    ok = not isinstance(p, bool) and not math.isnan(p) and 50 < p <= 100
    if ok:
        assert Percentile(p).percentile == p
    else:
        with pytest.raises(ConfigError, match="Percentile.percentile must be a number in"):
            Percentile(p)
    ok = not isinstance(p, bool) and not math.isnan(p) and 0 < p <= 1
    if ok:
        assert MovingAverage(p).momentum == p
    else:
        with pytest.raises(ConfigError, match="MovingAverage.momentum"):
            MovingAverage(p)


def test_symmetric_follows_the_sign_of_an_integer_format_and_names_map_to_observers():
    assert QuantSpec(IntFormat(8)).symmetric and not QuantSpec(IntFormat(8, signed=False)).symmetric
    assert QuantSpec(Ternary()).symmetric
    assert observer_named("channel", 99.0) == ChannelPercentile(99.0)
    assert observer_named("percentile", 99.5) == Percentile(99.5)
    assert observer_named("mse") == MSE() and observer_named("minmax") == MinMax()
    with pytest.raises(ConfigError, match="unknown observer 'max'; use one of"):
        observer_named("max")


# ---------------------------------------------------------------- the dispatch against the functional ops


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), shapes, st.sampled_from(GRANULARITIES), st.booleans())
def test_dispatch_equals_the_functional_op_called_directly(seed, shape, g, integer):
    w = _weights(seed, shape, integer)
    assume(bool(w.abs().sum() > 0))
    r = rows(w, g)
    scale, zp = qparams_from_range(r.amin(1), r.amax(1), IntFormat(4), True)
    if isinstance(g, PerTensor):  # PyTorch's own fake-quant is the oracle for the integer format
        int4 = torch.fake_quantize_per_tensor_affine(w, float(scale), int(zp), -8, 7)
    else:
        int4 = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -8, 7)
    expected = {
        QuantSpec(IntFormat(4), g): int4,
        QuantSpec(Ternary(), g): ternary_fake_quant(w, g),
        QuantSpec(Ternary(), g, ternary="twn"): ternarize_twn(w, g).dequantize(),
        QuantSpec(PowerOfTwo(4), g): pow2_fake_quant(w, PowerOfTwo(4), g),
        QuantSpec(PowerOfTwo(3), g): pow2_fake_quant(w, PowerOfTwo(3), g),
        QuantSpec(PowerOfTwo(2), g): pow2_fake_quant(w, PowerOfTwo(2), g),
        QuantSpec(Binary(), g): binarize(w, broadcast(r.abs().mean(1), g, w.shape)),
        QuantSpec(Log2(4), g): log2_quantize(w, Log2(4), granularity=g),
        QuantSpec(DynamicFixedPoint(6), g): dynamic_fixed_point(w, DynamicFixedPoint(6), granularity=g)[0],
    }
    for spec, ref in expected.items():
        assert torch.equal(fake_quant(w, spec), ref), spec


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), shapes, st.sampled_from(GRANULARITIES), st.booleans(),
       st.sampled_from([IntFormat(3), IntFormat(8, narrow=True), Ternary(), PowerOfTwo(3), PowerOfTwo(4)]))
def test_frozen_codes_times_the_scale_are_the_fake_quantized_weight(seed, shape, g, integer, fmt):
    """What the integer engine stores (codes, one scale per block) is exactly what the simulation computes."""
    w = _weights(seed, shape, integer)
    spec = QuantSpec(fmt, g)
    grid = solve_weight(w, spec)
    codes = weight_codes(w, spec, grid)
    assert torch.equal(codes, codes.round())
    if isinstance(fmt, Ternary):
        assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    elif isinstance(fmt, PowerOfTwo):
        top = 2 ** (fmt.n_exponents - 1)
        assert set(codes.abs().unique().tolist()) <= {0.0, *(2.0**k for k in range(fmt.n_exponents))}
        assert float(codes.abs().max()) <= top <= 127
    value = codes * broadcast(grid.scale, g, w.shape)
    assert torch.equal(value, fake_quant(w, spec))


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10_000), shapes, st.sampled_from([PerTensor(), PerChannel(0), PerChannel(1)]), st.booleans())
def test_the_threshold_reproduces_the_exact_solvers_support(seed, shape, g, integer):
    w = _weights(seed, shape, integer)
    assume(bool(w.abs().sum() > 0))
    t = ternarize(w, g)
    nonzero_rows = rows(w, g).abs().sum(1) > 0
    codes = rows(ternary_codes(w, t.threshold, g), g)
    assert torch.equal(codes[nonzero_rows], rows(t.codes.float(), g)[nonzero_rows])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), shapes)
def test_twn_is_the_papers_rule(seed, shape):
    """TWN (Li & Liu 2016) by its definition, row by row in float64: Delta = 0.7 mean|w|, alpha = mean of |w| > Delta."""
    w = _weights(seed, shape, False)
    t = ternarize_twn(w, PerChannel(0))
    for i, row in enumerate(w.reshape(w.shape[0], -1).double()):
        delta = 0.7 * row.abs().mean()
        mask = row.abs() > delta
        assert torch.equal(t.codes.reshape(w.shape[0], -1)[i].long(), (torch.sign(row) * mask).long())
        assert abs(float(t.alpha_pos[i]) - float(row.abs()[mask].mean() if mask.any() else 0.0)) < 1e-6


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([PowerOfTwo(3), PowerOfTwo(4), Ternary(), IntFormat(3)]))
def test_lsq_step_gradient_is_the_papers(seed, fmt):
    """d/ds of s R(clamp(v/s)) is R(v/s) - v/s inside the range and -Q_N / Q_P outside (Esser et al. 2020)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(64, generator=g) * 3
    spec = QuantSpec(fmt, PerTensor())
    step = torch.tensor(0.4, requires_grad=True)
    out = lsq_fake_quant(v, step, spec, 1.0)
    out.sum().backward()
    x = v / 0.4
    if isinstance(fmt, PowerOfTwo):
        top = 2.0 ** (fmt.n_exponents - 1)
        q_n = q_p = top
        rounded = torch.sign(x) * top * torch.tensor([_nearest_pow2_level(float(a) / top, fmt.n_exponents)
                                                      for a in x.abs()])
    else:
        q_n, q_p = (1, 1) if isinstance(fmt, Ternary) else (-fmt.qmin, fmt.qmax)
        rounded = torch.round(x)
    inside = (x > -q_n) & (x < q_p)
    expected = torch.where(inside, rounded - x, torch.where(x <= -q_n, torch.tensor(-float(q_n)),
                                                            torch.tensor(float(q_p)))).sum()
    assert torch.allclose(step.grad, expected.float(), rtol=1e-4, atol=1e-4)


def _nearest_pow2_level(m: float, n: int) -> float:
    """Brute force: the nearest of {0, 2^-(n-1), ..., 1} to m (ties up), as LBW-Net projects."""
    levels = [0.0] + [2.0 ** -k for k in range(n - 1, -1, -1)]
    return min(levels, key=lambda level: (abs(m - level), -level))


# ---------------------------------------------------------------- which path runs which spec


@pytest.mark.parametrize("spec,message", [
    (QuantSpec(Log2(4), PerChannel(0)), r"PTQ cannot run Log2\(bits=4\) weights: the integer engine runs .*Ternary\(\)"),
    (QuantSpec(DynamicFixedPoint(8), PerChannel(0)), r"PTQ cannot run DynamicFixedPoint\(bits=8\) weights"),
    (QuantSpec(PowerOfTwo(5), PerChannel(0)), r"PTQ cannot run PowerOfTwo\(bits=5\) weights: .*use PowerOfTwo\(2..4\)"),
    (QuantSpec(IntFormat(4, signed=False), PerChannel(0)), r"PTQ cannot run IntFormat.*symmetric signed"),
    (QuantSpec(Ternary(), PerGroup(8)), r"PTQ cannot run PerGroup\(size=8, axis=-1\) weights.*PerChannel\(0\)"),
    (QuantSpec(Ternary(), PerKernel()), r"PTQ cannot run PerKernel\(\) weights"),
])
def test_ptq_refuses_weight_specs_the_integer_engine_cannot_run(spec, message):
    with pytest.raises(ConfigError, match=message):
        PTQConfig(weight=spec)
    with pytest.raises(ConfigError, match=message.replace("PTQ", r"PTQ \(rule 'fc\*'\)")):
        PTQConfig(rules=(LayerRule("fc*", weight=spec),))


def test_activation_formats_and_other_paths_are_refused_with_what_would_work():
    with pytest.raises(ConfigError, match=r"PTQ cannot run Ternary\(bits=2\) activations: activations are IntFormat"):
        PTQConfig(act=QuantSpec(Ternary()))
    with pytest.raises(ConfigError, match=r"activations take one grid per tensor; use PerTensor\(\)"):
        PTQConfig(act=QuantSpec(IntFormat(8, signed=False), PerChannel(1)))
    with pytest.raises(ConfigError, match=r"QAT cannot run Log2\(bits=4\) weights"):
        QATConfig(QuantSpec(Log2(4), PerChannel(0)))
    with pytest.raises(ConfigError, match=r"QAT cannot run IntFormat\(bits=9.*activations: activations are "
                                          r"IntFormat\(2..8\)"):
        QATConfig(act=QuantSpec(IntFormat(9, signed=False)))
    with pytest.raises(ConfigError, match=r"rounding='gptq' rounds to an integer grid; Ternary\(bits=2\) weights"):
        PTQConfig(QuantSpec(Ternary(), PerChannel(0)), rounding="gptq")
    with pytest.raises(ConfigError, match="PTQ weight must be a QuantSpec"):
        PTQConfig(weight=IntFormat(4))  # type: ignore[arg-type]

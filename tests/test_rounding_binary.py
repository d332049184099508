import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import ConfigError, DataError
from lowbit.functional import (
    binarize,
    binarize_stochastic,
    floor_ste,
    hard_sigmoid,
    hw_stochastic_round,
    lfsr_sequence,
    round_ste,
    stochastic_round,
)


def test_ste_rounding_forward_and_gradient():
    x = torch.tensor([-1.5, -0.4, 0.5, 1.5, 2.7], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y.detach(), torch.tensor([-2.0, -0.0, 0.0, 2.0, 3.0]))  # half to even
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(5))
    x.grad = None
    f = floor_ste(x)
    assert torch.equal(f.detach(), torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    f.sum().backward()
    assert torch.equal(x.grad, torch.ones(5))


@given(st.floats(-50, 50, allow_nan=False), st.integers(0, 1000))
def test_stochastic_round_is_unbiased(value, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((20000,), value, dtype=torch.float64)
    q = stochastic_round(x, gen)
    assert bool(((q == torch.floor(x)) | (q == torch.floor(x) + 1)).all())
    frac = value - float(torch.floor(torch.tensor(value, dtype=torch.float64)))
    # mean of 20000 Bernoulli(frac): std <= 0.0036; 6 sigma
    assert abs(float(q.mean()) - value) < 0.022 + 1e-12 * abs(value) or frac == 0.0


def test_stochastic_round_is_seeded():
    x = torch.rand(100) * 10
    a = stochastic_round(x, torch.Generator().manual_seed(3))
    b = stochastic_round(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_lfsr_is_maximal_length(bits):
    seq = lfsr_sequence(2**bits - 1, bits)
    assert sorted(seq.tolist()) == list(range(1, 2**bits))
    assert torch.equal(lfsr_sequence(3 * (2**bits - 1), bits)[: 2**bits - 1], seq)


def test_hw_stochastic_round_matches_its_exact_probability():
    k = 4
    for frac in (0.0, 0.125, 0.3, 0.5, 0.77, 0.9375):
        x = torch.full((15 * 40,), 3.0 + frac)  # whole LFSR periods
        q = hw_stochastic_round(x, rng_bits=k)
        assert bool(((q == 3.0) | (q == 4.0)).all())
        frac_k = int(frac * 2**k)
        assert float(q.mean()) == pytest.approx(3.0 + frac_k / (2**k - 1), abs=1e-6)
        assert abs(float(q.mean()) - (3.0 + frac)) <= 2.0**-k + 2.0**-k
    with pytest.raises(ConfigError):
        lfsr_sequence(4, 1)


def test_binarize_forward_and_hardtanh_ste():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = binarize(x)
    assert torch.equal(y.detach(), torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0]))


def test_binarize_scale():
    assert torch.equal(binarize(torch.tensor([-3.0, 2.0]), torch.tensor(0.5)), torch.tensor([-0.5, 0.5]))


def test_stochastic_binarization_mean_is_clipped_input():
    gen = torch.Generator().manual_seed(0)
    for v in (-1.5, -0.6, 0.0, 0.25, 0.9, 2.0):
        x = torch.full((40000,), v)
        y = binarize_stochastic(x, gen)
        assert set(y.unique().tolist()) <= {-1.0, 1.0}
        assert abs(float(y.mean()) - max(-1.0, min(1.0, v))) < 0.03  # std of mean <= 0.005
    assert torch.equal(hard_sigmoid(torch.tensor([-2.0, 0.0, 0.5, 3.0])), torch.tensor([0.0, 0.5, 0.75, 1.0]))


def test_binarize_rejects_nan():
    with pytest.raises(DataError, match="NaN"):
        binarize(torch.tensor([float("nan")]))

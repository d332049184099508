"""Quantized gradients (QNN, Hubara, Courbariaux et al., JMLR 2018, sec. 4): the k-bit gradient quantizer,
its identity-forward autograd wrapper, QATConfig.grad_bits and a binary QAT run with 6-bit gradients.

Oracles: the grid ``{i max|g| / (2^(k-1)-1)}`` computed here in float64, the mean over many seeded draws
for unbiasedness, hand-derived gradients of a linear map (dL/dy = c), and the same layer trained with
float gradients for the gradient that reaches the GEMM.
"""

from __future__ import annotations

import pytest
import torch

import lowbit.training as loop
from lowbit.data import Split
from lowbit.errors import CheckpointError, ConfigError, DataError
from lowbit.formats import Binary
from lowbit.functional.grad_quant import grad_quantized, quantize_grad
from lowbit.granularity import PerChannel
from lowbit.nn.unified import unified_modules
from lowbit.qat import QATConfig, TrainConfig, load_checkpoint, prepare_qat, set_grad_bits, train
from lowbit.spec import QuantSpec
from lowbit.zoo.binary import BinaryMLP


def _w1a1(grad_bits: int | None) -> QATConfig:
    return QATConfig(weight=QuantSpec(Binary(), PerChannel(0)), act=QuantSpec(Binary()), grad_bits=grad_bits)


def _data(n: int = 320, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = (x[:, 0, 10:18, 10:18].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, :, :14].mean(dim=(1, 2)) > 0).long()
    return Split(x, y)


def _model(grad_bits: int | None, data: Split) -> torch.nn.Module:
    torch.manual_seed(0)
    return prepare_qat(BinaryMLP(hidden=32, depth=2), _w1a1(grad_bits), data.x[:64])


TRAIN = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=0.01, augment=False)


# ---------------------------------------------------------------- the quantizer


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 16])
def test_values_lie_on_the_k_bit_grid_of_the_max_scale(bits):
    g = torch.randn(4000, generator=torch.Generator().manual_seed(bits), dtype=torch.float64) * 1e-3
    q = quantize_grad(g, bits, torch.Generator().manual_seed(1))
    n = 2 ** (bits - 1) - 1
    step = g.abs().max() / n
    codes = q / step
    assert torch.allclose(codes, codes.round(), rtol=0, atol=1e-9)
    codes = codes.round()
    assert codes.abs().max() <= n
    assert len(codes.unique()) <= 2**bits - 1
    # stochastic rounding picks one of the two neighbouring grid points
    assert bool(((codes - g / step).abs() < 1 + 1e-9).all())
    if bits <= 4:  # with 4000 values every level of a coarse grid is used
        assert set(codes.unique().tolist()) == set(range(-n, n + 1))


def test_float32_grid_and_zero_gradient():
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    q = quantize_grad(g, 6, torch.Generator().manual_seed(0))
    assert q.dtype == g.dtype and q.shape == g.shape
    codes = q.double() / (g.abs().max().double() / 31)
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    z = torch.zeros(7)
    assert torch.equal(quantize_grad(z, 6, torch.Generator().manual_seed(0)), z)
    # exact grid values are kept as they are
    on_grid = torch.tensor([-31.0, -3.0, 0.0, 5.0, 31.0]) / 31
    assert torch.equal(quantize_grad(on_grid, 6, torch.Generator().manual_seed(5)), on_grid)


def test_quantizer_is_unbiased():
    # many independent draws in one call: a stack of copies has the same max|g|, hence the same grid
    g = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws = 4000
    bits = 4
    q = quantize_grad(g.repeat(draws, 1), bits, torch.Generator().manual_seed(123))
    step = float(g.abs().max() / 7)
    err = (q.mean(dim=0) - g).abs()
    # each draw's error is in (-step, step) with variance <= step^2 / 4: the std of the mean is <= step / (2 sqrt(N))
    bound = 6 * step / (2 * draws**0.5)
    assert float(err.max()) < bound
    assert abs(float((q.mean(dim=0) - g).mean())) < bound / 10
    # the test has power: round-to-nearest (generator=None) is biased by far more than the bound
    nearest = quantize_grad(g, bits)
    assert float((nearest - g).abs().max()) > 10 * bound


def test_quantizer_is_seeded_and_leaves_the_global_rng_alone():
    g = torch.randn(100, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    a = quantize_grad(g, 6, torch.Generator().manual_seed(7))
    b = quantize_grad(g, 6, torch.Generator().manual_seed(7))
    c = quantize_grad(g, 6, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_quantizer_rejects_bad_bits_and_non_finite_gradients():
    g = torch.ones(3)
    for bits in (1, 17, 0, 6.0, True):
        with pytest.raises(ConfigError, match="gradient bits"):
            quantize_grad(g, bits)
    with pytest.raises(DataError, match="NaN"):
        quantize_grad(torch.tensor([1.0, float("nan")]), 6)
    with pytest.raises(ConfigError):
        grad_quantized(g, 1, None)


# ---------------------------------------------------------------- the autograd wrapper


def test_forward_is_exactly_the_identity_and_draws_nothing():
    x = torch.randn(8, 16, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    y = grad_quantized(x, 6, gen)
    assert torch.equal(y, x) and y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(gen.get_state(), state)  # the noise is drawn in the backward pass only


def test_backward_gradient_is_the_quantized_one_for_weight_and_input():
    g0 = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, generator=g0, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 12, generator=g0, dtype=torch.float64, requires_grad=True)
    c = torch.randn(16, 5, generator=g0, dtype=torch.float64)
    y = grad_quantized(x @ w.T, 6, torch.Generator().manual_seed(42))
    (y * c).sum().backward()  # dL/dy = c exactly
    qc = quantize_grad(c, 6, torch.Generator().manual_seed(42))
    assert not torch.equal(qc, c)
    assert torch.allclose(w.grad, qc.T @ x.detach(), rtol=1e-12, atol=0)
    assert torch.allclose(x.grad, qc @ w.detach(), rtol=1e-12, atol=0)


def test_unified_layer_quantizes_the_gradient_into_its_gemm(monkeypatch):
    data = _data(128)
    model = _model(None, data)
    layers = unified_modules(model)
    name, last = layers[-1]  # the classifier: the first backward, its upstream gradient is the loss's
    seen: list[torch.Tensor] = []
    original = last._compute

    def compute(x, w, b):
        y = original(x, w, b)
        if y.requires_grad:
            y.register_hook(lambda g: seen.append(g.detach().clone()))
        return y

    monkeypatch.setattr(last, "_compute", compute)
    x, y = data.x[:64], data.y[:64]

    def backward():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    backward()  # float gradients
    with torch.no_grad():
        out_float = model(x)
    assert set_grad_bits(model, 6, torch.Generator().manual_seed(9)) == [n for n, _ in layers]
    with torch.no_grad():
        assert torch.equal(model(x), out_float)  # the forward pass is untouched
    backward()
    float_g, quant_g = seen
    assert not torch.equal(float_g, quant_g)
    assert torch.equal(quant_g, quantize_grad(float_g, 6, torch.Generator().manual_seed(9)))
    # set_grad_bits reached every quantized layer, not only the classifier checked above
    assert all(u.grad_bits == 6 for _, u in layers)


# ---------------------------------------------------------------- QATConfig and training


def test_qat_config_validates_grad_bits():
    assert QATConfig().grad_bits is None
    for bits in (2, 6, 16):
        assert QATConfig(grad_bits=bits).grad_bits == bits
    for bad in (1, 0, -3, 17, 6.0, "6", True):
        with pytest.raises(ConfigError, match="grad_bits"):
            QATConfig(grad_bits=bad)
    assert "grad_bits=6" in repr(QATConfig(grad_bits=6))  # the run record holds it (qat.train's options)


def test_prepare_qat_sets_grad_bits_on_every_quantized_layer():
    data = _data(128)
    off = _model(None, data)
    assert all(u.grad_bits is None and u.grad_generator is None for _, u in unified_modules(off))
    on = _model(6, data)
    layers = unified_modules(on)
    assert len(layers) == 3 and all(u.grad_bits == 6 for _, u in layers)
    assert len({id(u.grad_generator) for _, u in layers}) == 1  # one generator per model


def test_binary_qat_trains_with_6_bit_gradients():
    data = _data()
    model = _model(6, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    history = train(model, data, TRAIN, progress=False)
    assert torch.isfinite(torch.tensor(history[0]["loss"]))
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert torch.equal(torch.get_rng_state(), state)
    # the gradients were quantized: the same run with float gradients ends elsewhere
    ref = _model(None, data)
    train(ref, data, TRAIN, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_resume_is_bit_identical_and_refuses_other_grad_bits(tmp_path):
    data = _data(192)
    cfg2 = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=0.01, augment=False)
    a = _model(6, data)
    train(a, data, cfg2, tmp_path / "a", progress=False)

    class Kill(Exception):
        pass

    original = loop.save_checkpoint

    def save_and_die(*args, **kwargs):
        original(*args, **kwargs)
        raise Kill

    c = _model(6, data)
    loop.save_checkpoint = save_and_die
    try:
        with pytest.raises(Kill):
            train(c, data, cfg2, tmp_path / "c", progress=False)
    finally:
        loop.save_checkpoint = original
    assert load_checkpoint(tmp_path / "c" / "checkpoint.pt")["epoch"] == 1
    with pytest.raises((ConfigError, CheckpointError), match="grad_bits"):
        train(_model(4, data), data, cfg2, tmp_path / "c", resume=True, progress=False)
    d = _model(6, data)
    train(d, data, cfg2, tmp_path / "c", resume=True, progress=False)
    for (k, va), (_, vd) in zip(a.state_dict().items(), d.state_dict().items()):
        assert torch.equal(va, vd), k

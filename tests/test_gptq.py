import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.errors import ConfigError
from lowbit.functional.gptq import gptq_codes
from lowbit.integer import to_integer
from lowbit.nn import UnifiedConv, unified_modules
from lowbit.ptq import PTQConfig, int_weight, quantize, quantizers_off, uint_act
from lowbit.rounding import input_patches, patch_moments
from lowbit.zoo.recipes import evaluate


def _err(w, q, s, h):
    d = (w - s * q).double()
    return float(torch.einsum("gri,gij,grj->", d, h.double(), d))


def _correlated_h(k, gen, n=400):
    x = torch.randn(n, k, generator=gen) @ torch.randn(k, k, generator=gen) + torch.randn(k, generator=gen)
    return (x.t() @ x / n)[None]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 40), block=st.sampled_from([1, 3, 64]))
def test_diagonal_hessian_gives_nearest_rounding(seed, k, block):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 5, k, generator=gen)
    s = torch.rand(1, 5, 1, generator=gen) * 0.2 + 0.01
    h = torch.diag_embed(torch.rand(1, k, generator=gen) + 0.1)
    codes = gptq_codes(w, h, s, torch.zeros(1, 1, 1), -8, 7, block=block)
    assert torch.equal(codes, torch.clamp(torch.round(w / s), -8, 7))


def test_block_size_does_not_change_the_result():
    gen = torch.Generator().manual_seed(1)
    w, h = torch.randn(2, 6, 50, generator=gen), torch.cat([_correlated_h(50, gen) for _ in range(2)])
    s = torch.full((2, 6, 1), 0.05)
    a = gptq_codes(w, h, s, torch.zeros(1, 1, 1), -127, 127, block=7)
    b = gptq_codes(w, h, s, torch.zeros(1, 1, 1), -127, 127, block=64)
    assert (a != b).float().mean() < 0.01  # float32 summation order only


def test_gptq_beats_nearest_and_approaches_the_brute_force_optimum():
    gen = torch.Generator().manual_seed(0)
    k, qmin, qmax = 4, -4, 3
    wins = gap_g = gap_n = 0.0
    trials = 40
    grid = torch.tensor(list(itertools.product(range(qmin, qmax + 1), repeat=k)), dtype=torch.float32)
    for _ in range(trials):
        h = _correlated_h(k, gen)
        w = torch.randn(1, 1, k, generator=gen) * 0.3
        s = torch.full((1, 1, 1), 0.1)
        nearest = torch.clamp(torch.round(w / s), qmin, qmax)
        g = gptq_codes(w, h, s, torch.zeros(1, 1, 1), qmin, qmax)
        d = (w[0, 0] - 0.1 * grid).double()  # every code vector: the exact optimum
        best = float(torch.einsum("ni,ij,nj->n", d, h[0].double(), d).min())
        e_g, e_n = _err(w, g, s, h), _err(w, nearest, s, h)
        assert e_g >= best - 1e-9
        wins += e_g <= e_n + 1e-9
        gap_g, gap_n = gap_g + e_g - best, gap_n + e_n - best
    assert wins >= 0.8 * trials
    assert gap_g < 0.5 * gap_n  # GPTQ closes most of the gap between nearest rounding and the optimum


def test_gptq_rejects_bad_shapes_and_statistics():
    with pytest.raises(ConfigError, match="w \\(G, R, K\\)"):
        gptq_codes(torch.zeros(3, 4), torch.eye(4)[None], torch.ones(1), torch.zeros(1), -8, 7)
    with pytest.raises(ConfigError, match="NaN"):
        gptq_codes(torch.zeros(1, 2, 2), torch.full((1, 2, 2), float("nan")), torch.ones(1, 1, 1),
                   torch.zeros(1, 1, 1), -8, 7)


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 5, 3, padding=1, stride=2), nn.Conv2d(4, 6, 1),
                                  nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 3, groups=2)])
def test_patch_moments_match_the_explicit_im2col(conv):
    u = UnifiedConv(conv, nn.Identity(), False, None, None)
    x = torch.randn(2, conv.in_channels, 9, 9)
    h, s, n = patch_moments(u, x)
    p = input_patches(u, x).double()  # generic path: (G, K, L)
    assert n == p.shape[2]
    assert torch.allclose(h.double(), p @ p.transpose(1, 2), rtol=1e-4, atol=1e-3)
    assert torch.allclose(s.double(), p.sum(2), rtol=1e-4, atol=1e-3)
    # the patches reproduce the convolution
    y = torch.einsum("grk,gkl->grl", conv.weight.reshape(conv.groups, -1, p.shape[1]).double(), p)
    ref = (conv(x) - conv.bias[None, :, None, None]).double()
    assert torch.allclose(y.reshape(conv.out_channels, 2, -1).transpose(0, 1).reshape(ref.shape), ref, atol=1e-4)


@pytest.fixture(scope="module")
def fashion():
    return fashion_mnist("train").take(64), fashion_mnist("test").take(2000)


@torch.no_grad()
def test_gptq_ptq_is_on_the_grid_unbiased_and_integer_exact(fashion):
    calib, test = fashion
    model = zoo.pretrained("cnn")
    q = quantize(model, [calib.x], PTQConfig(int_weight(4), rounding="gptq"))
    for _, m in unified_modules(q):
        codes = m.weight / m.weight_quant.scale.view(-1, *[1] * (m.weight.ndim - 1))
        assert torch.allclose(codes, codes.round(), atol=1e-4)  # the weight is its own quantized value
    # bias correction: each layer's mean output over the calibration data is the float layer's
    conv = q.conv2
    captured = {}
    hook = conv.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
    with quantizers_off(q):
        q(calib.x)
    hook.remove()
    plain = quantize(model, [calib.x], PTQConfig(int_weight(4), bias_correction=False)).conv2
    mean = lambda y: y.mean(dim=(0, 2, 3))  # noqa: E731
    x2 = captured["x"]
    ref = mean(plain._compute(x2, plain.weight, plain.bias))  # the float layer
    shift_plain = (mean(plain._compute(x2, plain.weight_quant.fake(plain.weight), plain.bias)) - ref).abs().mean()
    shift_gptq = (mean(conv._compute(x2, conv.weight, conv.bias)) - ref).abs().mean()
    assert shift_gptq < 0.1 * shift_plain
    # the integer model reads the same codes back: identical outputs
    im = to_integer(q, (calib.x[:2],))
    x = test.x[:256]
    assert torch.equal(im(x), q(x))


def test_gptq_is_at_least_as_accurate_as_nearest_at_4_bits(fashion):
    calib, test = fashion
    model = zoo.pretrained("cnn")
    accs = {r: evaluate(quantize(model, [calib.x], PTQConfig(int_weight(4), uint_act(4), rounding=r)), test)
            for r in ("nearest", "gptq")}
    assert accs["gptq"] >= accs["nearest"] - 0.005, accs


def test_rounding_option_is_validated():
    with pytest.raises(ConfigError, match="rounding"):
        PTQConfig(rounding="adaround")

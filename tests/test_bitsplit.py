"""BitSplit-Net (lowbit.functional.bitsplit, lowbit.nn.bitsplit, lowbit.bitwise.bitsplit): the bitwise activation
function against hand-computed values and gradients, bad widths, the threshold sets against brute force over every
accumulator, the C epilogue against its PyTorch form, and the deployed bitwise forward against the eval-mode model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.bitwise.bitsplit import (im2col_words, im2col_words_reference, threshold_bits, threshold_bits_reference,
                                     threshold_signs, threshold_signs_reference)
from lowbit.bitwise.pack import pack_bits
from lowbit.errors import ConfigError, ShapeError
from lowbit.functional import bitsplit as fb
from lowbit.nn import bitsplit as nb

Y = torch.tensor([-0.5, 0.1, 0.2, 0.5, 0.6, 0.9, 1.5])


def test_levels_and_bits_by_hand():
    # q = floor(clip(y, 0, 1) * 3 + 1/2): 0, 0.8, 1.1, 2.0, 2.3, 3.2, 3.5 -> 0 0 1 2 2 3 3
    assert fb.levels(Y, 2).tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert fb.bitwise_activation(Y, 2, 0).tolist() == [0, 0, 1, 0, 0, 1, 1]  # LSB: q mod 2
    assert fb.bitwise_activation(Y, 2, 1).tolist() == [0, 0, 0, 1, 1, 1, 1]  # MSB: q >= 2
    assert fb.bitwise_activation(Y, 1, 0).tolist() == [0, 0, 0, 1, 1, 1, 1]  # 1 bit: y >= 1/2
    # 4 bits: q = floor(clip(y) * 15 + 1/2) = 0 2 3 8 9 14 15
    assert fb.levels(Y, 4).tolist() == [0, 2, 3, 8, 9, 14, 15]
    assert fb.bitwise_activation(Y, 4, 3).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert fb.bitwise_activation(Y, 4, 1).tolist() == [0, 1, 1, 0, 0, 1, 1]


def test_split_activation_recomposes_the_level():
    y = torch.linspace(-0.3, 1.3, 401)
    for n in (1, 2, 3, 4, 8):
        bits = fb.split_activation(y, n)
        assert bits.shape == (n, 401)
        weights = torch.tensor([float(1 << k) for k in range(n)])[:, None]
        assert torch.equal((bits * weights).sum(0), fb.levels(y, n))
        for k in range(n):
            assert torch.equal(bits[k], fb.bitwise_activation(y, n, k))


def test_straight_through_gradient_is_the_clipped_identity():
    for n, k in ((2, 0), (2, 1), (4, 2)):
        y = Y.clone().requires_grad_(True)
        (fb.bitwise_activation(y, n, k) * torch.arange(1.0, 8.0)).sum().backward()
        assert y.grad.tolist() == [0, 2, 3, 4, 5, 6, 0]  # d/dy = 1 on [0, 1], 0 outside
    y = Y.clone().requires_grad_(True)
    fb.split_activation(y, 3).sum().backward()  # three bits, each passing the gradient once
    assert y.grad.tolist() == [0, 3, 3, 3, 3, 3, 0]


@pytest.mark.parametrize("bad", [0, 9, 16, -1, 2.0, True, "2", None])
def test_bad_widths_name_the_value_and_the_range(bad):
    with pytest.raises(ConfigError, match=r"n = .*1\.\.8"):
        fb.check_bits(bad)
    with pytest.raises(ConfigError, match=r"1\.\.8"):
        nb.BitSplitCNN(bits=bad, channels=4)
    with pytest.raises(ConfigError, match=repr(bad).replace(".", r"\.")):
        fb.bitwise_activation(Y, bad, 0)


def test_bad_bit_index_and_inputs():
    with pytest.raises(ConfigError, match=r"k = 2 .* 0\.\.1"):
        fb.bitwise_activation(Y, 2, 2)
    with pytest.raises(Exception, match="NaN"):
        fb.bitwise_activation(torch.tensor([float("nan")]), 2, 0)
    with pytest.raises(ShapeError):
        nb.BitSplitCNN(2, 4)(torch.zeros(1, 3, 28, 28))


def test_level_thresholds_against_every_accumulator():
    """Brute force: for each integer acc in [-K, K], the thresholds give q(acc * scale + shift) >= j exactly,
    for positive, negative and zero scales; the path subsets give bit k by parity."""
    g = torch.Generator().manual_seed(0)
    k_acc = 40
    scale = torch.cat([torch.rand(6, generator=g) * 0.1, -torch.rand(6, generator=g) * 0.1, torch.zeros(2)])
    shift = torch.rand(14, generator=g) * 2 - 0.5
    acc = torch.arange(-k_acc, k_acc + 1)
    for n in (1, 2, 3, 4):
        thr, flip = fb.level_thresholds(scale, shift, n, k_acc)
        q = fb.levels(acc[None, :].float() * scale[:, None] + shift[:, None], n)  # (C, 2K + 1)
        for j in range(1, (1 << n)):
            pred = (acc[None, :] >= thr[:, j - 1:j]) ^ flip[:, None]
            assert torch.equal(pred, q >= j), (n, j)
        grid = acc[None, :, None].expand(1, -1, 14).transpose(1, 2).contiguous()  # (1, C, 2K + 1): acc per channel
        assert torch.equal(fb.level_from_thresholds(grid, thr, flip)[0], q.to(torch.int32))
        for k in range(n):
            bit = fb.bit_from_thresholds(grid, fb.path_thresholds(thr, n, k), flip)[0]
            assert torch.equal(bit, fb.bits_of(q, n)[k].bool()), (n, k)


@pytest.mark.parametrize("pool", [False, True])
def test_threshold_epilogue_c_equals_reference(pool):
    g = torch.Generator().manual_seed(1)
    for o, t, nbits in ((5, 1, 1), (64, 3, 2), (7, 15, 4)):
        acc = torch.randint(-30, 31, (2, 6, 4, o), generator=g, dtype=torch.int32)
        thr = torch.randint(-30, 31, (o, t), generator=g, dtype=torch.int32)  # unsorted on purpose
        inv = torch.rand(o, generator=g) < 0.5
        ref = threshold_signs_reference(acc, thr, inv, nbits, pool)
        assert ref.shape == (nbits, 2, 3 if pool else 6, 2 if pool else 4, o)
        assert torch.equal(threshold_signs(acc, thr, inv, nbits, pool), ref)
        bits = threshold_bits(acc, thr, inv, nbits, pool)
        assert torch.equal(bits, threshold_bits_reference(acc, thr, inv, nbits, pool))
        assert torch.equal(bits, pack_bits(ref > 0))
    with pytest.raises(ShapeError, match="int32"):
        threshold_signs(acc.to(torch.int64), thr, inv, 1, pool)
    with pytest.raises(ConfigError, match="nb"):
        threshold_signs(acc, thr, inv, 9, pool)


def test_im2col_words_c_equals_reference():
    g = torch.Generator().manual_seed(3)
    for wp in (1, 2, 3):
        x = torch.randint(-2**62, 2**62, (2, 5, 4, wp), generator=g).view(torch.uint64)
        rows = im2col_words(x)
        assert torch.equal(rows, im2col_words_reference(x))
        assert rows.shape == (40, 9 * wp)
        # row (0, 0, 0): taps (1, 1), (1, 2), (2, 1), (2, 2) are pixels (0, 0), (0, 1), (1, 0), (1, 1); others zero
        r = rows[0].reshape(9, wp).view(torch.int64)
        assert torch.equal(r[4], x[0, 0, 0].view(torch.int64)) and torch.equal(r[8], x[0, 1, 1].view(torch.int64))
        assert not bool(r[[0, 1, 2, 3, 6]].any())
    with pytest.raises(ShapeError, match="uint64"):
        im2col_words(x.view(torch.int64))


def _random_model(n: int, c: int, seed: int) -> nb.BitSplitCNN:
    """A model with trained-looking BatchNorms: statistics from real images, gammas of both signs."""
    from lowbit.data import load

    torch.manual_seed(seed)
    m = nb.BitSplitCNN(n, c)
    x = load("fashion-mnist", "test").x[:128]
    with torch.no_grad():
        m.train()(x)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.copy_(torch.randn(mod.weight.shape) * 0.4)  # some negative: inverted thresholds
                mod.bias.copy_(torch.rand(mod.bias.shape) * 0.8)
                mod.weight[0] = 0.0  # a constant channel
    return m.eval()


def test_eval_mode_bn_is_the_folded_batchnorm():
    m = _random_model(2, 4, 0)
    acc = torch.randn(3, 4, 5, 5) * 10
    assert torch.allclose(m._bn(m.bn1, acc), F.batch_norm(acc, m.bn1.running_mean, m.bn1.running_var,
                                                           m.bn1.weight, m.bn1.bias, False, 0.0, m.bn1.eps),
                          rtol=1e-5, atol=1e-4)


def test_binary_stage_against_a_brute_force_oracle():
    """One binary layer of path k: sum_k w b over zero-padded bits (int64 loops), BN folded in float32, bit k of
    the level; the engine's signs (checked wrappers and direct C calls) must match."""
    g = torch.Generator().manual_seed(2)
    n_bits, k, cin, cout = 3, 1, 5, 6
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(cout).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        bn.weight.copy_(torch.randn(cout, generator=g) * 0.05)
        bn.bias.copy_(torch.rand(cout, generator=g))
        bn.running_mean.copy_(torch.randn(cout, generator=g))
    bits = (torch.rand(2, 4, 6, cin, generator=g) < 0.5).to(torch.int64)  # (N, H, W, C)
    w = torch.where(conv.weight >= 0, 1, -1).to(torch.int64)  # (O, C, 3, 3)
    padded = torch.zeros(2, 6, 8, cin, dtype=torch.int64)
    padded[:, 1:5, 1:7] = bits
    acc = torch.zeros(2, 4, 6, cout, dtype=torch.int64)
    for y in range(4):
        for x in range(6):
            for o in range(cout):
                acc[:, y, x, o] = (padded[:, y:y + 3, x:x + 3, :].permute(0, 3, 1, 2) * w[o]).sum(dim=(1, 2, 3))
    a, b = nb.folded_bn(bn)
    with torch.no_grad():
        want_bit = fb.bits_of(fb.levels(acc.float() * a + b, n_bits), n_bits)[k]  # (N, H, W, O)
    words = pack_bits(bits.bool())  # (N, H, W, 1) packed pixels
    fast = nb._fast_libraries()
    for pool in (False, True):
        expect = want_bit if not pool else fb.bits_of(fb.levels(
            F.max_pool2d(acc.permute(0, 3, 1, 2).float(), 2).permute(0, 2, 3, 1) * a.detach() + b.detach(), n_bits),
            n_bits)[k]
        for packed in (False, True):
            st = nb._stage(conv, bn, n_bits, k, pool, packed)
            want = pack_bits(expect.bool()) if packed else (2 * expect - 1).to(torch.int8)
            assert torch.equal(nb._stage_checked(words, st), want), (pool, packed)
            if fast is not None:
                assert torch.equal(nb._stage_fast(words, st, *fast), want), (pool, packed)


@pytest.mark.parametrize("n, c", [(1, 8), (2, 8), (4, 8), (2, 70)])  # 70: two words per pixel, 2c = 140 three
def test_deployed_forward_equals_the_eval_model_bit_for_bit(n, c):
    from lowbit.data import load

    m = _random_model(n, c, n)
    x = load("fashion-mnist", "test").x[:300]
    with torch.no_grad():
        ref = m(x)
    d = nb.deploy(m)
    out = d(x)  # the compiled plan where the C library is built
    assert torch.equal(out, ref)  # equal logits, so equal predictions
    assert torch.equal(d(x[:1]), ref[:1])  # batch 1
    assert torch.equal(d.forward_layers(x), ref)  # layer by layer
    wild = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(n)) * 12 - 6  # codes clamped both ends
    with torch.no_grad():
        assert torch.equal(d(wild), m(wild))
    with pytest.raises(ShapeError, match="28, 28"):
        d(x[:, :, :27])
    with pytest.raises(ShapeError, match="float32"):
        d(x.double())


def test_a_training_step_moves_the_weights_and_keeps_binary_latents_clipped():
    from lowbit.data import load

    torch.manual_seed(0)
    m = nb.BitSplitCNN(2, 4).train()
    data = load("fashion-mnist", "test")
    opt = torch.optim.Adam(m.parameters(), lr=0.5)
    before = [p.detach().clone() for p in m.parameters()]
    loss = F.cross_entropy(m(data.x[:32]), data.y[:32])
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in m.parameters())
    assert float(m.paths[0].conv2.weight.grad.abs().sum()) > 0  # the gradient crosses the bitwise activations
    opt.step()
    m.clip_latent()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert float(m.paths[1].conv3.weight.detach().abs().max()) <= 1.0

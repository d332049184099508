"""The prepacked int8 GEMM (csrc/gemm.c: VNNI, or AVX2 where that is all the CPU has) against int64 matmul, the C epilogue and the torch._int_mm path."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lowbit.integer.backend import Kernels
from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.native import cext
from lowbit.integer import kernels, vnni
from lowbit.integer.lower import to_integer
from lowbit.ptq import PTQConfig, quantize

pytestmark = pytest.mark.skipif(not vnni.available(), reason="needs an AVX512-VNNI or AVX2 CPU and a C compiler")


def _rand(shape, gen, lo=-128, hi=128):
    return torch.randint(lo, hi, shape, dtype=torch.int8, generator=gen)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 150), st.integers(1, 300), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_gemm_equals_int64_matmul(m, n, k, threads, seed):
    g = torch.Generator().manual_seed(seed)
    a, w = _rand((m, k), g), _rand((n, k), g)
    packed = vnni.pack_weight(w)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = vnni.gemm(vnni.pack_rows(a, packed.kp), packed, packed.correction)
    finally:
        torch.set_num_threads(before)
    assert out.dtype == torch.int32
    assert torch.equal(out.to(torch.int64), a.to(torch.int64) @ w.to(torch.int64).T)
    if k % 4 == 0:  # int8 rows, flipped by the kernel
        assert torch.equal(vnni.gemm(a, packed, packed.correction), out)
    else:
        with pytest.raises(ValueError, match="K % 4"):
            vnni.gemm(a, packed, packed.correction)


def test_gemm_extremes_do_not_overflow():
    """All -128 activations (flipped to 0) and all 127 (flipped to 255) against +-128/127 weights, at the longest
    K allowed: 2^16, where the raw sums of (s + 128) w reach 2^16 * 255 * 128 = 2 139 095 040 (just below 2^31)."""
    k = vnni.MAX_K
    for av in (-128, 127):
        for wv in (-128, 127):
            a, w = torch.full((7, k), av, dtype=torch.int8), torch.full((19, k), wv, dtype=torch.int8)
            p = vnni.pack_weight(w)
            out = vnni.gemm(vnni.pack_rows(a, p.kp), p, p.correction)
            assert bool((out == av * wv * k).all())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 100), st.integers(1, 200), st.booleans(), st.integers(0, 2**31 - 1))
def test_fused_epilogue_equals_int_mm_then_c_epilogue(m, n, k, with_residual, seed):
    g = torch.Generator().manual_seed(seed)
    a, w = _rand((m, k), g), _rand((n, k), g)
    bias = torch.randint(-(2**20), 2**20, (n,), dtype=torch.int32, generator=g)
    mult = torch.randint(1, 2**24, (n,), generator=g)
    shift = torch.randint(10, 40, (n,), generator=g)
    half = (torch.ones_like(shift) << shift) >> 1
    res = _rand((m, n), g) if with_residual else None
    m2 = torch.randint(1, 2**24, (n,), generator=g) if with_residual else None
    ref = cext.requant(kernels.int_mm(a, w), bias, mult, shift, -3, -128, 100, res, 5, m2, half)
    p = vnni.pack_weight(w)
    out = vnni.gemm(vnni.pack_rows(a, p.kp), p, bias + p.correction,
                    vnni.Requant(mult, shift, half, -3, -128, 100, m2, 5), res)
    assert torch.equal(out, ref)


def test_im2col_rows_match_the_int8_im2col():
    g = torch.Generator().manual_seed(0)
    x = _rand((2, 5, 9, 7), g)
    cols, _ = kernels.im2col(x, (3, 3), (2, 1), (1, 2), (1, 1), -7, use_c=False)
    rows = vnni.im2col(x, (3, 3), (2, 1), (1, 2), (1, 1), -7, (5, 9), 48)
    assert rows.shape == (cols.shape[0], 48)
    assert torch.equal(rows[:, :45], (cols.to(torch.int16) + 128).to(torch.uint8))
    assert bool((rows[:, 45:] == 0).all())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.sampled_from([4, 8, 12, 32]), st.integers(3, 12), st.integers(3, 12), st.integers(1, 70),
       st.integers(1, 5), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_implicit_conv_equals_float64_conv(n, c, h, w, o, k, s, p, d, seed):
    """The implicit-GEMM conv (no im2col buffer) against an exact float64 conv with zero-point padding."""
    assume(h + 2 * p - d * (k - 1) - 1 >= 0 and w + 2 * p - d * (k - 1) - 1 >= 0)
    g = torch.Generator().manual_seed(seed)
    x, wt = _rand((n, c, h, w), g), _rand((o, c, k, k), g)
    zp = int(torch.randint(-128, 128, (1,), generator=g))
    want = F.conv2d(x.double() - zp, wt.double(), None, s, p, d) + zp * wt.double().sum((1, 2, 3)).view(1, -1, 1, 1)
    ho, wo = want.shape[2:]
    packed = vnni.pack_weight(wt.permute(0, 2, 3, 1).reshape(o, -1).contiguous())
    got = vnni.conv(x, packed, (k, k), (s, s), (p, p), (d, d), zp, (ho, wo), packed.correction)
    assert torch.equal(got.reshape(n, ho, wo, o).permute(0, 3, 1, 2).double(), want)


def test_implicit_conv_refuses_channels_not_a_multiple_of_4():
    packed = vnni.pack_weight(torch.zeros(2, 27, dtype=torch.int8))
    with pytest.raises(ValueError, match="C % 4"):
        vnni.conv(torch.zeros(1, 3, 5, 5, dtype=torch.int8), packed, (3, 3), (1, 1), (1, 1), (1, 1), 0, (5, 5),
                  packed.correction)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3),
       st.integers(0, 3), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_single_channel_im2col_matches_the_int8_im2col(n, h, w, kh, kw, s, p, d, seed):
    """The first-layer (C = 1) im2col, with its 8-byte copies, against the strided-view im2col."""
    ho, wo = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (w + 2 * p - d * (kw - 1) - 1) // s + 1
    assume(ho >= 1 and wo >= 1)
    x = _rand((n, 1, h, w), torch.Generator().manual_seed(seed))
    cols, _ = kernels.im2col(x, (kh, kw), (s, s), (p, p), (d, d), 5, use_c=False)
    kp = (kh * kw + 3) // 4 * 4
    rows = vnni.im2col(x, (kh, kw), (s, s), (p, p), (d, d), 5, (ho, wo), kp)
    assert torch.equal(rows[:, :kh * kw], (cols.to(torch.int16) + 128).to(torch.uint8))
    assert bool((rows[:, kh * kw:] == 0).all())


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 10), st.integers(1, 10), st.integers(1, 7),
       st.integers(1, 7), st.integers(1, 3), st.integers(1, 3), st.integers(0, 3), st.integers(0, 3), st.integers(1, 3),
       st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_narrow_channel_im2col_matches_the_int8_im2col(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, seed):
    """C in {1, 2, 3} (runs of 1..21 bytes, copied 8 or 4 bytes at a time within the row) against the
    strided-view im2col, for every kernel size 1..7, stride, padding and dilation; the K..Kp tail is zero."""
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    assume(ho >= 1 and wo >= 1)
    x = _rand((n, c, h, w), torch.Generator().manual_seed(seed))
    cols, _ = kernels.im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), -9, use_c=False)
    k = kh * kw * c
    kp = (k + 3) // 4 * 4
    rows = vnni.im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), -9, (ho, wo), kp)
    assert rows.shape == (n * ho * wo, kp)
    assert torch.equal(rows[:, :k], (cols.to(torch.int16) + 128).to(torch.uint8))
    assert bool((rows[:, k:] == 0).all())


def test_pack_weight_rejects_bad_input():
    with pytest.raises(ValueError, match="int8"):
        vnni.pack_weight(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="K = 65537"):
        vnni.pack_weight(torch.zeros(1, 65537, dtype=torch.int8))


@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet"])
def test_models_equal_with_and_without_vnni(name):
    calib, test = fashion_mnist("train").take(32), fashion_mnist("test")
    im = to_integer(quantize(zoo.pretrained(name), [calib.x], PTQConfig()), (calib.x[:2],))
    env_fast = im.run(test.x[:300])
    assert any(getattr(n.op, "_packed", None) is not None for n in im.nodes)
    env_im2col = im.run(test.x[:300], Kernels.VNNI_IM2COL)  # the VNNI GEMM on an im2col buffer
    env_int_mm = im.run(test.x[:300], Kernels.INT_MM)
    for key, value in env_fast.items():
        assert torch.equal(value, env_int_mm[key]), key
        assert torch.equal(env_im2col[key], env_int_mm[key]), key

"""The bitwise engine (lowbit.bitwise): packing, the PyTorch reference against float64 matmul / conv2d, and every
compiled backend (AVX-512 VPOPCNTDQ, AVX2, scalar) against the reference, threshold epilogue included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lowbit.bitwise import kernels
from lowbit.bitwise.pack import (clear_padding, pack_bits, pack_signs, padding_is_clear, unpack_bits, unpack_signs,
                                 words)
from lowbit.bitwise.reference import (binary_conv2d_reference, binary_gemm_reference, threshold_from_affine,
                                      threshold_reference)
from lowbit.errors import ConfigError, DataError, ShapeError

BACKENDS = kernels.backends()
COMPILED = [b for b in BACKENDS if b != kernels.REFERENCE]
KS = st.one_of(st.sampled_from([1, 2, 63, 64, 65, 127, 128, 129, 576]), st.integers(1, 300))


def signs(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).double() * 2 - 1


def float_gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The oracle: float64 matmul of the signs (exact: |sum| <= K < 2^53)."""
    return (torch.where(x >= 0, 1.0, -1.0).double() @ torch.where(w >= 0, 1.0, -1.0).double().T).to(torch.int32)


def dirty(packed: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """The same words with random padding bits past k (the kernels must ignore them)."""
    out = packed.clone()
    if k % 64 and out.numel():
        g = torch.Generator().manual_seed(seed)
        noise = torch.randint(-(2**62), 2**62, out.shape[:-1], generator=g, dtype=torch.int64) * 2 + 1
        out.view(torch.int64)[..., -1] |= noise & -(1 << (k % 64))
    return out


# ---------------------------------------------------------------- packing


@given(st.integers(0, 4), st.integers(1, 3), KS)
def test_pack_unpack_round_trip(rows, lead, k):
    x = torch.randn(lead, rows, k)
    packed = pack_signs(x)
    assert packed.dtype == torch.uint64 and packed.shape == (lead, rows, words(k))
    assert torch.equal(unpack_signs(packed, k, torch.float64), torch.where(x >= 0, 1.0, -1.0).double())
    assert torch.equal(unpack_bits(packed, k), x >= 0)
    assert padding_is_clear(packed, k)


def test_pack_layout_and_sign_convention():
    """Element k is bit k % 64 of word k // 64; x >= 0 (zero included) is bit 1 (+1)."""
    k = 130
    for pos in (0, 1, 63, 64, 100, 129):
        x = -torch.ones(k)
        x[pos] = 0.0  # sign(0) = +1
        w = pack_signs(x).view(torch.int64)
        expect = torch.zeros(words(k), dtype=torch.int64)
        expect[pos // 64] = 1 << (pos % 64) if pos % 64 != 63 else -(1 << 63)
        assert torch.equal(w, expect), pos
    assert torch.equal(pack_bits(torch.ones(3, dtype=torch.bool)).view(torch.int64), torch.tensor([7]))


def test_padding_helpers():
    packed = pack_signs(torch.randn(4, 70))
    bad = dirty(packed, 70)
    assert not padding_is_clear(bad, 70) and torch.equal(clear_padding(bad, 70), packed)
    full = pack_signs(torch.randn(2, 128))
    assert padding_is_clear(full, 128) and torch.equal(clear_padding(full, 128), full)


def test_pack_rejects_nan_and_wrong_inputs():
    with pytest.raises(DataError, match="NaN"):
        pack_signs(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ShapeError, match="pack_bits"):
        pack_signs(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ShapeError, match="bool"):
        pack_bits(torch.ones(3))
    with pytest.raises(ShapeError, match="200 values take 4 words"):
        unpack_signs(pack_signs(torch.randn(3, 65)), 200)


# ---------------------------------------------------------------- reference


@given(st.integers(0, 9), st.integers(0, 9), KS)
def test_reference_gemm_equals_float64_matmul(m, n, k):
    x, w = torch.randn(m, k), torch.randn(n, k)
    out = binary_gemm_reference(pack_signs(x), pack_signs(w), k)
    assert out.dtype == torch.int32
    assert torch.equal(out, float_gemm(x, w))


def test_reference_gemm_formula_extremes():
    """a . a = K and a . (-a) = -K: the padding does not count, whatever K."""
    for k in (1, 63, 64, 65, 1000):
        x = torch.randn(1, k)
        a = pack_signs(x)
        assert int(binary_gemm_reference(a, a, k)) == k
        assert int(binary_gemm_reference(a, pack_signs(-x - (x == 0).double()), k)) == -k


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(3, 7), st.integers(3, 7),
       st.integers(1, 3), st.integers(1, 2), st.integers(0, 2), st.integers(1, 2))
def test_reference_conv2d_equals_float_conv_with_minus_one_padding(n, c, o, h, w, kk, stride, pad, dil):
    if (kk - 1) * dil + 1 > min(h, w) + 2 * pad:
        return
    x, wt = signs(n, c, h, w), signs(o, c, kk, kk)
    expect = F.conv2d(F.pad(x, (pad, pad, pad, pad), value=-1.0), wt, stride=stride, dilation=dil)
    out = binary_conv2d_reference(x, wt, stride=stride, padding=pad, dilation=dil)
    assert out.dtype == torch.int32 and torch.equal(out, expect.to(torch.int32))


def test_threshold_reference_is_the_packed_comparison():
    acc = torch.randint(-20, 21, (5, 70), dtype=torch.int32)
    thr = torch.randint(-20, 21, (70,), dtype=torch.int32)
    flip = torch.rand(70) < 0.5
    bits = threshold_reference(acc, thr, flip)
    assert bits.shape == (5, 2) and padding_is_clear(bits, 70)
    assert torch.equal(unpack_bits(bits, 70), (acc >= thr) ^ flip)


@given(st.integers(1, 200), st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=6),
       st.lists(st.floats(-300, 300, width=32), min_size=6, max_size=6))
def test_threshold_from_affine_matches_the_float_predicate(k, scales, shifts):
    """For every integer acc in [-k, k]: (acc >= thr) XOR flip == (scale acc + shift >= 0) in float32."""
    scale = torch.tensor(scales + [0.0], dtype=torch.float32)
    shift = torch.tensor(shifts[: len(scales)] + [shifts[-1]], dtype=torch.float32)
    thr, flip = threshold_from_affine(scale, shift, k)
    assert thr.dtype == torch.int32 and flip.dtype == torch.bool
    acc = torch.arange(-k, k + 1, dtype=torch.int32)[:, None]
    want = (scale * acc.float() + shift) >= 0
    assert torch.equal((acc >= thr) ^ flip, want)


def test_threshold_from_affine_rejects_nan():
    with pytest.raises(DataError, match="NaN"):
        threshold_from_affine(torch.tensor([float("nan")]), torch.tensor([0.0]), 5)


# ---------------------------------------------------------------- compiled kernels


def test_backend_is_reported_and_reference_is_last():
    assert kernels.backend() == BACKENDS[0]
    assert BACKENDS[-1] == kernels.REFERENCE
    assert set(BACKENDS) <= set(kernels.ISAS) | {kernels.REFERENCE}
    assert kernels.backend() != kernels.REFERENCE, "the C kernel did not build (a compiler is needed)"


@pytest.mark.parametrize("isa", BACKENDS)
@given(m=st.integers(0, 11), n=st.integers(0, 70), k=KS, packed_weight=st.booleans())
def test_kernel_equals_reference(isa, m, n, k, packed_weight):
    x, w = torch.randn(m, k), torch.randn(n, k)
    a, b = dirty(pack_signs(x), k, 1), dirty(pack_signs(w), k, 2)  # the padding bits are ignored
    bb = kernels.pack_weight(b, k) if packed_weight else b
    out = kernels.binary_gemm(a, bb, k, isa=isa)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out, float_gemm(x, w))


@pytest.mark.parametrize("isa", BACKENDS)
@given(m=st.integers(0, 9), n=st.integers(0, 140), k=KS, seed=st.integers(0, 2**31))
def test_threshold_epilogue_equals_reference(isa, m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = signs(m, k, generator=g), signs(n, k, generator=g)
    a, b = pack_signs(x), pack_signs(w)
    thr = torch.randint(-k - 1, k + 2, (n,), generator=g, dtype=torch.int32)
    flip = torch.rand(n, generator=g) < 0.5
    acc = float_gemm(x, w)
    bits = kernels.binary_gemm(a, kernels.pack_weight(b, k), k, thr=thr, flip=flip, isa=isa)
    assert bits.dtype == torch.uint64 and bits.shape == (m, words(n))
    assert torch.equal(bits.view(torch.int64), threshold_reference(acc, thr, flip).view(torch.int64))
    no_flip = kernels.binary_gemm(a, b, k, thr=thr, isa=isa)  # flip defaults to all False
    assert torch.equal(unpack_bits_or_empty(no_flip, n), acc >= thr)


def unpack_bits_or_empty(bits: torch.Tensor, n: int) -> torch.Tensor:
    return unpack_bits(bits, n) if n else torch.zeros(bits.shape[0], 0, dtype=torch.bool)


@pytest.mark.parametrize("isa", COMPILED)
@pytest.mark.parametrize("k", [64 * 31, 64 * 31 + 1, 64 * 62 + 5, 4608])
def test_kernel_long_rows(isa, k):
    """Long K: the AVX2 byte counters are flushed every 31 words; every backend's sums stay exact."""
    x, w = torch.randn(6, k), torch.randn(37, k)
    assert torch.equal(kernels.binary_gemm(pack_signs(x), pack_signs(w), k, isa=isa), float_gemm(x, w))
    same, opposite = pack_signs(x[:1]), pack_signs(-x[:1] - (x[:1] == 0).double())
    assert int(kernels.binary_gemm(same, same, k, isa=isa)) == k  # every popcount 0
    assert int(kernels.binary_gemm(same, opposite, k, isa=isa)) == -k  # every bit differs: 8 per byte per word


@pytest.mark.parametrize("isa", COMPILED)
def test_threads_give_the_same_result(isa):
    x, w = torch.randn(45, 300), torch.randn(70, 300)
    a, b = pack_signs(x), kernels.pack_weight(pack_signs(w), 300)
    thr = torch.randint(-50, 50, (70,), dtype=torch.int32)
    assert torch.equal(kernels.binary_gemm(a, b, 300, isa=isa, threads=2), float_gemm(x, w))
    one = kernels.binary_gemm(a, b, 300, thr=thr, isa=isa)
    assert torch.equal(kernels.binary_gemm(a, b, 300, thr=thr, isa=isa, threads=2).view(torch.int64),
                       one.view(torch.int64))


@pytest.mark.parametrize("isa", BACKENDS)
@given(n=st.integers(1, 2), c=st.integers(1, 40), o=st.integers(1, 40), hw=st.integers(3, 7), kk=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 2), dil=st.integers(1, 2))
def test_compiled_conv2d_equals_reference(isa, n, c, o, hw, kk, stride, pad, dil):
    if (kk - 1) * dil + 1 > hw + 2 * pad:
        return
    x, w = torch.randn(n, c, hw, hw), torch.randn(o, c, kk, kk)
    pw = kernels.pack_weight(pack_signs(w.reshape(o, -1)), c * kk * kk)
    out = kernels.binary_conv2d(x, pw, (kk, kk), stride, pad, dil, isa=isa)
    assert torch.equal(out, binary_conv2d_reference(x, w, stride, pad, dil))


def test_no_compiler_falls_back_to_the_reference(monkeypatch, tmp_path):
    def no_compiler(*args, **kwargs):
        raise OSError("no C compiler")

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setattr(kernels.cext, "build", no_compiler)
    kernels.library.cache_clear()
    kernels.backends.cache_clear()
    try:
        assert kernels.backend() == kernels.REFERENCE and kernels.backends() == (kernels.REFERENCE,)
        x, w = torch.randn(3, 70), torch.randn(5, 70)
        pw = kernels.pack_weight(dirty(pack_signs(w), 70, 1), 70)
        assert pw.panels is None
        assert torch.equal(kernels.binary_gemm(dirty(pack_signs(x), 70, 2), pw, 70), float_gemm(x, w))
        assert kernels.peak_gops() == 0.0
    finally:
        monkeypatch.undo()
        kernels.library.cache_clear()
        kernels.backends.cache_clear()


@pytest.mark.parametrize("isa", BACKENDS)
@given(m=st.integers(0, 5), k=KS)
def test_pack_rows_in_c_equals_pack_signs(isa, m, k):
    x = torch.randn(m, k)
    x[:, ::7] = 0.0
    x[:, 1::9] = -0.0  # -0.0 >= 0: +1, as in PyTorch
    assert torch.equal(kernels.pack_rows(x, isa=isa).view(torch.int64), pack_signs(x).view(torch.int64))


def test_pack_rows_rejects_nan_and_wrong_dtype():
    x = torch.randn(3, 70)
    x[1, 65] = float("nan")
    for isa in COMPILED:
        with pytest.raises(DataError, match="1 NaN"):
            kernels.pack_rows(x, isa=isa)
    with pytest.raises(ShapeError, match="float32"):
        kernels.pack_rows(x.double())


def test_peak_is_measured():
    if "avx512-vpopcntdq" not in BACKENDS:
        pytest.skip("no AVX-512 VPOPCNTDQ on this CPU")
    assert kernels.peak_gops(iters=20_000) > 0


# ---------------------------------------------------------------- bad input


def test_every_c_entry_point_has_a_checking_wrapper():
    """Mechanical: each exported function of the library's sources (csrc/xnor.c, csrc/ternary.c) is listed in
    kernels.ENTRY_POINTS with its wrapper."""
    import importlib
    import re

    exported = set()
    for src in kernels.SOURCE:
        exported |= set(re.findall(r"^(?:void|int|int64_t)\s+(lowbit_\w+)\s*\(", src.read_text(), re.MULTILINE))
    assert exported == set(kernels.ENTRY_POINTS)
    for target in kernels.ENTRY_POINTS.values():
        if target.startswith("lowbit."):
            module, name = target.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(module), name)), target


def test_bad_inputs_give_clear_errors():
    k = 100
    a, b = pack_signs(torch.randn(4, k)), pack_signs(torch.randn(6, k))
    gemm = kernels.binary_gemm
    with pytest.raises(ShapeError, match=r"a is torch.int64; expected packed uint64 words: pass pack_signs\(a\)"):
        gemm(a.view(torch.int64), b, k)
    with pytest.raises(ShapeError, match="b is torch.float32"):
        gemm(a, torch.randn(6, k), k)
    with pytest.raises(ShapeError, match="b has 1 words per row, but K = 100 values take 2"):
        gemm(a, pack_signs(torch.randn(6, 60)), k)
    with pytest.raises(ShapeError, match=r"not contiguous; pass a.contiguous\(\)"):
        gemm(pack_signs(torch.randn(2, 4, k)).transpose(0, 1)[0], b, k)  # (4, 2) words, every other row
    with pytest.raises(ShapeError, match="expected 2-D"):
        gemm(a[None], b, k)
    with pytest.raises(ShapeError, match="is a list"):
        gemm([1, 2], b, k)
    for bad_k in (0, True, 2.0, 2**31):
        with pytest.raises(ConfigError, match="k = "):
            gemm(a, b, bad_k)
    with pytest.raises(ConfigError, match="isa = 'avx9'"):
        gemm(a, b, k, isa="avx9")
    with pytest.raises(ConfigError, match="threads"):
        gemm(a, b, k, threads=0)
    with pytest.raises(ShapeError, match=r"thr must be a torch.int32 tensor of shape \(6,\)"):
        gemm(a, b, k, thr=torch.zeros(6, dtype=torch.int64))
    with pytest.raises(ShapeError, match=r"thr must be a torch.int32 tensor of shape \(6,\)"):
        gemm(a, b, k, thr=torch.zeros(5, dtype=torch.int32))
    with pytest.raises(ShapeError, match="flip must be a torch.bool"):
        gemm(a, b, k, thr=torch.zeros(6, dtype=torch.int32), flip=torch.zeros(6, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="flip without thr"):
        gemm(a, b, k, flip=torch.zeros(6, dtype=torch.bool))
    pw = kernels.pack_weight(b, k)
    with pytest.raises(ShapeError, match="the packed weight holds K = 100"):
        gemm(pack_signs(torch.randn(4, 120)), pw, 120)
    forged = kernels.PackedWeight(pw.words, pw.panels[:-1].clone() if pw.panels is not None else None, 6, k)
    if pw.panels is not None:
        with pytest.raises(ShapeError, match="panels do not match"):
            gemm(a, forged, k)
    with pytest.raises(ShapeError, match="says N = 7"):
        gemm(a, kernels.PackedWeight(pw.words, pw.panels, 7, k), k)
    conv_w = kernels.pack_weight(pack_signs(torch.randn(8, 3 * 9)), 27)
    with pytest.raises(ShapeError, match="4 input channels x 3x3 taps = 36 values per patch; the weight was packed "
                                         "with K = 27"):
        kernels.binary_conv2d(torch.randn(1, 4, 5, 5), conv_w, (3, 3))
    with pytest.raises(ShapeError, match="float32 input"):
        kernels.binary_conv2d(torch.randn(1, 3, 5, 5).double(), conv_w, (3, 3))

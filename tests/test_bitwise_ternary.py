"""The ternary-weight GEMM of the bitwise engine (lowbit.bitwise.ternary, csrc/ternary.c): the PyTorch reference and
every backend of kernels.backends() against the exact int32 matmul of the codes, binary and ternary activations;
bad arguments give clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.bitwise import kernels
from lowbit.bitwise.pack import pack_signs, unpack_bits
from lowbit.bitwise.reference import ternary_gemm_reference
from lowbit.bitwise.ternary import (MAX_K, PackedTernary, pack_ternary, pack_ternary_weight,
                                    pack_ternary_weight_planes, ternary_gemm)
from lowbit.errors import ConfigError, DataError, ShapeError

BACKENDS = kernels.backends()
COMPILED = [b for b in BACKENDS if b != kernels.REFERENCE]
# K: around word boundaries, not multiples of 64, and a range; M, N: not multiples of the 4-row block / 32 panel
KS = st.one_of(st.sampled_from([1, 2, 63, 64, 65, 127, 128, 129, 576, 1000]), st.integers(1, 300))


def codes(*shape: int, g: torch.Generator, zeros: float = 1 / 3) -> torch.Tensor:
    """Ternary int8 codes with about a fraction ``zeros`` of zeros."""
    signs = torch.randint(0, 2, shape, generator=g, dtype=torch.int8) * 2 - 1
    return torch.where(torch.rand(shape, generator=g) < zeros, torch.zeros_like(signs), signs)


def oracle(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The exact oracle: int32 matmul of the codes (|sum| <= K)."""
    return x.to(torch.int32) @ w.to(torch.int32).T


def dirty(packed: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The same words with random bits past k (the kernels and the reference must ignore them)."""
    out = packed.clone()
    if k % 64 and out.numel():
        g = torch.Generator().manual_seed(seed)
        noise = torch.randint(-(2**62), 2**62, out.shape[:-1], generator=g, dtype=torch.int64) * 2 + 1
        out.view(torch.int64)[..., -1] |= noise & -(1 << (k % 64))
    return out


# ---------------------------------------------------------------- packing and the reference


def test_pack_ternary_planes():
    c = torch.tensor([[1, 0, -1, 1, 0]], dtype=torch.int8)
    sign, mask = pack_ternary(c)
    assert sign.dtype == mask.dtype == torch.uint64 and sign.shape == (1, 1)
    assert unpack_bits(sign, 5).tolist() == [[True, False, False, True, False]]
    assert unpack_bits(mask, 5).tolist() == [[True, False, True, True, False]]


@given(lead=st.integers(0, 3), rows=st.integers(0, 5), k=KS, seed=st.integers(0, 2**31))
def test_pack_ternary_in_c_equals_pytorch(lead, rows, k, seed):
    """int8 codes are packed in C, other integer dtypes by pack_bits in PyTorch: the same planes."""
    c = codes(lead, rows, k, g=torch.Generator().manual_seed(seed))
    sign, mask = pack_ternary(c)
    sign16, mask16 = pack_ternary(c.to(torch.int16))
    assert sign.shape == sign16.shape == (lead, rows, (k + 63) // 64)
    assert torch.equal(sign.view(torch.int64), sign16.view(torch.int64))
    assert torch.equal(mask.view(torch.int64), mask16.view(torch.int64))
    assert torch.equal(unpack_bits(sign, k), c > 0) and torch.equal(unpack_bits(mask, k), c != 0)


@pytest.mark.parametrize("isa", COMPILED)
def test_pack_ternary_every_backend(isa, monkeypatch):
    """The scalar packing of codes (CPUs without AVX-512) and the AVX-512 one give the same planes."""
    import lowbit.bitwise.ternary as ternary

    monkeypatch.setattr(ternary, "backend", lambda: isa)
    g = torch.Generator().manual_seed(5)
    for k in (1, 63, 64, 65, 200, 577):
        c = codes(7, k, g=g)
        sign, mask = pack_ternary(c)
        assert torch.equal(unpack_bits(sign, k), c > 0) and torch.equal(unpack_bits(mask, k), c != 0)
        c[3, k // 2] = 5
        with pytest.raises(DataError, match="1 codes lie outside"):
            pack_ternary(c)


@given(m=st.integers(0, 9), n=st.integers(0, 9), k=KS, seed=st.integers(0, 2**31), zeros=st.sampled_from([0, 0.3, 1]))
def test_reference_equals_int_matmul(m, n, k, seed, zeros):
    g = torch.Generator().manual_seed(seed)
    w = codes(n, k, g=g, zeros=zeros)
    sign, mask = pack_ternary(w)
    sign = dirty(sign, k, 1)  # the sign of a zero weight and every padding bit of the sign plane do not matter
    sign |= mask ^ dirty(mask, k, 2)  # sign bits set past K, where the mask is 0
    xb = codes(m, k, g=g, zeros=0)
    assert torch.equal(ternary_gemm_reference(dirty(pack_signs(xb), k, 3), sign, dirty(mask, k, 4), k),
                       oracle(xb, w))
    xt = codes(m, k, g=g)
    t, q = pack_ternary(xt)
    out = ternary_gemm_reference((dirty(t, k, 5), dirty(q, k, 6)), sign, mask, k)
    assert out.dtype == torch.int32 and torch.equal(out, oracle(xt, w))


def test_reference_extremes():
    """w . w = its number of non-zeros (binary x: sign(w) with zeros as +1); w . (-w) = -that; zero weight: 0."""
    g = torch.Generator().manual_seed(0)
    for k in (1, 63, 64, 65, 1000):
        w = codes(1, k, g=g)
        s, m = pack_ternary(w)
        nz = int((w != 0).sum())
        assert int(ternary_gemm_reference(pack_ternary(w), s, m, k)) == nz
        assert int(ternary_gemm_reference(pack_ternary(-w), s, m, k)) == -nz
        assert int(ternary_gemm_reference(pack_signs(w.float()), s, m, k)) == nz
        z = torch.zeros_like(s)
        assert int(ternary_gemm_reference(pack_signs(w.float()), z, z, k)) == 0


# ---------------------------------------------------------------- every backend


@pytest.mark.parametrize("isa", BACKENDS)
@given(m=st.integers(0, 11), n=st.integers(0, 75), k=KS, seed=st.integers(0, 2**31),
       zeros=st.sampled_from([0, 0.3, 0.9, 1]))
def test_kernel_equals_oracle_and_reference(isa, m, n, k, seed, zeros):
    g = torch.Generator().manual_seed(seed)
    w = codes(n, k, g=g, zeros=zeros)  # zeros = 1: an all-zero weight
    pw = pack_ternary_weight(w)
    xb = codes(m, k, g=g, zeros=0)
    a = dirty(pack_signs(xb), k, seed % 1000)  # padding bits of the activations are ignored
    out = ternary_gemm(a, pw, k, isa=isa)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out, oracle(xb, w))
    assert torch.equal(out, ternary_gemm_reference(a, pw.sign, pw.mask, k))
    xt = codes(m, k, g=g)
    t, q = pack_ternary(xt)
    planes = (dirty(t, k, seed % 999), dirty(q, k, seed % 998))
    out = ternary_gemm(planes, pw, k, isa=isa)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out, oracle(xt, w))
    assert torch.equal(out, ternary_gemm_reference(planes, pw.sign, pw.mask, k))


@pytest.mark.parametrize("isa", COMPILED)
@pytest.mark.parametrize("k", [64 * 31, 64 * 31 + 1, 64 * 16 - 3, 4608])
def test_kernel_long_rows(isa, k):
    """Long K: the AVX2 byte counters are flushed every 31 words (15.5 weight words for ternary activations)."""
    g = torch.Generator().manual_seed(k)
    w, x = codes(37, k, g=g), codes(6, k, g=g)
    pw = pack_ternary_weight(w)
    assert torch.equal(ternary_gemm(pack_ternary(x), pw, k, isa=isa), oracle(x, w))
    xb = codes(6, k, g=g, zeros=0)
    assert torch.equal(ternary_gemm(pack_signs(xb), pw, k, isa=isa), oracle(xb, w))
    full = codes(1, k, g=g, zeros=0)  # no zeros: every bit agrees, then every bit differs
    pf = pack_ternary_weight(full)
    assert int(ternary_gemm(pack_ternary(full), pf, k, isa=isa)) == k
    assert int(ternary_gemm(pack_ternary(-full), pf, k, isa=isa)) == -k
    assert int(ternary_gemm(pack_signs(-full.float()), pf, k, isa=isa)) == -k


@pytest.mark.parametrize("isa", COMPILED)
def test_threads_give_the_same_result(isa):
    g = torch.Generator().manual_seed(1)
    w, x = codes(70, 300, g=g), codes(45, 300, g=g)
    pw = pack_ternary_weight(w)
    assert torch.equal(ternary_gemm(pack_ternary(x), pw, 300, isa=isa, threads=2), oracle(x, w))
    assert torch.equal(ternary_gemm(pack_signs(x.float()), pw, 300, isa=isa, threads=2),
                       oracle(torch.where(x >= 0, 1, -1), w))


def test_pack_from_planes_and_panels():
    g = torch.Generator().manual_seed(2)
    w = codes(40, 130, g=g)
    pw = pack_ternary_weight(w)
    assert pw.n == 40 and pw.k == 130 and pw.sign.shape == (40, 3)
    if pw.panels is not None:
        assert pw.pcm.tolist() == (w != 0).sum(1).tolist() + [0] * 24  # padded to two panels of 32
        assert pw.panels.numel() == 64 * 3 * 2
    s, m = pack_ternary(w)
    again = pack_ternary_weight_planes(dirty(s, 130, 1), dirty(m, 130, 2), 130)  # bits past K cleared
    x = codes(5, 130, g=g)
    assert torch.equal(ternary_gemm(pack_ternary(x), again, 130), oracle(x, w))


def test_no_compiler_falls_back_to_the_reference(monkeypatch, tmp_path):
    def no_compiler(*args, **kwargs):
        raise OSError("no C compiler")

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels.cext, "build", no_compiler)
    kernels.library.cache_clear()
    kernels.backends.cache_clear()
    try:
        assert kernels.backends() == (kernels.REFERENCE,)
        g = torch.Generator().manual_seed(3)
        w, x = codes(5, 70, g=g), codes(3, 70, g=g)
        pw = pack_ternary_weight(w)
        assert pw.panels is None and pw.pcm is None
        assert torch.equal(ternary_gemm(pack_ternary(x), pw, 70), oracle(x, w))
    finally:
        monkeypatch.undo()
        kernels.library.cache_clear()
        kernels.backends.cache_clear()


# ---------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors():
    g = torch.Generator().manual_seed(4)
    k = 100
    w = codes(6, k, g=g)
    pw = pack_ternary_weight(w)
    a = pack_signs(torch.randn(4, k))
    t, q = pack_ternary(codes(4, k, g=g))
    with pytest.raises(DataError, match=r"2 codes lie outside \{-1, 0, 1\} \(e.g. 2\)"):
        pack_ternary_weight(torch.tensor([[2, 0, 1], [-3, 1, 0]], dtype=torch.int8))
    for dtype in (torch.int8, torch.int32):  # the C and the PyTorch path
        many = torch.zeros(3, 200, dtype=dtype)
        many[2, 150] = -128 if dtype == torch.int8 else 7
        with pytest.raises(DataError, match="1 codes lie outside"):
            pack_ternary(many)
    with pytest.raises(ShapeError, match="the codes are torch.float32; expected an integer tensor"):
        pack_ternary_weight(torch.zeros(3, 4))
    with pytest.raises(ShapeError, match=r"expected the codes \(N, K\) of a weight, a 2-D int8 tensor; got shape \(4,\)"):
        pack_ternary_weight(torch.zeros(4, dtype=torch.int8))
    with pytest.raises(ShapeError, match="rows of K = 0 codes"):
        pack_ternary_weight(torch.zeros(3, 0, dtype=torch.int8))
    with pytest.raises(ShapeError, match=r"a is torch.int64; expected packed uint64 words: pass pack_signs"):
        ternary_gemm(a.view(torch.int64), pw, k)
    with pytest.raises(ShapeError, match="a is a int; expected packed uint64 words"):
        ternary_gemm(5, pw, k)
    with pytest.raises(ShapeError, match="a has 1 words per row, but K = 100 values take 2"):
        ternary_gemm(pack_signs(torch.randn(4, 60)), pw, k)
    with pytest.raises(ShapeError, match="expected 2-D"):
        ternary_gemm(a[None], pw, k)
    with pytest.raises(ShapeError, match=r"not contiguous; pass it .contiguous\(\)"):
        ternary_gemm(pack_signs(torch.randn(2, 4, k)).transpose(0, 1)[0], pw, k)
    with pytest.raises(ShapeError, match=r"a pair \(sign, mask\) of packed planes, got 3 items"):
        ternary_gemm((t, q, q), pw, k)
    with pytest.raises(ShapeError, match="a's mask plane has 3 rows, its sign plane 4"):
        ternary_gemm((t, q[:3]), pw, k)
    with pytest.raises(ShapeError, match="a's sign plane is torch.float32"):
        ternary_gemm((torch.zeros(4, 2), q), pw, k)
    with pytest.raises(ShapeError, match="the weight is a Tensor; expected a PackedTernary"):
        ternary_gemm(a, pw.sign, k)
    with pytest.raises(ShapeError, match="the packed weight holds K = 100 values per row, the call says k = 120"):
        ternary_gemm(pack_signs(torch.randn(4, 120)), pw, 120)
    with pytest.raises(ShapeError, match="says N = 7"):
        ternary_gemm(a, PackedTernary(pw.sign, pw.mask, pw.panels, pw.pcm, 7, k), k)
    if pw.panels is not None:
        with pytest.raises(ShapeError, match="panels or popcounts do not match"):
            ternary_gemm(a, PackedTernary(pw.sign, pw.mask, pw.panels[:-1].clone(), pw.pcm, 6, k), k)
        with pytest.raises(ShapeError, match="panels or popcounts do not match"):
            ternary_gemm(a, PackedTernary(pw.sign, pw.mask, pw.panels, pw.pcm.long(), 6, k), k)
        with pytest.raises(ShapeError, match="panels without popcounts"):
            ternary_gemm(a, PackedTernary(pw.sign, pw.mask, pw.panels, None, 6, k), k)
    for bad_k in (0, True, 2.0, MAX_K + 1):
        with pytest.raises(ConfigError, match="k = "):
            ternary_gemm(a, pw, bad_k)
    with pytest.raises(ConfigError, match="isa = 'avx9'"):
        ternary_gemm(a, pw, k, isa="avx9")
    with pytest.raises(ConfigError, match="threads"):
        ternary_gemm(a, pw, k, threads=0)

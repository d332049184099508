"""Integer-only execution: arithmetic, kernels, bit-exact parity with the simulation, save/load."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lowbit.integer.backend import Kernels
from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.errors import CheckpointError, ConfigError
from lowbit.native import cext
from lowbit.integer import kernels, vnni
from lowbit.functional.requant import fixed_point, requantize, rshift_round
from lowbit.integer.io import load_integer, pack_int4, save_integer, unpack_int4
from lowbit.integer.lower import to_integer
from lowbit.nn import unified_modules
from lowbit.ptq import LayerRule, PTQConfig, int_weight, quantize, uint_act, with_pow2_scales
from lowbit.utils.tensorfile import load_tensors, save_tensors

# ---------------------------------------------------------------- arithmetic


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False))
def test_fixed_point_multiplier_is_within_2_to_minus_24(value):
    m, n = fixed_point(torch.tensor([value], dtype=torch.float64))
    approx = int(m) / 2.0 ** int(n)
    assert abs(approx / value - 1) <= 2.0**-24
    assert 0 <= int(n) <= 62 and int(m) < 2**31


@pytest.mark.parametrize("k", range(-20, 21))
def test_power_of_two_multiplier_is_a_pure_shift(k):
    m, n = fixed_point(torch.tensor([2.0**k], dtype=torch.float64))
    assert int(m) == (2**k if k >= 0 else 1) and int(n) == max(-k, 0)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**50), 2**50), st.integers(0, 40))
def test_rshift_round_is_round_half_even(v, n):
    got = int(rshift_round(torch.tensor([v]), torch.tensor([n])))
    q, r = divmod(v, 2**n)  # floor division, 0 <= r < 2^n
    twice = 2 * r
    want = q + (1 if twice > 2**n or (twice == 2**n and q % 2 == 1) else 0)
    assert got == want


def test_requantize_matches_float64_formula():
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**20), 2**20, (1000, 8), generator=g)
    M = torch.rand(8, generator=g, dtype=torch.float64) * 1e-3 + 1e-5
    m, n = fixed_point(M)
    got = requantize(acc, m, n, 3, -128, 127)
    want = torch.round(acc.double() * (m.double() / 2.0**n.double())).clamp(-131, 124) + 3
    assert torch.equal(got, want.long())


# ---------------------------------------------------------------- kernels


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 12), st.integers(5, 11), st.sampled_from([1, 3, 5]),
       st.integers(1, 2), st.integers(0, 2), st.integers(1, 2), st.integers(-128, 127))
def test_im2col_int_mm_conv_equals_int32_conv(n, c, o, size, k, stride, pad, dil, zp):
    assume(size + 2 * pad >= dil * (k - 1) + 1)  # an output exists
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + o)
    x = torch.randint(-128, 128, (n, c, size, size), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (o, c, k, k), generator=g, dtype=torch.int8)
    wmat = w.permute(0, 2, 3, 1).reshape(o, -1).contiguous()
    xp = F.pad(x.double(), (pad,) * 4, value=zp)
    want = F.conv2d(xp, w.double(), None, stride, 0, dil)  # float64: exact for these integers
    for use_c in (True, False):  # the C im2col and the strided-view one
        acc, (nn_, ho, wo) = kernels.conv2d_acc(x, wmat, (k, k), stride, pad, dil, zp, use_c)
        got = acc.reshape(nn_, ho, wo, o).permute(0, 3, 1, 2)
        assert torch.equal(got.double(), want)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_int8_max_pool_equals_float_max_pool(k, s, p):
    x = torch.randint(-128, 128, (2, 3, 9, 9), dtype=torch.int8)
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        got = kernels.max_pool2d(t, k, s, p)
        assert torch.equal(got.float(), F.max_pool2d(x.float(), k, s, p))
        if cext.library() is not None:  # the C kernel (NHWC), from either layout
            ho, wo = F.max_pool2d(x.float(), k, s, p).shape[2:]
            got = cext.maxpool_nhwc(t, (k, k), (s, s), (p, p), (ho, wo))
            assert torch.equal(got.float(), F.max_pool2d(x.float(), k, s, p))


needs_cext = pytest.mark.skipif(cext.library() is None, reason="no C compiler")


@needs_cext
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 50), st.integers(1, 20), st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_c_epilogue_equals_reference(rows, c, residual, nchw, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (rows, c, 2, 3) if nchw else (rows, c)
    acc = torch.randint(-(2**24), 2**24, shape, generator=g, dtype=torch.int32)
    bias = torch.randint(-1000, 1000, (c,), generator=g, dtype=torch.int32)
    m, n = fixed_point(torch.rand(c, generator=g, dtype=torch.float64) * 1e-2 + 1e-6)
    res = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8) if residual else None
    m2 = torch.randint(1, 2**20, (c,), generator=g) if residual else None
    got = cext.requant(acc, bias, m, n, -5, -128, 100, res, 7, m2)
    view = (lambda t: t.reshape(1, -1, 1, 1)) if nchw else (lambda t: t)
    want = requantize(acc + view(bias), view(m), view(n), -5, -128, 100,
                      None if res is None else res.long() - 7, None if m2 is None else view(m2))
    assert torch.equal(got, want.to(torch.int8))


# ---------------------------------------------------------------- parity with the simulation


@pytest.fixture(scope="module")
def fmnist():
    return fashion_mnist("train").take(32), fashion_mnist("test")


def _codes(sim, x):
    """Integer codes of every quantized tensor of the simulation, keyed by fx node name."""
    out = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, node):
            r = super().run_node(node)
            out[node.name] = r
            return r

    with torch.no_grad():
        Rec(sim).run(x)
    return out


def _check_parity(sim, im, x):
    env = im.run(x)
    sim_vals = _codes(sim, x)
    compared = 0
    for node in im.nodes:
        if node.grid is None or node.source not in sim_vals and node.output not in sim_vals:
            continue
        ref = sim_vals.get(node.output, sim_vals.get(node.source))
        g = node.grid
        want = torch.round(ref / g.scale).to(torch.int64) + g.zero_point
        assert torch.equal(env[node.output].to(torch.int64), want), node.output
        compared += 1
    assert compared >= 2
    return env[im.output_name]


@pytest.mark.slow
@pytest.mark.parametrize("name,config,n", [
    ("mlp", PTQConfig(), 10000), ("cnn", PTQConfig(), 2000), ("resnet", PTQConfig(), 1000),
    ("cnn", PTQConfig(int_weight(4)), 1000), ("resnet", with_pow2_scales(PTQConfig()), 1000),
])
def test_integer_model_is_bit_exact_with_simulation(name, config, n, fmnist):
    """Every intermediate code and the output equal; the full test set: benchmarks/parity_integer.py."""
    calib, test = fmnist
    test = test.take(n)
    sim = quantize(zoo.pretrained(name), [calib.x], config)
    im = to_integer(sim, (calib.x[:2],))
    correct_sim = correct_int = 0
    for i in range(0, len(test.y), 1000):
        x, y = test.x[i:i + 1000], test.y[i:i + 1000]
        with torch.no_grad():
            a = sim(x)
        b = _check_parity(sim, im, x) if i == 0 else im(x)
        assert torch.equal(a, b)
        correct_sim += int((a.argmax(1) == y).sum())
        correct_int += int((b.argmax(1) == y).sum())
    assert correct_sim == correct_int
    assert correct_int / len(test.y) > 0.85


def test_pow2_model_requantizes_by_shifts_only(fmnist):
    calib, _ = fmnist
    im = to_integer(quantize(zoo.pretrained("resnet"), [calib.x], with_pow2_scales(PTQConfig())), (calib.x[:2],))
    # every layer multiplier is a power of two; the global average pool also divides by its window (7x7 = 49)
    mults = [t for n in im.nodes if n.kind != "avgpool2d" for k, t in n.op.tensors.items() if k in ("m", "m2")]
    assert len(mults) > 10 and all(((t & (t - 1)) == 0).all() for t in mults)


def test_fallback_path_equals_c_path(fmnist):
    calib, test = fmnist
    im = to_integer(quantize(zoo.pretrained("resnet"), [calib.x], PTQConfig()), (calib.x[:2],))
    a = im(test.x[:200])
    assert torch.equal(a, im.with_kernels(Kernels.REFERENCE)(test.x[:200]))


def test_exact_simulation_agrees_with_float_fake_quant(fmnist):
    calib, test = fmnist
    sim = quantize(zoo.pretrained("cnn"), [calib.x], PTQConfig())
    with torch.no_grad():
        exact = sim(test.x[:1000])
        saved = [(m, m.input_qparams) for _, m in unified_modules(sim)]
        for m, _ in saved:
            m.input_qparams = None  # float fake-quant forward
        fake = sim(test.x[:1000])
        for m, q in saved:
            m.input_qparams = q
    assert (exact.argmax(1) == fake.argmax(1)).float().mean() > 0.995
    assert torch.allclose(exact, fake, atol=0.3)


class _FloatOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        self.calls.append((str(func), [t.dtype for t in tensors]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kernels", [Kernels.INT_MM, Kernels.VNNI])
def test_integer_path_runs_no_float_matmul(fmnist, kernels):
    """With ``torch._int_mm``, every matmul is an int8 one; with the VNNI GEMM (C, invisible to the
    dispatcher), no PyTorch matmul or conv runs at all. Either way floats appear only at the edges."""
    calib, test = fmnist
    im = to_integer(quantize(zoo.pretrained("cnn"), [calib.x], PTQConfig()), (calib.x[:2],)).with_kernels(kernels)
    use_vnni = kernels.vnni
    with _FloatOps() as mode:
        im(test.x[:4])
    heavy = [c for c in mode.calls if any(k in c[0] for k in ("mm", "conv", "linear", "addmm", "bmm"))]
    if use_vnni and vnni.available():
        assert heavy == [], heavy
        assert any(getattr(n.op, "_packed", None) is not None for n in im.nodes)
    else:
        assert heavy and all(c[0].startswith("aten._int_mm") for c in heavy), heavy
    float_ops = [c for c in mode.calls if any(d.is_floating_point for d in c[1])]
    # floats only at the edges: the input quantization and the output dequantization
    assert len(float_ops) <= 12, float_ops


# ---------------------------------------------------------------- errors


def test_refuses_models_it_cannot_lower(fmnist):
    calib, _ = fmnist
    with pytest.raises(ConfigError, match="ptq.convert"):
        to_integer(zoo.pretrained("cnn"), (calib.x[:2],))
    sim = quantize(zoo.pretrained("cnn"), [calib.x], PTQConfig(rules=(LayerRule("fc1", keep_float=True),)))
    with pytest.raises(ConfigError, match="fc1"):
        to_integer(sim, (calib.x[:2],))
    with pytest.raises(ConfigError, match="int8"):
        to_integer(quantize(zoo.pretrained("mlp"), [calib.x], PTQConfig(act=uint_act(12))), (calib.x[:2],))

    class Soft(nn.Module):  # (an elementwise op such as a sigmoid lowers: it becomes a table)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)
            self.fc2 = nn.Linear(10, 10)

        def forward(self, x):
            return self.fc2(torch.softmax(self.fc(x.flatten(1)), 1))

    with pytest.warns(UserWarning):
        sim = quantize(Soft().eval(), [calib.x], PTQConfig())
    with pytest.raises(ConfigError, match="softmax"):
        to_integer(sim, (calib.x[:2],))


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("bits", [8, 4])
def test_save_load_reproduces_outputs_exactly(bits, fmnist, tmp_path):
    calib, test = fmnist
    im = to_integer(quantize(zoo.pretrained("cnn"), [calib.x], PTQConfig(int_weight(bits))), (calib.x[:2],))
    path = save_integer(im, tmp_path / "m.safetensors")
    back = load_integer(path)
    assert torch.equal(im(test.x[:300]), back(test.x[:300]))
    if bits == 4:
        tensors, _ = load_tensors(path)
        assert any(t.dtype == torch.uint8 for t in tensors.values())  # packed nibbles


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=1, max_size=41))
def test_int4_packing_round_trips(values):
    w = torch.tensor(values, dtype=torch.int8)
    packed = pack_int4(w)
    assert packed.numel() == math.ceil(len(values) / 2)
    assert torch.equal(unpack_int4(packed, (len(values),)), w)


def test_bad_model_files_give_clear_errors(fmnist, tmp_path):
    calib, _ = fmnist
    im = to_integer(quantize(zoo.pretrained("mlp"), [calib.x], PTQConfig()), (calib.x[:2],))
    good = save_integer(im, tmp_path / "m.safetensors")
    raw = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError):
        load_integer(tmp_path / "trunc.safetensors")
    save_tensors(tmp_path / "foreign.safetensors", {"w": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="no 'lowbit' metadata"):
        load_integer(tmp_path / "foreign.safetensors")
    torch.save({"a": 1}, tmp_path / "pickle.pt")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_integer(tmp_path / "pickle.pt")
    with pytest.raises(CheckpointError):
        load_integer(tmp_path / "missing.safetensors")
    tensors, meta = load_tensors(good)
    assert '"version": 3' in meta["lowbit"]
    save_tensors(tmp_path / "v9.safetensors", tensors, {"lowbit": meta["lowbit"].replace('"version": 3', '"version": 9')},
                 checksum=True)
    with pytest.raises(CheckpointError, match="version 9"):
        load_integer(tmp_path / "v9.safetensors")
    save_tensors(tmp_path / "no_sum.safetensors", tensors, meta)  # version 3 needs its checksum
    with pytest.raises(CheckpointError, match="no checksum"):
        load_integer(tmp_path / "no_sum.safetensors")
    del tensors[next(k for k in tensors if k.endswith(".weight"))]
    save_tensors(tmp_path / "missing_t.safetensors", tensors, meta, checksum=True)
    with pytest.raises(CheckpointError, match="misses tensors"):
        load_integer(tmp_path / "missing_t.safetensors")


def test_interrupted_save_keeps_the_old_file(fmnist, tmp_path, monkeypatch):
    calib, _ = fmnist
    im = to_integer(quantize(zoo.pretrained("mlp"), [calib.x], PTQConfig()), (calib.x[:2],))
    path = save_integer(im, tmp_path / "m.safetensors")
    before = path.read_bytes()
    import lowbit.utils.tensorfile as tf

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tf, "_tensor_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        save_integer(im, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_residual_on_the_output_layer_is_dequantized_exactly(fmnist):
    calib, test = fmnist

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1 = nn.Conv2d(1, 4, 3, padding=1)
            self.c2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            h = torch.relu(self.c1(x))
            return self.c2(h) + h

    sim = quantize(Net().eval(), [calib.x], PTQConfig())
    im = to_integer(sim, (calib.x[:2],))
    assert any(n.kind == "conv2d" and "acc_scale" in n.op.tensors and len(n.inputs) == 2 for n in im.nodes)
    with torch.no_grad():
        assert torch.equal(sim(test.x[:100]), im(test.x[:100]))


@needs_cext
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(1, 6), st.integers(3, 12), st.sampled_from([1, 3, 5]), st.integers(1, 2),
       st.integers(0, 2), st.integers(1, 2), st.integers(-128, 127), st.booleans())
def test_depthwise_c_kernel_equals_float64_conv(n, c, size, k, stride, pad, dil, zp, channels_last):
    assume(size + 2 * pad >= dil * (k - 1) + 1)  # an output exists
    g = torch.Generator().manual_seed(n * 100 + c * 10 + size)
    x = torch.randint(-128, 128, (n, c, size, size), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (c, 1, k, k), generator=g, dtype=torch.int8)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    want = F.conv2d(x.double() - zp, w.double(), None, stride, pad, dil, c)
    acc, (nn_, ho, wo) = kernels.depthwise_acc(xin, w[:, 0].permute(1, 2, 0).contiguous(), stride, pad, dil, zp)
    assert torch.equal(acc.reshape(nn_, ho, wo, c).permute(0, 3, 1, 2).double(), want)
    assert torch.equal(kernels.grouped_conv2d_acc(x, w, stride, pad, dil, c, zp).double(), want)


# ---------------------------------------------------------------- small C kernels against PyTorch


@needs_cext
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32) | st.sampled_from([0.5, -0.5, 1.5, 2.5, -2.5]),
                min_size=1, max_size=300),
       st.floats(1e-4, 10.0), st.integers(-128, 127))
def test_c_input_quantize_equals_torch(values, scale, zp):
    x = torch.tensor(values, dtype=torch.float32)
    inv = torch.reciprocal(torch.tensor(scale, dtype=torch.float32))
    want = (torch.round(x * inv) + zp).clamp_(-128, 127).to(torch.int8)
    assert torch.equal(cext.quantize_f32(x, inv, zp, -128, 127), want)
    x[0] = float("nan")
    assert cext.quantize_f32(x, inv, zp, -128, 127) is None  # the op falls back to PyTorch's ops


@needs_cext
def test_c_flatten_of_channels_last_equals_torch_flatten():
    x = torch.randint(-128, 128, (3, 64, 7, 5), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(cext.flatten_channels_last(x), torch.flatten(x, 1))

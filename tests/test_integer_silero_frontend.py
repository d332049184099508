"""The Silero VAD front end in integers: reflect padding, channel slices and the magnitude ``sqrt(a^2 + b^2)`` of an
STFT convolution's two halves. The arithmetic against exact Python-integer oracles, the pad and slice ops against
PyTorch's own, PTQ's swap, the integer model against the simulation and onnxruntime bit for bit, and the refusals."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit import ptq
from lowbit.cost.integer import profile_integer
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.functional.magnitude import isqrt64, magnitude_codes, multiplier
from lowbit.integer import ir, to_integer, validate
from lowbit.integer.backend import Kernels
from lowbit.integer.io import load_integer, save_integer
from lowbit.integer.ops import build
from lowbit.nn.magnitude import QMagnitude
from lowbit.nn.qparams import QParams
from tests._integer_checks import check_exact

# ---------------------------------------------------------------- (a) the arithmetic


def _round_half_up(s: int, m: int, n: int) -> int:
    """``floor(sqrt(s) m / 2^n + 1/2)`` by its definition, in Python integers: the largest ``k >= 0`` with
    ``k - 1/2 <= sqrt(s) m / 2^n``, i.e. ``k = 0`` or ``(2k - 1)^2 4^n <= 4 s m^2``; searched from a float guess."""
    def ok(k: int) -> bool:
        return k == 0 or (2 * k - 1) ** 2 * 4 ** n <= 4 * s * m * m

    k = max(0, int(math.sqrt(s) * m / 2.0 ** n + 0.5))
    while ok(k + 1):
        k += 1
    while not ok(k):
        k -= 1
    return k


def test_isqrt64_exhaustive_and_near_squares():
    v = torch.arange(1 << 18, dtype=torch.int64)
    assert torch.equal(isqrt64(v), torch.tensor([math.isqrt(k) for k in range(1 << 18)]))
    roots = torch.tensor([2 ** 24 + 12345, 23726566, 2 ** 26 - 1, 94906265], dtype=torch.int64)  # up to ~2^53
    near = torch.cat([roots * roots + d for d in (-1, 0, 1)])
    assert isqrt64(near).tolist() == [math.isqrt(int(k)) for k in near]


@settings(max_examples=300, deadline=None)
@given(v=st.integers(0, (1 << 53) - 1))
def test_isqrt64_equals_math_isqrt(v):
    assert int(isqrt64(torch.tensor([v]))[0]) == math.isqrt(v)


@settings(max_examples=400, deadline=None)
@given(s=st.integers(0, 2 * 255 ** 2), m=st.integers(0, (1 << 15) - 1), n=st.integers(0, 48))
def test_rounding_identity(s, m, n):
    """``(isqrt(4 S m^2) + 2^n) >> (n + 1)`` is the correctly rounded (half up) ``sqrt(S) m / 2^n``."""
    got = (math.isqrt(4 * s * m * m) + (1 << n)) >> (n + 1)
    assert got == _round_half_up(s, m, n)


def test_rounding_identity_on_ties():
    """Exact halves (perfect squares S) round up: sqrt(9) * 1 / 2 = 1.5 -> 2, sqrt(25) * 3 / 2 = 7.5 -> 8."""
    x, y = torch.tensor([3, 3, 0]), torch.tensor([0, 4, 0])
    assert magnitude_codes(x, y, 1, 1, 0, -1000, 1000).tolist() == [2, 3, 0]  # 1.5 -> 2, 2.5 -> 3
    assert magnitude_codes(torch.tensor([5]), torch.tensor([0]), 3, 1, 10, 0, 255).tolist() == [18]  # 7.5 -> 8


@pytest.mark.parametrize("ratio", [1.0, 0.75, 3.1e-3, 7.77, 1234.5, 2.0 ** -30, 2.0 ** 14 * 1.9999999])
def test_multiplier(ratio):
    m, n = multiplier(ratio)
    assert 1 << 14 <= m < 1 << 15 and 0 <= n <= 48
    assert abs(m / 2 ** n - ratio) <= ratio * 2.0 ** -15


def test_multiplier_extremes():
    assert multiplier(2.0 ** 16) == ((1 << 15) - 1, 0)  # every nonzero magnitude saturates anyway
    m, n = multiplier(2.0 ** -40)
    assert n == 48 and m == 256
    with pytest.raises(ValueError, match="finite and > 0"):
        multiplier(0.0)


def _oracle_codes(qa: list[int], qb: list[int], op: ir.Magnitude) -> list[int]:
    z = op.input_zero_point
    return [min(max(op.zero_point + _round_half_up((a - z) ** 2 + (b - z) ** 2, op.multiplier, op.shift), op.lo),
                op.hi) for a, b in zip(qa, qb)]


@pytest.mark.parametrize("op", [ir.Magnitude(-3, -128, -128, 127, 30237, 14), ir.Magnitude(0, 0, 0, 127, 16384, 15),
                                ir.Magnitude(127, -100, -128, 100, 23170, 16), ir.Magnitude(-128, 5, -20, 127, 19000, 22)])
def test_op_exhaustive_over_every_code_pair(op):
    """Every pair of int8 codes against the Python-integer oracle (and within one code of float64)."""
    a, b = torch.meshgrid(torch.arange(-128, 128), torch.arange(-128, 128), indexing="ij")
    qa, qb = a.reshape(-1).to(torch.int8), b.reshape(-1).to(torch.int8)
    got = build(op)(qa, qb)
    assert got.dtype == torch.int8
    assert got.tolist() == _oracle_codes(qa.tolist(), qb.tolist(), op)
    x, y = qa.double() - op.input_zero_point, qb.double() - op.input_zero_point
    f64 = (op.zero_point + torch.floor(torch.sqrt(x * x + y * y) * op.multiplier / 2.0 ** op.shift + 0.5)).clamp(
        op.lo, op.hi)
    assert float((got.double() - f64).abs().max()) <= 1


@settings(max_examples=60, deadline=None)
@given(z=st.integers(-128, 127), zo=st.integers(-128, 127), m=st.integers(0, (1 << 15) - 1), n=st.integers(0, 48),
       bounds=st.tuples(st.integers(-128, 127), st.integers(-128, 127)), seed=st.integers(0, 2 ** 16),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_op_equals_the_oracle(z, zo, m, n, bounds, seed, shape):
    lo, hi = sorted(bounds)
    op = ir.Magnitude(z, zo, lo, hi, m, n)
    g = torch.Generator().manual_seed(seed)
    qa, qb = (torch.randint(-128, 128, (2, *shape), generator=g, dtype=torch.int8) for _ in range(2))
    got = build(op)(qa, qb, kernels=Kernels.REFERENCE)
    assert got.shape == qa.shape
    assert got.reshape(-1).tolist() == _oracle_codes(qa.reshape(-1).tolist(), qb.reshape(-1).tolist(), op)
    assert torch.equal(build(op)(qa, qb, kernels=Kernels.VNNI), got)


def test_qmagnitude_observes_float_then_computes_the_integer_result():
    m = QMagnitude("sqrt")
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    assert torch.allclose(m(a, b), torch.hypot(a, b))  # not frozen: the float op, for the observers
    q, o = QParams(0.05, 131, IntFormat(8, signed=False)), QParams(0.03, 2, IntFormat(8, signed=False))
    m.freeze(q, q, o)
    m.eval()
    a, b = ((torch.randint(0, 256, (4, 7)).float() - 131) * 0.05 for _ in range(2))
    y = m(a, b)
    codes = o.codes(y)
    assert torch.equal((codes.float() - 2) * torch.tensor(0.03), y)  # on the output grid: nothing left to round
    want = magnitude_codes(q.codes(a).long() - 131, q.codes(b).long() - 131, m.m, m.n, 2, 0, 255)
    assert torch.equal(codes.long(), want)
    assert float((y - torch.hypot(a, b).clamp(max=253 * 0.03)).abs().max()) <= 0.03 * 0.51


# ---------------------------------------------------------------- (b) pad and slice against PyTorch


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("shape,pad", [((3, 10), (0, 6)), ((2, 3, 9), (4, 2)), ((2, 3, 5, 6), (1, 2, 3, 0)),
                                       ((1, 2, 4, 5), (0, 0, 2, 3))])
def test_pad_equals_pytorch(mode, shape, pad):
    op = build(ir.Pad(pad, 0, mode))
    x = torch.randn(*shape)
    assert torch.equal(op(x), F.pad(x, pad, mode=mode))
    q = torch.randint(-128, 128, shape, dtype=torch.int8)
    got = op(q)
    assert got.dtype == torch.int8 and torch.equal(got.float(), F.pad(q.float(), pad, mode=mode))


@pytest.mark.parametrize("dim,start,stop", [(1, 0, 3), (1, 2, 5), (2, 1, 4), (3, 0, 1)])
def test_slice_equals_pytorch(dim, start, stop):
    x = torch.randint(-128, 128, (2, 5, 4, 3), dtype=torch.int8)
    want = x[(slice(None),) * dim + (slice(start, stop),)]
    got = build(ir.Slice(dim, start, stop))(x)
    assert torch.equal(got, want) and got.is_contiguous()
    assert torch.equal(build(ir.Slice(dim, start, stop))(x.float()), want.float())


def test_file_forms_and_old_pads():
    """A constant pad is written as before (no mode); a file's pad without mode is constant; the new ops round-trip."""
    old = ir.Pad((1, 1), -128)
    assert "mode" not in ir.attrs_of(old) and ir.parse("pad", {"pad": [1, 1], "value": -128}) == old
    for op in (ir.Pad((0, 64), 0, "reflect"), ir.Pad((2, 1, 1, 0), 0, "replicate"), ir.Slice(1, 129, 258),
               ir.Magnitude(-3, -128, -128, 127, 30237, 14)):
        assert ir.parse(op.kind, ir.attrs_of(op)) == op


@pytest.mark.parametrize("kind,attrs,shapes,match", [
    ("pad", {"pad": [0, 4], "value": 0, "mode": "circular"}, [(8,)], "mode"),
    ("pad", {"pad": [0, 8], "value": 0, "mode": "reflect"}, [(8,)], "fewer than the size"),
    ("slice", {"dim": 0, "start": 0, "stop": 2}, [(4,)], "dim"),
    ("slice", {"dim": 1, "start": 3, "stop": 3}, [(4,)], "stop"),
    ("slice", {"dim": 1, "start": 0, "stop": 5}, [(4,)], "hold stop elements"),
    ("magnitude", {"input_zero_point": 0, "zero_point": 0, "lo": 0, "hi": 9, "multiplier": 1 << 15, "shift": 3},
     [(4,), (4,)], "multiplier"),
    ("magnitude", {"input_zero_point": 0, "zero_point": 0, "lo": 0, "hi": 9, "multiplier": 9, "shift": 49},
     [(4,), (4,)], "shift"),
    ("magnitude", {"input_zero_point": 0, "zero_point": 0, "lo": 0, "hi": 9, "multiplier": 9, "shift": 3},
     [(4,), (5,)], "one shape"),
])
def test_validate_refuses(kind, attrs, shapes, match):
    check = validate.check_of(kind)
    with pytest.raises(validate.Invalid, match=match):
        check.attrs(attrs, {}, len(shapes))
        check.shape(attrs, {}, [validate.Spec(s, torch.int8) for s in shapes])


# ---------------------------------------------------------------- (c) the front end, PTQ to onnxruntime


class _Front(nn.Module):
    """Silero VAD's front end, small: reflect pad, unsqueeze, an STFT as Conv1d(1, 2F, k, stride), the magnitude of
    its two halves, an encoder Conv1d + ReLU, a Linear head and a sigmoid (a probability, as Silero's)."""

    def __init__(self, form: str = "pow", slices: str = "colon", pad_mode: str = "reflect", freq: int = 12,
                 samples: int = 96, k: int = 32, stride: int = 16):
        super().__init__()
        self.form, self.slices, self.pad_mode, self.freq = form, slices, pad_mode, freq
        self.stft = nn.Conv1d(1, 2 * freq, k, stride=stride, bias=False)
        self.enc = nn.Conv1d(freq, 8, 3, padding=1)
        self.relu = nn.ReLU()
        frames = (samples + 16 - k) // stride + 1
        self.head = nn.Linear(8 * frames, 2)

    def forward(self, x):
        x = F.pad(x, (0, 16), mode=self.pad_mode)
        z = self.stft(x.unsqueeze(1))
        f = self.freq
        if self.slices == "colon":
            a, b = z[:, :f], z[:, f:]
        elif self.slices == "ellipsis":
            a, b = z[..., :f, :], z[..., -f:, :]
        else:  # "negative"
            a, b = z[:, 0:f, :], z[:, -f:None]
        if self.form == "pow":
            m = torch.sqrt(a ** 2 + b ** 2)
        elif self.form == "mul":
            m = (a * a + b * b).sqrt()
        elif self.form == "torch.pow":
            m = torch.pow(torch.add(torch.pow(a, 2), b.pow(2)), 0.5)
        elif self.form == "square":
            m = torch.sqrt(torch.square(a) + torch.square(b))
        else:
            m = torch.hypot(a, b)
        h = self.relu(self.enc(m))
        return torch.sigmoid(self.head(h.flatten(1)))


def _audio(n: int, samples: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples).float()
    f = torch.rand(n, 1, generator=g) * 0.6 + 0.05
    return torch.sin(f * t) * torch.rand(n, 1, generator=g) + 0.1 * torch.randn(n, samples, generator=g)


def _quantized(net: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may stay float
        return ptq.quantize(net.eval(), calib, example_inputs=(calib[0][:1],)).eval()



KINDS = ["pad", "unsqueeze", "quantize", "unsqueeze", "conv2d", "squeeze", "slice", "slice", "magnitude",
         "unsqueeze", "conv2d", "squeeze", "flatten", "linear", "table"]


@pytest.fixture(scope="module")
def front():
    torch.manual_seed(0)
    net = _Front().eval()
    calib = [_audio(32, seed=s) for s in range(3)]
    q = _quantized(net, calib)
    return net, q, to_integer(q, (calib[0][:1],))


def test_front_end_lowers_and_equals_the_simulation(front, tmp_path):
    net, q, im = front
    assert [n.kind for n in im.nodes] == KINDS
    assert im.nodes[0].op.ir == ir.Pad((0, 16), 0, "reflect") and im.nodes[0].grid is None  # float, before quantize
    slices = [n.op.ir for n in im.nodes if n.kind == "slice"]
    assert slices == [ir.Slice(1, 0, 12), ir.Slice(1, 12, 24)]
    mag = next(n for n in im.nodes if n.kind == "magnitude")
    conv = next(n for n in im.nodes if n.kind == "conv2d")
    assert mag.op.ir.input_zero_point == conv.op.ir.out.zero_point and 1 << 14 <= mag.op.ir.multiplier < 1 << 15
    assert im.plans.run(im, _audio(2)) is None  # no plan step for slice / magnitude: op by op
    x = _audio(64, seed=9)  # held out
    ys = check_exact(q, im, x)
    with torch.no_grad():
        assert float((ys - net(x)).abs().max()) < 0.05
    back = load_integer(save_integer(im, tmp_path / "front.safetensors"))
    assert torch.equal(back(x), ys)
    assert [n.op.ir for n in back.nodes] == [n.op.ir for n in im.nodes]
    row = next(r for r in profile_integer(back) if r.kind == "magnitude")
    e = 12 * 6  # F x frames
    assert (row.macs, row.requant_ops, row.weight_bytes) == (3 * e, e, 0)
    assert all(r.macs == 0 for r in profile_integer(back) if r.kind in ("pad", "slice"))


def test_simulation_magnitude_is_the_integer_one(front):
    """The frozen QMagnitude's output codes are the IR op's on the conv's codes (the quantizer after it aliases)."""
    _, q, im = front
    env = im.run(_audio(8, seed=4))
    mag = next(n for n in im.nodes if n.kind == "magnitude")
    assert mag.grid == next(n.grid for n in im.nodes if n.inputs == [mag.output])  # read on its own grid
    mods = [m for m in q.modules() if isinstance(m, QMagnitude)]
    assert len(mods) == 1 and mods[0].frozen and (mods[0].m, mods[0].n) == (mag.op.ir.multiplier, mag.op.ir.shift)
    assert torch.equal(env[mag.output], build(mag.op.ir)(*(env[i] for i in mag.inputs)))


@pytest.mark.parametrize("form,slices,pad_mode", [("mul", "ellipsis", "reflect"), ("torch.pow", "negative", "reflect"),
                                                  ("square", "colon", "replicate"), ("hypot", "colon", "reflect")])
def test_other_forms(form, slices, pad_mode):
    torch.manual_seed(1)
    net = _Front(form, slices, pad_mode).eval()
    calib = [_audio(32, seed=s) for s in range(2)]
    q = _quantized(net, calib)
    im = to_integer(q, (calib[0][:1],))
    assert [n.kind for n in im.nodes] == KINDS
    assert im.nodes[0].op.ir.mode == pad_mode
    ys = check_exact(q, im, _audio(32, seed=7))
    with torch.no_grad():
        assert float((ys - net(_audio(32, seed=7))).abs().max()) < 0.05


def test_onnxruntime_equals_the_integer_model(front, tmp_path):
    """export_onnx(exact_layers=True): every int8 tensor's codes and the output (a float table) bit for bit."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    from lowbit.export.onnx_qdq import CODES_KEY, export_onnx, to_onnx_model
    from lowbit.export.ort import session

    _, _, im = front
    x = _audio(64, seed=11) * 1.5  # beyond the calibration range too: the clamps are exercised
    path = export_onnx(im, tmp_path / "front.onnx", (1, 96), exact_layers=True)
    got = session(path, threads=1).run(["output"], {"input": x.numpy()})[0]
    assert np.array_equal(got, im(x).numpy())
    proto = to_onnx_model(im, (1, 96), expose_codes=True, exact_layers=True)
    onnx.checker.check_model(proto, full_check=True)
    kinds = {n.op_type for n in proto.graph.node}
    assert {"Pad", "Slice", "Sqrt", "ConvInteger"} <= kinds and "Conv" not in kinds
    assert any(n.op_type == "Pad" and any(a.s == b"reflect" for a in n.attribute) for n in proto.graph.node)
    names = json.loads({p.key: p.value for p in proto.metadata_props}[CODES_KEY])
    out = session(proto, threads=1).run(list(names), {"input": x.numpy()})
    env, grids = im.run(x), {n.output: n.grid for n in im.nodes}
    assert "sqrt_magnitude" in names.values()
    for label, r in zip(names.values(), out):
        q = r.astype(np.int32) - (0 if grids[label].signed else 128)
        assert np.array_equal(q, env[label].numpy().astype(np.int32)), label


def test_replicate_pad_and_slices_on_codes_in_onnx(tmp_path):
    """A replicate pad and slices of int8 codes (after the quantizer) export as Pad(edge) / Slice of the codes."""
    pytest.importorskip("onnxruntime")
    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(2, 6, 3), nn.Conv1d(3, 4, 3)
            self.fc = nn.Linear(4 * 12, 3)

        def forward(self, x):
            y = F.pad(torch.relu(self.c1(x)), (2, 3), mode="replicate")
            y = y[:, 1:4, 2:-1]
            return self.fc(self.c2(y).flatten(1))

    torch.manual_seed(3)
    x = torch.randn(16, 2, 14)
    q = _quantized(Net(), [x])
    im = to_integer(q, (x[:1],))
    assert [n.kind for n in im.nodes][3:7] == ["squeeze", "pad", "slice", "slice"]
    assert im.nodes[4].grid is not None  # on the codes
    xt = torch.randn(8, 2, 14)
    ys = check_exact(q, im, xt)
    got = session(export_onnx(im, tmp_path / "m.onnx", (1, 2, 14), exact_layers=True), threads=1).run(
        ["output"], {"input": xt.numpy()})[0]
    assert np.allclose(got, ys.numpy(), rtol=1e-6, atol=1e-6)  # (the dequantizing head: one float32 product)


# ---------------------------------------------------------------- (d) refusals


class _DifferentGrids(nn.Module):
    """The magnitude of two convolutions' outputs: each has its own output grid."""

    def __init__(self):
        super().__init__()
        self.re, self.im = nn.Conv1d(1, 4, 8, stride=4), nn.Conv1d(1, 4, 8, stride=4)
        self.head = nn.Linear(4 * 7, 2)

    def forward(self, x):
        x = x.unsqueeze(1)
        return self.head(torch.hypot(self.re(x), self.im(x)).flatten(1))


def test_inputs_on_different_grids_are_refused():
    torch.manual_seed(4)
    x = torch.randn(16, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = ptq.quantize(_DifferentGrids().eval(), [x], example_inputs=(x[:1],)).eval()
    msgs = [str(w.message) for w in caught]
    assert any(re.search(r"hypot \(magnitude sqrt\(a\^2 \+ b\^2\)\) stays float: its inputs lie on different grids", m)
               for m in msgs), msgs
    with torch.no_grad():
        assert torch.isfinite(q(x)).all()  # the float op runs in the simulation
    with pytest.raises(ConfigError, match=r"magnitude hypot stays float: its inputs lie on different grids \(a: scale"):
        to_integer(q, (x[:1],))


def test_unmatched_forms_stay_float_and_are_refused():
    """A sum of squares with a third term is no magnitude: it stays float and to_integer names its nodes."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(1, 4, 8, stride=4)
            self.head = nn.Linear(2 * 7, 2)

        def forward(self, x):
            z = self.c(x.unsqueeze(1))
            a, b = z[:, :2], z[:, 2:]
            return self.head(torch.sqrt(a ** 2 + b ** 2 + 1.0).flatten(1))

    x = torch.randn(16, 32)
    with pytest.warns(UserWarning, match="stay in float"):
        q = ptq.quantize(Net().eval(), [x], example_inputs=(x[:1],)).eval()
    with pytest.raises(ConfigError, match=r"sqrt \(sqrt\)"):
        to_integer(q, (x[:1],))


@pytest.mark.parametrize("index,match", [((slice(None), slice(0, 4, 2)), "only slices of step 1"),
                                         ((slice(None), 1), "only slices of step 1"),
                                         ((slice(0, 1),), "the batch kept whole")])
def test_other_indexing_is_refused(index, match):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(1, 4, 3)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.c(x.unsqueeze(1)))[index].flatten(1)[:, :6])

    x = torch.randn(8, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = ptq.quantize(Net().eval(), [x], example_inputs=(x[:1],)).eval()
    with pytest.raises(ConfigError, match=match):
        to_integer(q, (x[:1],))


def test_reflection_and_replication_pad_modules():
    """nn.ReflectionPad1d / nn.ReplicationPad1d on int8 codes between two convs: pads of the codes, exact."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.c2 = nn.Conv1d(2, 4, 3), nn.Conv1d(4, 3, 3)
            self.p, self.r = nn.ReflectionPad1d((2, 1)), nn.ReplicationPad1d(1)
            self.fc = nn.Linear(3 * 13, 2)

        def forward(self, x):
            return self.fc(self.c2(self.r(self.p(torch.relu(self.c(x))))).flatten(1))

    torch.manual_seed(5)
    x = torch.randn(8, 2, 12)
    q = _quantized(Net(), [x])
    im = to_integer(q, (x[:1],))
    pads = [n for n in im.nodes if n.kind == "pad"]
    assert [p.op.ir.mode for p in pads] == ["reflect", "replicate"] and all(p.grid is not None for p in pads)
    check_exact(q, im, torch.randn(8, 2, 12))

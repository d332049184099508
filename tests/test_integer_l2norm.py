"""Integer L2 normalisation: the arithmetic against exact and float64 oracles, PTQ's swap of ``x / x.norm(...)`` and
``F.normalize``, the integer model against the simulation bit for bit, the file form, and the refusals."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lowbit import ptq
from lowbit.cost.integer import profile_integer
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.functional.l2norm import isqrt, l2_normalize_codes
from lowbit.integer import ir, to_integer, validate
from lowbit.integer.backend import Kernels
from lowbit.integer.io import load_integer, save_integer
from lowbit.integer.ops import build
from lowbit.nn.l2norm import QL2Normalize
from lowbit.nn.qparams import QParams
from tests._integer_checks import check_exact

# ---------------------------------------------------------------- (a) the arithmetic


def _exact(row: list[int]) -> list[int]:
    """The codes by their definition alone, in Python integers: ``k`` = round half up of ``t = 128 |x| / sqrt(S)`` is
    the largest ``k`` with ``k - 1/2 <= t``, i.e. ``(2k - 1)^2 S <= 2^16 x^2``; clamped to 127, signed."""
    s = sum(v * v for v in row)
    out = []
    for v in row:
        k = sum(1 for j in range(1, 129) if s and (2 * j - 1) ** 2 * s <= 65536 * v * v)
        out.append(int(math.copysign(min(k, 127), v)) if k else 0)
    return out


def test_isqrt_exhaustive():
    a = torch.arange(1 << 18, dtype=torch.int64)
    assert torch.equal(isqrt(a, 9), torch.tensor([math.isqrt(v) for v in range(1 << 18)]))


def test_isqrt_fails_on_a_wrong_root():
    """The exhaustive check can fail: a root of too few bits is wrong above its range."""
    assert not torch.equal(isqrt(torch.tensor([1 << 16]), 8), torch.tensor([256]))


_rows = st.lists(st.lists(st.integers(-255, 255), min_size=1, max_size=40), min_size=1, max_size=4).filter(
    lambda rs: len({len(r) for r in rs}) == 1)
_small = st.lists(st.lists(st.integers(-3, 3), min_size=1, max_size=6), min_size=1, max_size=4).filter(
    lambda rs: len({len(r) for r in rs}) == 1)


@settings(max_examples=200, deadline=None)
@given(rows=st.one_of(_rows, _small))
def test_codes_equal_the_exact_oracle(rows):
    """Bit for bit the correctly rounded ``128 x / ||x||`` (zero rows, ties of small vectors and one-hot rows
    included)."""
    x = torch.tensor(rows, dtype=torch.int64)
    assert l2_normalize_codes(x, 1).tolist() == [_exact(r) for r in rows]


@settings(max_examples=100, deadline=None)
@given(rows=_rows)
def test_codes_within_one_step_of_float64(rows):
    x = torch.tensor(rows, dtype=torch.int64)
    y = l2_normalize_codes(x, 1)
    xd = x.double()
    norm = xd.norm(dim=1, keepdim=True)
    ref = torch.where(norm > 0, torch.round(128 * xd / norm.clamp(min=1)), 0.0).clamp(-127, 127)
    assert float((y.double() - ref).abs().max()) <= 1
    assert int(y.abs().max()) <= 127


def test_scale_free_and_zero():
    """Multiplying the codes by an integer changes nothing (the scale cancels); a zero vector gives zeros."""
    torch.manual_seed(0)
    x = torch.randint(-40, 41, (5, 30))
    assert torch.equal(l2_normalize_codes(x, 1), l2_normalize_codes(x * 6, 1))
    assert torch.equal(l2_normalize_codes(torch.zeros(2, 7, dtype=torch.int64), 1), torch.zeros(2, 7, dtype=torch.int64))
    assert l2_normalize_codes(torch.tensor([[0, 9, 0]]), 1).tolist() == [[0, 127, 0]]  # +1 saturates to 127


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data(), zp=st.integers(-128, 127),
       seed=st.integers(0, 2 ** 16))
def test_op_along_any_dim_equals_the_oracle(shape, data, zp, seed):
    """The IR op on stored int8 codes (batch first, zero point subtracted) along each dimension after the batch."""
    dim = data.draw(st.integers(1, len(shape)))
    q = torch.randint(-128, 128, (2, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    got = build(ir.L2Normalize(dim, zp))(q, kernels=Kernels.REFERENCE)
    x = q.long() - zp
    rows = x.movedim(dim, -1).reshape(-1, x.shape[dim]).tolist()
    want = torch.tensor([_exact(r) for r in rows]).reshape(x.movedim(dim, -1).shape).movedim(-1, dim)
    assert got.dtype == torch.int8 and torch.equal(got.long(), want)
    assert torch.equal(build(ir.L2Normalize(dim, zp))(q, kernels=Kernels.VNNI), got)


# ---------------------------------------------------------------- (b) PTQ and the integer model


class _Embed(nn.Module):
    """Linear -> ReLU -> an L2 normalisation in one of the traced forms (``form``), along ``dim``."""

    def __init__(self, form: str, dim: int = 1, relu: bool = True, shape: tuple = (12,)):
        super().__init__()
        self.fc, self.form, self.dim, self.relu = nn.Linear(shape[-1], 16), form, dim, relu

    def forward(self, x):
        e = self.fc(x)
        e = torch.relu(e) if self.relu else e
        d = self.dim
        if self.form == "torch.norm":
            return e / torch.norm(e, dim=d, keepdim=True)
        if self.form == "method":
            return e.div(e.norm(2, d, True))
        if self.form == "vector_norm":
            return e / torch.linalg.vector_norm(e, dim=(d,), keepdim=True)
        return F.normalize(e, dim=d)


def _quantized(net, x, calib=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the normalisation must not stay float
        return ptq.quantize(net.eval(), calib or [x], example_inputs=(x[:1],)).eval()



@pytest.mark.parametrize("form", ["torch.norm", "method", "vector_norm", "F.normalize"])
def test_linear_relu_l2norm_equals_simulation(form):
    torch.manual_seed(1)
    net = _Embed(form)
    x = torch.randn(64, 12)
    q = _quantized(net, x)
    im = to_integer(q, (x[:1],))
    assert [n.kind for n in im.nodes] == ["quantize", "linear", "l2normalize", "dequantize"]
    assert im.nodes[2].grid == ir.Grid(2.0 ** -7, 0, 8, True)
    assert im.plans.run(im, x) is None  # the plan has no l2normalize step: op by op
    ys = check_exact(q, im, x)
    assert bool(((ys * 128).round() == ys * 128).all())  # the values of the grid 2^-7
    with torch.no_grad():
        yf = net(x)
    assert float((ys - yf).abs().max()) < 0.05
    assert float(F.cosine_similarity(ys, yf).min()) > 0.995


@pytest.mark.parametrize("dim,relu", [(1, False), (2, True), (-1, False), (-2, True)])
def test_other_dims_and_signed_inputs(dim, relu):
    """A (N, T, F) tensor normalised over time or features; without ReLU the input grid is signed-centred."""
    torch.manual_seed(2)
    net = _Embed("torch.norm", dim, relu, (7, 12))
    x = torch.randn(8, 7, 12)
    q = _quantized(net, x)
    im = to_integer(q, (x[:1],))
    node = next(n for n in im.nodes if n.kind == "l2normalize")
    assert node.op.ir.dim == (dim % 3)
    ys = check_exact(q, im, x)
    with torch.no_grad():  # (after ReLU a whole time column can be 0: NaN in float, 0 here)
        assert float((ys - torch.nan_to_num(net(x))).abs().max()) < 0.05


class _Cosine(nn.Module):
    """A cosine classifier: the normalised embedding feeds a Linear, which reads it on the grid 2^-7 (no quantizer
    of its own between)."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(10, 24), nn.Linear(24, 5)

    def forward(self, x):
        return self.head(F.normalize(self.fc(x), dim=1))


def test_normalised_tensor_feeds_a_layer():
    torch.manual_seed(3)
    net = _Cosine()
    x = torch.randn(32, 10)
    q = _quantized(net, x)
    im = to_integer(q, (x[:1],))
    assert [n.kind for n in im.nodes] == ["quantize", "linear", "l2normalize", "linear"]
    assert im.nodes[3].op.ir.input_zero_point == 0 and im.nodes[3].op.ir.input_signed
    ys = check_exact(q, im, x)
    with torch.no_grad():
        assert float(F.cosine_similarity(ys, net(x)).min()) > 0.99


class _SpeakerEncoder(nn.Module):
    """Resemblyzer's shape, smaller: LSTM(40, 64, 3 layers) -> last h -> Linear -> ReLU -> x / ||x||."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 64, num_layers=3, batch_first=True)
        self.linear = nn.Linear(64, 32)
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds_raw = self.relu(self.linear(hidden[-1]))
        return embeds_raw / torch.norm(embeds_raw, dim=1, keepdim=True)


def test_resemblyzer_shaped(tmp_path):
    torch.manual_seed(5)
    net = _SpeakerEncoder().eval()
    calib = [torch.rand(4, 30, 40) for _ in range(3)]
    q = _quantized(net, calib[0], calib)
    im = to_integer(q, (calib[0][:1],))
    assert [n.kind for n in im.nodes] == ["quantize", "recurrent", "linear", "l2normalize", "dequantize"]
    x = torch.rand(3, 30, 40)
    ys = check_exact(q, im, x)
    with torch.no_grad():
        assert float(F.cosine_similarity(ys, net(x)).min()) > 0.98
    back = load_integer(save_integer(im, tmp_path / "encoder.safetensors"))
    assert torch.equal(back(x), ys)
    node = next(n for n in back.nodes if n.kind == "l2normalize")
    assert node.op.ir == ir.L2Normalize(1, node.op.ir.input_zero_point) and node.grid == ir.Grid(2.0 ** -7, 0, 8, True)
    row = next(r for r in profile_integer(back) if r.kind == "l2normalize")
    assert (row.macs, row.requant_ops, row.weight_bytes) == (32, 32, 0)


def test_op_survives_its_file_form():
    op = ir.L2Normalize(2, -128)
    assert ir.parse(op.kind, ir.attrs_of(op)) == op


@pytest.mark.parametrize("attrs,shape,match", [({"dim": 0, "input_zero_point": 0}, (4,), "dim"),
                                               ({"dim": 1, "input_zero_point": 200}, (4,), "input_zero_point"),
                                               ({"dim": 1, "input_zero_point": 0, "eps": 1.0}, (4,), "unknown"),
                                               ({"dim": 3, "input_zero_point": 0}, (4, 5), "dim")])
def test_validate_refuses_bad_attributes(attrs, shape, match):
    check = validate.CHECKS[ir.L2Normalize]
    with pytest.raises(validate.Invalid, match=match):
        check.attrs(attrs, {}, 1)
        check.shape(attrs, {}, [validate.Spec(shape, torch.int8)])


def test_training_mode_runs_the_float_op():
    """QAT trains through the float op (a gradient reaches the input); eval mode runs the integer arithmetic."""
    m = QL2Normalize(1, "normalize", 1e-12)
    m.freeze(QParams(0.05, 128, IntFormat(8, signed=False)))
    x = (torch.randint(0, 255, (3, 9)) - 128).float().mul(0.05).requires_grad_()
    m.train()
    y = m(x)
    y.sum().backward()
    assert torch.allclose(y, F.normalize(x, dim=1)) and x.grad is not None
    m.eval()
    with torch.no_grad():
        assert bool(((m(x) * 128).round() == m(x) * 128).all())


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), [a.dtype for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def test_op_runs_no_float():
    torch.manual_seed(4)
    q = torch.randint(-128, 128, (4, 256), dtype=torch.int8)
    with _Ops() as mode:
        build(ir.L2Normalize(1, -128))(q)
    assert mode.calls and not [c for c in mode.calls if any(d.is_floating_point for d in c[1])]


# ---------------------------------------------------------------- (c) refusals


class _Bad(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.fc, self.how = nn.Linear(6, 8), how

    def forward(self, x):
        e = torch.relu(self.fc(x))
        if self.how == "p1":
            return e / e.norm(p=1, dim=1, keepdim=True)
        if self.how == "batch":
            return e / torch.norm(e, dim=0, keepdim=True)
        if self.how == "dims":
            return F.normalize(e.view(-1, 2, 4), dim=(1, 2)).flatten(1)
        if self.how == "normalize_p3":
            return F.normalize(e, p=3.0, dim=1)
        if self.how == "unsqueezed":
            return e / e.norm(dim=1).unsqueeze(1)
        return e / e.norm(dim=-2, keepdim=True)  # "negative_batch": dim -2 of a 2-D tensor is the batch


@pytest.mark.parametrize("how,warned,refused", [
    ("p1", r"truediv \(L2 normalisation\) stays float: its norm has p=1; the integer L2", r"truediv \(an L2 norm.*p=1"),
    ("batch", "stays float: it is over dimension 0, the batch", "dimension 0"),
    ("dims", "normalize .*stays float: dim=\\(1, 2\\) is not one dimension", "normalize .*one dimension d after"),
    ("normalize_p3", "normalize .*stays float: p=3.0", "p=3.0"),
    ("unsqueezed", "stay in float: norm, truediv", "norm .*a norm that is not part of an L2"),
    ("negative_batch", None, "dimension -2 of a 2-D tensor: the integer op normalises along one dimension after"),
])
def test_unsupported_normalisations(how, warned, refused):
    """An L2 normalisation the integer op cannot run stays float with a warning naming it and what is supported,
    and to_integer refuses it with the same words; one over the batch given as a negative dim is refused there."""
    x = torch.randn(16, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = ptq.quantize(_Bad(how).eval(), [x], example_inputs=(x[:1],)).eval()
    msgs = [str(w.message) for w in caught if str(w.message).startswith("lowbit")]
    if warned is not None:
        assert any(re.search(warned, m) for m in msgs), msgs
    with pytest.raises(ConfigError, match=refused):
        to_integer(q, (x[:1],))


def test_exports_to_onnx_exactly(tmp_path):
    """The l2normalize op has an exact ONNX form (more cases in tests/test_export_onnx_int.py): onnxruntime's
    output equals the integer model's."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    torch.manual_seed(6)
    x = torch.randn(16, 12)
    im = to_integer(_quantized(_Embed("F.normalize"), x), (x[:1],))
    assert "l2normalize" in [n.kind for n in im.nodes]
    path = export_onnx(im, tmp_path / "m.onnx", (1, 12))
    got = session(path, threads=1).run(["output"], {"input": x.numpy()})[0]
    assert torch.equal(torch.from_numpy(got), im(x))

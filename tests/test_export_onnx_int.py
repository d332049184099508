"""The exact ONNX forms of ``l2normalize`` and of the ``recurrent`` op, LSTM and GRU (:mod:`lowbit.export.onnx_int`):
onnxruntime's codes equal the integer model's bit for bit (oracle: :meth:`IntegerModel.run`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lowbit import ptq  # noqa: E402
from lowbit.export.onnx_qdq import CODES_KEY, export_onnx, to_onnx_model  # noqa: E402
from lowbit.export.ort import session  # noqa: E402
from lowbit.integer import to_integer  # noqa: E402
from lowbit.integer.model import IntegerModel, Node, make_op  # noqa: E402
from lowbit.integer import ir  # noqa: E402
from lowbit.export.onnx_int import HALF  # noqa: E402
from lowbit.functional.fixed_rnn import PART_MAX  # noqa: E402
from lowbit.nn.recurrent import _matmul, _parts  # noqa: E402
from lowbit.ptq import LayerRule, PTQConfig, uint_act  # noqa: E402


def _ort_codes(im: IntegerModel, x: torch.Tensor, shape) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """onnxruntime's float output and the stored codes (int32) of every int8 tensor of the exported graph."""
    probe = to_onnx_model(im, shape, expose_codes=True)
    onnx.checker.check_model(probe, full_check=True)
    names = json.loads({p.key: p.value for p in probe.metadata_props}[CODES_KEY])
    got = session(probe, threads=1).run(["output", *names], {"input": x.numpy()})
    grids = {n.output: n.grid for n in im.nodes}
    return got[0], {lb: r.astype(np.int32) - (0 if grids[lb].signed else 128) for lb, r in zip(names.values(), got[1:])}


def _check_exact(im: IntegerModel, x: torch.Tensor, shape, tmp_path, float_exact: bool = True) -> dict:
    """Export (checked), run in onnxruntime: every int8 tensor equals the integer model's codes; the float output
    too when ``float_exact`` (no dequantizing linear head, whose float32 product may differ by an ulp)."""
    path = export_onnx(im, tmp_path / "m.onnx", shape)
    out = session(path, threads=1).run(["output"], {"input": x.numpy()})[0]
    env = im.run(x)
    _, codes = _ort_codes(im, x, shape)
    for name, q in codes.items():
        assert np.array_equal(q, env[name].numpy().astype(np.int32)), name
    ref = env[im.output_name].numpy()
    if float_exact:
        assert np.array_equal(out, ref)
    else:
        assert np.allclose(out, ref, rtol=1e-6, atol=1e-6)
    return codes


# ---------------------------------------------------------------- l2normalize


def _l2_model(zp: int, signed: bool, dim: int) -> IntegerModel:
    """quantize (scale 1, zero point ``zp``) -> l2normalize along ``dim`` -> dequantize: the input's values are its
    centred codes."""
    lo, hi = (-128, 127)
    stored_zp = zp if signed else zp - 128
    nodes = [Node(make_op("quantize", {"scale": 1.0, "zero_point": stored_zp, "lo": lo, "hi": hi}), ["x"], "q",
                  ir.Grid(1.0, stored_zp, 8, signed)),
             Node(make_op("l2normalize", {"dim": dim, "input_zero_point": stored_zp}), ["q"], "n",
                  ir.Grid(2.0 ** -7, 0, 8, True)),
             Node(make_op("dequantize", {"scale": 2.0 ** -7, "zero_point": 0}), ["n"], "y")]
    return IntegerModel(nodes, "x", "y")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([(0, True), (128, False), (5, False), (-7, True)]),
       st.sampled_from([1, 2]), st.integers(1, 40))
def test_l2normalize_codes_equal(seed, zp_signed, dim, k):
    """Random codes over the whole int8 range, with all-zero rows (S = 0) and single spikes (u = 2^16)."""
    zp, signed = zp_signed
    g = torch.Generator().manual_seed(seed)
    qmin, qmax = (-128, 127) if signed else (0, 255)
    codes = torch.randint(qmin, qmax + 1, (6, k, 3) if dim == 1 else (6, 3, k), generator=g)
    codes[0] = zp  # a zero vector everywhere: S = 0
    if dim == 1:
        codes[1, :, 0] = zp
        codes[1, 0, 0] = qmax  # one element alone: its code saturates to 127
    x = (codes - zp).float()
    im = _l2_model(zp, signed, dim)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        _check_exact(im, x, tuple(x.shape), Path(d))


class _Embed(nn.Module):
    def __init__(self, relu: bool):
        super().__init__()
        self.fc, self.relu = nn.Linear(12, 16), relu

    def forward(self, x):
        e = self.fc(x)
        e = torch.relu(e) if self.relu else e
        return e / e.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("relu", [True, False])
def test_linear_l2norm_model_exports_exactly(relu, tmp_path):
    torch.manual_seed(3)
    x = torch.randn(64, 12)
    q = ptq.quantize(_Embed(relu).eval(), [x], example_inputs=(x[:1],)).eval()
    im = to_integer(q, (x[:1],))
    assert "l2normalize" in [n.kind for n in im.nodes]
    _check_exact(im, x, (1, 12), tmp_path)
    with torch.no_grad():
        assert torch.equal(im(x), q(x))


# ---------------------------------------------------------------- the LSTM


class _Net(nn.Module):
    """An LSTM, one tensor of its result read (``read``), and a linear head when ``head``."""

    def __init__(self, i, h, layers, batch_first, read, head=False, gain=1.0, cls=nn.LSTM):
        super().__init__()
        self.rnn = cls(i, h, num_layers=layers, batch_first=batch_first)
        with torch.no_grad():
            for p in self.rnn.parameters():
                p.mul_(gain)  # a large gain drives pre-activations into the clamps and the tables' ends
        self.read, self.batch_first, self.lstm = read, batch_first, cls is nn.LSTM
        self.head = nn.Linear(h, 5) if head else None

    def forward(self, x):
        out, state = self.rnn(x)
        h_n, c_n = state if self.lstm else (state, None)
        if self.read == "output":
            y = out
        elif self.read == "h_last":
            y = h_n[-1]
        elif self.read == "c_last":
            y = c_n[-1]
        else:  # "output_last"
            y = out[:, -1] if self.batch_first else out[-1]
        return self.head(y) if self.head is not None else y


CASES = [(nn.LSTM, layers, bf, read, gain, wide)
         for layers, bf, read, gain, wide in [
             (1, True, "output", 1.0, False), (2, False, "output", 1.0, False), (2, True, "h_last", 4.0, False),
             (1, False, "c_last", 1.0, False), (2, True, "output_last", 8.0, False), (1, True, "output", 4.0, True),
             (2, True, "output", 200.0, False), (1, False, "h_last", 200.0, True), (2, False, "h_last", 1.0, True),
             (2, True, "c_last", 1.0, True)]]
CASES += [(nn.GRU, layers, bf, read, gain, wide)
          for layers, bf, read, gain, wide in [
              (1, True, "output", 1.0, False), (2, False, "output", 4.0, False), (2, True, "h_last", 200.0, False),
              (1, False, "output_last", 1.0, True), (2, True, "output", 8.0, True)]]


@pytest.mark.filterwarnings("ignore:lowbit")
@pytest.mark.parametrize("cls,layers,batch_first,read,gain,wide", CASES)
def test_recurrent_codes_equal(cls, layers, batch_first, read, gain, wide, tmp_path):
    torch.manual_seed(layers * 13 + gain)
    net = _Net(7, 12, layers, batch_first, read, gain=gain, cls=cls).eval()
    shape = (3, 9, 7) if batch_first else (9, 3, 7)
    x, calib = torch.randn(*shape) * 2, torch.randn(*shape) * 2
    cfg = PTQConfig(rules=(LayerRule("rnn", act=uint_act(16)),)) if wide else PTQConfig()
    q = ptq.quantize(net, [calib], cfg, example_inputs=(calib[:1],)).eval()
    im = to_integer(q, (x[:1],))
    rec = next(n for n in im.nodes if n.kind == "recurrent")
    assert rec.op.ir.input_bits == (16 if wide else 8) and rec.op.ir.num_layers == layers
    codes = _check_exact(im, x, (1, *shape[1:]), tmp_path)
    if read != "c_last":
        assert rec.output in codes
    if gain >= 4:  # saturating: input-projection parts clamped to int16 and gate indices beyond the tables
        t, xin = rec.op.tensors, im.run(x)[rec.inputs[0]]
        seq = xin.transpose(0, 1) if batch_first else xin
        px = _parts(_matmul(seq, rec.op.ir.input_zero_point, t["w_ih_0"], rec.op.ir.input_bits), t["m_ih_0"],
                    t["n_ih_0"], t["b_ih_0"])
        assert int(px.abs().max()) > HALF  # a gate index beyond the table: clamped
        if gain >= 100:
            assert int((px - t["b_ih_0"]).abs().max()) >= PART_MAX  # the requantized part clamped to int16
    with torch.no_grad():
        assert torch.equal(im(x), q(x))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([nn.LSTM, nn.GRU]), st.integers(1, 2), st.booleans(),
       st.integers(1, 9), st.integers(1, 10), st.integers(1, 4), st.sampled_from([0.5, 1.0, 6.0]))
def test_recurrent_random_layers(seed, cls, layers, batch_first, i, h, steps, gain):
    import tempfile
    from pathlib import Path

    torch.manual_seed(seed)
    net = _Net(i, h, layers, batch_first, "output", gain=gain, cls=cls).eval()
    shape = (2, steps, i) if batch_first else (steps, 2, i)
    x = torch.randn(*shape) * 3
    q = ptq.quantize(net, [x], example_inputs=(x[:1],)).eval()
    im = to_integer(q, (x[:1],))
    with tempfile.TemporaryDirectory() as d:
        _check_exact(im, x, (1, *shape[1:]), Path(d))


class _Resemblyzer(nn.Module):
    """Resemblyzer's shape, small: LSTM -> the last layer's h -> Linear -> ReLU -> x / ||x||."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(10, 16, num_layers=2, batch_first=True)
        self.linear = nn.Linear(16, 8)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        e = torch.relu(self.linear(h[-1]))
        return e / e.norm(dim=1, keepdim=True)


def _power(*shape, seed=0):
    """Non-negative, spiky features (a mel spectrogram's shape): a 16-bit grid's zero point at its end."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).abs() * 0.05
    return torch.where(torch.rand(*shape, generator=g) < 0.01, torch.full_like(x, 20.0), x)


@pytest.mark.filterwarnings("ignore:lowbit")
@pytest.mark.parametrize("wide", [False, True])
def test_resemblyzer_shaped_model_exports_exactly(wide, tmp_path):
    """LSTM (2 layers) -> Linear -> ReLU -> x / ||x||, through quantize + to_integer + export: onnxruntime's output
    equals the integer model's (and the simulation's) bit for bit; ``wide``: the LSTM's input on 16 bits."""
    torch.manual_seed(5)
    x, calib = _power(6, 12, 10, seed=1), _power(16, 12, 10, seed=2)
    cfg = PTQConfig(rules=(LayerRule("lstm", act=uint_act(16)),)) if wide else PTQConfig()
    q = ptq.quantize(_Resemblyzer().eval(), [calib], cfg, example_inputs=(calib[:1],)).eval()
    im = to_integer(q, (x[:1],))
    assert {"recurrent", "linear", "l2normalize"} <= {n.kind for n in im.nodes}
    assert next(n for n in im.nodes if n.kind == "recurrent").op.ir.input_bits == (16 if wide else 8)
    _check_exact(im, x, (1, 12, 10), tmp_path)
    with torch.no_grad():
        assert torch.equal(im(x), q(x))
    ops = {n.op_type for n in onnx.load(export_onnx(im, tmp_path / "r.onnx", (1, 12, 10))).graph.node}
    assert "Gemm" not in ops and "MatMul" not in ops  # the head, read only by l2normalize, is written in integers


@pytest.mark.filterwarnings("ignore:lowbit")
def test_an_input_read_by_the_recurrent_op_is_quantized_as_the_integer_model_does(tmp_path):
    """x / s (QuantizeLinear) and x * (1/s) (lowbit) round to different codes for about one float in 500,000; an
    input read only by ops written in integers is quantized by the integer model's own float32 ops, so inputs
    picked among millions for exactly that disagreement still give the integer model's codes."""
    torch.manual_seed(5)
    calib = _power(16, 12, 10, seed=2)
    q = ptq.quantize(_Resemblyzer().eval(), [calib], PTQConfig(), example_inputs=(calib[:1],)).eval()
    im = to_integer(q, (calib[:1],))
    qa = next(n for n in im.nodes if n.kind == "quantize").op.ir
    s = np.float32(qa.scale)
    inv = np.float32(torch.reciprocal(torch.tensor(qa.scale, dtype=torch.float32)))
    cand = (np.random.default_rng(0).random(4_000_000, dtype=np.float32) * np.float32(100) * s).astype(np.float32)
    odd = cand[np.rint(cand * inv) != np.rint(cand / s)]
    assert odd.size >= 1  # the disagreement exists on this grid
    x = torch.from_numpy(np.resize(odd, 2 * 12 * 10).reshape(2, 12, 10).copy())
    _check_exact(im, x, (1, 12, 10), tmp_path)
    ops = {n.op_type for n in onnx.load(export_onnx(im, tmp_path / "q.onnx", (1, 12, 10))).graph.node}
    assert {"Round", "Mul"} <= ops


# ---------------------------------------------------------------- the building blocks against their oracles


def _run_graph(build, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """Run the nodes that ``build(b)`` adds to a fresh exporter builder on int64 ``inputs`` in onnxruntime (outputs
    elementwise: the first input's shape)."""
    from lowbit.export.onnx_qdq import _Builder

    b = _Builder(onnx, {}, False)
    outs = build(b)
    h, tp = onnx.helper, onnx.TensorProto
    graph = h.make_graph(b.nodes, "t", [h.make_tensor_value_info(n, tp.INT64, a.shape) for n, a in inputs.items()],
                         [h.make_tensor_value_info(o, tp.INT64, next(iter(inputs.values())).shape) for o in outs],
                         initializer=b.inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return session(model, threads=1).run(None, inputs)


def test_rshift_even_and_floor_div_equal_the_integer_models():
    """rshift_even against lowbit's rshift_round (ties to even) and floor_div against Python's //, on values of
    both signs, exact ties, shifts 0..62 and products near 2^62."""
    from lowbit.export.onnx_int import floor_div, rshift_even
    from lowbit.functional.requant import rshift_round

    rng = np.random.default_rng(0)
    n = np.array([0, 1, 2, 3, 7, 15, 24, 31, 40, 62], np.int64)
    v = rng.integers(-(2**62), 2**62, size=(50, len(n)), dtype=np.int64)
    v[:10] = rng.integers(-300, 300, size=(10, len(n)))
    v[10:20] = (rng.integers(-1000, 1000, size=(10, len(n))) * 2 + 1) * (np.int64(1) << np.maximum(n - 1, 0))  # ties
    d = np.int64(1) << np.array(15, np.int64)

    def build(b):
        return [rshift_even(b, "v", n, "r"), floor_div(b, "v", b.const("d", d), "f")]

    got_r, got_f = _run_graph(build, {"v": v}, ["r", "f"])
    assert np.array_equal(got_r, rshift_round(torch.from_numpy(v), torch.from_numpy(n)).numpy())
    assert np.array_equal(got_f, v // d)


def test_isqrt_by_double_sqrt_is_exact_on_its_range():
    """Floor(Sqrt(double(u))) in onnxruntime is isqrt(u) for every u in [0, 2^16] (the l2normalize argument)."""
    import math

    u = np.arange(2**16 + 1, dtype=np.int64)

    def build(b):
        root = b.add("Floor", [b.add("Sqrt", [b.add("Cast", ["u"], "uf", to=11)], "s")], "fl")
        return [b.add("Cast", [root], "r", to=7)]

    (got,) = _run_graph(build, {"u": u}, ["r"])
    assert np.array_equal(got, np.array([math.isqrt(int(k)) for k in u]))


# ---------------------------------------------------------------- exact_layers: convolutions and linears


class _ConvNet(nn.Module):
    def __init__(self, groups: int, dilation: int, stride: int, pad: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=stride, padding=pad, dilation=dilation)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.head(torch.relu(self.fc(torch.flatten(self.pool(x), 1))))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), groups=st.sampled_from([1, 2, 8]), dilation=st.sampled_from([1, 2]),
       stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1, 3]))
def test_exact_layers_give_the_integer_models_codes(seed, groups, dilation, stride, pad):
    torch.manual_seed(seed)
    model = _ConvNet(groups, dilation, stride, pad).eval()
    data = [torch.randn(8, 3, 12, 12) * 3 for _ in range(4)]
    im = to_integer(ptq.quantize(model, data, PTQConfig()), (data[0][:1],))
    proto = to_onnx_model(im, (1, 3, 12, 12), expose_codes=True, exact_layers=True)
    onnx.checker.check_model(proto, full_check=True)
    kinds = {n.op_type for n in proto.graph.node}
    assert "ConvInteger" in kinds and "MatMulInteger" in kinds and "Conv" not in kinds
    names = json.loads({p.key: p.value for p in proto.metadata_props}[CODES_KEY])
    x = torch.randn(16, 3, 12, 12) * 4  # beyond the calibration range too: the clamps are exercised
    got = session(proto, threads=1).run(["output", *names], {"input": x.numpy()})
    env = im.run(x)
    grids = {n.output: n.grid for n in im.nodes}
    for label, r in zip(names.values(), got[1:]):
        q = r.astype(np.int32) - (0 if grids[label].signed else 128)
        assert np.array_equal(q, env[label].numpy().astype(np.int32)), label
    assert np.array_equal(got[0], env[im.output_name].numpy())  # the float head too: float64 acc * scale


def test_exact_layers_is_checked(tmp_path):
    from lowbit.errors import ConfigError

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    im = to_integer(ptq.quantize(model, [torch.randn(8, 4)], PTQConfig()), (torch.randn(1, 4),))
    with pytest.raises(ConfigError, match="exact_layers must be True or False"):
        export_onnx(im, tmp_path / "m.onnx", (1, 4), exact_layers="yes")

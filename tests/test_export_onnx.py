"""QDQ ONNX export: onnxruntime runs the exported graph on integer kernels and reproduces the integer model."""

import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from lowbit import zoo  # noqa: E402
from lowbit.data import datasets  # noqa: E402
from lowbit.errors import ConfigError  # noqa: E402
from lowbit.export.onnx_qdq import CODES_KEY, Residual, export_onnx, fit_weight_scales, to_onnx_model  # noqa: E402
from lowbit.export.ort import session  # noqa: E402
from lowbit.functional.requant import fixed_point  # noqa: E402
from lowbit.integer.lower import to_integer  # noqa: E402
from lowbit.integer import ir  # noqa: E402
from lowbit.integer.model import IntegerModel, Node, make_op  # noqa: E402
from lowbit.integer.ops import Op  # noqa: E402
from lowbit.ptq import PTQConfig, int_weight, quantize, uint_act, with_pow2_scales  # noqa: E402

N_IMAGES = 1000
CASES = {
    "mlp": ("mlp", PTQConfig()),
    "cnn": ("cnn", PTQConfig()),
    "resnet": ("resnet", PTQConfig()),
    "resnet-pow2": ("resnet", with_pow2_scales(PTQConfig())),
    "mlp-a4": ("mlp", PTQConfig(act=uint_act(4))),  # 4-bit activations: saturation narrower than uint8
}


def _session(model, optimized_path=None):
    return session(model, threads=1, optimized_path=optimized_path)


def _probe_codes(im: IntegerModel, x: torch.Tensor, shape, residual=Residual.EXACT) -> tuple[np.ndarray, dict]:
    """onnxruntime's float output and every int8 tensor's codes (lowbit's stored int8 convention, as int32),
    read from a probe copy of the graph whose QuantizeLinear outputs are also graph outputs."""
    probe = to_onnx_model(im, shape, expose_codes=True, residual=residual)
    names = json.loads({p.key: p.value for p in probe.metadata_props}[CODES_KEY])  # graph output -> lowbit
    got = _session(probe).run(["output", *names], {"input": x.numpy()})
    grids = {n.output: n.grid for n in im.nodes}
    return got[0], {lb: r.astype(np.int32) - (0 if grids[lb].signed else 128) for lb, r in zip(names.values(), got[1:])}


def _run(im: IntegerModel, x: torch.Tensor, shape, tmp, name: str) -> dict:
    """Export, run in onnxruntime and in lowbit, and measure their agreement.

    ``code_diff``: |onnxruntime - lowbit| per element of every int8 tensor, read
    from a probe copy of the graph whose QuantizeLinear outputs are also graph
    outputs; ``own``: lowbit's last (dequantizing) layer applied to the probe's
    codes of its input, which isolates that layer from upstream 1-LSB flips.
    """
    path = export_onnx(im, tmp / f"{name}.onnx", shape)
    out = _session(path, tmp / f"{name}.opt.onnx").run(["output"], {"input": x.numpy()})[0]
    optimized = Counter(n.op_type for n in onnx.load(tmp / f"{name}.opt.onnx").graph.node)
    env = im.run(x)
    probe_out, stored = _probe_codes(im, x, shape)
    code_diff = {lb: np.abs(q - env[lb].numpy().astype(np.int32)) for lb, q in stored.items()}
    final = im.nodes[-1]
    lsb = final.op.tensors["acc_scale"].numpy()  # one LSB of the float output, per channel
    own = final.op(torch.from_numpy(stored[final.inputs[0]].astype(np.int8))).numpy()
    return {"out": out, "probe_out": probe_out, "ref": env[im.output_name].numpy(), "code_diff": code_diff,
            "ops": optimized, "lsb": lsb, "own": own, "path": path}


@pytest.fixture(scope="module")
def fmnist():
    d = datasets.load("fashion-mnist", "test")
    return d.x[:N_IMAGES], d.y[:N_IMAGES].numpy(), d.x[:32]


@pytest.fixture(scope="module")
def exported(fmnist, tmp_path_factory):
    x, _, calib = fmnist
    tmp = tmp_path_factory.mktemp("onnx")
    results = {}
    for case, (name, config) in CASES.items():
        im = to_integer(quantize(zoo.pretrained(name).eval(), [calib], config), (calib[:2],))
        results[case] = {"im": im, **_run(im, x, (1, 1, 28, 28), tmp, case)}
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_is_a_checked_qdq_graph_with_dynamic_batch(case, exported):
    r = exported[case]
    model = onnx.load(r["path"])
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["output"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 2
    assert set(ops) <= {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MatMul", "Add", "Relu", "Clip",
                        "MaxPool", "GlobalAveragePool", "AveragePool", "Flatten", "Pad",
                        "Slice", "Concat", "Transpose", "Reshape"}  # (im2col rows of a residual conv)
    weights = [i for i in graph.initializer if i.name.endswith("_weight")]
    assert weights and all(w.data_type == onnx.TensorProto.INT8 for w in weights)
    acts = [i for i in graph.initializer if i.name.endswith("_zero_point") and not i.name.endswith(
        ("weight_zero_point", "bias_zero_point"))]
    assert all(a.data_type == onnx.TensorProto.UINT8 for a in acts)  # unsigned grids: uint8 activations
    assert np.array_equal(r["out"], r["probe_out"])  # exposing the codes changes nothing


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnxruntime_reproduces_the_integer_model(case, exported, fmnist):
    r, y = exported[case], fmnist[1]
    within = {k: float((d <= 1).mean()) for k, d in r["code_diff"].items()}
    exact = float(np.mean(np.concatenate([(d == 0).ravel() for d in r["code_diff"].values()])))
    out_lsb = np.abs(r["out"] - r["ref"]) / r["lsb"]
    own_lsb = np.abs(r["probe_out"] - r["own"]) / r["lsb"]
    acc_ort, acc_lb = float((r["out"].argmax(1) == y).mean()), float((r["ref"].argmax(1) == y).mean())
    print(f"\n{case}: codes exact {exact:.6f}, worst tensor within 1 LSB {min(within.values()):.6f}; output within "
          f"1 LSB {(out_lsb <= 1).mean():.4f} (max {out_lsb.max():.1f} LSB), last layer on ORT's codes within 1 "
          f"LSB {(own_lsb <= 1).mean():.4f} (max {own_lsb.max():.3f}); top-1 ort {acc_ort:.4f} lowbit {acc_lb:.4f}")
    assert min(within.values()) >= 0.999  # every quantized tensor, end to end
    assert (own_lsb <= 1).mean() >= 0.999  # the dequantizing last layer itself
    assert abs(acc_ort - acc_lb) <= 0.001
    if case == "resnet-pow2":  # power-of-two scales: every float operation is exact
        assert exact == 1.0 and out_lsb.max() <= 1e-3
    if case in ("mlp", "mlp-a4"):  # (exact on this machine; float32 requantization may flip a code elsewhere)
        assert exact >= 0.99999 and (out_lsb <= 1).mean() >= 0.999


def _expected_kernels(im: IntegerModel) -> dict[str, int]:
    """onnxruntime kernels of the optimized graph: a residual conv of one group is a QGemm on NHWC (im2col) rows,
    a grouped residual conv stays a float conv (FusedConv: no integer conv with a summand), every other layer is
    an integer kernel."""
    convs = [n for n in im.nodes if n.kind == "conv2d"]
    residual = [n for n in convs if len(n.inputs) > 1]
    rows = sum(n.op.attrs["groups"] == 1 for n in residual)
    return {"QLinearConv": len(convs) - len(residual), "QGemm": sum(n.kind == "linear" for n in im.nodes) + rows,
            "float conv": len(residual) - rows}


def test_onnxruntime_fuses_into_integer_kernels(exported):
    for case in CASES:
        r, im = exported[case], exported[case]["im"]
        ops, want = r["ops"], _expected_kernels(im)
        assert ops["QLinearConv"] == want["QLinearConv"] and ops["QGemm"] == want["QGemm"], (case, ops)
        assert ops["FusedConv"] + ops["Conv"] == want["float conv"], (case, ops)
        assert ops["Gemm"] == 0 and ops["MatMul"] == 0, (case, ops)
    assert exported["resnet"]["ops"]["QLinearGlobalAveragePool"] == 1


@pytest.mark.parametrize("case", ["resnet", "resnet-pow2"])
def test_resnet_runs_no_float_conv_in_onnxruntime(case, exported):
    """Structural, not timed: after onnxruntime's graph optimisation every convolution of the ResNet, the 3x3
    ones closing a residual block included, is an integer kernel (QLinearConv, or QGemm on im2col rows); no float
    Conv/FusedConv/Gemm/MatMul and no float Pad is left, and the only Transposes are the two at the NHWC borders."""
    r, im = exported[case], exported[case]["im"]
    convs = sum(n.kind == "conv2d" for n in im.nodes)
    residual_3x3 = [n for n in im.nodes if len(n.inputs) > 1 and tuple(n.op.tensors["weight"].shape[2:]) == (3, 3)]
    assert len(residual_3x3) == 6  # the second conv of each of the six BasicBlocks
    ops = r["ops"]
    assert ops["Conv"] == ops["FusedConv"] == ops["ConvInteger"] == 0, ops
    assert ops["Gemm"] == ops["MatMul"] == 0 and ops["Pad"] == len(residual_3x3), ops  # each Pad is on codes
    assert ops["QLinearConv"] + ops["QGemm"] == convs + 1, ops  # + the classifier
    assert ops["QGemm"] == len(residual_3x3) + 1, ops
    assert ops["Transpose"] <= 2, ops
    opt = onnx.load(r["path"].with_suffix(".opt.onnx"))
    inits = {i.name: i.data_type for i in opt.graph.initializer}
    pads = [n for n in opt.graph.node if n.op_type == "Pad"]  # its value has the data's type: it pads codes
    assert all(inits.get(n.input[2]) in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8) for n in pads)


class _MBBlock(nn.Module):
    """EfficientNet-Lite's block: 1x1 expansion, depthwise 3x3 after a ZeroPad2d, 1x1 projection + the input."""

    def __init__(self, c: int, e: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.dw = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(e, e, 3, groups=e, bias=False), nn.BatchNorm2d(e),
                                nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


def _tiny_efficientnet() -> nn.Module:
    """A TF-"same" padded stride-2 stem (ZeroPad2d before the conv), two residual MBConv blocks, pool, linear."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU6(),
                          _MBBlock(8, 16), _MBBlock(8, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # not the identity: folded scales and shifts of some size
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_efficientnet_style_graph_runs_no_float_conv(fmnist, tmp_path):
    """Pads fold into the convolutions and residual projections become QGemms: after onnxruntime's graph
    optimisation no float Conv, Pad or stray layout Transpose is left, and the codes are the integer model's."""
    x, _, calib = fmnist
    im = to_integer(quantize(_tiny_efficientnet(), [calib], PTQConfig()), (calib[:2],))
    assert Counter(n.kind for n in im.nodes)["pad"] == 3 and sum(len(n.inputs) > 1 for n in im.nodes) == 2
    r = _run(im, x[:300], (1, 1, 28, 28), tmp_path, "tiny_efficientnet")
    ops, want = r["ops"], _expected_kernels(im)
    assert want == {"QLinearConv": 5, "QGemm": 3, "float conv": 0}
    assert ops["QLinearConv"] == want["QLinearConv"] and ops["QGemm"] == want["QGemm"], ops
    assert ops["Conv"] == ops["FusedConv"] == ops["Pad"] == 0, ops
    assert ops["Transpose"] <= 2, ops  # into NHWC at the input, out of it after the pool: the rest cancel
    for name, d in r["code_diff"].items():
        assert (d <= 1).mean() >= 0.999 and (d == 0).mean() >= 0.99, name
    assert (np.abs(r["out"] - r["ref"]) / r["lsb"] <= 1).mean() >= 0.999


def test_batch_dimension_is_dynamic(exported, fmnist):
    r = exported["cnn"]
    sess = _session(r["path"])
    x = fmnist[0][:5].numpy()
    one = np.concatenate([sess.run(["output"], {"input": x[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_array_equal(one, r["out"][:5])


# ---------------------------------------------------------------- every op and bound, on a hand-built model


def _mult(s_in, s_w, s_out):
    return fixed_point(torch.as_tensor(s_in * s_w / s_out, dtype=torch.float64).reshape(-1))


def _grid(scale, zp, signed):
    return ir.Grid(scale, zp, 8, signed)


def _synthetic() -> IntegerModel:
    """Float pad, signed input grid, grouped conv + ReLU (zero point above the minimum code), integer pad,
    padded ceil-mode max pool, 1x1 conv with a residual and a hardtanh-like upper bound, windowed average pool,
    flatten, dequantizing linear with a float hardtanh."""
    g = torch.Generator().manual_seed(0)
    w = lambda *s: torch.randint(-127, 128, s, generator=g, dtype=torch.int8)  # noqa: E731
    b = lambda o: torch.randint(-3000, 3000, (o,), generator=g, dtype=torch.int32)  # noqa: E731
    sw = lambda o: torch.rand(o, generator=g, dtype=torch.float64) * 0.01 + 0.002  # noqa: E731
    s0, s2, s5, s6 = 0.05, 0.04, 0.0613721, 0.0291537  # not a simple ratio: no exact ties in the average pool
    sw2, sw5, sw8 = sw(4), sw(4), sw(5)
    m2, n2 = _mult(s0, sw2, s2)
    m5, n5 = _mult(s2, sw5, s5)
    m6, n6 = _mult(s5, 1.0, 4 * s6)
    res = torch.round(torch.ldexp(torch.full((4,), s2 / s5, dtype=torch.float64), n5)).long()
    nodes = [
        Node(make_op("pad", {"pad": [1, 0, 0, 1], "value": 0}), ["x"], "xp"),
        Node(make_op("quantize", {"scale": s0, "zero_point": 3, "lo": -128, "hi": 127}), ["xp"], "q",
             _grid(s0, 3, True)),
        Node(make_op("conv2d", {"input_zero_point": 3, "zero_point": -100, "lo": -100, "hi": 127, "stride": [1, 1],
                                "padding": [1, 1], "dilation": [1, 1], "groups": 2},
                     {"weight": w(4, 1, 3, 3), "bias": b(4), "m": m2, "n": n2}), ["q"], "c2", _grid(s2, -100, False)),
        Node(make_op("pad", {"pad": [1, 1, 1, 1], "value": -100}), ["c2"], "p3", _grid(s2, -100, False)),
        Node(make_op("maxpool2d", {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1],
                                   "ceil_mode": True}), ["p3"], "mp", _grid(s2, -100, False)),
        Node(make_op("conv2d", {"input_zero_point": -100, "zero_point": -5, "lo": -128, "hi": 60,
                                "residual_zero_point": -100, "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1],
                                "groups": 1},
                     {"weight": w(4, 4, 1, 1), "bias": b(4), "m": m5, "n": n5, "m2": res}), ["mp", "mp"], "c5",
             _grid(s5, -5, True)),
        Node(make_op("avgpool2d", {"kernel_size": [2, 2], "stride": [2, 2], "window": 4, "input_zero_point": -5,
                                   "zero_point": 0, "lo": -128, "hi": 127}, {"m": m6, "n": n6}), ["c5"], "ap",
             _grid(s6, 0, True)),
        Node(make_op("flatten", {"start_dim": 1, "end_dim": -1}), ["ap"], "fl", _grid(s6, 0, True)),
        Node(make_op("linear", {"input_zero_point": 0, "act": "hardtanh", "act_lo": -1.0, "act_hi": 2.0},
                     {"weight": w(5, 36), "bias": b(5), "acc_scale": s6 * sw8}), ["fl"], "out"),
    ]
    return IntegerModel(nodes, "x", "out")


def _linear3d() -> IntegerModel:
    """Linear layers on (N, T, K) inputs (MatMul + Add), a ReLU folded as lo == zero point, float ReLU at the end."""
    g = torch.Generator().manual_seed(1)
    s0, s1 = 0.02, 0.05
    sw1, sw2 = torch.full((6,), 0.01, dtype=torch.float64), torch.full((3,), 0.02, dtype=torch.float64)
    m1, n1 = _mult(s0, sw1, s1)
    nodes = [
        Node(make_op("quantize", {"scale": s0, "zero_point": 0, "lo": -128, "hi": 127}), ["x"], "q",
             _grid(s0, 0, False)),
        Node(make_op("linear", {"input_zero_point": 0, "zero_point": -60, "lo": -60, "hi": 127},
                     {"weight": torch.randint(-127, 128, (6, 8), generator=g, dtype=torch.int8),
                      "bias": torch.randint(-500, 500, (6,), generator=g, dtype=torch.int32), "m": m1, "n": n1}),
             ["q"], "h", _grid(s1, -60, False)),
        Node(make_op("linear", {"input_zero_point": -60, "act": "relu"},
                     {"weight": torch.randint(-127, 128, (3, 6), generator=g, dtype=torch.int8),
                      "bias": torch.zeros(3, dtype=torch.int32), "acc_scale": s1 * sw2}), ["h"], "y"),
    ]
    return IntegerModel(nodes, "x", "y")


def _residual_convs() -> IntegerModel:
    """Residual convolutions of every geometry the im2col rows handle: 3x3 stride 2 padded (its residual a strided
    1x1 conv), a 2x3 dilated kernel reading a folded integer pad, a 3x3 with a narrow signed output; then a grouped
    3x3 with a residual (kept as a float conv), flatten and a dequantizing linear."""
    g = torch.Generator().manual_seed(3)
    w = lambda *s: torch.randint(-127, 128, s, generator=g, dtype=torch.int8)  # noqa: E731
    b = lambda o: torch.randint(-3000, 3000, (o,), generator=g, dtype=torch.int32)  # noqa: E731
    sw = lambda o: torch.rand(o, generator=g, dtype=torch.float64) * 0.004 + 0.001  # noqa: E731
    s0, s1, s2, s3, s4 = 0.05, 0.0371, 0.0423, 0.0567, 0.0611
    geo = lambda stride, pad, dil=(1, 1), groups=1: {"stride": list(stride), "padding": list(pad),  # noqa: E731
                                                      "dilation": list(dil), "groups": groups}

    def conv(inputs, out, zp_in, grid, weight, s_in, lo=-128, hi=127, res=None, **g_):
        o = weight.shape[0]
        m, n = _mult(s_in, sw(o), grid.scale)
        attrs = {"input_zero_point": zp_in, "zero_point": grid.zero_point, "lo": lo, "hi": hi, **geo(**g_)}
        tensors = {"weight": weight, "bias": b(o), "m": m, "n": n}
        if res is not None:  # (residual tensor's zero point, its scale)
            attrs["residual_zero_point"] = res[0]
            tensors["m2"] = torch.round(torch.ldexp(torch.full((o,), res[1] / grid.scale, dtype=torch.float64),
                                                    n)).long()
        return Node(make_op("conv2d", attrs, tensors), inputs, out, grid)

    g1, g2, g3, g4 = _grid(s1, -20, False), _grid(s2, -90, False), _grid(s3, 4, False), _grid(s4, -128, False)
    nodes = [
        Node(make_op("quantize", {"scale": s0, "zero_point": 3, "lo": -128, "hi": 127}), ["x"], "q",
             _grid(s0, 3, False)),
        conv(["q"], "c1", 3, g1, w(4, 2, 1, 1), s0, stride=(2, 2), pad=(0, 0)),
        conv(["q", "c1"], "c2", 3, g2, w(4, 2, 3, 3), s0, lo=-90, res=(-20, s1), stride=(2, 2), pad=(1, 1)),
        Node(make_op("pad", {"pad": [1, 1, 1, 1], "value": -90}), ["c2"], "p2", g2),
        conv(["p2", "c2"], "c3", -90, g3, w(4, 4, 2, 3), s2, hi=60, res=(-90, s2), stride=(1, 1), pad=(0, 0),
             dil=(2, 1)),
        conv(["c3", "c2"], "c4", 4, g4, w(4, 4, 3, 3), s3, res=(-90, s2), stride=(1, 1), pad=(1, 1)),
        conv(["c4", "c3"], "c5", -128, g1, w(4, 2, 3, 3), s4, res=(4, s3), stride=(1, 1), pad=(1, 1), groups=2),
        Node(make_op("flatten", {"start_dim": 1, "end_dim": -1}), ["c5"], "fl", g1),
        Node(make_op("linear", {"input_zero_point": -20, "act": "none"},
                     {"weight": w(3, 100), "bias": b(3), "acc_scale": s1 * sw(3)}), ["fl"], "out"),
    ]
    return IntegerModel(nodes, "x", "out")


def test_residual_convs_of_any_geometry_are_integer_gemms(tmp_path):
    """Strided, padded (own and folded pads), dilated and non-square residual convolutions become QGemms on
    im2col rows with the integer model's codes; a grouped one stays a float convolution."""
    im = _residual_convs()
    assert [n.output for n in im.nodes if len(n.inputs) > 1] == ["c2", "c3", "c4", "c5"]
    x = torch.randn((300, 2, 9, 9), generator=torch.Generator().manual_seed(4)) * 2
    r = _run(im, x, (1, 2, 9, 9), tmp_path, "residual_convs")
    assert _expected_kernels(im) == {"QLinearConv": 1, "QGemm": 4, "float conv": 1}
    ops = r["ops"]
    assert ops["QLinearConv"] == 1 and ops["QGemm"] == 4 and ops["Conv"] + ops["FusedConv"] == 1, ops
    pads = [n for n in onnx.load(r["path"]).graph.node if n.op_type == "Pad"]
    assert [n.name.split("_")[0] for n in pads] == ["c2", "c3", "c4"]  # the im2col pads (p2 is folded into c3's)
    for name, d in r["code_diff"].items():
        assert (d <= 1).mean() >= 0.999 and (d == 0).mean() >= 0.99, name
    for name in ("c2", "c3", "c4"):  # exact int32 accumulators: at most a float32 tie flips a code
        assert (r["code_diff"][name] == 0).mean() >= 0.9999, name
    assert (np.abs(r["probe_out"] - r["own"]) / r["lsb"]).max() <= 1


@pytest.mark.parametrize("make,shape", [(_synthetic, (1, 2, 9, 9)), (_linear3d, (1, 3, 8))])
def test_every_op_and_bound_matches(make, shape, tmp_path):
    im = make()
    x = torch.randn((300, *shape[1:]), generator=torch.Generator().manual_seed(2)) * 2
    r = _run(im, x, shape, tmp_path, make.__name__)
    model = onnx.load(r["path"])
    ops = Counter(n.op_type for n in model.graph.node)
    if make is _synthetic:
        # the float pad before the input quantization folds into the grouped conv; the max pool's pad stays
        assert ops["Relu"] == 1 and ops["Clip"] == 2 and ops["Pad"] == 1 and ops["AveragePool"] == 1
        assert r["ops"]["QLinearConv"] == 1 and r["ops"]["QGemm"] == 2  # the 1x1 residual conv is a QGemm
        assert r["ops"]["Conv"] == r["ops"]["FusedConv"] == 0
    else:
        assert ops["MatMul"] == 2 and ops["Relu"] == 2
    for name, d in r["code_diff"].items():
        assert (d <= 1).mean() >= 0.999 and (d == 0).mean() >= 0.99, name
    assert (np.abs(r["probe_out"] - r["own"]) / r["lsb"]).max() <= 1
    # the graph without probes fuses a little differently (a signed input grid): its own 1-LSB flips
    assert r["out"].shape == r["ref"].shape and (np.abs(r["out"] - r["ref"]) / r["lsb"] <= 1).mean() >= 0.99


def test_weight_scales_reproduce_the_multiplier_in_float32():
    s_in, s_out = np.float32(0.0123), np.float32(0.0456)
    M = np.random.default_rng(0).uniform(1e-4, 0.5, 500)
    m, n = fixed_point(torch.from_numpy(M))
    target = torch.ldexp(m.double(), -n.double()).numpy()
    ulp = np.spacing(target.astype(np.float32)).astype(np.float64)
    ort_multiplier = lambda s_w: ((s_in * s_w) / s_out).astype(np.float64)  # QLinearConv / QGemm, float32  # noqa
    err = np.abs(ort_multiplier(fit_weight_scales(s_in, target, s_out)) - target) / ulp
    naive = np.abs(ort_multiplier((target * s_out / s_in).astype(np.float32)) - target) / ulp
    print(f"\nmultiplier exact in float32: fitted {(err == 0).mean():.3f}, nearest s_w {(naive == 0).mean():.3f}")
    assert err.max() <= 1 and (err == 0).mean() >= max(0.7, (naive == 0).mean() + 0.03)  # double rounding


def test_int32_overflowing_bias_of_a_dead_channel_is_replaced(tmp_path):
    """A bias at lowbit's clip (-2^30, see lowbit.nn.exact.BIAS_LIMIT) saturates its channel in onnxruntime too."""
    s0, s1 = 0.05, 0.04
    sw = torch.tensor([0.01, 1e-9], dtype=torch.float64)
    m, n = _mult(s0, sw, s1)
    nodes = [Node(make_op("quantize", {"scale": s0, "zero_point": 0, "lo": -128, "hi": 127}), ["x"], "q",
                  _grid(s0, 0, False)),
             Node(make_op("linear", {"input_zero_point": 0, "zero_point": -128, "lo": -128, "hi": 127},
                          {"weight": torch.tensor([[100, -50, 20], [-3, -2, -1]], dtype=torch.int8),
                           "bias": torch.tensor([10, -(2**30)], dtype=torch.int32), "m": m, "n": n}),
                  ["q"], "h", _grid(s1, -128, False)),
             Node(make_op("dequantize", {"scale": s1, "zero_point": -128}), ["h"], "output")]
    im = IntegerModel(nodes, "x", "output")
    x = torch.randn(200, 3) * 3
    out = _session(export_onnx(im, tmp_path / "m.onnx", (1, 3))).run(["output"], {"input": x.numpy()})[0]
    assert (out[:, 1] == 0).all()  # saturated at the ReLU floor, as the integer arithmetic without wrapping
    np.testing.assert_array_equal(out[:, 0], im(x).numpy()[:, 0])


# ---------------------------------------------------------------- errors


def test_missing_onnx_names_the_install_command(exported, monkeypatch, tmp_path):
    for mod in [m for m in sys.modules if m == "onnx" or m.startswith("onnx.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ConfigError, match="pip install onnx"):
        export_onnx(exported["mlp"]["im"], tmp_path / "m.onnx", (1, 1, 28, 28))
    assert not (tmp_path / "m.onnx").exists()


@dataclass(frozen=True)
class _SoftmaxIR:  # an op type no backend table knows
    kind: ClassVar[str] = "softmax"


class _Softmax(Op):
    pass


def test_unsupported_ops_and_bad_arguments_are_refused(exported, tmp_path):
    im = exported["mlp"]["im"]
    bad = IntegerModel([*im.nodes[:-1], Node(_Softmax(_SoftmaxIR()), [im.nodes[-2].output], "sm")], im.input_name, "sm")
    with pytest.raises(ConfigError, match="'softmax'"):
        export_onnx(bad, tmp_path / "m.onnx", (1, 1, 28, 28))
    for shape in [(1, 28, 28, 2), (28,), (1, 1, 28, -1)]:
        with pytest.raises(ConfigError, match="input_shape|input features|input channels"):
            export_onnx(im, tmp_path / "m.onnx", shape)
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(im, tmp_path / "m.onnx", (1, 1, 28, 28), opset=11)
    flat = exported["cnn"]["im"]
    nodes = [Node(make_op("flatten", {"start_dim": 2, "end_dim": -1}), n.inputs, n.output, n.grid)
             if n.kind == "flatten" else n for n in flat.nodes]
    with pytest.raises(ConfigError, match="start_dim=1, end_dim=-1"):
        export_onnx(IntegerModel(nodes, flat.input_name, flat.output_name), tmp_path / "m.onnx", (1, 1, 28, 28))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


@pytest.mark.parametrize("opset", [17, 21])
def test_int4_weights_at_opset_21(fmnist, tmp_path, opset):
    x, y, calib = fmnist
    im = to_integer(quantize(zoo.pretrained("cnn"), [calib], PTQConfig(int_weight(4))), (calib[:2],))
    path = export_onnx(im, tmp_path / "cnn.onnx", (1, 1, 28, 28), opset=opset)
    model = onnx.load(path)
    kinds = {i.name: i.data_type for i in model.graph.initializer if i.name.endswith("_weight")}
    four = [n for n, dt in kinds.items() if dt == onnx.TensorProto.INT4]
    # first and last layers stay 8-bit (int8); the two 4-bit middle layers are INT4 from opset 21
    assert len(four) == (2 if opset >= 21 else 0) and len(kinds) == 4
    inits = {i.name: i for i in model.graph.initializer}
    layers = [n for n in im.nodes if "weight" in n.op.tensors]
    for name, node in zip(sorted(kinds), sorted(layers, key=lambda n: n.output)):
        codes = onnx.numpy_helper.to_array(inits[name]).astype(np.int8)  # INT4 unpacked
        assert np.array_equal(codes, node.op.tensors["weight"].numpy()), name  # the integer model's codes
    out = _session(model).run(["output"], {"input": x.numpy()})[0]
    ref = im(x).numpy()
    lsb = float(np.abs(ref).max()) / 100
    assert np.mean(np.abs(out - ref) <= lsb) >= 0.999
    assert (out.argmax(1) == y).mean() == pytest.approx((ref.argmax(1) == y).mean(), abs=0.002)


def test_sessions_are_exact_where_int8_kernels_saturate():
    """Weights of +-127 against inputs of 255: on x86 CPUs without VNNI onnxruntime's u8s8 kernels saturate pairs of
    products to int16 (a fifth of these outputs wrong); lowbit's sessions (session.x64quantprecision) stay exact.
    Oracle: PyTorch's float64 convolution of the same integers, requantized as onnxruntime does (float32)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 16
    w = rng.choice(np.array([-127, -100, 100, 127], np.int8), size=(c, c, 3, 3))
    x = rng.integers(200, 256, size=(2, c, 12, 12)).astype(np.uint8)
    s_x, s_w, s_y = np.float32(0.02), np.float32(0.0004), np.float32(3.0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w", w), ("sx", np.array(s_x)), ("zx", np.array(0, np.uint8)), ("sw", np.full(c, s_w, np.float32)),
        ("zw", np.zeros(c, np.int8)), ("sy", np.array(s_y)), ("zy", np.array(128, np.uint8))]]
    node = helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "sat", [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, x.shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    got = session(model).run(None, {"x": x})[0]
    acc = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                                     padding=1).numpy()
    assert np.abs(acc).max() > 2 * 32767  # the sums reach past int16 (pairs can saturate)
    mult = np.float32(np.float32(s_x * s_w) / s_y)
    want = np.clip(np.rint(acc.astype(np.float32) * mult) + 128, 0, 255)
    assert np.array_equal(got, want)


def test_requantized_residuals_run_on_onnxruntimes_own_kernels(fmnist, tmp_path):
    """Residual.REQUANTIZE writes a residual block as quantize_static does: after onnxruntime's optimisation every
    convolution is a QLinearConv and every residual add a QLinearAdd (no im2col, no float Add). Each residual layer,
    fed onnxruntime's own codes of its two inputs, is within the pre-add grid's rounding of the integer model's
    single rounding (oracle: the integer model's op on the same codes); top-1 agrees with the integer model."""
    x, y, calib = fmnist
    im = to_integer(quantize(zoo.pretrained("resnet").eval(), [calib], PTQConfig()), (calib[:2],))
    path = export_onnx(im, tmp_path / "rq.onnx", (1, 1, 28, 28), residual=Residual.REQUANTIZE)
    out = _session(path, tmp_path / "rq.opt.onnx").run(["output"], {"input": x.numpy()})[0]
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "rq.opt.onnx").graph.node)
    residual = [n for n in im.nodes if len(n.inputs) > 1]
    assert len(residual) == 6
    assert ops["QLinearConv"] == sum(n.kind == "conv2d" for n in im.nodes) and ops["QGemm"] == 1, ops
    assert ops["QLinearAdd"] == len(residual), ops
    assert ops["Conv"] == ops["FusedConv"] == ops["Add"] == ops["Concat"] == ops["Slice"] == 0, ops
    stored = {k: torch.from_numpy(v) for k, v in _probe_codes(im, x, (1, 1, 28, 28), Residual.REQUANTIZE)[1].items()}
    grids = {n.output: n.grid for n in im.nodes}
    for node in residual:
        exact = node.op(stored[node.inputs[0]].to(torch.int8), stored[node.inputs[1]].to(torch.int8))
        diff = (stored[node.output] - exact.to(torch.int32)).abs()
        g, r = node.grid, grids[node.inputs[1]]
        pre_step = ((2**g.bits - 1) * g.scale + (2**r.bits - 1) * r.scale) / 255 / g.scale  # in output steps
        assert int(diff.max()) <= 1 + int(pre_step / 2), (node.output, int(diff.max()), pre_step)
        assert 0.2 < float((diff == 0).float().mean()) < 1.0  # rounded twice: not the integer model's codes
    ref = im(x).numpy()
    assert float((out.argmax(1) == ref.argmax(1)).mean()) >= 0.97
    assert abs(float((out.argmax(1) == y).mean()) - float((ref.argmax(1) == y).mean())) <= 0.015


def test_residual_choice_is_checked():
    with pytest.raises(ConfigError, match="residual must be a lowbit.export.onnx_qdq.Residual"):
        to_onnx_model(None, (1, 1, 28, 28), residual="requantize")  # (checked before the model is read)

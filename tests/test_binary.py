"""Binary networks end to end: QAT with QuantSpec(Binary()), conversion, the integer model's XNOR kernel.

Oracles: the converted simulation (the integer model must give identical outputs), the int8 kernels
(the XNOR-popcount path of a layer must give the int8 GEMM's integers), sign() in float64 for the
folded thresholds, and the BatchNorm in eval mode for the fold.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.cost.integer import profile_integer
from lowbit.data import Split
from lowbit.errors import ConfigError
from lowbit.export.onnx_qdq import to_onnx_model
from lowbit.formats import Binary, IntFormat
from lowbit.granularity import PerChannel, PerTensor
from lowbit.integer import ir, load_integer, save_integer, to_integer
from lowbit.integer.backend import Kernels
from lowbit.integer import vnni
from lowbit.integer.ops import build
from lowbit.nn.quantizers import WeightQuantizer
from lowbit.qat import ClipLatent, QATConfig, TrainConfig, convert_qat, fold_trained_bn, prepare_qat, train
from lowbit.spec import QuantSpec, fake_quant, solve_weight, weight_codes
from lowbit.zoo.binary import BinaryCNN, BinaryMLP

W1A1 = QATConfig(weight=QuantSpec(Binary(), PerChannel(0)), act=QuantSpec(Binary()))
W1A2 = QATConfig(weight=QuantSpec(Binary(), PerChannel(0)), act=QuantSpec(IntFormat(2, signed=False)))


def _data(n: int = 256, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = (x[:, 0, 10:18, 10:18].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, :, :14].mean(dim=(1, 2)) > 0).long()
    return Split(x, y)


def _trained(model: nn.Module, cfg: QATConfig, weight_spec_sign: bool = False) -> nn.Module:
    torch.manual_seed(0)
    data = _data()
    gm = prepare_qat(model, cfg, data.x[:64])
    train(gm, data, TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=0.01, augment=False), progress=False)
    return convert_qat(gm)


@pytest.fixture(scope="module")
def cnn_w1a1():
    return _trained(BinaryCNN(channels=8), W1A1)


@pytest.fixture(scope="module")
def mlp_w1a1():
    return _trained(BinaryMLP(hidden=96, depth=3), W1A1)


def _kinds(im) -> list[tuple[str, str, int, str]]:
    return [(n.kind, n.op.ir.weight_codes.value, n.op.ir.input_bits, type(n.op.ir.out).__name__)
            for n in im.nodes if isinstance(n.op.ir, ir.LAYERS)]


@pytest.mark.parametrize("name", ["cnn_w1a1", "mlp_w1a1"])
def test_binary_integer_model_equals_the_converted_simulation(name, request):
    gm = request.getfixturevalue(name)
    x = _data(200, seed=1).x
    with torch.no_grad():
        ref = gm(x)
    im = to_integer(gm, (x[:1],))
    kinds = _kinds(im)
    # first layer 8-bit with sign outputs, hidden layers XNOR with sign outputs, last hidden 8-bit out, 8-bit classifier
    assert kinds[0][1:] == ("int", 8, "Binarized")
    assert ("binary", 1, "Binarized") in [k[1:] for k in kinds]
    assert kinds[-2][1:] == ("binary", 1, "Requantized") and kinds[-1][1:] == ("int", 8, "Dequantized")
    for kernels in (Kernels.VNNI, Kernels.REFERENCE, Kernels.PLAN):
        y = im.with_kernels(kernels)(x)
        assert torch.equal(y, ref), kernels


def test_binary_cnn_pads_binary_inputs_with_minus_one(cnn_w1a1):
    pads = {n: m.pad_value for n, m in cnn_w1a1.named_modules() if hasattr(m, "pad_value")}
    assert sorted(pads.values()) == [-1.0, -1.0, 0.0]  # the first conv sees the 8-bit image
    im = to_integer(cnn_w1a1, (torch.zeros(1, 1, 28, 28),))
    convs = [n.op.ir for n in im.nodes if isinstance(n.op.ir, ir.Conv2d)]
    assert [c.pad_value for c in convs] == [None, -1, -1]


def test_w1a2_lowers_and_matches_its_simulation():
    gm = _trained(BinaryCNN(channels=8), W1A2)
    x = _data(100, seed=2).x
    with torch.no_grad():
        ref = gm(x)
    im = to_integer(gm, (x[:1],))
    assert [k[1:3] for k in _kinds(im)][1:3] == [("binary", 2), ("binary", 2)]
    assert torch.equal(im(x), ref)


def test_binary_weights_saved_one_bit_each(tmp_path, mlp_w1a1):
    im = to_integer(mlp_w1a1, (torch.zeros(1, 1, 28, 28),))
    path = save_integer(im, tmp_path / "b.safetensors")
    back = load_integer(path)
    x = _data(50, seed=3).x
    assert torch.equal(back(x), im(x))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        for i, node in enumerate(im.nodes):
            if isinstance(node.op.ir, ir.LAYERS) and node.op.ir.weight_codes is ir.WeightCodes.BINARY:
                stored = f.get_tensor(f"{i}.weight")
                assert stored.dtype == torch.uint8 and stored.numel() == math.ceil(node.op.tensors["weight"].numel() / 8)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 70), o=st.integers(1, 70), h=st.integers(3, 9), k=st.sampled_from([1, 2, 3]),
       stride=st.integers(1, 2), pad=st.integers(0, 2), binarized=st.booleans(), seed=st.integers(0, 10_000))
def test_xnor_conv_equals_the_int8_conv(n, c, o, h, k, stride, pad, binarized, seed):
    """The XNOR-popcount conv (input_bits 1) gives the int8 kernel's integers on +-1 inputs padded with -1."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 2, (n, c, h, h), generator=g) * 2 - 1).to(torch.int8)
    w = (torch.randint(0, 2, (o, c, k, k), generator=g) * 2 - 1).to(torch.int8)
    bias = torch.randint(-c * k * k, c * k * k + 1, (o,), generator=g).to(torch.int32)
    if binarized:
        out, t = ir.Binarized(), {}
    else:
        out, t = ir.Requantized(0, -128, 127), {"m": torch.full((o,), 1 << 20, dtype=torch.int64),
                                                  "n": torch.full((o,), 24, dtype=torch.int64)}
    geo = ((stride, stride), (pad, pad), (1, 1), 1, ir.WeightCodes.BINARY)
    xnor = build(ir.Conv2d(0, 1, out, *geo, 1, -1), {"weight": w, "bias": bias, **t})
    int8 = build(ir.Conv2d(0, 1, out, *geo, 8, -1), {"weight": w, "bias": bias, **t})
    assert xnor.ir.xnor and not int8.ir.xnor
    for kernels in (Kernels.VNNI, Kernels.REFERENCE):
        assert torch.equal(xnor(x, kernels=kernels), int8(x, kernels=Kernels.REFERENCE))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 200), o=st.integers(1, 130), seed=st.integers(0, 10_000))
def test_xnor_linear_sign_is_sign_of_acc_plus_bias(m, k, o, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 2, (m, k), generator=g) * 2 - 1).to(torch.int8)
    w = (torch.randint(0, 2, (o, k), generator=g) * 2 - 1).to(torch.int8)
    bias = torch.randint(-k - 2, k + 3, (o,), generator=g).to(torch.int32)
    op = build(ir.Linear(0, 1, ir.Binarized(), ir.WeightCodes.BINARY, 1), {"weight": w, "bias": bias})
    acc = x.double() @ w.double().T + bias.double()
    expect = torch.where(acc >= 0, 1, -1).to(torch.int8)
    for kernels in (Kernels.VNNI, Kernels.REFERENCE):
        assert torch.equal(op(x, kernels=kernels), expect)


def test_binary_weight_spec_codes_and_scales():
    w = torch.tensor([[0.5, -0.25, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    xnor, sign = QuantSpec(Binary(), PerChannel(0)), QuantSpec(Binary(), PerChannel(0), binary="sign")
    assert torch.equal(weight_codes(w, xnor, solve_weight(w, xnor)), torch.tensor([[1.0, -1, 1, -1], [1, 1, 1, 1]]))
    assert torch.allclose(solve_weight(w, xnor).scale, torch.tensor([0.4375, 1.0]))
    assert torch.equal(solve_weight(w, sign).scale, torch.ones(2))
    assert torch.equal(fake_quant(w[:1], sign), torch.tensor([[1.0, -1, 1, -1]]))
    with pytest.raises(ConfigError, match="binary='sign' applies to Binary"):
        QuantSpec(IntFormat(4), binary="sign")


def test_binary_ste_cancels_outside_one_and_clip_hook():
    q = WeightQuantizer(QuantSpec(Binary(), PerChannel(0), binary="sign"))
    q.mode = "live"
    w = torch.tensor([[0.5, -2.0, 1.5, -0.3]], requires_grad=True)
    q(w).sum().backward()
    assert torch.equal(w.grad, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    gm = prepare_qat(BinaryMLP(hidden=16, depth=2), W1A1, torch.randn(8, 1, 28, 28))
    layer = gm.get_submodule("hidden.3")
    with torch.no_grad():
        layer.weight.mul_(10)
    ClipLatent()(gm, 1)
    assert float(layer.weight.detach().abs().max()) == 1.0


def test_fold_trained_bn_keeps_the_outputs_of_binary_layers():
    """Folding BatchNorm (negative gammas included) into signs and gains leaves the eval-mode outputs."""
    torch.manual_seed(0)
    gm = prepare_qat(BinaryMLP(hidden=32, depth=2), W1A1, torch.randn(64, 1, 28, 28))
    for _, m in gm.named_modules():
        if isinstance(m, nn.BatchNorm1d):
            with torch.no_grad():
                m.weight.uniform_(-2, 2)
                m.running_mean.uniform_(-3, 3)
                m.running_var.uniform_(0.5, 4)
    gm.eval()
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        before = gm(x)
        folded = fold_trained_bn(gm)
        after = gm(x)
    assert folded == ["hidden.0", "hidden.3"]
    assert torch.allclose(before, after, atol=1e-4)


def test_binary_cost_counts_one_bit_ops(mlp_w1a1):
    im = to_integer(mlp_w1a1, (torch.zeros(1, 1, 28, 28),))
    rows = {r.name: r for r in profile_integer(im)}
    for node in im.nodes:
        if isinstance(node.op.ir, ir.LAYERS) and node.op.ir.xnor:
            assert rows[node.output].bops == rows[node.output].macs > 0
            assert rows[node.output].weight_bytes >= node.op.tensors["weight"].numel() / 8


def test_w1a1_refuses_onnx_with_a_reason(mlp_w1a1):
    im = to_integer(mlp_w1a1, (torch.zeros(1, 1, 28, 28),))
    with pytest.raises(ConfigError, match="ONNX has no sign activation"):
        to_onnx_model(im, (1, 1, 28, 28))


def test_binary_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"QuantSpec\(Binary\(\), PerChannel\(0\)\)"):
        QATConfig(weight=QuantSpec(Binary(), PerTensor()), act=QuantSpec(Binary()))

    class ReluNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(784, 16), nn.Linear(16, 16), nn.Linear(16, 10)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x.flatten(1))))))

    with pytest.raises(ConfigError, match=r"binary activation after ReLU .*Hardtanh"):
        prepare_qat(ReluNet(), W1A1, torch.randn(8, 1, 28, 28))


# ---------------------------------------------------------------- bit-serial: few-bit inputs on the XNOR engine

W2A2 = QATConfig(weight=QuantSpec(IntFormat(2), PerChannel(0)), act=QuantSpec(IntFormat(2, signed=False)))
_CODES = {"binary": (ir.WeightCodes.BINARY, 1), "ternary": (ir.WeightCodes.TERNARY, 2), "int2": (ir.WeightCodes.INT, 2)}


def _weight(kind: str, shape, g) -> torch.Tensor:
    if kind == "binary":
        return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(torch.int8)
    lo = -2 if kind == "int2" else -1
    return torch.randint(lo, 2, shape, generator=g).to(torch.int8)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["binary", "ternary", "int2"]), bits=st.sampled_from([2, 4]), signed=st.booleans(),
       m=st.integers(1, 9), k=st.integers(1, 150), o=st.integers(1, 70), seed=st.integers(0, 10_000))
def test_bitserial_reference_is_the_integer_matmul(kind, bits, signed, m, k, o, seed):
    from lowbit.bitwise.bitserial import bitserial_reference

    g = torch.Generator().manual_seed(seed)
    lo = ir.input_low(bits, signed)
    x = torch.randint(lo, lo + (1 << bits), (m, k), generator=g).to(torch.int8)
    w = _weight(kind, (o, k), g)
    assert torch.equal(bitserial_reference(x, lo, bits, w, kind), x.long() @ w.long().T)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["binary", "ternary", "int2"]), bits=st.sampled_from([2, 4]), signed=st.booleans(),
       conv=st.booleans(), n=st.integers(1, 3), c=st.integers(1, 40), o=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_bitserial_layers_give_the_int8_kernels_codes(kind, bits, signed, conv, n, c, o, seed):
    """Linear / Conv2d with few-bit inputs and binary, ternary or 2-bit weights: the bit-serial XNOR path (C
    kernels) equals the PyTorch int8 reference, and so does the compiled plan's step."""
    codes, wbits = _CODES[kind]
    g = torch.Generator().manual_seed(seed)
    lo = ir.input_low(bits, signed)
    izp = lo + int(torch.randint(0, 1 << bits, (), generator=g))
    t = {"bias": torch.randint(-300, 300, (o,), generator=g).to(torch.int32),
         "m": torch.randint(1, 1 << 20, (o,), generator=g).to(torch.int64), "n": torch.full((o,), 22, dtype=torch.int64)}
    out = ir.Requantized(0, -128, 127)
    if conv:
        x = torch.randint(lo, lo + (1 << bits), (n, c, 5, 6), generator=g).to(torch.int8)
        op = build(ir.Conv2d(izp, wbits, out, (1, 2), (1, 0), (1, 1), 1, codes, bits, None, signed),
                   {"weight": _weight(kind, (o, c, 3, 2), g), **t})
    else:
        x = torch.randint(lo, lo + (1 << bits), (n, c), generator=g).to(torch.int8)
        op = build(ir.Linear(izp, wbits, out, codes, bits, signed), {"weight": _weight(kind, (o, c), g), **t})
    if op.ir.bitserial is None:  # more than 4 binary GEMMs: the int8 kernels run it
        return
    assert torch.equal(op(x, kernels=Kernels.VNNI), op(x, kernels=Kernels.REFERENCE))


@pytest.mark.parametrize("cfg", [W1A2, W2A2], ids=["w1a2", "w2a2"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_w1a2_and_w2a2_run_bit_serial_and_match(cfg, model):
    net = BinaryMLP(hidden=96, depth=3) if model == "mlp" else BinaryCNN(channels=8)
    gm = _trained(net, cfg)
    x = _data(64, seed=4).x
    with torch.no_grad():
        ref = gm(x)
    im = to_integer(gm, (x[:1],))
    kinds = [n.op.ir.bitserial for n in im.nodes if isinstance(n.op.ir, ir.LAYERS)]
    assert kinds[1:3] == (["binary"] * 2 if cfg is W1A2 else ["int2"] * 2)
    if vnni.available():  # the whole-model plan needs the VNNI GEMM; elsewhere PLAN runs op by op
        assert im.plans.get(im, tuple(x.shape), torch.get_num_threads()) is not None  # the plan runs them
    for kernels in (Kernels.PLAN, Kernels.VNNI, Kernels.REFERENCE):
        assert torch.equal(im.with_kernels(kernels)(x), ref), kernels


def test_cost_profile_prices_binary_layers(mlp_w1a1):
    from lowbit.cost.energy import EnergyTable, mac_energy, requant_energy
    from lowbit.cost.profile import profile

    rows = {r.name: r for r in profile(mlp_w1a1, (torch.zeros(1, 1, 28, 28),))}
    hidden = rows["hidden.3"]
    assert (hidden.weight_bits, hidden.act_bits, hidden.out_bits, hidden.requant) == (1, 1, 1, "threshold")
    assert hidden.bops == hidden.macs
    t = EnergyTable.load()
    e = t.energy
    assert mac_energy(1, 1, t) == pytest.approx(e["int8_mult"] / 64 + e["int32_add"] / 32)
    assert mac_energy(8, 8, t) / mac_energy(1, 1, t) > 40
    assert requant_energy("threshold", t) == e["int32_add"]


def test_grouped_binary_conv_warns_and_stays_exact():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardtanh())
            self.b = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2, bias=False), nn.BatchNorm2d(8), nn.Hardtanh())
            self.c = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Hardtanh())
            self.fc = nn.Linear(8 * 24 * 24, 4)

        def forward(self, x):
            return self.fc(self.c(self.b(self.a(x))).flatten(1))

    gm = _trained(Grouped(), W1A1)
    x = _data(16, seed=6).x
    with pytest.warns(UserWarning, match=r"b\.0 \(binary, groups=2\) runs on the int8 kernels"):
        im = to_integer(gm, (x[:1],))
    with torch.no_grad():
        assert torch.equal(im(x), gm(x))


# ---------------------------------------------------------------- ternary weights on binary inputs


@settings(max_examples=25, deadline=None)
@given(conv=st.booleans(), binarized=st.booleans(), n=st.integers(1, 3), c=st.integers(1, 70), o=st.integers(1, 70),
       seed=st.integers(0, 10_000))
def test_ternary_weights_on_binary_inputs_run_the_ternary_kernel(conv, binarized, n, c, o, seed):
    """Ternary weights x signs: the two-plane popcount kernel gives the int8 reference's codes (-1 padding)."""
    g = torch.Generator().manual_seed(seed)
    t = {"bias": torch.randint(-60, 60, (o,), generator=g).to(torch.int32)}
    out = ir.Binarized() if binarized else ir.Requantized(0, -128, 127)
    if not binarized:
        t.update(m=torch.full((o,), 1 << 20, dtype=torch.int64), n=torch.full((o,), 22, dtype=torch.int64))
    if conv:
        x = (torch.randint(0, 2, (n, c, 5, 6), generator=g) * 2 - 1).to(torch.int8)
        w = torch.randint(-1, 2, (o, c, 3, 3), generator=g).to(torch.int8)
        op = build(ir.Conv2d(0, 2, out, (1, 1), (1, 1), (1, 1), 1, ir.WeightCodes.TERNARY, 1, -1, True), {"weight": w, **t})
    else:
        x = (torch.randint(0, 2, (n, c), generator=g) * 2 - 1).to(torch.int8)
        w = torch.randint(-1, 2, (o, c), generator=g).to(torch.int8)
        op = build(ir.Linear(0, 2, out, ir.WeightCodes.TERNARY, 1, True), {"weight": w, **t})
    assert op.ir.ternary_popcount
    assert torch.equal(op(x, kernels=Kernels.VNNI), op(x, kernels=Kernels.REFERENCE))


def test_ternary_weight_binary_act_model_lowers_to_the_ternary_kernel_and_plans():
    from lowbit.formats import Ternary

    cfg = QATConfig(weight=QuantSpec(Ternary(), PerChannel(0)), act=QuantSpec(Binary()), bn_freeze_steps=10**9)
    for net in (BinaryMLP(hidden=96, depth=3), BinaryCNN(channels=8)):
        gm = _trained(net, cfg)
        x = _data(64, seed=7).x
        with torch.no_grad():
            ref = gm(x)
        im = to_integer(gm, (x[:1],))
        assert [n.op.ir.ternary_popcount for n in im.nodes if isinstance(n.op.ir, ir.LAYERS)][1:3] == [True, True]
        if vnni.available():  # (the whole-model plan needs the VNNI GEMM)
            assert im.plans.get(im, tuple(x.shape), torch.get_num_threads()) is not None
        for kernels in (Kernels.PLAN, Kernels.VNNI, Kernels.REFERENCE):
            assert torch.equal(im.with_kernels(kernels)(x), ref), kernels


# ---------------------------------------------------------------- stochastic ensembles (Vogel et al. 2016)


def test_stochastic_signs_follow_hard_sigmoid_and_the_generator():
    from lowbit.nn.ensemble import stochastic_signs

    w = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]).repeat(20000, 1)
    for bits in (None, 3):
        s = stochastic_signs(w, torch.Generator().manual_seed(0), bits)
        p_plus = (s == 1).float().mean(dim=0)
        assert torch.allclose(p_plus, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), atol=0.02), bits
        assert torch.equal(s, stochastic_signs(w, torch.Generator().manual_seed(0), bits))
    state = torch.random.get_rng_state()
    stochastic_signs(w, torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.random.get_rng_state())  # never the global RNG


def test_ensemble_members_are_bitwise_nets_that_lower_exactly(mlp_w1a1):
    from lowbit.nn.ensemble import StochasticEnsemble

    ens = StochasticEnsemble(mlp_w1a1, members=3, seed=5, rng_bits=4)
    x = _data(32, seed=8).x
    post = ens(x)
    assert torch.allclose(post.sum(dim=1), torch.ones(32))
    with torch.no_grad():
        outs = [m(x) for m in ens.members]
        assert not torch.equal(outs[0], outs[1])  # different samples
        assert torch.equal(to_integer(ens.members[0], (x[:1],))(x), outs[0])
    again = StochasticEnsemble(mlp_w1a1, members=3, seed=5, rng_bits=4)
    assert torch.equal(again(x), post)


@pytest.mark.parametrize("kw, match", [({"members": 0}, "members = 0"), ({"members": -2}, "members = -2"),
                                       ({"members": 2, "rng_bits": 0}, "rng_bits = 0")])
def test_ensemble_bad_sizes_are_clear_errors(mlp_w1a1, kw, match):
    from lowbit.nn.ensemble import StochasticEnsemble

    with pytest.raises(ConfigError, match=match):
        StochasticEnsemble(mlp_w1a1, **kw)


# ---------------------------------------------------------------- stochastic binary weights in training


def test_stochastic_weights_draw_signs_with_hard_sigmoid_probability_while_training():
    wq = WeightQuantizer(QuantSpec(Binary(), PerChannel(0), binary="sign"))
    wq.mode, wq.generator = "live", torch.Generator().manual_seed(3)
    w = torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5]).repeat(20000, 1).requires_grad_(True)
    s = wq.train()(w)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    p_plus = (s == 1).float().mean(dim=0)
    assert torch.allclose(p_plus, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), atol=0.02)
    s.sum().backward()  # hard-tanh straight-through: gradient 1 inside [-1, 1], cancelled outside
    assert torch.equal(w.grad[0], torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    assert torch.equal(wq.eval()(w), torch.where(w >= 0, 1.0, -1.0))  # evaluation: the deterministic sign


def test_stochastic_weights_training_is_reproducible_and_converts_to_deterministic_signs():
    cfg = QATConfig(weight=QuantSpec(Binary(), PerChannel(0)), act=QuantSpec(Binary()), stochastic_weights=True)
    data = _data(128)

    def run():
        torch.manual_seed(0)
        gm = prepare_qat(BinaryMLP(hidden=32, depth=2), cfg, data.x[:64])
        train(gm, data, TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=0.01, augment=False, seed=4),
              progress=False)
        return gm

    a, b = run(), run()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    x = data.x[:16]
    with torch.no_grad():
        assert not torch.equal(a.train()(x), a(x))  # training forwards draw new signs each time
    convert_qat(a)
    with torch.no_grad():
        assert torch.equal(a(x), a(x))  # no draws left after conversion
        assert torch.equal(to_integer(a, (x[:1],))(x), a(x))


@pytest.mark.parametrize("kw, match", [({"stochastic_weights": 1}, "stochastic_weights must be True or False"),
                                       ({"stochastic_weights": True, "weight": QuantSpec(IntFormat(2), PerChannel(0))},
                                        "applies to Binary")])
def test_stochastic_weights_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        QATConfig(**{"act": QuantSpec(Binary()), "weight": QuantSpec(Binary(), PerChannel(0)), **kw})

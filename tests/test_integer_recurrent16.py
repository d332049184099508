"""The integer LSTM / GRU on a 16-bit input grid (int16 codes into layer 0): the integer model equals the PTQ
simulation bit for bit (C kernel and PyTorch reference), the int32 accumulator's bound, the default staying int8,
the refusal of other widths, the cost of the wider projection and auto_mixed choosing it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit import ptq
from lowbit.cost.integer import profile_integer
from lowbit.cost.profile import profile
from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import IntFormat
from lowbit.functional.fixed_rnn import ACC_MAX, W_MAX, max_input16_features, max_input_delta
from lowbit.integer import ir, to_integer
from lowbit.integer.backend import Kernels
from lowbit.integer.io import load_integer, save_integer
from lowbit.integer.ops import build
from lowbit.mixed import auto_mixed
from lowbit.native import cext
from lowbit.nn.qparams import QParams
from lowbit.nn.recurrent import _matmul, quantize_recurrent, run_recurrent
from lowbit.ptq import LayerRule, PTQConfig, uint_act
from lowbit.utils.tensorfile import load_tensors, save_tensors
from tests._integer_checks import check_exact

WIDE = PTQConfig(rules=(LayerRule("rnn", act=uint_act(16)),))  # the one line that asks for the 16-bit input


class _Encoder(nn.Module):
    """Resemblyzer's shape, small: a recurrent layer on (N, T, I), the last layer's h, a linear head; the input
    weights are large (x10), so that the small input values matter."""

    def __init__(self, cls=nn.LSTM, i=12, h=16, layers=2, batch_first=True):
        super().__init__()
        self.rnn = cls(i, h, num_layers=layers, batch_first=batch_first)
        with torch.no_grad():
            self.rnn.weight_ih_l0.mul_(10)
        self.fc = nn.Linear(h, 6)
        self.lstm, self.batch_first = cls is nn.LSTM, batch_first

    def forward(self, x):
        _, state = self.rnn(x)
        h_n = state[0] if self.lstm else state
        return self.fc(h_n[-1])


def _power(*shape, seed=0):
    """Linear-power-like features: most small (|N(0, 0.05^2)|), one in 200 a spike of 20 that sets the range (an
    8-bit per-tensor grid then rounds the rest to 0 or 0.08)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).abs() * 0.05
    return torch.where(torch.rand(*shape, generator=g) < 0.005, torch.full_like(x, 20.0), x)



def _node(im, kind):
    return next(n for n in im.nodes if n.kind == kind)


# ---------------------------------------------------------------- integer model == simulation


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("layers,batch_first", [(1, True), (2, False)])
def test_int16_input_equals_simulation(cls, layers, batch_first):
    torch.manual_seed(11)
    net = _Encoder(cls, layers=layers, batch_first=batch_first).eval()
    shape = (3, 15, 12) if batch_first else (15, 3, 12)
    calib, x = _power(*shape, seed=1), _power(*shape, seed=2)
    q = ptq.quantize(net, [calib], WIDE, example_inputs=(calib[:1],)).eval()
    im = to_integer(q, (x[:1],))
    quant, rec = _node(im, "quantize"), _node(im, "recurrent")
    assert quant.op.ir.bits == 16 and rec.op.ir.input_bits == 16
    assert im.run(x)[quant.output].dtype == torch.int16
    ys = check_exact(q, im, x)
    with torch.no_grad():  # and the wider grid is what buys the fidelity on such inputs
        yf = net(x)
        y8 = ptq.quantize(net, [calib], example_inputs=(calib[:1],)).eval()(x)
    cos = [float(nn.functional.cosine_similarity(y.flatten(), yf.flatten(), dim=0)) for y in (ys, y8)]
    assert cos[0] > 0.999 and cos[0] > cos[1], cos


def test_int16_file_round_trip_and_refusals(tmp_path):
    torch.manual_seed(12)
    net = _Encoder().eval()
    x = _power(2, 9, 12, seed=3)
    q = ptq.quantize(net, [x], WIDE, example_inputs=(x[:1],)).eval()
    im = to_integer(q, (x[:1],))
    path = save_integer(im, tmp_path / "enc.safetensors")
    back = load_integer(path)
    assert torch.equal(back(x), check_exact(q, im, x))
    tensors, meta = load_tensors(path)
    i = next(k for k, n in enumerate(im.nodes) if n.kind == "recurrent")
    tensors[f"{i}.w_ih_0"][0, 0] = -128  # int16 inputs take narrow weights only (the accumulator's bound)
    save_tensors(tmp_path / "bad.safetensors", tensors, meta, checksum=True)
    with pytest.raises(CheckpointError, match="w_ih_0.*-127..127"):
        load_integer(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- property: C kernel == reference == oracle


@settings(max_examples=30, deadline=None)
@given(cell=st.sampled_from([nn.LSTM, nn.GRU]), i=st.integers(1, 11), h=st.integers(1, 9), layers=st.integers(1, 2),
       steps=st.integers(1, 5), batch=st.integers(1, 3), batch_first=st.booleans(), signed=st.booleans(),
       seed=st.integers(0, 2 ** 16), emit=st.sampled_from(list(ir.Emit)))
def test_property_int16_kernels_agree(cell, i, h, layers, steps, batch, batch_first, signed, seed, emit):
    """Random layers and int16 codes over the whole range: the input projection equals the int64 oracle
    ``(x - z) @ w.T``, and the op on the C kernel and on the PyTorch reference gives the simulation's codes."""
    g = torch.Generator().manual_seed(seed)
    layer = cell(i, h, num_layers=layers, batch_first=batch_first)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (4.0 if seed % 5 == 0 else 0.5))
    fmt = IntFormat(16, signed=signed)
    z = 0 if signed else seed % 65536
    q = quantize_recurrent(layer, QParams(1e-4 * (1 + seed % 7), z, fmt))
    assert q.input_bits == 16 and q.input_zero_point == z - (0 if signed else 32768)
    shape = (batch, steps, i) if batch_first else (steps, batch, i)
    x = torch.randint(-32768, 32768, shape, generator=g, dtype=torch.int16)
    w = q.layers[0].w_ih
    oracle = (x.long().unsqueeze(-2) - q.input_zero_point).mul(w.long()).sum(-1)
    assert torch.equal(_matmul(x, q.input_zero_point, w, 16), oracle)
    out, h_n, c_n = run_recurrent(q, x)
    if emit is ir.Emit.C and cell is nn.GRU:
        emit = ir.Emit.H
    tensors = {n: t for k, lq in enumerate(q.layers) for n, t in lq.tensors(k).items()}
    op = build(ir.Recurrent(ir.Cell(q.cell), layers, batch_first, q.input_zero_point, emit, 16),
               {**tensors, "sigmoid": q.sigmoid, "tanh": q.tanh})
    want = {ir.Emit.OUTPUT: out.to(torch.int8), ir.Emit.H: h_n[-1].to(torch.int8)}.get(emit)
    if want is None:
        want = c_n[-1].to(torch.float32) / 2 ** 11
    for k in (Kernels.VNNI, Kernels.REFERENCE):
        assert torch.equal(op(x, kernels=k), want), k


# ---------------------------------------------------------------- the int32 accumulator's bound


def test_bound_formula():
    """``I * 127 * D <= 2^31 - 1`` with ``D = max |x - z|`` over int16 codes: 258 features for a zero point at an end
    (an unsigned grid of a non-negative input), 516 centred; the next feature could overflow."""
    for zp, d, most in ((-32768, 65535, 258), (32767, 65535, 258), (0, 32768, 516)):
        assert max_input_delta(zp, 16) == d and max_input16_features(zp) == most
        assert most * W_MAX * d <= ACC_MAX < (most + 1) * W_MAX * d


def _edge_layer(cls, i):
    """A layer whose input rows all quantize to +127 (equal weights), scaled so that the input projection of the
    largest codes (an accumulator of ``i * 127 * 65535``) stays inside the gate tables: an accumulator that wrapped
    past 2^31 would flip the gates' sign and change every h."""
    layer = cls(i, 4, batch_first=True)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.fill_(3e-5 if name == "weight_ih_l0" else 0.01)
    return layer


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_accumulator_at_the_bound(cls):
    grid = QParams(1e-3, 0, IntFormat(16, signed=False))  # stored zero point -32768: D = 65535
    most = max_input16_features(-32768)
    q = quantize_recurrent(_edge_layer(cls, most), grid, "enc")
    x = torch.full((2, 3, most), 32767, dtype=torch.int16)  # x - z = 65535 everywhere
    acc = _matmul(x, q.input_zero_point, q.layers[0].w_ih, 16)
    assert int(acc.max()) == most * 127 * 65535 > 2 ** 31 - 2 ** 20  # near int32's end, and exact
    out, h_n, _ = run_recurrent(q, x)
    assert int(h_n.abs().max()) > 0
    op = build(ir.Recurrent(ir.Cell(q.cell), 1, True, q.input_zero_point, ir.Emit.OUTPUT, 16),
               {**q.layers[0].tensors(0), "sigmoid": q.sigmoid, "tanh": q.tanh})
    for k in (Kernels.VNNI, Kernels.REFERENCE):
        assert torch.equal(op(x, kernels=k), out.to(torch.int8)), k
    with pytest.raises(ConfigError, match=rf"enc: a 16-bit input of {most + 1} features.*at most {most}.*8 bits"):
        quantize_recurrent(_edge_layer(cls, most + 1), grid, "enc")
    centred = QParams(1e-3, 32768, IntFormat(16, signed=False))  # D = 32768: twice the features
    assert quantize_recurrent(_edge_layer(cls, most + 1), centred).input_bits == 16


def test_guard_refuses_past_the_bound():
    """The C entry point is never called with more int16 features than the bound allows (nor int8 x for 16)."""
    if cext.library() is None:
        pytest.skip("no C compiler")
    q = quantize_recurrent(_edge_layer(nn.GRU, 300), QParams(1e-3, 32768, IntFormat(16, signed=False)))
    x = torch.zeros(1, 2, 300, dtype=torch.int16)
    cext.rnn_layer(q, q.layers[0], x, 0, 16)  # centred: 516 allowed
    with pytest.raises(ConfigError, match="I = 300"):
        cext.rnn_layer(q, q.layers[0], x, -32768, 16)


# ---------------------------------------------------------------- default, refusals, cost


def test_default_stays_int8():
    """Without a rule the input grid is 8 bits, the codes int8, and the file's attributes those of before."""
    torch.manual_seed(13)
    net = _Encoder().eval()
    x = _power(2, 7, 12, seed=4)
    im = to_integer(ptq.quantize(net, [x], example_inputs=(x[:1],)).eval(), (x[:1],))
    quant, rec = _node(im, "quantize"), _node(im, "recurrent")
    assert quant.op.ir.bits == 8 and rec.op.ir.input_bits == 8
    assert "bits" not in quant.op.attrs and "input_bits" not in rec.op.attrs
    assert im.run(x)[quant.output].dtype == torch.int8


@pytest.mark.parametrize("bits", [12, 10])
def test_unsupported_width_is_refused(bits):
    net = _Encoder().eval()
    x = _power(2, 7, 12, seed=5)
    config = PTQConfig(rules=(LayerRule("rnn", act=uint_act(bits)),))
    with pytest.raises(ConfigError, match=rf"rnn: .*2\.\.8 bits .*16 bits.*has {bits} bits"):
        ptq.quantize(net, [x], config, example_inputs=(x[:1],))


def test_cost_counts_16x8_for_the_input_projection():
    torch.manual_seed(14)
    net = _Encoder(nn.LSTM, i=12, h=16, layers=2).eval()
    x = _power(1, 10, 12, seed=6)
    q8 = ptq.quantize(net, [x], example_inputs=(x[:1],)).eval()
    q16 = ptq.quantize(net, [x], WIDE, example_inputs=(x[:1],)).eval()
    macs = 10 * 4 * 16 * (12 + 16 + 16 + 16)  # T G H sum_k (I_k + H)
    extra = 10 * 4 * 16 * 12 * 8 * 8  # layer 0's input projection: 8 x 16 instead of 8 x 8
    rows = [{r.kind: r for r in profile_integer(to_integer(q, (x,)))}["recurrent"] for q in (q8, q16)]
    assert rows[0].macs == rows[1].macs == macs
    assert rows[0].bops == 64 * macs and rows[1].bops == 64 * macs + extra
    sim = [next(r for r in profile(q, (x,)) if r.name == "rnn") for q in (q8, q16)]
    assert sim[0].bops == 64 * macs and sim[1].bops == 64 * macs + extra and sim[1].act_bits == 16


# ---------------------------------------------------------------- auto_mixed


def test_auto_mixed_promotes_the_recurrent_input():
    """On linear-power inputs the 8-bit input grid is the recurrent layer's main error: auto_mixed measures it by
    quantizing again with the 16-bit input and promotes it within the budget; the result lowers to int16 codes."""
    torch.manual_seed(15)
    net = _Encoder(nn.LSTM, i=12, h=16, layers=2).eval()
    calib = [_power(4, 20, 12, seed=s) for s in range(2)]
    res = auto_mixed(net, calib, budget=0.5)
    assert "rnn" in {r.pattern for r in res.rules}
    row = next(s for s in res.sensitivities if s.name == "rnn")
    assert row.gain > 0 and row.extra_bops == 20 * 4 * 16 * 12 * 8 * 8
    assert res.error_after < res.error_before and res.bops_ratio <= 1.5
    im = to_integer(res.model, (calib[0][:1],))
    assert _node(im, "recurrent").op.ir.input_bits == 16
    check_exact(res.model, im, calib[1])
    assert not auto_mixed(net, calib, budget=0.0).rules  # no budget, no promotion


def test_auto_mixed_for_the_integer_model_promotes_only_what_lowers():
    """integer=True weighs only the recurrent input (the int8 integer model's one 16-bit activation): with a
    budget that would also buy the head's 16-bit activations, the choice is the recurrent input alone, and the
    model lowers bit for bit."""
    torch.manual_seed(15)
    net = _Encoder(nn.LSTM, i=12, h=16, layers=2).eval()
    calib = [_power(4, 20, 12, seed=s) for s in range(2)]
    assert {r.pattern for r in auto_mixed(net, calib, budget=5.0).rules} == {"rnn", "fc"}
    res = auto_mixed(net, calib, budget=5.0, integer=True)
    assert {r.pattern for r in res.rules} == {"rnn"} and {s.name for s in res.sensitivities} == {"rnn"}
    im = to_integer(res.model, (calib[0][:1],))
    assert _node(im, "recurrent").op.ir.input_bits == 16
    check_exact(res.model, im, calib[1])

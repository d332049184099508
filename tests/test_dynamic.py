"""Dynamic quantization (int8 weights per channel, activations per row at run time).

Oracles: float64 integer products (exact), PyTorch's nn.Linear/nn.LSTM/nn.GRU (closeness), PyTorch's own
torch.ao.quantization.quantize_dynamic (lowbit's per-row grids must not lose to its per-tensor ones)."""

import dataclasses
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lowbit.dynamic import DynamicGRU, DynamicGRUCell, DynamicLinear, DynamicLSTM, DynamicLSTMCell, quantize_dynamic
from lowbit.errors import ConfigError, ShapeError
from lowbit.functional.dynamic import quantize_rows


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.double().pow(2).sum() / (ref.double() - out.double()).pow(2).sum()))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(2, 8), st.floats(1e-3, 1e3), st.integers(0, 10_000))
def test_rows_are_rounded_to_their_own_grid(m, k, bits, spread, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * spread
    x[0] = 0.0  # an all-zero row: codes 0, scale 1
    q, s = quantize_rows(x, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and int(q.abs().max()) <= qmax
    assert torch.equal(q[0], torch.zeros(k, dtype=torch.int8)) and float(s[0]) == 1.0
    err = (x - q.float() * s[:, None]).abs()
    assert bool((err <= s[:, None] / 2 * (1 + 1e-5)).all())  # nearest code, no clipping (max|x| is on the grid)
    assert bool(((q.abs().amax(1) == qmax) | (x.abs().amax(1) == 0)).all())  # each row's max|x| on the top code


def _linear(k=300, n=70, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n)


def test_dynamic_linear_is_its_formula_exactly_on_every_integer_path():
    lin = _linear()
    d = DynamicLinear(lin)
    x = torch.randn(5, 9, 300) * torch.logspace(-2, 2, 9)[None, :, None]  # rows of very different ranges
    q, s = quantize_rows(x.reshape(-1, 300))
    exact = (q.double() @ d.weight.codes.double().T).to(torch.float32)  # float64: every partial sum exact
    want = (exact * s[:, None] * d.weight.scale + lin.bias).reshape(5, 9, 70)
    got = d(x)
    assert torch.equal(got, want)
    slow = DynamicLinear(lin)
    slow.weight = dataclasses.replace(slow.weight, packed=None)
    assert torch.equal(slow(x), got)
    with torch.no_grad():
        assert sqnr_db(lin(x), got) > 38


CASES = [
    (nn.LSTM(12, 32, 2, batch_first=True), (3, 17, 12)),
    (nn.LSTM(12, 32, 1, bidirectional=True), (17, 3, 12)),
    (nn.GRU(12, 32, 2, bidirectional=True, batch_first=True), (3, 17, 12)),
    (nn.GRU(12, 32, 1, bias=False), (17, 12)),  # unbatched
]


@pytest.mark.parametrize("rnn,shape", CASES, ids=["lstm2", "lstm-bi", "gru2-bi", "gru-unbatched-nobias"])
def test_dynamic_recurrent_layers_follow_pytorch(rnn, shape):
    torch.manual_seed(1)
    rnn.eval()
    x = torch.randn(shape)
    d = quantize_dynamic(rnn)
    assert isinstance(d, DynamicLSTM if isinstance(rnn, nn.LSTM) else DynamicGRU)
    with torch.no_grad():
        ref, ref_state = rnn(x)
        out, state = d(x)
    assert out.shape == ref.shape and sqnr_db(ref, out) > 30
    for a, b in zip(ref_state if isinstance(rnn, nn.LSTM) else (ref_state,),
                    state if isinstance(rnn, nn.LSTM) else (state,)):
        assert a.shape == b.shape and sqnr_db(a, b) > 30
    # an explicit initial state is used: continuing from the final state equals running the longer sequence
    with torch.no_grad():
        whole, _ = d(torch.cat([x, x], dim=1 if rnn.batch_first and len(shape) == 3 else 0))
        second, _ = d(x, state)
    half = out.shape[1 if rnn.batch_first and len(shape) == 3 else 0]
    tail = whole[:, half:] if rnn.batch_first and len(shape) == 3 else whole[half:]
    if not rnn.bidirectional:
        assert torch.allclose(second, tail, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
def test_a_dynamic_cell_stepped_over_a_sequence_is_the_dynamic_layer(kind, bias):
    """A cell stepped by hand (state carried between calls, batched and unbatched) gives the one-layer dynamic
    layer with the same weights: the same integer products, its float32 gates (the layer's in C: within
    1e-5), and follows PyTorch's cell."""
    torch.manual_seed(4)
    cell = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(10, 24, bias=bias).eval()
    layer = (nn.LSTM if kind == "lstm" else nn.GRU)(10, 24, bias=bias).eval()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ()):
            getattr(layer, f"{name}_l0").copy_(getattr(cell, name))
    dcell, dlayer = quantize_dynamic(cell), quantize_dynamic(layer)
    assert isinstance(dcell, DynamicLSTMCell if kind == "lstm" else DynamicGRUCell)
    x = torch.randn(30, 3, 10)
    with torch.no_grad():
        want, _ = dlayer(x)
        ref, _ = layer(x)
        state, rows, state1, rows1 = None, [], None, []
        for t in range(x.shape[0]):
            state = dcell(x[t], state)
            state1 = dcell(x[t, 1], state1)  # unbatched: one sequence
            rows.append(state[0] if kind == "lstm" else state)
            rows1.append(state1[0] if kind == "lstm" else state1)
    got = torch.stack(rows)
    assert (got - want).abs().max() < 1e-5
    # rows are quantized one by one: a batch changes no code (the float32 gates may round a last bit apart)
    assert (torch.stack(rows1) - got[:, 1]).abs().max() < 1e-6
    assert sqnr_db(ref, got) > 30


def test_a_model_stepping_an_lstm_cell_is_converted_and_profiled():
    from lowbit.cost.profile import profile, quantized_share

    class Stream(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell, self.head = nn.LSTMCell(16, 32), nn.Linear(32, 1)

        def forward(self, x, state=None):
            h, c = self.cell(x, state)
            return torch.sigmoid(self.head(h)), (h, c)

    torch.manual_seed(5)
    model = Stream().eval()
    d = quantize_dynamic(model)
    assert isinstance(d.cell, DynamicLSTMCell) and isinstance(d.head, DynamicLinear)
    x = torch.randn(4, 16)
    rows = {r.name: r for r in profile(d, (x,))}
    floats = {r.name: r for r in profile(model, (x,))}
    assert rows["cell"].macs == floats["cell"].macs == 4 * 32 * (16 + 32)
    assert rows["cell"].params == floats["cell"].params and quantized_share(list(rows.values())) == 1
    with pytest.raises(ShapeError, match=r"state of shape \(3, 32\), expected \(4, 32\)"):
        d.cell(x, (torch.zeros(3, 32), torch.zeros(3, 32)))
    with pytest.raises(ShapeError, match=r"input of shape \(4, 15\), expected \(N, 16\) or \(16,\)"):
        d.cell(torch.randn(4, 15))


def test_the_c_recurrence_matches_the_python_one():
    torch.manual_seed(2)
    for rnn in (nn.LSTM(16, 48, 2), nn.GRU(16, 48, 2, bidirectional=True)):
        d = quantize_dynamic(rnn.eval())
        slow = quantize_dynamic(rnn.eval())
        for layer in slow.cells:
            for cell in layer:
                cell.w_hh = dataclasses.replace(cell.w_hh, packed=None)
        x = torch.randn(25, 4, 16)
        with torch.no_grad():
            fast_out, slow_out = d(x)[0], slow(x)[0]
        assert (fast_out - slow_out).abs().max() < 1e-4  # the same integers; float32 gates of C and PyTorch


class Speaker(nn.Module):
    """A 3-layer LSTM speaker-embedding shape (40 log-mel bands, 128 units) with a projection head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 128, 3, batch_first=True)
        self.proj = nn.Linear(128, 64)

    def forward(self, x):
        h, _ = self.lstm(x)
        e = self.proj(h[:, -1])
        return e / e.norm(dim=1, keepdim=True)


def test_lowbit_dynamic_does_not_lose_to_pytorch_quantize_dynamic():
    torch.manual_seed(3)
    model = Speaker().eval()
    x = torch.randn(8, 60, 40) * torch.linspace(0.1, 3, 8)[:, None, None]  # quiet and loud utterances
    ours = quantize_dynamic(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
    with torch.no_grad():
        ref, a, b = model(x), ours(x), theirs(x)
    cos = lambda u, v: nn.functional.cosine_similarity(u, v, dim=1)  # noqa: E731
    assert float(cos(ref, a).min()) >= float(cos(ref, b).min()) and sqnr_db(ref, a) >= sqnr_db(ref, b)
    assert isinstance(ours.proj, DynamicLinear) and isinstance(ours.lstm, DynamicLSTM)


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match="bits = 9; allowed: an integer in 2..8"):
        quantize_dynamic(_linear(), bits=9)
    with pytest.raises(ConfigError, match="found no Linear/LSTM/GRU/LSTMCell/GRUCell layer"):
        quantize_dynamic(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError, match="proj_size=4"):
        quantize_dynamic(nn.LSTM(8, 16, proj_size=4))
    d = quantize_dynamic(nn.LSTM(8, 16))
    with pytest.raises(ConfigError, match="not PackedSequence"):
        d(pack_padded_sequence(torch.randn(5, 2, 8), [5, 3]))
    with pytest.raises(ShapeError, match=r"initial state of shape \(1, 3, 16\), expected \(1, 2, 16\)"):
        d(torch.randn(5, 2, 8), (torch.zeros(1, 3, 16), torch.zeros(1, 3, 16)))
    with pytest.raises(ShapeError, match="input of 9 features, expected 8"):
        d(torch.randn(5, 2, 9))


def test_the_profile_counts_dynamic_layers_as_8_bit_macs():
    from lowbit.cost.profile import profile, quantized_share

    model = Speaker().eval()
    x = torch.randn(2, 60, 40)
    floats = {r.name: r for r in profile(model, (x,))}
    dyn = {r.name: r for r in profile(quantize_dynamic(model), (x,))}
    assert {n: r.macs for n, r in dyn.items()} == {n: r.macs for n, r in floats.items()}  # the same arithmetic
    assert all((r.weight_bits, r.act_bits) == (8, 8) for r in dyn.values()) and quantized_share(list(dyn.values())) == 1
    assert dyn["lstm"].params == floats["lstm"].params and dyn["proj"].params == floats["proj"].params


def test_a_nan_or_inf_input_row_gives_nan_there_and_leaves_the_other_rows_alone():
    lin = _linear()
    x = torch.randn(6, 300)
    bad = x.clone()
    bad[1, 7], bad[4, 0] = float("nan"), float("inf")
    fast, slow = DynamicLinear(lin), DynamicLinear(lin)
    slow.weight = dataclasses.replace(slow.weight, packed=None)
    for d in (fast, slow):
        clean, got = d(x), d(bad)
        assert bool(torch.isnan(got[[1, 4]]).all())
        keep = [0, 2, 3, 5]
        assert torch.equal(got[keep], clean[keep])
    lstm = nn.LSTM(8, 16).eval()
    seq = torch.randn(5, 3, 8)
    seq[2, 1, 3] = float("nan")  # sample 1 is spoiled from step 2 on, as in nn.LSTM
    with torch.no_grad():
        ref, out = lstm(seq)[0], quantize_dynamic(lstm)(seq)[0]
    assert torch.equal(torch.isnan(out), torch.isnan(ref))

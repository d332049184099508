"""The streaming delta runtime (C, batch 1) against the simulation (DeltaGRU/DeltaLSTM), nn.GRU/nn.LSTM and
nn.GRUCell/nn.LSTMCell; its counters against the simulation's; bad inputs."""

import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.delta import DeltaGRU, DeltaLSTM
from lowbit.delta.runtime import DeltaGRURuntime, DeltaLSTMRuntime, DeltaRuntime
from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.native import guard

KINDS = {"GRU": (nn.GRU, DeltaGRU, nn.GRUCell), "LSTM": (nn.LSTM, DeltaLSTM, nn.LSTMCell)}
ATOL = 2e-5


def _layer(kind, i, h, layers=1, theta_x=0.0, theta_h=0.0, bias=True, seed=0, scale=0.8):
    torch.manual_seed(seed)
    layer = KINDS[kind][1](i, h, num_layers=layers, bias=bias, theta_x=theta_x, theta_h=theta_h)
    with torch.no_grad():  # wider than the default init, so that the gates saturate somewhere
        for p in layer.parameters():
            p.uniform_(-scale, scale)
    return layer


def _signal(steps, i, seed, step_size=0.3):
    """A slowly changing sequence (steps, i): a random walk, so that thresholds skip part of it."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cumsum(step_size * torch.randn(steps, i, generator=gen), 0)


# ---- equality with the simulation -------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["GRU", "LSTM"]), i=st.integers(1, 40), h=st.integers(1, 70), layers=st.integers(1, 2),
       steps=st.integers(1, 40), theta_x=st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0]),
       theta_h=st.sampled_from([0.0, 0.02, 0.1, 0.3]), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_runtime_equals_simulation(kind, i, h, layers, steps, theta_x, theta_h, bias, seed):
    layer = _layer(kind, i, h, layers, theta_x, theta_h, bias, seed)
    x = _signal(steps, i, seed)
    y_sim, state = layer(x.unsqueeze(1))
    rt = DeltaRuntime.from_layer(layer)
    y = rt.run(x)
    assert y.shape == (steps, h)
    torch.testing.assert_close(y, y_sim[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(rt.h, state.h_n[:, 0], atol=ATOL, rtol=0)
    # the input deltas are computed on the same float32 values: the same events, exactly
    assert rt.counts[0].x_events == state.counts[0].x_events
    for got, want in zip(rt.counts, state.counts):
        assert got.steps == want.steps == steps
        assert abs(got.h_events - want.h_events) <= 1  # a hidden delta at the threshold may round either way
        assert got.x_columns == got.x_events and got.h_columns == got.h_events  # batch 1


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("theta", [0.0, 0.1, 0.5])
def test_step_by_step_equals_run_and_reset_restarts(kind, theta):
    layer = _layer(kind, 12, 24, 2, theta, theta / 2)
    x = _signal(50, 12, 1)
    rt = DeltaRuntime.from_layer(layer)
    steps = torch.stack([rt.step(x[t]) for t in range(50)])
    counts = rt.counts
    rt.reset()
    assert rt.counts[0].steps == 0 and float(rt.h.abs().max()) == 0.0
    torch.testing.assert_close(rt.run(x), steps, atol=1e-6, rtol=0)
    assert rt.counts == counts
    # a stream continues across calls: two halves are the whole
    rt.reset()
    halves = torch.cat([rt.run(x[:20]), rt.run(x[20:])])
    torch.testing.assert_close(halves, steps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_zero_thresholds_equal_the_torch_cell(kind):
    """θ = 0 is the dense cell: nn.GRUCell/nn.LSTMCell stepped in a loop (an independent oracle)."""
    torch.manual_seed(3)
    cell = KINDS[kind][2](7, 33)
    x = torch.randn(60, 7) * 2
    rt = DeltaRuntime.from_layer(cell)
    hs, h = [], torch.zeros(1, 33)
    c = torch.zeros(1, 33)
    with torch.no_grad():
        for t in range(60):
            if kind == "GRU":
                h = cell(x[t:t + 1], h)
            else:
                h, c = cell(x[t:t + 1], (h, c))
            hs.append(h[0])
    torch.testing.assert_close(rt.run(x), torch.stack(hs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_dense_mode_is_the_torch_layer_whatever_the_thresholds(kind):
    torch.manual_seed(4)
    rnn = KINDS[kind][0](9, 20, num_layers=2)
    x = torch.randn(40, 9)
    rt = DeltaRuntime.from_layer(rnn, theta_x=0.5, theta_h=0.5, dense=True)
    with torch.no_grad():
        want = rnn(x.unsqueeze(1))[0][:, 0]
    torch.testing.assert_close(rt.run(x), want, atol=ATOL, rtol=0)
    assert all(c.x_events == 40 * 9 and c.h_events == 40 * 20 for c in rt.counts[:1])


def test_only_the_columns_of_sent_deltas_are_read():
    """A constant input after the first step sends no input delta: the input weights are never read
    again, so poisoning them after step 1 changes nothing, while a dense runtime is poisoned."""
    layer = _layer("GRU", 5, 8, theta_x=0.0, theta_h=0.0)
    x = torch.randn(5).expand(30, 5).contiguous()
    rt = DeltaGRURuntime.from_layer(layer)
    rt.step(x[0])
    rt.layers[0].wx.fill_(1e4)  # white-box: poison W_ih^T in place
    y = rt.run(x[1:])
    torch.testing.assert_close(y, layer(x.unsqueeze(1))[0][1:, 0], atol=ATOL, rtol=0)
    assert rt.counts[0].x_events == 5  # the first step only
    dense = DeltaGRURuntime.from_layer(layer, dense=True)
    dense.step(x[0])
    dense.layers[0].wx.fill_(1e4)
    assert not torch.allclose(dense.run(x[1:]), y, atol=1e-2)


@pytest.mark.skipif(importlib.util.find_spec("aeon") is None, reason="aeon==1.6.0 is not installed")
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_real_sequences(kind):
    """JapaneseVowels utterances (real speech features) through a random layer at several thresholds."""
    from lowbit.data.japanese_vowels import japanese_vowels

    te = japanese_vowels("test")
    for theta in (0.0, 0.05, 0.2):
        layer = _layer(kind, te.x.shape[-1], 32, theta_x=theta, theta_h=theta, scale=0.3)
        rt = DeltaRuntime.from_layer(layer)
        for row in range(0, 40, 7):
            x = te.x[row, te.x.shape[1] - int(te.lengths[row]):]
            rt.reset()
            torch.testing.assert_close(rt.run(x), layer(x.unsqueeze(1))[0][:, 0], atol=ATOL, rtol=0)


# ---- bad input ----------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_with_the_fix():
    layer = _layer("GRU", 6, 10, theta_x=0.1, theta_h=0.1)
    rt = DeltaGRURuntime.from_layer(layer)
    with pytest.raises(ShapeError, match="7.*input_size=6"):
        rt.step(torch.randn(7))
    with pytest.raises(ShapeError, match=r"\(steps, input_size\)"):
        rt.run(torch.randn(6))
    with pytest.raises(ShapeError, match="input_size=6"):
        rt.run(torch.randn(5, 1, 6))
    with pytest.raises(ShapeError, match="empty"):
        rt.run(torch.randn(0, 6))
    with pytest.raises(DataError, match="float"):
        rt.step(torch.ones(6, dtype=torch.int64))
    with pytest.raises(DataError, match="Tensor"):
        rt.step([0.0] * 6)
    rt.run(_signal(5, 6, 0))
    h, counts = rt.h, rt.counts
    bad = _signal(4, 6, 1)
    bad[2, 3] = float("nan")
    with pytest.raises(DataError, match="NaN.*unchanged.*nan_to_num"):
        rt.run(bad)
    with pytest.raises(DataError, match="NaN"):
        rt.step(torch.full((6,), float("inf")))
    assert torch.equal(rt.h, h) and rt.counts == counts  # the state is as before the refused calls
    # float64 and strided inputs are converted
    x = _signal(8, 6, 2)
    rt.reset()
    y = rt.run(x)
    rt.reset()
    torch.testing.assert_close(rt.run(x.double().t().contiguous().t()), y)


def test_bad_thresholds_and_layers():
    layer = _layer("GRU", 3, 4)
    for bad in (-0.1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ConfigError, match="theta_x"):
            DeltaRuntime.from_layer(layer, theta_x=bad)
    with pytest.raises(ConfigError, match="Linear"):
        DeltaRuntime.from_layer(nn.Linear(3, 4))
    with pytest.raises(ConfigError, match="DeltaGRURuntime runs a GRU.*an LSTM"):
        DeltaGRURuntime.from_layer(nn.LSTM(3, 4))
    with pytest.raises(ConfigError, match="DeltaLSTMRuntime runs an LSTM.*a GRU"):
        DeltaLSTMRuntime.from_layer(layer)
    with pytest.raises(ConfigError, match="unidirectional"):
        DeltaRuntime.from_layer(nn.GRU(3, 4, bidirectional=True))
    rnn = nn.GRU(3, 4)
    with torch.no_grad():
        rnn.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(DataError, match="W_hh.*NaN"):
        DeltaRuntime.from_layer(rnn)
    with pytest.raises(ConfigError, match="gates"):
        DeltaRuntime([(torch.zeros(5, 3), torch.zeros(5, 5), None, None)], gates=5)
    with pytest.raises(ShapeError, match="GRU"):
        DeltaRuntime([(torch.zeros(12, 3), torch.zeros(12, 5), None, None)], gates=3)
    rt = DeltaRuntime.from_layer(layer, theta_x=0.2)
    with pytest.raises(AttributeError):
        rt.theta_x = 0.5  # fixed: the step calls were checked with it


def test_the_guard_checks_every_argument_of_the_kernel():
    f32, i32, i64 = torch.float32, torch.int32, torch.int64
    B = guard.Buf
    ok = dict(x=B(f32, 2 * 3), T=2, In=3, H=4, G=3, wx=B(f32, 3 * 12), wh=B(f32, 4 * 12), b_ih=B(f32, 12),
              b_hh=B(f32, 12), state=B(f32, 3 + 12 + 24), theta_x=0.1, theta_h=0.0, dense=0, y=B(f32, 8),
              counts=B(i64, 2), idx=B(i32, 39), dv=B(f32, 39))
    guard.delta_rnn_f32(**ok)
    for name, value, err in (("x", B(f32, 5), ShapeError), ("x", B(torch.float64, 6), ShapeError),
                             ("wh", B(f32, 47), ShapeError), ("state", B(f32, 38), ShapeError),
                             ("y", B(f32, 7), ShapeError), ("counts", B(i32, 2), ShapeError),
                             ("idx", B(i32, 38), ShapeError), ("dv", None, ShapeError), ("G", 5, ConfigError),
                             ("H", 0, ConfigError), ("T", -1, ConfigError), ("theta_x", -0.1, ConfigError),
                             ("theta_h", float("nan"), ConfigError), ("dense", 2, ConfigError)):
        with pytest.raises(err, match="lowbit_delta_rnn_f32"):
            guard.delta_rnn_f32(**{**ok, name: value})


# ---- the fixed-point option: int8 weights, 16-bit activations --------------------------------------------

@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["GRU", "LSTM"]), i=st.integers(1, 40), h=st.integers(1, 70), steps=st.integers(1, 40),
       theta_x=st.sampled_from([0.0, 0.05, 0.3]), theta_h=st.sampled_from([0.0, 0.02, 0.2]),
       frac_bits=st.sampled_from([6, 8, 10]), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fixed_point_runtime_is_bit_exact_with_its_simulation(kind, i, h, steps, theta_x, theta_h, frac_bits, bias,
                                                              seed):
    from lowbit.delta.fixed import FixedDeltaGRURuntime, FixedDeltaLSTMRuntime, fixed_delta_gru, fixed_delta_lstm

    runtime, simulation = ((FixedDeltaGRURuntime, fixed_delta_gru) if kind == "GRU" else
                           (FixedDeltaLSTMRuntime, fixed_delta_lstm))
    layer = _layer(kind, i, h, 1, theta_x, theta_h, bias, seed, scale=0.8 if kind == "GRU" else 1.5)
    x = _signal(steps, i, seed) * 3  # reaches past ±8 (the tables' range) and int16 clamping at F = 10
    rt = runtime.from_layer(layer, frac_bits=frac_bits)
    y = rt.run(x)
    want, counts = simulation(rt.q, rt.q.quantize_input(x))
    assert torch.equal(y, want)
    assert rt.counts == counts
    # a stream continues across calls
    rt.reset()
    assert torch.equal(torch.cat([rt.run(x[:steps // 2 + 1]), rt.run(x[steps // 2 + 1:])])
                       if steps > 1 else rt.run(x), want)


def test_fixed_point_model_is_the_float_gru_to_its_resolution():
    """θ = 0: the fixed-point model is nn.GRU up to the quantisation (Q8.8 activations, int8 weights)."""
    from lowbit.delta.fixed import FixedDeltaGRURuntime

    torch.manual_seed(5)
    gru = nn.GRU(20, 48)
    x = torch.randn(80, 20)
    with torch.no_grad():
        want = gru(x.unsqueeze(1))[0][:, 0]
    for frac_bits, tol in ((8, 0.03), (12, 0.01)):
        rt = FixedDeltaGRURuntime.from_layer(gru, frac_bits=frac_bits)
        got = rt.run(x).double() / 2 ** frac_bits
        err = float((got - want.double()).abs().max())
        assert err < tol, (frac_bits, err)
        assert err > 0  # it is quantised


def test_fixed_point_bad_inputs():
    from lowbit.delta.fixed import FixedDeltaGRURuntime

    layer = _layer("GRU", 6, 10)
    with pytest.raises(ConfigError, match="FixedDeltaLSTMRuntime"):
        FixedDeltaGRURuntime.from_layer(nn.LSTM(6, 10))
    with pytest.raises(ConfigError, match="DeltaGRU, DeltaLSTM, nn.GRU or nn.LSTM"):
        FixedDeltaGRURuntime.from_layer(nn.RNN(6, 10))
    with pytest.raises(ConfigError, match="one unidirectional layer"):
        FixedDeltaGRURuntime.from_layer(nn.GRU(6, 10, num_layers=2))
    with pytest.raises(ConfigError, match="255"):
        FixedDeltaGRURuntime.from_layer(nn.GRU(6, 300))
    with pytest.raises(ConfigError, match="frac_bits"):
        FixedDeltaGRURuntime.from_layer(layer, frac_bits=16)
    with pytest.raises(ConfigError, match="theta_h"):
        FixedDeltaGRURuntime.from_layer(layer, theta_h=-1.0)
    rt = FixedDeltaGRURuntime.from_layer(layer)
    with pytest.raises(ShapeError, match="input_size=6"):
        rt.run(torch.randn(5, 7))
    with pytest.raises(DataError, match="NaN"):
        rt.run(torch.full((3, 6), float("nan")))
    with pytest.raises(DataError, match="int32 codes"):
        rt.run(torch.zeros(3, 6, dtype=torch.int64))
    ok = dict(x=guard.Buf(torch.int32, 6), T=1, In=6, H=10, wx=guard.Buf(torch.int8, 180),
              wh=guard.Buf(torch.int8, 300), state=guard.Buf(torch.int32, 86), theta_x=0, theta_h=0, F=8, Fw=9,
              sig=guard.Buf(torch.int32, 4096), tnh=guard.Buf(torch.int32, 4096), L=2048,
              y=guard.Buf(torch.int32, 10), counts=guard.Buf(torch.int64, 2), idx=guard.Buf(torch.int32, 48),
              dv=guard.Buf(torch.int32, 48))
    guard.delta_gru_q(**ok)
    for name, value in (("L", 1024), ("H", 256), ("F", 15), ("sig", guard.Buf(torch.int32, 4095)),
                        ("wx", guard.Buf(torch.float32, 180)), ("theta_x", -1), ("idx", guard.Buf(torch.int32, 47))):
        with pytest.raises((ConfigError, ShapeError), match="lowbit_delta_gru_q"):
            guard.delta_gru_q(**{**ok, name: value})


def test_fixed_point_lstm_is_the_float_lstm_to_its_resolution():
    """θ = 0: the fixed-point LSTM is nn.LSTM up to the quantisation (int8 weights, Q.F activations and cell)."""
    from lowbit.delta.fixed import FixedDeltaLSTMRuntime

    torch.manual_seed(6)
    lstm = nn.LSTM(20, 48)
    x = torch.randn(80, 20)
    with torch.no_grad():
        want = lstm(x.unsqueeze(1))[0][:, 0]
    for frac_bits, tol in ((8, 0.03), (12, 0.01)):
        rt = FixedDeltaLSTMRuntime.from_layer(lstm, frac_bits=frac_bits)
        got = rt.run(x).double() / 2 ** frac_bits
        err = float((got - want.double()).abs().max())
        assert 0 < err < tol, (frac_bits, err)


def test_fixed_point_lstm_thresholds_skip_columns_and_bad_inputs():
    from lowbit.delta import DeltaLSTM
    from lowbit.delta.fixed import FixedDeltaGRURuntime, FixedDeltaLSTMRuntime, FixedRNN, fixed_delta_gru

    layer = _layer("LSTM", 6, 10, 1, 0.3, 0.1)
    assert isinstance(layer, DeltaLSTM)
    rt = FixedDeltaLSTMRuntime.from_layer(layer)  # the thresholds default to the layer's
    rt.run(_signal(50, 6, 3))
    c = rt.counts
    assert 0 < c.x_columns < 50 * 6 and c.h_columns < 50 * 10 and c.gates == 4
    with pytest.raises(ConfigError, match="FixedDeltaGRURuntime"):
        FixedDeltaLSTMRuntime.from_layer(nn.GRU(6, 10))
    with pytest.raises(ConfigError, match="projection"):
        FixedDeltaLSTMRuntime.from_layer(nn.LSTM(6, 10, proj_size=4))
    with pytest.raises(ConfigError, match="gates 3"):
        FixedDeltaGRURuntime(FixedRNN.from_layer(nn.LSTM(6, 10)))
    with pytest.raises(ConfigError, match="fixed_delta_lstm"):
        fixed_delta_gru(rt.q, torch.zeros(2, 6, dtype=torch.int32))
    with pytest.raises(ShapeError, match="LSTM runtime"):
        rt.run(torch.randn(5, 7))
    ok = dict(x=guard.Buf(torch.int32, 6), T=1, In=6, H=10, wx=guard.Buf(torch.int8, 240),
              wh=guard.Buf(torch.int8, 400), state=guard.Buf(torch.int32, 116), theta_x=0, theta_h=0, F=8, Fw=9,
              sig=guard.Buf(torch.int32, 4096), tnh=guard.Buf(torch.int32, 4096), L=2048,
              y=guard.Buf(torch.int32, 10), counts=guard.Buf(torch.int64, 2), idx=guard.Buf(torch.int32, 48),
              dv=guard.Buf(torch.int32, 48), gates=4)
    guard.delta_gru_q(**ok)
    for name, value in (("state", guard.Buf(torch.int32, 115)), ("wx", guard.Buf(torch.int8, 180)), ("gates", 5)):
        with pytest.raises((ConfigError, ShapeError), match="lowbit_delta_lstm_q"):
            guard.delta_gru_q(**{**ok, name: value})


def test_fixed_point_lstm_cell_saturates_at_16_bits():
    """Gates held open by their biases: the cell grows by about 1 a step and stops at int16's top (32767 in
    Q.10 = 32.0), in the C runtime and in its simulation alike."""
    from lowbit.delta.fixed import FixedDeltaLSTMRuntime, fixed_delta_lstm

    lstm = nn.LSTM(3, 5)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.bias_ih_l0.fill_(6.0)
    rt = FixedDeltaLSTMRuntime.from_layer(lstm, frac_bits=10, weight_frac_bits=8)
    x = torch.zeros(60, 3)
    y = rt.run(x)
    want, _ = fixed_delta_lstm(rt.q, rt.q.quantize_input(x))
    assert torch.equal(y, want)
    cell = rt.state[3 + 2 * 5:3 + 3 * 5]  # x_hat[3], h_hat[5], h[5], c[5]
    assert bool((cell == 32767).all()), cell

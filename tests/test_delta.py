"""Delta GRU/LSTM (Neil et al., ICML 2017) against nn.GRU/nn.LSTM and a plain float64 per-step reference."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lowbit.delta import (DeltaCounts, DeltaGRU, DeltaGRUDropIn, DeltaLSTM, DeltaLSTMDropIn, DeltaState, cost_of,
                          record_counts, state_costs, to_delta, total_cost)
from lowbit.errors import ConfigError, DataError, LowbitError, ShapeError

KINDS = {"GRU": (nn.GRU, DeltaGRU), "LSTM": (nn.LSTM, DeltaLSTM)}


def _pair(kind, i, h, layers, batch_first=False, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    ref_cls, delta_cls = KINDS[kind]
    ref = ref_cls(i, h, num_layers=layers, batch_first=batch_first, bias=bias).to(dtype)
    with torch.no_grad():  # wider than the default init, so that the gates saturate somewhere
        for p in ref.parameters():
            p.uniform_(-0.8, 0.8)
    return ref, delta_cls.from_torch(ref)


# ---- theta = 0: the delta layers are nn.GRU / nn.LSTM ----------------------------------------------------

@settings(max_examples=40)
@given(kind=st.sampled_from(["GRU", "LSTM"]), i=st.integers(1, 6), h=st.integers(1, 7), layers=st.integers(1, 3),
       batch=st.integers(1, 4), steps=st.integers(1, 12), batch_first=st.booleans(), bias=st.booleans(),
       given_state=st.booleans(), seed=st.integers(0, 2**16))
def test_zero_threshold_equals_torch(kind, i, h, layers, batch, steps, batch_first, bias, given_state, seed):
    ref, delta = _pair(kind, i, h, layers, batch_first, bias, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, steps, i) if batch_first else (steps, batch, i), generator=gen) * 2
    h0 = torch.randn(layers, batch, h, generator=gen) if given_state else None
    c0 = torch.randn(layers, batch, h, generator=gen) if given_state and kind == "LSTM" else None
    if kind == "GRU":
        y_ref, h_ref = ref(x, h0)
        c_ref = None
    else:
        y_ref, (h_ref, c_ref) = ref(x, None if h0 is None else (h0, c0))
    y, state = delta(x, None if h0 is None else delta.initial_state(batch, h0, c0))
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(state.h_n, h_ref, atol=2e-5, rtol=1e-5)
    if kind == "LSTM":
        torch.testing.assert_close(state.c_n, c_ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_zero_threshold_float64_and_gradients(kind):
    ref, delta = _pair(kind, 5, 6, 2, dtype=torch.float64)
    x = torch.randn(20, 3, 5, dtype=torch.float64, requires_grad=True)
    y_ref = ref(x)[0]
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    y, _ = delta(x)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(g, g_ref, atol=1e-11, rtol=1e-11)
    # weight gradients too (the accumulators sum W Δ, whose gradient is the same Σ Δ^T)
    grads_ref = torch.autograd.grad(ref(x)[0].sum(), list(ref.parameters()))
    grads = torch.autograd.grad(delta(x)[0].sum(), list(delta.parameters()))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_state_dicts_load_both_ways(kind):
    ref, delta = _pair(kind, 3, 4, 2)
    assert list(delta.state_dict()) == list(ref.state_dict())
    other = KINDS[kind][0](3, 4, num_layers=2)
    other.load_state_dict(delta.state_dict())
    fresh = KINDS[kind][1](3, 4, num_layers=2)
    fresh.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(fresh(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)


# ---- theta > 0: a plain float64 per-step reference ---------------------------------------------------------

def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def _matvec(w, v, b):
    return [sum(w[r][j] * v[j] for j in range(len(v))) + (b[r] if b else 0.0) for r in range(len(w))]


def reference_delta_rnn(kind, params, x, theta_x, theta_h):
    """Per step, per element, written out: memories x_hat/h_hat updated where the change exceeds the threshold,
    then the gates computed densely from the memories (no accumulators). Returns outputs and event counts."""
    seq = x.tolist()  # (T, B, I) nested lists
    events = []
    for w_ih, w_hh, b_ih, b_hh in params:
        hidden = len(w_hh[0])
        out_seq = []
        batch = len(seq[0])
        x_hat = [[0.0] * len(seq[0][0]) for _ in range(batch)]
        h_hat = [[0.0] * hidden for _ in range(batch)]
        h = [[0.0] * hidden for _ in range(batch)]
        c = [[0.0] * hidden for _ in range(batch)]
        ex = eh = 0
        theta_in = theta_x if not events else theta_h
        for xt in seq:
            out_t = []
            for b in range(batch):
                for j, v in enumerate(xt[b]):
                    if abs(v - x_hat[b][j]) > theta_in:
                        x_hat[b][j] = v
                        ex += 1
                for j, v in enumerate(h[b]):
                    if abs(v - h_hat[b][j]) > theta_h:
                        h_hat[b][j] = v
                        eh += 1
                gx = _matvec(w_ih, x_hat[b], b_ih)
                gh = _matvec(w_hh, h_hat[b], b_hh)
                H = hidden
                if kind == "GRU":
                    new_h = []
                    for j in range(H):
                        r = _sig(gx[j] + gh[j])
                        z = _sig(gx[H + j] + gh[H + j])
                        n = math.tanh(gx[2 * H + j] + r * gh[2 * H + j])
                        new_h.append((1 - z) * n + z * h[b][j])
                    h[b] = new_h
                else:
                    g = [a + d for a, d in zip(gx, gh)]
                    c[b] = [_sig(g[H + j]) * c[b][j] + _sig(g[j]) * math.tanh(g[2 * H + j]) for j in range(H)]
                    h[b] = [_sig(g[3 * H + j]) * math.tanh(c[b][j]) for j in range(H)]
                out_t.append(list(h[b]))
            out_seq.append(out_t)
        events.append((ex, eh))
        seq = out_seq
    return torch.tensor(seq, dtype=torch.float64), events


def _params(delta):
    out = []
    for k in range(delta.num_layers):
        def get(n):
            p = getattr(delta, f"{n}_l{k}", None)
            return None if p is None else p.detach().tolist()
        out.append((get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")))
    return out


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("theta_x,theta_h", [(0.3, 0.1), (0.0, 0.25), (0.5, 0.0), (1.0, 0.5)])
def test_thresholds_match_plain_reference(kind, theta_x, theta_h):
    _, delta = _pair(kind, 4, 5, 2, dtype=torch.float64, seed=3)
    delta.theta_x, delta.theta_h = theta_x, theta_h
    # a slowly varying signal, so that many changes stay under the thresholds
    x = torch.cumsum(torch.randn(12, 2, 4, dtype=torch.float64) * 0.3, dim=0)
    y_ref, events = reference_delta_rnn(kind, _params(delta), x, theta_x, theta_h)
    with torch.no_grad():
        y, state = delta(x)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    assert [(c.x_events, c.h_events) for c in state.counts] == events
    dense_y = KINDS[kind][0](4, 5, num_layers=2).double()
    dense_y.load_state_dict(delta.state_dict())
    assert not torch.allclose(y, dense_y(x)[0], atol=1e-6), "thresholds had no effect: the test is too weak"


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("theta", [0.0, 0.2])
def test_chunks_with_carried_state_equal_one_call(kind, theta):
    _, delta = _pair(kind, 3, 4, 2, batch_first=True, dtype=torch.float64)
    delta.theta_x = delta.theta_h = theta
    x = torch.cumsum(torch.randn(2, 15, 3, dtype=torch.float64) * 0.3, dim=1)
    with torch.no_grad():
        y_all, s_all = delta(x)
        state, ys = None, []
        for chunk in x.split([1, 5, 9], dim=1):
            y, state = delta(chunk, state)
            ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_all, atol=1e-12, rtol=1e-12)
    assert state.counts == s_all.counts


def test_constant_input_sends_one_delta_per_element():
    _, delta = _pair("GRU", 3, 4, 1)
    delta.theta_x, delta.theta_h = 0.0, 1e9  # hidden deltas never sent
    x = torch.tensor([1.0, -2.0, 0.5]).expand(6, 1, 3)
    with torch.no_grad():
        _, state = delta(x)
    (counts,) = state.counts
    assert (counts.x_events, counts.x_columns, counts.h_events, counts.steps, counts.batch_steps) == (3, 3, 0, 6, 6)
    cost = cost_of(counts)
    assert cost.macs == 3 * 4 * 3 and cost.dense_macs == 3 * 4 * 6 * (3 + 4)
    assert cost.fetches == 3 and cost.dense_fetches == 6 * 7
    assert cost.batch_fetches == 3 and cost.dense_batch_fetches == 6 * 7  # batch 1: the same
    assert cost.x_occupancy == pytest.approx(3 / 18) and cost.h_occupancy == 0.0
    assert cost.mac_reduction == pytest.approx(24 * 7 / 12)


def test_column_fetches_are_shared_across_the_batch():
    counts = DeltaCounts(3, 4, 3, steps=1, batch_steps=2, x_events=4, x_columns=3, h_events=0, h_columns=0)
    cost = cost_of(counts)
    assert (cost.fetches, cost.dense_fetches, cost.batch_fetches, cost.dense_batch_fetches) == (4, 2 * 7, 3, 7)
    assert cost.macs == 4 * 12 and cost.fetch_reduction == cost.mac_reduction
    _, delta = _pair("LSTM", 2, 3, 1)
    x = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]]).transpose(0, 1)  # one step, rows identical, one zero input
    with torch.no_grad():
        _, state = delta(x)
    assert (state.counts[0].x_events, state.counts[0].x_columns) == (2, 1)


# ---- conversion ----------------------------------------------------------------------------------------------

class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 6)
        self.enc = nn.GRU(6, 8, num_layers=2, batch_first=True)
        self.dec = nn.Sequential(nn.LSTM(8, 5))
        self.head = nn.Linear(5, 3)

    def forward(self, x, h0=None):
        y, h_n = self.enc(self.emb(x), h0)
        z, (hz, cz) = self.dec[0](y.transpose(0, 1))
        return self.head(z[-1]) + h_n.sum() * 0


def test_to_delta_swaps_copies_and_reproduces_at_zero():
    model = _Tagger().eval()
    before = copy.deepcopy(model.state_dict())
    conv = to_delta(model)
    assert [(s.name, s.kind, s.input_size, s.hidden_size, s.num_layers, s.batch_first) for s in conv.swapped] == [
        ("enc", "GRU", 6, 8, 2, True), ("dec.0", "LSTM", 8, 5, 1, False)]
    assert conv.skipped == ()
    assert type(model.enc) is nn.GRU and type(model.dec[0]) is nn.LSTM  # the caller's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(conv.model.enc, DeltaGRUDropIn) and isinstance(conv.model.dec[0], DeltaLSTMDropIn)
    assert not conv.model.training and conv.model.enc.theta_x == 0.0
    assert list(conv.model.state_dict()) == list(model.state_dict())
    x, h0 = torch.randn(3, 7, 4), torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv.model(x, h0), model(x, h0), atol=1e-5, rtol=1e-5)
        with record_counts(conv.model) as rec:
            conv.model(x, h0)
    names = [c.name for c in rec.costs()]
    assert names == ["enc.l0", "enc.l1", "dec.0.l0"]
    assert all(c.mac_reduction >= 1 for c in rec.costs())
    assert not conv.model.enc._count_listeners  # nothing left behind


def test_to_delta_thresholds_reduce_macs_and_sweep_in_place():
    model = _Tagger().eval()
    x = torch.cumsum(torch.randn(2, 30, 4) * 0.1, dim=1)
    reductions = []
    for theta in [0.0, 0.05, 0.2]:
        dmodel = to_delta(model, theta_x=theta, theta_h=theta).model
        with torch.no_grad(), record_counts(dmodel) as rec:
            dmodel(x)
        reductions.append(rec.total().mac_reduction)
    assert reductions[0] < reductions[1] < reductions[2]
    assert reductions[0] == pytest.approx(1.0, abs=0.1)  # at 0 only exact repeats are skipped (h0 = 0 at step 1)


def test_drop_in_call_conventions():
    for kind, ref_cls in [("GRU", nn.GRU), ("LSTM", nn.LSTM)]:
        ref = ref_cls(3, 4, num_layers=2)
        delta = to_delta(ref).model  # a bare recurrent layer converts too
        assert isinstance(delta, DeltaGRUDropIn if kind == "GRU" else DeltaLSTMDropIn)
        x = torch.randn(5, 3)  # unbatched
        h0 = torch.randn(2, 4)
        hx = h0 if kind == "GRU" else (h0, torch.randn(2, 4))
        y_ref, s_ref = ref(x, hx)
        y, s = delta(x, hx)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)


def test_state_counts_and_recorder_agree():
    _, delta = _pair("GRU", 3, 4, 2)
    delta.theta_x = delta.theta_h = 0.1
    x = torch.randn(8, 2, 3)
    with torch.no_grad(), record_counts(delta) as rec:
        _, s1 = delta(x[:4])
        _, s2 = delta(x[4:], s1)
    assert rec.calls[""] == 2
    assert [c.as_dict() for c in rec.costs()] == [c.as_dict() for c in state_costs(s2)]
    assert total_cost(rec.costs()).macs == sum(c.macs for c in rec.costs())


# ---- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1", None, torch.tensor([0.1, 0.2])])
def test_bad_thresholds(bad):
    with pytest.raises(ConfigError, match="theta_x"):
        DeltaGRU(2, 3, theta_x=bad)
    layer = DeltaLSTM(2, 3)
    with pytest.raises(ConfigError, match="theta_h"):
        layer.theta_h = bad
    assert layer.theta_h == 0.0
    with pytest.raises(ConfigError, match="theta_h"):
        to_delta(nn.GRU(2, 3), theta_h=bad)


def test_bad_inputs_name_the_problem():
    layer = DeltaGRU(3, 4, batch_first=True)
    with pytest.raises(ShapeError, match=r"rank 3 \(batch, time, features\)"):
        layer(torch.randn(5, 3))
    with pytest.raises(ShapeError, match="input_size=3"):
        layer(torch.randn(2, 5, 4))
    with pytest.raises(DataError, match="dtype"):
        layer(torch.randn(2, 5, 3, dtype=torch.float64))
    packed = pack_padded_sequence(torch.randn(2, 5, 3), torch.tensor([5, 3]), batch_first=True)
    with pytest.raises(DataError, match="pad_packed_sequence"):
        layer(packed)
    with pytest.raises(DataError, match="pad_packed_sequence"):
        to_delta(nn.GRU(3, 4, batch_first=True)).model(packed)
    _, state = layer(torch.randn(2, 5, 3))
    with pytest.raises(ShapeError, match="batch 2"):
        layer(torch.randn(3, 5, 3), state)
    with pytest.raises(ConfigError, match="DeltaState"):
        layer(torch.randn(2, 5, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ShapeError, match=r"\(num_layers, batch, hidden_size\)"):
        layer.initial_state(2, torch.zeros(2, 2, 4))
    with pytest.raises(DataError, match="floating"):
        layer.initial_state(2, torch.zeros(1, 2, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\(h0, c0\)"):
        to_delta(nn.LSTM(3, 4)).model(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ConfigError, match="input_size"):
        DeltaGRU(0, 4)


def test_conversion_refusals():
    with pytest.raises(ConfigError, match="no recurrent layer"):
        to_delta(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="already holds delta layers"):
        to_delta(to_delta(nn.GRU(2, 2)).model)
    model = nn.ModuleDict({"cell": nn.GRUCell(2, 3), "gru": nn.GRU(2, 3)})
    with pytest.raises(ConfigError, match="'cell'.*GRUCell.*skip_unsupported=True"):
        to_delta(model)
    conv = to_delta(model, skip_unsupported=True)
    assert [s.name for s in conv.swapped] == ["gru"] and [s.name for s in conv.skipped] == ["cell"]
    assert type(conv.model["cell"]) is nn.GRUCell
    with pytest.raises(ConfigError, match="bidirectional"):
        to_delta(nn.LSTM(2, 3, bidirectional=True))
    with pytest.raises(ConfigError, match="proj_size"):
        to_delta(nn.LSTM(2, 3, proj_size=2))
    with pytest.raises(ConfigError, match="no delta version"):
        to_delta(nn.RNN(2, 3))
    with pytest.raises(ConfigError, match="no delta layer"), record_counts(nn.Linear(2, 2)):
        pass


def test_errors_are_lowbit_errors_and_builtins():
    with pytest.raises(LowbitError):
        DeltaGRU(2, 3, theta_h=-1)
    with pytest.raises(ValueError):
        DeltaGRU(2, 3)(torch.randn(4, 2))


def test_state_detach_and_types():
    _, delta = _pair("LSTM", 2, 3, 2)
    _, state = delta(torch.randn(4, 1, 2))
    assert isinstance(state, DeltaState) and state.layers[0].h.requires_grad
    d = state.detach()
    assert not d.layers[1].acc_h.requires_grad and d.counts == state.counts
    gru_state = DeltaGRU(2, 3)(torch.randn(1, 1, 2))[1]
    with pytest.raises(AttributeError, match="GRU"):
        _ = gru_state.c_n


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_nan_input_propagates_as_in_torch(kind):
    ref, delta = _pair(kind, 3, 4, 1)
    delta.theta_x = delta.theta_h = 0.5
    x = torch.randn(6, 2, 3)
    x[2, 0, 1] = float("nan")
    with torch.no_grad():
        y, _ = delta(x)
        y_ref, _ = ref(x)
    assert torch.equal(y.isnan(), y_ref.isnan()) and y[2:, 0].isnan().all() and not y[:, 1].isnan().any()


def test_per_step_occupancy():
    _, delta = _pair("GRU", 3, 4, 2)
    delta.theta_x, delta.theta_h = 0.0, 0.1
    x = torch.tensor([1.0, -2.0, 0.5]).expand(5, 2, 3).clone()
    x[3, 1, 0] = 7.0  # one change in one row at step 3
    with torch.no_grad(), record_counts(delta, per_step=True) as rec:
        _, state = delta(x)
    ((l0, l1),) = rec.steps[""]
    torch.testing.assert_close(l0.x, torch.tensor([1.0, 0, 0, 1 / 6, 1 / 6]))  # step 4 changes back to 1.0
    assert l0.h[0] == 0 and l1.h.shape == (5,)
    for occ, counts in zip((l0, l1), state.counts):
        assert float(occ.x.sum()) * 2 * counts.input_size == pytest.approx(counts.x_events)
        assert float(occ.h.sum()) * 2 * counts.hidden_size == pytest.approx(counts.h_events)


def test_to_delta_keeps_mode_dtype_dropout_and_gradients():
    model = nn.Sequential(nn.LSTM(3, 4, num_layers=2, dropout=0.5)).double().train()
    model[0].weight_hh_l1.requires_grad_(False)
    conv = to_delta(model, theta_x=0.0, theta_h=0.0)
    d = conv.model[0]
    assert d.training and d.dropout == 0.5 and d.weight_ih_l0.dtype == torch.float64
    assert not d.weight_hh_l1.requires_grad and d.weight_hh_l0.requires_grad
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    y_ref = model(x)[0]
    torch.manual_seed(5)
    y = conv.model(x)[0]
    assert not torch.allclose(y, conv.model.eval()(x)[0])  # dropout acted in training mode
    y.sum().backward()
    assert d.weight_ih_l0.grad is not None and d.weight_hh_l1.grad is None
    assert y.shape == y_ref.shape


def test_sweep_and_operating_point():
    from lowbit.delta import operating_point, sweep

    torch.manual_seed(1)
    model = nn.GRU(3, 6)
    x = torch.cumsum(torch.randn(40, 4, 3) * 0.1, dim=0)
    y_ref = model(x)[0].detach()

    def agreement(m):  # 1 - mean error against the dense output: a metric that falls with the thresholds
        return 1 - float((m(x)[0] - y_ref).abs().mean())

    points = sweep(model, [(0.0, 0.0), (0.05, 0.05), (0.3, 0.3)], agreement)
    assert [p.theta_x for p in points] == [0.0, 0.05, 0.3]
    assert points[0].metric == pytest.approx(1.0, abs=1e-6)
    assert points[0].cost.mac_reduction < points[1].cost.mac_reduction < points[2].cost.mac_reduction
    assert points[2].metric < points[0].metric
    assert operating_point(points, 1.0, max_loss=1e-5) is points[0]
    assert operating_point(points, 1.0, max_loss=1.0) is points[2]
    assert operating_point(points, 2.0, max_loss=0.1) is None
    assert type(model) is nn.GRU
    with pytest.raises(ConfigError, match="theta_h"):
        sweep(model, [(0.1, 0.1), (0.1, -1)], agreement)
    with pytest.raises(ConfigError, match="ran no delta layer"):
        sweep(model, [(0.1, 0.1)], lambda m: 1.0)

"""Training delta networks for sparsity (Neil et al., ICML 2017): lowbit.delta.training."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.delta import DeltaGRU, DeltaLSTM, record_counts
from lowbit.delta.training import (DeltaClassifier, DeltaTrainSpec, QFormat, SequenceOutput, TemporalL1,
                                   delta_training, fixed_point_ste, temporal_l1, train_delta)
from lowbit.errors import ConfigError, DataError
from lowbit.training import CrossEntropy, LoopConfig

LAYERS = {"GRU": (nn.GRU, DeltaGRU), "LSTM": (nn.LSTM, DeltaLSTM)}


def _layer(kind, i=3, h=5, layers=1, theta=0.0, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    ref = LAYERS[kind][0](i, h, layers, batch_first=True).to(dtype)
    return ref, LAYERS[kind][1].from_torch(ref, theta, theta)


# ---- the L1 cost on temporal changes ---------------------------------------------------------------------

def test_temporal_l1_gradient_analytic_and_finite_differences():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    lam = 0.3
    value = lam * temporal_l1(h)
    # brute force value: loops over batch, time and units
    hd = h.detach()
    ref = sum(abs(float(hd[b, t, j] - hd[b, t - 1, j])) for b in range(2) for t in range(1, 5) for j in range(3)) / 2
    assert math.isclose(float(value.detach()), lam * ref, rel_tol=1e-12)
    (grad,) = torch.autograd.grad(value, h)
    # analytic: d/dh_t = lam/B (sign(h_t - h_{t-1}) [t >= 1] - sign(h_{t+1} - h_t) [t <= T-2])
    d = torch.sign(h.detach()[:, 1:] - h.detach()[:, :-1])
    want = torch.zeros_like(h)
    want[:, 1:] += d
    want[:, :-1] -= d
    torch.testing.assert_close(grad, lam / 2 * want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: lam * temporal_l1(t), (h,), eps=1e-6, atol=1e-7)


def test_temporal_l1_loss_adds_to_cross_entropy_per_layer():
    gen = torch.Generator().manual_seed(1)
    logits, y = torch.randn(4, 3, generator=gen), torch.tensor([0, 2, 1, 1])
    h1, h2 = torch.randn(4, 6, 2, generator=gen), torch.randn(4, 6, 5, generator=gen)
    ce = nn.functional.cross_entropy(logits, y)
    got = TemporalL1(0.1)(SequenceOutput(logits, (h1, h2)), y, None)
    torch.testing.assert_close(got, ce + 0.1 * (temporal_l1(h1) + temporal_l1(h2)))
    torch.testing.assert_close(TemporalL1(0.0)((logits, h1), y, None), ce)
    torch.testing.assert_close(TemporalL1(0.1, CrossEntropy(0.2))((logits, h1), y, None),
                               nn.functional.cross_entropy(logits, y, label_smoothing=0.2) + 0.1 * temporal_l1(h1))


# ---- fixed-point rounding --------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(int_bits=st.integers(1, 12), frac_bits=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_fixed_point_values_on_the_grid(int_bits, frac_bits, seed):
    fmt = QFormat(int_bits, frac_bits) if int_bits + frac_bits >= 2 else QFormat(2, 0)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(200, generator=gen, dtype=torch.float64) * 2 ** fmt.int_bits).requires_grad_()
    q = fixed_point_ste(x, fmt)
    k = q.detach() / fmt.step
    assert torch.equal(k, torch.round(k))  # on the grid k 2^-n
    lo, hi = -2 ** (fmt.bits - 1), 2 ** (fmt.bits - 1) - 1
    assert int(k.min()) >= lo and int(k.max()) <= hi  # saturating, (m+n)-bit signed
    inside = (x.detach() / fmt.step > lo) & (x.detach() / fmt.step < hi)
    assert torch.all((q.detach() - x.detach())[inside].abs() <= fmt.step / 2 + 1e-12)  # nearest level
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_rounding_puts_hidden_states_on_the_grid(kind):
    _, layer = _layer(kind, theta=0.05)
    fmt = QFormat(4, 6)
    x = torch.randn(3, 9, 3, dtype=torch.float64)
    with delta_training(layer, DeltaTrainSpec(rounding=fmt)):
        y, _ = layer(x)
    k = y / fmt.step
    assert torch.equal(k, torch.round(k))
    y_plain, _ = layer(x)
    assert not torch.equal(y, y_plain)  # the block ended: back to the float layer


# ---- the training-mode forward ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("theta", [0.0, 0.1, 0.4])
def test_training_forward_equals_inference_and_counts_the_same(kind, theta):
    _, layer = _layer(kind, layers=2, theta=theta)
    x = torch.cumsum(0.2 * torch.randn(2, 12, 3, dtype=torch.float64), dim=1)
    with record_counts(layer) as rec:
        y, state = layer(x)
    with delta_training(layer), record_counts(layer) as rec2:
        y2, state2 = layer(x)
    torch.testing.assert_close(y2, y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state2.h_n, state.h_n, rtol=1e-10, atol=1e-12)
    assert state2.counts == state.counts and rec2.total() == rec.total()
    for a, b in zip(state.layers, state2.layers):  # the memories and accumulators carry on alike
        torch.testing.assert_close(b.acc_x, a.acc_x, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b.acc_h, a.acc_h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_training_forward_gradients_at_zero_threshold_are_torchs(kind):
    ref, layer = _layer(kind, theta=0.0)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    (g_ref, *gw_ref) = torch.autograd.grad(ref(x)[0].square().sum(), [x, *ref.parameters()])
    with delta_training(layer):
        (g, *gw) = torch.autograd.grad(layer(x)[0].square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(g, g_ref)
    for a, b in zip(gw, gw_ref):
        torch.testing.assert_close(a, b)


def test_threshold_gradient_is_straight_through():
    """Above zero threshold, every input step gets the gradient it would get if it were sent: the
    gradient of a plain GRU evaluated at the memories, passed to x unchanged."""
    ref, layer = _layer("GRU", theta=0.5)
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    with torch.no_grad(), delta_training(layer):
        layer(x)
    # the memories the layer used: rebuild them with the thresholding rule
    x_hat, hats = torch.zeros(1, 3, dtype=torch.float64), []
    for t in range(6):
        send = (x[:, t] - x_hat).abs() > 0.5
        x_hat = torch.where(send, x[:, t], x_hat)
        hats.append(x_hat)
    xh = torch.stack(hats, 1).requires_grad_()
    layer.theta_h = 0.0  # isolate the input side
    xr = x.clone().requires_grad_()
    with delta_training(layer):
        y = layer(xr)[0]
    y_ref = ref(xh)[0]
    torch.testing.assert_close(y, y_ref)
    (g,) = torch.autograd.grad(y.sum(), xr)
    (g_ref,) = torch.autograd.grad(y_ref.sum(), xh)
    torch.testing.assert_close(g, g_ref)
    assert bool((g != 0).all())  # no step is cut off, held or not


def test_noise_only_in_training_mode():
    _, layer = _layer("GRU", theta=0.1)
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    y0, _ = layer.eval()(x)
    with delta_training(layer, DeltaTrainSpec(noise_std=0.1)):
        y_eval, _ = layer(x)
        torch.manual_seed(3)
        y_a, _ = layer.train()(x)
        torch.manual_seed(3)
        y_b, _ = layer(x)
    torch.testing.assert_close(y_eval, y0)
    assert not torch.allclose(y_a, y0) and torch.equal(y_a, y_b)  # noisy, and seeded by the global RNG


def test_trained_lambda_lowers_hidden_occupancy():
    """A few epochs with lambda > 0 send fewer hidden deltas than with lambda = 0 (same seed, data, steps)."""
    gen = torch.Generator().manual_seed(0)
    n, steps = 96, 24
    y = torch.randint(0, 2, (n,), generator=gen)
    drift = (2.0 * y - 1)[:, None, None] * 0.05
    x = torch.cumsum(drift + 0.05 * torch.randn(n, steps, 2, generator=gen), dim=1).float()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]

    def occupancy(lam):
        torch.manual_seed(0)
        model = DeltaClassifier(DeltaGRU(2, 16, batch_first=True, theta_x=0.02, theta_h=0.02), nn.Linear(16, 2))
        train_delta(model, batches, LoopConfig(epochs=6, seed=0), lam=lam,
                    optimizer=lambda p: torch.optim.Adam(p, 1e-2), progress=False)
        with torch.no_grad(), record_counts(model) as rec:
            model.eval()(x)
        assert model.rnn._layer_runner is None  # the training mode ended with the run
        return rec.total().h_occupancy

    base, sparse = occupancy(0.0), occupancy(0.2)
    assert sparse < 0.7 * base, (base, sparse)


def test_train_delta_records_its_options(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, 2, generator=gen), torch.randint(0, 2, (8,), generator=gen)
    model = DeltaClassifier(DeltaGRU(2, 4, batch_first=True, theta_x=0.1, theta_h=0.1), nn.Linear(4, 2))
    hist = train_delta(model, [(x, y)], LoopConfig(epochs=1), lam=0.01, out_dir=tmp_path, progress=False)
    assert len(hist) == 1 and math.isfinite(hist[0]["loss"])
    with pytest.raises(ConfigError, match="delta_lam"):  # resuming with another lambda is refused
        train_delta(model, [(x, y)], LoopConfig(epochs=2), lam=0.02, out_dir=tmp_path, resume=True, progress=False)


# ---- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_lambda(lam):
    with pytest.raises(ConfigError, match="TemporalL1.lam"):
        TemporalL1(lam)


@pytest.mark.parametrize("kwargs", [{"noise_std": -1.0}, {"noise_std": float("nan")}, {"rounding": 8},
                                    {"rounding": "Q8.8"}])
def test_bad_spec(kwargs):
    with pytest.raises(ConfigError, match="DeltaTrainSpec"):
        DeltaTrainSpec(**kwargs)


@pytest.mark.parametrize("args", [(0, 8), (8, -1), (1, 0), (20, 20), (8.0, 8)])
def test_bad_qformat(args):
    with pytest.raises(ConfigError, match="QFormat"):
        QFormat(*args)


def test_bad_uses():
    with pytest.raises(ConfigError, match="no delta layer"):
        with delta_training(nn.GRU(2, 3)):
            pass
    _, layer = _layer("GRU")
    with pytest.raises(ConfigError, match="already inside"):
        with delta_training(layer), delta_training(layer, DeltaTrainSpec(noise_std=0.1)):
            pass
    assert layer._layer_runner is None  # restored on error
    with delta_training(layer):
        with delta_training(layer):  # the same spec nests (an evaluation hook inside train_delta)
            pass
        assert layer._layer_runner is not None  # the inner block left the outer's mode in place
    assert layer._layer_runner is None
    with pytest.raises(ConfigError, match="returns? \\(logits, hidden"):
        TemporalL1(0.1)(torch.randn(2, 3), torch.tensor([0, 1]), None)
    with pytest.raises(ConfigError, match="batch, time, hidden"):
        TemporalL1(0.1)((torch.randn(2, 3), torch.randn(2, 3)), torch.tensor([0, 1]), None)
    with pytest.raises(ConfigError, match="batch_first"):
        DeltaClassifier(DeltaGRU(2, 3), nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="theta_h"):
        DeltaGRU(2, 3, theta_h=float("nan"))
    with pytest.raises(DataError, match="NaN"):  # rounding refuses non-finite activations
        fixed_point_ste(torch.tensor([1.0, float("nan")]), QFormat(8, 8))

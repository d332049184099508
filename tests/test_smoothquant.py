"""SmoothQuant's migration for linear layers fed by a LayerNorm (``PTQConfig(equalize=True)``).

Oracles: the float model (the rescaled prepared model computes the same function), the quantized error
without the migration (it must drop on activations with outlier channels), and the graph (a LayerNorm that
also feeds a residual add is left alone)."""

import warnings

import torch
from torch import nn

from lowbit.graph.equalize import find_norm_groups
from lowbit.ptq import PTQConfig, prepare, quantize


class PreLN(nn.Module):
    """A pre-LN transformer block's two LayerNorm-fed parts: three projections of ln1, an MLP on ln2."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.ln1, self.q, self.k, self.v = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ln2, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.q(h) * torch.sigmoid(self.k(h)) + self.v(h)
        return x + self.down(torch.relu(self.up(self.ln2(x))))


class PostLN(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        h = self.ln(x)
        return h + self.fc(h)  # the LayerNorm's output is the residual stream too


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = PreLN().eval()
    with torch.no_grad():  # a few outlier channels, as LLM activations have them
        for ln in (m.ln1, m.ln2):
            ln.weight[:3] = torch.tensor([40.0, -25.0, 30.0])
            ln.bias.uniform_(-0.2, 0.2)
    return m


def _error(q: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((q(x) - model(x)).pow(2).mean() / model(x).pow(2).mean())


def test_pre_ln_groups_are_found_and_post_ln_is_left_alone():
    x = torch.randn(2, 5, 32)
    groups = find_norm_groups(prepare(_model(), PTQConfig(), (x,)))
    assert {(g.norm, tuple(sorted(g.consumers))) for g in groups} == {("ln1", ("k", "q", "v")), ("ln2", ("up",))}
    assert find_norm_groups(prepare(PostLN().eval(), PTQConfig(), (x,))) == []


def test_the_migration_keeps_the_float_function():
    from lowbit.calibration import quantizers_off
    from lowbit.graph.equalize import smooth_norms

    model, x = _model(), torch.randn(16, 5, 32)
    p = prepare(model, PTQConfig(), (x[:2],))
    before = p.ln1.weight.clone()
    assert len(smooth_norms(p, [x])) == 2
    assert not torch.allclose(p.ln1.weight, before)
    with torch.no_grad(), quantizers_off(p):
        torch.testing.assert_close(p(x), model(x), rtol=1e-4, atol=1e-4)


def test_the_migration_cuts_the_error_of_outlier_channels():
    torch.manual_seed(1)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64)).eval()
    with torch.no_grad():
        model[0].weight[:4] = torch.tensor([60.0, -40.0, 50.0, 30.0])  # the per-tensor grid is set by these
        model[1].weight[:, :4] *= 0.02  # ... which, as in LLMs, weigh little in the output
    x = torch.randn(64, 5, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = quantize(model, [x[:32]], PTQConfig())
        smooth = quantize(model, [x[:32]], PTQConfig(equalize=True))
    e_plain, e_smooth = _error(plain, model, x[32:]), _error(smooth, model, x[32:])
    assert e_plain > 0.05 and e_smooth < 0.01 * e_plain, (e_plain, e_smooth)  # measured: 0.11 -> 1.4e-4


def test_equalization_ranges_of_a_linear_on_sequences_are_per_feature():
    """A linear layer's channels are its last dimension, also on (N, T, C) inputs (not dimension 1, T)."""
    from lowbit.graph.equalize import channel_ranges

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(6, 5, 8)
    p = prepare(model, PTQConfig(), (x[:2],))
    r = channel_ranges(p, ["0"], [x])["0"]
    with torch.no_grad():
        want = torch.relu(model[0](x)).reshape(-1, 16).amax(0)
    torch.testing.assert_close(r, want)

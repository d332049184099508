"""Channel equalization (lowbit.graph.equalize): function kept, ranges equalized, error reduced, integer-exact."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.diagnostics import sqnr_db
from lowbit.errors import ConfigError
from lowbit.graph.equalize import channel_ranges, equalize, find_pairs
from lowbit.integer.lower import to_integer
from lowbit.ptq import PTQConfig, equalize_channels, prepare, quantize, quantizers_off


class MBConv(nn.Module):
    """Stem -> expand 1x1 -> depthwise 3x3 -> project 1x1 (+ skip) -> head: the pairs of a MobileNet block,
    with BatchNorms whose gains spread the channel ranges over ``spread`` decades."""

    def __init__(self, spread: float = 2.0, act=F.relu6, seed: int = 0, block_only: bool = False) -> None:
        super().__init__()
        self.block_only = block_only  # output the project conv's (no skip, no head): its error is the block's
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self._build(spread, act)

    def _build(self, spread: float, act) -> None:
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.expand, self.bn1 = nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.dw, self.bn2 = nn.Conv2d(24, 24, 3, groups=24, bias=False), nn.BatchNorm2d(24)
        self.project, self.bn3 = nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5)
        self.act = act
        for bn in (self.bn0, self.bn1, self.bn2, self.bn3):
            bn.weight.data = 10 ** (spread * (torch.rand(bn.num_features) - 0.8))
        # the next layer undoes the gains: every channel matters, whatever its range (as after training)
        self.dw.weight.data /= self.bn1.weight.data.reshape(-1, 1, 1, 1)
        self.project.weight.data /= self.bn2.weight.data.reshape(1, -1, 1, 1)
        for bn in (self.bn0, self.bn1, self.bn2, self.bn3):
            bn.bias.data = 0.1 * torch.randn(bn.num_features)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x):
        a = self.act
        x = a(self.bn0(self.stem(x)))
        y = a(self.bn1(self.expand(x)))
        y = F.pad(y, (1, 1, 1, 1))  # TF-style explicit padding on the way: channel-preserving
        y = a(self.bn2(self.dw(y)))
        if self.block_only:
            return self.bn3(self.project(y))
        x = x + self.bn3(self.project(y))
        return self.head(torch.flatten(self.pool(x), 1))


def _calib(n=64, seed=1):
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_pairs_of_a_mobilenet_block():
    g = prepare(MBConv(), PTQConfig(), (_calib(2),))
    pairs = {(p.producer, p.consumer): p.free for p in find_pairs(g)}
    # the stem feeds the expand conv and the skip add: two users, no pair; project has a residual: no pair
    assert pairs == {("expand", "dw"): True, ("dw", "project"): False}


@settings(max_examples=15, deadline=None)
@given(st.floats(0.5, 3.0), st.sampled_from([F.relu, F.relu6, torch.nn.Identity()]), st.floats(0.0, 1.0),
       st.integers(0, 10_000))
def test_equalization_keeps_the_float_function(spread, act, alpha, seed):
    model = MBConv(spread, act, seed)
    x = _calib(32, seed)
    g = prepare(model, PTQConfig(), (x[:2],))
    equalize(g, [x], alpha)
    with quantizers_off(g), torch.no_grad():
        assert torch.allclose(g(x), model(x), atol=1e-4, rtol=1e-4)


def test_free_pair_channels_all_reach_the_widest_range():
    model, x = MBConv(3.0), _calib()
    g = prepare(model, PTQConfig(), (x[:2],))
    before = channel_ranges(g, ["expand"], [x])["expand"]
    equalize(g, [x])
    after = channel_ranges(g, ["expand"], [x])["expand"]
    assert float(before.min() / before.max()) < 0.05  # the BatchNorm gains did spread them
    live = before > 1e-3 * before.max()
    assert torch.allclose(after[live], before.max().expand(int(live.sum())), rtol=1e-4)


def test_equalization_lowers_the_quantization_error():
    model, x, test = MBConv(3.0, block_only=True), _calib(), _calib(128, seed=7)
    with torch.no_grad():
        ref = model(test)
        plain = quantize(model, [x], PTQConfig(bias_correction=False))(test)
        half = quantize(model, [x], PTQConfig(bias_correction=False, equalize=True))(test)
        full = quantize(model, [x], PTQConfig(bias_correction=False, equalize=True, equalize_alpha=1.0))(test)
    # seeds 0..7 gain +18 to +28 dB (alpha 1) and +10 to +23 dB (alpha 0.5) over about 20-30 dB
    assert sqnr_db(ref, full) > sqnr_db(ref, plain) + 10.0
    assert sqnr_db(ref, half) > sqnr_db(ref, plain) + 8.0


def test_equalized_model_lowers_to_a_bit_exact_integer_model():
    model, x = MBConv(3.0), _calib()
    q = quantize(model, [x], PTQConfig(equalize=True))
    im = to_integer(q, (x[:2],))
    test = _calib(16, seed=3)
    with torch.no_grad():
        assert torch.equal(im(test), q(test))


def test_alpha_out_of_range_and_unprepared_model():
    with pytest.raises(ConfigError, match="equalize_alpha"):
        PTQConfig(equalize=True, equalize_alpha=1.5)
    with pytest.raises(ConfigError, match="prepare"):
        equalize_channels(MBConv(), [_calib(2)])


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if h.sum() > 0:  # data-dependent control flow
            h = h * 1.0
        return self.fc2(h)


def test_module_swapped_model_is_left_unequalized_with_a_warning():
    x = torch.randn(16, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = prepare(Untraceable().eval(), PTQConfig(), (x[:2],))
    with pytest.warns(UserWarning, match="left unequalized"):
        assert equalize_channels(g, [x]) == 0

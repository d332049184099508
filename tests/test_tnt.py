"""TNT ternarization (two scales) as a QuantSpec: against the functional op, cosine, PTQ -> integer, QAT, bad input."""

import pytest
import torch

from lowbit import zoo
from lowbit.cost.profile import _unified_widths
from lowbit.data.datasets import fashion_mnist
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, PowerOfTwo, Ternary
from lowbit.functional import ternarize, tnt_integer_codes
from lowbit.granularity import PerChannel, PerTensor, rows
from lowbit.integer import to_integer
from lowbit.nn.unified import unified_modules
from lowbit.ptq import PTQConfig, quantize
from lowbit.qat import QATConfig, TrainConfig, convert_qat, fold_trained_bn, prepare_qat, train
from lowbit.spec import QuantSpec, fake_quant, lsq_range, solve_weight, weight_codes

TNT = QuantSpec(Ternary(), PerChannel(0), ternary="tnt")
EXACT = QuantSpec(Ternary(), PerChannel(0))
ACT8 = QuantSpec(IntFormat(8, signed=False))


def _asymmetric(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Weights whose positive and negative halves have different spreads, per output channel."""
    w = torch.randn(shape, generator=gen)
    pos_gain = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=gen) * 3 + 0.2
    return torch.where(w > 0, w * pos_gain, w)


@pytest.mark.parametrize("shape,granularity", [((16, 8, 3, 3), PerChannel(0)), ((10, 37), PerChannel(0)),
                                               ((64,), PerTensor()), ((7, 5), PerTensor())])
def test_spec_weight_equals_the_functional_tnt_up_to_the_ratio_rounding(shape, granularity):
    spec = QuantSpec(Ternary(), granularity, ternary="tnt")
    gen = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        w = _asymmetric(gen, shape)
        ref = ternarize(w, granularity, "tnt")
        q = fake_quant(w, spec)
        assert torch.equal(torch.sign(q), ref.codes.float())  # the same support and signs
        r_q, r_ref = rows(q, granularity).double(), rows(ref.dequantize(), granularity).double()
        big = torch.maximum(ref.alpha_pos, ref.alpha_neg).double()
        err = (r_q - r_ref).abs().amax(dim=1)
        assert bool((err <= big / 254 * (1 + 1e-5)).all())
        # the larger scale is kept (to float rounding), the smaller one is m * s with m = round(127 * ratio)
        lo = torch.minimum(ref.alpha_pos, ref.alpha_neg).double()
        m_small = torch.round(127 * lo / big)
        pos_vals = torch.where(r_q > 0, r_q, torch.nan).nanmean(dim=1)
        neg_vals = torch.where(r_q < 0, -r_q, torch.nan).nanmean(dim=1)
        want_pos = torch.where(ref.alpha_pos.double() >= ref.alpha_neg.double(), big, m_small * big / 127)
        want_neg = torch.where(ref.alpha_neg.double() >= ref.alpha_pos.double(), big, m_small * big / 127)
        for got, want in ((pos_vals, want_pos), (neg_vals, want_neg)):
            ok = torch.isnan(got) | ((got - want).abs() <= 1e-6 * big)
            assert bool(ok.all())


def test_integer_codes_are_int8_with_the_larger_side_at_127():
    gen = torch.Generator().manual_seed(3)
    w = _asymmetric(gen, (32, 50))
    grid = solve_weight(w, TNT)
    codes = weight_codes(w, TNT, grid)
    assert codes.abs().max() == 127 and bool((codes == codes.round()).all())
    assert bool((torch.maximum(grid.code_pos, grid.code_neg) == 127).all())
    levels = set(grid.code_pos.tolist()) | set((-grid.code_neg).tolist())
    assert set(codes.unique().tolist()) - {0.0} == levels - {0.0}
    assert TNT.code_bits == 8 and EXACT.code_bits == 2 and TNT.label() == "ternary-tnt"


def test_integer_codes_edge_cases():
    scale, m_pos, m_neg = tnt_integer_codes(torch.tensor([0.0, 2.0, 1.0, 1.0, 0.001]),
                                            torch.tensor([0.0, 0.0, 1.0, 0.5, 1.0]))
    assert torch.equal(scale, torch.tensor([1.0, 2.0 / 127, 1.0 / 127, 1.0 / 127, 1.0 / 127]))
    assert torch.equal(m_pos, torch.tensor([127.0, 127.0, 127.0, 127.0, 0.0]))  # 0.001 < 1/254: rounds to 0
    assert torch.equal(m_neg, torch.tensor([127.0, 0.0, 127.0, 64.0, 127.0]))  # round(63.5) = 64 (half to even)
    # an all-zero block stays zero; a one-signed block has no codes of the other sign
    w = torch.stack([torch.zeros(9), torch.rand(9, generator=torch.Generator().manual_seed(1)) + 0.1])
    q = fake_quant(w, TNT)
    assert torch.equal(q[0], torch.zeros(9)) and bool((q[1] >= 0).all()) and bool((q[1] > 0).any())


def test_tnt_cosine_is_at_least_the_single_scale_exact_ternary():
    gen = torch.Generator().manual_seed(0)
    w = _asymmetric(gen, (64, 144))
    cos = torch.nn.functional.cosine_similarity
    c_tnt, c_exact = cos(w, fake_quant(w, TNT), dim=1), cos(w, fake_quant(w, EXACT), dim=1)
    assert bool((c_tnt >= c_exact - 1e-6).all())
    assert float((c_tnt - c_exact).mean()) > 0.005  # the two scales help on asymmetric weights


@pytest.fixture(scope="module")
def data():
    return fashion_mnist("train").take(32), fashion_mnist("test").take(300)


def test_ptq_cnn_integer_model_equals_the_simulation_bit_for_bit(data):
    calib, test = data
    sim = quantize(zoo.pretrained("cnn"), [calib.x], PTQConfig(TNT, ACT8))
    im = to_integer(sim, (calib.x[:2],))
    with torch.no_grad():
        a, b = sim(test.x), im(test.x)
    assert torch.equal(a, b)
    assert float((b.argmax(1) == test.y).float().mean()) > 0.85  # 92.3% measured on these 300
    # the TNT layers run as int8 codes on the int8 engine, not as 2-bit ternary codes
    tnt_nodes = [n for n in im.nodes if n.source in ("conv2", "fc1")]  # conv1 and fc2: the 8-bit first and last
    assert len(tnt_nodes) == 2
    for n in tnt_nodes:
        assert n.op.attrs["weight_bits"] == 8 and "weight_codes" not in n.op.attrs  # plain int8 codes
        assert n.op.tensors["weight"].dtype == torch.int8 and n.op.tensors["weight"].abs().max() == 127
    for name, u in unified_modules(sim):
        if u.weight_quant is not None and u.weight_quant.tnt:
            assert _unified_widths(u)[0] == 8  # the cost model counts 8-bit codes
            w = u.weight.detach()
            assert torch.equal(u.weight_quant(w), fake_quant(w, TNT)), name


def test_qat_step_changes_the_weights_and_the_tnt_scales(data):
    calib, test = data
    train_set = fashion_mnist("train").take(256)
    q = prepare_qat(zoo.pretrained("mlp"), QATConfig(TNT, ACT8), train_set.x[:128])
    tnt = [(n, u) for n, u in unified_modules(q) if u.weight_quant is not None and u.weight_quant.tnt]
    assert tnt and all(u.weight_quant.mode == "live" for _, u in tnt)
    before = {n: (u.weight.detach().clone(), u.weight_quant(u.weight).detach().clone()) for n, u in tnt}
    train(q, train_set, TrainConfig(epochs=1, lr=0.01, augment=False), progress=False)
    for n, u in tnt:
        w0, q0 = before[n]
        assert not torch.equal(u.weight.detach(), w0)
        q1 = u.weight_quant(u.weight).detach()
        assert torch.equal(q1, fake_quant(u.weight.detach(), TNT))  # recomputed from the latent weight
        assert not torch.equal(q1, q0)
    convert_qat(q)
    im = to_integer(q, (calib.x[:2],))
    with torch.no_grad():
        assert torch.equal(q(test.x), im(test.x))


def test_bad_input_names_the_fix():
    with pytest.raises(ConfigError, match=r"applies to Ternary\(\) only.*QuantSpec\(Ternary\(\), PerChannel\(0\), "
                                          r"ternary='tnt'\)"):
        QuantSpec(IntFormat(4), PerChannel(0), ternary="tnt")
    with pytest.raises(ConfigError, match="applies to Ternary"):
        QuantSpec(PowerOfTwo(2), ternary="tnt")
    with pytest.raises(ConfigError, match="'exact', 'twn' or 'tnt'"):
        QuantSpec(Ternary(), ternary="ttq")
    with pytest.raises(ConfigError, match="recomputed from the weights"):
        lsq_range(TNT)


@pytest.mark.parametrize("method", ["faq", "lsq"])
def test_folding_a_trained_batchnorm_with_negative_gamma_keeps_the_tnt_weights(method):
    """FAQ freezes the TNT grid before training: the fold scales it by |g| and swaps m+ and m- where g < 0;
    LSQ-style QAT keeps TNT live, and the fold leaves it to convert to solve the folded weight again."""
    x = fashion_mnist("train").take(64).x
    q = prepare_qat(zoo.pretrained("cnn"), QATConfig(TNT, ACT8, method=method, bn_freeze_steps=0), x)
    u = dict(unified_modules(q))["conv2"]
    assert u.bn is not None and u.weight_quant.tnt
    with torch.no_grad():
        u.bn.weight[::2] *= -1  # half the channels flip sign
    fold_trained_bn(q)
    w = u.weight.detach()
    if method == "lsq":
        assert u.weight_quant.mode == "live"
        u.weight_quant.freeze(u.weight)
    got, want = u.weight_quant.fake(w), fake_quant(w, TNT)
    assert torch.equal(torch.sign(got), torch.sign(want))
    assert torch.allclose(got, want, rtol=1e-5, atol=0)

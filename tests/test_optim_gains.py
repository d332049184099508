"""Per-layer fractional length by power-of-two gains (W = g w), and the last FC layer's output in fixed point
(paper B's bound): the gained model computes the plain model's function, float SGD on it takes plain SGD's
steps on W (the oracle: torch.optim.SGD on the plain model), and fixed_point_logits rounds the logits and the
per-example error p - y onto the grid (float64 oracle), zero gradient where the clamp bit."""

import copy

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.optim import FixedPoint, KahanSGD, PowerOfTwoGain, fixed_point_logits, gain_param_groups, round_to_storage
from lowbit.optim import with_weight_gains
from lowbit.zoo.models import LeNetBN


def test_gains_keep_the_function_and_leave_the_caller_model_alone():
    torch.manual_seed(0)
    plain = LeNetBN(8, 16, 32).eval()
    before = copy.deepcopy(plain.state_dict())
    gained = with_weight_gains(plain).eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(gained(x), plain(x))  # g is a power of two: g (W / g) == W exactly
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    g = gained.fc1.parametrizations.weight[0]
    assert isinstance(g, PowerOfTwoGain) and g.gain == 2.0 ** -5  # fan-in 16*7*7 = 784, sqrt 28 = 2^4.81
    assert gained.conv1.parametrizations.weight[0].gain == 2.0 ** -2  # fan-in 25, sqrt 5 = 2^2.32
    assert float(gained.fc1.parametrizations.weight.original.detach().abs().max()) <= 2 ** 0.5


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_float_sgd_on_the_gained_model_takes_plain_sgd_steps(weight_decay):
    torch.manual_seed(1)
    plain = LeNetBN(8, 16, 32)
    gained = with_weight_gains(plain)
    decay = [p for p in plain.parameters() if p.ndim > 1]
    rest = [p for p in plain.parameters() if p.ndim <= 1]
    ref = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9)
    opt = torch.optim.SGD(gain_param_groups(gained, 0.05, weight_decay), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
        for model, o in ((plain, ref), (gained, opt)):
            o.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            o.step()
    got = {k: v for k, v in gained.named_parameters()}
    for name, p in plain.named_parameters():
        mod, _, leaf = name.rpartition(".")
        if leaf == "weight" and f"{mod}.parametrizations.weight.original" in got:
            w = gained.get_submodule(mod).weight
        else:
            w = got[name]
        torch.testing.assert_close(w, p, rtol=1e-4, atol=1e-6)


def test_kahan_on_fixed8_gained_weights_moves_the_first_linear_layer():
    torch.manual_seed(0)
    gained = with_weight_gains(LeNetBN(8, 16, 32))
    round_to_storage(gained, FixedPoint(8, 6))
    w = gained.fc1.parametrizations.weight.original
    start = w.detach().clone()
    opt = KahanSGD(gain_param_groups(gained, 0.01), lr=0.01, storage=FixedPoint(8, 6))
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(gained(x), y).backward()
        opt.step()
    assert not torch.equal(w, start)
    assert torch.equal(torch.round(w * 64) / 64, w)  # still 8-bit fixed point values


def _oracle_round(z: torch.Tensor, fmt: FixedPoint) -> torch.Tensor:
    z64 = z.double()
    return torch.clamp(torch.round(z64 * 2 ** fmt.frac) / 2 ** fmt.frac, fmt.min_value, fmt.max_value)


def test_fixed_point_logits_round_values_and_the_per_example_error():
    fmt = FixedPoint(7, 4)  # step 1/16, range [-4, 4 - 1/16]
    z = (torch.randn(6, 10, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 10, (6,))
    out = fixed_point_logits(z, fmt)
    torch.testing.assert_close(out, _oracle_round(z.detach(), fmt), rtol=0, atol=0)
    nn.functional.cross_entropy(out, y).backward()
    p = torch.softmax(out.detach(), 1)
    delta = p - nn.functional.one_hot(y, 10).double()
    inside = (z.detach() >= fmt.min_value) & (z.detach() <= fmt.max_value)
    want = torch.where(inside, _oracle_round(delta, fmt), torch.zeros_like(delta)) / 6
    torch.testing.assert_close(z.grad, want, rtol=0, atol=1e-15)
    assert bool((~inside).any()) and bool((z.grad[~inside] == 0).all())


def test_too_few_fractional_bits_zero_the_non_target_errors():
    n = 100  # p_k ~ 1/100 < half of 2^-4: every non-target error rounds to 0 (the bound's constraint (b))
    z = torch.zeros(3, n, requires_grad=True)
    nn.functional.cross_entropy(fixed_point_logits(z, FixedPoint(8, 4)), torch.tensor([0, 1, 2])).backward()
    grad = z.grad * 3
    assert int((grad != 0).sum()) == 3 and bool((grad.diagonal() < 0).all())
    with pytest.raises(ConfigError, match="FixedPoint"):
        fixed_point_logits(z, "fixed8.4")


def test_lowprec_zoo_round_trip_stores_8_bit_codes_and_refuses_foreign_values(tmp_path):
    import numpy as np

    from lowbit.errors import CheckpointError
    from lowbit.zoo.lowprec_zoo import build, pretrained_lowprec, save_lowprec

    torch.manual_seed(3)
    model = build()
    fmt = FixedPoint(8, 6)
    with pytest.raises(CheckpointError, match="outside fixed8.6"):
        save_lowprec("kahan-cnn-fixed8", model, fmt, {}, tmp_path)
    round_to_storage(model, fmt)
    model.bn1.running_mean.normal_()  # buffers are kept as they are
    path = save_lowprec("kahan-cnn-fixed8", model, fmt, {"test_accuracy": 0.5}, tmp_path)
    with np.load(path, allow_pickle=False) as arch:
        assert arch["fc1.parametrizations.weight.original"].dtype == np.int8
        assert arch["bn1.running_mean"].dtype == np.float32
    back = pretrained_lowprec("kahan-cnn-fixed8", tmp_path)
    for (k, v), w in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(v, w), k
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back(x), model.eval()(x))
    with pytest.raises(CheckpointError, match="no shipped low-precision model"):
        pretrained_lowprec("kahan-cnn-fixed4", tmp_path)


def test_storage_sgd_builds_each_kind_over_the_gain_groups():
    from lowbit.optim import KahanSGD, LowPrecisionSGD, storage_sgd

    torch.manual_seed(0)
    model = with_weight_gains(LeNetBN(8, 16, 32))
    assert type(storage_sgd(model, "float", 0.1)) is torch.optim.SGD
    opt = storage_sgd(model, "kahan", 0.1, 0.9, "fixed8.6")
    w = model.fc1.parametrizations.weight.original
    assert isinstance(opt, KahanSGD) and torch.equal(torch.round(w * 64) / 64, w)  # rounded onto the storage
    assert opt.param_groups[2]["lr"] == pytest.approx(0.1 * 2 ** 10)  # fc1: g = 2^-5, lr / g^2
    st = storage_sgd(model, "stochastic", 0.1, storage="bf16", seed=3)
    assert isinstance(st, LowPrecisionSGD) and st.generator.initial_seed() == 3
    with pytest.raises(ConfigError, match="float, kahan, nearest, stochastic"):
        storage_sgd(model, "adam", 0.1)

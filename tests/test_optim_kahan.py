"""Low-precision SGD (paper B): Kahan compensation keeps sub-LSB updates that plain rounding loses; stochastic
rounding is unbiased; momentum and weight decay as torch.optim.SGD; exact state_dict round trip and resume
through lowbit.train; bad inputs refused; the last-FC bit-width bound."""

import io
import math

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError, DataError
from lowbit.optim import (
    FixedPoint,
    Float16Storage,
    Kahan,
    KahanSGD,
    LowPrecision,
    LowPrecisionSGD,
    is_representable,
    last_fc_bound,
    min_bits_last_fc,
    round_storage,
    round_to_storage,
)
from lowbit.training import Hooks, LoopConfig, load_checkpoint, train


def param(*values: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float32))


def run(opt: torch.optim.Optimizer, p: nn.Parameter, grad: float, steps: int) -> None:
    for _ in range(steps):
        p.grad = torch.full_like(p, grad)
        opt.step()


def test_tiny_updates_vanish_without_compensation_and_accumulate_with_it():
    storage = FixedPoint(8, 4)  # LSB 1/16; range -8 .. 7.9375
    lr, grad, steps = 0.1, 0.05, 1000  # |u| = 0.005 < LSB/2 = 0.03125
    a, b = param(3.0, 1.0, -0.5), param(3.0, 1.0, -0.5)
    plain, kahan = LowPrecisionSGD([a], lr, storage=storage), KahanSGD([b], lr, storage=storage)
    run(plain, a, grad, steps)
    run(kahan, b, grad, steps)
    assert torch.equal(a.detach(), torch.tensor([3.0, 1.0, -0.5]))  # every update rounded away
    exact = torch.tensor([3.0, 1.0, -0.5], dtype=torch.float64) - steps * lr * grad
    assert (b.detach().double() - exact).abs().max() <= storage.lsb
    assert bool(is_representable(b, storage).all())
    c = kahan.state[b]["compensation"]
    assert (b.detach().double() + c.double() - exact).abs().max() < 1e-5  # p + c is the exact sum
    assert c.abs().max() <= storage.lsb / 2


def test_bf16_storage_likewise():
    a, b = param(1.0), param(1.0)
    plain, kahan = LowPrecisionSGD([a], 1.0, storage="bf16"), KahanSGD([b], 1.0, storage=Float16Storage("bf16"))
    run(plain, a, -1e-4, 1000)  # bf16 ulp at 1 is 2^-7: 1e-4 is far below half of it
    run(kahan, b, -1e-4, 1000)
    assert float(a.detach()) == 1.0
    b = float(b.detach())
    assert abs(b - 1.1) <= 2.0 ** -7
    assert b == float(torch.tensor(b).to(torch.bfloat16))


def test_fp16_range_saturates_and_subnormals_hold():
    x = torch.tensor([1e6, -1e6, 65519.0, 2.0 ** -24, 2.0 ** -26, 0.1])
    r = round_storage(x, "fp16")
    assert r.tolist()[:4] == [65504.0, -65504.0, 65504.0, 2.0 ** -24]
    assert r[4] == 0 and r[5] == torch.tensor(0.1).half().float()


def test_round_to_nearest_matches_torch_casts_and_fixed_point_grid():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(round_storage(x, "bf16"), x.bfloat16().float())
    assert torch.equal(round_storage(x, "fp16"), x.half().float())
    q = round_storage(x, FixedPoint(6, 3))
    assert torch.equal(q, torch.clamp(torch.round(x * 8), -32, 31) / 8)


def test_stochastic_rounding_is_unbiased_and_uses_only_its_generator():
    storage = FixedPoint(8, 4)
    n, steps, frac = 4000, 50, 0.3  # each update 0.3 LSB
    p = nn.Parameter(torch.zeros(n))
    rng = torch.get_rng_state()
    opt = LowPrecisionSGD([p], 1.0, storage=storage, rounding="stochastic", generator=torch.Generator().manual_seed(7))
    run(opt, p, -frac * storage.lsb, steps)
    assert torch.equal(torch.get_rng_state(), rng)
    mean_lsb = float(p.detach().mean()) / storage.lsb
    # expected 15 LSB; the mean's standard deviation is <= sqrt(steps / 4 / n) = 0.056 LSB
    assert abs(mean_lsb - steps * frac) < 0.5
    assert bool(is_representable(p, storage).all())
    nearest = nn.Parameter(torch.zeros(n))
    run(LowPrecisionSGD([nearest], 1.0, storage=storage), nearest, -frac * storage.lsb, steps)
    assert float(nearest.detach().abs().max()) == 0.0


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_and_weight_decay_match_torch_sgd_on_a_fine_storage(nesterov):
    gen = torch.Generator().manual_seed(1)
    w0 = round_storage(torch.rand(5, 4, generator=gen) - 0.5, FixedPoint(32, 24))
    grads = [0.1 * torch.randn(5, 4, generator=gen) for _ in range(20)]
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    ours = KahanSGD([a], 0.1, momentum=0.9, weight_decay=0.01, storage=FixedPoint(32, 24), nesterov=nesterov)
    ref = torch.optim.SGD([b], 0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert (a.detach() - b.detach()).abs().max() < 1e-6
    assert torch.allclose(ours.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"], atol=1e-6)


def test_state_dict_round_trip_continues_bit_identically():
    gen = torch.Generator().manual_seed(2)
    storage = FixedPoint(10, 6)
    w0 = round_storage(torch.rand(3, 3, generator=gen), storage)
    grads = [0.01 * torch.randn(3, 3, generator=gen) for _ in range(10)]
    for make in (lambda p: KahanSGD([p], 0.1, momentum=0.5, storage=storage),
                 lambda p: LowPrecisionSGD([p], 0.1, momentum=0.5, storage=storage, rounding="stochastic",
                                           generator=torch.Generator().manual_seed(3))):
        a = nn.Parameter(w0.clone())
        oa = make(a)
        for g in grads[:5]:
            a.grad = g.clone()
            oa.step()
        buf = io.BytesIO()
        torch.save({"p": a.detach().clone(), "opt": oa.state_dict()}, buf)
        saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # plain values only
        b = nn.Parameter(saved["p"])
        ob = make(b)
        ob.load_state_dict(saved["opt"])
        if isinstance(oa, KahanSGD):
            assert torch.equal(ob.state[b]["compensation"], oa.state[a]["compensation"])
            assert oa.state[a]["compensation"].abs().max() > 0
        for g in grads[5:]:
            a.grad, b.grad = g.clone(), g.clone()
            oa.step()
            ob.step()
        assert torch.equal(a.detach(), b.detach())


def test_state_of_another_storage_is_refused():
    a = param(0.5)
    sd = KahanSGD([a], 0.1, storage=FixedPoint(8, 4)).state_dict()
    with pytest.raises(ValueError, match="fixed8.4"):
        KahanSGD([param(0.5)], 0.1, storage="bf16").load_state_dict(sd)


class Stop(Exception):
    pass


def _stop(model, row):
    raise Stop


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    return round_to_storage(model, FixedPoint(12, 8))


def test_resume_through_lowbit_train_is_bit_identical(tmp_path):
    gen = torch.Generator().manual_seed(4)
    data = [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(4)]
    cfg = LoopConfig(epochs=2, seed=1)
    factory = Kahan(lr=0.05, momentum=0.9, weight_decay=1e-3, storage=FixedPoint(12, 8))
    a = _tiny(0)
    ha = train(a, data, cfg, optimizer=factory, out_dir=tmp_path / "a", progress=False)
    b = _tiny(0)
    with pytest.raises(Stop):
        train(b, data, cfg, optimizer=factory, out_dir=tmp_path / "b", hooks=Hooks(epoch_end=(_stop,)),
              progress=False)
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["optimizer"]["state"]
    assert any(float(s["compensation"].abs().max()) > 0 for s in state.values())
    c = _tiny(5)  # other weights: everything must come from the checkpoint
    hc = train(c, data, cfg, optimizer=factory, out_dir=tmp_path / "b", resume=True, progress=False)
    assert hc == ha
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(va, vc), k
    assert all(bool(is_representable(p, FixedPoint(12, 8)).all()) for p in c.parameters())
    with pytest.raises(ConfigError, match="storage"):  # resuming with another storage is refused
        train(round_to_storage(_tiny(0), FixedPoint(12, 7)), data, cfg, optimizer=Kahan(lr=0.05, momentum=0.9, weight_decay=1e-3,
                                                   storage=FixedPoint(12, 7)),
              out_dir=tmp_path / "b", resume=True, progress=False)


def test_low_precision_factory_trains():
    gen = torch.Generator().manual_seed(5)
    data = [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))]
    model = _tiny(0)
    hist = train(model, data, LoopConfig(epochs=1), progress=False,
                 optimizer=LowPrecision(lr=0.05, storage=FixedPoint(12, 8), rounding="stochastic", seed=3))
    assert math.isfinite(hist[0]["loss"])


@pytest.mark.parametrize("make, match", [
    (lambda: FixedPoint(0, 0), "bits=0 is out of range.*1..32"),
    (lambda: FixedPoint(33, 4), "bits=33 is out of range.*1..32"),
    (lambda: FixedPoint(8, 8), "frac=8 is out of range.*0..7"),
    (lambda: FixedPoint(8, -1), "frac=-1 is out of range.*0..7"),
    (lambda: FixedPoint(8.0, 2), "must be an integer"),
    (lambda: Float16Storage("fp8"), "'bf16' or 'fp16'"),
    (lambda: KahanSGD([param(0.5)], 0.0, storage="bf16"), r"lr=0.0 is out of range.*\(0, inf\)"),
    (lambda: KahanSGD([param(0.5)], -1, storage="bf16"), "lr=-1 is out of range"),
    (lambda: KahanSGD([param(0.5)], 0.1, momentum=1.0, storage="bf16"), r"momentum=1.0 is out of range.*\[0, 1\)"),
    (lambda: KahanSGD([param(0.5)], 0.1, storage="int8"), "unknown storage 'int8'"),
    (lambda: LowPrecisionSGD([param(0.5)], 0.1, storage="bf16", rounding="stochastic"), "explicit|generator="),
    (lambda: LowPrecisionSGD([param(0.5)], 0.1, storage="bf16", rounding="up"), "rounding must be one of"),
    (lambda: Kahan(lr=0.1, storge="bf16"), "did you mean 'storage'"),
    (lambda: Kahan(lr=float("nan")), "lr=nan is out of range"),
    (lambda: min_bits_last_fc(1), "num_classes=1 is out of range"),
    (lambda: min_bits_last_fc(10, 0.05), r"p_target=0.05 is out of range.*\(0.1, 1\)"),
    (lambda: last_fc_bound(nn.Conv2d(1, 2, 3)), "no nn.Linear"),
])
def test_bad_config_is_refused(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_unrepresentable_parameters_and_nan_gradients_are_refused():
    with pytest.raises(DataError, match=r"parameter 1 holds 0\.3.*round_to_storage"):
        KahanSGD([param(0.5), param(0.3)], 0.1, storage=FixedPoint(8, 4))
    with pytest.raises(DataError, match=r"parameter 0 holds 100\.0.*range -8\.\.7\.9375"):
        KahanSGD([param(100.0)], 0.1, storage=FixedPoint(8, 4))
    a, b = param(0.5), param(0.25)
    opt = KahanSGD([a, b], 0.1, storage=FixedPoint(8, 4))
    a.grad, b.grad = torch.tensor([0.1]), torch.tensor([float("nan")])
    with pytest.raises(DataError, match="parameter 1 has a NaN gradient"):
        opt.step()
    with torch.no_grad():
        a.fill_(0.3)  # changed behind the optimizer's back
    with pytest.raises(DataError, match="parameter 0 holds"):
        opt.step()
    m = round_to_storage(nn.Linear(3, 2), FixedPoint(8, 4))
    KahanSGD(m.parameters(), 0.1, storage=FixedPoint(8, 4))  # accepted once rounded


def test_last_fc_bound_on_known_class_counts():
    assert [min_bits_last_fc(n).frac_bits for n in (10, 100, 1000)] == [4, 7, 10]  # f >= log2 N
    bounds = [min_bits_last_fc(n) for n in (2, 10, 100, 1000, 10000)]
    assert [b.bits for b in bounds] == sorted(b.bits for b in bounds)  # grows with N
    assert [min_bits_last_fc(n).bits for n in (10, 100, 1000)] == [7, 11, 14]
    for b in bounds:  # R reaches p_target exactly, and int_bits is the least that holds R
        n, r = b.num_classes, b.logit_range
        assert 1 / (1 + (n - 1) * math.exp(-2 * r)) == pytest.approx(b.p_target)
        assert 2 ** b.int_bits >= r > 2 ** (b.int_bits - 1)
    assert min_bits_last_fc(10, 0.9).logit_range < min_bits_last_fc(10, 0.999).logit_range
    bound = last_fc_bound(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 100)))
    assert (bound.layer, bound.num_classes, bound.bits) == ("3", 100, 11)

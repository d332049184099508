import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lowbit.errors import ConfigError, DataError
from lowbit.formats import IntFormat
from lowbit.functional import fake_quant_affine
from lowbit.granularity import PerChannel, PerTensor
from lowbit.observers import MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, PercentileObserver

from tests import _dist_worker


def batches(n=5, shape=(16, 4, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) * 2 + 0.5 for _ in range(n)]


def test_minmax_equals_torch_observers():
    data = batches()
    ours_t, ours_c = MinMaxObserver(), MinMaxObserver(PerChannel(1))
    ref_t = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    ref_c = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_affine)
    for x in data:
        ours_t(x), ours_c(x), ref_t(x), ref_c(x)
    assert torch.equal(ours_t.range()[0], ref_t.min_val.reshape(1))
    assert torch.equal(ours_t.range()[1], ref_t.max_val.reshape(1))
    assert torch.equal(ours_c.range()[0], ref_c.min_val) and torch.equal(ours_c.range()[1], ref_c.max_val)
    scale, zp = ours_t.qparams(IntFormat(8), symmetric=False)
    ref_scale, ref_zp = ref_t.calculate_qparams()
    assert torch.allclose(scale, ref_scale.reshape(1), rtol=1e-6)
    assert torch.equal(zp, ref_zp.reshape(1).to(torch.int32))


def test_moving_average():
    obs = MovingAverageMinMaxObserver(momentum=0.25)
    xs = batches(3)
    for x in xs:
        obs(x)
    lo = xs[0].min()
    for x in xs[1:]:
        lo = lo + 0.25 * (x.min() - lo)
    assert torch.allclose(obs.range()[0], lo.reshape(1))


def test_percentile_matches_numpy():
    xs = batches(3)
    obs = PercentileObserver(percentile=99.0, max_samples=1 << 20)
    for x in xs:
        obs(x)
    allv = torch.cat([x.reshape(-1) for x in xs]).numpy()
    lo, hi = obs.range()
    assert float(hi) == pytest.approx(np.percentile(allv, 99.0), rel=1e-5)
    assert float(lo) == pytest.approx(np.percentile(allv, 1.0), rel=1e-5)


def test_percentile_reservoir_is_bounded_and_seeded():
    a, b = PercentileObserver(max_samples=256, seed=7), PercentileObserver(max_samples=256, seed=7)
    for x in batches(10):
        a(x), b(x)
    assert a.samples.shape == (1, 256)
    assert torch.equal(a.range()[1], b.range()[1])


def test_mse_observer_beats_minmax_on_heavy_tails():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=gen) ** 3  # heavy tails
    fmt = IntFormat(4)
    mse, mm = MSEObserver(), MinMaxObserver()
    mse(x), mm(x)
    errs = []
    for obs in (mse, mm):
        s, z = obs.qparams(fmt, symmetric=True)
        errs.append(float(((fake_quant_affine(x, s, z, fmt) - x) ** 2).mean()))
    assert errs[0] < errs[1] * 0.7
    # a wider format clips less
    assert float(mse.search(IntFormat(8))[1]) > float(mse.search(IntFormat(3))[1])


def test_per_channel_observer_has_one_range_per_channel():
    obs = PercentileObserver(PerChannel(1), percentile=100.0)
    x = torch.randn(32, 3, 10) * torch.tensor([1.0, 10.0, 100.0])[None, :, None]
    obs(x)
    lo, hi = obs.range()
    assert hi.shape == (3,) and torch.allclose(hi, x.transpose(0, 1).reshape(3, -1).amax(1))


@pytest.mark.parametrize("cls", [MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MSEObserver])
def test_bad_input(cls):
    obs = cls()
    with pytest.raises(DataError, match="NaN"):
        obs(torch.tensor([1.0, float("nan")]))
    with pytest.raises(DataError, match="inf"):
        obs(torch.tensor([float("-inf"), 1.0]))
    with pytest.raises(DataError, match="empty"):
        obs(torch.empty(0, 3))
    with pytest.raises(DataError, match="no data"):
        obs.range()
    with pytest.raises(ConfigError, match="axis 3 is out of range"):
        cls(PerChannel(3))(torch.randn(2, 3))


def test_channel_count_change_is_caught():
    obs = MinMaxObserver(PerChannel(1))
    obs(torch.randn(2, 3))
    with pytest.raises(DataError, match="channels"):
        obs(torch.randn(2, 4))


def test_sync_without_process_group_is_a_clear_error():
    obs = MinMaxObserver()
    obs(torch.randn(3))
    with pytest.raises(ConfigError, match="torch.distributed"):
        obs.sync()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_across_two_processes(tmp_path):
    """Two real processes (gloo on localhost): every rank ends with the ranges of all data."""
    mp.spawn(_dist_worker.worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    seen = [_dist_worker.data_for(r)[: 2 + r] for r in (0, 1)]
    ref = MinMaxObserver(PerChannel(1))
    for xs in seen:
        for x in xs:
            ref(x)
    for res in (r0, r1):
        assert torch.equal(res["minmax"][0], ref.lo) and torch.equal(res["minmax"][1], ref.hi)
    # EMA: the mean of the ranks' local averages
    local = []
    for xs in seen:
        ema = MovingAverageMinMaxObserver(PerTensor(), momentum=0.5)
        for x in xs:
            ema(x)
        local.append(ema.range()[1])
    for res in (r0, r1):
        assert torch.allclose(res["ema"][1], (local[0] + local[1]) / 2)
    # percentile: every rank gets the percentile of all ranks' data (reservoirs are not full here)
    everything = torch.cat([x.reshape(-1) for xs in seen for x in xs]).numpy()
    for res in (r0, r1):
        assert float(res["pct"][1]) == pytest.approx(np.percentile(everything, 99.0), rel=1e-5)

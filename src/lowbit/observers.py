"""Observers: collect statistics of a tensor during calibration and turn them into a range.

Each observer is a thin ``nn.Module``: ``forward(x)`` records statistics of ``x``
and returns ``x`` unchanged; :meth:`Observer.range` gives ``(lo, hi)`` per row of
its granularity; :meth:`Observer.qparams` turns that into scale and zero point
(:func:`lowbit.functional.qparams_from_range`).

=====================  ========================================================
MinMaxObserver         running min / max
MovingAverageMinMax    exponential moving average of each batch's min / max
PercentileObserver     the p-th percentile of |x| (or of x, both tails)
MSEObserver            the clipping range ``c * max|x|`` that minimises the
                       quantization MSE, searched over a grid of ``c``
=====================  ========================================================

Percentile and MSE observers keep a bounded, seeded random reservoir of
samples per row (``max_samples``), so their memory does not grow with the
number of calibration batches.

Distributed: :meth:`Observer.sync` all-reduces the state across the processes
of a ``torch.distributed`` group (min/max by MIN/MAX, moving averages by mean,
reservoirs by all-gather), so every rank derives the same scales.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import ConfigError, DataError
from lowbit.formats import IntFormat
from lowbit.functional._checks import check_tensor
from lowbit.functional.affine import fake_quant_affine, qparams_from_range
from lowbit.granularity import Granularity, PerChannel, PerTensor, rows


class Observer(nn.Module):
    """Base class: granularity handling, input checks and ``qparams``."""

    def __init__(self, granularity: Granularity = PerTensor()) -> None:
        super().__init__()
        self.granularity = granularity
        self.register_buffer("n_batches", torch.zeros((), dtype=torch.int64))

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, f"{type(self).__name__} input")
        r = rows(x.detach().to(torch.float32), self.granularity)
        if isinstance(self.granularity, PerChannel) and self.n_batches > 0:
            expected = self._n_rows()
            if expected is not None and r.shape[0] != expected:
                raise DataError(f"{type(self).__name__} saw {expected} channels before, now {r.shape[0]}")
        return r

    def _n_rows(self) -> int | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.observe(self._rows(x))
        self.n_batches += 1
        return x

    def observe(self, r: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_seen(self) -> None:
        if int(self.n_batches) == 0:
            raise DataError(f"{type(self).__name__} has seen no data: run calibration batches through it first")

    def qparams(self, fmt: IntFormat, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point (one per row) for ``fmt``."""
        lo, hi = self.range()
        return qparams_from_range(lo, hi, fmt, symmetric)

    def sync(self, group=None) -> None:  # pragma: no cover - abstract
        """All-reduce this observer's state across the processes of ``group``."""
        raise NotImplementedError


def _dist():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("Observer.sync needs an initialised torch.distributed process group")
    return dist


class MinMaxObserver(Observer):
    """Running minimum and maximum of every row."""

    def __init__(self, granularity: Granularity = PerTensor()) -> None:
        super().__init__(granularity)
        self.register_buffer("lo", torch.empty(0))
        self.register_buffer("hi", torch.empty(0))

    def _n_rows(self) -> int | None:
        return int(self.lo.numel()) or None

    def observe(self, r: torch.Tensor) -> None:
        lo, hi = r.amin(dim=1), r.amax(dim=1)
        if self.lo.numel() == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_seen()
        return self.lo, self.hi

    def sync(self, group=None) -> None:
        dist = _dist()
        self._check_seen()
        dist.all_reduce(self.lo, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(self.hi, op=dist.ReduceOp.MAX, group=group)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """``m <- (1 - momentum) * m + momentum * batch_stat`` for min and max (first batch sets them)."""

    def __init__(self, granularity: Granularity = PerTensor(), momentum: float = 0.01) -> None:
        super().__init__(granularity)
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum

    def observe(self, r: torch.Tensor) -> None:
        lo, hi = r.amin(dim=1), r.amax(dim=1)
        if self.lo.numel() == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo = torch.lerp(self.lo, lo, self.momentum)
            self.hi = torch.lerp(self.hi, hi, self.momentum)

    def sync(self, group=None) -> None:
        dist = _dist()
        self._check_seen()
        world = dist.get_world_size(group)
        for t in (self.lo, self.hi):
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            t /= world


class _ReservoirObserver(Observer):
    """Keeps at most ``max_samples`` values per row: a seeded uniform subsample of all seen values."""

    def __init__(self, granularity: Granularity = PerTensor(), max_samples: int = 1 << 16, seed: int = 0) -> None:
        super().__init__(granularity)
        if max_samples < 16:
            raise ConfigError(f"max_samples must be >= 16, got {max_samples}")
        self.max_samples = max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("samples", torch.empty(0))
        self.register_buffer("absmax", torch.empty(0))

    def _n_rows(self) -> int | None:
        return int(self.samples.shape[0]) or None

    def _subsample(self, r: torch.Tensor) -> torch.Tensor:
        if r.shape[1] <= self.max_samples:
            return r
        idx = torch.randperm(r.shape[1], generator=self.generator)[: self.max_samples]
        return r[:, idx]

    def observe(self, r: torch.Tensor) -> None:
        amax = r.abs().amax(dim=1)
        if self.samples.numel() == 0:
            self.samples, self.absmax = self._subsample(r), amax
        else:
            self.samples = self._subsample(torch.cat([self.samples, self._subsample(r)], dim=1))
            self.absmax = torch.maximum(self.absmax, amax)

    def sync(self, group=None) -> None:
        dist = _dist()
        self._check_seen()
        world = dist.get_world_size(group)
        # ranks may hold different sample counts: pad with NaN to the longest, gather, drop the padding
        count = torch.tensor([self.samples.shape[1]])
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        longest = int(max(int(c) for c in counts))
        padded = torch.full((self.samples.shape[0], longest), float("nan"))
        padded[:, : self.samples.shape[1]] = self.samples
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        merged = torch.cat([g[:, : int(c)] for g, c in zip(gathered, counts)], dim=1)
        self.samples = self._subsample(merged)
        dist.all_reduce(self.absmax, op=dist.ReduceOp.MAX, group=group)


class PercentileObserver(_ReservoirObserver):
    """Range at the ``percentile`` of the samples (FAQ clips activations at ~99.99%).

    ``symmetric_abs=True`` takes the percentile of ``|x|`` and returns ``(-p, p)``;
    otherwise the lower and upper tails are cut separately.
    """

    def __init__(self, granularity: Granularity = PerTensor(), percentile: float = 99.99,
                 symmetric_abs: bool = False, max_samples: int = 1 << 16, seed: int = 0) -> None:
        super().__init__(granularity, max_samples, seed)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        self.symmetric_abs = symmetric_abs

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_seen()
        q = self.percentile / 100.0
        if self.symmetric_abs:
            p = torch.quantile(self.samples.abs(), q, dim=1)
            return -p, p
        return torch.quantile(self.samples, 1.0 - q, dim=1), torch.quantile(self.samples, q, dim=1)


class MSEObserver(_ReservoirObserver):
    """Clipping range ``c * [min, max]`` (or ``c * [-max|x|, max|x|]``) minimising ``||x - Q(x)||^2``.

    ``c`` runs over a grid in ``[min_ratio, 1]``; the error is measured on the
    reservoir with the target format, so the chosen range depends on the bit
    width: call :meth:`qparams` with the format.
    """

    def __init__(self, granularity: Granularity = PerTensor(), grid: int = 100, min_ratio: float = 0.2,
                 max_samples: int = 1 << 16, seed: int = 0) -> None:
        super().__init__(granularity, max_samples, seed)
        if grid < 2 or not 0.0 < min_ratio < 1.0:
            raise ConfigError("MSEObserver needs grid >= 2 and 0 < min_ratio < 1")
        self.ratios = torch.linspace(min_ratio, 1.0, grid)
        self.register_buffer("lo", torch.empty(0))
        self.register_buffer("hi", torch.empty(0))

    def observe(self, r: torch.Tensor) -> None:
        super().observe(r)
        lo, hi = r.amin(dim=1), r.amax(dim=1)
        first = self.lo.numel() == 0
        self.lo = lo if first else torch.minimum(self.lo, lo)
        self.hi = hi if first else torch.maximum(self.hi, hi)

    def sync(self, group=None) -> None:
        super().sync(group)
        dist = _dist()
        dist.all_reduce(self.lo, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(self.hi, op=dist.ReduceOp.MAX, group=group)

    def search(self, fmt: IntFormat, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Best ``(lo, hi)`` per row for ``fmt``."""
        self._check_seen()
        x = self.samples
        if symmetric:
            lo0, hi0 = -self.absmax, self.absmax
        else:
            lo0, hi0 = torch.minimum(self.lo, torch.zeros(())), torch.maximum(self.hi, torch.zeros(()))
        best_err = torch.full((x.shape[0],), float("inf"))
        best_lo, best_hi = lo0.clone(), hi0.clone()
        for c in self.ratios:
            lo, hi = lo0 * c, hi0 * c
            scale, zp = qparams_from_range(lo, hi, fmt, symmetric)
            err = ((fake_quant_affine(x, scale, zp, fmt, axis=0) - x) ** 2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return best_lo, best_hi

    def qparams(self, fmt: IntFormat, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        return qparams_from_range(*self.search(fmt, symmetric), fmt, symmetric)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range of an 8-bit asymmetric search (use :meth:`qparams` for another format)."""
        return self.search(IntFormat(8, signed=False), symmetric=False)


class ChannelPercentileObserver(PercentileObserver):
    """Channel-level statistics for one per-tensor range (our reading of method A, Lee et al. 2018).

    Each channel (``axis``, 1 for NCHW and (N, F) activations) gets its own
    ``percentile`` range from its own samples; the layer's range is the widest
    of the channel ranges: ``hi = max_c P_p(x_c)``, ``lo = min_c P_(100-p)(x_c)``.
    Rare outliers are clipped within each channel, but no channel's bulk is
    clipped because it is a small share of the layer's values, which a
    layer-wide percentile would do to a narrow-but-large channel.
    """

    def __init__(self, axis: int = 1, percentile: float = 99.99, max_samples: int = 1 << 12, seed: int = 0) -> None:
        super().__init__(PerChannel(axis), percentile, False, max_samples, seed)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = super().range()
        return lo.amin().reshape(1), hi.amax().reshape(1)


__all__ = ["ChannelPercentileObserver", "MSEObserver", "MinMaxObserver", "MovingAverageMinMaxObserver", "Observer", "PercentileObserver"]

"""Temporal sparsity of a delta RNN: occupancy, MACs and weight-column fetches against dense.

Per layer with input size ``I``, hidden size ``H`` and ``G`` gates (3 GRU, 4 LSTM), over
``S`` steps of ``B`` rows (Neil et al., ICML 2017, sec. 3: the cost falls with the occupancy)::

    occupancy_x = (# non-zero Δx) / (S B I)          occupancy_h = (# non-zero Δh) / (S B H)
    MACs        = G H ((# non-zero Δx) + (# non-zero Δh))      dense: G H S B (I + H)
    fetches     = (# non-zero Δx) + (# non-zero Δh)             dense: S B (I + H)
    batch fetches: per step, a column is read once when any row has a non-zero delta there
                                                                dense: S (I + H)

``fetches`` counts weight columns (``G H`` weights each) as a device running each sequence
alone (batch 1, streaming) reads them; in one layer their reduction equals the MAC reduction,
summed over layers of different ``G H`` it does not. ``batch_fetches`` is what a batched step
reads (a column shared by several rows is read once). The thresholding itself (a subtract and
compare per element) and the gate non-linearities are not counted: they are the same O(H)
work dense or not.

The counts travel in the explicit state (``state.counts``). For layers called inside a model
(the drop-ins of :func:`lowbit.delta.to_delta`), :func:`record_counts` collects them for the
length of a ``with`` block and leaves nothing behind on the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.delta.cells import _DeltaRNNBase
from lowbit.delta.state import DeltaCounts, DeltaState
from lowbit.errors import ConfigError


@dataclass(frozen=True)
class DeltaCost:
    """The cost of one layer (or a sum of layers, ``name="total"``) against its dense twin."""

    name: str
    x_occupancy: float
    h_occupancy: float
    macs: int
    dense_macs: int
    fetches: int
    dense_fetches: int
    batch_fetches: int
    dense_batch_fetches: int

    @property
    def mac_reduction(self) -> float:
        """``dense_macs / macs`` (``inf`` when no delta was sent)."""
        return self.dense_macs / self.macs if self.macs else float("inf")

    @property
    def fetch_reduction(self) -> float:
        """``dense_fetches / fetches``: weight columns read at batch 1."""
        return self.dense_fetches / self.fetches if self.fetches else float("inf")

    @property
    def batch_fetch_reduction(self) -> float:
        return self.dense_batch_fetches / self.batch_fetches if self.batch_fetches else float("inf")

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "x_occupancy": self.x_occupancy, "h_occupancy": self.h_occupancy,
                "macs": self.macs, "dense_macs": self.dense_macs, "mac_reduction": self.mac_reduction,
                "fetches": self.fetches, "dense_fetches": self.dense_fetches,
                "fetch_reduction": self.fetch_reduction, "batch_fetches": self.batch_fetches,
                "dense_batch_fetches": self.dense_batch_fetches, "batch_fetch_reduction": self.batch_fetch_reduction}


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def cost_of(counts: DeltaCounts, name: str = "") -> DeltaCost:
    """The :class:`DeltaCost` of one layer's counts (formulas in the module docstring)."""
    col = counts.gates * counts.hidden_size
    return DeltaCost(name, _ratio(counts.x_events, counts.x_slots), _ratio(counts.h_events, counts.h_slots),
                     macs=col * (counts.x_events + counts.h_events),
                     dense_macs=col * (counts.x_slots + counts.h_slots),
                     fetches=counts.x_events + counts.h_events,
                     dense_fetches=counts.x_slots + counts.h_slots,
                     batch_fetches=counts.x_columns + counts.h_columns,
                     dense_batch_fetches=counts.steps * (counts.input_size + counts.hidden_size))


def total_cost(costs: list[DeltaCost] | tuple[DeltaCost, ...]) -> DeltaCost:
    """Sum of layer costs; the occupancies are weighted by MACs of a dense layer (as the sums are)."""
    if not costs:
        raise ConfigError("no layer costs to add: run the delta layers at least once while recording")
    dense = sum(c.dense_macs for c in costs)
    w = [c.dense_macs / dense if dense else 0.0 for c in costs]
    return DeltaCost("total", sum(wi * c.x_occupancy for wi, c in zip(w, costs)),
                     sum(wi * c.h_occupancy for wi, c in zip(w, costs)),
                     sum(c.macs for c in costs), dense, sum(c.fetches for c in costs),
                     sum(c.dense_fetches for c in costs), sum(c.batch_fetches for c in costs),
                     sum(c.dense_batch_fetches for c in costs))


def state_costs(state: DeltaState, name: str = "") -> list[DeltaCost]:
    """One :class:`DeltaCost` per layer of ``state`` (``name.l{k}``), for the events since it was created."""
    return [cost_of(c, f"{name}.l{k}" if name else f"l{k}") for k, c in enumerate(state.counts)]


@dataclass(frozen=True)
class StepOccupancy:
    """Occupancy of one layer's deltas at each step of one call: ``x``, ``h`` of shape ``(T,)``,
    the fraction of the ``rows * size`` elements of that step that were sent."""

    x: torch.Tensor
    h: torch.Tensor


class DeltaRecorder:
    """Counts summed per delta layer of a model while :func:`record_counts` is active.

    ``counts[name]``: per layer, summed over calls; ``calls[name]``: number of calls;
    ``steps[name]``: per call, per layer, a :class:`StepOccupancy` (only with ``per_step=True``).
    """

    def __init__(self, per_step: bool = False) -> None:
        self.per_step = per_step
        self.counts: dict[str, list[DeltaCounts]] = {}
        self.calls: dict[str, int] = {}
        self.steps: dict[str, list[tuple[StepOccupancy, ...]]] = {}

    def _add(self, name: str, call: tuple[DeltaCounts, ...],
             events: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> None:
        if name in self.counts:
            self.counts[name] = [a + b for a, b in zip(self.counts[name], call)]
        else:
            self.counts[name] = list(call)
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.per_step:
            rows = [c.batch_steps // c.steps for c in call]
            self.steps.setdefault(name, []).append(tuple(
                StepOccupancy(x / (r * c.input_size), h / (r * c.hidden_size))
                for (x, h), c, r in zip(events, call, rows)))

    def costs(self) -> list[DeltaCost]:
        """One :class:`DeltaCost` per recurrent layer, ``<module name>.l<k>``, in call order."""
        return [cost_of(c, f"{name}.l{k}" if name else f"l{k}")
                for name, layers in self.counts.items() for k, c in enumerate(layers)]

    def total(self) -> DeltaCost:
        return total_cost(self.costs())


@contextlib.contextmanager
def record_counts(model: nn.Module, per_step: bool = False) -> Iterator[DeltaRecorder]:
    """``with record_counts(model) as rec: model(x)`` -> ``rec.costs()``, ``rec.total()``
    (and ``rec.steps``, the occupancy at each step, with ``per_step=True``).

    Adds a listener to every delta layer of ``model`` (the model itself may be one) and
    removes them on exit, even on error.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"record_counts takes an nn.Module, got {type(model).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _DeltaRNNBase)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no delta layer to count; convert it first with "
                          "lowbit.delta.to_delta(model, theta_x=..., theta_h=...)")
    rec = DeltaRecorder(per_step=bool(per_step))
    keys = []
    try:
        for name, m in layers:
            key = id(rec)
            m._count_listeners[key] = lambda _m, call, events, name=name: rec._add(name, call, events)
            keys.append((m, key))
        yield rec
    finally:
        for m, key in keys:
            m._count_listeners.pop(key, None)

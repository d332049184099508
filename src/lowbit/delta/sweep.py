"""A threshold sweep: the accuracy-against-operations curve of a converted model.

Neil et al. (ICML 2017, fig. 4-5) trade accuracy for operations by raising the thresholds of
an already trained network. :func:`sweep` converts the model once per ``(θ_x, θ_h)`` pair
with :func:`lowbit.delta.to_delta`, calls ``evaluate(model) -> float`` (the caller's metric,
higher is better, run under ``torch.no_grad``) and records the counters of that run;
:func:`operating_point` picks the cheapest point within a tolerated loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.delta.cells import check_threshold
from lowbit.delta.convert import to_delta
from lowbit.delta.counters import DeltaCost, record_counts
from lowbit.errors import ConfigError


@dataclass(frozen=True)
class SweepPoint:
    """One converted model: its thresholds, the caller's metric and the recurrent layers' cost."""

    theta_x: float
    theta_h: float
    metric: float
    cost: DeltaCost


def sweep(model: nn.Module, thetas: Iterable[tuple[float, float]], evaluate: Callable[[nn.Module], float]
          ) -> list[SweepPoint]:
    """``evaluate`` on a delta copy of ``model`` for each ``(theta_x, theta_h)``; ``model`` is not changed."""
    pairs = list(thetas)
    if not pairs:
        raise ConfigError("thetas is empty: pass (theta_x, theta_h) pairs, e.g. [(0.0, 0.0), (0.1, 0.1)]")
    for pair in pairs:  # all checked before the first (slow) evaluation
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ConfigError(f"threshold pair {pair!r}: pass (theta_x, theta_h)")
        check_threshold("theta_x", pair[0])
        check_threshold("theta_h", pair[1])
    points = []
    for theta_x, theta_h in pairs:
        delta = to_delta(model, theta_x=theta_x, theta_h=theta_h).model
        with torch.no_grad(), record_counts(delta) as rec:
            metric = float(evaluate(delta))
        if not rec.counts:
            raise ConfigError("evaluate(model) ran no delta layer: it must call the model it is given")
        points.append(SweepPoint(float(theta_x), float(theta_h), metric, rec.total()))
    return points


def operating_point(points: list[SweepPoint], baseline: float, max_loss: float) -> SweepPoint | None:
    """The point of largest MAC reduction with ``metric >= baseline - max_loss`` (``None`` if none)."""
    ok = [p for p in points if p.metric >= baseline - max_loss]
    return max(ok, key=lambda p: p.cost.mac_reduction) if ok else None

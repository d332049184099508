"""TrueNorth's core constraint (Esser et al., PNAS 2016, "Eedn"): which layers fit, and how many cores a net needs.

A TrueNorth core connects 256 input axons to 256 neurons through a 256 x 256 crossbar. Eedn's trinary
weights ``{-1, 0, +1}`` are made by giving each input two axons (one of each sign), so a neuron sees at
most **128** distinct inputs: a filter's fan-in ``C / groups * kh * kw`` (a linear layer's ``in_features``)
must be <= 128, which is why Eedn uses grouped convolutions (e.g. 4x4 kernels over 8 channels).

Neurons that read the same inputs share a core: for a convolution, the ``O / groups`` filters of one group
at one output position read one patch, so they take ``ceil((O / groups) / 256)`` cores, and the layer

    cores = Ho * Wo * groups * ceil((O / groups) / 256)          (a linear layer: ceil(out / 256))

(one core per patch and group at the least; Eedn's exact placement, which can share cores between
neighbouring patches with overlapping inputs, can only do better). :func:`truenorth_report` gives the
per-layer numbers, :func:`check_truenorth` refuses a net that breaks the fan-in limit, naming each layer and
the number of groups that would fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError

AXONS = 256
NEURONS = 256
MAX_FAN_IN = AXONS // 2  # trinary weights: two axons per input


@dataclass(frozen=True)
class CoreRow:
    """One conv / linear layer on TrueNorth cores."""

    name: str
    fan_in: int
    fits: bool
    cores: int
    min_groups: int | None  # conv: the least number of groups with fan-in <= 128 (None: no grouping fits)


def _min_groups(conv: nn.Conv2d) -> int | None:
    c, o, taps = conv.in_channels, conv.out_channels, math.prod(conv.kernel_size)
    for g in range(1, c + 1):
        if c % g == 0 and o % g == 0 and (c // g) * taps <= MAX_FAN_IN:
            return g
    return None


def truenorth_report(model: nn.Module, example: torch.Tensor) -> list[CoreRow]:
    """Per Conv2d / Linear layer of ``model`` (shapes from one forward pass on ``example``, batch 1 counted): its
    fan-in, whether it fits a core, and the cores it needs."""
    shapes: dict[str, tuple[int, ...]] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to place on TrueNorth cores")
    hooks = [m.register_forward_hook(lambda mod, i, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:])))
             for n, m in layers]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, m in layers:
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * math.prod(m.kernel_size)
            o, ho, wo = shapes[name]
            cores = ho * wo * m.groups * math.ceil((o // m.groups) / NEURONS)
            rows.append(CoreRow(name, fan_in, fan_in <= MAX_FAN_IN, cores, _min_groups(m)))
        else:
            out = shapes[name][-1]
            positions = math.prod(shapes[name][:-1]) if len(shapes[name]) > 1 else 1
            rows.append(CoreRow(name, m.in_features, m.in_features <= MAX_FAN_IN,
                                positions * math.ceil(out / NEURONS), None))
    return rows


def check_truenorth(model: nn.Module, example: torch.Tensor) -> int:
    """The total core count of ``model``, or a :class:`ConfigError` naming every layer whose fan-in exceeds 128."""
    rows = truenorth_report(model, example)
    bad = [r for r in rows if not r.fits]
    if bad:
        fixes = "; ".join(f"{r.name}: fan-in {r.fan_in} > {MAX_FAN_IN}"
                          + (f" (groups={r.min_groups} fits)" if r.min_groups else " (split its input)") for r in bad)
        raise ConfigError(f"the net does not fit TrueNorth cores (256 axons, trinary weights: at most {MAX_FAN_IN} "
                          f"inputs per neuron): {fixes}")
    return sum(r.cores for r in rows)


__all__ = ["AXONS", "MAX_FAN_IN", "NEURONS", "CoreRow", "check_truenorth", "truenorth_report"]

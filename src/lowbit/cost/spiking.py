"""What a spiking network's inference costs, against the ANN it came from: synaptic operations, not MACs.

A spike arriving at a synapse adds the weight to the membrane potential: an **accumulate** (Merolla et al.
2014; Rueckauer et al. 2017 count "synaptic operations" the same way). So one inference costs

    E_snn = synops * E_acc + input MACs * E_mac + spikes/neuron updates (not priced: the same order in both)

with ``E_acc`` an add of the membrane's width (``int32_add`` for integer weights; ``fp32_add`` for float
ones) plus, for an augmented spike with a ``c``-bit coefficient, one ``w x c``-bit multiply
(``int8_mult * w c / 64``, the table's scaling rule); the first layer reads the analog image and pays MACs
(once per inference for a constant input). The ANN pays ``MACs * E_mac`` (:func:`~lowbit.cost.energy.mac_energy`).
The spiking net is cheaper exactly when ``synops * E_acc < MACs * E_mac`` -- at int8, an accumulate costs a
third of a MAC, so the spiking net must send fewer than about three synaptic events per ANN MAC; at fp32
(fp32 add 0.9 pJ against a 4.6 pJ MAC) about five.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit.cost.energy import EnergyTable, mac_energy
from lowbit.errors import ConfigError


def synop_energy(table: EnergyTable, weight_bits: int = 32, coefficient_max: int = 1) -> float:
    """pJ of one synaptic operation: an accumulate (fp32 for 32-bit weights, else a 32-bit integer add), plus a
    ``weight_bits x ceil(log2(c_max + 1))``-bit multiply when events carry coefficients up to ``coefficient_max``
    (augmented spikes; ternary's sign is free)."""
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) or not 1 <= weight_bits <= 32:
        raise ConfigError(f"weight_bits={weight_bits!r} is out of range: an int in 1..32")
    if isinstance(coefficient_max, bool) or not isinstance(coefficient_max, int) or coefficient_max < 1:
        raise ConfigError(f"coefficient_max={coefficient_max!r} must be an int >= 1")
    e = table.energy
    add = e["fp32_add"] if weight_bits == 32 else e["int32_add"]
    if coefficient_max == 1:
        return add
    c_bits = math.ceil(math.log2(coefficient_max + 1))
    mult = e["fp32_mult"] if weight_bits == 32 else e["int8_mult"] * weight_bits * c_bits / 64
    return add + mult


@dataclass(frozen=True)
class SpikingCost:
    """One spiking version at ``time_steps`` against its ANN, in pJ per inference."""

    name: str
    time_steps: int
    accuracy: float  # percent
    spikes: float
    synops: float
    input_macs: float
    snn_pj: float
    ann_macs: float
    ann_pj: float

    @property
    def ratio(self) -> float:
        """ANN energy / SNN energy (> 1: the spiking net is cheaper)."""
        return self.ann_pj / self.snn_pj if self.snn_pj else math.inf


def spiking_cost(name: str, row, ann_macs: float, table: EnergyTable, weight_bits: int = 8,
                 coefficient_max: int = 1) -> SpikingCost:
    """Price a :class:`lowbit.snn.SweepRow` against the ANN's ``ann_macs`` at the same weight bits (activations
    8-bit for the ANN when ``weight_bits`` < 32)."""
    a_bits = 32 if weight_bits == 32 else 8
    e_mac = mac_energy(weight_bits, a_bits, table)
    snn = row.synops * synop_energy(table, weight_bits, coefficient_max) + row.input_macs * e_mac
    return SpikingCost(name, row.time_steps, row.accuracy, row.spikes_per_inference, row.synops, row.input_macs,
                       snn, ann_macs, ann_macs * e_mac)


def table(costs: list[SpikingCost], bits_label: str) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of the spiking versions against the ANN, with the verdict per row."""
    head = ["spiking version", "T", "accuracy", "spikes", "synops", "input MACs", f"compute energy ({bits_label})",
            "ANN compute energy", "ANN / SNN"]
    rows = [[c.name, str(c.time_steps), f"{c.accuracy:.2f}%", f"{c.spikes:,.0f}", f"{c.synops:,.0f}",
             f"{c.input_macs:,.0f}", f"{c.snn_pj / 1e6:,.3f} uJ", f"{c.ann_pj / 1e6:,.3f} uJ",
             f"{c.ratio:.2f}x {'(SNN cheaper)' if c.ratio > 1 else '(ANN cheaper)'}"] for c in costs]
    return head, rows


def markdown(costs: list[SpikingCost], bits_label: str) -> list[str]:
    """:func:`table` as Markdown lines."""
    head, rows = table(costs, bits_label)
    return ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)] + [
        "| " + " | ".join(r) + " |" for r in rows]

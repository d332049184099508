"""Pricing spiking inference: synaptic operations as accumulates against the ANN's MACs."""

from __future__ import annotations

import pytest

from lowbit.cost.energy import EnergyTable, mac_energy
from lowbit.cost.spiking import markdown, spiking_cost, synop_energy
from lowbit.errors import ConfigError
from lowbit.snn import SweepRow


def test_synop_energy_is_an_add_plus_a_small_multiply_for_coefficients():
    t = EnergyTable.load()
    e = t.energy
    assert synop_energy(t, 32) == e["fp32_add"]
    assert synop_energy(t, 8) == e["int32_add"]
    # coefficients up to 4 need 3 bits: an 8 x 3-bit multiply, scaled from the 8 x 8 one
    assert synop_energy(t, 8, 4) == pytest.approx(e["int32_add"] + e["int8_mult"] * 8 * 3 / 64)
    assert synop_energy(t, 8) < mac_energy(8, 8, t) < synop_energy(t, 32)


@pytest.mark.parametrize("kwargs", [{"weight_bits": 0}, {"weight_bits": 33}, {"coefficient_max": 0},
                                    {"weight_bits": True}])
def test_bad_synop_arguments(kwargs):
    with pytest.raises(ConfigError):
        synop_energy(EnergyTable.load(), **kwargs)


def test_spiking_cost_and_its_verdict():
    t = EnergyTable.load()
    row = SweepRow(8, 91.0, 1000.0, 900.0, synops=2_000_000.0, input_macs=100_000.0, spikes_per_layer={})
    c = spiking_cost("IF", row, ann_macs=1_000_000.0, table=t)
    e_mac = mac_energy(8, 8, t)
    assert c.snn_pj == pytest.approx(2e6 * t.energy["int32_add"] + 1e5 * e_mac)
    assert c.ann_pj == pytest.approx(1e6 * e_mac)
    assert c.ratio == pytest.approx(c.ann_pj / c.snn_pj)
    lines = markdown([c], "int8 weights")
    assert ("SNN cheaper" in lines[-1]) == (c.ratio > 1)
    heavy = spiking_cost("IF", SweepRow(8, 91.0, 1.0, 1.0, 9e6, 0.0, {}), 1e6, t)
    assert heavy.ratio < 1 and "ANN cheaper" in markdown([heavy], "x")[-1]

"""Energy per inference from a profile and a per-operation table (a JSON data file with its source).

Model (every choice here is a knob of :func:`energy`):

- compute: an integer layer does ``MACs`` multiplies of ``b_w x b_a`` bits, costed as
  ``int8_mult * b_w b_a / 64`` (array multipliers scale with the product of the widths; 32 x 32
  gives 3.2 pJ against the table's 3.1), plus ``MACs`` int32 accumulations (``int32_add``).
  A float layer does fp32 multiplies and adds. A binary layer (1-bit weights and inputs) does XNORs
  (``int8_mult / 64``, the 1 x 1 case of the same rule) and counts them in a popcount tree, priced
  as ``int32_add / 32`` per input bit (a tree of full adders is about one adder bit per input bit)
  instead of one int32 accumulation per MAC.
- weights: read once per inference, from SRAM (1 MB row) when all weights fit in ``sram_bytes``,
  else from DRAM. The level chosen is part of the result (``Energy.weight_memory``): a float model
  priced from DRAM against its int8 version from SRAM gains most of its "saving" from that cliff, so
  reports also price every version at the float model's level (``weight_memory=`` forces it).
- activations: every layer output written once and read once from a 32 KB SRAM.
- requantization per output element: ``"multiplier"`` = int32 multiply + 2 int32 adds (rounding,
  shift); ``"shift"`` = 2 int32 adds (method H: the multiply is gone); ``"dequantize"`` = one fp32
  multiply; ``"threshold"`` (a sign output: the folded BatchNorm's threshold) = one int32 compare.

Area: :func:`mac_area` gives the silicon area of one multiply-accumulate unit at a layer's widths
(same scaling rule, from the table's ``area`` section). Users pass their own table (same keys)
with ``table=EnergyTable.load(path)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lowbit.cost.profile import LayerCost
from lowbit.errors import ConfigError

DEFAULT_TABLE = Path(__file__).parent / "tables" / "horowitz45nm.json"
_KEYS = ("int32_add", "fp32_add", "int8_mult", "fp32_mult", "sram_32kb_64bit", "sram_1mb_64bit", "dram_64bit")


def _amounts(path: str | Path, section: str, values: dict) -> dict[str, float]:
    """A table section's values: finite numbers >= 0 (an energy or an area is never negative)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            unit = "picojoules" if section == "energy" else "square micrometres"
            raise ConfigError(f"energy table {path}: {section}.{k} = {v!r}; each value must be a finite number >= 0 "
                              f"({unit}); fix the table (see {DEFAULT_TABLE})")
        out[k] = float(v)
    return out


@dataclass(frozen=True)
class EnergyTable:
    name: str
    source: str
    energy: dict[str, float]
    area: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_TABLE) -> EnergyTable:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read energy table {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("energy", {}), dict) \
                or not isinstance(data.get("area", {}), dict):
            raise ConfigError(f"energy table {path} is not a lowbit energy table (a JSON object with an 'energy' "
                              f"object of operation -> picojoules); see {DEFAULT_TABLE}")
        missing = [k for k in _KEYS if k not in data.get("energy", {})]
        if missing or "source" not in data:
            raise ConfigError(f"energy table {path} lacks {missing or ['source']}; see {DEFAULT_TABLE} for the keys")
        return cls(data.get("name", str(path)), data["source"], _amounts(path, "energy", data["energy"]),
                   _amounts(path, "area", data.get("area", {})))

    def per_byte(self, key: str) -> float:
        return self.energy[key] / 8


@dataclass(frozen=True)
class Energy:
    """pJ per inference, by component."""

    compute: float
    weights: float
    activations: float
    requant: float
    weight_memory: str = ""  # the table key the weights were priced at: "sram_1mb_64bit" or "dram_64bit"

    @property
    def total(self) -> float:
        return self.compute + self.weights + self.activations + self.requant

    def to_dict(self) -> dict[str, float]:
        return {"compute_pJ": self.compute, "weights_pJ": self.weights, "activations_pJ": self.activations,
                "requant_pJ": self.requant, "total_pJ": self.total, "weight_memory": self.weight_memory}


def mac_energy(w_bits: float, a_bits: float, table: EnergyTable) -> float:
    """pJ of one multiply-accumulate at these widths (fp32 when either is 32-bit float)."""
    e = table.energy
    if w_bits >= 32 and a_bits >= 32:
        return e["fp32_mult"] + e["fp32_add"]
    if w_bits <= 1 and a_bits <= 1:  # XNOR + a popcount tree's share
        return e["int8_mult"] / 64 + e["int32_add"] / 32
    return e["int8_mult"] * w_bits * a_bits / 64 + e["int32_add"]


LNS_DELTAS = ("exact", "lut", "max", "shift")


def lns_mac_energy(bits: int, delta: str, table: EnergyTable) -> float:
    """pJ of one multiply-accumulate in a ``bits``-bit logarithmic number system (paper L, Sanyal, Beerel, Chugg:
    multiplications become additions of the log codes).

    multiply ``(s_x xor s_y, X + Y)``: one ``bits``-bit add (``int32_add bits / 32``; the sign XOR is free);
    accumulate ``A [+] P = max(A, P) + delta(|A - P|)``: one subtract (it gives both the max and ``d``) and one add
    of the correction: two more ``bits``-bit adds for ``exact`` and ``lut`` (the correction read from a table
    of <= 20 entries, a ROM far smaller than the adder: priced 0), and for ``shift`` (Mitchell: the correction
    ``2^-d`` is a shift of a constant); ``max`` drops the correction: one subtract and a select."""
    if delta not in LNS_DELTAS:
        raise ConfigError(f"LNS delta must be one of {', '.join(LNS_DELTAS)}, got {delta!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 4 <= bits <= 32:
        raise ConfigError(f"LNS bits={bits!r} is out of range: an int in 4..32")
    add = table.energy["int32_add"] * bits / 32
    return add * (2 if delta == "max" else 3)


def mac_area(w_bits: float, a_bits: float, table: EnergyTable) -> float:
    """um^2 of one multiply-accumulate unit at these widths: multiplier (scaled as ``b_w b_a / 64`` from the
    int8 multiplier) + 32-bit accumulator adder; fp32 multiplier + fp32 adder for float."""
    a = table.area
    if not a:
        raise ConfigError(f"energy table {table.name!r} has no 'area' section")
    if w_bits >= 32 and a_bits >= 32:
        return a["fp32_mult"] + a["fp32_add"]
    return a["int8_mult"] * w_bits * a_bits / 64 + a["int32_add"]


def requant_energy(kind: str, table: EnergyTable) -> float:
    e = table.energy
    return {"multiplier": e.get("int32_mult", 3.1) + 2 * e["int32_add"], "shift": 2 * e["int32_add"],
            "dequantize": e["fp32_mult"], "threshold": e["int32_add"], "none": 0.0}[kind]


WEIGHT_MEMORIES = ("sram_1mb_64bit", "dram_64bit")


def energy(rows: list[LayerCost], table: EnergyTable | None = None, sram_bytes: int = 1 << 20,
           weight_memory: str | None = None) -> Energy:
    """Energy per inference (pJ) of a :func:`lowbit.cost.profile.profile`; weights from SRAM when they fit in
    ``sram_bytes``, else DRAM, unless ``weight_memory`` (one of :data:`WEIGHT_MEMORIES`) says where."""
    table = table or EnergyTable.load()
    weight_bytes = sum(r.weight_bytes for r in rows)
    if weight_memory is not None and weight_memory not in WEIGHT_MEMORIES:
        raise ConfigError(f"weight_memory must be one of {', '.join(WEIGHT_MEMORIES)}, got {weight_memory!r}")
    mem = weight_memory or ("sram_1mb_64bit" if weight_bytes <= sram_bytes else "dram_64bit")
    compute = sum(r.macs * mac_energy(r.weight_bits, r.act_bits, table) for r in rows)
    weights = weight_bytes * table.per_byte(mem)
    acts = sum(2 * r.act_bytes for r in rows) * table.per_byte("sram_32kb_64bit")
    requant = sum(r.requant_ops * requant_energy(r.requant, table) for r in rows)
    return Energy(compute, weights, acts, requant, mem)


__all__ = ["DEFAULT_TABLE", "Energy", "EnergyTable", "LNS_DELTAS", "WEIGHT_MEMORIES", "energy", "lns_mac_energy", "mac_area", "mac_energy",
           "requant_energy"]

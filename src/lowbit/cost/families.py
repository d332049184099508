"""The shipped binary-family networks in the cost report: W1A1 binary CNN/MLP, BitSplit-Net W1A2, the Eedn net
and the stochastic ensemble, each at its recorded test accuracy (10000 Fashion-MNIST images, the JSON beside
its weights) and priced as its own benchmark prices it.

- binary W1A1 nets and one ensemble member: the profile of the converted model (:func:`lowbit.cost.profile.profile`:
  BOPs = MACs x weight bits x input bits per layer); an ensemble of ``M`` members costs ``M`` members;
- BitSplit-Net: :func:`lowbit.nn.bitsplit.bops` by part (first layer 8 x 8 bits, ``n`` binary paths 1 x 1,
  classifier 8 x 1);
- compute energy: each part's MACs x :func:`lowbit.cost.energy.mac_energy` at its widths (a 1 x 1-bit MAC is an
  XNOR and a popcount tree's share); weight and activation memory are not priced here;
- the Eedn net: spikes per inference (every spiking layer) and TrueNorth cores, as ``benchmarks/bench_truenorth.py``
  counts them; the energy table has no synaptic-event entry for neuromorphic cores, so it is not priced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lowbit.cost.energy import EnergyTable, mac_energy


@dataclass(frozen=True)
class FamilyCost:
    name: str
    accuracy: float  # recorded, fraction of the 10000 test images
    bops: int | None
    compute_pj: float | None  # None: not priced (see ``counted``)
    spikes: float | None
    cores: int | None
    counted: str

    def to_dict(self) -> dict:
        return asdict(self)


def _profiled(model, table: EnergyTable) -> tuple[int, float]:
    """(BOPs, compute pJ) of one inference of a converted binary model, from its per-layer profile."""
    import torch

    from lowbit.cost.profile import profile

    rows = profile(model, (torch.zeros(1, 1, 28, 28),))
    return sum(r.bops for r in rows), sum(r.macs * mac_energy(r.weight_bits, r.act_bits, table) for r in rows)


def _bitsplit(table: EnergyTable) -> FamilyCost:
    from lowbit.nn.bitsplit import bops
    from lowbit.zoo import family_zoo as fz
    from lowbit.zoo.weights_io import read_meta

    meta = read_meta(fz.weights_path(fz.BITSPLIT))
    n, c = int(meta["bits"]), int(meta["channels"])
    b = bops(n, c)
    pj = (b["first"] / 64 * mac_energy(8, 8, table) + b["hidden"] * mac_energy(1, 1, table)
          + b["classifier"] / 8 * mac_energy(8, 1, table))
    return FamilyCost(f"BitSplit W1A{n} c={c}", float(meta["test_accuracy"]), b["total"], pj, None, None,
                      f"BOPs: first layer 8x8, {n} binary paths 1x1, classifier 8x1")


def _eedn() -> FamilyCost:
    from lowbit.zoo import family_zoo as fz
    from lowbit.zoo.weights_io import read_meta

    meta = read_meta(fz.weights_path(fz.EEDN))
    return FamilyCost("Eedn TrueNorth-style net", float(meta["test_accuracy"]), None, None,
                      float(meta["spikes_per_inference"]), int(meta["cores"]),
                      "spikes per inference (all spiking layers) and TrueNorth cores (on-core layers); not priced: "
                      "the energy table has no synaptic-event entry")


def family_costs(table: EnergyTable | None = None) -> list[FamilyCost]:
    """One row per shipped file present (module docstring)."""
    from lowbit.zoo import family_zoo as fz
    from lowbit.zoo.binary_zoo import CONFIGS, pretrained_binary, shipped_binary_accuracy
    from lowbit.zoo.binary_zoo import weights_path as binary_path

    table = table or EnergyTable.load()
    rows = []
    for key in CONFIGS:
        if binary_path(key).exists():
            b, pj = _profiled(pretrained_binary(key), table)
            rows.append(FamilyCost(key, shipped_binary_accuracy(key), b, pj, None, None,
                                   "BOPs of the profile: hidden layers 1x1, first layer and classifier 8-bit"))
    if fz.weights_path(fz.BITSPLIT).exists():
        rows.append(_bitsplit(table))
    if fz.weights_path(fz.EEDN).exists():
        rows.append(_eedn())
    if fz.weights_path(fz.STOCHASTIC).exists():
        b, pj = _profiled(fz.pretrained_stochastic(), table)
        m = fz.ENSEMBLE_MEMBERS
        rows.append(FamilyCost(f"stochastic ensemble, M={m}", fz.recorded(fz.STOCHASTIC), m * b, m * pj, None, None,
                               f"{m} x one member's BOPs (members drawn from binary-cnn-w1a1s, softmax averaged)"))
        rows.append(FamilyCost("  its deterministic sign(w) net", fz.recorded(fz.STOCHASTIC, "deterministic_accuracy"),
                               b, pj, None, None, "BOPs of the profile, as one member"))
    return rows


HEAD = ["network", "accuracy", "BOPs", "compute energy", "spikes", "cores", "what is counted"]


def cells(rows: list[FamilyCost]) -> list[list[str]]:
    """The table's cells, one list per row (``HEAD``'s columns)."""
    return [[r.name, f"{100 * r.accuracy:.2f}%", "-" if r.bops is None else f"{r.bops / 1e6:,.1f} M",
             "-" if r.compute_pj is None else f"{r.compute_pj / 1e6:,.3f} uJ",
             "-" if r.spikes is None else f"{r.spikes:,.0f}", "-" if r.cores is None else f"{r.cores:,}", r.counted]
            for r in rows]


NOTE = ("Shipped binary-family networks (lowbit.cost.families): recorded accuracy on the 10000 Fashion-MNIST test "
        "images; compute energy = MACs x one MAC at their widths (45 nm table), memory not priced.")

__all__ = ["HEAD", "NOTE", "FamilyCost", "cells", "family_costs"]

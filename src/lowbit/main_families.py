"""The main job's rows for three method families (``lowbit run``): shipped weights (:mod:`lowbit.zoo.family_zoo`),
nothing trained.

- **BitSplit-Net W1A2** (Kim et al. 2019) run on the bitwise engine (:func:`lowbit.nn.bitsplit.deploy`: an
  XNOR-popcount GEMM per path and layer); what it computes: bit operations, MACs x weight bits x input bits
  (:func:`lowbit.nn.bitsplit.bops`);
- a **TrueNorth-style Eedn net** (Esser et al. 2016) folded into integer-threshold neurons with int8 trinary
  synapses (:func:`lowbit.snn.eedn.fold`); what it computes: spikes per inference (every spiking layer) and
  TrueNorth cores (the on-core layers, :func:`lowbit.snn.eedn.cores`);
- a **stochastic ensemble** (Vogel et al. 2016) of ``M`` bitwise networks drawn from the stochastic-trained W1A1
  CNN, each run as its integer model, softmax averaged; beside it one member and the deterministic ``sign(w)``
  net of the same weights; what it computes: BOPs of one member x ``M``.

Accuracy on the first ``images`` test images (the JSON beside each file records the full test set's); latency
at batch 1, 1 thread, best of a few interleaved rounds, against fp32 eager twins of the same widths (untrained:
the time does not depend on the values): :class:`lowbit.zoo.binary.BinaryCNN` for BitSplit and the ensemble,
``EednNet(EednSpec(kind="float"))`` (real weights, ReLU) for Eedn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.data import Split, fashion_mnist


@dataclass(frozen=True)
class FamilyRow:
    what: str
    accuracy: float  # fraction, on the table's images
    recorded: float | None  # fraction, the full test set (the JSON); None where not recorded
    fp32_us: float | None
    lowbit_us: float | None
    computes: str


@dataclass(frozen=True)
class FamilyTable:
    rows: tuple[FamilyRow, ...]
    images: int
    rounds: int

    def render(self) -> str:
        lines = [f"BitSplit, Eedn, stochastic ensemble (shipped weights, nothing trained; Fashion-MNIST, first "
                 f"{self.images} test images; 'recorded': the 10000; batch 1, 1 thread, best of {self.rounds} "
                 "interleaved rounds)",
                 f"{'model':<44}{'accuracy':>10}{'recorded':>10}{'fp32 us':>9}{'lowbit us':>11}{'speed-up':>10}  computes",
                 "-" * 124]
        for r in self.rows:
            rec = f"{100 * r.recorded:>9.2f}%" if r.recorded is not None else f"{'-':>10}"
            lat = (f"{r.fp32_us:>9.0f}{r.lowbit_us:>11.0f}{r.fp32_us / r.lowbit_us:>9.2f}x"
                   if r.fp32_us is not None and r.lowbit_us is not None else f"{'-':>9}{'-':>11}{'-':>10}")
            lines.append(f"{r.what:<44}{100 * r.accuracy:>9.2f}%{rec}{lat}  {r.computes}")
        lines += ["-" * 124,
                  "(BOPs: MACs x weight bits x input bits; spikes: all spiking layers' 1s per image; cores: TrueNorth "
                  "cores of the on-core layers; the ensemble's members run one after the other; the Eedn net runs its folded "
                  "spikes through PyTorch convs here, no neuromorphic hardware)"]
        return "\n".join(lines)


@torch.no_grad()
def _scores(fn, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([torch.as_tensor(fn(x[i:i + batch])).float() for i in range(0, len(x), batch)])


def _fraction(scores: torch.Tensor, y: torch.Tensor) -> float:
    return float((scores.argmax(1) == y).float().mean())


def _time(paths: dict, rounds: int) -> dict[str, float]:
    from lowbit.bench.latency import interleaved, torch_threads

    with torch_threads(1), torch.no_grad():
        return {k: t.best_us for k, t in interleaved(paths, rounds=rounds, warmup=3).items()}


def _bitsplit_row(test: Split, x1: torch.Tensor, rounds: int) -> FamilyRow:
    from lowbit.nn.bitsplit import bops, deploy
    from lowbit.zoo import family_zoo as fz
    from lowbit.zoo.binary import BinaryCNN

    model = fz.pretrained_bitsplit()
    engine = deploy(model)
    acc = _fraction(_scores(engine, test.x), test.y)
    twin = BinaryCNN(channels=model.channels).eval()
    t = _time({"fp32": lambda: twin(x1), "lowbit": lambda: engine(x1)}, rounds)
    return FamilyRow(f"BitSplit W1A{model.bits} c={model.channels} (bitwise engine)", acc, fz.recorded(fz.BITSPLIT),
                     t["fp32"], t["lowbit"], f"{bops(model.bits, model.channels)['total'] / 1e6:,.0f} M BOPs")


def _eedn_row(test: Split, x1: torch.Tensor, rounds: int) -> FamilyRow:
    from lowbit.snn.eedn import EednNet, EednSpec, cores, fold, run_batched
    from lowbit.zoo import family_zoo as fz

    net = fz.pretrained_eedn()
    folded = fold(net)
    r = run_batched(folded, test.x, 500)
    twin = EednNet(EednSpec(group_size=net.spec.group_size, transduction=net.spec.transduction,
                            population=net.spec.population, kind="float")).eval()
    t = _time({"fp32": lambda: twin(x1), "lowbit": lambda: folded(x1)}, rounds)
    return FamilyRow("Eedn TrueNorth-style net (folded, trinary)", _fraction(r.counts, test.y), fz.recorded(fz.EEDN),
                     t["fp32"], t["lowbit"], f"{float(r.spikes.mean()):,.0f} spikes, {cores(net):,} cores")


def _ensemble_rows(test: Split, x1: torch.Tensor, rounds: int, members: int) -> list[FamilyRow]:
    from lowbit.cost.profile import profile, totals
    from lowbit.integer import to_integer
    from lowbit.zoo import family_zoo as fz
    from lowbit.zoo.binary import BinaryCNN

    model = fz.pretrained_stochastic()
    ens = fz.stochastic_ensemble(model, members=members)
    ims = [to_integer(m, (x1,)) for m in ens.members]
    probs = torch.stack([torch.softmax(_scores(im, test.x), dim=1) for im in ims])  # (M, N, 10)
    det = to_integer(model, (x1,))
    member_bops = totals(profile(model, (x1,))).bops
    twin = BinaryCNN(channels=model.get_submodule("features.0").weight.shape[0]).eval()
    t = _time({"fp32": lambda: twin(x1), "member": lambda: ims[0](x1), "det": lambda: det(x1),
               "ensemble": lambda: [im(x1) for im in ims]}, rounds)
    recorded = fz.recorded(fz.STOCHASTIC) if members == fz.ENSEMBLE_MEMBERS else None
    return [
        FamilyRow(f"stochastic ensemble, M={members} W1A1 CNNs", _fraction(probs.mean(0), test.y), recorded,
                  t["fp32"], t["ensemble"], f"{members * member_bops / 1e6:,.0f} M BOPs ({members} x one member)"),
        FamilyRow("  one member (its integer model)", _fraction(probs[0], test.y),
                  fz.recorded_list(fz.STOCHASTIC, "member_accuracy")[0], t["fp32"], t["member"],
                  f"{member_bops / 1e6:,.0f} M BOPs"),
        FamilyRow("  deterministic sign(w), same weights", _fraction(_scores(det, test.x), test.y),
                  fz.recorded(fz.STOCHASTIC, "deterministic_accuracy"), t["fp32"], t["det"],
                  f"{member_bops / 1e6:,.0f} M BOPs"),
    ]


def family_rows(test_set: Split | None = None, data_root=None, images: int = 2000, rounds: int = 10,
                members: int = 16) -> FamilyTable:
    """The rows of the module docstring, for the shipped files that are present."""
    from lowbit.zoo import family_zoo as fz

    test = test_set if test_set is not None else fashion_mnist("test", root=data_root)
    test = Split(test.x[:images].contiguous(), test.y[:images])
    x1 = test.x[:1].contiguous()
    rows: list[FamilyRow] = []
    if fz.weights_path(fz.BITSPLIT).exists():
        rows.append(_bitsplit_row(test, x1, rounds))
    if fz.weights_path(fz.EEDN).exists():
        rows.append(_eedn_row(test, x1, rounds))
    if fz.weights_path(fz.STOCHASTIC).exists():
        rows += _ensemble_rows(test, x1, rounds, members)
    return FamilyTable(tuple(rows), len(test), rounds)


__all__ = ["FamilyRow", "FamilyTable", "family_rows"]

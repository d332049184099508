"""The main job's spiking rows (``lowbit run``): shipped weights, nothing trained.

- the shipped ``cnn-avgpool`` converted to a spiking net (thresholds at the 99.9th percentile of 1000 train
  images' activations, analog input) with single-threshold IF neurons, TerMapping (double threshold, ternary
  spikes) and AugMapping (augmented spikes, coefficient <= 4), run for T = 4 and 8 steps on the first
  ``images`` test images: accuracy, spikes and synaptic operations per inference, against the ANN on the same
  images;
- the shipped spiking CNNs trained by backprop through time (:mod:`lowbit.snn.models`), when present.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.data import Split, fashion_mnist

STEPS = (4, 8)


@dataclass(frozen=True)
class SNNRow:
    what: str
    time_steps: int
    accuracy: float  # percent
    spikes: float | None
    synops: float | None
    note: str


@dataclass(frozen=True)
class SNNTable:
    rows: tuple[SNNRow, ...]
    ann_accuracy: float
    ann_macs: float
    images: int

    def render(self) -> str:
        lines = [f"spiking networks (shipped weights, nothing trained; Fashion-MNIST test set, first {self.images} "
                 f"images; ANN cnn-avgpool {self.ann_accuracy:.2f}%, {self.ann_macs / 1e6:.2f} M MACs)",
                 f"{'network / neurons':<46}{'T':>4}{'accuracy':>10}{'spikes':>9}{'synops (M)':>12}  note",
                 "-" * 106]
        for r in self.rows:
            spikes = f"{r.spikes:>9,.0f}" if r.spikes is not None else f"{'-':>9}"
            synops = f"{r.synops / 1e6:>12.2f}" if r.synops is not None else f"{'-':>12}"
            lines.append(f"{r.what:<46}{r.time_steps:>4}{r.accuracy:>9.2f}%{spikes}{synops}  {r.note}")
        return "\n".join(lines)


def _converted_rows(test: Split, calib: Split, images: int) -> tuple[list[SNNRow], float, float]:
    import torch

    from lowbit import snn, zoo
    from lowbit.cost.profile import profile

    ann = zoo.pretrained("cnn-avgpool")
    x, y = test.x[:images], test.y[:images]
    with torch.no_grad():
        ann_acc = 100.0 * float((ann(x).argmax(1) == y).float().mean())
    kinds = {"IF (one threshold)": snn.NeuronSpec(initial_potential=0.5),
             "TerMapping (double threshold)": snn.NeuronSpec(spikes=snn.Spikes.TERNARY, initial_potential=0.5),
             "AugMapping (augmented, c<=4)": snn.NeuronSpec(spikes=snn.Spikes.AUGMENTED, max_spikes=4,
                                                            initial_potential=0.5)}
    rows = []
    for label, spec in kinds.items():
        net = snn.convert(ann, [calib.x[:500], calib.x[500:1000]], neuron=spec)
        for r in snn.sweep(net, x, y, STEPS):
            rows.append(SNNRow(f"cnn-avgpool -> {label}", r.time_steps, r.accuracy, r.spikes_per_inference,
                               r.synops, f"{r.accuracy - ann_acc:+.2f} vs ANN"))
    return rows, ann_acc, float(sum(r.macs for r in profile(ann, (x[:1],))))


def _trained_rows(test: Split, images: int) -> list[SNNRow]:
    try:
        from lowbit.snn.models import shipped_spiking_rows
    except ImportError:  # no spiking models shipped in this build
        return []
    return [SNNRow(*row) for row in shipped_spiking_rows(test, images)]


def snn_rows(test_set: Split | None = None, data_root=None, images: int = 500) -> SNNTable:
    """The rows of the module doc."""
    test = test_set if test_set is not None else fashion_mnist("test", root=data_root)
    calib = fashion_mnist("train", root=data_root)
    rows, ann_acc, macs = _converted_rows(test, calib, images)
    rows += _trained_rows(test, images)
    return SNNTable(tuple(rows), ann_acc, macs, min(images, len(test)))

"""The main job's low-precision-training rows (``lowbit run``): shipped results, evaluated now, nothing trained.

- ``kahan-cnn-fixed8``: the CNN trained from scratch by Kahan-compensated SGD with every parameter in 8-bit
  fixed point (paper B), evaluated on the test set now, beside the recorded float-SGD and uncompensated runs;
- the shipped MLP run in 16-bit logarithmic arithmetic (paper L: every product a code addition, every sum a
  LUT(20) log-domain addition in a fixed tree) on the first ``lns_images`` test images, against float on the
  same images, with the energy of one multiply-accumulate in each;
- the bit-slice sparsity of the shipped MLP's weights as 8-bit dynamic fixed point in 2-bit ReRAM cells
  (paper M) and the ADC bits a 128-row column needs;
- the last FC layer's bit-width bound for the 10 Fashion-MNIST classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.data import Split, fashion_mnist


@dataclass(frozen=True)
class LowPrecRow:
    what: str
    accuracy: float | None  # measured now (fraction); None for a row that is a recorded value only
    recorded: float | None
    note: str


@dataclass(frozen=True)
class LowPrecTable:
    rows: tuple[LowPrecRow, ...]
    bound: str
    n_test: int

    def render(self) -> str:
        lines = [f"low-precision training and arithmetic (shipped weights, nothing trained; Fashion-MNIST test set, {self.n_test} images unless said)",
                 f"{'model / method':<44}{'accuracy':>10}{'recorded':>10}  note", "-" * 96]
        for r in self.rows:
            acc = f"{100 * r.accuracy:>9.2f}%" if r.accuracy is not None else f"{'-':>10}"
            rec = f"{100 * r.recorded:>9.2f}%" if r.recorded is not None else f"{'-':>10}"
            lines.append(f"{r.what:<44}{acc}{rec}  {r.note}")
        lines += ["-" * 96, self.bound]
        return "\n".join(lines)


def _kahan_rows(test_set: Split) -> list[LowPrecRow]:
    from lowbit.zoo.lowprec_zoo import KEYS, pretrained_lowprec, shipped_meta, weights_path
    from lowbit.zoo.recipes import evaluate

    key = KEYS[0]
    if not weights_path(key).exists():
        return []
    meta = shipped_meta(key)
    rows = [LowPrecRow(f"{key} (KahanSGD, {meta['storage']})", evaluate(pretrained_lowprec(key), test_set),
                       float(meta["test_accuracy"]), "every parameter an 8-bit code, trained from scratch")]
    for name, acc in meta.get("benchmark_rows", {}).items():
        if name in ("float-sgd float32", "sgd-nearest fixed8.6"):
            rows.append(LowPrecRow(f"  same run: {name}", None, float(acc) / 100.0, "recorded by bench_kahan.py"))
    return rows


def _lns_rows(test_set: Split, images: int) -> list[LowPrecRow]:
    import torch

    from lowbit import zoo
    from lowbit.cost.energy import EnergyTable, lns_mac_energy, mac_energy
    from lowbit.functional.lns import LUT, LNSFormat, encode
    from lowbit.nn.lns import LNSMLP, predict

    model = zoo.pretrained("mlp").eval()
    x, y = test_set.x[:images], test_set.y[:images]
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    fmt = LNSFormat(16, 10)
    lns = LNSMLP.from_float([m.weight.detach() for m in layers], [m.bias.detach() for m in layers], fmt)
    with torch.no_grad():
        float_acc = float((model(x).argmax(1) == y).float().mean())
    lns_acc = float((predict(lns, encode(x.reshape(len(x), -1), fmt), LUT(20)) == y).float().mean())
    t = EnergyTable.load()
    note = (f"pJ per MAC: lns16 {lns_mac_energy(16, 'lut', t):.2f}, int8 {mac_energy(8, 8, t):.2f}, "
            f"fp32 {mac_energy(32, 32, t):.2f}")
    return [LowPrecRow(f"mlp in lns16 LUT(20) ({images} images)", lns_acc, None, note),
            LowPrecRow(f"mlp in float32 ({images} images)", float_acc, None, "the same images")]


def _slice_rows() -> list[LowPrecRow]:
    from lowbit import zoo
    from lowbit.cost.bitslice import adc_bits, slice_sparsity

    model = zoo.pretrained("mlp")
    every = slice_sparsity(model)[-1]  # the "all" row
    adc = adc_bits(model)
    zeros = "/".join(f"{z:.2f}" for z in every.zero)
    return [LowPrecRow("mlp weights in 2-bit slices (dfxp8)", None, None,
                       f"zero ratio per slice {zeros} (mean {every.mean:.2f}); ADC bits per slice "
                       f"{'/'.join(map(str, adc.max_bits))} (128 rows)")]


def lowprec_rows(test_set: Split | None = None, data_root=None, lns_images: int = 1000) -> LowPrecTable:
    """The rows of the module doc."""
    from lowbit.optim import min_bits_last_fc

    test_set = test_set if test_set is not None else fashion_mnist("test", root=data_root)
    bd = min_bits_last_fc(10)
    bound = (f"last FC bound, 10 classes: >= {bd.bits} bits for the logits and their error (1 sign + {bd.int_bits} "
             f"integer + {bd.frac_bits} fractional); benchmarks/results/last_fc_bound.md shows the collapse below it")
    rows = _kahan_rows(test_set) + _lns_rows(test_set, lns_images) + _slice_rows()
    return LowPrecTable(tuple(rows), bound, len(test_set))

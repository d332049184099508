"""The main job's low-precision-training rows (``lowbit run``): shipped results, evaluated now, nothing trained.

- ``kahan-cnn-fixed8``: the CNN trained from scratch by Kahan-compensated SGD with every parameter in 8-bit
  fixed point (paper B), evaluated on the test set now, beside the recorded float-SGD and uncompensated runs;
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
        lines = [f"low-precision training (shipped results; accuracy on {self.n_test} Fashion-MNIST test images)",
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
        if not name.startswith("kahan-sgd fixed8"):
            rows.append(LowPrecRow(f"  same run: {name}", None, float(acc) / 100.0, "recorded by bench_kahan.py"))
    return rows


def lowprec_rows(test_set: Split | None = None, data_root=None) -> LowPrecTable:
    """The rows of the module doc."""
    from lowbit.optim import min_bits_last_fc

    test_set = test_set if test_set is not None else fashion_mnist("test", root=data_root)
    bd = min_bits_last_fc(10)
    bound = (f"last FC bound, 10 classes: >= {bd.bits} bits for the logits and their error (1 sign + {bd.int_bits} "
             f"integer + {bd.frac_bits} fractional); benchmarks/results/last_fc_bound.md shows the collapse below it")
    return LowPrecTable(tuple(_kahan_rows(test_set)), bound, len(test_set))

"""Delta networks trained for sparsity (Neil et al., ICML 2017) on spoken digits and JapaneseVowels.

For each (dataset, cell): trains the dense classifier with bench_delta_convert's recipe (Adam 5e-3,
cosine, gradient clipping), then fine-tunes a delta copy of it with ``lowbit.delta.training.train_delta``
(the one loop ``lowbit.train``: thresholded forward pass with straight-through gradients, the L1 cost
``lam * sum_t |h_t - h_{t-1}|``, optional Gaussian noise and fixed-point rounding) at each
``(theta_x, theta_h, lam)`` point, and evaluates it at its thresholds with the counters of
``lowbit.delta`` (recurrent layers only; the linear read-out is dense either way). A control point
``(0, 0, 0)`` is fine-tuned with the same recipe: a dense model trained as long as the delta ones.
Writes ``results/delta_train.md`` and ``results/delta_train.json`` (issue 19's row layout, mode "trained").

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_delta_train.py [--runs spoken_digits:gru ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

from _common import RESULTS, write_result
from bench_delta_convert import accuracy as dense_accuracy_of
from bench_delta_convert import batches as split_batches
from bench_delta_convert import merge_delta
from bench_delta_convert import train as train_dense
from lowbit.data.japanese_vowels import japanese_vowels
from lowbit.data.spoken_digits import SpokenDigitsSpec, spoken_digits
from lowbit.delta import DeltaGRU, DeltaLSTM, record_counts
from lowbit.delta.training import DeltaClassifier, DeltaTrainSpec, QFormat, delta_training, train_delta
from lowbit.training import LoopConfig

# (theta_x, theta_h, lam); the first is the dense control
POINTS = {
    "spoken_digits": [(0.0, 0.0, 0.0), (0.2, 0.2, 0.0), (0.4, 0.3, 0.0), (0.5, 0.4, 0.0), (0.6, 0.4, 0.0),
                      (0.5, 0.4, 3e-4), (0.6, 0.4, 3e-4), (0.8, 0.5, 3e-4)],
    "japanese_vowels": [(0.0, 0.0, 0.0), (0.2, 0.2, 0.0), (0.4, 0.3, 1e-2), (0.6, 0.4, 1e-2), (0.8, 0.5, 1e-2),
                        (0.8, 0.5, 3e-2), (1.0, 0.6, 3e-2)],
}
EPOCHS = {"spoken_digits": 4, "japanese_vowels": 20}  # fine-tuning epochs per trained point


class LengthBatches:
    """JapaneseVowels batched by length (no padding steps), reshuffled per epoch from ``(seed, epoch)``."""

    def __init__(self, split, size: int, seed: int) -> None:
        self.split, self.size, self.seed = split, size, seed
        self.n = sum(1 for _ in split_batches(split, size, torch.Generator().manual_seed(0)))

    def __len__(self) -> int:
        return self.n

    def epoch(self, e: int):
        return split_batches(self.split, self.size, torch.Generator().manual_seed(1000 * self.seed + e))


def load(dataset: str):
    if dataset == "spoken_digits":
        spec = SpokenDigitsSpec()
        tr, te = spoken_digits("train", spec), spoken_digits("test", spec)
        return tr, te, 10, 8, (f"40-band log-mel spoken digits ({len(tr)} train / {len(te)} test clips, held-out "
                               f"voices; {spec})")
    tr, te = japanese_vowels("train"), japanese_vowels("test")
    return tr, te, 9, 40, (f"JapaneseVowels (12 LPC cepstra, 9 speakers, {len(tr)} train / {len(te)} test, "
                           "batched by length, no padding)")


def evaluate(model: nn.Module, split, spec: DeltaTrainSpec):
    """(test accuracy, total DeltaCost) at the model's thresholds, with the training spec's rounding."""
    model.eval()
    with torch.no_grad(), delta_training(model, spec), record_counts(model) as rec:
        right = sum(int((model(x).logits.argmax(1) == y).sum()) for x, y in split_batches(split, 540))
    return right / len(split), rec.total()


def run(dataset: str, cell: str, hidden: int, args) -> tuple[list[dict], str]:
    tr, te, classes, dense_epochs, what = load(dataset)
    epochs = args.epochs or EPOCHS[dataset]
    t0 = time.perf_counter()
    dense = train_dense(cell, hidden, 1, args.dense_epochs or dense_epochs, tr, classes)
    dense_s = time.perf_counter() - t0
    dense_acc = dense_accuracy_of(dense, te)
    print(f"{dataset} {cell}: dense {100 * dense_acc:.2f}% after {dense_s:.0f} s", flush=True)
    batches = tr if dataset == "spoken_digits" else LengthBatches(tr, 32, 0)
    spec = DeltaTrainSpec(rounding=QFormat(8, 8) if args.q88 else None, noise_std=args.noise)
    layer_cls = DeltaGRU if cell == "gru" else DeltaLSTM
    rows = []
    points = args.points or POINTS[dataset]
    if points[0] != (0.0, 0.0, 0.0):
        points = [(0.0, 0.0, 0.0), *points]  # the dense control comes first
    for theta_x, theta_h, lam in points:
        model = DeltaClassifier(layer_cls.from_torch(dense.rnn, theta_x, theta_h), copy.deepcopy(dense.head))
        t0 = time.perf_counter()
        train_delta(model, batches, LoopConfig(epochs=epochs, batch_size=32, seed=0), lam=lam, spec=spec,
                    optimizer=lambda params: torch.optim.Adam(params, args.lr), progress=False)
        train_s = time.perf_counter() - t0
        acc, tot = evaluate(model, te, spec)
        rows.append({"dataset": dataset, "cell": cell.upper(), "mode": "trained", "theta_x": theta_x,
                     "theta_h": theta_h, "accuracy": acc, "dense_accuracy": dense_acc,
                     "mac_reduction": tot.mac_reduction, "fetch_reduction": tot.fetch_reduction,
                     "step_us": None, "grucell_step_us": None, "lam": lam, "noise_std": spec.noise_std,
                     "rounding": "Q8.8" if args.q88 else None, "epochs": epochs, "hidden": hidden,
                     "x_occupancy": tot.x_occupancy, "h_occupancy": tot.h_occupancy, "train_s": round(train_s, 1)})
        print(f"  theta=({theta_x}, {theta_h}) lam={lam}: {100 * acc:.2f}% MACs /{tot.mac_reduction:.2f} fetches "
              f"/{tot.fetch_reduction:.2f} occ x {tot.x_occupancy:.3f} h {tot.h_occupancy:.3f} ({train_s:.0f} s)",
              flush=True)
    # the reference: the better of the dense model and the dense control trained as long as the delta models
    ref = max(dense_acc, rows[0]["accuracy"])
    for r in rows:
        r["dense_accuracy"] = ref
    ok = [r for r in rows[1:] if r["accuracy"] >= ref - 0.01]
    best = max(ok, key=lambda r: r["mac_reduction"]) if ok else None
    table = [f"### {dataset}, {cell.upper()}({hidden})", "",
             f"{what}. Dense: {args.dense_epochs or dense_epochs} epochs ({dense_s:.0f} s), test accuracy "
             f"{100 * dense_acc:.2f}%; fine-tuning {epochs} epochs per point; dense control (theta 0, lambda 0): "
             f"{100 * rows[0]['accuracy']:.2f}%; reference (the better) {100 * ref:.2f}%.", "",
             "| theta_x | theta_h | lambda | accuracy | loss (points) | MAC reduction | fetch reduction (batch 1) "
             "| occupancy Δx | occupancy Δh | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['theta_x']:.2f} | {r['theta_h']:.2f} | {r['lam']:g} | {100 * r['accuracy']:.2f}% | "
                     f"{100 * (ref - r['accuracy']):+.2f} | {r['mac_reduction']:.2f}x | {r['fetch_reduction']:.2f}x | "
                     f"{r['x_occupancy']:.3f} | {r['h_occupancy']:.3f} | {r['train_s']:.0f} |")
    table.append("")
    table.append("Operating point at <= 1 point loss: " + (
        f"theta_x={best['theta_x']}, theta_h={best['theta_h']}, lambda={best['lam']:g}: "
        f"{100 * best['accuracy']:.2f}% at {best['mac_reduction']:.2f}x fewer MACs, "
        f"{best['fetch_reduction']:.2f}x fewer weight fetches." if best else "none of the trained points."))
    return rows, "\n".join(table) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=["spoken_digits:gru:128", "spoken_digits:gru:64",
                                                  "japanese_vowels:gru:64", "japanese_vowels:lstm:64"],
                    help="dataset:cell:hidden_size items")
    ap.add_argument("--dense-epochs", type=int, default=None, help="default 8 (spoken digits), 40 (JapaneseVowels)")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs per point (default 4 spoken "
                    "digits, 20 JapaneseVowels)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--noise", type=float, default=0.0, help="Gaussian noise std on the thresholded values")
    ap.add_argument("--q88", action="store_true", help="round activations to Q8.8 in training and evaluation")
    ap.add_argument("--points", nargs="+", default=None, type=lambda v: tuple(float(p) for p in v.split(",")),
                    help="theta_x,theta_h,lambda triples for every run (the dense control 0,0,0 is added first)")
    ap.add_argument("--name", default="delta_train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, bodies = [], []
    for item in args.runs:
        dataset, cell, hidden = item.split(":")
        r, body = run(dataset, cell, int(hidden), args)
        rows += r
        bodies.append(body)
    intro = (f"Delta networks fine-tuned for sparsity from the dense model with `lowbit.delta.training.train_delta` "
             f"(the one loop `lowbit.train`): thresholded forward pass with straight-through gradients, L1 cost "
             f"lambda * sum_t |h_t - h_(t-1)| (summed over steps and units, mean over the batch), Adam lr {args.lr}, "
             f"cosine, batch 32, seed 0; Gaussian noise std {args.noise}; "
             f"{'Q8.8 activation rounding' if args.q88 else 'no activation rounding'}. Accuracy and counters on "
             "the test split at the training thresholds; reductions are of the recurrent layers' MACs and "
             "weight-column reads against the dense layers. 'loss (points)' is against the reference: the better "
             "of the dense model and the dense control (theta 0, lambda 0) fine-tuned as long.\n\n")
    write_result(args.name, intro + "\n".join(bodies))
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    merge_delta(rows, f"{args.name}.json")


if __name__ == "__main__":
    main()

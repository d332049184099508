"""Delta conversion without retraining (Neil et al., ICML 2017, sec. 5.2) on spoken digits or JapaneseVowels.

Trains a small GRU (or LSTM) classifier on the synthesized spoken-digit log-mel sequences
(or JapaneseVowels' LPC cepstra, speaker identification) for a few epochs, converts it with ``lowbit.delta.to_delta`` at a sweep of thresholds and prints the
test accuracy against the MAC and weight-fetch reductions of the recurrent layers (the
linear read-out, dense either way, is not counted). Writes ``results/delta_convert.md`` and
``results/delta_convert[_<dataset>_<cell>].json`` (rows in the layout of issue 19's ``delta.json``).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_delta_convert.py [--dataset spoken_digits] [--cell gru]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from _common import RESULTS, merge_rows, write_result
from lowbit.data.japanese_vowels import japanese_vowels
from lowbit.data.spoken_digits import SpokenDigitsSpec, spoken_digits
from lowbit.delta import sweep
from lowbit.delta.fixed import FixedDeltaGRURuntime, FixedDeltaLSTMRuntime
from lowbit.zoo import recurrent

THETAS = [(0.0, 0.0), (0.05, 0.05), (0.1, 0.1), (0.2, 0.1), (0.2, 0.2), (0.3, 0.2), (0.4, 0.3), (0.5, 0.3),
          (0.6, 0.4), (0.8, 0.5), (1.0, 0.5)]


# delta.json (issue 19's table) gathers every delta benchmark's rows; a row replaces the stored one with the same
# values of these keys (absent keys read as None)
DELTA_KEY = ("dataset", "cell", "mode", "theta_x", "theta_h", "lam", "hidden", "rounding", "noise_std", "source")


def merge_delta(rows: list[dict], source: str) -> None:
    """Merge ``rows`` (issue 19's layout) into ``results/delta.json``, each tagged with the result file it comes
    from (``source``), so that the streaming, conversion and training benchmarks can run apart."""
    merge_rows("delta.json", [{**{k: None for k in DELTA_KEY}, **r, "source": source} for r in rows], DELTA_KEY)


class Classifier(nn.Module):
    """Recurrent layers, then a linear read-out of the last step's hidden state."""

    def __init__(self, cell: str, features: int, hidden: int, layers: int, classes: int) -> None:
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(features, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def batches(split, size: int, gen: torch.Generator | None = None):
    """``(x, y)`` batches; a split with ``lengths`` (JapaneseVowels) is grouped by length and its front
    padding cut, so that neither training nor the counters see padding steps. Shuffled when ``gen``."""
    if getattr(split, "lengths", None) is not None:
        yield from recurrent.length_batches(split, size, gen)
        return
    order = torch.arange(len(split)) if gen is None else torch.randperm(len(split), generator=gen)
    for idx in order.split(size):
        yield split.x[idx], split.y[idx]


def accuracy(model: nn.Module, split) -> float:
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(split, 540))
    return right / len(split)


def fixed_accuracy(model: Classifier, split, theta_x: float, theta_h: float) -> float | None:
    """Test accuracy with the one recurrent layer run by the fixed-point C runtime (int8 weights, Q8.8
    activations; ``lowbit.delta.fixed``), sequence by sequence, the read-out in float on ``h = code / 2^8``;
    None for a model of more than one layer (the fixed-point runtime runs one)."""
    if model.rnn.num_layers != 1:
        return None
    runtime = FixedDeltaGRURuntime if isinstance(model.rnn, nn.GRU) else FixedDeltaLSTMRuntime
    rt = runtime.from_layer(model.rnn, theta_x=theta_x, theta_h=theta_h)
    right = 0
    with torch.no_grad():
        for x, y in batches(split, 540):
            for xi, yi in zip(x, y):
                rt.reset()
                h = rt.run(xi)[-1].float() / 2 ** rt.q.frac_bits
                right += int(model.head(h).argmax() == yi)
    return right / len(split)


def train(cell: str, hidden: int, layers: int, epochs: int, train_split, classes: int) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(cell, train_split.x.shape[-1], hidden, layers, classes)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * sum(1 for _ in batches(train_split, 32)))
    gen = torch.Generator().manual_seed(1)
    for epoch in range(epochs):
        model.train()
        for x, y in batches(train_split, 32, gen):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}", flush=True)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["spoken_digits", "japanese_vowels"], default="spoken_digits")
    ap.add_argument("--cell", choices=["gru", "lstm"], default="gru")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default 8 (spoken digits), 40 (JapaneseVowels)")
    args = ap.parse_args()
    if args.dataset == "spoken_digits":
        spec = SpokenDigitsSpec()
        tr, te = spoken_digits("train", spec), spoken_digits("test", spec)
        what, classes, epochs = (f"40-band log-mel spoken digits ({len(tr)} train / {len(te)} test clips, "
                                 f"held-out voices; {spec})"), 10, args.epochs or 8
    else:
        tr, te = japanese_vowels("train"), japanese_vowels("test")
        what, classes, epochs = (f"JapaneseVowels (12 LPC cepstra, 9 speakers, {len(tr)} train / {len(te)} test, "
                                 "batched by length, no padding)"), 9, args.epochs or 40
    t0 = time.perf_counter()
    model = train(args.cell, args.hidden, args.layers, epochs, tr, classes)
    train_s = time.perf_counter() - t0
    dense_acc = accuracy(model, te)
    rows = []
    for point in sweep(model, THETAS, lambda m: accuracy(m, te)):
        theta_x, theta_h, acc, tot = point.theta_x, point.theta_h, point.metric, point.cost
        rows.append({"dataset": args.dataset, "cell": args.cell.upper(), "mode": "converted",
                     "theta_x": theta_x, "theta_h": theta_h, "accuracy": acc, "dense_accuracy": dense_acc,
                     "mac_reduction": tot.mac_reduction, "fetch_reduction": tot.fetch_reduction,
                     "x_occupancy": tot.x_occupancy, "h_occupancy": tot.h_occupancy,
                     "step_us": None, "grucell_step_us": None,
                     "int8_accuracy": fixed_accuracy(model, te, theta_x, theta_h)})
        print(f"theta_x={theta_x:.2f} theta_h={theta_h:.2f}: accuracy {acc:.4f} (dense {dense_acc:.4f}), "
              f"MACs /{tot.mac_reduction:.2f}, occupancy x {tot.x_occupancy:.3f} h {tot.h_occupancy:.3f}",
              flush=True)
    best = max((r for r in rows if r["accuracy"] >= dense_acc - 0.01), key=lambda r: r["mac_reduction"])
    table = ["| theta_x | theta_h | accuracy | loss (points) | MAC reduction | fetch reduction (batch 1) "
             "| occupancy Δx | occupancy Δh | int8 / Q8.8 accuracy (C) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fx = "-" if r["int8_accuracy"] is None else f"{100 * r['int8_accuracy']:.2f}%"
        table.append(f"| {r['theta_x']:.2f} | {r['theta_h']:.2f} | {100 * r['accuracy']:.2f}% | "
                     f"{100 * (dense_acc - r['accuracy']):+.2f} | {r['mac_reduction']:.2f}x | "
                     f"{r['fetch_reduction']:.2f}x | {r['x_occupancy']:.3f} | {r['h_occupancy']:.3f} | {fx} |")
    body = (f"{args.cell.upper()}({args.hidden}) x {args.layers} layer(s) on {what}, trained {epochs} epochs "
            f"in {train_s:.0f} s, dense test accuracy {100 * dense_acc:.2f}%. Converted without retraining by "
            "`lowbit.delta.to_delta`; reductions are of the recurrent layers' MACs and weight-column reads "
            "against the dense layers (the read-out is not counted). The last column runs the recurrent layer "
            "in fixed point (`lowbit.delta.fixed`: int8 weights, Q8.8 activations and cell, table gates; its C "
            "runtime, sequence by sequence) at the same thresholds.\n\n" + "\n".join(table) +
            f"\n\nOperating point at <= 1 point loss: theta_x={best['theta_x']}, theta_h={best['theta_h']}: "
            f"{100 * best['accuracy']:.2f}% at {best['mac_reduction']:.2f}x fewer MACs.\n")
    name = "delta_convert" if (args.dataset, args.cell) == ("spoken_digits", "gru") else \
        f"delta_convert_{args.dataset}_{args.cell}"
    write_result(name, body)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    merge_delta([{**r, "hidden": args.hidden} for r in rows], f"{name}.json")


if __name__ == "__main__":
    main()

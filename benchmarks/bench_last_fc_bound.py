"""Paper B's last-FC bit-width bound, tested: accuracy against the bits of the last FC layer's output, on a
synthetic many-class task, with the bound of :func:`lowbit.optim.min_bits_last_fc` marked.

The task: ``N`` classes, each a Gaussian cluster in 32 dimensions (centres drawn from N(0, I), noise sigma 1.2,
so the float model separates them well), 100 training and 50 test examples per class, for N = 10 and 100 classes
(``--classes 1000`` runs too, slowly). The model: 32-128-N MLP whose
logits and back-propagated error pass through :func:`lowbit.optim.fixed_point_logits` (``b`` bits, ``f`` of them
fractional); everything else is float32. For each total width ``b`` every split ``f = max(0, b-6) .. b-1`` is trained
(SGD momentum 0.9, lr 0.1 cosine, batch 100, 15 epochs, the same initial weights and batch order) and the best
split's test accuracy is reported (splits with up to 5 integer bits: the bound needs at most 4): the curve is what the best ``b``-bit format can do. The float column is the
same model without the quantizer.

``python benchmarks/bench_last_fc_bound.py`` (``--classes 10 100``, ``--epochs``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import merge_rows, write_result  # noqa: E402

from lowbit.optim import FixedPoint, fixed_point_logits, min_bits_last_fc  # noqa: E402

DIM, HIDDEN, SIGMA = 32, 128, 1.2


def make_task(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n, DIM, generator=g)

    def draw(per: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n).repeat_interleave(per)
        return centres[y] + SIGMA * torch.randn(len(y), DIM, generator=g), y

    return (*draw(100), *draw(50))


class Net(nn.Module):
    def __init__(self, n: int, fmt: FixedPoint | None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n))
        self.fmt = fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        return z if self.fmt is None else fixed_point_logits(z, self.fmt)


def train_eval(task: tuple[torch.Tensor, ...], n: int, fmt: FixedPoint | None, epochs: int, seed: int) -> float:
    xtr, ytr, xte, yte = task
    torch.manual_seed(seed)
    net = Net(n, fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * (len(ytr) // 100)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr) - 99, 100):
            idx = perm[i:i + 100]
            loss = nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        z = net(xte)
        # a tie at the top (saturated or coarse logits) counts as wrong unless the target is the only maximum
        top = z.max(1, keepdim=True).values
        unique = (z == top).sum(1) == 1
        return 100.0 * float(((z.argmax(1) == yte) & unique).float().mean())


def sweep(n: int, max_bits: int, epochs: int, seed: int) -> dict:
    task = make_task(n, seed)
    float_acc = train_eval(task, n, None, epochs, seed)
    bound = min_bits_last_fc(n)
    rows = []
    for b in range(2, max_bits + 1):
        accs = {f: train_eval(task, n, FixedPoint(b, f), epochs, seed) for f in range(max(0, b - 6), b)}
        f_best = max(accs, key=accs.get)
        rows.append({"bits": b, "best_frac": f_best, "accuracy": accs[f_best],
                     "at_bound_split": accs.get(min(bound.frac_bits, b - 1))})
        print(f"N={n:5d} b={b:2d}: best {accs[f_best]:6.2f}% (frac {f_best})  float {float_acc:.2f}", flush=True)
    return {"classes": n, "float": float_acc, "bound": bound, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-bits", type=int, default=3, help="sweep up to the bound plus this many bits")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = [sweep(n, min_bits_last_fc(n).bits + args.extra_bits, args.epochs, args.seed) for n in args.classes]
    parts, json_rows = [], []
    for r in results:
        bd = r["bound"]
        lines = [f"### N = {r['classes']} classes: bound {bd.bits} bits (sign + {bd.int_bits} integer + "
                 f"{bd.frac_bits} fractional; R = {bd.logit_range:.2f}); float {r['float']:.2f}%", "",
                 "| last-FC bits | best test accuracy % | best fractional bits | vs float | |", "|---|---|---|---|---|"]
        for row in r["rows"]:
            mark = "**bound**" if row["bits"] == bd.bits else ("below" if row["bits"] < bd.bits else "")
            lines.append(f"| {row['bits']} | {row['accuracy']:.2f} | {row['best_frac']} | "
                         f"{row['accuracy'] - r['float']:+.2f} | {mark} |")
        near = min((x["bits"] for x in r["rows"] if x["accuracy"] >= r["float"] - 0.5), default=None)
        dead = max((x["bits"] for x in r["rows"] if x["accuracy"] < 10.0), default=None)
        lines += ["", f"Within 0.5 points of float from {near} bits; collapsed (< 10%, ties at saturated logits) at "
                      f"{dead} bits and below; the bound is {bd.bits} bits."]
        parts.append("\n".join(lines))
        at = next(x for x in r["rows"] if x["bits"] == bd.bits)
        below = [x for x in r["rows"] if x["bits"] < bd.bits]
        json_rows.append({"method": "last-fc-bound", "model": f"synthetic-{r['classes']}-class-mlp",
                          "storage": f"fixed{bd.bits}.{bd.frac_bits}-logits", "accuracy": round(at["accuracy"], 2),
                          "float_accuracy": round(r["float"], 2),
                          "extra": {"bound_bits": bd.bits, "int_bits": bd.int_bits, "frac_bits": bd.frac_bits,
                                    "curve": {x["bits"]: round(x["accuracy"], 2) for x in r["rows"]},
                                    "best_below_bound": round(max((x["accuracy"] for x in below), default=0.0), 2)}})
    body = (__doc__.split("\n\n", 1)[1].split("``python")[0].strip() + "\n\n"
            + "\n\n".join(parts) + f"\n\nTotal time {time.perf_counter() - start:.0f} s, 1 thread.")
    write_result("last_fc_bound", body)
    merge_rows("lowprec_training.json", json_rows, key=("method", "model", "storage"))


if __name__ == "__main__":
    main()

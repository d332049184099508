"""LNS training (paper L, Sanyal et al. 2019) of a Fashion-MNIST MLP 784-100-10 against float32 SGD.

Both runs share the architecture, the initial weights (``nn.Linear``'s init, seed 0; LNS encodes them), the batch
order (one permutation per epoch from a fixed generator), batch 100, plain SGD without momentum or weight decay,
and the learning-rate schedule ``lr = 0.1 * 0.5^epoch``. Data: all 60,000 training images ("train+val"),
accuracy on the 10,000 test images. LNS runs use :mod:`lowbit.nn.lns` (every product, sum, ReLU and SGD update
in LNS; the softmax cross-entropy output error ``p - y`` is computed in float from the decoded logits and encoded
back, except in the ``lut16-lnsce`` run, where it is computed in the log domain too). Results: ``results/lns_training.md`` and rows of ``results/lowprec_training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import merge_rows, write_result  # noqa: E402

from lowbit.data.datasets import fashion_mnist  # noqa: E402
from lowbit.functional.lns import LUT, LNSFormat, LNSTensor, MaxOnly, Shift, encode  # noqa: E402
from lowbit.nn.lns import LNSMLP, predict, train_step  # noqa: E402

MODEL = "fmnist-mlp-784-100-10"
# name: (bits, frac_bits, delta, output error in the log domain); 5 integer bits (sign included) in every width,
# log2 range about +-16
CONFIGS = {
    "lut16": (16, 10, LUT(20), False),
    "lut12": (12, 6, LUT(20), False),
    "lut10": (10, 4, LUT(20), False),
    "max16": (16, 10, MaxOnly(), False),
    "shift16": (16, 10, Shift(), False),
    "lut16-lnsce": (16, 10, LUT(20), True),
}
METHOD = {"LUT": "lns-lut20", "MaxOnly": "lns-max", "Shift": "lns-shift"}


def lr_at(epoch: int, lr0: float) -> float:
    return lr0 * 0.5**epoch


def batches(n: int, batch: int, epoch: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + epoch))
    return list(perm.split(batch))


def init_params() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(784, 100), torch.nn.Linear(100, 10)
    return [l1.weight.detach().clone(), l2.weight.detach().clone()], [l1.bias.detach().clone(), l2.bias.detach().clone()]


def train_float(xtr, ytr, xte, yte, epochs: int, lr0: float, batch: int, steps: int | None) -> dict:
    (w1, w2), (b1, b2) = init_params()
    params = [p.requires_grad_() for p in (w1, b1, w2, b2)]
    times = []
    for epoch in range(epochs):
        lr = lr_at(epoch, lr0)
        t0 = time.perf_counter()
        for idx in batches(len(ytr), batch, epoch)[:steps]:
            z = torch.relu(xtr[idx] @ w1.T + b1) @ w2.T + b2
            loss = torch.nn.functional.cross_entropy(z, ytr[idx])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = float(((torch.relu(xte @ w1.T + b1) @ w2.T + b2).argmax(1) == yte).float().mean()) * 100
    return {"accuracy": acc, "seconds_per_epoch": sum(times) / len(times)}


def train_lns(name: str, xtr, ytr, xte, yte, epochs: int, lr0: float, batch: int, steps: int | None) -> dict:
    bits, frac, delta, lns_output = CONFIGS[name]
    fmt = LNSFormat(bits, frac)
    ws, bs = init_params()
    model = LNSMLP.from_float(ws, bs, fmt)
    xtr_l, xte_l = encode(xtr, fmt), encode(xte, fmt)
    times = []
    for epoch in range(epochs):
        lr = lr_at(epoch, lr0)
        t0 = time.perf_counter()
        for i, idx in enumerate(batches(len(ytr), batch, epoch)[:steps]):
            x = LNSTensor(xtr_l.sign[idx], xtr_l.code[idx], fmt)
            model, _ = train_step(model, x, ytr[idx], lr, delta, lns_output)
            if i % 100 == 0:
                print(f"  {name} epoch {epoch} step {i} {time.perf_counter() - t0:.0f}s", flush=True)
        times.append(time.perf_counter() - t0)
    acc = float((predict(model, xte_l, delta) == yte).float().mean()) * 100
    return {"accuracy": acc, "seconds_per_epoch": sum(times) / len(times), "bits": bits, "frac_bits": frac,
            "delta": str(delta), "output_error": "lns" if lns_output else "float"}


def measure(args) -> tuple[dict, dict]:
    train, test = fashion_mnist("train+val"), fashion_mnist("test")
    xtr, xte = train.x.reshape(len(train), -1), test.x.reshape(len(test), -1)
    ytr, yte = train.y, test.y
    fl = train_float(xtr, ytr, xte, yte, args.epochs, args.lr, args.batch, args.steps)
    print(f"float32: {fl}", flush=True)
    results = {}
    for name in args.configs:
        results[name] = train_lns(name, xtr, ytr, xte, yte, args.epochs, args.lr, args.batch, args.steps)
        print(f"{name}: {results[name]}", flush=True)
    return fl, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--configs", nargs="+", default=[c for c in CONFIGS if c != "lut16-lnsce"], choices=list(CONFIGS),
                    help="runs to measure; their results are merged into results/lns_training_raw.json")
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (smoke runs only; nothing is written)")
    ap.add_argument("--xlns-note", default="", help="file with the text of the xlnstorch note (how it was measured)")
    ap.add_argument("--xlns-json", default=None, help="JSON file with an xlnstorch measurement to add as a row")
    ap.add_argument("--from-raw", default=None, help="write the report from a saved lns_training_raw.json, no training")
    args = ap.parse_args()
    torch.set_num_threads(1)
    raw_path = Path(__file__).parent / "results" / "lns_training_raw.json"
    if args.from_raw:
        raw = json.loads(Path(args.from_raw).read_text())
        fl, results, args.epochs, args.lr, args.batch = (raw[k] for k in ("float", "lns", "epochs", "lr", "batch"))
    else:
        fl, results = measure(args)
        if args.steps is not None:
            return
        raw = {"float": fl, "lns": {}, "epochs": args.epochs, "lr": args.lr, "batch": args.batch, "commands": []}
        if raw_path.exists():
            old = json.loads(raw_path.read_text())
            if all(old.get(k) == raw[k] for k in ("epochs", "lr", "batch")):  # same protocol: keep other runs
                raw["lns"], raw["commands"] = old["lns"], old.get("commands", [old.get("command")])
        raw["lns"].update(results)
        if " ".join(sys.argv) not in raw["commands"]:  # a rerun of a config replaces its results
            raw["commands"].append(" ".join(sys.argv))
        raw_path.write_text(json.dumps(raw, indent=2) + "\n")
        results = raw["lns"]

    rows, lines = [], []
    for r in results.values():
        method = METHOD[r["delta"].split("(")[0]] + ("-lnsce" if r.get("output_error") == "lns" else "")
        extra = {"seconds_per_epoch": round(r["seconds_per_epoch"], 1), "frac_bits": r["frac_bits"],
                 "epochs": args.epochs, "delta": r["delta"], "output_error": r.get("output_error", "float")}
        rows.append({"method": method, "model": MODEL, "storage": f"lns{r['bits']}", "accuracy": round(r["accuracy"], 2),
                     "float_accuracy": round(fl["accuracy"], 2), "extra": extra})
        lines.append(f"| {method} | lns{r['bits']} (F={r['frac_bits']}) | {r['delta']} | "
                     f"{r.get('output_error', 'float')} | {r['accuracy']:.2f} | "
                     f"{r['accuracy'] - fl['accuracy']:+.2f} | {r['seconds_per_epoch']:.0f} |")
    if args.xlns_json:
        x = json.loads(Path(args.xlns_json).read_text())
        rows.append({"method": "xlnstorch", "model": MODEL, "storage": x["storage"], "accuracy": x["accuracy"],
                     "float_accuracy": round(fl["accuracy"], 2), "extra": x["extra"]})
        e = x["extra"]
        lines.append(f"| xlnstorch | {x['storage']} | {e.get('delta', '')} | float64 autograd | {x['accuracy']} "
                     f"after {e['steps_timed']} steps on {e['test_images']} test images | n/a | "
                     f"{e['seconds_per_epoch']} ({e['steps_timed']} steps timed, extrapolated to 600) |")
    body = f"""Fashion-MNIST MLP 784-100-10 trained from the same initial weights, batch order and learning-rate
schedule (SGD, batch {args.batch}, lr {args.lr} x 0.5^epoch, {args.epochs} epochs on all 60,000 training images),
test accuracy on the 10,000 test images. Float: float32 autograd. LNS: `lowbit.nn.lns` (paper L), every product
(code addition), sum (log-domain addition in a fixed pairwise tree), ReLU (sign test) and SGD update
(`W <- W (+) (-lr * g)`) on LNS codes. Output error of softmax cross-entropy: in the rows marked `float`, **`p - y` is
computed in float from the decoded logits and encoded back** (the one non-LNS step); in the `-lnsce` row it is
computed in the log domain (`output_error_lns`: log-sum-exp as a (+)-tree, only the logits converted LNS -> fixed
point). Delta: `LUT(20)` = 20-entry table over d in [0, 10),
`MaxOnly` = the larger operand, `Shift` = Mitchell shifts. One thread; the 2 cores were shared with other jobs, so
seconds per epoch are upper bounds.

float32: **{fl['accuracy']:.2f} %**, {fl['seconds_per_epoch']:.1f} s/epoch

| method | storage | Delta | output error p - y | test accuracy % | vs float | s/epoch |
|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Notes. `MaxOnly`: a dot product becomes its largest term, and the update `W (+) (-lr g)` leaves `W` unchanged
unless `|lr g| >= |W|` (then it replaces `W`), so SGD cannot accumulate small steps; a row near 10 % is chance.
`LUT(20)` bins are 0.5 wide in `d` (error at most 0.15 |larger operand| per addition, 0 beyond `d = 10`, so an
update smaller than 2^-10 |W| is lost); `Shift` (Mitchell) is within 0.09-0.13 in log2 for Delta+.
Raw measurements: `results/lns_training_raw.json` (runs of one protocol merged; `--from-raw` rewrites this report).
Measured by: {"; ".join(f"`{c}`" for c in raw.get("commands", []))}

xlnstorch: {Path(args.xlns_note).read_text().strip() if args.xlns_note else 'not measured'}
"""
    write_result("lns_training", body)
    merge_rows("lowprec_training.json", rows, key=("method", "model", "storage"))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

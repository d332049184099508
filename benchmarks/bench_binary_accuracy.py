"""Fashion-MNIST test accuracy of deployed binary / few-bit networks (lowbit QAT), side by side with brevitas W1A1.

Models: :class:`lowbit.zoo.binary.BinaryCNN` (``cnn``) and :class:`lowbit.zoo.binary.BinaryMLP` (``mlp``).
Configs (hidden layers; the first layer and the classifier stay 8-bit, ``QATConfig.first_last_bits``):

* ``w1a1``: ``QuantSpec(Binary(), PerChannel(0))`` weights (``--binary xnor``: sign(w) * mean|w| per output
  channel, or ``sign``: +-1), ``QuantSpec(Binary())`` activations (sign);
* ``w1a2``: binary weights, 2-bit LSQ activations;
* ``w2a2``: 2-bit LSQ weights per output channel, 2-bit LSQ activations; BatchNorm stays unfolded for the
  whole run (``bn_freeze_steps=10**9``: the models start untrained, so folding it first would drop it) and
  is folded at ``convert_qat``.

lowbit trains with ``lowbit.qat.train`` (Adam, cosine to zero, no augmentation, ``seed``), then
``convert_qat``; the reported accuracy is the integer model's (``lowbit.integer.to_integer``) where it
lowers the converted model, otherwise the converted model's (the same integer arithmetic, bit-exact).
brevitas trains its W1A1 twin (``benchmarks/binary_brevitas.py``) on the same batches (lowbit's
``Shuffled(train, 128, seed, augment=False)``) with the same epochs, Adam learning rate, cosine schedule and
seed. Rows are merged into ``<out>/binary_accuracy.json`` (keyed by model, bits and tool), so runs can be
done in pieces; run details (seconds, lr, evaluation path) go to ``<out>/binary_accuracy_runs.json``.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_binary_accuracy.py \\
        --models mlp --configs w1a1 --tools lowbit,brevitas --epochs-mlp 10
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BITS = {"w1a1": (1, 1), "w1a2": (1, 2), "w2a2": (2, 2), "wta1": (1.58, 1)}  # wta1: ternary weights (log2 3 bits)
SHIP = {("cnn", "w1a1"): "binary-cnn-w1a1", ("mlp", "w1a1"): "binary-mlp-w1a1"}

LOWBIT_DEFINITION = {
    "xnor": ("lowbit Binary() weights, binary='xnor': w_q = alpha_c * sign(w), alpha_c = mean|w| over output channel c "
             "(XNOR-Net), sign(0) = +1, straight-through gradient cancelled where |w| > 1, latent weights clipped to "
             "[-1,1] after each step; BatchNorm trained unfolded and folded at convert into a per-channel gain and "
             "sign threshold; Binary() activations: a_q = sign(x) in {-1,+1} (x >= 0 -> +1), hard-tanh STE; first "
             "layer and classifier 8-bit (LSQ)"),
    "sign": ("lowbit Binary() weights, binary='sign': w_q = sign(w) in {-1,+1} (BNN), sign(0) = +1, straight-through "
             "gradient cancelled where |w| > 1, latent weights clipped to [-1,1] after each step; BatchNorm trained "
             "unfolded and folded at convert into a per-channel gain and sign threshold; Binary() activations: "
             "a_q = sign(x) in {-1,+1} (x >= 0 -> +1), hard-tanh STE; first layer and classifier 8-bit (LSQ)"),
}


def qat_config(config: str, binary: str):
    from lowbit.formats import Binary, IntFormat
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec

    bin_w = QuantSpec(Binary(), PerChannel(0), binary=binary)
    if config == "w1a1":
        return QATConfig(weight=bin_w, act=QuantSpec(Binary()))
    if config == "w1a2":
        return QATConfig(weight=bin_w, act=QuantSpec(IntFormat(2, signed=False)))
    if config == "w2a2":  # BatchNorm trained unfolded for the whole run (as in the binary configs), folded at convert
        return QATConfig(weight=QuantSpec(IntFormat(2), PerChannel(0)), act=QuantSpec(IntFormat(2, signed=False)),
                         bn_freeze_steps=10**9)
    if config == "wta1":  # exact ternary weights, sign activations; BatchNorm trained unfolded, folded at convert
        from lowbit.formats import Ternary
        return QATConfig(weight=QuantSpec(Ternary(), PerChannel(0)), act=QuantSpec(Binary()), bn_freeze_steps=10**9)
    raise ValueError(f"unknown config {config!r}")


def make_model(model: str, channels: int) -> torch.nn.Module:
    from lowbit.zoo.binary import BinaryCNN, BinaryMLP

    return BinaryCNN(channels=channels) if model == "cnn" else BinaryMLP()


@torch.no_grad()
def accuracy(fn, split, batch_size: int = 500) -> float:
    correct = 0
    for start in range(0, len(split), batch_size):
        logits = torch.as_tensor(fn(split.x[start:start + batch_size]))
        correct += (logits.argmax(1) == split.y[start:start + batch_size]).sum().item()
    return 100.0 * correct / len(split)


def run_lowbit(model: str, config: str, epochs: int, lr: float, seed: int, binary: str, channels: int,
               train_limit: int | None, save: bool) -> dict:
    from lowbit.data import load
    from lowbit.qat import TrainConfig, convert_qat, prepare_qat, train

    train_split, test = load("fashion-mnist", "train"), load("fashion-mnist", "test")
    if train_limit is not None:
        train_split = train_split.take(train_limit)
    torch.manual_seed(seed)
    net = make_model(model, channels)
    start = time.perf_counter()
    gm = prepare_qat(net, qat_config(config, binary), train_split.x[:256])
    history = train(gm, train_split, TrainConfig(epochs=epochs, optimizer="adam", lr=lr, augment=False, seed=seed),
                    progress=False)
    convert_qat(gm)
    gm.eval()
    train_seconds = time.perf_counter() - start
    if train_limit is None:  # a local copy of the trained weights (torch format; not shipped)
        keep = Path("/tmp/bin-acc-ckpt")
        keep.mkdir(exist_ok=True)
        torch.save(gm.state_dict(), keep / f"{model}-{config}-{binary}-lr{lr}-e{epochs}.pt")
    converted_acc = accuracy(gm, test)
    evaluated, acc, integer_error = "converted", converted_acc, None
    try:
        from lowbit.integer import to_integer

        im = to_integer(gm, (test.x[:1],))
        acc = accuracy(im, test)
        evaluated = "integer"
    except Exception as exc:  # noqa: BLE001 - binary layers may not lower yet: report the converted model
        integer_error = f"{type(exc).__name__}: {str(exc)[:300]}"
    seconds = time.perf_counter() - start
    row = {"model": model, "weight_bits": BITS[config][0], "act_bits": BITS[config][1], "tool": "lowbit",
           "accuracy": acc, "epochs": epochs, "seconds": seconds, "train_seconds": train_seconds, "lr": lr,
           "seed": seed, "binary_scale": binary if config in ("w1a1", "w1a2") else None, "channels": channels if model == "cnn" else None,
           "train_samples": len(train_split), "evaluated": evaluated, "converted_accuracy": converted_acc,
           "integer_error": integer_error, "history": history,
           "definition": LOWBIT_DEFINITION[binary] if config in ("w1a1", "w1a2") else {
               "w2a2": "LSQ 2-bit weights and activations",
               "wta1": "exact ternary weights per channel (LSQ step), sign activations"}[config]}
    if save and (model, config) in SHIP and train_limit is None:
        from lowbit.zoo.binary_zoo import save_binary

        path = save_binary(SHIP[(model, config)], gm, {
            "test_accuracy": round(acc * len(test) / 100) / len(test), "evaluated": evaluated, "epochs": epochs, "lr": lr, "seed": seed,
            "binary_scale": binary, "channels": channels if model == "cnn" else None,
            "recipe": f"benchmarks/bench_binary_accuracy.py --models {model} --configs {config} --save"})
        row["saved"] = {"path": str(path.relative_to(ROOT)), "bytes": path.stat().st_size}
    return row


def run_brevitas(model: str, epochs: int, lr: float, seed: int, channels: int, train_limit: int | None) -> dict:
    from binary_brevitas import train_brevitas

    if model == "cnn" and channels != 64:
        raise SystemExit("binary_brevitas.brevitas_cnn builds 64 channels; run --channels 64 for brevitas")
    row = train_brevitas(model, epochs, lr=lr, seed=seed, train_limit=train_limit, progress=True)
    row.update(lr=lr, seed=seed, channels=channels if model == "cnn" else None)
    return row


PUBLIC = ("model", "weight_bits", "act_bits", "tool", "accuracy", "epochs")


def _key(r: dict) -> tuple:
    return (r["model"], r["weight_bits"], r["act_bits"], r["tool"])


def merge(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, pick in (("binary_accuracy.json", lambda r: {k: r[k] for k in PUBLIC}),
                       ("binary_accuracy_runs.json", lambda r: r)):
        path = out / name
        old = json.loads(path.read_text()) if path.exists() else []
        new = {_key(r): r for r in old}
        for r in rows:
            new[_key(r)] = pick(r)
        order = {"cnn": 0, "mlp": 1}
        merged = sorted(new.values(), key=lambda r: (order[r["model"]], r["weight_bits"], r["act_bits"], r["tool"]))
        path.write_text(json.dumps(merged, indent=2) + "\n")


TARGETS = {("cnn", 1, 1): 90.0, ("cnn", 1, 2): 91.0, ("cnn", 2, 2): 92.0, ("cnn", 1.58, 1): 90.5, ("mlp", 1, 1): 86.0}


def write_md(out: Path, notes: str = "") -> None:
    """``binary_accuracy.md`` from ``binary_accuracy_runs.json`` (every row's details) and ``notes``."""
    runs = json.loads((out / "binary_accuracy_runs.json").read_text())
    lines = ["# Binary networks on Fashion-MNIST: deployed test accuracy, lowbit vs brevitas", "",
             "Written by `benchmarks/bench_binary_accuracy.py` (rows in `binary_accuracy.json`, details in "
             "`binary_accuracy_runs.json`). Test accuracy on the 10000 official test images, training on the "
             "55000-image train split, Adam with cosine decay to zero, batch 128, no augmentation, no distillation, "
             "seed 0, one CPU thread.", "",
             "| model | config | tool | epochs | lr | accuracy (%) | target | evaluated on | seconds |",
             "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for r in runs:
        target = TARGETS.get((r["model"], r["weight_bits"], r["act_bits"]))
        tool_target = f">= {target:.1f}" if r["tool"] == "lowbit" and target else "-"
        met = "" if tool_target == "-" else (" (met)" if r["accuracy"] >= target else " (**missed**)")
        model = r["model"] + (f" (c={r['channels']})" if r.get("channels") else "")
        lines.append(f"| {model} | W{r['weight_bits']}A{r['act_bits']} | {r['tool']} | {r['epochs']} | {r['lr']} | "
                     f"{r['accuracy']:.2f} | {tool_target}{met} | {r.get('evaluated', 'brevitas eval mode')} | "
                     f"{r['seconds']:.0f} |")
    machines = sorted({r["machine"] for r in runs})
    lines += ["", f"Machine: {', '.join(machines)} (`lscpu | grep 'Model name'`), 1 thread (`OMP_NUM_THREADS=1`).", "",
              "Commands (from the repository root, `PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python ...`):", ""]
    for cmd in dict.fromkeys(r["command"] for r in runs):
        lines.append(f"    {cmd}")
    lines += ["", "## What 1 bit means", ""]
    for d in dict.fromkeys(r["definition"] for r in runs if r["weight_bits"] == 1 and r["act_bits"] == 1):
        lines.append(f"* {d}")
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    (out / "binary_accuracy.md").write_text("\n".join(lines) + "\n")


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn,mlp")
    p.add_argument("--configs", default="w1a1,w1a2,w2a2")
    p.add_argument("--tools", default="lowbit,brevitas", help="brevitas runs W1A1 only")
    p.add_argument("--epochs-cnn", type=int, default=8)
    p.add_argument("--epochs-mlp", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.005, help="Adam peak learning rate (both tools)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--binary", choices=["xnor", "sign"], default="xnor", help="lowbit binary weight scale")
    p.add_argument("--channels", type=int, default=64, help="BinaryCNN width")
    p.add_argument("--train-limit", type=int, default=None, help="first N training images (smoke runs; not merged)")
    p.add_argument("--save", action="store_true", help="ship the lowbit W1A1 weights into src/lowbit/zoo/weights")
    p.add_argument("--notes", default=None, help="a markdown file whose text goes under 'Notes' in the .md")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the runs JSON, train nothing")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    notes = Path(args.notes).read_text() if args.notes else ""
    if args.report_only:
        write_md(Path(args.out), notes)
        return

    rows = []
    for model in args.models.split(","):
        epochs = args.epochs_cnn if model == "cnn" else args.epochs_mlp
        for config in args.configs.split(","):
            for tool in args.tools.split(","):
                if tool == "brevitas" and config != "w1a1":
                    continue
                if tool == "lowbit":
                    row = run_lowbit(model, config, epochs, args.lr, args.seed, args.binary, args.channels,
                                     args.train_limit, args.save)
                else:
                    row = run_brevitas(model, epochs, args.lr, args.seed, args.channels, args.train_limit)
                row["command"] = " ".join(["benchmarks/bench_binary_accuracy.py", *(argv if argv is not None else sys.argv[1:])])
                row["machine"] = machine()
                print(json.dumps({k: v for k, v in row.items() if k not in ("history", "definition")}), flush=True)
                rows.append(row)
    if args.train_limit is None:
        merge(Path(args.out), rows)
        write_md(Path(args.out), notes)
    else:
        print("(--train-limit given: smoke run, results not merged)", file=sys.stderr)


if __name__ == "__main__":
    main()

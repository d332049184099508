"""ANN-to-SNN conversion on Fashion-MNIST: accuracy against time steps for single-threshold IF neurons,
TerMapping (double threshold, ternary spikes) and AugMapping (augmented spikes), on one shipped ANN.

    .venv/bin/python benchmarks/bench_snn_convert.py --model cnn-avgpool
    .venv/bin/python benchmarks/bench_snn_convert.py --model cnn --methods if-v0.5 termapping-v0.5 augmapping-c4

Calibration: the first ``--calib-size`` images of the train split (threshold = the 99.9th percentile of each
ReLU's activations, PTQ's percentile observer). Input: constant current (analog). One run of ``max(T)`` steps
gives the accuracy at every ``T`` (the readout averaged over the first ``T`` steps). Writes
``results/snn_convert_<model>.md`` and merges rows into ``results/snn.json`` (the issue's keys).
Spikingjelly's rows on the same ANN (``benchmarks/peer_spikingjelly.py``) are read from ``snn.json`` if there.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from _common import RESULTS, merge_rows, write_result
from lowbit import snn, zoo
from lowbit.cost.profile import profile
from lowbit.data import fashion_mnist
from lowbit.snn import NeuronSpec, Spikes

METHODS = {
    "if": NeuronSpec(),
    "if-v0.5": NeuronSpec(initial_potential=0.5),
    "termapping": NeuronSpec(spikes=Spikes.TERNARY),
    "termapping-v0.5": NeuronSpec(spikes=Spikes.TERNARY, initial_potential=0.5),
    "augmapping-c4": NeuronSpec(spikes=Spikes.AUGMENTED, max_spikes=4, initial_potential=0.5),
    "augmapping-c4-v0": NeuronSpec(spikes=Spikes.AUGMENTED, max_spikes=4),
    "augmapping-c8": NeuronSpec(spikes=Spikes.AUGMENTED, max_spikes=8, initial_potential=0.5),
}
DESCRIBE = {
    "if": "IF, one threshold, reset by subtraction, v(0) = 0",
    "if-v0.5": "IF, one threshold, reset by subtraction, v(0) = theta / 2",
    "termapping": "TerMapping: double threshold, spikes -1/0/+1 (-1 only after net-positive firing), v(0) = 0",
    "termapping-v0.5": "TerMapping, v(0) = theta / 2",
    "augmapping-c4": "AugMapping: augmented spikes, coefficient 0..4 (negative down to -count), theta = lambda / 4, "
                     "v(0) = theta / 2",
    "augmapping-c4-v0": "AugMapping c_max 4, v(0) = 0",
    "augmapping-c8": "AugMapping c_max 8, theta = lambda / 8, v(0) = theta / 2",
}


def ann_macs(model: torch.nn.Module) -> float:
    """Multiply-accumulates of one inference (lowbit's cost profile)."""
    return float(sum(r.macs for r in profile(model, (torch.zeros(1, 1, 28, 28),))))


def run_method(ann, calib, x, y, spec: NeuronSpec, steps: list[int], norm: snn.Norm) -> tuple[list, float]:
    start = time.time()
    net = snn.convert(ann, calib, neuron=spec, norm=norm)
    rows = snn.sweep(net, x, y, steps, batch_size=500, progress=True)
    return rows, time.time() - start


def peer_rows(dataset: str) -> list[dict]:
    path = RESULTS / "snn.json"
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text()) if r.get("dataset") == dataset and r.get("tool", "").startswith("spikingjelly")]


def table(results: dict[str, list], steps: list[int], ann_acc: float, peers: list[dict]) -> list[str]:
    lines = ["| method | " + " | ".join(f"T={t}" for t in steps) + " |", "|---|" + "---:|" * len(steps)]
    for name, rows in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r.accuracy:.2f}" for r in rows) + " |")
    for method in sorted({r["method"] for r in peers}):
        by_t = {r["time_steps"]: r["accuracy"] for r in peers if r["method"] == method}
        tool = next(r["tool"] for r in peers if r["method"] == method)
        lines.append(f"| {tool} {method} | " + " | ".join(f"{by_t[t]:.2f}" if t in by_t else "-" for t in steps) + " |")
    lines.append(f"| ANN (float) | {ann_acc:.2f} |" + " |" * (len(steps) - 1))
    return lines


def checks(results: dict[str, list], steps: list[int], ann_acc: float, peers: list[dict]) -> list[str]:
    out = []
    for name in results:
        if name.startswith("augmapping"):
            ok = [r.time_steps for r in results[name] if r.accuracy >= ann_acc - 0.5]
            small = [t for t in ok if t <= 8]
            out.append(f"- {name}: within 0.5 points of the ANN from T = {min(ok) if ok else 'never'}"
                       f" (target: at some T <= 8: {'met' if small else 'NOT met'})")
    for single, ternary in (("if", "termapping"), ("if-v0.5", "termapping-v0.5")):
        if single in results and ternary in results:
            diffs = [(a.time_steps, b.accuracy - a.accuracy) for a, b in zip(results[single], results[ternary])
                     if a.time_steps in (4, 8, 16, 32)]
            verdict = "met" if all(d > 0 for _, d in diffs) else "NOT met"
            out.append(f"- {ternary} - {single}: " + ", ".join(f"T={t} {d:+.2f}" for t, d in diffs)
                       + f" (above at every T in 4..32: {verdict})")
    for method in sorted({r["method"] for r in peers}):
        by_t = {r["time_steps"]: r["accuracy"] for r in peers if r["method"] == method}
        best = {t: max(rows[i].accuracy for rows in results.values()) for i, t in enumerate(steps)}
        cmp = [(t, best[t] - by_t[t]) for t in steps if t in by_t]
        verdict = "met" if cmp and all(d >= 0 for _, d in cmp) else "NOT met"
        out.append(f"- best lowbit - spikingjelly {method}: " + ", ".join(f"T={t} {d:+.2f}" for t, d in cmp)
                   + f" (lowbit >= it at every T: {verdict})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn-avgpool", choices=["cnn-avgpool", "cnn"])
    p.add_argument("--methods", nargs="+", default=["if", "termapping", "if-v0.5", "termapping-v0.5",
                                                    "augmapping-c4"], choices=sorted(METHODS))
    p.add_argument("--time-steps", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--calib-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--percentile", type=float, default=99.9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ann = zoo.pretrained(args.model)
    train, test = fashion_mnist("train"), fashion_mnist("test")
    calib = [train.x[i: i + 250] for i in range(0, args.calib_size, 250)]
    x, y = test.x[: args.test_size], test.y[: args.test_size]
    with torch.no_grad():
        ann_acc = 100.0 * float((ann(x).argmax(1) == y).float().mean())
    steps = sorted(set(args.time_steps))
    norm = snn.Norm(args.percentile)
    dataset = f"fashion-mnist ({args.model})"
    results, seconds, json_rows = {}, {}, []
    for name in args.methods:
        rows, seconds[name] = run_method(ann, calib, x, y, METHODS[name], steps, norm)
        results[name] = rows
        print(f"{name}: " + ", ".join(f"T={r.time_steps} {r.accuracy:.2f}%" for r in rows), flush=True)
        json_rows += [{"method": f"convert-{name}", "dataset": dataset, "time_steps": r.time_steps,
                       "accuracy": round(r.accuracy, 2), "ann_accuracy": round(ann_acc, 2),
                       "spikes_per_inference": round(r.spikes_per_inference, 1), "synops": round(r.synops),
                       "latency_us": None, "tool": "lowbit"} for r in rows]
    merge_rows("snn.json", json_rows, ("method", "dataset", "time_steps", "tool"))
    peers = peer_rows(dataset)
    macs = ann_macs(ann)
    body = [f"Shipped `{args.model}` ({'average' if args.model == 'cnn-avgpool' else 'max (gate rule)'} pooling), "
            f"ANN float accuracy {ann_acc:.2f}% on the first {len(x)} test images. Calibration: first "
            f"{args.calib_size} train images, threshold at the {args.percentile}th percentile per layer; analog "
            f"(constant-current) input; readout = mean of the last layer's output over the first T steps.", "",
            "Methods:", *[f"- `{n}`: {DESCRIBE[n]} ({seconds[n]:.0f} s for the run)" for n in results], "",
            "## Test accuracy % against time steps", "", *table(results, steps, ann_acc, peers), "",
            "## Targets", "", *checks(results, steps, ann_acc, peers), "",
            f"## Spikes and synaptic operations per inference (ANN: {macs / 1e6:.2f} M MACs)", "",
            "| method | T | spikes | events | synops (M) | first-layer MACs (M, once) | synops / ANN MACs |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rows in results.items():
        for r in rows:
            if r.time_steps in (4, 8, 32):
                body.append(f"| {name} | {r.time_steps} | {r.spikes_per_inference:.0f} | {r.events_per_inference:.0f} "
                            f"| {r.synops / 1e6:.2f} | {r.input_macs / 1e6:.2f} | {r.synops / macs:.2f} |")
    body += ["", "A synaptic operation is an accumulate (an add; one small integer multiply for an augmented "
             "event), against the ANN's multiply-accumulates; see `lowbit report` for their energy."]
    write_result(f"snn_convert_{args.model}", "\n".join(body))


if __name__ == "__main__":
    main()

"""``results/families_accuracy.json``: one row per method family of the ternary / power-of-two / bitwise issue,
collected from the benchmarks that measured them (no training here).

Rows ``{"family", "model", "config", "accuracy", "float_accuracy"}`` (percent, Fashion-MNIST test set, 10,000
images), read from ``results/formats.json`` (``bench_formats.py``: TNT, exact/TWN ternary, LBW power-of-two,
each on the shipped CNN, float 92.43%) and ``results/binary_accuracy_runs.json`` (``bench_binary_accuracy.py``:
binary CNN, which has no float twin: ``float_accuracy`` null), ``results/ensemble.json`` (``bench_ensemble.py``),
``results/bitsplit.json`` (``bench_bitsplit.py``) and ``results/truenorth.json`` (``bench_truenorth.py``). The families the issue lists that no benchmark has
measured yet are named in the Markdown, not given rows. ``python benchmarks/families_accuracy.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, write_result  # noqa: E402

# (family, formats.json format, method prefix, config label)
FORMAT_ROWS = [
    ("ternary TNT (no retraining)", "ternary-tnt", "PTQ A8", "TNT weights per channel, A8, no retraining"),
    ("ternary TNT (no retraining)", "ternary-tnt", "weight-only", "TNT weights per channel, float activations"),
    ("ternary TNT + fine-tune", "ternary-tnt", "QAT A8", "TNT weights, A8, 1 epoch QAT"),
    ("ternary LSQ QAT (TTQ/LSQ-style)", "ternary", "QAT A8", "exact ternary weights, learned step, A8, 1 epoch"),
    ("ternary TWN", "ternary-twn", "QAT A8", "TWN threshold 0.7 mean|W|, A8, 1 epoch QAT"),
    ("power-of-two LBW 4-bit", "pow2-4", "PTQ A8", "4-bit power-of-two weights, A8, no retraining"),
    ("power-of-two LBW 4-bit", "pow2-4", "QAT A8", "4-bit power-of-two weights, A8, 1 epoch QAT"),
]
NOT_MEASURED = ["ternary weights with binary activations (target >= 90.5%)",
                "stochastic ensemble of 16 binary CNNs (target: +1.0 point over the deterministic binary CNN)",
                "BitSplit-Net W1A2 / W1A4 against QNN of the same widths",
                "TrueNorth-style trinary/spiking network (accuracy, cores, spikes per inference)"]


def rows() -> list[dict]:
    formats = json.loads((RESULTS / "formats.json").read_text())
    out = []
    for family, fmt, method, config in FORMAT_ROWS:
        r = next((r for r in formats if r["model"] == "cnn" and r["format"] == fmt
                  and r["method"].startswith(method)), None)
        if r is not None:
            out.append({"family": family, "model": "fmnist-cnn", "config": f"{config} ({r['method']})",
                        "accuracy": r["accuracy"], "float_accuracy": r["float_accuracy"]})
    for r in json.loads((RESULTS / "binary_accuracy_runs.json").read_text()):  # the public rows' details
        if r["tool"] == "lowbit":
            ternary = r["weight_bits"] == 1.58
            family = ("ternary weights, binary activations" if ternary
                      else f"bitwise W{r['weight_bits']}A{r['act_bits']} (XNOR-Net / QNN)")
            out.append({"family": family,
                        "model": f"fmnist-binary-{r['model']}",
                        "config": ("ternary W, sign A" if ternary else f"W{r['weight_bits']}A{r['act_bits']}")
                        + f", {r['epochs']} epochs from random init"
                        + (" (distilled from the float twin)" if r.get("distill") else ""),
                        "accuracy": r["accuracy"], "float_accuracy": None})
    for name, family in (("ensemble.json", "stochastic ensemble"), ("bitsplit.json", "BitSplit-Net"),
                         ("truenorth.json", "TrueNorth-style")):
        path = RESULTS / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for r in data["rows"] if isinstance(data, dict) else data:
            if "family" not in r and r.get("model", "").startswith(("BitSplit", "QNN")):  # bench_bitsplit's rows
                epochs = data["meta"].get("epochs") if isinstance(data, dict) and "meta" in data else None
                r = {"family": "BitSplit-Net" if r["model"].startswith("BitSplit") else "QNN (bit-serial), BitSplit's baseline",
                     "model": f"fmnist-binary-cnn c={data['meta'].get('channels', 64)}",
                     "config": f"{r['model']}" + (f", {epochs} epochs from random init" if epochs else ""),
                     "accuracy": r["accuracy"], "float_accuracy": None}
            if {"family", "model", "config", "accuracy", "float_accuracy"} <= set(r):
                out.append({k: r[k] for k in ("family", "model", "config", "accuracy", "float_accuracy")})
        NOT_MEASURED[:] = [m for m in NOT_MEASURED if not m.lower().startswith(family.lower().split()[0])]
    return out


def main() -> None:
    table = rows()
    path = RESULTS / "families_accuracy.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    tmp.replace(path)
    if any(r["family"].startswith("ternary weights, binary") for r in table):
        NOT_MEASURED.pop(0)
    lines = ["| family | model | config | accuracy % | float % |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['family']} | {r['model']} | {r['config']} | {r['accuracy']:.2f} | "
              f"{'-' if r['float_accuracy'] is None else format(r['float_accuracy'], '.2f')} |" for r in table]
    write_result("families_accuracy", __doc__.split("\n\n")[1].split("``python")[0].strip() + "\n\n"
                 + "\n".join(lines)
                 + ("\n\nNot measured yet: " + "; ".join(NOT_MEASURED) + "." if NOT_MEASURED else ""))


if __name__ == "__main__":
    main()

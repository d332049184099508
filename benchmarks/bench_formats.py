"""Ternary and power-of-two weights on the shipped models: weight-only, PTQ (A8) and LSQ QAT (A8).

Per model (mlp, cnn, resnet) and weight format (exact ternary, TWN ternary, TNT ternary, 4-bit power of
two, all per output channel; first and last layers 8-bit in PTQ and QAT):

- weight-only: every conv/linear weight quantized, activations float;
- PTQ A8: 32 calibration images, uint8 activations, bias correction; run as the integer model;
- QAT A8: LSQ from the float weights (steps start at the format's solver scale), ``--qat-epochs``
  epochs over the ``--qat-train-size`` first training images, SGD + Nesterov, cosine decay, random
  shifts and flips where the float model was trained with them (CNN, ResNet), run as the integer
  model. TNT ternary (``ternary-tnt``: separate + and - scales, run as int8 codes ``{-m-, 0, +m+}``) does not
  learn a weight step: its support and both scales are recomputed from the latent weights at every step.

Accuracies are on the full Fashion-MNIST test set (10,000 images), in percent; ``bit_exact`` says
whether the integer model's outputs equal the simulation's bit for bit on all 10,000 images
(null for weight-only rows, which have no integer model). Writes ``results/formats.md`` and
``results/formats.json`` (rows ``{"model", "format", "method", "accuracy", "float_accuracy",
"bit_exact"}``); rows of an earlier run that this run does not redo are kept, so the methods can
be run separately (``--methods ptq``, then ``--methods qat``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import RESULTS, write_result

from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.formats import IntFormat, PowerOfTwo, Ternary
from lowbit.granularity import PerChannel
from lowbit.integer import to_integer
from lowbit.ptq import PTQConfig, quantize
from lowbit.qat import QATConfig, TrainConfig, convert_qat, prepare_qat, train
from lowbit.spec import QuantSpec
from lowbit.utils.files import atomic_write_text
from lowbit.weight_only import WeightOnlyConfig, quantize_weights
from lowbit.zoo.recipes import evaluate

FORMATS = {
    "ternary": QuantSpec(Ternary(), PerChannel(0)),
    "ternary-twn": QuantSpec(Ternary(), PerChannel(0), ternary="twn"),
    "ternary-tnt": QuantSpec(Ternary(), PerChannel(0), ternary="tnt"),
    "pow2-4": QuantSpec(PowerOfTwo(4), PerChannel(0)),
}
ACT8 = QuantSpec(IntFormat(8, signed=False))
KEYS = ("model", "format", "method", "accuracy", "float_accuracy", "bit_exact")


@torch.no_grad()
def bit_exact(sim, im, x: torch.Tensor, batch: int = 1000) -> bool:
    return all(torch.equal(sim(x[i:i + batch]), im(x[i:i + batch])) for i in range(0, len(x), batch))


def _row(model: str, fmt: str, method: str, acc: float, f_acc: float, exact: bool | None) -> dict:
    return dict(zip(KEYS, (model, fmt, method, round(100 * acc, 2), round(100 * f_acc, 2), exact)))


def run_model(name: str, methods: list[str], formats: list[str], args, calib, train_set, test) -> list[dict]:
    model = zoo.pretrained(name)
    f_acc = evaluate(model, test)
    rows = []
    for fmt in formats:
        spec = FORMATS[fmt]
        if "weight-only" in methods:
            rows.append(_row(name, fmt, "weight-only", evaluate(quantize_weights(model, WeightOnlyConfig(spec)), test),
                             f_acc, None))
        if "ptq" in methods:
            sim = quantize(model, [calib.x], PTQConfig(spec, ACT8))
            im = to_integer(sim, (calib.x[:2],))
            rows.append(_row(name, fmt, "PTQ A8", evaluate(im, test), f_acc, bit_exact(sim, im, test.x)))
        if "qat" in methods:
            torch.manual_seed(0)
            q = prepare_qat(model, QATConfig(spec, ACT8), train_set.x[:256])
            augment = zoo.entry(name).recipe.augment  # as the float model was trained (the MLP without)
            train(q, train_set, TrainConfig(epochs=args.qat_epochs, lr=args.qat_lr, augment=augment), progress=False)
            convert_qat(q)
            im = to_integer(q, (calib.x[:2],))
            how = "TNT scales recomputed each step, LSQ activations" if spec.tnt else "LSQ"
            rows.append(_row(name, fmt, f"QAT A8 ({how}, {args.qat_epochs} epoch{'s' * (args.qat_epochs > 1)}, "
                                        f"lr {args.qat_lr:g})",
                             evaluate(im, test), f_acc, bit_exact(q, im, test.x)))
        for r in rows[-len(methods):]:
            print(json.dumps(r), flush=True)
    return rows


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of ``new``, plus the rows of ``old`` whose (model, format, method) ``new`` does not redo."""
    redone = {(r["model"], r["format"], r["method"]) for r in new}
    return [r for r in old if (r["model"], r["format"], r["method"]) not in redone] + new


def render(rows: list[dict], note: str) -> str:
    order = {m: i for i, m in enumerate(("mlp", "cnn", "resnet"))}
    methods = {"weight-only": 0, "PTQ A8": 1}  # then the QAT rows
    rows = sorted(rows, key=lambda r: (order.get(r["model"], 9), list(FORMATS).index(r["format"])
                                       if r["format"] in FORMATS else 9, methods.get(r["method"], 2), r["method"]))
    lines = ["| model | format | method | accuracy | float | delta | integer model bit-exact (10,000 images) |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        exact = "-" if r["bit_exact"] is None else ("yes" if r["bit_exact"] else "NO")
        lines.append(f"| {r['model']} | {r['format']} | {r['method']} | {r['accuracy']:.2f}% | "
                     f"{r['float_accuracy']:.2f}% | {r['accuracy'] - r['float_accuracy']:+.2f} | {exact} |")
    return note + "\n\n" + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn", "resnet"])
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--methods", nargs="+", default=["weight-only", "ptq", "qat"], choices=["weight-only", "ptq", "qat"])
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-lr", type=float, default=0.01)
    ap.add_argument("--qat-train-size", type=int, default=60000,
                    help="first N training images for QAT (at most the 55,000 of the training split)")
    args = ap.parse_args()
    calib, test = fashion_mnist("train").take(32), fashion_mnist("test")
    train_all = fashion_mnist("train")  # 55,000 images: the last 5,000 of the official 60,000 are validation
    train_set = train_all.take(min(args.qat_train_size, len(train_all.y)))
    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows += run_model(name, args.methods, args.formats, args, calib, train_set, test)
    seconds = time.perf_counter() - start
    json_path = RESULTS / "formats.json"
    old = json.loads(json_path.read_text()) if json_path.exists() else []
    rows = merge(old, rows)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(json_path, json.dumps(rows, indent=1) + "\n")
    note = (f"Weights per output channel (first and last layers 8-bit in PTQ and QAT); activations uint8 (A8) "
            f"in PTQ and QAT, float in weight-only rows. PTQ: 32 calibration images, bias correction. QAT: LSQ "
            f"from the float weights over the first {len(train_set.y)} training images, epochs and peak lr in "
            f"the method column, batch 128, cosine decay, shifts and flips as in the float model's recipe (not "
            f"for the MLP); the ResNet's ternary QAT at lr 0.01 collapsed to chance (10.0%), so its rows use "
            f"lr 0.002. ternary-tnt: TNT's exact support with separate + and - scales per channel, run as int8 codes "
            f"{{-m-, 0, +m+}} times one scale (ratio kept to 1/254); its QAT recomputes support and scales from the "
            f"latent weights at every step (straight-through), no learned weight step. "
            f"Accuracy: full Fashion-MNIST test set; PTQ/QAT rows run the "
            f"integer model. This run: {seconds:.0f} s for {', '.join(args.methods)} on {', '.join(args.models)} "
            f"({', '.join(args.formats)}). "
            f"JSON twin: results/formats.json.")
    write_result("formats", render(rows, note))


if __name__ == "__main__":
    main()

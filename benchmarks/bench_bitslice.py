"""Bit-slice L1 against plain L1 (Zhang et al. 2019, paper M) on Fashion-MNIST, MLP 784-100-10, 8-bit weights.

The paper's pipeline through the one loop ``lowbit.train`` (SGD lr 0.01, momentum 0.5, batch 64, the loop's
cosine schedule, all 60,000 training images, the 10,000 test images for accuracy):

1. a float MLP (for ``float_accuracy``) and the same MLP with per-tensor dynamic fixed-point weights (8 magnitude
   bits, straight-through) are trained from the same initialisation;
2. the fixed-point model is pruned at ``|w| < 0.01`` (the paper's threshold) with masks that stay fixed;
3. copies are fine-tuned with the same epochs, seed and batch order: unregularized, with plain L1 and with
   bit-slice L1 (both normalised by the number of weights), each at several strengths ``alpha``.

Bit-slice sparsity: the share of zero cells in each of the four 2-bit slices of the weights' magnitude codes (MSB
first, Linear weights only), and their mean. The ADC bits per slice are for 128-row crossbars, 1-bit inputs, signs
on separate columns (``lowbit.cost.bitslice``). Every model is evaluated after its last epoch (no checkpoint
selection on the test set).

Matching rule: for each regularizer, the strength with the largest mean zero ratio whose accuracy is at most
0.5 points below the unregularized fine-tune's; the two picks are compared (their accuracies are also given).

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bitslice.py
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from _common import merge_rows, write_result
from lowbit.cost.bitslice import adc_bits, slice_sparsity
from lowbit.data.datasets import fashion_mnist
from lowbit.functional.bitslice import L1, BitSliceL1
from lowbit.nn.bitslice import KeepPruned, kept_fraction, magnitude_masks, to_fixed_point
from lowbit.training import Hooks, LoopConfig, train

MODEL, STORAGE, ROWS = "fmnist-mlp-784-100-10", "dfxp8-2bit-slices", 128


def sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.5)  # the paper's MNIST recipe


def accuracy(model: nn.Module, split) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(split.x).argmax(1) == split.y).float().mean())


def measure(name: str, model: nn.Module, test, alpha: float | None, seconds: float) -> dict:
    """Accuracy, per-slice zero ratios over all weights, ADC bits (max and 99.9th percentile of the columns)."""
    total = slice_sparsity(model)[-1]
    adc = adc_bits(model, rows=ROWS)
    return {"name": name, "alpha": alpha, "accuracy": accuracy(model, test), "zero": list(total.zero),
            "mean": total.mean, "weight_zero": total.weight_zero, "adc_max": list(adc.max_bits),
            "adc_p999": list(adc.pct_bits), "seconds": seconds}


def fine_tune(model: nn.Module, train_split, masks, hook, epochs: int, seed: int) -> tuple[nn.Module, float]:
    model = copy.deepcopy(model)
    start = time.perf_counter()
    train(model, train_split, LoopConfig(epochs=epochs, batch_size=64, seed=seed), optimizer=sgd,
          hooks=Hooks(loss=[hook] if hook else [], after_step=[KeepPruned(masks)]), progress=False)
    return model, time.perf_counter() - start


def pick(points: list[dict], reference: float, tolerance: float) -> dict | None:
    """The point with the largest mean zero ratio within ``tolerance`` points below ``reference``'s accuracy."""
    ok = [p for p in points if p["accuracy"] >= reference - tolerance]
    return max(ok, key=lambda p: p["mean"]) if ok else None


def row_md(p: dict) -> str:
    alpha = "-" if p["alpha"] is None else f"{p['alpha']:g}"
    zeros = " | ".join(f"{z:.3f}" for z in p["zero"])
    bits = "/".join(map(str, p["adc_max"])) + " (" + "/".join(map(str, p["adc_p999"])) + ")"
    return f"| {p['name']} | {alpha} | {p['accuracy']:.2f} | {zeros} | {p['mean']:.3f} | {p['weight_zero']:.3f} | {bits} |"


HEAD = ("| model | alpha | test acc % | b1 zero | b2 zero | b3 zero | b4 zero | mean | zero weights | "
        f"ADC bits b1/b2/b3/b4, {ROWS} rows: max (p99.9) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--l1-alphas", type=float, nargs="+", default=[3, 10, 20, 30, 50, 100])
    ap.add_argument("--bitslice-alphas", type=float, nargs="+", default=[0.003, 0.01, 0.02, 0.03, 0.05, 0.1])
    ap.add_argument("--tolerance", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1, help="the fine-tunes' batch order; another seed writes "
                    "results/bitslice_sparsity_seed<N>.md and no JSON rows")
    ap.add_argument("--name", default="bitslice_sparsity", help="result name (results/<name>.md); a name other "
                    "than the default gives the JSON rows the methods plain-l1-<E>ep / bitslice-l1-<E>ep "
                    "(E = --finetune-epochs), so the default run's rows are kept")
    ap.add_argument("--save-models", metavar="DIR", help="save every model's state_dict to DIR/<name>_<alpha>.pt "
                    "(for measuring the sparsity in other ways afterwards)")
    ap.add_argument("--no-write", action="store_true", help="print only (for trying settings)")
    args = ap.parse_args()
    train_split, test = fashion_mnist("train+val"), fashion_mnist("test")

    torch.manual_seed(0)  # the one initialisation both the float and the fixed-point model start from
    float_model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    fixed = to_fixed_point(float_model, bits=8)
    cfg = LoopConfig(epochs=args.pretrain_epochs, batch_size=64, seed=0)
    t = time.perf_counter()
    train(float_model, train_split, cfg, optimizer=sgd, progress=False)
    points = [measure("float (weights read as dfxp8)", float_model, test, None, time.perf_counter() - t)]
    t = time.perf_counter()
    train(fixed, train_split, cfg, optimizer=sgd, progress=False)
    points.append(measure("dfxp8 pre-trained", fixed, test, None, time.perf_counter() - t))
    masks = magnitude_masks(fixed, args.threshold)
    KeepPruned(masks)(fixed, 0)
    points.append(measure(f"pruned at {args.threshold:g}", fixed, test, None, 0.0))
    print("\n".join(row_md(p) for p in points), flush=True)

    runs = [("unregularized", None, None)] + [("plain L1", a, L1(a)) for a in args.l1_alphas] + \
        [("bit-slice L1", a, BitSliceL1(a)) for a in args.bitslice_alphas]
    tuned = []
    for name, alpha, hook in runs:
        model, seconds = fine_tune(fixed, train_split, masks, hook, args.finetune_epochs, seed=args.seed)
        tuned.append(measure(name, model, test, alpha, seconds))
        print(row_md(tuned[-1]), f"{seconds:.0f} s", flush=True)
        if args.save_models:
            save(model, args.save_models, name, alpha)

    unreg = tuned[0]
    best_l1 = pick([p for p in tuned if p["name"] == "plain L1"], unreg["accuracy"], args.tolerance)
    best_bs = pick([p for p in tuned if p["name"] == "bit-slice L1"], unreg["accuracy"], args.tolerance)
    body = summary(args, points, tuned, unreg, best_l1, best_bs, kept_fraction(masks))
    if args.no_write:
        print(body)
        return
    if args.seed != 1:
        write_result(f"{args.name}_seed{args.seed}", body)
        return
    write_result(args.name, body)
    if best_l1 and best_bs:
        suffix = "" if args.name == "bitslice_sparsity" else f"-{args.finetune_epochs}ep"
        rows = json_rows(points[0], unreg, best_l1, best_bs, args.tolerance, suffix, args)
        merge_rows("lowprec_training.json", rows, key=("method", "model", "storage"))


def save(model: nn.Module, folder: str, name: str, alpha: float | None) -> None:
    from pathlib import Path

    Path(folder).mkdir(parents=True, exist_ok=True)
    tag = name.replace(" ", "_").replace("-", "") + ("" if alpha is None else f"_{alpha:g}")
    torch.save(model.state_dict(), Path(folder) / f"{tag}.pt")


def ratios(best_l1: dict, best_bs: dict) -> tuple[float, float]:
    """(bit-slice mean zero ratio / L1's, L1's mean non-zero ratio / bit-slice's)."""
    zero = best_bs["mean"] / best_l1["mean"]
    dense = (1 - best_l1["mean"]) / max(1 - best_bs["mean"], 1e-12)
    return zero, dense


def interpolate(points: list[dict], acc: float) -> float | None:
    """The mean zero ratio of the piecewise-linear sweep curve (mean zero ratio against accuracy) at ``acc``;
    None outside the accuracies the sweep reached."""
    pts = sorted((p["accuracy"], p["mean"]) for p in points)
    for (a0, m0), (a1, m1) in zip(pts, pts[1:]):
        if a0 <= acc <= a1:
            return m0 if a1 == a0 else m0 + (m1 - m0) * (acc - a0) / (a1 - a0)
    return None


def matched_table(tuned: list[dict]) -> list[str]:
    """For each bit-slice L1 point, plain L1's mean zero ratio interpolated at the same accuracy."""
    l1 = [p for p in tuned if p["name"] == "plain L1"]
    lines = ["| bit-slice alpha | accuracy % | bit-slice mean zero | plain L1 mean zero at that accuracy | "
             "zero ratio x | non-zero reduction x |", "|---:|---:|---:|---:|---:|---:|"]
    for p in (p for p in tuned if p["name"] == "bit-slice L1"):
        m = interpolate(l1, p["accuracy"])
        if m is None:
            lines.append(f"| {p['alpha']:g} | {p['accuracy']:.2f} | {p['mean']:.3f} | outside the L1 sweep | | |")
        else:
            lines.append(f"| {p['alpha']:g} | {p['accuracy']:.2f} | {p['mean']:.3f} | {m:.3f} | "
                         f"{p['mean'] / m:.2f} | {(1 - m) / max(1 - p['mean'], 1e-12):.2f} |")
    return lines


def summary(args, points, tuned, unreg, best_l1, best_bs, kept: float) -> str:
    lines = [
        f"Fashion-MNIST, MLP 784-100-10, 8-bit sign-magnitude dynamic fixed-point weights (per tensor), four 2-bit "
        f"slices. SGD lr 0.01 momentum 0.5 batch 64, cosine schedule; all 60,000 training images; pre-training "
        f"{args.pretrain_epochs} epochs, pruning weights of magnitude below {args.threshold:g} (kept {100 * kept:.1f}% of the weights), "
        f"fine-tuning {args.finetune_epochs} epochs (batch-order seed {args.seed}, the same for every run). Accuracy on the "
        "10,000 test images after the last epoch. Zero ratios over all Linear weights (pruned ones included).",
        "", HEAD, *(row_md(p) for p in points), *(row_md(p) for p in tuned), "",
        f"Matching rule: per regularizer, the alpha with the largest mean zero ratio whose accuracy is >= the "
        f"unregularized fine-tune's ({unreg['accuracy']:.2f}%) - {args.tolerance:g} points.", ""]
    if not (best_l1 and best_bs):
        lines += ["No alpha of one regularizer stays within the tolerance: widen the sweep.", "", *matched_table(tuned)]
        return "\n".join(lines)
    zero, dense = ratios(best_l1, best_bs)
    lines += [HEAD, row_md(best_l1), row_md(best_bs), "",
              f"- accuracy: plain L1 {best_l1['accuracy']:.2f}%, bit-slice L1 {best_bs['accuracy']:.2f}% "
              f"(difference {best_bs['accuracy'] - best_l1['accuracy']:+.2f} points)",
              f"- mean zero ratio: bit-slice L1 / plain L1 = {best_bs['mean']:.3f} / {best_l1['mean']:.3f} = "
              f"**{zero:.2f}x** (target >= 2x: {'met' if zero >= 2 else 'NOT met'})",
              f"- mean non-zero ratio (the cells a bitline sums): plain L1 / bit-slice L1 = "
              f"{1 - best_l1['mean']:.3f} / {1 - best_bs['mean']:.3f} = **{dense:.2f}x** fewer non-zero cells",
              "- per slice, bit-slice / plain L1 zero ratio: " + ", ".join(
                  f"b{k + 1} {b / max(a, 1e-12):.2f}x" for k, (a, b) in enumerate(zip(best_l1["zero"], best_bs["zero"]))),
              "- per slice, plain L1 / bit-slice L1 non-zero ratio (fewer non-zero cells): " + ", ".join(
                  f"b{k + 1} {(1 - a) / max(1 - b, 1e-12):.2f}x"
                  for k, (a, b) in enumerate(zip(best_l1["zero"], best_bs["zero"])))]
    lines += ["", "Second view, along the whole sweep: each bit-slice L1 point against the plain-L1 sweep curve "
              "(mean zero ratio against accuracy, linear between the L1 points) at the same accuracy.", "",
              *matched_table(tuned)]
    return "\n".join(lines)


def json_rows(float_point: dict, unreg: dict, best_l1: dict, best_bs: dict, tolerance: float, suffix: str = "",
              args=None) -> list[dict]:
    zero, dense = ratios(best_l1, best_bs)
    rows = []
    for method, p in (("plain-l1", best_l1), ("bitslice-l1", best_bs)):
        ratio = {"sparsity_ratio_vs_plain_l1": zero if method == "bitslice-l1" else 1.0,
                 "nonzero_reduction_vs_plain_l1": dense if method == "bitslice-l1" else 1.0}
        run = {} if args is None else {"finetune_epochs": args.finetune_epochs, "alphas_swept": (
            args.l1_alphas if method == "plain-l1" else args.bitslice_alphas)}
        method += suffix
        rows.append({"method": method, "model": MODEL, "storage": STORAGE, "accuracy": round(p["accuracy"], 2),
                     "float_accuracy": round(float_point["accuracy"], 2),
                     "extra": {"alpha": p["alpha"], "zero_ratio_per_slice": [round(z, 4) for z in p["zero"]],
                               "mean_zero_ratio": round(p["mean"], 4), "adc_bits_128_rows_max": p["adc_max"],
                               "adc_bits_128_rows_p99.9": p["adc_p999"], **{k: round(v, 3) for k, v in ratio.items()},
                               "unregularized_accuracy": round(unreg["accuracy"], 2),
                               "matching_rule": f"largest mean zero ratio with accuracy >= unregularized - {tolerance:g}",
                               **run}})
    return rows


if __name__ == "__main__":
    main()

"""PTQ on the Fashion-MNIST reference models: lowbit vs float, torchao PT2E and onnxruntime.

Sections (each writes a results file):
  table  -> results/ptq_fashion.md : accuracy of every configuration, and the wall time of
            prepare+calibrate+convert for lowbit, torchao PT2E (X86InductorQuantizer) and
            onnxruntime quantize_static (QDQ, per-channel int8 weights, uint8 activations),
            all on the same model, the same 32 calibration images and the full test set;
            tools interleaved per model, best of --repeats timings.
  curve  -> results/ptq_calibration_curve.md : test accuracy against the number of
            calibration images (1, 2, 4, ..., 512), W8A8 and W4A8, per-channel weights.

    python benchmarks/bench_ptq.py                 # both sections, all three models
    python benchmarks/bench_ptq.py --section table --models cnn
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import write_result
from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.formats import IntFormat
from lowbit.granularity import PerChannel, PerTensor
from lowbit.ptq import PTQConfig, int_weight, quantize, uint_act, with_pow2_scales
from lowbit.spec import MSE, ChannelPercentile, QuantSpec
from lowbit.zoo.recipes import evaluate

CONFIGS = {
    "W8A8 per-channel": PTQConfig(),
    "W8A8 per-tensor": PTQConfig(QuantSpec(IntFormat(8, narrow=True), PerTensor())),
    "W8A8 per-channel, pow2 scales": with_pow2_scales(PTQConfig()),
    "W8A8 per-channel, channel-stat activations (A)": PTQConfig(act=QuantSpec(uint_act(8).format,
                                                                             observer=ChannelPercentile())),
    "W4A8 per-channel": PTQConfig(int_weight(4)),
    "W4A8 per-channel, MSE weights": PTQConfig(QuantSpec(IntFormat(4, narrow=True), PerChannel(0), MSE())),
}


def _accuracy_of(fn, test) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 1000):
            correct += int((fn(test.x[start:start + 1000]).argmax(1) == test.y[start:start + 1000]).sum())
    return correct / len(test)


def table(models: list[str], repeats: int, with_peers: bool) -> None:
    test = fashion_mnist("test")
    calib = fashion_mnist("train").take(32)
    example = (calib.x[:2],)  # batch 2: torch.export (torchao) specialises a batch of 1
    lines = ["| model | method | test acc % | vs float (points) | prepare+calibrate+convert s |",
             "|---|---|---:|---:|---:|"]
    summary = []
    for name in models:
        model = zoo.pretrained(name)
        f_acc = evaluate(model, test)
        lines.append(f"| {name} | float32 | {100 * f_acc:.2f} | | |")
        times: dict[str, list[float]] = {"lowbit": [], "torchao": [], "onnxruntime": []}
        quantized: dict[str, object] = {}
        for _ in range(repeats):  # interleave the tools
            t = time.perf_counter()
            quantized["lowbit"] = quantize(model, [calib.x], CONFIGS["W8A8 per-channel"], example)
            times["lowbit"].append(time.perf_counter() - t)
            if with_peers:
                from peers import ort_quantize_static, torchao_pt2e

                quantized["torchao"], s = torchao_pt2e(model, example, [calib.x])
                times["torchao"].append(s)
                quantized["onnxruntime"], s = ort_quantize_static(model, example, [calib.x], per_channel=True)
                times["onnxruntime"].append(s)
        for label, config in CONFIGS.items():
            t = time.perf_counter()
            q = quantized["lowbit"] if label == "W8A8 per-channel" else quantize(model, [calib.x], config, example)
            seconds = min(times["lowbit"]) if label == "W8A8 per-channel" else time.perf_counter() - t
            acc = evaluate(q, test)
            lines.append(f"| {name} | lowbit {label} | {100 * acc:.2f} | {100 * (acc - f_acc):+.2f} | {seconds:.2f} |")
            if label == "W8A8 per-channel":
                summary.append((name, "lowbit", acc, seconds))
        for tool, label in (("torchao", "torchao PT2E X86Inductor W8A8"), ("onnxruntime", "onnxruntime quantize_static QDQ W8A8")):
            if tool in quantized:
                acc = _accuracy_of(quantized[tool], test)
                lines.append(f"| {name} | {label} | {100 * acc:.2f} | {100 * (acc - f_acc):+.2f} | {min(times[tool]):.2f} |")
                summary.append((name, tool, acc, min(times[tool])))
        print("\n".join(lines[-(len(CONFIGS) + 3):]), flush=True)
    ratio_lines = ["", "W8A8 side by side (same model, data, 32 calibration images):", "",
                   "| model | lowbit acc % | torchao acc % | onnxruntime acc % | lowbit time / torchao | lowbit time / onnxruntime |",
                   "|---|---:|---:|---:|---:|---:|"]
    for name in models:
        got = {tool: (acc, s) for n, tool, acc, s in summary if n == name}
        if len(got) == 3:
            lb, ta, ox = got["lowbit"], got["torchao"], got["onnxruntime"]
            ratio_lines.append(f"| {name} | {100 * lb[0]:.2f} | {100 * ta[0]:.2f} | {100 * ox[0]:.2f} | "
                               f"{lb[1] / ta[1]:.2f}x | {lb[1] / ox[1]:.2f}x |")
    write_result("ptq_fashion", "\n".join(lines + ratio_lines))


def curve(models: list[str]) -> None:
    test = fashion_mnist("test")
    train = fashion_mnist("train")
    sizes = [2**k for k in range(10)]
    lines = ["| model | config | float | " + " | ".join(str(n) for n in sizes) + " |",
             "|---|---|---:|" + "---:|" * len(sizes)]
    for name in models:
        model = zoo.pretrained(name)
        f_acc = evaluate(model, test)
        for label, config in (("W8A8", PTQConfig()), ("W4A8", PTQConfig(int_weight(4)))):
            accs = []
            for n in sizes:
                calib = train.take(n)
                accs.append(evaluate(quantize(model, [calib.x], config), test))
            lines.append(f"| {name} | {label} | {100 * f_acc:.2f} | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |")
            print(lines[-1], flush=True)
    body = ("Test accuracy (%) against the number of calibration images (the first N of the training split), "
            "per-channel weights, min-max activation ranges.\n\n" + "\n".join(lines))
    write_result("ptq_calibration_curve", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=("table", "curve", "all"), default="all")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "resnet"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="skip torchao and onnxruntime")
    args = parser.parse_args()
    if args.section in ("table", "all"):
        table(args.models, args.repeats, not args.no_peers)
    if args.section in ("curve", "all"):
        curve(args.models)


if __name__ == "__main__":
    main()

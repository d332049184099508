"""Bit-exact parity of the integer model with the simulation on the full Fashion-MNIST test set.

For each shipped model and PTQ setting: the simulation (``lowbit.quantize``)
and its integer-only form (``lowbit.integer.to_integer``) run on all 10,000
test images; the table gives the fraction of output elements that are
bit-identical, the largest difference, and both accuracies.

    python benchmarks/parity_integer.py
"""

from __future__ import annotations

import torch

from _common import write_result
from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.integer.lower import to_integer
from lowbit.ptq import PTQConfig, quantize

CONFIGS = {"W8A8": PTQConfig(), "W8A8 pow2 (shift-only)": PTQConfig(pow2_scales=True),
           "W4A8": PTQConfig(weight_bits=4)}


def main() -> None:
    calib, test = fashion_mnist("train").take(32), fashion_mnist("test")
    lines = ["| model | config | identical outputs | max abs diff | simulation acc | integer acc |",
             "|---|---|---:|---:|---:|---:|"]
    for name in ("mlp", "cnn", "resnet"):
        for label, config in CONFIGS.items():
            sim = quantize(zoo.pretrained(name), [calib.x], config)
            im = to_integer(sim, (calib.x[:2],))
            same = total = c_sim = c_int = 0
            diff = 0.0
            with torch.no_grad():
                for i in range(0, len(test.y), 1000):
                    x, y = test.x[i:i + 1000], test.y[i:i + 1000]
                    a, b = sim(x), im(x)
                    same += int((a == b).sum())
                    total += a.numel()
                    diff = max(diff, float((a - b).abs().max()))
                    c_sim += int((a.argmax(1) == y).sum())
                    c_int += int((b.argmax(1) == y).sum())
            n = len(test.y)
            lines.append(f"| {name} | {label} | {same}/{total} | {diff:g} | {100 * c_sim / n:.2f}% | "
                         f"{100 * c_int / n:.2f}% |")
            print(lines[-1], flush=True)
    write_result("integer_parity", "\n".join(lines))


if __name__ == "__main__":
    main()

"""Bit-exact parity of the integer model with the simulation on the full Fashion-MNIST test set.

For each shipped model and PTQ setting: the simulation (``lowbit.quantize``)
and its integer-only form (``lowbit.integer.to_integer``) run on all 10,000
test images, in batches of 100; the table gives the fraction of output elements
that are bit-identical, the largest difference, both accuracies, and the integer
path (the whole-model plan of ``lowbit.integer.plan``, or op by op).

    python benchmarks/parity_integer.py
"""

from __future__ import annotations

import torch

from _common import write_result
from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.integer.lower import to_integer
from lowbit.ptq import PTQConfig, int_weight, quantize, with_pow2_scales

CONFIGS = {"W8A8": PTQConfig(), "W8A8 pow2 (shift-only)": with_pow2_scales(PTQConfig()),
           "W4A8": PTQConfig(int_weight(4))}
BATCH = 100


def main() -> None:
    calib, test = fashion_mnist("train").take(32), fashion_mnist("test")
    lines = ["| model | config | integer path | identical outputs | max abs diff | simulation acc | integer acc |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name in ("mlp", "cnn", "resnet"):
        for label, config in CONFIGS.items():
            sim = quantize(zoo.pretrained(name), [calib.x], config)
            im = to_integer(sim, (calib.x[:2],))
            planned = im.plans.get(im, (BATCH, *test.x.shape[1:]), torch.get_num_threads()) is not None
            same = total = c_sim = c_int = 0
            diff = 0.0
            with torch.no_grad():
                for i in range(0, len(test.y), BATCH):
                    x, y = test.x[i:i + BATCH], test.y[i:i + BATCH]
                    a, b = sim(x), im(x)
                    same += int((a == b).sum())
                    total += a.numel()
                    diff = max(diff, float((a - b).abs().max()))
                    c_sim += int((a.argmax(1) == y).sum())
                    c_int += int((b.argmax(1) == y).sum())
            n = len(test.y)
            path = "plan" if planned else "op by op"
            lines.append(f"| {name} | {label} | {path} | {same}/{total} | {diff:g} | {100 * c_sim / n:.2f}% | "
                         f"{100 * c_int / n:.2f}% |")
            print(lines[-1], flush=True)
    write_result("integer_parity", "\n".join(lines))


if __name__ == "__main__":
    main()

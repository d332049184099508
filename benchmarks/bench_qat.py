"""QAT on the Fashion-MNIST ResNet-14 from its float weights: LSQ at 4/3/2 bits, FAQ at 8 bits.

Each run: ``lowbit.qat.prepare_qat`` (BatchNorm folded, first/last layer 8-bit), ``train``
(SGD Nesterov, cosine, batch 128, random shifts/flips), ``convert_qat``, then the test accuracy
of the integer-only model (``lowbit.integer.to_integer``), which equals the simulation's.
Bit widths as in the LSQ paper: b-bit weights are -2^(b-1)..2^(b-1)-1, activations 0..2^b-1.
Also the time of one training step, QAT vs float, same model and batch, interleaved.

    python benchmarks/bench_qat.py --epochs 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import torch

from _common import write_result
from lowbit import zoo
from lowbit.bench.latency import interleaved
from lowbit.data import fashion_mnist
from lowbit.integer import to_integer
from lowbit.qat import QATConfig, TrainConfig, convert_qat, prepare_qat, train
from lowbit.zoo.qat_zoo import SHIP, weights_path
from lowbit.zoo.recipes import evaluate
from lowbit.zoo.weights_io import save_weights

RUNS = [("LSQ W4A4", QATConfig(4, 4), "float - 0.3"), ("LSQ W3A3", QATConfig(3, 3), "float - 1.0"),
        ("LSQ W2A2", QATConfig(2, 2), "float - 2.5"), ("FAQ W8A8", QATConfig(8, 8, method="faq"), "float - 0.1")]
MARGIN = {"LSQ W4A4": 0.3, "LSQ W3A3": 1.0, "LSQ W2A2": 2.5, "FAQ W8A8": 0.1}


def step_time(model, qat, x, y, rounds: int) -> tuple[float, float]:
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-9) for n, m in (("float", model), ("qat", qat))}

    def step(name, m):
        def run():
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
        return run

    model.train()
    t = interleaved({"float": step("float", model), "qat": step("qat", qat)}, rounds)
    model.eval()
    return t["float"].best_us, t["qat"].best_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--faq-lr", type=float, default=1e-4)
    ap.add_argument("--save", action="store_true", help="ship the LSQ W4A4 and W2A2 weights into the zoo")
    args = ap.parse_args()
    train_set, test = fashion_mnist("train"), fashion_mnist("test")
    base = zoo.pretrained("resnet")
    f_acc = evaluate(base, test)
    lines = [f"ResNet-14 float32: {100 * f_acc:.2f}%", "",
             "| run | epochs | test accuracy (integer model) | vs float | target | met | train time |",
             "|---|---:|---:|---:|---|---|---:|"]
    for label, config, target in RUNS:
        epochs = 1 if config.method == "faq" else args.epochs
        lr = args.faq_lr if config.method == "faq" else args.lr
        model = prepare_qat(zoo.pretrained("resnet"), config, train_set.x[:256])
        start = time.perf_counter()
        train(model, train_set, TrainConfig(epochs=epochs, lr=lr), progress=False)
        seconds = time.perf_counter() - start
        convert_qat(model)
        acc = evaluate(to_integer(model, (test.x[:2],)), test)
        if args.save and label in SHIP:
            save_weights(model, weights_path(SHIP[label]), {
                "model": SHIP[label], "base": "resnet", "config": asdict(config), "test_accuracy": acc,
                "train": asdict(TrainConfig(epochs=epochs, lr=lr)), "command": "benchmarks/bench_qat.py --save"})
        delta = 100 * (acc - f_acc)
        lines.append(f"| {label} | {epochs} | {100 * acc:.2f}% | {delta:+.2f} | {target} | "
                     f"{'yes' if delta >= -MARGIN[label] else 'no'} | {seconds:.0f} s |")
        print(lines[-1], flush=True)
    x, y = train_set.x[:128], train_set.y[:128]
    q = prepare_qat(zoo.pretrained("resnet"), QATConfig(4, 4), train_set.x[:256])
    f_us, q_us = step_time(zoo.pretrained("resnet"), q, x, y, 10)
    lines += ["", f"One training step, batch 128, best of 10 interleaved: float {f_us / 1e3:.1f} ms, "
                  f"LSQ W4A4 {q_us / 1e3:.1f} ms ({q_us / f_us:.2f}x; target <= 1.6x)"]
    write_result("qat_resnet", "\n".join(lines))


if __name__ == "__main__":
    main()

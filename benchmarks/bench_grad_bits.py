"""Quantized gradients in QAT (QNN, Hubara, Courbariaux et al., JMLR 2018, sec. 4): W4A4 LSQ of the shipped
Fashion-MNIST CNN with float gradients against k-bit gradients (``QATConfig(grad_bits=k)``: the gradient w.r.t.
every quantized layer's GEMM output rounded stochastically onto ``k`` bits, scaled by its max).

Every run starts from the same float weights and trains the same number of epochs, batch order and lr
(SGD Nesterov, cosine); only ``grad_bits`` differs. The accuracy is the converted integer model's on the
10,000 test images. ``python benchmarks/bench_grad_bits.py --epochs 2`` (``--grad-bits 6 4 2``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import merge_rows, write_result  # noqa: E402

from lowbit import zoo  # noqa: E402
from lowbit.data.datasets import fashion_mnist  # noqa: E402
from lowbit.formats import IntFormat  # noqa: E402
from lowbit.granularity import PerChannel  # noqa: E402
from lowbit.integer import to_integer  # noqa: E402
from lowbit.qat import QATConfig, TrainConfig, convert_qat, prepare_qat, train  # noqa: E402
from lowbit.spec import QuantSpec  # noqa: E402
from lowbit.zoo.recipes import evaluate  # noqa: E402


def run(grad_bits: int | None, train_set, test, epochs: int, lr: float) -> dict:
    model = zoo.pretrained("cnn")
    cfg = QATConfig(weight=QuantSpec(IntFormat(4), PerChannel(0)), act=QuantSpec(IntFormat(4, signed=False)),
                    grad_bits=grad_bits)
    q = prepare_qat(model, cfg, train_set.x[:256])
    start = time.perf_counter()
    history = train(q, train_set, TrainConfig(epochs=epochs, lr=lr), progress=False)
    seconds = time.perf_counter() - start
    convert_qat(q)
    im = to_integer(q, (test.x[:2],))
    acc = 100.0 * evaluate(im, test)
    print(f"grad_bits={grad_bits}: {acc:.2f}% ({seconds / epochs:.0f} s/epoch)", flush=True)
    return {"grad_bits": grad_bits, "accuracy": acc, "train_loss": history[-1]["loss"],
            "seconds_per_epoch": seconds / epochs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--grad-bits", type=int, nargs="+", default=[6, 4, 2])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    train_set, test = fashion_mnist("train"), fashion_mnist("test")
    float_acc = 100.0 * evaluate(zoo.pretrained("cnn"), test)
    rows = [run(None, train_set, test, args.epochs, args.lr)] + [run(k, train_set, test, args.epochs, args.lr)
                                                                  for k in args.grad_bits]
    ref = rows[0]["accuracy"]
    lines = ["| gradients | W4A4 integer test accuracy % | vs float gradients | final train loss | s/epoch |",
             "|---|---|---|---|---|"]
    for r in rows:
        name = "float32" if r["grad_bits"] is None else f"{r['grad_bits']}-bit"
        lines.append(f"| {name} | {r['accuracy']:.2f} | {r['accuracy'] - ref:+.2f} | {r['train_loss']:.4f} | "
                     f"{r['seconds_per_epoch']:.0f} |")
    body = (f"Shipped CNN (LeNetBN 32-64-128), float accuracy {float_acc:.2f}%; LSQ W4A4 (weights per channel, "
            f"first/last layer 8-bit), {args.epochs} epochs from the float weights, lr {args.lr}, 55000 training "
            "images, seed 0, 1 thread.\n\n" + "\n".join(lines))
    write_result("grad_bits", body)
    merge_rows("lowprec_training.json", [
        {"method": "lsq-w4a4-grad-bits", "model": "fmnist-cnn",
         "storage": "float32-grads" if r["grad_bits"] is None else f"grad{r['grad_bits']}",
         "accuracy": round(r["accuracy"], 2), "float_accuracy": round(float_acc, 2),
         "extra": {"grad_bits": r["grad_bits"], "epochs": args.epochs, "lr": args.lr,
                   "vs_float_gradients": round(r["accuracy"] - ref, 2),
                   "seconds_per_epoch": round(r["seconds_per_epoch"], 1)}} for r in rows],
        key=("method", "model", "storage"))


if __name__ == "__main__":
    main()

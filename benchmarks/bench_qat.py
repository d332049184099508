"""QAT on the Fashion-MNIST ResNet-14 from its float weights: LSQ at 4/3/2 bits, FAQ at 8 bits.

Each run: ``lowbit.qat.prepare_qat`` (BatchNorm folded, first/last layer 8-bit), ``train``
(SGD Nesterov, cosine, batch 128, random shifts/flips), ``convert_qat``, then the test accuracy
of the integer-only model (``lowbit.integer.to_integer``), which equals the simulation's.
Bit widths as in the LSQ paper: b-bit weights are -2^(b-1)..2^(b-1)-1, activations 0..2^b-1.
Also the time of one training step, QAT vs float, same model and batch, interleaved.
``--peer brevitas`` trains brevitas' fake-quant twin (``peers_qat.py``) at each LSQ width with the
same loop, and ``--distill`` mixes the KL to the float model into both tools' loss.

    python benchmarks/bench_qat.py --epochs 2
    python benchmarks/bench_qat.py --epochs 5 --distill 0.5 --peer brevitas --only W4A4 --name qat_w4
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace

import torch
from _common import write_result
from torch import nn

from lowbit import zoo
from lowbit.bench.latency import interleaved
from lowbit.data import fashion_mnist
from lowbit.integer import to_integer
from lowbit.formats import IntFormat
from lowbit.granularity import PerChannel
from lowbit.qat import QATConfig, TrainConfig, convert_qat, prepare_qat, train
from lowbit.spec import QuantSpec
from lowbit.zoo.qat_zoo import SHIP, weights_path
from lowbit.zoo.recipes import evaluate
from lowbit.zoo.weights_io import save_weights



def _specs(w: int, a: int, narrow: bool = False) -> tuple[QuantSpec, QuantSpec]:
    """``w``-bit weights per output channel (two's complement for LSQ, narrow for FAQ), ``a``-bit activations."""
    return QuantSpec(IntFormat(w, narrow=narrow), PerChannel(0)), QuantSpec(IntFormat(a, signed=False))


RUNS = [("LSQ W4A4", QATConfig(*_specs(4, 4)), "float - 0.3"), ("LSQ W3A3", QATConfig(*_specs(3, 3)), "float - 1.0"),
        ("LSQ W2A2", QATConfig(*_specs(2, 2)), "float - 2.5"),
        ("FAQ W8A8", QATConfig(*_specs(8, 8, narrow=True), method="faq"), "float - 0.1")]
BREVITAS_NOTE = (
    "Definitions. lowbit: b-bit weights -2^(b-1)..2^(b-1)-1 per output channel with learned LSQ steps "
    "(2 bits: {-2,-1,0,1}); activations 0..2^b-1 with a learned step; integer-only model, int32 biases, "
    "logits = dequantized int32 accumulators. brevitas 0.13.4: Int8WeightPerChannelFloat at b bits, narrow range -(2^(b-1)-1)..2^(b-1)-1 "
    "(2 bits: {-1,0,+1}), scale from the per-channel max; QuantReLU 0..2^b-1 with a learned scale "
    "initialised by brevitas' calibration_mode on the same 256 images; float biases and logits; "
    "fake-quant model (`benchmarks/peers_qat.py`). Both: BatchNorm folded before training; the input, "
    "the stem and the classifier (weights and input) at 8 bits; the same training loop (`lowbit.qat.train`: data order, "
    "augmentation, SGD Nesterov, cosine, batch 128, weight decay 5e-5).")
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


def lowbit_run(config: QATConfig, train_set, test, tcfg: TrainConfig, teacher) -> tuple[nn.Module, float, float, int]:
    """The converted model, its integer model's test accuracy, training seconds and epochs trained."""
    model = prepare_qat(zoo.pretrained("resnet"), config, train_set.x[:256])
    start = time.perf_counter()
    history = train(model, train_set, tcfg, teacher=teacher, progress=False)
    seconds = time.perf_counter() - start
    convert_qat(model)
    return model, evaluate(to_integer(model, (test.x[:2],)), test), seconds, len(history)


def brevitas_run(bits: int, train_set, test, tcfg: TrainConfig, teacher) -> tuple[float, float]:
    from peers_qat import brevitas_resnet

    model = brevitas_resnet(zoo.pretrained("resnet"), bits, train_set.x[:256])
    start = time.perf_counter()
    train(model, train_set, tcfg, teacher=teacher, progress=False)  # the same loop, order and augmentation
    seconds = time.perf_counter() - start
    return evaluate(model.eval(), test), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--faq-lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=5e-5, help="on weights only (the LSQ paper: 1e-4 at 2 bits)")
    ap.add_argument("--init", choices=["lsq", "mse"], default="lsq", help="lowbit's LSQ step initialisation")
    ap.add_argument("--distill", type=float, default=0.0, help="weight of the KL to the float model (both tools)")
    ap.add_argument("--only", default="", help="comma-separated run labels, e.g. W4A4,W2A2 (default: all)")
    ap.add_argument("--peer", choices=["none", "brevitas"], default="none",
                    help="also train brevitas at each LSQ width with the same loop, data order and epochs")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--name", default="qat_resnet", help="result file name under benchmarks/results/")
    ap.add_argument("--save", action="store_true", help="ship the LSQ W4A4 and W2A2 weights into the zoo")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    runs = [r for r in RUNS if not wanted or r[0].split()[-1] in wanted]
    train_set, test = fashion_mnist("train"), fashion_mnist("test")
    base = zoo.pretrained("resnet").eval()
    teacher = base if args.distill > 0 else None
    f_acc = evaluate(base, test)
    peer = args.peer == "brevitas"
    lines = [f"ResNet-14 float32: {100 * f_acc:.2f}%; distillation weight {args.distill}; LSQ step init {args.init}; "
             f"weight decay {args.weight_decay}", "",
             "| run | epochs | lowbit (integer model) | vs float | target | met | train time |"
             + (" brevitas (fake-quant) | brevitas train time | lowbit - brevitas |" if peer else ""),
             "|---|---:|---:|---:|---|---|---:|" + ("---:|---:|---:|" if peer else "")]
    for label, config, target in runs:
        config = replace(config, init=args.init) if config.method == "lsq" else config
        tcfg = TrainConfig(epochs=1 if config.method == "faq" else args.epochs,  # FAQ: one epoch whatever --epochs
                           lr=args.faq_lr if config.method == "faq" else args.lr, distill=args.distill,
                           weight_decay=args.weight_decay)
        model, acc, seconds, epochs = lowbit_run(config, train_set, test, tcfg, teacher)  # epochs actually trained
        if args.save and label in SHIP:
            save_weights(model, weights_path(SHIP[label]), {
                "model": SHIP[label], "base": "resnet", "config": repr(config), "test_accuracy": acc,
                "train": asdict(tcfg), "epochs": epochs,
                "command": " ".join(["benchmarks/bench_qat.py", *sys.argv[1:]])})
        delta = 100 * (acc - f_acc)
        line = (f"| {label} | {epochs} | {100 * acc:.2f}% | {delta:+.2f} | {target} | "
                f"{'yes' if delta >= -MARGIN[label] else 'no'} | {seconds:.0f} s |")
        if peer and config.method == "lsq":
            b_acc, b_sec = brevitas_run(config.weight.format.bits, train_set, test, tcfg, teacher)
            line += f" {100 * b_acc:.2f}% | {b_sec:.0f} s | {100 * (acc - b_acc):+.2f} |"
        elif peer:
            line += " - | - | - |"
        lines.append(line)
        print(line, flush=True)
    x, y = train_set.x[:128], train_set.y[:128]
    q = prepare_qat(zoo.pretrained("resnet"), QATConfig(*_specs(4, 4)), train_set.x[:256])
    f_us, q_us = step_time(zoo.pretrained("resnet"), q, x, y, 10)
    lines += ["", (f"One training step, batch 128, best of 10 interleaved: float {f_us / 1e3:.1f} ms, "
                   f"LSQ W4A4 {q_us / 1e3:.1f} ms ({q_us / f_us:.2f}x; target <= 1.6x)")]
    if peer:
        lines += ["", BREVITAS_NOTE]
    write_result(args.name, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Latency of an all-binary-hidden-layer MLP 784-1024-1024-1024-10 (``mlp1024x3``), 1 thread, batch 1 and 64.

The network is :class:`lowbit.zoo.binary.BinaryMLP` (Linear -> BatchNorm -> Hardtanh blocks). Paths, timed
interleaved in one process (:func:`lowbit.bench.latency.interleaved`: every round calls each path once, the
order rotating; best and median over the rounds):

* ``fp32 eager``: the float network in PyTorch eager mode (``torch.no_grad``);
* ``lowbit int8``: lowbit's own int8 model of the same float network (PTQ: int8 weights per channel, uint8
  activations, BatchNorm folded; ``to_integer``, compiled plan);
* ``lowbit binary``: the W1A1 model of the issue: first and last layer 8-bit weights, the two 1024x1024 hidden
  layers binary weights on binary inputs (XNOR-popcount), signs from the folded BatchNorm thresholds, the
  last hidden layer's output 8-bit (``QATConfig(QuantSpec(Binary(), PerChannel(0)), QuantSpec(Binary()))``,
  ``convert_qat``, ``to_integer``, compiled plan);
* ``onnxruntime int8`` (peer): onnxruntime ``quantize_static`` (QDQ, int8 per-channel weights, uint8
  activations) of the float network, one intra-op thread. Skipped, with the reason, where onnxruntime is
  missing (``pip install -e '.[bench]'``).

The latency does not depend on the weights' values, so the models are built from the float network's
initial weights (BatchNorm statistics from one batch of random inputs) and nothing is trained; the binary
model's outputs are checked against its converted simulation (identical) before timing. Also reported:
where the binary model's time goes (each op timed alone, op by op) and the fraction of the fp32 time its
8-bit first layer alone takes, which bounds the speed-up any binary hidden layers can give.

    .venv/bin/python benchmarks/bench_binary_latency.py                 # 200 rounds
    .venv/bin/python benchmarks/bench_binary_latency.py --rounds 400
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from _common import RESULTS, write_result
from lowbit import quantize
from lowbit.bench.latency import interleaved
from lowbit.formats import Binary
from lowbit.granularity import PerChannel
from lowbit.integer import to_integer
from lowbit.integer.backend import Kernels
from lowbit.ptq import PTQConfig
from lowbit.qat import QATConfig, convert_qat, prepare_qat
from lowbit.spec import QuantSpec
from lowbit.utils.files import atomic_write_text
from lowbit.zoo.binary import BinaryMLP

MODEL = "mlp1024x3"
PATHS = ["fp32 eager", "lowbit int8", "lowbit binary", "onnxruntime int8"]
TARGETS = {64: 30.0, 1: 15.0}  # the fp32 / binary ratios


def build(seed: int = 0):
    """(float net, int8 integer model, binary integer model) of one BinaryMLP."""
    torch.manual_seed(seed)
    net = BinaryMLP().eval()
    calib = torch.randn(256, 1, 28, 28)
    with torch.no_grad():
        net.train()(calib)  # BatchNorm statistics of real-valued activations
    net.eval()
    im8 = to_integer(quantize(net, [calib], PTQConfig()), (calib[:1],))
    w1a1 = QATConfig(weight=QuantSpec(Binary(), PerChannel(0)), act=QuantSpec(Binary()))
    gm = prepare_qat(net, w1a1, calib)
    gm.train()
    with torch.no_grad():
        gm(calib)  # the unfolded BatchNorms see the binary layers' outputs once
    convert_qat(gm)
    imb = to_integer(gm, (calib[:1],))
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        if not torch.equal(imb(x), gm(x)):
            raise SystemExit("the binary integer model differs from its simulation")
    return net, im8, imb, calib


def peer(net, calib, threads: int):
    try:
        import peers
        run, _ = peers.ort_quantize_static(net, (calib[:1],), [calib], threads=threads)
        return run, ""
    except Exception as exc:  # noqa: BLE001 - the peer is optional; say why it is missing
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def op_breakdown(im, x: torch.Tensor, rounds: int) -> list[tuple[str, str, float]]:
    """Each op of ``im`` timed alone on its real input (op by op, VNNI/XNOR kernels), best of ``rounds``."""
    env = im.run(x, Kernels.VNNI)
    env[im.input_name] = x
    rows = []
    for node in im.nodes:
        args = [env[i] for i in node.inputs]
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            node.op(*args, kernels=Kernels.VNNI)
            best = min(best, time.perf_counter() - t)
        a = node.op.ir
        what = node.kind + (f" {a.weight_codes.value} w, {a.input_bits}-bit in, {type(a.out).__name__}"
                            if hasattr(a, "weight_codes") else "")
        rows.append((node.output, what, 1e6 * best))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    net, im8, imb, calib = build()
    run_peer, peer_missing = peer(net, calib, args.threads)
    rows, md = [], []
    for batch in (64, 1):
        x = torch.randn(batch, 1, 28, 28)
        paths = {"fp32 eager": lambda: net(x), "lowbit int8": lambda: im8(x), "lowbit binary": lambda: imb(x)}
        if run_peer is not None:
            paths["onnxruntime int8"] = lambda: run_peer(x)
        with torch.no_grad():
            timing = interleaved(paths, rounds=args.rounds, warmup=20)
        for name in PATHS:
            if name in timing:
                rows.append({"model": MODEL, "batch": batch, "threads": args.threads, "path": name,
                             "best_us": round(timing[name].best_us, 1)})
        fp32, b = timing["fp32 eager"].best_us, timing["lowbit binary"].best_us
        md.append(f"\n## batch {batch}\n\n| path | best us | median us | fp32 / path |\n|---|---|---|---|")
        for name in PATHS:
            if name in timing:
                t = timing[name]
                md.append(f"| {name} | {t.best_us:.1f} | {t.median_us:.1f} | {fp32 / t.best_us:.2f}x |")
        md.append(f"\nfp32 / binary = **{fp32 / b:.2f}x** (target {TARGETS[batch]:.0f}x: "
                  f"{'met' if fp32 / b >= TARGETS[batch] else 'not met'}); int8 / binary = "
                  f"**{timing['lowbit int8'].best_us / b:.2f}x** (target > 1: "
                  f"{'met' if timing['lowbit int8'].best_us > b else 'not met'})"
                  + (f"; onnxruntime int8 / binary = {timing['onnxruntime int8'].best_us / b:.2f}x"
                     if "onnxruntime int8" in timing else ""))
        ops = op_breakdown(imb, x, 50)
        first = next(us for _, what, us in ops if "linear" in what)
        md.append("\nThe binary model op by op (each op alone, best of 50; the plan runs them in one C call):\n\n"
                  "| op | what | best us |\n|---|---|---|")
        md += [f"| {name} | {what} | {us:.1f} |" for name, what, us in ops]
        md.append(f"\nThe 8-bit first layer alone takes {first:.1f} us: fp32 / (first layer) = {fp32 / first:.1f}x "
                  "is the most any binary hidden layers could give with an 8-bit first layer.")
    if peer_missing:
        md.append(f"\nonnxruntime int8 not run: {peer_missing}")
    load_after = os.getloadavg()
    md.append(f"\nLoad average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} (2-core shared machine; "
              "paths interleaved, best of the rounds).")
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "binary_latency.json", json.dumps(rows, indent=1) + "\n")
    write_result("binary_latency", __doc__.split("\n\n")[0] + "\n" + "\n".join(md))


if __name__ == "__main__":
    main()

"""A shipped model's ONNX in onnxruntime: lowbit's exports against onnxruntime's own int8 model (default: ResNet).

Paths, interleaved in one process (``lowbit.bench.latency.interleaved``), every onnxruntime session with
``session.x64quantprecision`` (:mod:`lowbit.export.ort`: exact on x86 CPUs without VNNI, no change with VNNI):

* ``lowbit ONNX (ort)``: ``Residual.EXACT``, bit-exact with the integer model (a residual conv is a ``QGemm`` on
  im2col rows of uint8 codes, its sum rounded once);
* ``lowbit ONNX, residual requantize (ort)``: ``Residual.REQUANTIZE`` (``QLinearConv`` onto a lossless pre-add
  grid, then ``QLinearAdd``: rounded twice, as onnxruntime's own models are);
* ``ort quantize_static``: onnxruntime's own QDQ model (per-channel int8 weights, uint8 activations, MinMax on the
  same 32 calibration images).

A model without residual adds (``--model cnn`` or ``mlp``) has one export (both choices write the same graph).
Each (batch, threads) cell is measured ``--repeats`` times (``--rounds`` interleaved rounds each); the table keeps
every repeat and the ratio to onnxruntime's model per repeat, so that the noise of a shared 2-core machine shows.
Also: the optimized graphs' operator counts, and the test accuracy of each path on the 10,000 test images.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_onnx_residual.py
    PYTHONPATH=src .venv/bin/python benchmarks/bench_onnx_residual.py --model cnn --out onnx_latency_cnn
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import peers
from _common import RESULTS, write_result
from lowbit import zoo
from lowbit.bench.latency import interleaved
from lowbit.data import fashion_mnist
from lowbit.export.onnx_qdq import Residual, export_onnx
from lowbit.export.ort import session
from lowbit.integer.lower import to_integer
from lowbit.ptq import PTQConfig, quantize
from lowbit.utils.files import atomic_write_text

EXACT, REQUANT, ORT = "lowbit ONNX (ort)", "lowbit ONNX, residual requantize (ort)", "ort quantize_static"


def _ops(path: Path, tmp: Path) -> str:
    import onnx

    opt = tmp / f"{path.stem}.opt.onnx"
    session(path, 1, optimized_path=opt)
    counts = collections.Counter(n.op_type for n in onnx.load(opt).graph.node)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet", choices=["resnet", "cnn", "mlp"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="onnx_residual")
    args = ap.parse_args()
    train, test = fashion_mnist("train"), fashion_mnist("test")
    calib = train.x[:32]
    model = zoo.pretrained(args.model)
    im = to_integer(quantize(model, [calib], PTQConfig()), (calib[:2],))
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-onnx-residual-"))
    files = {EXACT: export_onnx(im, tmp / "exact.onnx", (1, 1, 28, 28))}
    if any(len(n.inputs) > 1 for n in im.nodes):
        files[REQUANT] = export_onnx(im, tmp / "requant.onnx", (1, 1, 28, 28), residual=Residual.REQUANTIZE)
    ours = list(files)
    ops = {name: _ops(p, tmp) for name, p in files.items()}
    rows, lines = [], []
    accuracy = {}
    for threads in args.threads:
        sessions = {name: session(p, threads) for name, p in files.items()}
        ortq, _ = peers.ort_quantize_static(model, (calib[:2],), [calib], threads=threads)
        fns = {**{n: (lambda x, s=s: s.run(None, {"input": x.numpy()})[0]) for n, s in sessions.items()},
               ORT: lambda x: np.asarray(ortq(x))}
        if not accuracy:
            with torch.no_grad():
                ref = torch.cat([im(test.x[i:i + 1000]) for i in range(0, 10000, 1000)]).argmax(1)
            accuracy["lowbit integer"] = (float((ref == test.y).float().mean()), 1.0)
            for n, fn in fns.items():
                pred = torch.from_numpy(np.concatenate([fn(test.x[i:i + 1000]) for i in range(0, 10000, 1000)]))
                pred = pred.argmax(1)
                accuracy[n] = (float((pred == test.y).float().mean()), float((pred == ref).float().mean()))
        for batch in args.batch:
            x = test.x[:batch]
            for rep in range(args.repeats):
                t = interleaved({n: (lambda fn=fn: fn(x)) for n, fn in fns.items()}, args.rounds)
                base = t[ORT]
                for n, tm in t.items():
                    rows.append({"model": args.model, "batch": batch, "threads": threads, "path": n,
                                 "best_us": round(tm.best_us, 1), "median_us": round(tm.median_us, 1), "repeat": rep})
                row = [f"{t[p].best_us:.0f}" for p in ours] + [f"{base.best_us:.0f}"]
                row += [f"{t[p].best_us / base.best_us:.2f}x | {t[p].median_us / base.median_us:.2f}x" for p in ours]
                lines.append(f"| {batch} | {threads} | {rep + 1} | {' | '.join(row)} |")
    cells = collections.defaultdict(list)
    for r in rows:
        cells[r["batch"], r["threads"], r["path"]].append(r["best_us"])
    summary = [f"| {b} | {th} | " + " | ".join(f"{min(cells[b, th, p]) / min(cells[b, th, ORT]):.2f}x" for p in ours)
               + " |" for th in args.threads for b in args.batch]
    md = "\n".join([
        f"lowbit's int8 GEMM on this machine: {_isa()}; onnxruntime sessions with session.x64quantprecision = 1.",
        "",
        "Best of all repeats, over onnxruntime's own int8 model (the target: within 1.1x):",
        "",
        f"| batch | threads | {' | '.join(ours)} |", "|---:|---:|" + "---:|" * len(ours), *summary,
        "",
        "Every repeat (best us; ratios to ort quantize_static):",
        "",
        "| batch | threads | repeat | " + " | ".join(f"{p}, us" for p in ours) + f" | {ORT}, us | "
        + " | ".join(f"{p} / ort, best | median" for p in ours) + " |",
        "|---:|---:|---:|" + "---:|" * (1 + 3 * len(ours)), *lines,
        "",
        "| path | test accuracy | same top-1 as the integer model |", "|---|---:|---:|",
        *[f"| {n} | {100 * a:.2f}% | {100 * s:.2f}% |" for n, (a, s) in accuracy.items()],
        "",
        "Operators of onnxruntime's optimized graphs:",
        "",
        *[f"- {n}: {o}" for n, o in ops.items()],
    ])
    write_result(args.out, md)
    atomic_write_text(RESULTS / f"{args.out}.json", "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")


def _isa() -> str:
    from lowbit.integer import vnni

    return vnni.isa() or "none (torch._int_mm)"


if __name__ == "__main__":
    main()

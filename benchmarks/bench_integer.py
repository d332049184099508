"""Integer execution: latency of float vs lowbit integer vs ONNX paths, int8 GEMM throughput, saved size.

Models: the Fashion-MNIST CNN and ResNet (shipped), an MLP 784-1024-1024-1024-10
(trained here for one seeded epoch) and, with ``--effnet``, EfficientNet-Lite0 at
224x224. For each batch size and thread count, every path runs once per round in
a rotating order (``lowbit.bench.latency.interleaved``); the table gives the best
and median over ``--rounds`` rounds and the speed-up of each path's best time
over float eager's and over the strongest float path's; a second table gives,
per batch and thread count, lowbit's ONNX over onnxruntime's own int8 model
(best times). Every latency row is also written to ``results/OUT.json`` beside
the Markdown: a list of ``{"model", "batch", "threads", "path", "best_us",
"median_us"}``.

Paths: float32 PyTorch eager; float32 in onnxruntime (the strongest float path
here); lowbit integer (in process: the whole model in one C call, ``lowbit.integer.plan``, over
the prepacked VNNI int8 GEMM with the requantization fused, ``lowbit.integer.vnni``); the same
kernels called op by op from Python (``Kernels.VNNI``); the same integer model
on ``torch._int_mm`` + the C epilogue (the previous kernel, for contrast);
lowbit's QDQ ONNX in onnxruntime (bit-exact: ``Residual.EXACT``) and, for a model
with residual adds, its ``Residual.REQUANTIZE`` export (``QLinearConv`` +
``QLinearAdd``, rounding twice as onnxruntime's own models do); onnxruntime's own
``quantize_static`` model (QDQ, per-channel, 32 calibration images); with
``--torchao``, torchao PT2E int8 under ``torch.compile`` (freezing on). Every
onnxruntime session sets ``session.x64quantprecision`` (:mod:`lowbit.export.ort`):
on an x86 CPU without VNNI the int8 models then compute exactly (uint8 weights
where int8 weights would saturate), at some cost in speed; with VNNI it changes nothing.

    python benchmarks/bench_integer.py                         # CNN, MLP, ResNet; batch 1/64, threads 1/2
    python benchmarks/bench_integer.py --models --effnet --threads 1 --rounds 3 --out integer_latency_effnet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from _common import RESULTS, write_result
from lowbit.integer.backend import Kernels
from lowbit import zoo
from lowbit.bench.latency import interleaved, ort_session, torch_threads
from lowbit.data import fashion_mnist
from lowbit.integer.io import save_integer
from lowbit.integer.lower import to_integer
from lowbit.ptq import PTQConfig, quantize
from lowbit.utils.files import atomic_write_text
from lowbit.utils.tensorfile import save_tensors
from lowbit.zoo.recipes import evaluate

sys.path.insert(0, os.path.dirname(__file__))
import peers  # noqa: E402


def big_mlp(train) -> nn.Module:
    """MLP 784-1024-1024-1024-10, one seeded epoch of Adam on Fashion-MNIST (for a meaningful accuracy)."""
    torch.manual_seed(0)
    layers = [nn.Flatten()]
    for a, b in ((784, 1024), (1024, 1024), (1024, 1024)):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(1024, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    perm = torch.randperm(len(train.y))
    for i in range(0, len(perm), 128):
        idx = perm[i:i + 128]
        loss = nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def gemm_throughput(rounds: int) -> str:
    """int8 GEMM through lowbit's kernel (VNNI or AVX2) and torch._int_mm vs fp32 torch.mm, 1 thread, two shapes."""
    from lowbit.integer import vnni
    from lowbit.integer.kernels import int_mm

    lines = ["| GEMM (M x N x K), 1 thread | best us | GOP/s | vs fp32 torch.mm |", "|---|---:|---:|---:|"]
    for m, n, k in ((1024, 1024, 1024), (64, 1024, 1024)):
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
        af, wf = a.float(), w.float()
        paths = {"fp32 torch.mm": lambda: af @ wf.t(), "int8 torch._int_mm": lambda: int_mm(a, w)}
        if vnni.available():
            pw = vnni.pack_weight(w)
            paths[f"int8 lowbit {vnni.isa()}"] = lambda: vnni.gemm(a, pw, pw.correction)  # int8 rows
        with torch_threads(1):
            t = interleaved(paths, rounds)
        ops, base = 2 * m * n * k, t["fp32 torch.mm"].best_us
        for name, tm in t.items():
            lines.append(f"| {name}, {m}x{n}x{k} | {tm.best_us:.0f} | {ops / tm.best_us / 1e3:.0f} | "
                         f"{base / tm.best_us:.1f}x |")
    if vnni.available():
        with torch_threads(1):
            peak = max(vnni.peak_gops() for _ in range(3))
        instr = "`vpdpbusd`" if vnni.isa() == "avx512-vnni" else "`vpmaddwd` + `vpaddd`"
        lines += ["", f"Measured int8 peak of one core (register-only {instr} loop, best of 3): {peak:.0f} GOP/s."]
    return "\n".join(lines)


def size_row(name: str, model: nn.Module, im, tmp: Path) -> str:
    fp = save_tensors(tmp / f"{name}-float.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
    ip = save_integer(im, tmp / f"{name}-int8.safetensors")
    f, i = fp.stat().st_size, ip.stat().st_size
    return f"| {name} | {f:,} | {i:,} | {i / f:.3f}x |"


def paths_for(model, im, im_op, im_int_mm, onnx_lowbit, onnx_requant, ort_float_fn, ort_q_fn, threads):
    sess = ort_session(onnx_lowbit, threads)
    name = sess.get_inputs()[0].name
    paths = {
        "float32 eager": lambda x: model(x),
        "float32 onnxruntime": ort_float_fn,
        "lowbit integer": lambda x: im(x),
        "lowbit integer (op by op)": lambda x: im_op(x),
        "lowbit integer (torch._int_mm)": lambda x: im_int_mm(x),
        "lowbit ONNX (ort)": lambda x: sess.run(None, {name: x.numpy()}),
        "ort quantize_static": ort_q_fn,
    }
    if onnx_requant is not None:
        rq = ort_session(onnx_requant, threads)
        paths[REQUANT_PATH] = lambda x: rq.run(None, {name: x.numpy()})
    return paths


ONNX_PATH, ORT_PATH = "lowbit ONNX (ort)", "ort quantize_static"
REQUANT_PATH = "lowbit ONNX, residual requantize (ort)"


def onnx_ratio_table(rows: list[dict]) -> str:
    """Per batch and thread count: lowbit's ONNX exports over onnxruntime's own int8 model, best and median times."""
    by = {(r["batch"], r["threads"], r["path"]): r for r in rows}
    ours = [p for p in (ONNX_PATH, REQUANT_PATH) if any(r["path"] == p for r in rows)]
    head = " | ".join(f"{p} / {ORT_PATH}, best | median" for p in ours)
    lines = [f"| batch | threads | {head} |", "|---:|---:|" + "---:|---:|" * len(ours)]
    for batch, threads in dict.fromkeys((r["batch"], r["threads"]) for r in rows):
        theirs = by[batch, threads, ORT_PATH]
        cells = [f"{by[batch, threads, p]['best_us'] / theirs['best_us']:.2f}x | "
                 f"{by[batch, threads, p]['median_us'] / theirs['median_us']:.2f}x" for p in ours]
        lines.append(f"| {batch} | {threads} | {' | '.join(cells)} |")
    return "\n".join(lines)


def bench_model(label, model, calib, test, batches, threads_list, rounds, torchao: bool,
                tmp: Path) -> tuple[str, str, list[dict]]:
    """The latency table (Markdown), the accuracy table (or "") and the latency rows of one model."""
    from lowbit.export.onnx_qdq import Residual, export_onnx

    sim = quantize(model, [calib], PTQConfig())
    im = to_integer(sim, (calib[:2],))
    im_op = im.with_kernels(Kernels.VNNI)  # the same kernels called from Python one op at a time
    im_int_mm = im.with_kernels(Kernels.INT_MM)
    onnx_path = export_onnx(im, tmp / f"{label}.onnx", tuple(calib[:1].shape))
    requant = None  # (the same graph as onnx_path without residual adds)
    if any(len(n.inputs) > 1 for n in im.nodes):
        requant = export_onnx(im, tmp / f"{label}-requant.onnx", tuple(calib[:1].shape), residual=Residual.REQUANTIZE)
    acc_rows, rows = [], []
    lines = [f"### {label}", "", "| batch | threads | path | best us | median us | vs float eager | vs best float |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for threads in threads_list:
        ort_f = peers.ort_float(model, (calib[:2],), threads)
        ort_q, _ = peers.ort_quantize_static(model, (calib[:2],), [calib], threads=threads)
        paths = paths_for(model, im, im_op, im_int_mm, onnx_path, requant, ort_f, ort_q, threads)
        if torchao:
            paths["torchao PT2E + compile"] = _torchao(model, calib)
        if threads == threads_list[0] and test is not None:
            acc_rows = [(n, evaluate(_module(fn), test)) for n, fn in paths.items()]
        for batch in batches:
            x = test.x[:batch] if test is not None else calib[:1].expand(batch, *calib.shape[1:]).contiguous()
            with torch_threads(threads), torch.no_grad():
                t = interleaved({n: (lambda fn=fn: fn(x)) for n, fn in paths.items()}, rounds)
            eager = t["float32 eager"].best_us
            best_float = min(eager, t["float32 onnxruntime"].best_us)
            for n, tm in t.items():
                rows.append({"model": label, "batch": batch, "threads": threads, "path": n,
                             "best_us": round(tm.best_us, 1), "median_us": round(tm.median_us, 1)})
                lines.append(f"| {batch} | {threads} | {n} | {tm.best_us:.0f} | {tm.median_us:.0f} | "
                             f"{eager / tm.best_us:.2f}x | {best_float / tm.best_us:.2f}x |")
    acc = ""
    if acc_rows:
        acc = "\n".join([f"| {label} path | test accuracy |", "|---|---:|"] +
                        [f"| {n} | {100 * a:.2f}% |" for n, a in acc_rows])
    return "\n".join(lines) + "\n\n" + onnx_ratio_table(rows), acc, rows


class _module(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        out = self.fn(x)
        return torch.as_tensor(out[0] if isinstance(out, list) else out)


def _torchao(model, calib):
    import torch._inductor.config as cfg

    cfg.freezing = True
    run, _ = peers.torchao_pt2e(model, (calib[:2],), [calib])
    compiled = torch.compile(run)
    return lambda x: compiled(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="*", default=["cnn", "mlp1024", "resnet"], choices=["cnn", "mlp1024", "resnet"])
    ap.add_argument("--out", default="integer_latency",
                    help="results file name (benchmarks/results/OUT.md and, with latency rows, OUT.json)")
    ap.add_argument("--effnet", action="store_true", help="also EfficientNet-Lite0 (224x224; slow)")
    ap.add_argument("--torchao", action="store_true", help="also torchao PT2E int8 under torch.compile")
    ap.add_argument("--sizes-only", action="store_true", help="only the saved-size table (no latency)")
    args = ap.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    train, test = fashion_mnist("train"), fashion_mnist("test")
    calib = train.x[:32]
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-bench-"))
    sections = [gemm_throughput(args.rounds)] if args.models and not args.sizes_only else []
    sizes = ["| model | float32 bytes | lowbit int8 bytes | ratio |", "|---|---:|---:|---:|"]
    rows: list[dict] = []
    for name in args.models:
        model = big_mlp(train) if name == "mlp1024" else zoo.pretrained(name)
        if not args.sizes_only:
            table, acc, model_rows = bench_model(name, model, calib, test, args.batch, args.threads, args.rounds,
                                                 args.torchao, tmp)
            sections += [table, acc]
            rows += model_rows
        sizes.append(size_row(name, model, to_integer(quantize(model, [calib], PTQConfig()), (calib[:2],)), tmp))
    if args.effnet:
        from lowbit.data.photos import photo_crops
        from lowbit.zoo.efficientnet import efficientnet_lite0, with_plain_convs

        model = with_plain_convs(efficientnet_lite0()).eval()
        crops = photo_crops(32, "calib")
        if not args.sizes_only:
            table, _, model_rows = bench_model("efficientnet-lite0", model, crops, None, args.batch, args.threads,
                                               args.rounds, False, tmp)
            sections.append(table)
            rows += model_rows
        sizes.append(size_row("efficientnet-lite0", model,
                              to_integer(quantize(model, [crops], PTQConfig(), (crops[:2],)), (crops[:2],)), tmp))
    sections.append("\n".join(sizes))
    write_result(args.out, "\n\n".join(s for s in sections if s))
    if rows:  # (a sizes-only run leaves the latency rows of the last full run)
        atomic_write_text(RESULTS / f"{args.out}.json", "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")


if __name__ == "__main__":
    main()

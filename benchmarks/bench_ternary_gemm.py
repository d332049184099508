"""Ternary-weight GEMM on two bit-planes against fp32 GEMM, 1 thread, on the 5 shapes of shared/research/cpu.md.

For each (M, N, K), ``out = A (M, K) . W (N, K)^T`` with W ternary ({-1, 0, +1}, about a third zeros); the paths
run interleaved in one process (each round calls every path, in rotating order), in several passes over all
shapes, and each path is called twice in a row per round: the first call ("cold") runs after another path has
replaced the caches' contents, the second ("warm") with its own operands in cache. The headline and the JSON are
the best warm times; the Markdown also has the best cold ones. The paths:

* ``fp32 torch.mm``: ``torch.mm(A, W.t())`` (what a PyTorch user runs; MKL on this CPU), W the float codes;
* ``fp32 onednn``: the prepacked oneDNN fp32 linear, ``torch.ops.mkldnn._linear_pointwise`` on a weight
  reordered once by ``torch.ops.mkldnn._reorder_linear_weight`` (what inductor's freezing emits);
* ``lowbit ternary``: :func:`lowbit.bitwise.ternary.ternary_gemm` of binary activations (the sign bits of A,
  packed once outside the timing) with the weight packed once (:func:`pack_ternary_weight`), best backend;
* ``lowbit ternary x ternary``: the same with ternary activations (the sign and mask planes of ternary codes);
* ``lowbit ternary fallback``: binary activations on the best backend that is not AVX-512 (AVX2 here);
* in the Markdown only, ``lowbit binary (XNOR)``: :func:`lowbit.bitwise.binary_gemm` of the same shape, the cost
  of a +-1 weight next to a ternary one.

GOP/s = 2 M N K / time for every path. The binary peak of this core (register-only ``vpxorq`` + ``vpopcntq`` +
``vpaddq`` on 512 bits, :func:`lowbit.bitwise.kernels.peak_gops`) is measured before, between and after the
passes; the ternary kernel's inner operation (``vpternlogq`` + ``vpopcntq`` + ``vpaddq``) issues at the same rate.
Every lowbit result is checked once against the float32 GEMM of the codes (exact for K < 2^24). The load average
and the CPU time of other processes are recorded: the machine is shared.

    python benchmarks/bench_ternary_gemm.py                    # 3 passes x 20 rounds
    python benchmarks/bench_ternary_gemm.py --passes 5 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from _common import RESULTS, write_result
from bench_binary_gemm import SHAPES, _time, cpu_description, fallback_backend, fp32_paths, measure, path_table
from lowbit.bitwise import kernels
from lowbit.bitwise.pack import pack_signs
from lowbit.bitwise.ternary import pack_ternary, pack_ternary_weight, ternary_gemm
from lowbit.utils.files import atomic_write_text

PATHS = ["fp32 torch.mm", "fp32 onednn", "lowbit ternary", "lowbit ternary x ternary", "lowbit ternary fallback"]
BINARY = "lowbit binary (XNOR)"  # Markdown only
TARGET = 15.0  # x fp32 torch.mm, 1 thread (the GEMM target for the ternary-weight GEMM)


def ternary_codes(*shape: int, g: torch.Generator) -> torch.Tensor:
    """int8 codes in {-1, 0, 1}, about a third of each."""
    return torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)


def shape_paths(m: int, n: int, k: int, fallback: str | None) -> tuple[dict, dict]:
    """The timed callables of one shape, and the packing costs (us, best of 10) reported beside them."""
    g = torch.Generator().manual_seed(m * 7 + n * 13 + k)
    x = torch.randn(m, k, generator=g)
    wc = ternary_codes(n, k, g=g)
    xc = ternary_codes(m, k, g=g)
    w = wc.float()
    wt = w.t()
    a = kernels.pack_rows(x)
    planes = pack_ternary(xc)
    pw = pack_ternary_weight(wc)
    pb = kernels.pack_weight(pack_signs(w), k)  # the XNOR GEMM of the same shape (signs of the codes)
    expect = (torch.where(x >= 0, 1.0, -1.0) @ wt).to(torch.int32)  # exact: integers below 2^24
    assert torch.equal(ternary_gemm(a, pw, k), expect), "ternary GEMM differs from the float GEMM of the codes"
    assert torch.equal(ternary_gemm(planes, pw, k), (xc.float() @ wt).to(torch.int32)), "ternary x ternary differs"
    paths = {
        **fp32_paths(x, w),
        "lowbit ternary": lambda: ternary_gemm(a, pw, k),
        "lowbit ternary x ternary": lambda: ternary_gemm(planes, pw, k),
        BINARY: lambda: kernels.binary_gemm(a, pb, k),
    }
    if fallback is not None:
        assert torch.equal(ternary_gemm(a, pw, k, isa=fallback), expect)
        paths["lowbit ternary fallback"] = lambda: ternary_gemm(a, pw, k, isa=fallback)
    costs = {}
    for name, fn in (("pack_rows(A)", lambda: kernels.pack_rows(x)), ("pack_ternary(A codes)", lambda: pack_ternary(xc)),
                     ("pack_ternary_weight(W)", lambda: pack_ternary_weight(wc))):
        fn()
        costs[name] = min(_time(fn) for _ in range(10))
    return paths, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3, help="passes over all shapes (default 3)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds per shape and pass (default 20)")
    parser.add_argument("--out", default="ternary_gemm", help="results/OUT.md and results/OUT.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fallback = fallback_backend()
    run = measure(lambda: {s: shape_paths(*s, fallback) for s in SHAPES}, args.passes, args.rounds)
    built, best, peaks, peak, seconds = run.built, run.best, run.peaks, run.peak, run.seconds
    load_before, load_after, others = run.load_before, run.load_after, run.others
    rows, lines = path_table(run, [*PATHS, BINARY], PATHS)
    target_lines = [f"| shape (M, N, K) | lowbit ternary x torch.mm (target >= {TARGET:.0f}) | x onednn | "
                    "ternary x ternary x torch.mm | fallback x torch.mm | ternary time / binary (XNOR) time |",
                    "|---|---:|---:|---:|---:|---:|"]
    met, missed = [], []
    for shape in SHAPES:
        mm, dnn, tern = best[shape, "fp32 torch.mm"], best[shape, "fp32 onednn"], best[shape, "lowbit ternary"]
        tt, binary = best[shape, "lowbit ternary x ternary"], best[shape, BINARY]
        fb = best.get((shape, "lowbit ternary fallback"))
        label = "x".join(map(str, shape))
        (met if mm / tern >= TARGET else missed).append(label)
        mark = "" if mm / tern >= TARGET else " (missed)"
        target_lines.append(f"| {label} | {mm / tern:.1f}x{mark} | {dnn / tern:.1f}x | {mm / tt:.1f}x | "
                            f"{f'{mm / fb:.1f}x' if fb else 'n/a'} | {tern / binary:.2f} |")
    verdict = (f"**Target >= {TARGET:.0f}x fp32 torch.mm (lowbit ternary, binary activations, 1 thread, warm best): "
               f"met on {len(met)} of {len(SHAPES)} shapes**" + (f" ({', '.join(met)})" if met else "")
               + (f"; missed on {', '.join(missed)}" if missed else "") + ".")
    tt_met = [s for s in SHAPES if best[s, "fp32 torch.mm"] / best[s, "lowbit ternary x ternary"] >= TARGET]
    verdict += (f" Ternary x ternary reaches {TARGET:.0f}x on {len(tt_met)} of {len(SHAPES)} shapes: it does twice "
                "the popcount work (two binary planes per activation).")
    pack_lines = ["| shape (M, N, K) | pack_rows(A), C, us | pack_ternary(A codes), C, us | "
                  "pack_ternary_weight(W) us (once per weight) |", "|---|---:|---:|---:|"]
    for shape, (_, costs) in built.items():
        pack_lines.append(f"| {'x'.join(map(str, shape))} | {costs['pack_rows(A)']:.1f} | "
                          f"{costs['pack_ternary(A codes)']:.0f} | {costs['pack_ternary_weight(W)']:.0f} |")
    quiet = others < 0.1
    body = "\n".join([
        f"- CPU (lscpu): {cpu_description()}",
        f"- other processes used {others:.2f} of the {os.cpu_count()} CPUs on average during the run (/proc/stat "
        f"minus this process): {'quiet' if quiet else 'NOT quiet; best-of-rounds times are the least disturbed'}; "
        f"load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}, after: "
        f"{', '.join(f'{v:.2f}' for v in load_after)} (it trails by minutes); run took {seconds:.0f} s",
        f"- 1 thread (torch.set_num_threads(1), ternary_gemm threads=1); {args.passes} passes x {args.rounds} "
        "interleaved rounds per shape, each path called twice per round (cold, then warm); best and median over "
        "all rounds",
        f"- lowbit backend: `{kernels.backend()}`; fallback: `{fallback}`",
        f"- binary peak of one core (register-only vpxorq + vpopcntq + vpaddq loop, 8 independent chains; best of "
        f"{len(peaks)} runs): {peak:.0f} GOP/s (median run {sorted(peaks)[len(peaks) // 2]:.0f}); GOP/s counts "
        "2 M N K for every path, so ternary x ternary, which runs two binary planes, is at most half of it",
        "", verdict, "", *target_lines, "",
        "Why ternary (binary activations) costs about 1.1-1.3x the XNOR GEMM: the same loop, but per word and 8 "
        "outputs a `vpternlogq` ((b XOR s) AND m) where the XNOR kernel has a `vpxorq`, and twice the weight bytes. "
        "In a test build (not shipped) the same loop with the mask operation left out ran at the XNOR kernel's "
        "speed, and with the mask loads left out but the `vpternlogq` kept it did not get faster: the extra "
        "logic operation, not the loads, is the cost (`vpternlogq` and `vpxorq` + `vpandq` timed the same).",
        "", *lines, "",
        "Packing costs (best of 10, outside the timed paths; a weight is packed once):", "", *pack_lines,
    ])
    write_result(args.out, body)
    atomic_write_text(RESULTS / f"{args.out}.json", "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")


if __name__ == "__main__":
    main()

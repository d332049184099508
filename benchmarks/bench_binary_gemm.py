"""Binary (XNOR-popcount) GEMM against fp32 GEMM, 1 thread, on the 5 shapes of shared/research/cpu.md.

For each (M, N, K), ``out = A (M, K) . W (N, K)^T``; four paths run interleaved in one process (each round
calls every path, in rotating order), in several passes over all shapes. In a round each path is called twice in
a row: the first call runs after another path has replaced the caches' contents ("cold": for the binary paths
that means their operands come back from L3 after the fp32 paths streamed 10-70 MB), the second with the
path's own operands in cache ("warm"). Each path keeps its best warm time (the headline and the JSON) and its
best cold time (in the Markdown):

* ``fp32 torch.mm``: ``torch.mm(A, W.t())`` (what a PyTorch user runs; MKL on this CPU);
* ``fp32 onednn``: the prepacked oneDNN fp32 linear, ``torch.ops.mkldnn._linear_pointwise`` on a weight
  reordered once by ``torch.ops.mkldnn._reorder_linear_weight`` (what inductor's freezing emits);
* ``lowbit binary``: ``lowbit.bitwise.binary_gemm`` on the packed signs (weight packed once into panels,
  activations packed once outside the timing; the packing cost is reported beside), best backend;
* ``lowbit binary fallback``: the same with the best backend that is not AVX-512 (AVX2 here);
* in the Markdown only, ``lowbit binary, threshold epilogue``: the same GEMM emitting the packed sign bits of
  ``out >= thr`` (a folded BatchNorm) instead of int32, the next binary layer's input.

GOP/s = 2 M N K / time for every path (a binary multiply-add counts 2 ops, as a float one does). The binary
peak of this core is measured with a register-only loop of ``vpxorq`` + ``vpopcntq`` + ``vpaddq`` on 512 bits
(8 independent chains, :func:`lowbit.bitwise.kernels.peak_gops`), best of 5. Every binary result is checked
once against the float32 GEMM of the signs (exact for K < 2^24). The load average is recorded before and
after: the machine is shared.

    python benchmarks/bench_binary_gemm.py                    # 3 passes x 20 rounds
    python benchmarks/bench_binary_gemm.py --passes 5 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import dataclass

import torch

from _common import RESULTS, write_result
from lowbit.bitwise import kernels
from lowbit.bitwise import reference
from lowbit.bitwise.pack import pack_signs
from lowbit.utils.files import atomic_write_text

SHAPES = [(64, 3136, 576), (512, 49, 4608), (256, 1024, 1024), (1024, 1024, 1024), (64, 4096, 4096)]
PATHS = ["fp32 torch.mm", "fp32 onednn", "lowbit binary", "lowbit binary fallback"]
THRESHOLD = "lowbit binary, threshold epilogue"  # Markdown only: packed bits out instead of int32


def cpu_description() -> str:
    """Model name, family/model and the SIMD flags that matter here, from lscpu."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "lscpu unavailable"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    get = lambda key: fields.get(key, "?").strip()  # noqa: E731
    flags = [f for f in get("Flags").split() if f in ("avx2", "avx512f", "avx512_vpopcntdq", "avx512_bitalg",
                                                    "avx512_vnni", "avx512bw")]
    return (f"{get('Model name')} (family {get('CPU family')}, model {get('Model')}), {get('CPU(s)')} CPUs, "
            f"L2 {get('L2 cache')}, L3 {get('L3 cache')}; flags: {' '.join(flags)}")


def cpu_busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat: user, nice, system, irq, softirq, steal)."""
    try:
        fields = open("/proc/stat").readline().split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def fallback_backend() -> str | None:
    """The best compiled backend that does not use AVX-512."""
    return next((b for b in kernels.backends() if b not in ("avx512-vpopcntdq", kernels.REFERENCE)), None)


def fp32_paths(x: torch.Tensor, w: torch.Tensor) -> dict:
    """The float baselines of ``x @ w.T``: ``torch.mm`` and oneDNN's linear on a prepacked weight (checked equal)."""
    wt = w.t()
    wp = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
    got = torch.ops.mkldnn._linear_pointwise(x, wp, None, "none", [], "")
    assert torch.allclose(got, torch.mm(x, wt), rtol=1e-3, atol=1e-2 * x.shape[1]**0.5), \
        "oneDNN linear differs from torch.mm"
    return {"fp32 torch.mm": lambda: torch.mm(x, wt),
            "fp32 onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, wp, None, "none", [], "")}


def shape_paths(m: int, n: int, k: int, fallback: str | None) -> tuple[dict, dict]:
    """The timed callables of one shape, and the packing costs (us, best of 20) reported beside them."""
    g = torch.Generator().manual_seed(m * 7 + n * 13 + k)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    a = pack_signs(x)
    pw = kernels.pack_weight(pack_signs(w), k)
    expect = (torch.where(x >= 0, 1.0, -1.0) @ torch.where(w >= 0, 1.0, -1.0).t()).to(torch.int32)
    thr = torch.randint(-k // 8, k // 8 + 1, (n,), generator=g, dtype=torch.int32)
    flip = torch.rand(n, generator=g) < 0.5
    bits = kernels.binary_gemm(a, pw, k, thr=thr, flip=flip)
    assert torch.equal(bits.view(torch.int64), reference.threshold_reference(expect, thr, flip).view(torch.int64))
    assert torch.equal(kernels.binary_gemm(a, pw, k), expect), "binary GEMM differs from the float GEMM of the signs"
    paths = {
        **fp32_paths(x, w),
        "lowbit binary": lambda: kernels.binary_gemm(a, pw, k),
        THRESHOLD: lambda: kernels.binary_gemm(a, pw, k, thr=thr, flip=flip),
    }
    if fallback is not None:
        assert torch.equal(kernels.binary_gemm(a, pw, k, isa=fallback), expect)
        paths["lowbit binary fallback"] = lambda: kernels.binary_gemm(a, pw, k, isa=fallback)
    assert torch.equal(kernels.pack_rows(x).view(torch.int64), a.view(torch.int64))
    costs = {}
    for name, fn in (("pack_rows(A)", lambda: kernels.pack_rows(x)), ("pack_signs(A)", lambda: pack_signs(x)),
                     ("pack_weight(W)", lambda: kernels.pack_weight(kernels.pack_rows(w), k))):
        fn()
        costs[name] = min(_time(fn) for _ in range(10))
    return paths, costs


def warm_cold(paths: dict, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per path: (warm, cold) samples in us; each round calls every path twice in a row, order rotating."""
    names = list(paths)
    samples = {n: ([], []) for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            cold = _time(paths[name])
            samples[name][0].append(_time(paths[name]))
            samples[name][1].append(cold)
    return samples


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


@dataclass
class Run:
    """Interleaved timings of every path of every shape (us), the binary peak and how busy the machine was."""

    built: dict
    best: dict
    best_cold: dict
    median: dict
    peaks: list[float]
    load_before: tuple
    load_after: tuple
    others: float
    seconds: float

    @property
    def peak(self) -> float:
        return max(self.peaks)


def measure(build, passes: int, rounds: int) -> Run:
    """``build()`` -> {shape: (paths, costs)}; ``passes`` passes of :func:`warm_cold` over every shape, the peak
    measured before, between the passes and after; the CPU time other processes took meanwhile."""
    load_before = os.getloadavg()
    busy0, own0, wall0 = cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    peaks = [kernels.peak_gops() for _ in range(5)]
    built = build()
    warm: dict[tuple, list[float]] = {}
    cold: dict[tuple, list[float]] = {}
    for _ in range(passes):
        peaks += [kernels.peak_gops(5_000_000) for _ in range(3)]  # the peak, too, in every pass
        for shape, (paths, _) in built.items():
            for name, (w, c) in warm_cold(paths, rounds).items():
                warm.setdefault((shape, name), []).extend(w)
                cold.setdefault((shape, name), []).extend(c)
    peaks += [kernels.peak_gops() for _ in range(5)]
    load_after = os.getloadavg()
    # the CPU time of other processes during the run, in cores: what the whole machine spent minus this process
    others = (cpu_busy_seconds() - busy0 - (sum(os.times()[:2]) - own0)) / (time.perf_counter() - wall0)
    return Run(built, {k: min(v) for k, v in warm.items()}, {k: min(v) for k, v in cold.items()},
               {k: sorted(v)[len(v) // 2] for k, v in warm.items()}, peaks, load_before, load_after, others,
               time.perf_counter() - wall0)


def path_table(run: Run, names: list[str], json_paths: list[str]) -> tuple[list[dict], list[str]]:
    """The JSON rows (paths in ``json_paths``) and the Markdown table of every path in ``names``: warm and cold
    best, GOP/s (2 M N K), share of the binary peak, ratios to the fp32 paths."""
    best, best_cold, median, peak = run.best, run.best_cold, run.median, run.peak
    rows, lines = [], []
    lines += ["| shape (M, N, K) | path | best us (warm) | median us (warm) | GOP/s | % of binary peak | "
              "x fp32 torch.mm | x fp32 onednn | best us (cold) | cold: x torch.mm | cold: x onednn |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape in SHAPES:
        m, n, k = shape
        ops = 2 * m * n * k
        for name in names:
            if (shape, name) not in best:
                continue
            us = best[shape, name]
            gops = ops / us / 1e3
            if name in json_paths:
                rows.append({"shape": [m, n, k], "path": name, "best_us": round(us, 2), "gops": round(gops, 1)})
            pct = f"{100 * gops / peak:.0f}%" if name.startswith("lowbit") and peak else ""
            c = best_cold[shape, name]
            lines.append(f"| {m}x{n}x{k} | {name} | {us:.1f} | {median[shape, name]:.1f} | {gops:.0f} | {pct} | "
                         f"{best[shape, 'fp32 torch.mm'] / us:.1f}x | {best[shape, 'fp32 onednn'] / us:.1f}x | "
                         f"{c:.1f} | {best_cold[shape, 'fp32 torch.mm'] / c:.1f}x | "
                         f"{best_cold[shape, 'fp32 onednn'] / c:.1f}x |")
    return rows, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3, help="passes over all shapes (default 3)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds per shape and pass (default 20)")
    parser.add_argument("--out", default="binary_gemm", help="results/OUT.md and results/OUT.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fallback = fallback_backend()
    run = measure(lambda: {s: shape_paths(*s, fallback) for s in SHAPES}, args.passes, args.rounds)
    built, best, peaks, peak = run.built, run.best, run.peaks, run.peak
    load_before, load_after, others = run.load_before, run.load_after, run.others
    rows, lines = path_table(run, [*PATHS, THRESHOLD], PATHS)
    pack_lines = ["| shape (M, N, K) | pack_rows(A), C, us | pack_signs(A), PyTorch, us | pack_rows + pack_weight(W) "
                  "us (once per weight) | lowbit binary + pack_rows(A), x fp32 torch.mm |", "|---|---:|---:|---:|---:|"]
    for shape, (_, costs) in built.items():
        with_pack = best[shape, "fp32 torch.mm"] / (best[shape, "lowbit binary"] + costs["pack_rows(A)"])
        pack_lines.append(f"| {'x'.join(map(str, shape))} | {costs['pack_rows(A)']:.1f} | {costs['pack_signs(A)']:.0f} | "
                          f"{costs['pack_weight(W)']:.0f} | {with_pack:.1f}x |")
    target_lines = ["| shape (M, N, K) | lowbit binary x torch.mm (target >= 30) | x onednn (target >= 12) | "
                    "fallback x torch.mm (target >= 5) | ceiling at 100% of the binary peak: x torch.mm, x onednn |",
                    "|---|---:|---:|---:|---:|"]
    for shape in SHAPES:
        mm, dnn, binary = best[shape, "fp32 torch.mm"], best[shape, "fp32 onednn"], best[shape, "lowbit binary"]
        fb = best.get((shape, "lowbit binary fallback"))
        ops_us = 2 * shape[0] * shape[1] * shape[2] / peak / 1e3 if peak else float("nan")  # us at the peak
        mark = lambda ok: "" if ok else " (missed)"  # noqa: E731
        fb_text = f"{mm / fb:.1f}x{mark(mm / fb >= 5)}" if fb else "n/a"
        target_lines.append(f"| {'x'.join(map(str, shape))} | {mm / binary:.1f}x{mark(mm / binary >= 30)} | "
                            f"{dnn / binary:.1f}x{mark(dnn / binary >= 12)} | {fb_text} | "
                            f"{mm / ops_us:.0f}x, {dnn / ops_us:.0f}x |")
    quiet = others < 0.1
    body = "\n".join([
        f"- CPU (lscpu): {cpu_description()}",
        f"- other processes used {others:.2f} of the {os.cpu_count()} CPUs on average during the run (/proc/stat "
        f"minus this process): {'quiet' if quiet else 'NOT quiet; best-of-rounds times are the least disturbed'}; "
        f"load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}, after: "
        f"{', '.join(f'{v:.2f}' for v in load_after)} (it trails by minutes)",
        f"- 1 thread (torch.set_num_threads(1), binary_gemm threads=1); {args.passes} passes x {args.rounds} "
        "interleaved rounds per shape, each path called twice per round (cold, then warm); best and median over "
        "all rounds",
        f"- lowbit binary backend: `{kernels.backend()}`; fallback: `{fallback}`",
        f"- binary peak of one core (register-only vpxorq + vpopcntq + vpaddq loop, 8 independent chains; best of "
        f"{len(peaks)} runs before, between the passes and after): {peak:.0f} GOP/s (median run "
        f"{sorted(peaks)[len(peaks) // 2]:.0f})",
        "", *lines, "",
        "Targets of issue 17 (warm best times), and the ratio a kernel running at this core's measured binary peak "
        "would reach against the fp32 paths of this run (no kernel can exceed it):", "", *target_lines, "",
        "Packing costs (best of 10, outside the timed binary paths: a binary layer's input comes packed from the "
        "previous layer's threshold epilogue; the first layer's would be packed once, in C):", "", *pack_lines,
    ])
    write_result(args.out, body)
    atomic_write_text(RESULTS / f"{args.out}.json", "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")


if __name__ == "__main__":
    main()

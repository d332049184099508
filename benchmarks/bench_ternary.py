"""Exact optimal ternarization of 10^6 weights: wall time (target < 0.5 s), per tensor and per channel.

Also checks, on the same run, that the solution's residual is no worse than the
best of 200 thresholds of the classic TWN heuristic (delta = c * mean|w|).
"""

from __future__ import annotations

import time

import torch

from _common import write_result
from lowbit.functional import ternarize
from lowbit.granularity import PerChannel, PerKernel, PerTensor, rows


def best_time(fn, repeats: int = 7) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), sorted(times)[len(times) // 2]


def main() -> None:
    torch.manual_seed(0)
    lines = []
    cases = [
        ("10^6 weights, per tensor", torch.randn(1_000_000), PerTensor()),
        ("256x3906 (10^6), per channel", torch.randn(256, 3906), PerChannel(0)),
        ("conv 128x96x9x9 (~10^6), per kernel", torch.randn(128, 96, 9, 9), PerKernel()),
    ]
    for label, w, g in cases:
        best, median = best_time(lambda: ternarize(w, g))
        res = ternarize(w, g)
        err = float((w - res.dequantize()).square().sum())
        # TWN heuristic: threshold c * mean|w| per row, scale = mean of kept |w|; best c of a grid
        r = rows(w, g)
        twn = float("inf")
        for c in torch.linspace(0.3, 1.5, 200):
            keep = r.abs() > c * r.abs().mean(dim=1, keepdim=True)
            alpha = (r.abs() * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
            twn = min(twn, float((r - alpha * torch.sign(r) * keep).square().sum()))
        lines.append(f"| {label} | {best * 1000:.1f} | {median * 1000:.1f} | {'yes' if best < 0.5 else 'NO'} | {err:.1f} | {twn:.1f} |")
    body = ("| case | best ms | median ms | < 500 ms | residual (exact) | best TWN-grid residual |\n"
            "|---|---:|---:|---|---:|---:|\n" + "\n".join(lines))
    write_result("ternary", body)


if __name__ == "__main__":
    main()

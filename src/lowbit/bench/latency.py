"""Interleaved latency measurement.

The machines lowbit targets are shared and noisy: timing path A for a while and
then path B lets a neighbour's burst land on one of them. :func:`interleaved`
runs every path once per round, in a rotating order, and reports each path's
best (min) and median time over the rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    best_us: float
    median_us: float
    rounds: int


def interleaved(paths: dict[str, Callable[[], object]], rounds: int = 20, warmup: int = 5) -> dict[str, Timing]:
    """Time each zero-argument callable; every round calls each path once, order rotating."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(paths)
    for _ in range(warmup):
        for name in names:
            paths[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            paths[name]()
            samples[name].append(time.perf_counter() - start)
    return {n: Timing(1e6 * min(s), 1e6 * statistics.median(s), rounds) for n, s in samples.items()}


@contextmanager
def torch_threads(n: int):
    """Temporarily set PyTorch's intra-op thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def ort_session(path, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads, exact on every CPU (:mod:`lowbit.export.ort`)."""
    from lowbit.export.ort import session

    return session(path, threads)


__all__ = ["Timing", "interleaved", "ort_session", "torch_threads"]

""""Will it be faster?": the CPU's relevant instructions, and predicted cost next to measured latency.

Counting operations predicts nothing about speed unless the machine has instructions for the
narrow arithmetic: int8 GEMMs need VNNI (``vpdpbusd``, AVX-512 or AVX) to beat fp32 by the
expected 4x, binary layers need a vector popcount (AVX-512 VPOPCNTDQ). :func:`warnings_for`
names what is missing for the paths a model uses.
"""

from __future__ import annotations

from pathlib import Path

NEEDS = {"int8": ("avx512_vnni", "avx_vnni"), "binary": ("avx512_vpopcntdq",)}


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags (empty when unknown, e.g. not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def warnings_for(paths: list[str], flags: set[str] | None = None) -> list[str]:
    """One line per path (``"int8"``, ``"binary"``) whose instructions this CPU lacks."""
    flags = cpu_flags() if flags is None else flags
    out = []
    for p in paths:
        need = NEEDS.get(p, ())
        if need and not flags & set(need):
            out.append(f"this CPU lacks {' or '.join(need)}: the {p} path will not reach its predicted speed-up")
    return out


def predicted_vs_measured(bops_float: int, bops_q: int, float_us: float, q_us: float) -> dict[str, float]:
    """Bit-operation ratio (what the cost model promises) next to the measured latency ratio."""
    return {"bops_ratio": bops_float / bops_q if bops_q else float("nan"),
            "measured_speedup": float_us / q_us if q_us else float("nan")}


__all__ = ["NEEDS", "cpu_flags", "predicted_vs_measured", "warnings_for"]

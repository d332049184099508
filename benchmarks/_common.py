"""Shared helpers for benchmark scripts: machine description and result files."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """The CPU (model name and its widest vector extension: the C kernels differ between AVX2 and AVX-512), the
    cores, torch, threads and Python."""
    cpu, isa = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not isa:
                flags = set(line.split(":", 1)[1].split())
                isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "")
    except OSError:
        pass
    import torch

    cpu = f"{cpu} ({isa})" if isa else cpu
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}"


def write_result(name: str, body: str) -> Path:
    """Write ``results/<name>.md`` with the command that produced it and the machine."""
    RESULTS.mkdir(exist_ok=True)
    script = os.path.relpath(os.path.abspath(sys.argv[0]), Path(__file__).parent.parent)
    command = ".venv/bin/python " + " ".join([script] + sys.argv[1:]) + "   (from the repository root)"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"# {name}\n\n- command: `{command}`\n- machine: {machine()}\n- date: {stamp}\n\n{body.rstrip()}\n"
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(text)
    return path


def merge_rows(name: str, rows: list[dict], key: tuple[str, ...]) -> Path:
    """Merge ``rows`` into ``results/<name>`` (a JSON list): a row replaces the stored row with the same values
    of ``key``, others are kept, so benchmarks that share a file (``lowprec_training.json``) can run apart.
    Written to a temporary name and renamed."""
    import json

    path = RESULTS / name
    old = json.loads(path.read_text()) if path.exists() else []
    fresh = {tuple(r[k] for k in key) for r in rows}
    merged = [r for r in old if tuple(r.get(k) for k in key) not in fresh] + list(rows)
    RESULTS.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(path)
    return path

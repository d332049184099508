"""Shared helpers for benchmark scripts: machine description and result files."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

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

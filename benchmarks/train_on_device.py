"""Train several benchmark models at once on an accelerator within a wall-clock budget; evaluate them later here.

The accuracy benchmarks train on the CPU by default, which takes minutes per epoch at the widths the targets
need. When a GPU is at hand, this driver runs the same training code there (``--device cuda``) for several
jobs in parallel, each a command line of a benchmark script that accepts ``--device`` and ``--save-state DIR``
(``bench_binary_accuracy.py`` lines add ``--train-only``, so that nothing is evaluated there); the trained weights land in ``DIR`` as safetensors, and the benchmark's ``--from-state DIR``
evaluates them on the CPU (integer / bitwise models, exactly as a CPU-trained run is evaluated).

Every job trains ``--epochs`` epochs (``{E}`` in a job line); jobs still running after ``--budget`` seconds are
stopped and reported. The states and logs are packed into one gzipped tar (``--tar``), the form in which a
remote machine hands files back.

    python3 benchmarks/train_on_device.py --epochs 15 --budget 300 --out /tmp/states --tar /tmp/states.tgz \\
        --job "benchmarks/bench_binary_accuracy.py --models cnn --configs w1a2 --epochs-cnn {E} --train-only"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(job: str, epochs: int, out: Path, log: Path, device: str, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, *shlex.split(job.replace("{E}", str(epochs))), "--device", device, "--save-state", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", action="append", required=True, help="a benchmark command line; {E} = epochs")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--budget", type=float, required=True, help="seconds after which running jobs are stopped")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    p.add_argument("--tar", required=True, help="the .tgz that receives the states and logs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="folder for the states; its tar and the logs go beside it")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    logs = out.parent / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    start, epochs = time.perf_counter(), args.epochs
    procs = [(job, launch(job, epochs, out, logs / f"job{i}.log", args.device, args.threads)) for i, job in enumerate(args.job)]
    deadline = time.perf_counter() + args.budget
    while any(pr.poll() is None for _, pr in procs) and time.perf_counter() < deadline:
        time.sleep(2.0)
    summary = []
    for i, (job, pr) in enumerate(procs):
        if pr.poll() is None:
            pr.kill()
        summary.append({"job": job.replace("{E}", str(epochs)), "rc": pr.wait(), "log": f"job{i}.log"})
    (logs / "summary.json").write_text(json.dumps({"epochs": epochs, "jobs": summary,
                                                   "seconds": time.perf_counter() - start}, indent=2))
    with tarfile.open(args.tar, "w:gz") as tar:
        tar.add(out, arcname="states")
        tar.add(logs, arcname="logs")
    print(f"{args.tar}: {Path(args.tar).stat().st_size / 2**20:.1f} MiB", flush=True)
    for s in summary:
        print(s, flush=True)
        print((logs / s["log"]).read_text()[-300:], flush=True)


if __name__ == "__main__":
    main()

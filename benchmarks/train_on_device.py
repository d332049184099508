"""Train several benchmark models at once on an accelerator within a wall-clock budget; evaluate them later here.

The accuracy benchmarks train on the CPU by default, which takes minutes per epoch at the widths the targets
need. When a GPU is at hand, this driver runs the same training code there (``--device cuda``) for several
jobs in parallel, each a command line of a benchmark script that accepts ``--device``, ``--save-state DIR`` and
``--train-only``; the trained weights land in ``DIR`` as safetensors, and the benchmark's ``--from-state DIR``
evaluates them on the CPU (integer / bitwise models, exactly as a CPU-trained run is evaluated).

A probe first times one short run (``--probe``, a job line with a small ``--train-limit``), then each job's
epochs are chosen so that all jobs, running side by side, end inside ``--budget`` seconds: ``{E}`` in a job line
is replaced by that number, capped by ``--max-epochs``. Jobs still running at the budget are stopped.

    python3 benchmarks/train_on_device.py --budget 300 --out /tmp/states \\
        --job "benchmarks/bench_binary_accuracy.py --models cnn --configs w1a2 --channels 64 --epochs-cnn {E}"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(job: str, epochs: int, out: Path, log: Path, device: str) -> subprocess.Popen:
    cmd = [sys.executable, *shlex.split(job.replace("{E}", str(epochs))), "--device", device,
           "--save-state", str(out), "--train-only"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", action="append", required=True, help="a benchmark command line; {E} = epochs")
    p.add_argument("--probe", required=True, help="a short job line ({E} = 1) timed first")
    p.add_argument("--probe-fraction", type=float, required=True,
                   help="the probe's share of one epoch of a job (its --train-limit / the training set's size)")
    p.add_argument("--budget", type=float, required=True, help="seconds for all jobs together, after the probe")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--slowdown", type=float, default=2.0, help="assumed slow-down of jobs that share the GPU")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="folder for the states; its tar and the logs go beside it")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out.parent / "logs"
    logs.mkdir(exist_ok=True)

    start = time.perf_counter()
    probe = launch(args.probe, 1, out.parent / "probe", logs / "probe.log", args.device)
    probe.wait()
    probe_s = time.perf_counter() - start
    print(f"probe: rc {probe.returncode}, {probe_s:.1f} s", flush=True)
    print((logs / "probe.log").read_text()[-3000:], flush=True)
    if probe.returncode != 0:
        raise SystemExit("the probe failed: see its log above")
    epoch_s = max(probe_s - 8.0, 1.0) / args.probe_fraction * args.slowdown  # about 8 s of start-up per process
    epochs = max(1, min(args.max_epochs, int(args.budget / epoch_s)))
    print(f"about {epoch_s:.1f} s per epoch side by side: {epochs} epochs per job", flush=True)

    procs = [(job, launch(job, epochs, out, logs / f"job{i}.log", args.device)) for i, job in enumerate(args.job)]
    deadline = time.perf_counter() + args.budget * 1.3
    while any(pr.poll() is None for _, pr in procs) and time.perf_counter() < deadline:
        time.sleep(2.0)
    summary = []
    for i, (job, pr) in enumerate(procs):
        if pr.poll() is None:
            pr.kill()
        summary.append({"job": job.replace("{E}", str(epochs)), "rc": pr.wait(), "log": f"job{i}.log"})
    (out.parent / "summary.json").write_text(json.dumps({"epochs": epochs, "probe_s": probe_s, "jobs": summary,
                                                         "seconds": time.perf_counter() - start}, indent=2))
    with tarfile.open(out.parent / "states.tar", "w") as tar:
        tar.add(out, arcname="states")
        tar.add(logs, arcname="logs")
    for s in summary:
        print(s, flush=True)
        print((logs / s["log"]).read_text()[-600:], flush=True)


if __name__ == "__main__":
    main()

"""torchrun: two real processes over gloo. The result must equal the one-process run (weights, and the
loss reported in result.json); bad arguments must stop every rank with one clear line."""

from __future__ import annotations

import json
import socket
import sys

import torch

from bad_inputs_cases import CliResult, Wrong, case, cli, run_cmd, workdir

CAT = "torchrun"
QAT = ["qat", "--model", "mlp", "--weight-bits", "4", "--act-bits", "4", "--epochs", "1", "--train-size", "256",
       "--no-augment"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args) -> CliResult:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}",
           "-m", "lowbit.cli.main", *map(str, args)]
    return run_cmd(cmd, timeout=400)


def _errors(r: CliResult) -> CliResult:
    """torchrun adds its own failure report (a ChildFailedError traceback, by design); what counts is the
    workers' output before it: each rank one ``lowbit: error:`` line, no Python traceback, and exit code 2
    named as the root cause. Then the result is reduced to that line with exit status 2."""
    import re
    lines = r.err.splitlines()
    cut = next((i for i, ln in enumerate(lines) if re.match(r"^[WEI]\d{4} ", ln) or "torch/distributed/elastic" in ln
                or ln.startswith("Traceback")), len(lines))
    workers = [ln for ln in lines[:cut] if ln.strip()]
    rest = "\n".join(lines[cut:])
    worker_tb = "Traceback" in "\n".join(lines[:cut]) or "File \"" in rest.split("ChildFailedError")[-1]
    ours = sorted({ln for ln in workers if ln.startswith("lowbit: error:")})
    if r.rc > 0 and len(ours) == 1 and len(workers) == len([w for w in workers if w in ours]) and not worker_tb \
            and re.search(r"exitcode\s*:\s*2 ", rest):
        return CliResult(2, r.out, ours[0] + "\n", note=f"torchrun exit {r.rc}, each rank exit 2 with this line")
    return r


@case(CAT, "valid", timeout=500)
def torchrun_two_processes_equal_one_process():
    r = torchrun(*QAT, "--batch-size", "64", "--out", workdir() / "ddp")
    if r.rc != 0:
        return r
    one = cli(*QAT, "--batch-size", "64", "--out", workdir() / "one")
    if one.rc != 0:
        raise RuntimeError(one.err[-300:])
    from lowbit.training import load_checkpoint
    a = load_checkpoint(workdir() / "ddp" / "checkpoint.pt")["model"]
    b = load_checkpoint(workdir() / "one" / "checkpoint.pt")["model"]
    for k in b:
        if not torch.allclose(a[k].float(), b[k].float(), atol=1e-4, rtol=1e-4):
            raise Wrong(f"two-process weights differ from one process ({k})")
    ra = json.loads((workdir() / "ddp" / "result.json").read_text())
    rb = json.loads((workdir() / "one" / "result.json").read_text())
    la, lb = ra["history"][-1]["loss"], rb["history"][-1]["loss"]
    if abs(la - lb) > 1e-4 * max(1.0, abs(lb)):
        raise Wrong(f"result.json loss under torchrun {la:.6f} differs from one process {lb:.6f} (rank 0's share only?)")
    if abs(ra["history"][-1]["accuracy"] - rb["history"][-1]["accuracy"]) > 1e-9:
        raise Wrong("result.json training accuracy under torchrun differs from one process")
    if ra["accuracy"] != rb["accuracy"]:
        raise Wrong("test accuracy under torchrun differs from one process")
    r.note = "weights, loss and accuracy equal to one process"
    return r


@case(CAT, "valid", timeout=400)
def torchrun_batch_size_not_divisible_by_world():
    """Valid since the one training loop weights each rank's share (32 + 31 images give one process's gradient;
    tests/test_train.py compares it with one process)."""
    r = torchrun(*QAT, "--batch-size", "63", "--out", workdir() / "odd")
    if r.rc != 0:
        raise RuntimeError(r.err[-300:])
    return "trained on uneven shares"


@case(CAT, "error", timeout=400)
def torchrun_resume_without_checkpoint():
    return _errors(torchrun(*QAT, "--batch-size", "64", "--resume", "--out", workdir() / "none"))


@case(CAT, "error", timeout=400)
def torchrun_weight_bits_1():
    return _errors(torchrun(*QAT, "--batch-size", "64", "--weight-bits", "1", "--out", workdir() / "wb"))

"""A catalogue of bad inputs and faults, run against lowbit as a new user would meet them.

    python benchmarks/bad_inputs.py [--category C] [--case SUBSTR] [--jobs N] [--out DIR] [--list]

Over 300 cases in seventeen categories (configs, data, models, files, crafted integer-model
files, integer-model inputs, zoo weights, ONNX export, training and resume, torchrun,
every CLI command, binary networks, low-precision training, spiking networks, delta networks, the user's own
models, the bitwise method families); each is classified as

* ``clear_error``: a bad input refused with a lowbit error (``LowbitError``; on the CLI: exit
  status 2 and exactly one non-empty stderr line, no traceback), or with the lowbit warning
  the issue asks for where the input is a silent no-op (see ``bad_inputs_cases/__init__.py``);
* ``valid``: a legitimate input that worked, its result checked against a reference;
* ``unclear``: refused, but with another exception, a traceback or several stderr lines
  (or a legitimate input refused);
* ``silent_wrong``: a bad input accepted, or a result that looks valid and is wrong;
* ``crash``: the process died by a signal, exited 134/139, or hung past the case's timeout.

Each case runs in its own process, forked from a runner that has loaded the data and built
the shared models once, so that a crash (heap corruption included: each case ends with a
malloc consistency pass before it reports) is attributed to the case that caused it and no
case sees another's changes. CLI, killed-training and torchrun cases start real processes.

Writes ``DIR/bad_inputs.md`` and ``DIR/bad_inputs.json`` (default ``benchmarks/results``;
with ``--category``/``--case`` only when ``--out`` is given) atomically. Exit status 1 when
any case is ``crash``, ``silent_wrong`` or ``unclear``, so that it can gate.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))  # this checkout's lowbit, not an installed one
sys.path.insert(0, str(HERE))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bad_inputs_cases import Case, CliResult, Wrong, load_all  # noqa: E402 - after the sys.path entry above

OUTCOMES = ("clear_error", "valid", "unclear", "silent_wrong", "crash")
BAD = ("crash", "silent_wrong", "unclear")


def _first_line(text: str, limit: int = 240) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    s = lines[0] if lines else ""
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ----------------------------------------------------------------------------- classification


def _lowbit_warning(w: warnings.WarningMessage) -> bool:
    src = str(REPO / "src" / "lowbit")
    return issubclass(w.category, UserWarning) and (str(w.message).startswith("lowbit")
                                                    or str(w.filename).startswith(src))


def classify_cli(case: Case, r: CliResult) -> tuple[str, str]:
    """Outcome of a case that ran a command (see the module docstring)."""
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    tb = "Traceback" in r.err
    if r.rc < 0 or r.rc in (134, 139):
        sig = f"signal {signal.Signals(-r.rc).name}" if r.rc < 0 else f"exit {r.rc}"
        return "crash", f"{sig}; {_first_line(lines[-1] if lines else r.out)}"
    one_line = r.rc == 2 and len(lines) == 1 and not tb
    note = f" ({r.note})" if r.note else ""
    if case.expect in ("error", "any") and one_line:
        if case.misleading and re.search(case.misleading, lines[0]):
            return "unclear", "misleading: " + lines[0] + note
        return "clear_error", lines[0] + note
    if r.rc == 0:
        if case.expect in ("valid", "any"):
            return "valid", (r.note or "exit 0")
        if case.warn:
            hits = [ln for ln in (r.out + "\n" + r.err).splitlines()
                    if ln.lower().startswith(("warning", "lowbit: warning")) and re.search(case.warn, ln)]
            if hits:
                return "clear_error", "warning: " + _first_line(hits[0]).removeprefix("warning: ")
        return "silent_wrong", "exit 0: " + (r.note or _first_line(r.out.splitlines()[-1] if r.out.strip() else ""))
    what = "traceback" if tb else f"{len(lines)} stderr lines"
    last = _first_line(lines[-1]) if lines else _first_line(r.out)
    first = f" (first line: {_first_line(lines[0], 80)})" if len(lines) > 1 and not tb else ""
    return "unclear", f"exit {r.rc}, {what}: {last}{first}{note}"


def classify(case: Case) -> tuple[str, str]:
    """Run ``case`` in this process and classify what happened."""
    from lowbit.errors import LowbitError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = case.fn()
        except Wrong as exc:
            return "silent_wrong", _first_line(exc)
        except LowbitError as exc:
            if case.expect == "valid":
                return "unclear", f"valid input refused: {type(exc).__name__}: {_first_line(exc)}"
            if case.misleading and re.search(case.misleading, str(exc)):
                return "unclear", f"misleading: {type(exc).__name__}: {_first_line(exc)}"
            return "clear_error", f"{type(exc).__name__}: {_first_line(exc)}"
        except Exception as exc:  # noqa: BLE001 - every other exception is the finding
            frames = traceback.extract_tb(exc.__traceback__)
            where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)
                          if "/lowbit/" in f.filename), "")
            return "unclear", f"{type(exc).__name__}: {_first_line(exc) or '(no message)'}" + (
                f" [{where}]" if where else "")
    if isinstance(value, CliResult):
        return classify_cli(case, value)
    shown = _first_line(value) if value is not None else ""  # not ``if value``: a tensor has no truth value
    if case.expect in ("valid", "any"):
        return "valid", shown or "ok"
    ours = [w for w in caught if _lowbit_warning(w)]
    if case.warn:
        hits = [w for w in ours if re.search(case.warn, str(w.message))]
        if hits:
            return "clear_error", "warning: " + _first_line(hits[0].message)
    note = f"; warnings: {_first_line(ours[0].message)}" if ours else ""
    return "silent_wrong", (shown or "accepted without error") + note


# ----------------------------------------------------------------------------- one process per case


def _malloc_check() -> None:
    """Make glibc walk and reuse its heap so that corruption left by the case aborts here, in its process."""
    gc.collect()
    try:
        import torch

        for n in (1 << 10, 1 << 16, 1 << 20, 3 << 20):
            torch.empty(n, dtype=torch.uint8).fill_(1)
        blobs = [bytearray(n) for n in (24, 100, 1000, 5000, 70000, 300000) for _ in range(20)]
        del blobs
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _child(case: Case, result_path: Path, case_dir: Path) -> None:
    os.setpgid(0, 0)  # its own group: a timeout kills the case and the processes it started
    case_dir.mkdir(parents=True, exist_ok=True)
    os.environ["BAD_INPUTS_CASE_DIR"] = str(case_dir)
    log = os.open(case_dir / "output.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(case_dir)
    try:
        outcome, message = classify(case)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and friends from a case
        outcome, message = "unclear", f"{type(exc).__name__}: {_first_line(exc)}"
    _malloc_check()
    result_path.write_text(json.dumps({"outcome": outcome, "message": message}))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_all(cases: list[Case], jobs: int, work: Path, verbose: bool = True) -> list[dict]:
    """Fork one process per case, at most ``jobs`` at a time; returns one record per case, in order."""
    pending = list(enumerate(cases))
    running: dict[int, tuple[int, Case, float]] = {}
    results: dict[int, dict] = {}
    t0 = time.time()

    def record(i: int, case: Case, outcome: str, message: str) -> None:
        results[i] = {"case": case.name, "category": case.category, "outcome": outcome, "message": message}
        if verbose:
            mark = "  " if outcome in ("clear_error", "valid") else "!!"
            print(f"{mark} [{len(results):3}/{len(cases)} {time.time() - t0:5.0f}s] {case.category:14} "
                  f"{case.name:48} {outcome:12} {message[:110]}", flush=True)

    while pending or running:
        while pending and len(running) < jobs:
            i, case = pending.pop(0)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    _child(case, work / f"{i}.json", work / f"case{i}")
                finally:
                    os._exit(70)
            running[pid] = (i, case, time.time())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.time()
            for p, (i, case, start) in list(running.items()):
                if now - start > case.timeout:
                    try:
                        os.killpg(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    os.waitpid(p, 0)
                    del running[p]
                    record(i, case, "crash", f"hung: killed after {case.timeout:.0f} s")
            time.sleep(0.02)
            continue
        if pid not in running:
            continue
        i, case, _ = running.pop(pid)
        try:  # reap what the case left running in its group (e.g. after a failed kill test)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        path = work / f"{i}.json"
        if os.WIFSIGNALED(status):
            log = _tail(work / f"case{i}" / "output.log")
            record(i, case, "crash", f"signal {signal.Signals(os.WTERMSIG(status)).name}" + (f"; {log}" if log else ""))
        elif os.WEXITSTATUS(status) != 0 or not path.exists():
            log = _tail(work / f"case{i}" / "output.log")
            record(i, case, "crash", f"exit {os.WEXITSTATUS(status)}" + (f"; {log}" if log else ""))
        else:
            r = json.loads(path.read_text())
            record(i, case, r["outcome"], r["message"])
    return [results[i] for i in range(len(cases))]


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return _first_line(lines[-1]) if lines else ""


# ----------------------------------------------------------------------------- reports


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except (OSError, subprocess.SubprocessError):
        model = "?"
    return f"{model}, {os.cpu_count()} cores"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_md(records: list[dict], command: str, seconds: float, jobs: int) -> str:
    cats = list(dict.fromkeys(r["category"] for r in records))
    lines = ["# Bad inputs and faults: what lowbit does with them", "",
             f"Command: `{command}`  ", f"Machine: {_machine()}; {jobs} case(s) at a time; {seconds:.0f} s in all  ",
             f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; commit {_commit()}", "",
             "Outcomes: `clear_error` (a bad input refused with a lowbit error; on the CLI exit status 2 and one "
             "stderr line; or the lowbit warning the issue asks for where the input is a silent no-op), "
             "`valid` (a legitimate input, result checked against a reference), `unclear` (another exception, a "
             "traceback or several stderr lines, or a legitimate input refused), `silent_wrong` (a bad input "
             "accepted, or a wrong result), `crash` (killed by a signal, exit 134/139, or hung). The rules are in "
             "`benchmarks/bad_inputs_cases/__init__.py`.", "",
             "| category | cases | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
    for cat in [*cats, None]:
        rows = [r for r in records if cat is None or r["category"] == cat]
        counts = [sum(r["outcome"] == o for r in rows) for o in OUTCOMES]
        name = "**all**" if cat is None else cat
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(str(c) for c in counts) + " |")
    lines += ["", "## Every case", "", "| # | case | category | outcome | message |", "|---:|---|---|---|---|"]
    for i, r in enumerate(records, 1):
        lines.append(f"| {i} | {r['case']} | {r['category']} | {r['outcome']} | {_cell(r['message'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--category", action="append", help="run only this category (repeatable)")
    ap.add_argument("--case", action="append", help="run only cases whose name contains this (repeatable)")
    ap.add_argument("--jobs", type=int, default=2, help="cases at a time (default 2)")
    ap.add_argument("--out", default=None, help="folder for bad_inputs.md/.json (default benchmarks/results)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    cases = load_all()
    if args.category:
        cases = [c for c in cases if c.category in args.category]
    if args.case:
        cases = [c for c in cases if any(s in c.name for s in args.case)]
    if args.list:
        for c in cases:
            print(f"{c.category:16} {c.expect:6} {c.name}")
        print(f"{len(cases)} cases")
        return 0
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2
    shared = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    os.environ["BAD_INPUTS_SHARED"] = str(shared / "shared")
    work = shared / "cases"
    work.mkdir()
    start = time.time()
    try:
        import torch

        torch.set_num_threads(1)
        from bad_inputs_cases import fixtures

        fixtures.prewarm()
        gc.collect()
        gc.freeze()  # the children's collections then skip the runner's objects (and their pages stay shared)
        records = run_all(cases, max(1, args.jobs), work)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    seconds = time.time() - start
    filtered = bool(args.category or args.case)
    out = Path(args.out) if args.out else (None if filtered else HERE / "results")
    command = "python benchmarks/bad_inputs.py" + ("" if argv is None and len(sys.argv) == 1
                                                   else " " + " ".join(sys.argv[1:] if argv is None else argv))
    if out is not None:
        _atomic_write(out / "bad_inputs.json", json.dumps(records, indent=1) + "\n")
        _atomic_write(out / "bad_inputs.md", render_md(records, command, seconds, args.jobs))
    counts = {o: sum(r["outcome"] == o for r in records) for o in OUTCOMES}
    print(f"\n{len(records)} cases in {seconds:.0f} s: " + ", ".join(f"{o} {n}" for o, n in counts.items()))
    if out is not None:
        print(f"wrote {out / 'bad_inputs.md'} and {out / 'bad_inputs.json'}")
    return 1 if any(counts[o] for o in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())

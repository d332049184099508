"""The bad-input catalogue's cases, one module per category, and what they share.

A case is a name, a category, what must happen (``expect``) and a function:

* ``expect="error"``: the input is bad and must be refused. In process, a raised
  :class:`lowbit.errors.LowbitError` is ``clear_error``; any other exception is
  ``unclear``, and so is a lowbit error whose message misleads (the case's ``misleading``
  regex, e.g. "call lowbit.ptq.prepare first" to a user who called ``quantize``); a normal return is ``silent_wrong``, except where the case names a
  warning (``warn=REGEX``: the issue asks for a warning, not an error, e.g. a rule
  that matches no layer): a ``UserWarning`` issued by lowbit whose text matches
  ``REGEX`` then makes it ``clear_error``.
  A CLI case returns a :class:`CliResult`: exit status 2 with exactly one non-empty
  stderr line and no ``Traceback`` is ``clear_error``; exit 0 is ``silent_wrong``
  (unless ``warn`` matches a ``warning:`` line of its output); anything else is
  ``unclear``.
* ``expect="valid"``: a legitimate input that must work. The function checks the
  result against a reference and raises :class:`Wrong` when it differs
  (``silent_wrong``); a refusal (any exception, or a non-zero exit) is ``unclear``.
* ``expect="any"``: both a clear refusal and a correct result are acceptable
  (``clear_error`` or ``valid``); a wrong result (:class:`Wrong`) is ``silent_wrong``.

A process that dies by a signal, or exits 134/139, or must be killed after the
case's timeout, is ``crash`` (the runner forks one process per case, so the crash
is the case's own).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


@dataclass
class Case:
    name: str
    category: str
    expect: str  # "error" | "valid" | "any"
    fn: Callable[[], object]
    warn: str | None = None  # regex: a lowbit warning matching it counts as the asked-for answer
    timeout: float = 120.0
    misleading: str | None = None  # regex: a lowbit error whose message matches it misleads (``unclear``)


REGISTRY: list[Case] = []
# Lowbit errors that name another problem than the input's (the item 8): e.g. "call prepare first"
# to a user who called quantize(), which does; per category, a case may give its own.
MISLEADING = {"models": r"call lowbit\.ptq\.prepare first|has seen no data"}
CATEGORIES = ("configs", "data", "models", "files", "crafted", "integer_inputs", "zoo", "onnx", "training",
              "torchrun", "cli", "binary", "lowprec", "snn", "delta", "user", "families")


class Wrong(Exception):
    """Raised by a case's check: the result looks valid but is wrong."""


def add(category: str, name: str, expect: str, fn: Callable[[], object], warn: str | None = None,
        timeout: float = 120.0, misleading: str | None = None) -> None:
    if expect not in ("error", "valid", "any"):
        raise ValueError(expect)
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "", name.replace(" ", "_"))
    if any(c.name == name for c in REGISTRY):
        raise ValueError(f"duplicate case name {name}")
    REGISTRY.append(Case(name, category, expect, fn, warn, timeout, misleading or MISLEADING.get(category)))


def case(category: str, expect: str, name: str | None = None, warn: str | None = None, timeout: float = 120.0,
         misleading: str | None = None):
    """Decorator form of :func:`add` (the name defaults to the function's)."""
    def deco(fn):
        add(category, name or fn.__name__, expect, fn, warn, timeout, misleading)
        return fn
    return deco


# ----------------------------------------------------------------------------- processes


@dataclass
class CliResult:
    rc: int
    out: str
    err: str
    note: str = ""  # a case's own remark (e.g. what it checked)
    extra: dict = field(default_factory=dict)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(SRC) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["OMP_NUM_THREADS"] = "1"
    e.pop("WORLD_SIZE", None)
    return e


def workdir() -> Path:
    """This case's own empty folder (the runner sets ``BAD_INPUTS_CASE_DIR`` in each case's process)."""
    p = Path(os.environ.get("BAD_INPUTS_CASE_DIR", "."))
    p.mkdir(parents=True, exist_ok=True)
    return p


def touch(name: str, content: bytes | str = b"x") -> Path:
    """A file called ``name`` in the case's folder, holding ``content``; returns its path."""
    p = workdir() / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


def cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> CliResult:
    """``python -m lowbit.cli.main ARGS`` in its own process, in the case's folder."""
    return run_cmd([sys.executable, "-m", "lowbit.cli.main", *map(str, args)], timeout, cwd)


def run_cmd(cmd: list[str], timeout: float = 300, cwd: Path | None = None) -> CliResult:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=cwd or workdir(), timeout=timeout,
                       check=False)
    return CliResult(p.returncode, p.stdout, p.stderr)


def load_all() -> list[Case]:
    """Import every category module (each registers its cases) and return the catalogue in order."""
    if not REGISTRY:
        import importlib

        for cat in CATEGORIES:  # each module registers its cases on import
            importlib.import_module(f"bad_inputs_cases.c_{cat}")
    return REGISTRY

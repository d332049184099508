"""Argument checks shared by the subcommands: refuse a bad value before any work starts.

The range types are ``argparse`` types, so a bad number is reported the argparse way (a usage
line and ``lowbit <command>: error: argument --x: ...``, exit status 2). The path checks run at
the start of a command and raise :class:`~lowbit.errors.ConfigError`, which ``lowbit`` prints on
one line with exit status 2: an output that cannot be written is reported before the hours of
training or evaluation that would end in writing it.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from lowbit.errors import ConfigError


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


def float_range(low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            left = "(" if low_open else "["
            allowed = f"in {left}{low}, {high}]" if high is not None else f"{'>' if low_open else '>='} {low}"
            raise argparse.ArgumentTypeError(f"must be a finite number {allowed}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def writable_dir(path: str | Path, option: str) -> Path:
    """Make the folder ``path`` (the command would make it anyway) and prove that a file can be written
    in it by creating and removing an empty temporary file: permission bits do not tell (root passes
    ``os.access`` on a read-only mount or in /proc)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p} is a file, not a folder: pass a folder for the outputs")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lowbit-probe.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{option} {p} cannot be written ({exc.strerror or type(exc).__name__}): "
                          "pass a writable folder") from None
    return p


def writable_file(path: str | Path, option: str) -> Path:
    """Check that ``path`` names a file lowbit may (over)write: not a folder, in a writable folder."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a folder: pass a file name such as {p / 'result.json'}")
    try:
        writable_dir(p.parent, option)
    except ConfigError:
        raise ConfigError(f"{option} {p}: its folder {p.parent} cannot be made or written; pass a writable "
                          "path") from None
    return p


def existing_file(path: str | Path, option: str, suffix: str | None = None) -> Path:
    """Check that ``path`` is an existing, readable file (with ``suffix``, when given)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{option} {p} does not exist")
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a folder, not a file")
    if suffix is not None and p.suffix.lower() != suffix:
        raise ConfigError(f"{option} {p} is not a {suffix} file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{option} {p} cannot be read (permission denied)")
    return p


def add_run_folder_flags(p, out: str) -> None:
    """A training command's ``--out`` (default ``./<out>``), ``--resume`` and ``--data-dir`` flags."""
    p.add_argument("--out", default=out, help=f"output folder (default ./{out})")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")


def data_dir(path: str | None, option: str = "--data-dir") -> None:
    """A given ``--data-dir`` must be an existing folder (the loaders then say which file is missing)."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{option} {p} does not exist: pass the folder that holds the Fashion-MNIST idx files")
    if not p.is_dir():
        raise ConfigError(f"{option} {p} is a file: pass the folder that holds the Fashion-MNIST idx files")


def at_most(value: int, limit: int, option: str, what: str) -> None:
    """``value`` of ``option`` must not exceed ``limit`` (the size of ``what``)."""
    if value > limit:
        raise ConfigError(f"{option} {value} is more than the {limit:,} images of {what}: pass at most {limit}")

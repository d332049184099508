"""Shared, read-only inputs of the cases: data, shipped models, their PTQ simulations and integer models,
saved model files. The runner builds the common ones once before it forks the cases (each case then has
its own copy-on-write view, so a case that changes one changes nobody else's)."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import torch


@functools.cache
def shared_dir() -> Path:
    root = Path(os.environ.get("BAD_INPUTS_SHARED") or tempfile.mkdtemp(prefix="bad_inputs_shared_"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@functools.cache
def train():
    from lowbit.data import fashion_mnist
    return fashion_mnist("train")


@functools.cache
def test():
    from lowbit.data import fashion_mnist
    return fashion_mnist("test")


def calib(n: int = 32) -> torch.Tensor:
    return train().x[:n]


def xs(n: int = 16) -> torch.Tensor:
    return test().x[:n].clone()


@functools.cache
def _float(name: str):
    from lowbit import zoo
    return zoo.pretrained(name)


def model(name: str):
    """A fresh copy of the shipped float model (eval mode)."""
    import copy
    return copy.deepcopy(_float(name))


@functools.cache
def sim(name: str):
    """The W8A8 PTQ simulation of a shipped model (32 calibration images)."""
    from lowbit.ptq import quantize
    return quantize(_float(name), [calib()])


@functools.cache
def integer(name: str):
    """The integer model of :func:`sim`."""
    from lowbit.integer import to_integer
    return to_integer(sim(name), (calib()[:2],))


@functools.cache
def saved(name: str) -> Path:
    """The integer model of ``name`` saved as safetensors (do not modify: copy it)."""
    from lowbit.integer import save_integer
    return save_integer(integer(name), shared_dir() / f"{name}.safetensors")


@functools.cache
def sim_out(name: str) -> torch.Tensor:
    with torch.no_grad():
        return sim(name)(xs())


def prewarm() -> None:
    """Build the common fixtures (in the runner, before forking)."""
    train(), test()
    for name in ("mlp", "cnn", "resnet"):
        saved(name), sim_out(name)
    integer("cnn")(xs(2))  # compiles / loads the C kernels once


def overwrite(p, at: float = 0.5, n: int = 200) -> None:
    """Overwrite ``n`` bytes of file ``p`` at fraction ``at`` of its length with random bytes."""
    import os

    b = bytearray(p.read_bytes())
    i = int(len(b) * at)
    b[i:i + n] = os.urandom(n)
    p.write_bytes(bytes(b))


def resave(edit):
    """A mutation that edits a checkpoint's content and re-signs it: the checksum holds, the content must still be
    checked."""
    def m(p):
        from lowbit.training import load_checkpoint, save_checkpoint
        s = load_checkpoint(p)
        edit(s)
        save_checkpoint(p, s)
    return m

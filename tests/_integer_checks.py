"""Checks shared by the integer-model tests."""

from __future__ import annotations

import torch

from lowbit.integer import Kernels


def check_exact(q, im, x: torch.Tensor) -> torch.Tensor:
    """The integer model ``im`` equals the simulation ``q`` on ``x`` bit for bit, in dtype too, on the compiled plan,
    the VNNI kernels and the PyTorch reference; returns the simulation's output."""
    with torch.no_grad():
        ys = q(x)
    for k in (Kernels.PLAN, Kernels.VNNI, Kernels.REFERENCE):
        yi = im.with_kernels(k)(x)
        assert yi.dtype == ys.dtype and torch.equal(yi, ys), k
    return ys

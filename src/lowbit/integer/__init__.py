"""Integer-only execution: int8 weights and activations, int32 accumulators, multiplier-and-shift requantization.

``to_integer`` and ``IntegerModel`` load lazily: :mod:`lowbit.functional.requant` is
imported by the simulation itself, which the lowering in turn imports.
"""

from __future__ import annotations

import importlib

_LAZY = {"to_integer": "lowbit.integer.lower", "IntegerModel": "lowbit.integer.model", "Input": "lowbit.integer.model",
         "save_integer": "lowbit.integer.io", "load_integer": "lowbit.integer.io",
         "Kernels": "lowbit.integer.backend"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lowbit.integer' has no attribute {name!r}")


__all__ = sorted(_LAZY)  # noqa: PLE0605 - the lazy names are the public API

"""lowbit: low-precision and event-driven neural networks on ordinary CPUs.

``import lowbit`` is light: it loads neither torch nor any optional package.
The public names below are imported on first use (PEP 562).

Formats, granularity and the spec that combines them with an observer::

    lowbit.IntFormat(4), lowbit.PowerOfTwo(4), lowbit.Ternary(), lowbit.Binary(), lowbit.Log2(4)
    lowbit.PerTensor(), lowbit.PerChannel(0), lowbit.PerGroup(32), lowbit.PerKernel()
    lowbit.QuantSpec(lowbit.IntFormat(8, signed=False), observer=lowbit.Percentile(99.99))

One call for post-training quantization::

    qmodel = lowbit.quantize(model, calibration_batches, lowbit.PTQConfig(weight=lowbit.QuantSpec(lowbit.Ternary(), lowbit.PerChannel(0))))

One training loop (zoo recipes, QAT, the method families)::

    history = lowbit.train(model, batches, lowbit.LoopConfig(epochs=3), optimizer=..., loss=...)

Subpackages: ``lowbit.functional`` (pure quantizer maths), ``lowbit.observers``,
``lowbit.ptq``, ``lowbit.training``, ``lowbit.nn``, ``lowbit.graph``, ``lowbit.diagnostics``,
``lowbit.data``, ``lowbit.zoo``, ``lowbit.cli``, ``lowbit.optim`` (SGD on
low-precision parameter storage, Kahan-compensated).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "IntFormat": "lowbit.formats", "PowerOfTwo": "lowbit.formats", "Ternary": "lowbit.formats",
    "Binary": "lowbit.formats", "Log2": "lowbit.formats", "DynamicFixedPoint": "lowbit.formats",
    "PerTensor": "lowbit.granularity", "PerChannel": "lowbit.granularity",
    "PerGroup": "lowbit.granularity", "PerKernel": "lowbit.granularity",
    "LowbitError": "lowbit.errors", "ConfigError": "lowbit.errors", "DataError": "lowbit.errors",
    "DatasetNotFoundError": "lowbit.errors", "CheckpointError": "lowbit.errors",
    "quantize_weights": "lowbit.weight_only", "WeightOnlyConfig": "lowbit.weight_only",
    "QuantSpec": "lowbit.spec", "MinMax": "lowbit.spec", "MovingAverage": "lowbit.spec",
    "Percentile": "lowbit.spec", "MSE": "lowbit.spec", "ChannelPercentile": "lowbit.spec",
    "quantize": "lowbit.ptq", "PTQConfig": "lowbit.ptq", "LayerRule": "lowbit.ptq",
    "train": "lowbit.training", "LoopConfig": "lowbit.training",
}
_SUBMODULES = {"functional", "observers", "data", "zoo", "cli", "formats", "granularity", "errors", "weight_only",
               "spec", "ptq", "nn", "graph", "diagnostics", "training", "optim"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"lowbit.{name}")
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_LAZY, *_SUBMODULES, "__version__"])


__all__ = sorted(_LAZY)  # noqa: PLE0605 - the lazy names are the public API

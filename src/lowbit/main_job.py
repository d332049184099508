"""The main job: shipped reference models, and what each lowbit method does to their accuracy.

``lowbit run`` loads the shipped zoo models, evaluates them on the Fashion-MNIST
test set in float and after each method of :func:`default_methods`, and prints
one table (methods x models). Later methods add rows here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from lowbit import zoo
from lowbit.data import Split, fashion_mnist
from lowbit.ptq import PTQConfig, quantize
from lowbit.formats import IntFormat, PowerOfTwo, Ternary
from lowbit.granularity import PerChannel
from lowbit.weight_only import WeightOnlyConfig, quantize_weights
from lowbit.zoo.recipes import evaluate


@dataclass(frozen=True)
class Method:
    """One row of the table: a label and a function from the float model to the model to evaluate."""

    label: str
    apply: Callable[[nn.Module], nn.Module]


def _weights(fmt, label: str) -> Method:
    return Method(label, lambda m: quantize_weights(m, WeightOnlyConfig(fmt, PerChannel(0))))


CALIBRATION_IMAGES = 32


def _ptq(config: PTQConfig, label: str, calibration: Split) -> Method:
    return Method(label, lambda m: quantize(m, [calibration.x], config))


def default_methods(calibration: Split | None = None, data_root=None) -> list[Method]:
    """The rows of the main table; PTQ rows calibrate on the first 32 training images."""
    calibration = calibration if calibration is not None else fashion_mnist("train", root=data_root).take(CALIBRATION_IMAGES)
    return [
        Method("float32", lambda m: m),
        _weights(IntFormat(8), "W8 per-channel (weights only)"),
        _weights(IntFormat(4), "W4 per-channel (weights only)"),
        _weights(IntFormat(2), "W2 per-channel (weights only)"),
        _weights(Ternary(), "ternary, exact per-channel (weights only)"),
        _weights(PowerOfTwo(4), "power-of-two 4-bit per-channel (weights only)"),
        _ptq(PTQConfig(), f"PTQ W8A8 per-channel, {CALIBRATION_IMAGES} calib images", calibration),
        _ptq(PTQConfig(weight_bits=4), f"PTQ W4A8 per-channel, {CALIBRATION_IMAGES} calib images", calibration),
        _ptq(PTQConfig(pow2_scales=True), "PTQ W8A8, power-of-two scales (shift-only)", calibration),
    ]


@dataclass(frozen=True)
class Table:
    models: list[str]
    rows: list[tuple[str, list[float]]]  # label, accuracy per model
    recorded: list[float]  # shipped accuracy per model
    seconds: float

    def render(self) -> str:
        width = max(len(label) for label, _ in self.rows) + 2
        head = "method".ljust(width) + "".join(f"{m:>10}" for m in self.models)
        lines = [head, "-" * len(head)]
        for label, accs in self.rows:
            lines.append(label.ljust(width) + "".join(f"{100 * a:>9.2f}%" for a in accs))
        lines.append("-" * len(head))
        lines.append("recorded".ljust(width) + "".join(f"{100 * a:>9.2f}%" for a in self.recorded))
        return "\n".join(lines)


def run(models: Sequence[str] = ("mlp", "cnn", "resnet"), test_set: Split | None = None,
        methods: Sequence[Method] | None = None, data_root=None) -> Table:
    """Evaluate every method on every model; returns the accuracy table."""
    start = time.perf_counter()
    test_set = test_set if test_set is not None else fashion_mnist("test", root=data_root)
    methods = list(methods) if methods is not None else default_methods(data_root=data_root)
    floats = {name: zoo.pretrained(name) for name in models}
    rows = [(m.label, [evaluate(m.apply(floats[name]), test_set) for name in models]) for m in methods]
    recorded = [zoo.shipped_accuracy(name) for name in models]
    return Table(list(models), rows, recorded, time.perf_counter() - start)

"""The main job: shipped reference models, and what each lowbit method does to their accuracy.

``lowbit run`` loads the shipped zoo models, evaluates them on the Fashion-MNIST
test set in float and after each method of :func:`default_methods`, and prints
one table (methods x models). Later methods add rows here. Ternary QAT has no shipped
weights (the job trains nothing): its rows are in ``benchmarks/bench_formats.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lowbit import zoo
from lowbit.bench.latency import interleaved, torch_threads
from lowbit.data import Split, fashion_mnist
from lowbit.formats import IntFormat, PowerOfTwo, Ternary
from lowbit.granularity import PerChannel
from lowbit.integer.lower import to_integer
from lowbit.ptq import PTQConfig, int_weight, quantize, with_pow2_scales
from lowbit.spec import QuantSpec
from lowbit.weight_only import WeightOnlyConfig, quantize_weights
from lowbit.zoo.qat_zoo import SHIP, pretrained_qat, weights_path
from lowbit.zoo.recipes import evaluate


@dataclass(frozen=True)
class Method:
    """One row of the table: a label and a function from the float model to the model to evaluate."""

    label: str
    apply: Callable[[nn.Module], nn.Module]
    only: str | None = None  # a row that exists for one model only (shipped QAT weights)


def _weights(fmt, label: str) -> Method:
    return Method(label, lambda m: quantize_weights(m, WeightOnlyConfig(QuantSpec(fmt, PerChannel(0)))))


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
        _ptq(PTQConfig(int_weight(4)), f"PTQ W4A8 per-channel, {CALIBRATION_IMAGES} calib images", calibration),
        _ptq(with_pow2_scales(PTQConfig()), "PTQ W8A8, power-of-two scales (shift-only)", calibration),
        Method("PTQ W-ternary (exact, per-channel) A8, integer-only model",
               lambda m: to_integer(quantize(m, [calibration.x], PTQConfig(QuantSpec(Ternary(), PerChannel(0)))),
                                    (calibration.x[:2],))),
        Method("PTQ W8A8 as integer-only model (int8 kernels)",
               lambda m: to_integer(quantize(m, [calibration.x], PTQConfig()), (calibration.x[:2],))),
        *[Method(f"QAT {label}, shipped weights, integer-only model",
                 lambda m, key=key: to_integer(pretrained_qat(key), (calibration.x[:2],)), only="resnet")
          for label, key in SHIP.items() if weights_path(key).exists()],
    ]


def measure_latency(models: Sequence[str], calibration: Split, test_set: Split, batches=(1, 64),
                    rounds: int = 20) -> tuple[Latency, ...]:
    """Float eager vs the W8A8 integer model, interleaved, 1 thread."""
    out = []
    for name in models:
        model = zoo.pretrained(name)
        im = to_integer(quantize(model, [calibration.x], PTQConfig()), (calibration.x[:2],))
        for b in batches:
            x = test_set.x[:b]
            with torch_threads(1), torch.no_grad():
                t = interleaved({"float": lambda: model(x), "int": lambda: im(x)}, rounds)
            out.append(Latency(name, b, t["float"].best_us, t["int"].best_us))
    return tuple(out)


@dataclass(frozen=True)
class Latency:
    """Measured latency (best of interleaved rounds, 1 thread) of float eager and the integer model."""

    model: str
    batch: int
    float_us: float
    integer_us: float


@dataclass(frozen=True)
class Table:
    models: list[str]
    rows: list[tuple[str, list[float]]]  # label, accuracy per model
    recorded: list[float]  # shipped accuracy per model
    seconds: float
    latency: tuple[Latency, ...] = ()

    def render(self) -> str:
        width = max(len(label) for label, _ in self.rows) + 2
        head = "method".ljust(width) + "".join(f"{m:>10}" for m in self.models)
        lines = [head, "-" * len(head)]
        for label, accs in self.rows:
            lines.append(label.ljust(width) + "".join(f"{100 * a:>9.2f}%" if a == a else f"{'-':>10}" for a in accs))
        lines.append("-" * len(head))
        lines.append("recorded".ljust(width) + "".join(f"{100 * a:>9.2f}%" for a in self.recorded))
        if self.latency:
            lines += ["", "latency, 1 thread, best of interleaved rounds (us)",
                      f"{'model':<8}{'batch':>6}{'float32 eager':>15}{'lowbit int8':>13}{'speed-up':>10}"]
            for r in self.latency:
                lines.append(f"{r.model:<8}{r.batch:>6}{r.float_us:>15.0f}{r.integer_us:>13.0f}"
                             f"{r.float_us / r.integer_us:>9.2f}x")
        return "\n".join(lines)


def run(models: Sequence[str] = ("mlp", "cnn", "resnet"), test_set: Split | None = None,
        methods: Sequence[Method] | None = None, data_root=None, latency: bool = True) -> Table:
    """Evaluate every method on every model, and time float vs integer; returns the table."""
    start = time.perf_counter()
    test_set = test_set if test_set is not None else fashion_mnist("test", root=data_root)
    methods = list(methods) if methods is not None else default_methods(data_root=data_root)
    floats = {name: zoo.pretrained(name) for name in models}
    rows = [(m.label, [evaluate(m.apply(floats[name]), test_set) if m.only in (None, name) else math.nan
                       for name in models]) for m in methods]
    recorded = [zoo.shipped_accuracy(name) for name in models]
    lat = ()
    if latency:
        lat = measure_latency(models, fashion_mnist("train", root=data_root).take(CALIBRATION_IMAGES), test_set)
    return Table(list(models), rows, recorded, time.perf_counter() - start, lat)


DELTA_THETAS = ((0.1, 0.1), (0.5, 0.3))


@dataclass(frozen=True)
class DeltaRow:
    """One threshold pair of the shipped recurrent model converted by ``lowbit.delta.to_delta``."""

    theta_x: float
    theta_h: float
    accuracy: float
    mac_reduction: float
    fetch_reduction: float


@dataclass(frozen=True)
class DeltaTable:
    model: str
    dense_accuracy: float
    recorded: float
    rows: tuple[DeltaRow, ...]
    n_test: int

    def render(self) -> str:
        lines = [f"delta GRU, JapaneseVowels (shipped weights, {self.model}, {self.n_test} test utterances)",
                 f"{'model':<36}{'accuracy':>10}{'MACs':>9}{'fetches':>10}",
                 "-" * 65,
                 f"{'dense nn.GRU':<36}{100 * self.dense_accuracy:>9.2f}%{'1.00x':>9}{'1.00x':>10}"]
        for r in self.rows:
            label = f"to_delta theta_x={r.theta_x:g} theta_h={r.theta_h:g}"
            lines.append(f"{label:<36}{100 * r.accuracy:>9.2f}%{r.mac_reduction:>8.2f}x{r.fetch_reduction:>9.2f}x")
        lines += ["-" * 65, f"{'recorded':<36}{100 * self.recorded:>9.2f}%",
                  "(MACs, fetches: reductions of the GRU's MACs and weight-column reads vs dense, batch 1;",
                  " the read-out is not counted)"]
        return "\n".join(lines)


def delta_rows(model_name: str = "vowels_gru", thetas=DELTA_THETAS) -> DeltaTable:
    """The shipped recurrent model, dense and converted to a delta network at each ``(theta_x, theta_h)``."""
    from lowbit.delta import sweep
    from lowbit.zoo import recurrent

    model = recurrent.pretrained(model_name)
    test = recurrent.eval_split(model_name)
    dense = recurrent.accuracy(model, test)
    points = sweep(model, thetas, lambda m: recurrent.accuracy(m, test))
    rows = tuple(DeltaRow(p.theta_x, p.theta_h, p.metric, p.cost.mac_reduction, p.cost.fetch_reduction)
                 for p in points)
    return DeltaTable(model_name, dense, recurrent.shipped_accuracy(model_name), rows, len(test))


@dataclass(frozen=True)
class BinaryRow:
    """One shipped W1A1 model: the integer/bitwise model's accuracy, file size and latency against fp32 eager."""

    key: str
    accuracy: float
    recorded: float
    identical: int  # test images whose integer outputs equal the converted simulation's, bit for bit
    bytes_fp32: int
    bytes_integer: int
    latency: tuple[tuple[int, float, float], ...]  # (batch, fp32 eager us, lowbit binary us)


@dataclass(frozen=True)
class BinaryTable:
    rows: tuple[BinaryRow, ...]
    n_test: int

    def render(self) -> str:
        lines = [f"binary networks, W1A1 (shipped weights; the integer/bitwise model on {self.n_test} Fashion-MNIST "
                 "test images; 1 thread, best of interleaved rounds)",
                 f"{'model':<18}{'accuracy':>10}{'recorded':>10}{'size':>10}{'batch':>7}{'fp32 us':>10}"
                 f"{'binary us':>11}{'speed-up':>10}",
                 "-" * 86]
        for r in self.rows:
            for i, (batch, f, b) in enumerate(r.latency):
                head = (f"{r.key:<18}{100 * r.accuracy:>9.2f}%{100 * r.recorded:>9.2f}%"
                        f"{r.bytes_fp32 / r.bytes_integer:>9.1f}x") if i == 0 else " " * 48
                lines.append(f"{head}{batch:>7}{f:>10.0f}{b:>11.0f}{f / b:>9.2f}x")
        lines += ["-" * 86, "(size: fp32 parameters / the integer model's file, binary weights 1 bit each; hidden layers "
                  "run XNOR-popcount, first and last layer 8-bit)"]
        lines += [f"{r.key}: integer outputs identical to the simulation's on {r.identical}/{self.n_test} test images"
                  for r in self.rows]
        return "\n".join(lines)


def binary_rows(test_set: Split | None = None, data_root=None, rounds: int = 30) -> BinaryTable:
    """The shipped W1A1 models (:mod:`lowbit.zoo.binary_zoo`) as integer/bitwise models: accuracy, size, latency."""
    import tempfile
    from pathlib import Path

    from lowbit.integer.io import save_integer
    from lowbit.zoo.binary import BinaryCNN, BinaryMLP
    from lowbit.zoo.binary_zoo import CONFIGS, pretrained_binary, shipped_binary_accuracy, weights_path

    test_set = test_set if test_set is not None else fashion_mnist("test", root=data_root)
    rows = []
    for key, kind in CONFIGS.items():
        if not weights_path(key).exists():
            continue
        model = pretrained_binary(key)
        im = to_integer(model, (test_set.x[:1],))
        correct = identical = 0
        with torch.no_grad():
            for i in range(0, len(test_set), 500):
                x, y = test_set.x[i:i + 500], test_set.y[i:i + 500]
                out = im(x)
                correct += int((out.argmax(1) == y).sum())
                identical += int((out == model(x)).all(dim=1).sum())
        float_net = (BinaryCNN(channels=model.get_submodule("features.0").weight.shape[0]) if kind == "cnn"
                     else BinaryMLP()).eval()
        with tempfile.TemporaryDirectory() as tmp:
            size = save_integer(im, Path(tmp) / "m.safetensors").stat().st_size
        lat = []
        with torch_threads(1), torch.no_grad():
            for batch in (1, 64):
                x = test_set.x[:batch].contiguous()
                t = interleaved({"fp32": lambda: float_net(x), "binary": lambda: im(x)}, rounds=rounds, warmup=5)
                lat.append((batch, t["fp32"].best_us, t["binary"].best_us))
        rows.append(BinaryRow(key, correct / len(test_set), shipped_binary_accuracy(key), identical,
                              4 * sum(p.numel() for p in float_net.parameters()), size, tuple(lat)))
    return BinaryTable(tuple(rows), len(test_set))

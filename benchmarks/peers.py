"""Peer post-training quantizers for side-by-side PTQ benchmarks (a module, not a script).

Each function takes a float model in eval mode, example inputs and a list of
calibration batches, and returns ``(quantized_callable, seconds)``:

* ``quantized_callable(x)`` maps a float input batch (any batch size) to float
  logits, as a CPU ``torch.Tensor``;
* ``seconds`` is the wall time from the float model to that ready-to-run
  callable (what each docstring lists), never the float model's evaluation.

Both peers quantize to the same scheme: int8 weights, symmetric per output
channel; uint8 activations, affine per tensor, ranges set on the calibration
batches. They differ in the activation observer (torchao: histogram/MSE-style
search; onnxruntime: min/max) and in which ops get quantized.

>>> from peers import ort_quantize_static, torchao_pt2e    # run from benchmarks/
>>> qmodel, seconds = torchao_pt2e(model, (x[:2],), [x[i:i + 32] for i in range(0, 64, 32)])
>>> logits = qmodel(x_test)

Both need the ``bench`` extra: ``pip install 'lowbit[bench]'``.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import ConfigError, DatasetNotFoundError

QuantizedCallable = Callable[[torch.Tensor], torch.Tensor]
INSTALL_HINT = "pip install 'lowbit[bench]'"
ONNX_OPSET = 17
ORT_THREADS = 2


def _require(module: str):
    """Import an optional peer package, or raise an error naming the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"this peer needs the optional package '{module.split('.')[0]}': {INSTALL_HINT}"
        ) from exc


def _check_inputs(model: nn.Module, example_inputs: tuple, calib_batches: list[torch.Tensor]) -> None:
    if model.training:
        raise ConfigError("the float model is in training mode; call model.eval() before PTQ")
    if not isinstance(example_inputs, tuple) or not example_inputs:
        raise ConfigError(f"example_inputs must be a non-empty tuple of tensors, got {type(example_inputs).__name__}")
    if not calib_batches:
        raise ConfigError("calib_batches is empty; pass at least one calibration batch")


def _batch_dims(example_inputs: tuple) -> tuple:
    """``dynamic_shapes`` for export: dimension 0 of every tensor input is dynamic."""
    batch = torch.export.Dim("batch")
    return tuple({0: batch} if isinstance(x, torch.Tensor) else None for x in example_inputs)


def _float_weight_layers(graph_module: torch.fx.GraphModule) -> tuple[int, int]:
    """``(left_float, total)`` conv/linear nodes of a converted PT2E graph (float weight = not quantized)."""
    layers = {torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}
    total = left = 0
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target in layers:
            total += 1
            weight = node.args[1]
            left += not (isinstance(weight, torch.fx.Node) and "dequantize" in str(weight.target))
    return left, total


def torchao_pt2e(
    model: nn.Module, example_inputs: tuple, calib_batches: list[torch.Tensor]
) -> tuple[QuantizedCallable, float]:
    """torchao PT2E static PTQ with ``X86InductorQuantizer`` and its default config.

    Timed: ``torch.export.export`` (batch dimension dynamic) + ``prepare_pt2e``
    (folds BatchNorm into conv, inserts observers) + one forward per
    calibration batch + ``convert_pt2e``. The result runs eagerly as a Q/DQ
    graph (fp32 kernels on dequantized int8 values: int8 numerics, fp32 speed);
    real int8 kernels need ``torch.compile`` with
    ``torch._inductor.config.freezing = True``. ``example_inputs`` should have a
    batch of at least 2, or export specialises the batch size.

    ``X86InductorQuantizer`` matches stock module types only: it silently
    skips ``nn.Conv2d`` subclasses with their own ``forward`` and rejects a
    module called several times. A ``UserWarning`` says how many conv/linear
    layers were left in float (for EfficientNet-Lite0 pass
    ``lowbit.zoo.efficientnet.with_plain_convs(model)``).
    """
    _check_inputs(model, example_inputs, calib_batches)
    pt2e = _require("torchao.quantization.pt2e.quantize_pt2e")
    x86 = _require("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")

    start = time.perf_counter()
    exported = torch.export.export(model, example_inputs, dynamic_shapes=_batch_dims(example_inputs))
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = pt2e.prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for batch in calib_batches:
            prepared(batch)
    converted = pt2e.convert_pt2e(prepared)
    seconds = time.perf_counter() - start
    left, total = _float_weight_layers(converted)
    if left:
        warnings.warn(
            f"torchao X86InductorQuantizer left {left} of {total} conv/linear layers in float "
            "(it only matches stock nn.Conv2d/nn.Linear modules); the peer result is not full W8A8",
            stacklevel=2,
        )

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return converted(x)

    return run, seconds


def _onnx_export(model: nn.Module, example_inputs: tuple, path: Path) -> tuple[list[str], str]:
    """Export to ONNX (TorchScript exporter, opset 17, dynamic batch); returns input/output names."""
    names = [f"input{i}" for i in range(len(example_inputs))]
    axes = {name: {0: "batch"} for name in names} | {"logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            model, example_inputs, str(path), opset_version=ONNX_OPSET, input_names=names,
            output_names=["logits"], dynamic_axes=axes, do_constant_folding=True, dynamo=False,
        )
    return names, "logits"


def _session_options(threads: int = ORT_THREADS):
    """CPU session options: ``threads`` intra-op threads (spinning left on), errors-only log, and
    onnxruntime's exact uint8-weight kernels on x86 CPUs without VNNI, as lowbit's sessions
    (:mod:`lowbit.export.ort`): both int8 models are timed computing exactly what they describe."""
    from lowbit.export.ort import session_options

    return session_options(threads, log_severity=3)  # (the same exact u8u8 fallback as lowbit's sessions)


def _reader(ort_quant, names: list[str], calib_batches: list[torch.Tensor]):
    """A ``CalibrationDataReader`` that feeds each calibration batch once (single-input models)."""
    if len(names) != 1:
        raise ConfigError(f"ort_quantize_static supports one model input, got {len(names)}")

    class BatchReader(ort_quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter([{names[0]: b.detach().cpu().float().numpy()} for b in calib_batches])

        def get_next(self):
            return next(self._feeds, None)

    return BatchReader()


def ort_quantize_static(
    model: nn.Module,
    example_inputs: tuple,
    calib_batches: list[torch.Tensor],
    per_channel: bool = True,
    preprocess: bool = True,
    threads: int = ORT_THREADS,
) -> tuple[QuantizedCallable, float]:
    """onnxruntime ``quantize_static``: QDQ format, int8 weights, uint8 activations, MinMax.

    Weights are QInt8 symmetric, per output channel when ``per_channel`` (else
    per tensor); activations QUInt8 affine per tensor from the min/max over all
    calibration batches. Timed: ONNX export (TorchScript exporter, opset 17,
    dynamic batch; eval-mode export folds BatchNorm into Conv) + when
    ``preprocess`` onnxruntime's recommended ``quant_pre_process`` (shape
    inference and graph optimisation) + ``quantize_static`` (which runs the
    calibration) + creating the ``InferenceSession`` (CPUExecutionProvider,
    2 intra-op threads) on the quantized model. The files live in a temporary
    directory removed before returning. onnxruntime's own log is set to errors
    only while this runs (it warns once per folded Clip bound), then back to
    its default (warnings).
    """
    _check_inputs(model, example_inputs, calib_batches)
    ort = _require("onnxruntime")
    ort_quant = _require("onnxruntime.quantization")
    _require("onnx")

    start = time.perf_counter()
    ort.set_default_logger_severity(3)
    try:
        with tempfile.TemporaryDirectory(prefix="lowbit-ort-") as tmp:
            float_path, quant_path = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            names, output = _onnx_export(model, example_inputs, float_path)
            if preprocess:
                ready_path = Path(tmp) / "float-pre.onnx"
                ort_quant.quant_pre_process(str(float_path), str(ready_path))
                float_path = ready_path
            ort_quant.quantize_static(
                str(float_path), str(quant_path), _reader(ort_quant, names, calib_batches),
                quant_format=ort_quant.QuantFormat.QDQ, per_channel=per_channel,
                activation_type=ort_quant.QuantType.QUInt8, weight_type=ort_quant.QuantType.QInt8,
                calibrate_method=ort_quant.CalibrationMethod.MinMax,
            )
            session = ort.InferenceSession(str(quant_path), _session_options(threads),
                                           providers=["CPUExecutionProvider"])
    finally:
        ort.set_default_logger_severity(2)
    seconds = time.perf_counter() - start

    def run(x: torch.Tensor) -> torch.Tensor:
        feed = {names[0]: x.detach().cpu().float().numpy()}
        return torch.from_numpy(session.run([output], feed)[0])

    return run, seconds


__all__ = ["QuantizedCallable", "ort_quantize_static", "torchao_pt2e"]


def ort_float(model: nn.Module, example_inputs: tuple, threads: int = ORT_THREADS) -> QuantizedCallable:
    """The float model exported to ONNX and run by onnxruntime (often the fastest fp32 CPU path)."""
    ort = _require("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="lowbit-ort-") as tmp:
        path = Path(tmp) / "float.onnx"
        names, output = _onnx_export(model, example_inputs, path)
        session = ort.InferenceSession(str(path), _session_options(threads), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([output], {names[0]: x.numpy()})[0])

    return run

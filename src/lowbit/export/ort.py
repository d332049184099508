"""onnxruntime sessions that compute lowbit's exported QDQ models exactly on every CPU.

onnxruntime multiplies uint8 activations by int8 weights (``QLinearConv``,
``QGemm``, ``MatMulInteger``) with ``vpmaddubsw`` on x86 CPUs without VNNI
(AVX2, AVX-512 before Cascade Lake, AMD before Zen 4): each pair of products
``x[k] w[k] + x[k+1] w[k+1]`` is saturated to int16, which loses any pair
beyond ``+-32767`` (``255 * 127 * 2 = 64770``). On such a CPU a QDQ model can
lose accuracy for no visible reason: about 20% of the codes of a 3x3
convolution with full-range int8 weights, and 0.9 points of the shipped CNN's
test accuracy. onnxruntime's session option ``session.x64quantprecision = 1``
makes it use uint8 weights (``u8u8`` kernels, exact) for every layer whose
weights leave ``[-64, 63]``, on exactly those CPUs; CPUs with VNNI and ARM
keep their fast kernels. :func:`session_options` sets it; use it (or set the
option yourself) to run an exported model.
"""

from __future__ import annotations

from pathlib import Path

from lowbit.errors import ConfigError

EXACT_CONFIG = {"session.x64quantprecision": "1"}  # u8u8 where u8s8 would saturate (x86 without VNNI)


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError("onnxruntime is not installed: pip install onnxruntime") from exc
    return ort


def session_options(threads: int | None = None, log_severity: int = 2):
    """``onnxruntime.SessionOptions`` with :data:`EXACT_CONFIG`, full graph optimisation and ``threads`` threads."""
    ort = _import_ort()
    so = ort.SessionOptions()
    for key, value in EXACT_CONFIG.items():
        so.add_session_config_entry(key, value)
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = log_severity
    return so


def session(model, threads: int | None = None, optimized_path: str | Path | None = None):
    """A CPU ``InferenceSession`` of ``model`` (a path, bytes or an ``onnx.ModelProto``) with :func:`session_options`."""
    ort = _import_ort()
    so = session_options(threads)
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    if isinstance(data, Path):
        data = str(data)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


__all__ = ["EXACT_CONFIG", "session", "session_options"]

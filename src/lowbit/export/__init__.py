"""Export integer models to other runtimes' formats (:mod:`lowbit.export.onnx_qdq`: QDQ ONNX)."""

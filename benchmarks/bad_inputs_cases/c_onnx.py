"""ONNX export: bad opsets, bad input shapes, bad paths and models; a valid export checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import torch

from bad_inputs_cases import Wrong, add, case, fixtures, touch, workdir

CAT = "onnx"


def _export(model="cnn", shape=(1, 1, 28, 28), opset=17, path=None):
    from lowbit.export.onnx_qdq import export_onnx
    im = fixtures.integer(model) if isinstance(model, str) else model
    p = export_onnx(im, path or workdir() / "m.onnx", shape, opset=opset)
    return f"wrote {p}"


for v in (99, 0, -1, 12, "17", 17.5, None, True):
    add(CAT, f"opset_{v}", "error", lambda v=v: _export(opset=v))
for tag, shape in (("3_channels", (1, 3, 28, 28)), ("14x14", (1, 1, 14, 14)), ("rank_2", (28, 28)), ("empty", ()),
                   ("zero_size", (1, 1, 0, 0)), ("negative", (1, 1, -28, 28)), ("floats", (1.0, 1.0, 28.0, 28.0)),
                   ("string", "1x1x28x28")):
    add(CAT, f"input_shape_{tag}", "error", lambda s=shape: _export(shape=s))
add(CAT, "input_shape_3_channels_resnet", "error", lambda: _export("resnet", shape=(1, 3, 28, 28)))
add(CAT, "input_shape_27x27_mlp", "error", lambda: _export("mlp", shape=(1, 1, 27, 27)))
add(CAT, "path_is_a_directory", "error", lambda: _export(path=workdir()))
add(CAT, "path_below_a_file", "error", lambda: _export(path=touch("f") / "m.onnx"))
add(CAT, "model_is_float", "error", lambda: _export(model=fixtures.model("cnn")))
add(CAT, "model_is_simulation", "error", lambda: _export(model=fixtures.sim("cnn")))


def _ort_equal(model: str, opset: int = 17, im=None) -> str:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "exported (onnxruntime not installed: outputs not compared)"
    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session
    im = im or fixtures.integer(model)
    p = export_onnx(im, workdir() / f"{model}.onnx", (1, 1, 28, 28), opset=opset)
    sess = session(p)
    x = fixtures.xs(64)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = im(x).numpy()
    agree = float((out.argmax(1) == ref.argmax(1)).mean())
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    if agree < 0.98 or err > 0.05:
        raise Wrong(f"onnxruntime output differs: argmax agreement {agree:.2f}, max rel diff {err:.3f}")
    return f"onnxruntime agrees (argmax {agree:.2f}, max rel diff {err:.4f})"


for m in ("mlp", "cnn", "resnet"):
    add(CAT, f"valid_export_{m}_ort", "valid", lambda m=m: _ort_equal(m))


@case(CAT, "valid")
def valid_export_w4_opset21_ort():
    from lowbit.ptq import int_weight
    from lowbit.integer import to_integer
    from lowbit.ptq import PTQConfig, quantize
    q = quantize(fixtures.model("cnn"), [fixtures.calib()], PTQConfig(int_weight(4)))
    return _ort_equal("cnn_w4", 21, to_integer(q, (fixtures.calib(2),)))


@case(CAT, "error")
def export_crafted_model_bad_padding():
    """A model with a negative padding (from a crafted file) must not be exported."""
    import json

    from lowbit.integer import load_integer
    from lowbit.utils.tensorfile import load_tensors, save_tensors
    t, md = load_tensors(fixtures.saved("cnn"))
    meta = json.loads(md["lowbit"])
    next(n for n in meta["nodes"] if n["kind"] == "conv2d")["attrs"]["padding"] = [-3, -3]
    p = save_tensors(workdir() / "bad.safetensors", t, {"lowbit": json.dumps(meta)})
    return _export(model=load_integer(p))

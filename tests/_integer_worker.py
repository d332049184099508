"""A child process that runs risky integer-model calls for tests/test_safety_integer.py.

A memory error in a C kernel can kill the process that made the call, or corrupt its heap so that it dies
later. The tests therefore send such calls here, one JSON request per line on stdin, and read one JSON answer
per line (prefixed with ``@@``) on stdout; when this process dies, the test that asked fails with its exit
status and the end of its stderr, and the next request starts a fresh worker.

Requests (``op``):
  ``call``: run a model (``model`` cnn/resnet/mlp; ``variant`` memory, loaded or legacy: a format-2 file without
            checksum and input shape) on an input of ``shape``/``dtype`` (``fill`` rand, nan, inf, images;
            ``plan`` false: op by op) -> outcome ok (with ``equal_memory``: the in-memory model gives the same
            output), clear_error (a LowbitError) or unclear (any other exception);
  ``load``: load a (mutated) model file and run it -> clear_error (a CheckpointError at load, a LowbitError when
            run), harmless (the original model's outputs), valid (other outputs, equal to the PyTorch-reference
            ops' of the loaded model), silent_wrong, unclear;
  ``exec``: run Python ``code`` (the models are in ``MODELS``) -> ok, or the exception's kind and message.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

from lowbit.integer.backend import Kernels
from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.errors import CheckpointError, LowbitError
from lowbit.integer import to_integer
from lowbit.integer.io import load_integer, save_integer
from lowbit.ptq import PTQConfig, quantize
from lowbit.utils.tensorfile import load_tensors, save_tensors

NAMES = ("cnn", "resnet", "mlp")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int8": torch.int8,
          "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}


def legacy_copy(path: Path, out: Path) -> Path:
    """The same model as a format-2 file: no checksum, no recorded input shape."""
    tensors, meta = load_tensors(path)
    lowbit = json.loads(meta["lowbit"])
    lowbit["version"] = 2
    del lowbit["input_shape"], lowbit["input_dtype"]
    return save_tensors(out, tensors, {"lowbit": json.dumps(lowbit)})


def build(folder: Path) -> tuple[dict, dict, torch.Tensor]:
    torch.manual_seed(0)
    calib = fashion_mnist("train").take(32).x
    models, paths = {}, {}
    for name in NAMES:
        im = to_integer(quantize(zoo.pretrained(name), [calib], PTQConfig()), (calib[:2],))
        path = save_integer(im, folder / f"{name}.safetensors")
        legacy = legacy_copy(path, folder / f"{name}-v2.safetensors")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models[name] = {"memory": im, "loaded": load_integer(path), "legacy": load_integer(legacy)}
        paths[name] = str(path)
    images = fashion_mnist("test").take(16).x
    return models, paths, images


def make_input(shape: list[int], dtype: str, fill: str, images: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape) + len(shape))
    dt = DTYPES[dtype]
    if fill == "images":
        return images[: shape[0]].to(dt)
    if dt.is_floating_point:
        x = torch.rand(shape, generator=g, dtype=torch.float32).to(dt)
        if fill in ("nan", "inf") and x.numel():
            x.view(-1)[x.numel() // 2] = float(fill)
        return x
    if dt == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(0, 100, shape, generator=g).to(dt)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes, dtypes and values, NaN equal to NaN."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def reference(im, x: torch.Tensor) -> torch.Tensor:
    """The output through the PyTorch reference of every layer (no plan, no C GEMM or epilogue)."""
    return im.with_kernels(Kernels.REFERENCE)(x)


def failure(exc: BaseException, clear: type = LowbitError) -> dict:
    kind = "clear_error" if isinstance(exc, clear) else "unclear"
    return {"outcome": kind, "type": type(exc).__name__, "message": str(exc),
            "trace": "" if kind == "clear_error" else traceback.format_exc(limit=6)}


def do_call(req: dict, models: dict, images: torch.Tensor) -> dict:
    im = models[req["model"]][req["variant"]]
    x = make_input(req["shape"], req["dtype"], req.get("fill", "rand"), images)
    if req.get("layout") == "transposed" and x.ndim >= 2:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if not req.get("plan", True):
        im = im.with_kernels(Kernels.VNNI)
    try:
        y = im(x)
    except Exception as exc:  # noqa: BLE001 - the outcome is reported, not raised
        return failure(exc)
    try:
        want = models[req["model"]]["memory"](x.contiguous())
        equal = same(y, want)
    except LowbitError:
        equal = None
    return {"outcome": "ok", "out_shape": list(y.shape), "equal_memory": equal}


def do_load(req: dict, models: dict, images: torch.Tensor) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = load_integer(req["path"])
    except Exception as exc:  # noqa: BLE001
        return failure(exc, CheckpointError)
    original = models[req["model"]]["memory"]
    try:
        if im.input_shape in (None, original.input_shape):
            x = images[:8]
        else:
            x = torch.rand((4, *im.input_shape), generator=torch.Generator().manual_seed(0)).to(im.input_dtype)
        y = im(x)
        if x.shape == images[:8].shape and same(y, original(x)):
            return {"outcome": "harmless", "message": ""}
        ref = reference(im, x)
    except Exception as exc:  # noqa: BLE001
        return failure(exc)
    return {"outcome": "valid" if same(y, ref) else "silent_wrong", "message": f"output {tuple(y.shape)}"}


def do_exec(req: dict, models: dict, images: torch.Tensor) -> dict:
    scope = {"torch": torch, "MODELS": models, "IMAGES": images}
    try:
        exec(req["code"], scope)  # noqa: S102 - test code sent by the test process
    except Exception as exc:  # noqa: BLE001
        return failure(exc, (LowbitError, ValueError))
    return {"outcome": "ok", "result": repr(scope.get("RESULT"))}


def main() -> None:
    """Arguments: the folder for the model files (a temporary one if none), ``--bare`` for no models."""
    args = [a for a in sys.argv[1:] if a != "--bare"]
    if args:
        serve(Path(args[0]))
        return
    with tempfile.TemporaryDirectory(prefix="lowbit-worker-") as folder:
        serve(Path(folder))


def serve(folder: Path) -> None:
    bare = "--bare" in sys.argv[1:]  # no models: for the test of the harness itself
    models, paths, images = ({}, {}, None) if bare else build(folder)
    out = sys.stdout
    out.write("@@" + json.dumps({"ready": True, "paths": paths}) + "\n")
    out.flush()
    handlers = {"call": do_call, "load": do_load, "exec": do_exec}
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "exit":
            break
        answer = handlers[req["op"]](req, models, images)
        out.write("@@" + json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

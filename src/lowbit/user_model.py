"""The user's own model and data for the CLI: a Python factory, a weights file, a saved torch.export
program, and arrays of calibration/test samples.

Models (``--model``):

* ``path/to/file.py:make_model``: the file is imported (it is the user's own code: it runs) and
  ``make_model()`` must return an ``nn.Module``; ``--weights`` then loads a state dict from
  ``.safetensors``, ``.npz`` (``allow_pickle=False``) or ``.pt``/``.pth`` (``torch.load(weights_only=True)``):
  loading weights never runs pickled code;
* ``path/to/program.pt2``: a program saved by ``torch.export.save``, run as its module;
* ``path/to/folder`` holding ``config.json``: a Hugging Face ``transformers`` model saved by
  ``save_pretrained`` (:mod:`lowbit.hf`).

Data (``--calib-data``, ``--test-data``): a ``.npy`` file of samples (first axis: samples), a ``.npz``
file with ``x`` (and optionally labels ``y``; any other arrays are keyword inputs of ``forward``,
batched alike), or a folder of such files, concatenated in name order; a folder of images (directly, or
in one subfolder per class for labels; :mod:`lowbit.data.image_folder`); or ``path/to/file.py:make_data``,
a function returning a tensor of samples, a dict of them (``x``, optional ``y`` and keyword inputs, as in
an ``.npz``) or a list of such batches (concatenated). Labels are never guessed from a position: a tuple
``(x, y)`` is refused (return ``{"x": x, "y": y}``).
"""

from __future__ import annotations

import importlib.util
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.errors import ConfigError, DataError

WEIGHT_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth")
DATA_SUFFIXES = (".npy", ".npz")


def is_factory(spec: str) -> bool:
    """``FILE.py:NAME``: a function in a Python file."""
    return ":" in spec and spec.rsplit(":", 1)[0].endswith(".py")


def is_user_model(spec: str) -> bool:
    """A factory ``FILE.py:NAME``, a ``.pt2`` program or a Hugging Face model folder, as opposed to a zoo name."""
    from lowbit.hf import is_hf_folder

    return spec.endswith(".pt2") or is_factory(spec) or is_hf_folder(spec)


def call_factory(spec: str, option: str = "--model", returns: str = "the nn.Module") -> object:
    """``FILE.py:NAME`` -> ``NAME()`` from that file (the user's own code: it runs)."""
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"{option} {spec}: no file {path}; pass FILE.py:FUNCTION with a function that returns "
                          f"{returns}")
    module_spec = importlib.util.spec_from_file_location(f"lowbit_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{option} {spec}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: any error of theirs, named with its place
        raise ConfigError(f"{option} {spec}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(n for n in vars(module) if callable(vars(module)[n]) and not n.startswith("_"))
        raise ConfigError(f"{option} {spec}: {path} has no function {name!r} (callables there: "
                          f"{', '.join(found[:10]) or 'none'})")
    try:
        return factory()
    except Exception as exc:  # noqa: BLE001 - the user's function: its error, named with its place
        raise ConfigError(f"{option} {spec}: {name}() failed: {type(exc).__name__}: {exc}") from None


def load_factory(spec: str) -> nn.Module:
    """``FILE.py:NAME`` -> ``NAME()`` from that file, which must be an ``nn.Module``."""
    name = spec.rpartition(":")[2]
    model = call_factory(spec)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec}: {name}() returned a value of type {type(model).__name__}, not a "
                          "torch.nn.Module")
    return model


def _unreadable(option: str, path: Path, what: str, exc: BaseException) -> ConfigError:
    """A file that is not what its name says (truncated, corrupt, another format), as one clear error."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return ConfigError(f"{option} {path}: cannot be read as {what} ({type(exc).__name__}: {first}); is the file "
                       "complete and of that kind?")


_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError("--weights .safetensors needs the safetensors package: pip install safetensors "
                              "(or save the weights as .npz or .pt)") from None
        try:
            return load_file(str(path))
        except (SafetensorError, *_READ_ERRORS) as exc:
            raise _unreadable("--weights", path, "safetensors", exc) from None
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {k: torch.from_numpy(np.array(arrays[k])) for k in arrays.files}
        except _READ_ERRORS as exc:
            raise _unreadable("--weights", path, "an .npz archive of arrays", exc) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a file that is not a plain state dict
        raise ConfigError(f"--weights {path}: not a plain state dict torch.load can read without running code "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); save it with "
                          "torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--weights {path}: holds a {type(state).__name__}, not a state dict of tensors; save "
                          "model.state_dict()")
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict into ``model`` (strict: every key must match)."""
    path = Path(path)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ConfigError(f"--weights {path}: unknown kind; use one of {', '.join(WEIGHT_SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"--weights {path}: no such file")
    state = _state_dict(path)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"missing {', '.join(missing[:5])}" if missing else "",
                 f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                 f"wrong shape {', '.join(f'{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})' for k in wrong[:3])}"
                 if wrong else ""]
        raise ConfigError(f"--weights {path} does not fit the model: {'; '.join(p for p in parts if p)}")
    model.load_state_dict(state)
    return model


def model_name(spec: str) -> str:
    """A file name for the user's model: ``my_make_model`` for ``path/my.py:make_model``, the stem of a ``.pt2``
    program or the name of a model folder."""
    path, _, function = spec.rpartition(":") if is_factory(spec) else (spec, "", "")
    return Path(path).stem + (f"_{function}" if function else "")


def load_model(spec: str, weights: str | None = None) -> nn.Module:
    """The user's model from ``--model`` (and ``--weights``), in eval mode."""
    from lowbit.hf import is_hf_folder, load_hf

    if is_hf_folder(spec):
        if weights is not None:
            raise ConfigError("--weights does not apply to a Hugging Face model folder: its weights are inside it")
        return load_hf(spec)
    if spec.endswith(".pt2"):
        if weights is not None:
            raise ConfigError("--weights does not apply to a .pt2 program: its weights are inside it")
        if not Path(spec).is_file():
            raise ConfigError(f"--model {spec}: no such file")
        from lowbit.graph.export_lift import lift_program

        program = _load_program(spec)
        return _dynamic_batch(spec, lift_program(program)).eval()
    model = load_factory(spec)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def _load_program(spec: str):
    """``torch.export.load(spec)``; a file that is not one is a ConfigError (torch's own logged traceback on the
    way, for a zip archive that is not a program, is kept off the user's terminal)."""
    import logging

    if not zipfile.is_zipfile(spec):
        raise ConfigError(f"--model {spec}: not a program saved by torch.export.save (not a zip archive)")
    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        return torch.export.load(spec)
    except Exception as exc:  # noqa: BLE001 - a file export did not write
        raise ConfigError(f"--model {spec}: not a program saved by torch.export.save ({type(exc).__name__})") from None
    finally:
        log.setLevel(level)


def _dynamic_batch(spec: str, gm: nn.Module) -> nn.Module:
    """Refuse a program exported with a fixed batch: lowbit calibrates and compares in batches of other sizes."""
    from lowbit.graph.export_lift import fixed_sizes

    fixed = [(name, sizes[0]) for name, sizes in fixed_sizes(gm) if sizes and sizes[0] is not None]
    if fixed:
        name, batch = fixed[0]
        raise ConfigError(f"--model {spec}: the program was exported with a fixed batch of {batch} (input {name}); "
                          "lowbit runs batches of other sizes: export it again with "
                          f"dynamic_shapes={{'{name}': {{0: torch.export.Dim('batch')}}}}")
    return gm


@dataclass(frozen=True)
class Samples:
    """Samples read from arrays: positional input ``x``, optional labels ``y``, keyword inputs ``extra``."""

    x: torch.Tensor
    y: torch.Tensor | None
    extra: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, size: int, limit: int | None = None, first: str = "x") -> list:
        """Calibration batches of ``size`` samples (of the first ``limit``): tensors, or, when there are keyword
        inputs, dicts that pass ``x`` as ``forward``'s first parameter ``first`` (:func:`first_input`)."""
        n = len(self) if limit is None else min(limit, len(self))
        if not self.extra:
            return [self.x[i:i + size] for i in range(0, n, size)]
        return [{first: self.x[i:i + size], **{k: v[i:i + size] for k, v in self.extra.items()}}
                for i in range(0, n, size)]


def first_input(model: nn.Module) -> str:
    """The name of ``forward``'s first positional parameter (``x`` when it has none or cannot be read)."""
    from lowbit.calibration import arity_of

    positional = arity_of(model).positional
    return positional[0] if positional else "x"


def _read(path: Path, option: str) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays.files:
                raise DataError(f"{path}: an .npz of samples needs an array 'x' (inputs; optional 'y' labels and "
                                f"keyword inputs), it has {', '.join(arrays.files) or 'nothing'}")
            return {k: np.array(arrays[k]) for k in arrays.files}
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise DataError(str(_unreadable(option, path, f"{path.suffix} samples", exc))) from None


def _factory_arrays(spec: str, option: str) -> dict[str, np.ndarray]:
    """The arrays of a data factory's result: a tensor or array, a dict with ``x``, or a list of either."""
    data = call_factory(spec, option, "samples: a tensor, a dict with 'x' (and 'y'), or a list of them")
    batches = data if isinstance(data, list) else [data]
    parts = []
    for b in batches:
        if isinstance(b, tuple):
            raise DataError(f"{option} {spec}: a batch is a tuple; lowbit does not guess which item holds labels: "
                            "return a dict {'x': inputs, 'y': labels, other keyword inputs by name}")
        if isinstance(b, (torch.Tensor, np.ndarray)):
            b = {"x": b}
        if not isinstance(b, dict) or "x" not in b:
            raise DataError(f"{option} {spec}: a batch is a {type(b).__name__}"
                            + (f" with keys {sorted(b)}" if isinstance(b, dict) else "")
                            + "; return a tensor of samples, a dict with 'x' (and 'y'), or a list of them")
        parts.append({k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                      for k, v in b.items()})
    if not parts or any(set(p) != set(parts[0]) for p in parts):
        raise DataError(f"{option} {spec}: returned no batches, or batches with different keys")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_samples(path: str | Path, option: str) -> Samples:
    """``.npy``/``.npz`` file or folder of them, or a ``FILE.py:FUNCTION`` data factory (module docstring)."""
    if is_factory(str(path)):
        return _samples(_factory_arrays(str(path), option), option, str(path))
    from lowbit.data.image_folder import is_image_folder, read_image_folder

    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES) if path.is_dir() else [path]
    if not path.exists():
        raise DataError(f"{option} {path}: no such file or folder")
    if not files and is_image_folder(path):
        return _samples(read_image_folder(path, option), option, str(path))
    if not files or any(p.suffix not in DATA_SUFFIXES for p in files):
        raise DataError(f"{option} {path}: needs .npy or .npz files of samples (first axis: samples), a folder "
                        "of them, or a folder of images")
    parts = [_read(p, option) for p in files]
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise DataError(f"{option} {path}: the files hold different arrays ({[sorted(p) for p in parts][:3]})")
    return _samples({k: np.concatenate([p[k] for p in parts]) for k in keys}, option, str(path))


def _samples(arrays: dict[str, np.ndarray], option: str, path: str) -> Samples:
    """Arrays ``x`` (``y``, keyword inputs) checked (same number of samples, numbers, finite) as Samples."""
    n = arrays["x"].shape[0] if arrays["x"].ndim else 0
    for k, a in arrays.items():
        if a.ndim == 0 or a.shape[0] != n or n == 0:
            raise DataError(f"{option} {path}: array {k!r} has shape {a.shape}; every array needs the same number "
                            f"of samples (> 0) along its first axis as 'x' ({n})")
    tensors = {k: _tensor(a, k, option) for k, a in arrays.items()}
    y = tensors.pop("y", None)
    return Samples(tensors.pop("x"), y.long() if y is not None else None, tensors)


def _tensor(a: np.ndarray, key: str, option: str) -> torch.Tensor:
    if a.dtype.kind == "f":
        t = torch.from_numpy(a.astype(np.float32))
        if not bool(torch.isfinite(t).all()):
            raise DataError(f"{option}: array {key!r} holds NaN or inf values")
        return t
    if a.dtype.kind in "iub":
        return torch.from_numpy(a.astype(np.int64))
    raise DataError(f"{option}: array {key!r} has dtype {a.dtype}; use numbers")


@dataclass(frozen=True)
class Fidelity:
    """How close a quantized model's outputs are to the float model's on the same samples."""

    cosine_mean: float
    cosine_min: float
    sqnr_db: float
    agreement: float  # fraction of samples whose argmax (decision) is the same
    accuracy: float | None = None
    float_accuracy: float | None = None


def flat_outputs(model: nn.Module, samples: Samples, batch: int = 256) -> torch.Tensor:
    """``model``'s outputs on ``samples``, one float64 row per sample (what :func:`compare` compares)."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            kwargs = {k: v[i:i + batch] for k, v in samples.extra.items()}
            try:
                out = model(samples.x[i:i + batch], **kwargs)
            except (RuntimeError, ValueError, IndexError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise DataError(f"samples of shape {tuple(samples.x.shape[1:])} (per sample) do not fit the model: "
                                f"{type(exc).__name__}: {first}") from None
            if not isinstance(out, torch.Tensor):
                raise ConfigError(f"the model returns a {type(out).__name__}; lowbit compares models that return one "
                                  "tensor (wrap it to return the output you deploy)")
            outs.append(out.reshape(out.shape[0], -1).double())
    return torch.cat(outs)


def fidelity(reference: nn.Module, model: nn.Module, samples: Samples, batch: int = 256) -> Fidelity:
    """Cosine of the flattened outputs per sample (mean, min), SQNR over all, argmax agreement; accuracy of both
    when ``samples`` carry labels."""
    return compare(flat_outputs(reference, samples, batch), flat_outputs(model, samples, batch), samples.y)


def compare(ref: torch.Tensor, out: torch.Tensor, y: torch.Tensor | None = None) -> Fidelity:
    """:func:`fidelity` of outputs already computed (:func:`flat_outputs`): ``out`` against ``ref``, labels ``y``."""
    from lowbit.diagnostics import sqnr_db

    cos = torch.nn.functional.cosine_similarity(ref, out, dim=1, eps=1e-30)
    agree = float((ref.argmax(1) == out.argmax(1)).double().mean())
    acc = f_acc = None
    if y is not None:
        acc = float((out.argmax(1) == y).double().mean())
        f_acc = float((ref.argmax(1) == y).double().mean())
    sqnr = sqnr_db(ref, out)
    return Fidelity(float(cos.mean()), float(cos.min()), sqnr if math.isfinite(sqnr) else float("inf"), agree, acc,
                    f_acc)


__all__ = ["Fidelity", "Samples", "compare", "fidelity", "first_input", "flat_outputs", "is_user_model", "load_model", "load_samples", "load_weights",
           "model_name"]

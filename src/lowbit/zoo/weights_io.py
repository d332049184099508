"""Reading and writing zoo weights without pickle.

A model's weights are an ``.npz`` archive of its ``state_dict`` (read with
``allow_pickle=False``, so loading never executes code) beside a ``.json`` file
with the format version, the recipe and the accuracy the weights reached.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.errors import CheckpointError
from lowbit.utils.files import atomic_write, atomic_write_text

FORMAT_VERSION = 1


def save_state(state: dict[str, torch.Tensor], npz_path: str | Path, meta: dict, compressed: bool = False) -> Path:
    """Write the tensors ``state`` to ``npz_path`` (``np.savez``, or ``np.savez_compressed``) and ``meta``
    (+ format, sha256 of the archive) beside it, each atomically; returns the npz path."""
    arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    data = buf.getvalue()
    atomic_write(npz_path, lambda f: f.write(data))
    meta = {**meta, "format_version": FORMAT_VERSION, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_text(Path(npz_path).with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return Path(npz_path)


def save_weights(model: nn.Module, npz_path: str | Path, meta: dict) -> None:
    """Write ``model.state_dict()`` to ``npz_path`` and ``meta`` (+ format, sha256) beside it."""
    save_state(model.state_dict(), npz_path, meta)


def read_meta(npz_path: str | Path) -> dict:
    """The JSON metadata that sits beside a weights file."""
    path = Path(npz_path).with_suffix(".json")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"no metadata file {path}; re-create it with 'lowbit zoo train'") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"metadata file {path} is corrupt ({exc}); re-create it with 'lowbit zoo train'") from exc
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"metadata file {path} cannot be read ({type(exc).__name__}); "
                              "re-create it with 'lowbit zoo train'") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"metadata file {path} holds a JSON {type(meta).__name__}, not the object lowbit "
                              "writes; re-create it with 'lowbit zoo train'")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {meta.get('format_version')!r}; this lowbit reads {FORMAT_VERSION}"
        )
    return meta


def load_weights(model: nn.Module, npz_path: str | Path) -> nn.Module:
    """Load weights written by :func:`save_weights` into ``model`` (strict keys and shapes)."""
    load_weights_and_extras(model, npz_path, {})
    return model


def load_weights_and_extras(model: nn.Module, npz_path: str | Path,
                            extras: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """As :func:`load_weights`, for an archive that also holds arrays the model has no slot for (``extras``: name ->
    shape, e.g. a per-channel scale kept beside int8 codes); returns those arrays (float32), checked like the rest."""
    path = Path(npz_path)
    meta = read_meta(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"weights file {path} not found") from exc
    except (IsADirectoryError, PermissionError) as exc:
        raise CheckpointError(f"weights file {path} cannot be read ({type(exc).__name__})") from exc
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{path} does not match the checksum in its metadata: the file is corrupt or was replaced")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable weights archive: {exc}") from exc
    expected = model.state_dict()
    wanted = {**{k: (tuple(v.shape), v.dtype) for k, v in expected.items()},
              **{k: (tuple(shape), torch.float32) for k, shape in extras.items()}}
    missing = sorted(set(wanted) - set(arrays))
    unexpected = sorted(set(arrays) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    state = {}
    for key, (shape, dtype) in wanted.items():
        a = arrays[key]
        if tuple(a.shape) != shape:
            raise CheckpointError(f"{path}: '{key}' has shape {a.shape}, the model needs {shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.issubdtype(a.dtype, np.complexfloating):
            raise CheckpointError(f"{path}: '{key}' holds {a.dtype} values, not numbers; the weights file was "
                                  "altered: re-create it with 'lowbit zoo train'")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise CheckpointError(f"{path}: '{key}' holds {int(np.isnan(a).sum())} NaN and {int(np.isinf(a).sum())} "
                                  "inf values; the weights are unusable: re-create them with 'lowbit zoo train'")
        state[key] = torch.from_numpy(a).to(dtype)
    model.load_state_dict({k: state[k] for k in expected})
    return {k: state[k] for k in extras}

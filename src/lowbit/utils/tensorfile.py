"""Read and write tensors in the safetensors file format, without pickle.

A safetensors file has three parts:

1. 8 bytes: ``N``, the length of the header, an unsigned little-endian 64-bit int;
2. ``N`` bytes: a UTF-8 JSON object, padded with spaces so that ``8 + N`` is a
   multiple of 8. Each key names a tensor and maps to
   ``{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}``; the optional
   key ``"__metadata__"`` maps to a flat ``{str: str}`` object;
3. the byte buffer: every tensor's elements, row-major and little-endian, at
   ``[begin, end)`` counted from the start of the buffer (not of the file). The
   tensors cover the buffer exactly, with no overlaps and no holes.

Loading never executes code from the file (unlike ``torch.load`` of a pickle) and
checks every field before it allocates memory, so a corrupt, truncated or foreign
file gives a :class:`~lowbit.errors.CheckpointError` that names the file and the
problem. The files are interchangeable with those of the ``safetensors`` package.

Integrity: ``save_tensors(..., checksum=True)`` stores in the metadata, under
:data:`CHECKSUM_KEY`, the SHA-256 of the file's content: a canonical JSON of
every tensor's name, dtype, shape and offsets and of the other metadata, then the
byte buffer. :func:`load_tensors` verifies it whenever it is present (and, with
``require_checksum=True``, refuses a file without one), so one changed byte in
the tensors or the header is a :class:`~lowbit.errors.CheckpointError`, not a
model that loads and computes something else. It detects corruption, not
tampering: whoever rewrites the file can rewrite the digest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from lowbit.errors import CheckpointError
from lowbit.utils.files import atomic_write

__all__ = ["CHECKSUM_KEY", "DTYPES", "load_tensors", "read_metadata", "save_tensors"]

#: safetensors dtype name -> torch dtype, for every dtype this module supports.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

METADATA_KEY = "__metadata__"
CHECKSUM_KEY = "lowbit.sha256"  # metadata key of the content digest (see the module docstring)
MAX_HEADER_BYTES = 100 * 1024 * 1024  # a header this large is corruption, not a model
_LEN_BYTES = 8
_ALIGN = 8


@dataclass(frozen=True)
class _Entry:
    """One tensor as described by the header."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


# --------------------------------------------------------------------------- save


def save_tensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    checksum: bool = False,
) -> Path:
    """Write ``tensors`` (and optional string ``metadata``) to ``path`` atomically.

    Tensors are moved to the CPU and made contiguous; their dtype and shape are kept
    exactly. Either the whole file is written or ``path`` keeps its old content.
    ``checksum``: also store the SHA-256 of the content, which :func:`load_tensors` verifies.
    """
    path = Path(path)
    prepared = _prepare_tensors(path, tensors)
    _check_metadata_to_save(path, metadata)
    entries = _layout(prepared)
    if checksum:
        digest = _digest(entries, metadata or {}, (_tensor_bytes(prepared[e.name]) for e in entries))
        metadata = {**(metadata or {}), CHECKSUM_KEY: digest}
    header = _encode_header(entries, metadata)

    def write(f: IO[bytes]) -> None:
        f.write(header)
        for entry in entries:
            f.write(_tensor_bytes(prepared[entry.name]))

    return atomic_write(path, write)


def _prepare_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check names and dtypes; return detached, contiguous CPU tensors."""
    if not isinstance(tensors, Mapping):
        raise CheckpointError(
            f"cannot save {path}: tensors must be a dict of name -> torch.Tensor, "
            f"got {type(tensors).__name__}"
        )
    prepared: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        _check_name(path, name)
        _check_tensor(path, name, tensor)
        prepared[name] = tensor.detach().cpu().contiguous()
    return prepared


def _check_name(path: Path, name: object) -> None:
    if not isinstance(name, str) or not name:
        raise CheckpointError(
            f"cannot save {path}: tensor name {name!r} is not a non-empty str; "
            "name every tensor with a non-empty string"
        )
    if name == METADATA_KEY:
        raise CheckpointError(
            f"cannot save {path}: {METADATA_KEY!r} is reserved for the metadata; "
            "rename that tensor"
        )


def _check_tensor(path: Path, name: str, tensor: object) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise CheckpointError(
            f"cannot save {path}: {name!r} is a {type(tensor).__name__}, not a torch.Tensor"
        )
    if tensor.layout != torch.strided:
        raise CheckpointError(
            f"cannot save {path}: tensor {name!r} has layout {tensor.layout}; "
            "convert it with .to_dense() first"
        )
    if tensor.dtype not in _NAMES:
        supported = ", ".join(str(d) for d in DTYPES.values())
        raise CheckpointError(
            f"cannot save {path}: tensor {name!r} has dtype {tensor.dtype}, which is not "
            f"supported; convert it to one of {supported}"
        )


def _check_metadata_to_save(path: Path, metadata: object) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise CheckpointError(
            f"cannot save {path}: metadata must be a dict of str -> str, "
            f"got {type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CheckpointError(
                f"cannot save {path}: metadata entry {key!r}: {value!r} is not str -> str; "
                "convert keys and values to strings (e.g. with json.dumps)"
            )
    if CHECKSUM_KEY in metadata:
        raise CheckpointError(
            f"cannot save {path}: metadata key {CHECKSUM_KEY!r} is reserved for the checksum; "
            "pass checksum=True to store one"
        )


def _digest(entries: list[_Entry], metadata: Mapping[str, str], chunks) -> str:
    """SHA-256 (hex) of the canonical description of the tensors and metadata, then of the data ``chunks``
    (the tensors' bytes in buffer order)."""
    described = {
        "metadata": {k: v for k, v in metadata.items() if k != CHECKSUM_KEY},
        "tensors": {e.name: [_NAMES[e.dtype], list(e.shape), e.begin, e.end] for e in entries},
    }
    text = json.dumps(described, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    h = hashlib.sha256(len(text).to_bytes(8, "little") + text)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _layout(tensors: Mapping[str, torch.Tensor]) -> list[_Entry]:
    """Place tensors back to back, widest elements first so that each is aligned."""
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    entries: list[_Entry] = []
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        entries.append(_Entry(name, tensor.dtype, tuple(tensor.shape), offset, offset + size))
        offset += size
    return entries


def _encode_header(entries: list[_Entry], metadata: Mapping[str, str] | None) -> bytes:
    """The length prefix plus the JSON header, padded with spaces to 8 bytes."""
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    for e in entries:
        header[e.name] = {
            "dtype": _NAMES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [e.begin, e.end],
        }
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % _ALIGN)
    return len(text).to_bytes(_LEN_BYTES, "little") + text


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The little-endian bytes of a contiguous CPU tensor."""
    if tensor.numel() == 0:
        return memoryview(b"")
    raw = tensor.reshape(-1).view(torch.uint8)
    if sys.byteorder != "little":
        raw = _swap_bytes(raw, tensor.element_size())
    return memoryview(raw.numpy()).cast("B")


def _swap_bytes(raw: torch.Tensor, itemsize: int) -> torch.Tensor:
    """Reverse the byte order of each element of a flat uint8 view."""
    if itemsize == 1:
        return raw
    return raw.reshape(-1, itemsize).flip(-1).reshape(-1).contiguous()


# --------------------------------------------------------------------------- load


def load_tensors(path: str | Path, require_checksum: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; return ``(tensors, metadata)``.

    Every tensor owns its memory and has the dtype and shape stored in the file.
    Raises :class:`CheckpointError` naming the file and the problem if the file is
    missing, truncated, corrupt or not a safetensors file, or if its stored checksum
    (:data:`CHECKSUM_KEY`, verified whenever present and then left out of the returned
    metadata) does not match its content; with ``require_checksum`` also if it has none.
    """
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        header_len = _read_header_length(path, f, size)
        header = _parse_header(path, f.read(header_len))
        metadata = _parse_metadata(path, header.pop(METADATA_KEY, None))
        entries = [_parse_entry(path, name, info) for name, info in header.items()]
        _check_offsets(path, entries, size - _LEN_BYTES - header_len)
        start = _LEN_BYTES + header_len
        entries.sort(key=lambda e: (e.begin, e.end))  # buffer order, as the digest reads the bytes
        raw = {e.name: _read_raw(path, f, start, e) for e in entries}
    _verify_checksum(path, entries, metadata, raw, require_checksum)
    tensors = {e.name: _as_tensor(raw[e.name], e) for e in entries}
    return tensors, {k: v for k, v in metadata.items() if k != CHECKSUM_KEY}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file as its header states it (the checksum entry included, nothing
    verified, no tensor read): to decide how to load it with :func:`load_tensors`."""
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        header = _parse_header(path, f.read(_read_header_length(path, f, size)))
    return _parse_metadata(path, header.get(METADATA_KEY))


def _verify_checksum(path: Path, entries: list[_Entry], metadata: dict[str, str], raw: dict[str, bytearray],
                     required: bool) -> None:
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None:
        if required:
            raise CheckpointError(
                f"{path} has no checksum ({CHECKSUM_KEY!r} in its metadata), so its content cannot be "
                "verified; re-save it with this lowbit"
            )
        return
    actual = _digest(entries, metadata, (raw[e.name] for e in entries))
    if stored != actual:
        raise CheckpointError(
            f"{path} is corrupt: the SHA-256 of its content is {actual[:16]}..., but the file records "
            f"{stored[:16]}...; it was changed or damaged after it was written: re-save or re-download it"
        )


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} does not exist; check the path, or save the tensors first"
        ) from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a safetensors file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot open {path}: {exc.strerror or exc}") from None


def _read_header_length(path: Path, f: IO[bytes], size: int) -> int:
    if size < _LEN_BYTES:
        raise CheckpointError(
            f"{path} is not a safetensors file: it has {size} bytes, fewer than the "
            f"{_LEN_BYTES}-byte header length that starts every safetensors file"
        )
    prefix = f.read(_LEN_BYTES)
    header_len = int.from_bytes(prefix, "little")
    if header_len > size - _LEN_BYTES or header_len > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path} is not a safetensors file (header length {header_len} bytes, but the "
            f"file has {size} bytes{_foreign_hint(prefix)}); it may be truncated or "
            "in another format"
        )
    return header_len


def _foreign_hint(prefix: bytes) -> str:
    """A guess at what a foreign file is, from its first bytes."""
    if prefix.startswith(b"PK"):
        return "; it looks like a zip archive, e.g. from torch.save or numpy.savez"
    if prefix.startswith(b"\x80"):
        return "; it looks like a pickle, e.g. from torch.save; load it with torch.load"
    if prefix.startswith(b"\x93NUMPY"):
        return "; it looks like a numpy .npy file"
    return ""


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{path} is not a safetensors file: its header is not valid UTF-8 ({exc.reason} "
            f"at byte {_LEN_BYTES + exc.start})"
        ) from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, duplicates, huge ints
        raise CheckpointError(
            f"{path} is not a safetensors file: its header is not valid JSON ({exc})"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path} is not a safetensors file: its header is a JSON "
            f"{type(header).__name__}, not an object"
        )
    return header


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"key {key!r} appears twice")
        result[key] = value
    return result


def _parse_metadata(path: Path, metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise CheckpointError(
            f"{path} is corrupt: {METADATA_KEY!r} must map str to str, got {metadata!r:.200}"
        )
    return metadata


def _parse_entry(path: Path, name: str, info: object) -> _Entry:
    where = f"{path} is corrupt: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} is described by {info!r:.100}, not a JSON object")
    dtype = _parse_dtype(where, info.get("dtype"))
    shape = _parse_shape(where, info.get("shape"))
    begin, end = _parse_offsets(where, info.get("data_offsets"))
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise CheckpointError(
            f"{where} has data_offsets [{begin}, {end}] ({end - begin} bytes), but shape "
            f"{list(shape)} of {_NAMES[dtype]} needs {expected} bytes"
        )
    return _Entry(name, dtype, shape, begin, end)


def _parse_dtype(where: str, name: object) -> torch.dtype:
    if not isinstance(name, str) or name not in DTYPES:
        raise CheckpointError(
            f"{where} has dtype {name!r}, which lowbit does not support "
            f"(supported: {', '.join(DTYPES)})"
        )
    return DTYPES[name]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_shape(where: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(
            f"{where} has shape {shape!r:.100}, not a list of non-negative ints"
        )
    return tuple(shape)


def _parse_offsets(where: str, offsets: object) -> tuple[int, int]:
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(
            f"{where} has data_offsets {offsets!r:.100}, not [begin, end] with "
            "0 <= begin <= end"
        )
    return offsets[0], offsets[1]


def _check_offsets(path: Path, entries: list[_Entry], buffer_len: int) -> None:
    """The tensors must tile the byte buffer exactly: no overlap, hole or overrun."""
    position = 0
    previous = "the start of the data"
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin < position:
            raise CheckpointError(
                f"{path} is corrupt: tensor {e.name!r} at bytes [{e.begin}, {e.end}] overlaps "
                f"{previous}"
            )
        if e.begin > position:
            raise CheckpointError(
                f"{path} is corrupt: {e.begin - position} unused bytes between {previous} "
                f"and tensor {e.name!r}"
            )
        position, previous = e.end, f"tensor {e.name!r}"
    if position > buffer_len:
        raise CheckpointError(
            f"{path} is truncated: {previous} ends at data byte {position}, but the file "
            f"holds only {buffer_len} data bytes; re-save or re-download it"
        )
    if position < buffer_len:
        raise CheckpointError(
            f"{path} is corrupt: {buffer_len - position} unused bytes after {previous}"
        )


def _read_raw(path: Path, f: IO[bytes], start: int, e: _Entry) -> bytearray:
    """One tensor's bytes, copied out of the file."""
    size = e.end - e.begin
    buffer = bytearray(size)
    if size == 0:
        return buffer
    f.seek(start + e.begin)
    if f.readinto(buffer) != size:
        raise CheckpointError(f"{path} is truncated: tensor {e.name!r} is cut short")
    return buffer


def _as_tensor(buffer: bytearray, e: _Entry) -> torch.Tensor:
    """The tensor of one entry over its bytes (the tensor owns that memory)."""
    if len(buffer) == 0:
        return torch.empty(e.shape, dtype=e.dtype)
    raw = torch.frombuffer(buffer, dtype=torch.uint8)
    if sys.byteorder != "little":
        raw = _swap_bytes(raw, e.dtype.itemsize)
    return raw.view(e.dtype).reshape(e.shape)

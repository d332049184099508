"""Save and load an :class:`IntegerModel` as one safetensors file with JSON metadata.

The file holds every op's tensors (``"<index>.<name>"``) and, in the
safetensors header's ``__metadata__``, a JSON description of the graph:

    {"format": "lowbit-integer", "version": 2, "input": ..., "output": ...,
     "nodes": [{"kind", "inputs", "output", "attrs", "grid", "source"}, ...]}

Weights of 4 bits or fewer are packed two to a byte (low nibble first); per-channel
multipliers are stored as int32 and shifts as int8 (version 2; loading widens them
back to int64 and still reads version 1 files). Loading
reads no pickle, checks the format name, version, op kinds and every tensor an
op needs, and raises :class:`~lowbit.errors.CheckpointError` naming the
problem. Saving writes a temporary file and renames it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lowbit.errors import CheckpointError
from lowbit.integer.model import IntegerModel, Node, make_op
from lowbit.integer.ops import OPS
from lowbit.utils.tensorfile import load_tensors, save_tensors

FORMAT, VERSION = "lowbit-integer", 2
READS = (1, 2)  # version 2 stores per-channel multipliers and shifts in the narrowest exact integer type
_NARROW = {"m": torch.int32, "m2": torch.int32, "n": torch.int8}
_REQUIRED = {"linear": ("weight", "bias"), "conv2d": ("weight", "bias"), "avgpool2d": ("m", "n")}


def pack_int4(w: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] -> uint8, two per byte (low nibble = even index); odd counts padded with 0."""
    flat = w.reshape(-1).to(torch.int16) & 0xF
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: sign-extended int8 of ``shape``."""
    b = packed.to(torch.int16)
    nib = torch.stack([b & 0xF, (b >> 4) & 0xF], dim=1).reshape(-1)
    nib = torch.where(nib >= 8, nib - 16, nib)
    n = 1
    for d in shape:
        n *= d
    return nib[:n].to(torch.int8).reshape(shape)


def _fits(t: torch.Tensor, dtype: torch.dtype) -> bool:
    info = torch.iinfo(dtype)
    return t.numel() == 0 or (int(t.min()) >= info.min and int(t.max()) <= info.max)


def save_integer(model: IntegerModel, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (``.safetensors``), atomically."""
    tensors: dict[str, torch.Tensor] = {}
    nodes = []
    for i, node in enumerate(model.nodes):
        attrs = dict(node.op.attrs)
        for name, t in node.op.tensors.items():
            if name == "weight" and attrs.get("weight_bits", 8) <= 4:
                attrs["weight_shape"] = list(t.shape)
                t = pack_int4(t)
            elif name in _NARROW and t.dtype == torch.int64 and _fits(t, _NARROW[name]):
                attrs.setdefault("widen", []).append(name)  # loading restores int64
                t = t.to(_NARROW[name])
            tensors[f"{i}.{name}"] = t
        nodes.append({"kind": node.kind, "inputs": node.inputs, "output": node.output, "attrs": attrs,
                      "grid": node.grid, "source": node.source, "tensors": sorted(node.op.tensors)})
    meta = {"format": FORMAT, "version": VERSION, "input": model.input_name, "output": model.output_name,
            "nodes": nodes}
    return save_tensors(path, tensors, {"lowbit": json.dumps(meta)})


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid lowbit integer model: {what}")


def _header(path: Path, metadata: dict[str, str]) -> dict:
    if "lowbit" not in metadata:
        raise _fail(path, "no 'lowbit' metadata (a safetensors file from another tool?); "
                          "save one with lowbit.integer.save_integer or `lowbit export`")
    try:
        meta = json.loads(metadata["lowbit"])
    except json.JSONDecodeError as exc:
        raise _fail(path, f"its metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, f"format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT!r}")
    if meta.get("version") not in READS:
        raise _fail(path, f"format version {meta.get('version')!r}; this lowbit reads versions {READS}: "
                          "re-export the model with this version")
    if not isinstance(meta.get("nodes"), list):
        raise _fail(path, "no node list")
    return meta


def _node(path: Path, i: int, spec: dict, tensors: dict[str, torch.Tensor]) -> Node:
    try:
        kind, attrs = spec["kind"], dict(spec["attrs"])
        names = list(spec["tensors"])
        inputs, output = list(spec["inputs"]), str(spec["output"])
    except (KeyError, TypeError) as exc:
        raise _fail(path, f"node {i} lacks {exc}") from None
    if kind not in OPS:
        raise _fail(path, f"node {i} has unknown op {kind!r}; known: {sorted(OPS)}")
    missing = [n for n in names if f"{i}.{n}" not in tensors] + [
        n for n in _REQUIRED.get(kind, ()) if n not in names]
    if missing:
        raise _fail(path, f"node {i} ({kind}) misses tensors {missing}")
    own = {n: tensors[f"{i}.{n}"] for n in names}
    if "weight_shape" in attrs:
        own["weight"] = unpack_int4(own["weight"], tuple(attrs.pop("weight_shape")))
    for name in attrs.pop("widen", []):
        if name not in own or own[name].dtype not in _NARROW.values():
            raise _fail(path, f"node {i} ({kind}): tensor {name!r} is marked narrowed but is not")
        own[name] = own[name].to(torch.int64)
    try:
        op = make_op(kind, attrs, own)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise _fail(path, f"node {i} ({kind}) is inconsistent: {type(exc).__name__}: {exc}") from None
    return Node(op, inputs, output, spec.get("grid"), spec.get("source", ""))


def load_integer(path: str | Path) -> IntegerModel:
    """Read a model written by :func:`save_integer` (no pickle; every field checked)."""
    path = Path(path)
    tensors, metadata = load_tensors(path)
    meta = _header(path, metadata)
    nodes = [_node(path, i, spec, tensors) for i, spec in enumerate(meta["nodes"])]
    known = {meta.get("input")} | {n.output for n in nodes}
    for i, n in enumerate(nodes):
        unknown = [x for x in n.inputs if x not in known]
        if unknown:
            raise _fail(path, f"node {i} reads undefined tensors {unknown}")
    if meta.get("output") not in known:
        raise _fail(path, f"output {meta.get('output')!r} is not produced by any node")
    return IntegerModel(nodes, meta["input"], meta["output"])


__all__ = ["load_integer", "pack_int4", "save_integer", "unpack_int4"]

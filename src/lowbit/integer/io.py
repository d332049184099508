"""Save and load an :class:`IntegerModel` as one safetensors file with JSON metadata.

The file holds every op's tensors (``"<index>.<name>"``) and, in the
safetensors header's ``__metadata__``, a JSON description of the graph:

    {"format": "lowbit-integer", "version": 3, "input": ..., "output": ...,
     "input_shape": [1, 28, 28], "input_dtype": "float32",
     "nodes": [{"kind", "inputs", "output", "attrs", "grid", "source", "tensors"}, ...]}

and the SHA-256 of the whole content (:data:`lowbit.utils.tensorfile.CHECKSUM_KEY`).
A model of several inputs is written as version 4, whose one field ``"inputs"``
replaces ``input``, ``input_shape`` and ``input_dtype``:

    {"format": "lowbit-integer", "version": 4, "inputs": [{"name": "x", "shape": [8], "dtype": "float32"},
     {"name": "z", "shape": [6], "dtype": "float32"}], "output": ..., "nodes": [...]}

(``shape`` and ``dtype`` both null where not recorded); a model of one input keeps the
version-3 form, so its file is what it was and an older lowbit still reads it.
Weights of 4 bits or fewer are packed two to a byte (low nibble first); ternary weights
(``weight_codes: "ternary"``) 2 bits each and ``b``-bit power-of-two weights
(``weight_codes: "pow2"``) ``b`` bits each (sign bit and exponent index, see
:func:`pack_pow2`) and binary weights (``weight_codes: "binary"``) 1 bit each (1 for +1), in a
little-endian bit stream; per-channel
multipliers are stored as int32 and shifts as int8 (loading widens them back to int64).

A model file is untrusted input. Loading reads no pickle, verifies the checksum,
parses every field, then validates the whole graph (:mod:`lowbit.integer.validate`:
every attribute against its tensors, its neighbours and the recorded input shape)
before it builds a single op, and raises :class:`~lowbit.errors.CheckpointError`
naming the node, the attribute and what is allowed. Versions 1 and 2 (no checksum,
no input shape) still load, with a warning. Saving writes a temporary file and renames it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from lowbit.errors import CheckpointError
from lowbit.integer import ir, validate
from lowbit.integer.model import Input, IntegerModel, Node, make_op, require_integer_model
from lowbit.utils.tensorfile import load_tensors, read_metadata, save_tensors

FORMAT, VERSION, MULTI_VERSION = "lowbit-integer", 3, 4
# 2: per-channel multipliers and shifts in the narrowest exact integer type; 3: a checksum and the input's shape;
# 4: several inputs (written only for such a model: one input is still written as version 3)
READS = (1, 2, 3, 4)
MAX_INPUTS = 64
_NARROW = {"m": torch.int32, "m2": torch.int32, "n": torch.int8}
# a recurrent op's per-layer multipliers and shifts (m_ih_0, n_hh_2, ...) narrow as m and n do
_NARROW.update({f"{mn}_{p}_{k}": _NARROW[mn] for mn in ("m", "n") for p in ("ih", "hh") for k in range(64)})


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


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit codes (``0 <= c < 2^bits``) -> uint8 bit stream, least significant bit first,
    the last byte padded with zeros."""
    flat = codes.reshape(-1).to(torch.int64)
    planes = (flat[:, None] >> torch.arange(bits)) & 1  # (N, bits), bit i of each code
    stream = planes.reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    return (stream.reshape(-1, 8) << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes (int64)."""
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1).reshape(-1)
    if stream.numel() < n * bits:
        raise ValueError(f"{packed.numel()} bytes hold fewer than {n} codes of {bits} bits")
    return (stream[: n * bits].reshape(n, bits) << torch.arange(bits)).sum(dim=1)


def pack_ternary(w: torch.Tensor) -> torch.Tensor:
    """Ternary codes {-1, 0, 1} -> 2 bits each (two's complement: 0 -> 00, 1 -> 01, -1 -> 11)."""
    return pack_bits(w.to(torch.int64) & 3, 2)


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_ternary` (int8 of ``shape``); the unused code 10 raises ``ValueError``."""
    c = unpack_bits(packed, 2, math.prod(shape))
    if bool((c == 2).any()):
        raise ValueError("a ternary weight holds the unused 2-bit code 10")
    return torch.where(c == 3, -1, c).to(torch.int8).reshape(shape)


def pack_binary(w: torch.Tensor) -> torch.Tensor:
    """Binary codes {-1, +1} -> 1 bit each (1 for +1): 32x smaller than float32."""
    return pack_bits((w > 0).to(torch.int64), 1)


def unpack_binary(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_binary` (int8 of ``shape``)."""
    return (2 * unpack_bits(packed, 1, math.prod(shape)) - 1).to(torch.int8).reshape(shape)


def pack_pow2(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Power-of-two codes ``{0, +-2^k}``, ``0 <= k < 2^(bits-1) - 1`` -> ``bits`` bits each: the top bit is the
    sign, the others ``k + 1`` (0 for zero)."""
    v = w.to(torch.int64)
    mag = v.abs()
    index = torch.where(mag > 0, torch.log2(mag.clamp_min(1).double()).round().to(torch.int64) + 1, 0)
    if bool((index >= 2 ** (bits - 1)).any()) or not torch.equal(torch.where(mag > 0, 2 ** (index - 1), 0), mag):
        raise ValueError(f"weights are not {bits}-bit power-of-two codes")
    return pack_bits(index | ((v < 0).to(torch.int64) << (bits - 1)), bits)


def unpack_pow2(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_pow2` (int8 of ``shape``)."""
    c = unpack_bits(packed, bits, math.prod(shape))
    index, negative = c & (2 ** (bits - 1) - 1), (c >> (bits - 1)) == 1
    mag = torch.where(index > 0, 2 ** (index - 1).clamp_min(0), 0)
    return torch.where(negative, -mag, mag).to(torch.int8).reshape(shape)


def _pack_weight(t: torch.Tensor, attrs: dict) -> torch.Tensor | None:
    """The packed form of a weight and its shape in ``attrs``, or None to store it as it is."""
    codes = attrs.get("weight_codes", "int")
    if codes == "ternary":
        packed = pack_ternary(t)
    elif codes == "binary":
        packed = pack_binary(t)
    elif codes == "pow2":
        packed = pack_pow2(t, attrs["weight_bits"])
    elif attrs.get("weight_bits", 8) <= 4:
        packed = pack_int4(t)
    else:
        return None
    attrs["weight_shape"] = list(t.shape)
    return packed


def _unpack_weight(packed: torch.Tensor, shape: tuple[int, ...], codes: object, width: int) -> torch.Tensor:
    if codes == "ternary":
        return unpack_ternary(packed, shape)
    if codes == "pow2":
        return unpack_pow2(packed, width, shape)
    if codes == "binary":
        return unpack_binary(packed, shape)
    if codes != "int":
        raise ValueError(f"unknown weight_codes {codes!r:.40}; allowed: 'int', 'ternary', 'pow2', 'binary'")
    return unpack_int4(packed, shape)


def _fits(t: torch.Tensor, dtype: torch.dtype) -> bool:
    info = torch.iinfo(dtype)
    return t.numel() == 0 or (int(t.min()) >= info.min and int(t.max()) <= info.max)


def save_integer(model: IntegerModel, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (``.safetensors``), atomically, with a checksum of its content."""
    require_integer_model(model, "save_integer")
    tensors: dict[str, torch.Tensor] = {}
    nodes = []
    for i, node in enumerate(model.nodes):
        attrs = dict(node.op.attrs)
        for name, t in node.op.tensors.items():
            if name == "weight" and (packed := _pack_weight(t, attrs)) is not None:
                t = packed
            elif name in _NARROW and t.dtype == torch.int64 and _fits(t, _NARROW[name]):
                attrs.setdefault("widen", []).append(name)  # loading restores int64
                t = t.to(_NARROW[name])
            tensors[f"{i}.{name}"] = t
        nodes.append({"kind": node.kind, "inputs": node.inputs, "output": node.output, "attrs": attrs,
                      "grid": None if node.grid is None else node.grid.to_json(), "source": node.source, "tensors": sorted(node.op.tensors)})
    ins = [{"name": i.name, "shape": None if i.shape is None else list(i.shape),
            "dtype": None if i.dtype is None else validate.dtype_name(i.dtype)} for i in model.inputs]
    if len(ins) == 1:  # the version-3 form
        meta = {"format": FORMAT, "version": VERSION, "input": ins[0]["name"], "output": model.output_name,
                "input_shape": ins[0]["shape"], "input_dtype": ins[0]["dtype"], "nodes": nodes}
    else:
        meta = {"format": FORMAT, "version": MULTI_VERSION, "inputs": ins, "output": model.output_name,
                "nodes": nodes}
    return save_tensors(path, tensors, {"lowbit": json.dumps(meta)}, checksum=True)


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a valid lowbit integer model: {what}")


def _header(path: Path, metadata: dict[str, str]) -> dict:
    if "lowbit" not in metadata:
        raise _fail(path, "no 'lowbit' metadata (a safetensors file from another tool?); "
                          "save one with lowbit.integer.save_integer or `lowbit export`")
    try:
        meta = json.loads(metadata["lowbit"])
    except (ValueError, RecursionError) as exc:
        raise _fail(path, f"its metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, f"format {meta.get('format') if isinstance(meta, dict) else meta!r:.80}, "
                          f"expected {FORMAT!r}")
    version = meta.get("version")
    if isinstance(version, bool) or version not in READS:
        raise _fail(path, f"format version {version!r:.40}; this lowbit reads versions {READS}: "
                          "re-export the model with this version")
    if not isinstance(meta.get("nodes"), list):
        raise _fail(path, "no node list")
    return meta


def _own_tensors(path: Path, i: int, kind: str, names: list, attrs: dict,
                 tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Node ``i``'s tensors, int4 weights unpacked and narrowed ones widened, each step checked first."""
    where = f"node {i} ({kind})"
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise _fail(path, f"{where}: tensor names {names!r:.80} must be distinct strings")
    missing = [n for n in names if f"{i}.{n}" not in tensors]
    if missing:
        raise _fail(path, f"{where} misses tensors {missing}")
    own = {n: tensors[f"{i}.{n}"] for n in names}
    if "weight_shape" in attrs:
        shape, packed = attrs.pop("weight_shape"), own.get("weight")
        codes = attrs.get("weight_codes", "int")
        width = {"int": 4, "ternary": 2, "binary": 1}.get(codes, attrs.get("weight_bits"))
        ok = (isinstance(shape, list) and 1 <= len(shape) <= 8
              and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= validate.MAX_SAMPLE for d in shape)
              and isinstance(width, int) and not isinstance(width, bool) and 1 <= width <= 8)
        if not ok or packed is None or packed.dtype != torch.uint8 or packed.ndim != 1 \
                or packed.numel() != (math.prod(shape) * width + 7) // 8:
            raise _fail(path, f"{where}: attribute 'weight_shape' = {shape!r:.80} does not describe its packed "
                              f"{codes!r:.20} 'weight' ({'none' if packed is None else f'{packed.dtype} {tuple(packed.shape)}'})"
                              "; allowed: a list of sizes whose product times the code width, in bytes rounded up, "
                              "is the byte count")
        try:
            own["weight"] = _unpack_weight(packed, tuple(shape), codes, width)
        except ValueError as exc:
            raise _fail(path, f"{where}: packed weights unreadable ({exc})") from None
    widen = attrs.pop("widen", [])
    if not isinstance(widen, list):
        raise _fail(path, f"{where}: attribute 'widen' = {widen!r:.80}; allowed: a list of tensor names")
    for name in widen:
        if name not in _NARROW or name not in own or own[name].dtype != _NARROW[name]:
            raise _fail(path, f"{where}: tensor {name!r:.40} is marked narrowed but is not")
        own[name] = own[name].to(torch.int64)
    return own


def _parse_node(path: Path, i: int, spec: object, tensors: dict[str, torch.Tensor]) -> validate.NodeView:
    """One node's fields, typed; its tensors as the op will hold them. Nothing is built yet."""
    if not isinstance(spec, dict):
        raise _fail(path, f"node {i} is a {type(spec).__name__}, not a JSON object")
    try:
        kind, attrs, names = spec["kind"], spec["attrs"], spec["tensors"]
        inputs, output = spec["inputs"], spec["output"]
    except KeyError as exc:
        raise _fail(path, f"node {i} lacks {exc}") from None
    if validate.check_of(kind) is None:
        raise _fail(path, f"node {i} has unknown op {kind!r:.40}; known: {validate.KNOWN_KINDS}")
    if not isinstance(attrs, dict) or not isinstance(names, list):
        raise _fail(path, f"node {i} ({kind}): 'attrs' must be a JSON object and 'tensors' a list of names")
    if not isinstance(spec.get("source", ""), str):
        raise _fail(path, f"node {i} ({kind}): 'source' must be a string")
    attrs = dict(attrs)
    own = _own_tensors(path, i, kind, names, attrs, tensors)
    return validate.NodeView(kind, attrs, own, inputs, output, spec.get("grid"))


def _input_spec(path: Path, meta: dict) -> validate.Spec | None:
    """The recorded input (version 3; a model saved without one has null); None before version 3."""
    if meta["version"] < 3:
        warnings.warn(f"{path} is a lowbit integer model of format version {meta['version']}: it has no checksum "
                      "and no recorded input shape, so its integrity cannot be verified and each new input shape is "
                      "checked through its nodes; re-save it with lowbit.integer.save_integer", UserWarning,
                      stacklevel=4)
        return None
    return _recorded(path, meta.get("input_shape"), meta.get("input_dtype"))


def _recorded(path: Path, shape: object, dtype: object) -> validate.Spec | None:
    """A recorded per-sample shape and dtype name, or None where both are null."""
    if shape is None and dtype is None:
        return None
    try:
        return validate.input_spec(shape, dtype)
    except validate.Invalid as exc:
        raise _fail(path, str(exc)) from None


def _inputs(path: Path, meta: dict) -> list[Input]:
    """Every input the file records: version 4's ``inputs`` list, or the one input of the earlier versions."""
    if meta["version"] < 4:
        x = _input_spec(path, meta)
        return [Input(meta.get("input"), None if x is None else x.shape, None if x is None else x.dtype)]
    entries = meta.get("inputs")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_INPUTS:
        raise _fail(path, f"'inputs' = {entries!r:.80}; allowed: a list of 1 to {MAX_INPUTS} objects")
    inputs = []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) != {"name", "shape", "dtype"}:
            raise _fail(path, f"input {k} = {e!r:.80}; allowed: an object with name, shape and dtype")
        x = _recorded(path, e["shape"], e["dtype"])
        inputs.append(Input(e["name"], None if x is None else x.shape, None if x is None else x.dtype))
    return inputs


def load_integer(path: str | Path) -> IntegerModel:
    """Read a model written by :func:`save_integer`: no pickle, the checksum verified, the whole graph
    validated (:mod:`lowbit.integer.validate`) before any op is built."""
    path = Path(path)
    version = _header(path, read_metadata(path))["version"]
    tensors, metadata = load_tensors(path, require_checksum=version >= 3)
    meta = _header(path, metadata)  # as verified
    inputs = _inputs(path, meta)
    views = [_parse_node(path, i, spec, tensors) for i, spec in enumerate(meta["nodes"])]
    used = {f"{i}.{n}" for i, spec in enumerate(meta["nodes"]) for n in spec["tensors"]}
    unused = sorted(set(tensors) - used)
    if unused:
        raise _fail(path, f"tensors {unused[:5]} belong to no node")
    names = [i.name for i in inputs]
    specs = None if any(i.shape is None for i in inputs) else [validate.Spec(i.shape, i.dtype) for i in inputs]
    try:
        validate.check_model(views, names[0] if meta["version"] < 4 else names, meta.get("output"), specs)
    except validate.Invalid as exc:
        raise _fail(path, str(exc)) from None
    nodes = []
    for i, v in enumerate(views):
        try:
            op = make_op(v.kind, v.attrs, v.tensors)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise _fail(path, f"node {i} ({v.kind}) is inconsistent: {type(exc).__name__}: {exc}") from None
        nodes.append(Node(op, v.inputs, v.output, ir.Grid.from_json(v.grid), meta["nodes"][i].get("source", "")))
    return IntegerModel(nodes, output_name=meta["output"], inputs=inputs)


__all__ = ["load_integer", "pack_bits", "pack_int4", "pack_pow2", "pack_ternary", "save_integer", "unpack_bits",
           "unpack_int4", "unpack_pow2", "unpack_ternary"]

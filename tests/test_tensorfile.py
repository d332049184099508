from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import CheckpointError
from lowbit.utils import tensorfile
from lowbit.utils.tensorfile import DTYPES, load_tensors, save_tensors

_BITS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """An integer view of ``t``, so that NaN payloads and -0.0 compare exactly."""
    if t.dtype.is_floating_point:
        return t.view(_BITS[t.element_size()])
    return t


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(_bits(a[name]), _bits(b[name])), name


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape))
    if dtype == torch.bool:
        return (torch.rand(n) > 0.5).reshape(shape)
    if dtype.is_floating_point:
        t = (torch.randn(n) * 100).to(dtype)
        if n >= 4:
            t[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]).to(dtype)
        return t.reshape(shape)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -(2**62)), min(info.max, 2**62)
    t = torch.randint(lo, hi, (n,), dtype=dtype)
    if n >= 2:
        t[0], t[1] = info.min, info.max
    return t.reshape(shape)


def _every_dtype() -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for code, dtype in DTYPES.items():
        tensors[f"{code}.matrix"] = _sample(dtype, (3, 5))
        tensors[f"{code}.scalar"] = _sample(dtype, ())
        tensors[f"{code}.empty"] = _sample(dtype, (0, 4))
        tensors[f"{code}.strided"] = _sample(dtype, (6, 4)).t()[::2]  # non-contiguous
    return tensors


def _nan_payload(dtype: torch.dtype) -> torch.Tensor:
    """A NaN with an unusual payload: only a bit-exact round trip keeps it."""
    raw = {torch.float64: 0x7FF8_0000_DEAD_BEEF, torch.float32: 0x7FC0_1234, torch.float16: 0x7E01,
           torch.bfloat16: 0x7FC1}[dtype]
    ints = torch.tensor([raw], dtype=_BITS[torch.empty((), dtype=dtype).element_size()])
    return ints.view(dtype)


# --------------------------------------------------------------------------- round trip


def test_every_dtype_round_trips_bit_exactly(tmp_path):
    tensors = _every_dtype()
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        tensors[f"nan.{dtype}"] = _nan_payload(dtype)
    path = save_tensors(tmp_path / "w.safetensors", tensors, {"format": "pt", "note": "ünï"})
    assert path == tmp_path / "w.safetensors"
    loaded, metadata = load_tensors(path)
    assert_same(tensors, loaded)
    assert metadata == {"format": "pt", "note": "ünï"}
    assert not tensors["F32.strided"].is_contiguous()


def test_loaded_tensors_own_writable_memory(tmp_path):
    path = save_tensors(tmp_path / "w.safetensors", {"a": torch.arange(6, dtype=torch.int32).reshape(2, 3)})
    loaded, _ = load_tensors(path)
    path.write_bytes(b"overwritten")  # nothing may still point into the file
    a = loaded["a"]
    a += 1  # writable, no warning about read-only buffers
    assert a.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert a.is_contiguous()


def test_header_is_aligned_and_metadata_optional(tmp_path):
    path = save_tensors(tmp_path / "w.safetensors", {"x": torch.ones(3, dtype=torch.float16)})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert "__metadata__" not in header
    assert header["x"] == {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]}
    assert load_tensors(path)[1] == {}


def test_empty_dict_round_trips(tmp_path):
    path = save_tensors(tmp_path / "w.safetensors", {})
    assert load_tensors(path) == ({}, {})


def test_requires_grad_tensor_is_saved(tmp_path):
    w = torch.randn(2, 2, requires_grad=True)
    loaded, _ = load_tensors(save_tensors(tmp_path / "w.safetensors", {"w": w}))
    assert torch.equal(loaded["w"], w.detach())
    assert not loaded["w"].requires_grad


_small_tensor = st.sampled_from([torch.int8, torch.int32, torch.float32]).flatmap(
    lambda dtype: st.lists(st.integers(0, 3), max_size=3).map(lambda shape: _sample(dtype, tuple(shape)))
)


@given(
    tensors=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__"),
                            _small_tensor, max_size=5),
    metadata=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_random_dicts_round_trip(tmp_path_factory, tensors, metadata):
    path = tmp_path_factory.mktemp("prop") / "w.safetensors"
    save_tensors(path, tensors, metadata)
    loaded, loaded_metadata = load_tensors(path)
    assert_same(tensors, loaded)
    assert loaded_metadata == metadata


# --------------------------------------------------------------------------- oracle


def test_safetensors_reads_our_files(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open

    tensors = _every_dtype()
    path = save_tensors(tmp_path / "ours.safetensors", tensors, {"format": "pt", "k": "v"})
    assert_same(tensors, st_torch.load_file(path))
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}


def test_we_read_safetensors_files(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    tensors = {name: t.contiguous() for name, t in _every_dtype().items()}
    path = tmp_path / "theirs.safetensors"
    st_torch.save_file(tensors, path, metadata={"format": "pt", "ünï": "cödé"})
    loaded, metadata = load_tensors(path)
    assert_same(tensors, loaded)
    assert metadata == {"format": "pt", "ünï": "cödé"}


def test_each_reader_accepts_the_other_writers_layout(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    tensors = {"b": torch.arange(4, dtype=torch.float32), "a": torch.ones(2, dtype=torch.int8)}
    ours = save_tensors(tmp_path / "ours.safetensors", tensors)
    theirs = tmp_path / "theirs.safetensors"
    st_torch.save_file(tensors, theirs)
    # both are valid to the other reader, whatever the header layout
    assert_same(st_torch.load_file(ours), load_tensors(theirs)[0])


# --------------------------------------------------------------------------- save errors


@pytest.mark.parametrize(
    ("tensors", "metadata", "words"),
    [
        ({"": torch.ones(1)}, None, "non-empty"),
        ({3: torch.ones(1)}, None, "non-empty str"),
        ({"__metadata__": torch.ones(1)}, None, "reserved"),
        ({"x": [1, 2]}, None, "not a torch.Tensor"),
        ({"x": torch.ones(1, dtype=torch.complex64)}, None, "convert it"),
        ({"x": torch.ones(1)}, {"epoch": 3}, "str -> str"),
        ({"x": torch.ones(1)}, ["a"], "dict of str -> str"),
        ([torch.ones(1)], None, "dict of name"),
        ({"x": torch.ones(2, 2).to_sparse()}, None, "to_dense"),
    ],
)
def test_save_rejects_bad_input(tmp_path, tensors, metadata, words):
    with pytest.raises(CheckpointError, match=words):
        save_tensors(tmp_path / "w.safetensors", tensors, metadata)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- atomicity


def test_failure_midway_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_tensors(tmp_path / "w.safetensors", {"old": torch.ones(3)})
    before = path.read_bytes()
    real = tensorfile._tensor_bytes
    calls = []

    def flaky(tensor):
        calls.append(tensor)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(tensor)

    monkeypatch.setattr(tensorfile, "_tensor_bytes", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_tensors(path, {"a": torch.zeros(100), "b": torch.zeros(100)})
    assert len(calls) == 2  # the header and the first tensor were already written
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_unsupported_dtype_after_valid_one_keeps_old_file(tmp_path):
    path = save_tensors(tmp_path / "w.safetensors", {"old": torch.ones(3)})
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="complex"):
        save_tensors(path, {"ok": torch.ones(2), "bad": torch.ones(2, dtype=torch.complex64)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


# --------------------------------------------------------------------------- load errors


def _write(path: Path, header: object, data: bytes = b"", pad: bool = True) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.fixture
def valid(tmp_path) -> Path:
    return save_tensors(
        tmp_path / "valid.safetensors",
        {"w": torch.randn(4, 5), "b": torch.arange(7, dtype=torch.int8)},
        {"format": "pt"},
    )


def test_truncation_at_every_interesting_point_is_caught(valid, tmp_path):
    raw = valid.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    for cut in sorted({0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 3, len(raw) - 1}):
        broken = tmp_path / f"cut{cut}.safetensors"
        broken.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError) as info:
            load_tensors(broken)
        assert str(broken) in str(info.value), cut


def test_truncated_data_names_the_problem(valid, tmp_path):
    broken = tmp_path / "short.safetensors"
    broken.write_bytes(valid.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_tensors(broken)


def test_trailing_bytes_are_rejected(valid, tmp_path):
    broken = tmp_path / "long.safetensors"
    broken.write_bytes(valid.read_bytes() + b"x")
    with pytest.raises(CheckpointError, match="unused bytes"):
        load_tensors(broken)


@pytest.mark.parametrize("length", [2**64 - 1, 2**40, 2**31, 200 * 1024 * 1024])
def test_absurd_header_length(valid, length):
    raw = bytearray(valid.read_bytes())
    raw[:8] = struct.pack("<Q", length)
    valid.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"not a safetensors file \(header length"):
        load_tensors(valid)


def test_header_length_over_limit_is_refused_even_if_file_is_big(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorfile, "MAX_HEADER_BYTES", 16)
    path = _write(tmp_path / "w.safetensors", {"x": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}})
    with pytest.raises(CheckpointError, match="header length"):
        load_tensors(path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a safetensors file.*0 bytes"):
        load_tensors(tmp_path / "empty.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tensors(tmp_path / "nope.safetensors")


def test_folder(tmp_path):
    with pytest.raises(CheckpointError, match="folder"):
        load_tensors(tmp_path)


def test_torch_save_file_is_foreign(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(10, 10)}, path)
    with pytest.raises(CheckpointError, match="not a safetensors file.*zip"):
        load_tensors(path)


def test_legacy_pickle_file_is_foreign(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(10, 10)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_tensors(path)


def test_npz_is_foreign(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_tensors(path)


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_are_foreign(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "noise.bin"
    path.write_bytes(rng.integers(0, 256, size=int(rng.integers(0, 4096)), dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
        load_tensors(path)


def test_small_plausible_length_with_random_bytes(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(struct.pack("<Q", 16) + bytes(range(0xF0, 0x100)) + b"rest")
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        load_tensors(path)


_X = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "words"),
    [
        (b"{not json", b"", "not valid JSON"),
        (b'{"x": 1, "x": 2}', b"", "twice"),
        (b"[1, 2, 3]", b"", "not an object"),
        (b'"hello"', b"", "not an object"),
        (b"[" * 100_000 + b"]" * 100_000, b"", "not valid JSON"),
        ({"x": {**_X, "dtype": "F8_E4M3"}}, bytes(8), "dtype 'F8_E4M3'"),
        ({"x": {**_X, "dtype": None}}, bytes(8), "dtype None"),
        ({"x": {**_X, "shape": [-2]}}, bytes(8), "non-negative ints"),
        ({"x": {**_X, "shape": [2.0]}}, bytes(8), "non-negative ints"),
        ({"x": {**_X, "shape": [True, True]}}, bytes(8), "non-negative ints"),
        ({"x": {**_X, "shape": "2"}}, bytes(8), "non-negative ints"),
        ({"x": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8), "shape None"),
        ({"x": {**_X, "shape": [3]}}, bytes(8), "needs 12 bytes"),
        ({"x": {**_X, "shape": [10**12, 10**12]}}, bytes(8), "needs"),
        ({"x": {**_X, "data_offsets": [8, 0]}}, bytes(8), "0 <= begin <= end"),
        ({"x": {**_X, "data_offsets": [-8, 0]}}, bytes(8), "0 <= begin <= end"),
        ({"x": {**_X, "data_offsets": [0]}}, bytes(8), "data_offsets"),
        ({"x": {**_X, "data_offsets": [4, 12]}}, bytes(12), "unused bytes"),
        ({"x": _X, "y": {**_X, "data_offsets": [4, 12]}}, bytes(12), "overlaps"),
        ({"x": _X, "y": _X}, bytes(16), "overlaps"),
        ({"x": {**_X, "data_offsets": [0, 8]}}, bytes(4), "truncated"),
        ({"x": {**_X, "shape": [2**40], "data_offsets": [0, 2**42]}}, bytes(8), "truncated"),
        ({"x": [1, 2]}, bytes(8), "not a JSON object"),
        ({"__metadata__": {"epoch": 3}, "x": _X}, bytes(8), "must map str to str"),
        ({"__metadata__": ["a"], "x": _X}, bytes(8), "must map str to str"),
    ],
)
def test_corrupt_header(tmp_path, header, data, words):
    path = _write(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=words) as info:
        load_tensors(path)
    assert str(path) in str(info.value)


def test_unpadded_header_is_accepted(tmp_path):
    path = _write(tmp_path / "w.safetensors", {"x": _X}, struct.pack("<2f", 1.5, -2.0), pad=False)
    loaded, _ = load_tensors(path)
    assert loaded["x"].tolist() == [1.5, -2.0]


def test_load_accepts_str_path(valid):
    loaded, metadata = load_tensors(str(valid))
    assert loaded["b"].tolist() == list(range(7))
    assert metadata == {"format": "pt"}

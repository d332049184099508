"""Files: integer-model safetensors that are corrupt, truncated, foreign, directories or unwritable; raw
safetensors headers broken field by field; QAT checkpoints that are corrupt, hostile or foreign."""

from __future__ import annotations

import json
import os

import torch

from bad_inputs_cases import Wrong, add, case, fixtures, sfile, workdir

CAT = "files"


def _load(path):
    from lowbit.integer import load_integer
    im = load_integer(path)
    with torch.no_grad():
        out = im(fixtures.xs(8))
    return f"loaded and ran: output {tuple(out.shape)}"


def _write(name: str, data: bytes):
    p = workdir() / name
    p.write_bytes(data)
    return p


def _cnn_bytes() -> bytes:
    return fixtures.saved("cnn").read_bytes()


# --- load_integer on whole-file faults
add(CAT, "load_integer_missing_file", "error", lambda: _load(workdir() / "nope.safetensors"))
add(CAT, "load_integer_directory", "error", lambda: _load(workdir()))
add(CAT, "load_integer_empty_file", "error", lambda: _load(_write("e.safetensors", b"")))
add(CAT, "load_integer_7_bytes", "error", lambda: _load(_write("s.safetensors", b"\x10\x00\x00\x00\x00\x00\x00")))
add(CAT, "load_integer_random_bytes", "error", lambda: _load(_write("r.safetensors", os.urandom(4096))))
add(CAT, "load_integer_png", "error", lambda: _load(_write("p.safetensors", b"\x89PNG\r\n\x1a\n" + os.urandom(200))))
add(CAT, "load_integer_truncated_half", "error", lambda: _load(_write("t.safetensors", _cnn_bytes()[:len(_cnn_bytes()) // 2])))
add(CAT, "load_integer_truncated_last_byte", "error", lambda: _load(_write("t1.safetensors", _cnn_bytes()[:-1])))
add(CAT, "load_integer_truncated_in_header", "error", lambda: _load(_write("th.safetensors", _cnn_bytes()[:300])))
add(CAT, "load_integer_trailing_garbage", "error", lambda: _load(_write("tg.safetensors", _cnn_bytes() + b"junk1234")))


@case(CAT, "error")
def load_integer_zoo_npz():
    from lowbit import zoo
    return _load(zoo.weights_path("cnn"))


@case(CAT, "error")
def load_integer_torch_pickle():
    p = workdir() / "m.safetensors"
    torch.save({"w": torch.zeros(3)}, p)
    return _load(p)


@case(CAT, "error")
def load_integer_foreign_safetensors():
    from lowbit.utils.tensorfile import save_tensors
    return _load(save_tensors(workdir() / "f.safetensors", {"weight": torch.zeros(3, 3)}))


@case(CAT, "error")
def load_integer_path_below_a_file():
    p = _write("plain", b"x")
    return _load(p / "model.safetensors")


@case(CAT, "error")
def load_integer_unreadable_file():
    p = _write("u.safetensors", _cnn_bytes())
    os.chmod(p, 0)
    if os.geteuid() == 0:  # root reads it anyway; /proc/self/mem fails to read at offset 0 (EIO) for anyone
        p = "/proc/self/mem"
    return _load(p)


# --- headers broken field by field
def _hdr_case(name: str, mutate):
    def fn():
        h, data = sfile.split(fixtures.saved("cnn"))
        out = mutate(h, data)
        blob = out if isinstance(out, bytes) else sfile.join(*out)
        return _load(_write(f"{name}.safetensors", blob))
    add(CAT, f"header_{name}", "error", fn)


def _first_tensor(h):
    return next(k for k in h if k != "__metadata__")


def _set(key, value):
    def m(h, d):
        k = _first_tensor(h)
        h[k] = dict(h[k], **{key: value})
        return h, d
    return m


_hdr_case("length_huge", lambda h, d: sfile.join(h, d, length=1 << 62))
_hdr_case("length_beyond_file", lambda h, d: sfile.join(h, d, length=len(json.dumps(h)) + len(d) + 100))
_hdr_case("length_zero", lambda h, d: sfile.join(h, d, length=0))
_hdr_case("not_json", lambda h, d: ("{not json" + " " * 20, d))
_hdr_case("json_list", lambda h, d: ("[1, 2, 3]", d))
_hdr_case("json_string", lambda h, d: ('"hello"', d))
_hdr_case("not_utf8", lambda h, d: (b'{"a": "\xff\xfe"}', d))
_hdr_case("dtype_unknown", _set("dtype", "F8_E4M3"))
_hdr_case("dtype_not_string", _set("dtype", 5))
_hdr_case("shape_negative", _set("shape", [-1, 5]))
_hdr_case("shape_not_list", _set("shape", "32"))
_hdr_case("shape_float", _set("shape", [2.5]))
_hdr_case("offsets_reversed", lambda h, d: (_set("data_offsets", list(reversed(h[_first_tensor(h)]["data_offsets"])))(h, d)))
_hdr_case("offsets_beyond_buffer", _set("data_offsets", [0, 10 ** 9]))
_hdr_case("offsets_negative", _set("data_offsets", [-8, 0]))
_hdr_case("offsets_three", _set("data_offsets", [0, 1, 2]))
_hdr_case("shape_size_mismatch", lambda h, d: _set("shape", [s * 2 for s in h[_first_tensor(h)]["shape"]])(h, d))


def _overlap(h, d):
    keys = [k for k in h if k != "__metadata__"]
    h[keys[1]] = dict(h[keys[1]], data_offsets=h[keys[0]]["data_offsets"],
                      shape=h[keys[0]]["shape"], dtype=h[keys[0]]["dtype"])
    return h, d


def _hole(h, d):
    return h, d + b"\0" * 64


def _metadata_non_string(h, d):
    h["__metadata__"] = dict(h["__metadata__"], extra=5)
    return h, d


def _no_metadata(h, d):
    del h["__metadata__"]
    return h, d


_hdr_case("tensors_overlap", _overlap)
_hdr_case("buffer_hole_at_end", _hole)
_hdr_case("metadata_non_string_value", _metadata_non_string)
_hdr_case("no_metadata", _no_metadata)
_hdr_case("duplicate_key", lambda h, d: ('{"__metadata__": {"a": "b"}, "x": {"dtype": "I8", "shape": [1], '
                                         '"data_offsets": [0, 1]}, "x": {"dtype": "I8", "shape": [1], '
                                         '"data_offsets": [0, 1]}}', d[:8]))


def _lowbit_meta(mutate):
    def m(h, d):
        return sfile.with_meta(h, mutate(sfile.meta(h))), d
    return m


def _set_meta(key, value):
    def m(meta):
        meta[key] = value
        return meta
    return m


_hdr_case("lowbit_meta_not_json", lambda h, d: (dict(h, __metadata__={"lowbit": "{oops"}), d))
_hdr_case("lowbit_meta_list", lambda h, d: (dict(h, __metadata__={"lowbit": "[]"}), d))
_hdr_case("format_other", _lowbit_meta(_set_meta("format", "onnx")))
_hdr_case("version_99", _lowbit_meta(_set_meta("version", 99)))
_hdr_case("version_string", _lowbit_meta(_set_meta("version", "2")))
_hdr_case("version_missing", _lowbit_meta(lambda m: {k: v for k, v in m.items() if k != "version"}))
_hdr_case("nodes_not_list", _lowbit_meta(_set_meta("nodes", {"a": 1})))
_hdr_case("nodes_empty", _lowbit_meta(_set_meta("nodes", [])))
_hdr_case("node_not_dict", _lowbit_meta(lambda m: dict(m, nodes=[5, *m["nodes"][1:]])))
_hdr_case("node_unknown_kind", _lowbit_meta(lambda m: dict(m, nodes=[dict(m["nodes"][0], kind="softmax"),
                                                                       *m["nodes"][1:]])))
_hdr_case("output_unknown", _lowbit_meta(_set_meta("output", "nothing")))
_hdr_case("input_renamed", _lowbit_meta(_set_meta("input", "y")))


# --- saving
@case(CAT, "error")
def save_integer_to_a_directory():
    from lowbit.integer import save_integer
    save_integer(fixtures.integer("mlp"), workdir())


@case(CAT, "error")
def save_integer_below_a_file():
    from lowbit.integer import save_integer
    save_integer(fixtures.integer("mlp"), _write("plain2", b"x") / "m.safetensors")


@case(CAT, "error")
def save_integer_of_a_float_model():
    from lowbit.integer import save_integer
    save_integer(fixtures.model("mlp"), workdir() / "float.safetensors")


@case(CAT, "error")
def save_integer_to_proc():
    from lowbit.integer import save_integer
    save_integer(fixtures.integer("mlp"), "/proc/lowbit_nope/m.safetensors")


@case(CAT, "valid")
def save_integer_into_new_nested_folder_roundtrip():
    from lowbit.integer import load_integer, save_integer
    p = save_integer(fixtures.integer("resnet"), workdir() / "a" / "b" / "m.safetensors")
    x = fixtures.xs(16)
    with torch.no_grad():
        if not torch.equal(load_integer(p)(x), fixtures.sim_out("resnet")[:16]):
            raise Wrong("reloaded model differs from the simulation")
    left = [f for f in os.listdir(p.parent) if f.endswith(".tmp")]
    if left:
        raise Wrong(f"temporary files left: {left}")
    return "round trip equal, no temp files"


@case(CAT, "valid")
def save_integer_overwrites_existing_file():
    from lowbit.integer import load_integer, save_integer
    p = _write("old.safetensors", b"old content")
    save_integer(fixtures.integer("mlp"), p)
    with torch.no_grad():
        if not torch.equal(load_integer(p)(fixtures.xs(16)), fixtures.sim_out("mlp")[:16]):
            raise Wrong("overwritten model differs")
    return "overwritten and equal"


@case(CAT, "valid")
def load_integer_read_only_file():
    from lowbit.integer import load_integer
    p = _write("ro.safetensors", _cnn_bytes())
    os.chmod(p, 0o444)
    with torch.no_grad():
        if not torch.equal(load_integer(p)(fixtures.xs(16)), fixtures.sim_out("cnn")[:16]):
            raise Wrong("read-only copy gives other outputs")
    return "equal"


# --- QAT checkpoints read directly
def _fp_and_ckpt():
    """A real 1-epoch MLP checkpoint and the fingerprint of a run that would resume it."""
    from lowbit.ptq import int_weight, uint_act
    from lowbit.qat import QATConfig, TrainConfig, prepare_qat, train
    tr = fixtures.train().take(256)
    cfg = TrainConfig(epochs=1, batch_size=64)
    m = prepare_qat(fixtures.model("mlp"), QATConfig(int_weight(4), uint_act(4)), tr.x[:64])
    out = workdir() / "run"
    train(m, tr, cfg, out, progress=False)
    return None, out / "checkpoint.pt"


def _ckpt_case(name: str, mutate, expect="error"):
    def fn():
        from lowbit.training import load_checkpoint
        _, p = _fp_and_ckpt()
        mutate(p)
        load_checkpoint(p)
        return "checkpoint accepted"
    add(CAT, f"checkpoint_{name}", expect, fn)


_overwrite, _resave = fixtures.overwrite, fixtures.resave


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {workdir() / 'PWNED'}",))


def _evil(p):
    torch.save({"format": "lowbit-qat-checkpoint-1", "x": _Evil()}, p)


_ckpt_case("garbage", lambda p: p.write_bytes(b"garbage"))
_ckpt_case("empty", lambda p: p.write_bytes(b""))
_ckpt_case("truncated", lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]))
_ckpt_case("200_bytes_overwritten", _overwrite)
_ckpt_case("200_bytes_overwritten_at_end", lambda p: _overwrite(p, at=0.9))
_ckpt_case("malicious_pickle", _evil)
_ckpt_case("a_list", lambda p: torch.save([1, 2, 3], p))
_ckpt_case("format_other", _resave(lambda s: s.update(format="other")))
_ckpt_case("fingerprint_other", _resave(lambda s: s.update(fingerprint="0" * 16)))
_ckpt_case("directory", lambda p: (p.unlink(), p.mkdir()))


@case(CAT, "valid")
def checkpoint_malicious_pickle_runs_no_code():
    from lowbit.errors import LowbitError
    from lowbit.training import load_checkpoint, save_checkpoint
    p = workdir() / "evil.pt"
    save_checkpoint(p, {"format": "lowbit-qat-checkpoint-1", "x": _Evil()})  # a correct checksum over the pickle
    try:
        load_checkpoint(p)
    except LowbitError:
        pass
    if (workdir() / "PWNED").exists():
        raise Wrong("loading the checkpoint executed code from it")
    return "no code executed"

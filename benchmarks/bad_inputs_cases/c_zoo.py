"""Zoo weights: modified .npz and .json files in a weights folder, unknown names, missing folders."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import torch

from bad_inputs_cases import Wrong, add, case, fixtures, workdir

CAT = "zoo"


def _copy(name: str = "cnn"):
    from lowbit import zoo
    d = workdir() / "weights"
    d.mkdir(exist_ok=True)
    for ext in (".npz", ".json"):
        shutil.copy(zoo.weights_path(name).with_suffix(ext), d / f"{name}{ext}")
    return d


def _pretrained(d, name="cnn"):
    from lowbit import zoo
    m = zoo.pretrained(name, d)
    return f"loaded {type(m).__name__}"


def _edit_json(edit, name="cnn"):
    d = _copy(name)
    p = d / f"{name}.json"
    meta = json.loads(p.read_text())
    out = edit(meta)
    p.write_text(out if isinstance(out, str) else json.dumps(meta if out is None else out))
    return d


def _rewrite_npz(edit, name="cnn", resign=True):
    """Change the arrays and (``resign``) write the matching checksum, as a careless tool would."""
    d = _copy(name)
    with np.load(d / f"{name}.npz") as a:
        arrays = {k: a[k] for k in a.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (d / f"{name}.npz").write_bytes(buf.getvalue())
    if resign:
        meta = json.loads((d / f"{name}.json").read_text())
        meta["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        (d / f"{name}.json").write_text(json.dumps(meta))
    return d


def _flip_npz(d, name="cnn", at=0.5):
    p = d / f"{name}.npz"
    b = bytearray(p.read_bytes())
    b[int(len(b) * at)] ^= 0x10
    p.write_bytes(bytes(b))
    return d


add(CAT, "pretrained_unknown_name", "error", lambda: _pretrained(None, "vgg"))
add(CAT, "pretrained_missing_folder", "error", lambda: _pretrained(workdir() / "nope"))
add(CAT, "pretrained_byte_flip_npz", "error", lambda: _pretrained(_flip_npz(_copy())))
add(CAT, "pretrained_byte_flip_npz_start", "error", lambda: _pretrained(_flip_npz(_copy(), at=0.01)))
add(CAT, "pretrained_npz_truncated", "error",
    lambda: _pretrained((lambda d: (d / "cnn.npz").write_bytes((d / "cnn.npz").read_bytes()[:1000]) and d)(_copy())))
add(CAT, "pretrained_npz_missing", "error", lambda: _pretrained((lambda d: (d / "cnn.npz").unlink() or d)(_copy())))
add(CAT, "pretrained_json_missing", "error", lambda: _pretrained((lambda d: (d / "cnn.json").unlink() or d)(_copy())))
add(CAT, "pretrained_json_corrupt", "error", lambda: _pretrained(_edit_json(lambda m: "{not json")))
add(CAT, "pretrained_json_is_a_list", "error", lambda: _pretrained(_edit_json(lambda m: [m])))
add(CAT, "pretrained_json_empty_object", "error", lambda: _pretrained(_edit_json(lambda m: {})))
add(CAT, "pretrained_json_format_version_2", "error", lambda: _pretrained(_edit_json(lambda m: m.update(format_version=2))))
add(CAT, "pretrained_json_no_sha256", "error", lambda: _pretrained(_edit_json(lambda m: m.pop("sha256") and None)))
add(CAT, "pretrained_json_sha256_number", "error", lambda: _pretrained(_edit_json(lambda m: m.update(sha256=5))))
add(CAT, "pretrained_npz_missing_key_resigned", "error",
    lambda: _pretrained(_rewrite_npz(lambda a: a.pop("fc2.bias"))))
add(CAT, "pretrained_npz_extra_key_resigned", "error",
    lambda: _pretrained(_rewrite_npz(lambda a: a.update(extra=np.zeros(3, np.float32)))))
add(CAT, "pretrained_npz_wrong_shape_resigned", "error",
    lambda: _pretrained(_rewrite_npz(lambda a: a.update({"fc2.bias": np.zeros(11, np.float32)}))))
add(CAT, "pretrained_npz_nan_weights_resigned", "error",
    lambda: _pretrained(_rewrite_npz(lambda a: a["conv1.weight"].__setitem__((0, 0, 0, 0), np.nan))))
add(CAT, "pretrained_npz_object_array_resigned", "error",
    lambda: _pretrained(_rewrite_npz(lambda a: a.update({"fc2.bias": np.array([object()] * 10, dtype=object)}))))
add(CAT, "pretrained_npz_string_array_resigned", "error",
    lambda: _pretrained(_rewrite_npz(lambda a: a.update({"fc2.bias": np.array(["a"] * 10)}))))


@case(CAT, "error")
def pretrained_weights_of_another_model():
    """The MLP's (valid, signed) files renamed to cnn.npz/cnn.json."""
    src, d = _copy("mlp"), workdir() / "other"
    d.mkdir()
    for e in (".npz", ".json"):
        shutil.copy(src / f"mlp{e}", d / f"cnn{e}")
    return _pretrained(d)

add(CAT, "shipped_accuracy_json_list", "error",
    lambda: __import__("lowbit.zoo", fromlist=["x"]).shipped_accuracy("cnn", _edit_json(lambda m: [m])))
add(CAT, "shipped_accuracy_no_test_accuracy", "error",
    lambda: __import__("lowbit.zoo", fromlist=["x"]).shipped_accuracy("cnn", _edit_json(lambda m: m.pop("test_accuracy") and None)))
add(CAT, "shipped_accuracy_not_a_number", "error",
    lambda: __import__("lowbit.zoo", fromlist=["x"]).shipped_accuracy("cnn", _edit_json(lambda m: m.update(test_accuracy="high"))))
add(CAT, "shipped_accuracy_above_1", "error",
    lambda: __import__("lowbit.zoo", fromlist=["x"]).shipped_accuracy("cnn", _edit_json(lambda m: m.update(test_accuracy=93.0))))


@case(CAT, "error")
def pretrained_qat_unknown_key():
    from lowbit.zoo.qat_zoo import pretrained_qat
    pretrained_qat("resnet-lsq-w3a3")


@case(CAT, "error")
def entry_of_non_string():
    from lowbit import zoo
    zoo.entry(None)


@case(CAT, "valid")
def pretrained_from_a_copied_folder_equals_shipped():
    d = _copy("resnet")
    from lowbit import zoo
    a, b = zoo.pretrained("resnet", d), fixtures.model("resnet")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        if not torch.equal(va, vb):
            raise Wrong(f"{k} differs")
    if a.training:
        raise Wrong("pretrained model is in train mode")
    return "equal, eval mode"


@case(CAT, "valid")
def npz_with_float64_arrays_resigned_loads_as_float32():
    d = _rewrite_npz(lambda a: a.update({k: v.astype(np.float64) for k, v in a.items() if v.dtype == np.float32}))
    from lowbit import zoo
    m = zoo.pretrained("cnn", d)
    x = fixtures.xs(32)
    with torch.no_grad():
        if not torch.allclose(m(x), fixtures.model("cnn")(x), atol=1e-5):
            raise Wrong("float64 copy of the weights gives other outputs")
    return "equal outputs"

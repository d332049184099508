"""The user's own model on the CLI (``--model FILE.py:FUNCTION | .pt2 | Hugging Face folder``, ``--weights``,
``--calib-data``, ``--test-data``): broken factories, weights and samples, each in its own process."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import torch

from bad_inputs_cases import Wrong, add, case, cli, touch, workdir

CAT = "user"

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def not_a_module():
        return 3

    def raises():
        raise RuntimeError("the user's own bug")

    def data():
        return {"x": torch.randn(16, 6), "y": torch.randint(0, 3, (16,))}

    def pair():
        return torch.randn(16, 6), torch.zeros(16)

    def wrong_width():
        return torch.randn(16, 5)
''')


def _setup() -> str:
    """The factory file and a good calibration file in the case's folder; returns ``FILE.py``."""
    touch("m.py", FACTORY)
    np.save(workdir() / "calib.npy", np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32))
    return str(workdir() / "m.py")


def u(name: str, build, expect: str = "error") -> None:
    """A case: ``build(file)`` gives the CLI arguments after the factory file is written."""
    add(CAT, name, expect, lambda: cli(*build(_setup())))


u("ptq_factory_file_missing", lambda f: ["ptq", "--model", "/nonexistent/m.py:make", "--calib-data", "calib.npy"])
u("ptq_factory_function_missing", lambda f: ["ptq", "--model", f"{f}:absent", "--calib-data", "calib.npy"])
u("ptq_factory_returns_a_number", lambda f: ["ptq", "--model", f"{f}:not_a_module", "--calib-data", "calib.npy"])
u("ptq_factory_raises", lambda f: ["ptq", "--model", f"{f}:raises", "--calib-data", "calib.npy"])
u("ptq_user_model_without_calib_data", lambda f: ["ptq", "--model", f"{f}:make"])
u("ptq_zoo_model_with_calib_data", lambda f: ["ptq", "--model", "mlp", "--calib-data", "calib.npy"])
u("ptq_weights_missing_file", lambda f: ["ptq", "--model", f"{f}:make", "--weights", "nope.npz",
                                         "--calib-data", "calib.npy"])
u("ptq_weights_garbage", lambda f: ["ptq", "--model", f"{f}:make", "--weights", str(touch("w.npz", b"junk")),
                                    "--calib-data", "calib.npy"])
u("ptq_weights_of_another_model", lambda f: ["ptq", "--model", f"{f}:make", "--weights", _other_weights(),
                                             "--calib-data", "calib.npy"])
u("ptq_calib_data_garbage", lambda f: ["ptq", "--model", f"{f}:make", "--calib-data", str(touch("c.npy", b"junk"))])
u("ptq_calib_data_wrong_width", lambda f: ["ptq", "--model", f"{f}:make", "--calib-data", f"{f}:wrong_width"])
u("ptq_calib_data_tuple_factory", lambda f: ["ptq", "--model", f"{f}:make", "--calib-data", f"{f}:pair"])
u("ptq_calib_data_nan", lambda f: ["ptq", "--model", f"{f}:make", "--calib-data", _nan_samples()])
u("ptq_calib_data_empty_folder", lambda f: ["ptq", "--model", f"{f}:make", "--calib-data", _empty_folder()])
u("ptq_pt2_not_a_program", lambda f: ["ptq", "--model", str(touch("p.pt2", b"junk")), "--calib-data", "calib.npy"])
u("ptq_hf_folder_without_safetensors", lambda f: ["ptq", "--model", _bin_only_folder(), "--calib-data", "calib.npy"])
u("report_two_user_models", lambda f: ["report", "--model", f"{f}:make", f"{f}:make", "--calib-data", "calib.npy"])
u("export_keyword_inputs", lambda f: ["export", "--model", f"{f}:make", "--calib-data", _keyword_samples(),
                                      "--out", "e"])


def _other_weights() -> str:
    np.savez(workdir() / "other.npz", **{"0.weight": np.zeros((4, 6), np.float32)})
    return str(workdir() / "other.npz")


def _nan_samples() -> str:
    a = np.ones((8, 6), np.float32)
    a[3, 2] = np.nan
    np.save(workdir() / "nan.npy", a)
    return str(workdir() / "nan.npy")


def _empty_folder() -> str:
    (workdir() / "empty").mkdir(exist_ok=True)
    return str(workdir() / "empty")


def _bin_only_folder() -> str:
    d = workdir() / "hf"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (d / "pytorch_model.bin").write_bytes(b"pickled code is never loaded")
    return str(d)


def _keyword_samples() -> str:
    np.savez(workdir() / "kw.npz", x=np.ones((8, 6), np.float32), mask=np.ones((8, 6), np.int64))
    return str(workdir() / "kw.npz")


@case(CAT, "valid")
def ptq_factory_with_labelled_factory_data():
    f = _setup()
    r = cli("ptq", "--model", f"{f}:make", "--calib-data", f"{f}:data", "--json", workdir() / "r.json")
    if r.rc != 0:
        return r
    res = json.loads((workdir() / "r.json").read_text())
    if not (res["cosine_mean"] > 0.99 and res["accuracy"] is not None and res["to_integer"]):
        raise Wrong(f"ptq on a small MLP: cosine {res['cosine_mean']}, accuracy {res['accuracy']}, "
                    f"to_integer {res['to_integer']}")
    r.note = f"cosine {res['cosine_mean']:.4f}, lowers to integers"
    return r


@case(CAT, "valid")
def report_factory_model():
    f = _setup()
    torch.manual_seed(0)
    r = cli("report", "--model", f"{f}:make", "--calib-data", "calib.npy", "--rounds", "1", "--out", "rep")
    if r.rc != 0:
        return r
    rep = json.loads((workdir() / "rep" / "m_make" / "report.json").read_text())
    if rep["metric"] != "decisions agreeing with float32" or len(rep["versions"]) != 4:
        raise Wrong(f"report: metric {rep['metric']!r}, {len(rep['versions'])} versions")
    r.note = "4 versions, agreement metric"
    return r

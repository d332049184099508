"""`lowbit export` and `lowbit bench` on the user's own model (a CREPE-style pitch model from a factory file: the
``pitch_user`` fixture of conftest.py)."""

import numpy as np
import torch

from lowbit.cli.main import main
from lowbit.integer import load_integer


def test_export_writes_an_integer_model_and_onnx_that_agree(pitch_user, capsys):
    from lowbit.export.ort import session

    path, spec = pitch_user
    rc = main(["export", "--model", spec, "--weights", str(path / "w.npz"), "--calib-data", str(path / "calib.npy"),
               "--test-data", str(path / "test.npy"), "--out", str(path / "out"), "--onnx"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "equal to the simulation on all: True" in text
    im = load_integer(path / "out" / "pitch_make.safetensors")
    x = torch.from_numpy(np.load(path / "test.npy"))
    assert [n.op.ir.kind for n in im.nodes].count("table") == 2
    got = session(path / "out" / "pitch_make.onnx", threads=1).run(["output"], {"input": x[:1].numpy()})[0]
    assert np.array_equal(got, im(x[:1]).numpy())


def test_ptq_says_the_users_model_lowers(pitch_user, capsys):
    path, spec = pitch_user
    rc = main(["ptq", "--model", spec, "--weights", str(path / "w.npz"), "--calib-data", str(path / "calib.npy")])
    text = capsys.readouterr().out
    assert rc == 0 and "integer model: lowers" in text and "equal to the simulation on all 40 samples: True" in text


def test_bench_times_the_users_model(pitch_user, capsys):
    path, spec = pitch_user
    rc = main(["bench", "--model", spec, "--weights", str(path / "w.npz"), "--calib-data", str(path / "calib.npy"),
               "--batch", "1", "8", "--rounds", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and text.count("lowbit integer") == 2, text


def test_zoo_models_refuse_the_user_model_options(pitch_user, capsys):
    path, _ = pitch_user
    rc = main(["export", "--model", "cnn", "--calib-data", str(path / "calib.npy"), "--out", str(path / "o")])
    assert rc != 0 and "--calib-data belong to your own model" in capsys.readouterr().err

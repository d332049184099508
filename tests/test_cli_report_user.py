"""`lowbit report` on the user's own model (the CREPE-style factory: the ``pitch_user`` fixture of conftest.py)."""

import contextlib
import json

import numpy as np
import pytest
import torch

from lowbit.cli.main import main
from lowbit.cost.build import VERSIONS
from lowbit.ptq import quantize
from lowbit.user_model import load_model, load_samples


def _report(path, spec, test: str, *extra: str) -> dict:
    rc = main(["report", "--model", spec, "--weights", str(path / "w.npz"), "--calib-data", str(path / "calib.npy"),
               "--test-data", str(path / test), "--rounds", "1", "--out", str(path / "rep"), *extra])
    assert rc == 0
    return json.loads((path / "rep" / "pitch_make" / "report.json").read_text())


def test_report_on_labelled_samples_gives_each_versions_accuracy(pitch_user, capsys):
    path, spec = pitch_user
    x = torch.from_numpy(np.load(path / "test.npy"))
    model = load_model(spec, str(path / "w.npz")).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 5  # a third of the labels wrong for float32
    np.savez(path / "labelled.npz", x=x.numpy(), y=y.numpy())
    r = _report(path, spec, "labelled.npz")
    assert "pitch_make" in capsys.readouterr().out
    assert r["metric"] == "accuracy"
    by_name = {v["name"]: v for v in r["versions"]}
    assert list(by_name) == ["float32", *VERSIONS]
    with torch.no_grad():
        assert by_name["float32"]["accuracy"] == pytest.approx(float((model(x).argmax(1) == y).double().mean()))
        calib = load_samples(path / "calib.npy", "--calib-data")
        for label, config in VERSIONS.items():  # the same PTQ, done here, gives the same accuracy
            with pytest.warns() if label == "W4A8" else contextlib.nullcontext():  # no layer of 2 gets 4 bits
                sim = quantize(model, calib.batches(64, 64), config)
            assert by_name[label]["accuracy"] == pytest.approx(float((sim(x).argmax(1) == y).double().mean()))
    assert any("W8A8: ran as the integer-only model" in n for n in r["notes"])
    assert set(by_name["W8A8"]["latency_us"]) == {"batch 1", "batch 24"}
    assert by_name["W4A8"]["weight_bits"] <= by_name["W8A8"]["weight_bits"] < 32  # (first and last layers: 8-bit)
    html = (path / "rep" / "pitch_make" / "report.html").read_text()
    assert "Test accuracy (%)" in html and "<svg" in html


def test_report_without_labels_measures_agreement_with_float(pitch_user):
    path, spec = pitch_user
    r = _report(path, spec, "test.npy")
    assert r["metric"] == "decisions agreeing with float32"
    assert r["versions"][0]["accuracy"] == 1.0
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in r["versions"])
    md = (path / "rep" / "pitch_make" / "report.md").read_text()
    assert "| version | decisions agreeing with float32 |" in md and "output cosine against float32" in md


@pytest.mark.parametrize("argv,words", [
    (["--model", "cnn", "--calib-data", "c.npy"], "--calib-data belong to your own model"),
    (["--model", "cnn", "USER"], "one model of yours alone"),
    (["--model", "USER"], "needs --calib-data"),
])
def test_report_refuses_mixed_or_incomplete_model_options(pitch_user, argv, words, capsys):
    path, spec = pitch_user
    argv = [spec if a == "USER" else a for a in argv]
    rc = main(["report", *argv, "--out", str(path / "rep")])
    err = capsys.readouterr().err
    assert rc != 0 and words in err and "Traceback" not in err
    assert not (path / "rep").exists()  # refused before any work

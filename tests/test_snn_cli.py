"""``lowbit snn convert``: the printed sweep and JSON equal the library's on the same images; one-line errors."""

from __future__ import annotations

import json

import pytest

from lowbit.cli.main import main


def test_convert_json_matches_the_library(tmp_path, capsys):
    from lowbit import snn, zoo
    from lowbit.data import fashion_mnist

    out = tmp_path / "rows.json"
    assert main(["snn", "convert", "--model", "cnn-avgpool", "--neuron", "termapping", "--time-steps", "2", "4",
                 "--calib-size", "250", "--test-size", "40", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["time_steps"] for r in rows] == [2, 4] and rows[0]["method"] == "convert-termapping"
    net = snn.convert(zoo.pretrained("cnn-avgpool"), [fashion_mnist("train").x[:250]],
                      neuron=snn.NeuronSpec(spikes=snn.Spikes.TERNARY, initial_potential=0.5))
    test = fashion_mnist("test")
    want = snn.sweep(net, test.x[:40], test.y[:40], [2, 4])
    assert [r["accuracy"] for r in rows] == [round(w.accuracy, 2) for w in want]
    assert [r["synops"] for r in rows] == [round(w.synops) for w in want]
    assert "relu1" in printed and "spikes per inference by layer at T=4" in printed


@pytest.mark.parametrize("args", [["--time-steps", "0"], ["--percentile", "0"], ["--percentile", "100.5"],
                                  ["--max-spikes", "0"]])
def test_bad_flags_give_one_line(args, capsys):
    assert main(["snn", "convert", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]


def test_train_writes_a_model_that_reloads_to_the_printed_accuracy(tmp_path, capsys):
    import torch

    from lowbit.data import fashion_mnist
    from lowbit.snn.models import evaluate_spiking, pretrained_spiking

    out = tmp_path / "run"
    assert main(["snn", "train", "--train-size", "256", "--batch-size", "64", "--epochs", "1", "--channels", "4,8",
                 "--hidden", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "checkpoint.pt").exists()
    model = pretrained_spiking("spiking-cnn", out)
    test = fashion_mnist("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        acc = evaluate_spiking(model, test.x, test.y)["accuracy"]
    assert f"test accuracy {100 * acc:.2f}%" in printed
    assert json.loads((out / "spiking-cnn.json").read_text())["spec"]["channels"] == [4, 8]


@pytest.mark.parametrize("channels", ["abc", "0,8", ""])
def test_train_bad_channels(channels, tmp_path, capsys):
    assert main(["snn", "train", "--channels", channels, "--out", str(tmp_path / "o")]) == 2
    assert "--channels" in capsys.readouterr().err

"""The shipped vowels_gru, the main job's delta table and ``lowbit delta``."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.cli.main import main
from lowbit.main_job import DeltaTable, delta_rows
from lowbit.zoo import recurrent


@pytest.fixture(scope="module")
def model():
    return recurrent.pretrained("vowels_gru")


def test_shipped_model_reaches_recorded_accuracy(model):
    test = recurrent.eval_split("vowels_gru")
    assert len(test) == 370
    assert recurrent.accuracy(model, test) == pytest.approx(recurrent.shipped_accuracy("vowels_gru"), abs=1e-9)
    assert recurrent.shipped_accuracy("vowels_gru") > 0.9


def test_length_batches_cover_each_sequence(model):
    """The batches cover every sequence exactly once, at its real length (no padding step)."""
    test = recurrent.eval_split("vowels_gru")
    seen = []
    for x, y in recurrent.length_batches(test, 64):
        assert x.shape[1] in set(test.lengths.tolist())
        seen.append(y)
    assert sorted(torch.cat(seen).tolist()) == sorted(test.y.tolist())


def test_unknown_model_is_a_clear_error():
    from lowbit.errors import ConfigError

    with pytest.raises(ConfigError, match="vowels_gru"):
        recurrent.pretrained("nope")


def test_delta_rows_zero_thresholds_are_dense():
    table = delta_rows(thetas=((0.0, 0.0), (0.5, 0.3)))
    assert isinstance(table, DeltaTable) and len(table.rows) == 2
    zero, high = table.rows
    assert zero.accuracy == pytest.approx(table.dense_accuracy, abs=1e-12)  # thresholds 0: the dense layer
    # only exact zero changes are skipped (the first step's dh, from h0 = 0): close to 1x
    assert 1.0 <= zero.mac_reduction < 1.2 and 1.0 <= zero.fetch_reduction < 1.2
    assert high.mac_reduction > zero.mac_reduction
    text = table.render()
    assert "delta GRU, JapaneseVowels" in text and "theta_x=0.5" in text


def test_cli_convert_and_sweep(capsys, tmp_path):
    assert main(["delta", "convert", "--model", "vowels_gru", "--theta-x", "0.5", "--theta-h", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "MACs /" in out and "weight fetches /" in out
    path = tmp_path / "sweep.json"
    assert main(["delta", "sweep", "--json", str(path)]) == 0
    assert "theta_x" in capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert rows[0]["theta_x"] == 0.0 and rows[0]["accuracy"] == rows[0]["dense_accuracy"]


@pytest.mark.parametrize("argv", [["--theta-x", "-0.1"], ["--theta-h", "nan"], ["--theta-x", "inf"],
                                  ["--theta-h", "abc"], ["--model", "cnn"]])
def test_cli_bad_arguments_one_line_exit_2(capsys, argv):
    assert main(["delta", "convert", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


def test_cli_sweep_json_folder_refused(capsys, tmp_path):
    assert main(["delta", "sweep", "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("argv", [["delta"], ["delta", "convert"], ["delta", "sweep"], ["delta", "train"]])
def test_cli_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0 and "usage" in capsys.readouterr().out


def test_cli_train_writes_weights_that_convert_reads(capsys, tmp_path):
    assert main(["delta", "train", "--epochs", "1", "--lam", "0.01", "--out", str(tmp_path)]) == 0
    trained = capsys.readouterr().out
    assert "fine-tuned 1 epochs" in trained and (tmp_path / "vowels_gru.npz").exists()
    meta = json.loads((tmp_path / "vowels_gru.json").read_text())
    model = recurrent.pretrained("vowels_gru", tmp_path)
    assert recurrent.accuracy(model, recurrent.eval_split("vowels_gru")) == pytest.approx(meta["test_accuracy"])
    assert main(["delta", "convert", "--weights-dir", str(tmp_path)]) == 0
    # converting the saved weights at the trained thresholds gives the accuracy measured after training
    assert f"accuracy {100 * meta['delta_test_accuracy']:.2f}%" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--lam", "-1"], ["--epochs", "0"], ["--lr", "0"], ["--theta-x", "nan"]])
def test_cli_train_bad_arguments(capsys, argv):
    assert main(["delta", "train", *argv]) == 2
    assert capsys.readouterr().err.count("\n") == 1

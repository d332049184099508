"""``lowbit lowprec`` (bound, train with Kahan / low-precision SGD) and ``lowbit qat --grad-bits``: exit status,
what the files hold, an interrupted run resumed to the uninterrupted result, one-line errors."""

from __future__ import annotations

import json

import pytest

from lowbit.cli.main import main
from lowbit.optim import FixedPoint, min_bits_last_fc

SMALL = ["--train-size", "256", "--batch-size", "64"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("lowbit: error:")
    return err


def test_bound_prints_the_library_value(capsys):
    assert main(["lowprec", "bound", "--classes", "1000"]) == 0
    bd = min_bits_last_fc(1000)
    assert f">= {bd.bits} bits" in capsys.readouterr().out and bd.bits == 14


def test_train_kahan_fixed8_keeps_storage_values_and_resumes(tmp_path, capsys):
    import torch

    from lowbit.training import load_checkpoint

    out = tmp_path / "run"
    assert main(["lowprec", "train", "--epochs", "2", "--out", str(out), *SMALL]) == 0
    first = json.loads((out / "result.json").read_text())
    assert first["storage"] == "fixed8.6" and first["epochs"] == 2 and 0.1 < first["accuracy"] <= 1
    ckpt = load_checkpoint(out / "checkpoint.pt")
    stored = [v for k, v in ckpt["model"].items() if k.endswith("original") or k.endswith("bias")
              or k.endswith("weight")]
    fmt = FixedPoint(8, 6)
    assert len(stored) == 10 and all(torch.equal(
        torch.clamp(torch.round(v * 64) / 64, fmt.min_value, fmt.max_value), v) for v in stored)
    assert any("compensation" in s for s in ckpt["optimizer"]["state"].values())  # Kahan's buffer is saved
    assert main(["lowprec", "train", "--epochs", "2", "--resume", "--out", str(out), *SMALL]) == 0
    again = json.loads((out / "result.json").read_text())
    assert again["accuracy"] == first["accuracy"] and again["history"] == first["history"]
    # a different storage is another run: resuming it from this checkpoint is refused
    capsys.readouterr()
    assert main(["lowprec", "train", "--epochs", "2", "--resume", "--storage", "bf16", "--out", str(out),
                 *SMALL]) == 2
    assert "storage" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["lowprec", "train", "--storage", "fixed8.9"], "fractional bits must be in 0..7"),
    (["lowprec", "train", "--storage", "int8"], "unknown storage"),
    (["lowprec", "bound", "--classes", "10", "--p-target", "0.05"], "(0.1, 1)"),
])
def test_bad_values_are_one_line_errors(argv, message, tmp_path, capsys):
    assert main([*argv, *(["--out", str(tmp_path / "o")] if argv[1] == "train" else [])]) == 2
    assert message in _one_error_line(capsys)


def test_bad_grad_bits_are_refused_by_argparse(capsys):
    assert main(["qat", "--grad-bits", "1"]) == 2
    assert "must be 2..16" in capsys.readouterr().err


def test_qat_grad_bits_lands_in_the_result(tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["qat", "--model", "mlp", "--grad-bits", "6", "--epochs", "1", "--no-augment", "--out", str(out), *SMALL]
    assert main(argv) == 0
    assert json.loads((out / "result.json").read_text())["config"]["grad_bits"] == 6
    capsys.readouterr()


def test_slices_prints_the_cost_table_of_the_shipped_weights(capsys):
    from lowbit import zoo
    from lowbit.cost.bitslice import render

    assert main(["lowprec", "slices", "--model", "mlp", "--rows", "64"]) == 0
    out = capsys.readouterr().out
    assert render(zoo.pretrained("mlp"), 64, 8, 2) in out and "| all |" in out
    assert main(["lowprec", "slices", "--bits", "8", "--slice-bits", "3"]) == 2
    assert "(1, 2, 4, 8)" in _one_error_line(capsys)


def test_shipped_kahan_cnn_holds_8_bit_codes_and_reaches_its_recorded_accuracy():
    from lowbit.data import fashion_mnist
    from lowbit.optim import is_representable
    from lowbit.zoo.lowprec_zoo import pretrained_lowprec, shipped_meta
    from lowbit.zoo.recipes import evaluate

    model = pretrained_lowprec("kahan-cnn-fixed8")
    meta = shipped_meta("kahan-cnn-fixed8")
    assert meta["storage"] == "fixed8.6"
    assert all(bool(is_representable(p, FixedPoint(8, 6)).all()) for p in model.parameters())
    assert evaluate(model, fashion_mnist("test")) == pytest.approx(meta["test_accuracy"], abs=5e-4)


def test_main_job_rows_agree_with_the_library():
    from lowbit.data import fashion_mnist
    from lowbit.main_lowprec import lowprec_rows

    table = lowprec_rows(fashion_mnist("test").take(500), lns_images=100)
    text = table.render()
    rows = {r.what: r for r in table.rows}
    lns = next(r for w, r in rows.items() if w.startswith("mlp in lns16"))
    flt = next(r for w, r in rows.items() if w.startswith("mlp in float32"))
    assert abs(lns.accuracy - flt.accuracy) <= 0.03  # 16-bit LNS inference tracks float (100 images)
    kahan = next(r for w, r in rows.items() if w.startswith("kahan-cnn-fixed8"))
    assert kahan.recorded is not None and 0.85 < kahan.accuracy <= 1
    assert f">= {min_bits_last_fc(10).bits} bits" in text

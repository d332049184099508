"""``lowbit qat`` on binary networks: the zoo's binary models, --weight-format/--act-format binary,
--binary-scale, --optimizer; wrong combinations end in exit status 2 with one line, no traceback."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit import zoo
from lowbit.cli.main import build_parser, main
from lowbit.errors import CheckpointError
from lowbit.integer import ir, load_integer

SMALL = ["--epochs", "1", "--train-size", "256", "--batch-size", "64", "--no-augment"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("lowbit: error:")
    return err


def test_qat_trains_binary_mlp_w1a1_from_random_init(tmp_path, capsys):
    """BNN (sign weights, sign activations) on 256 images for one epoch: exit 0, an integer model whose hidden
    layers run the XNOR-popcount kernel, and the flags in result.json. --weight-bits is ignored with a warning."""
    out = tmp_path / "bnn"
    argv = ["qat", "--model", "binary-mlp", "--weight-format", "binary", "--binary-scale", "sign",
            "--act-format", "binary", "--weight-bits", "4", "--stochastic-weights", *SMALL, "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "binary-mlp LSQ W binary-sign A binary, 1 epochs" in captured.out and "random init" in captured.out
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("lowbit: warning:")]
    assert warnings == ["lowbit: warning: --weight-bits 4 is ignored with --weight-format binary (1 bit: -1 or +1)"]
    result = json.loads((out / "result.json").read_text())
    assert (result["start"], result["weight"], result["act"]) == ("random init", "binary-sign", "binary")
    assert result["train"]["optimizer"] == "adam" and result["epochs"] == 1  # adam: the binary default
    assert result["config"]["stochastic_weights"] is True
    assert 0.0 <= result["accuracy"] <= 1.0
    im = load_integer(out / "model.safetensors")
    layers = [n.op.ir for n in im.nodes if isinstance(n.op.ir, ir.LAYERS)]
    assert len(layers) == 4  # 784-1024x3-10
    assert [op.weight_codes is ir.WeightCodes.BINARY for op in layers] == [False, True, True, False]
    assert [op.xnor for op in layers] == [False, True, True, False]


@pytest.mark.parametrize("argv,message", [
    (["--model", "mlp", "--weight-format", "binary", "--act-format", "binary"], "binary activation after ReLU"),
    (["--model", "resnet", "--act-format", "binary"], "binary activation after ReLU"),
    (["--model", "binary-mlp", "--weight-format", "binary", "--granularity", "tensor"],
     "QuantSpec(Binary(), PerChannel(0)) (CLI: --granularity channel)"),
    (["--model", "binary-mlp", "--binary-scale", "sign"], "--binary-scale sign sets the scale of binary weights"),
    (["--model", "binary-cnn", "--weight-format", "binary", "--distill", "0.5"], "has no shipped float weights"),
    (["--model", "binary-mlp", "--act-format", "binary", "--method", "faq"], "use --method lsq"),
    (["--model", "binary-mlp", "--weight-format", "binary", "--act-format", "int", "--act-bits", "1"],
     "act_bits=1 is out of range"),
    (["--model", "binary-mlp", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--model", "binary-mlp", "--stochastic-weights"], "--stochastic-weights draws binary signs: it needs "
                                                         "--weight-format binary"),
    (["--model", "binary-mlp", "--act-format", "ternary"], "invalid choice: 'ternary'"),
])
def test_wrong_binary_combinations_are_one_line_errors(argv, message, tmp_path, capsys):
    assert main(["qat", *argv, *SMALL, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err


def test_ptq_has_no_binary_format(capsys):
    assert main(["ptq", "--model", "mlp", "--weight-format", "binary"]) == 2
    assert "invalid choice: 'binary'" in capsys.readouterr().err


def test_qat_help_describes_the_binary_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["qat", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--weight-format {int,ternary,pow2,binary}", "--act-format {int,binary}", "--binary-scale {xnor,sign}",
                 "--optimizer {sgd,adam}", "binary-mlp", "binary-cnn", "XNOR-Net", "random init"):
        assert flag in text, flag


def test_binary_zoo_models_have_no_shipped_weights(capsys):
    for name in ("binary-mlp", "binary-cnn"):
        assert not zoo.entry(name).shipped
        with pytest.raises(CheckpointError, match=r"no shipped weights .*zoo\.build"):
            zoo.pretrained(name)
        a, b = zoo.start_model(name, seed=3), zoo.start_model(name, seed=3)  # the seeded random init
        assert not a.training
        for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), k
    assert zoo.start_model("mlp") is not None and zoo.entry("mlp").shipped
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "binary-mlp" in out and "no shipped weights" in out

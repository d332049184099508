"""Safety of the API and the CLI, as a user meets it (issue "Safety first", items 3, 6, 8, 9).

Each test makes the mistake a user makes and asserts what lowbit answers: the caller's model
untouched, a warning that names what was asked and what happened, or one clear error (exit
status 2 and one line on stderr for the CLI).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest
import torch
from torch import nn

from lowbit import zoo
from lowbit.cli.main import main
from lowbit.formats import IntFormat
from lowbit.granularity import PerChannel, PerTensor
from lowbit.errors import CheckpointError, ConfigError, DataError, LowbitWarning
from lowbit.graph.equalize import find_pairs
from lowbit.ptq import LayerRule, PTQConfig, calibrate, equalize_channels, int_weight, prepare, quantize, uint_act
from lowbit.qat import QATConfig, prepare_qat
from lowbit.spec import QuantSpec
from lowbit.weight_only import quantize_weights


def _snapshot(model: nn.Module):
    """Every parameter and buffer (cloned) and every module's training flag."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(n, m.training) for n, m in model.named_modules()],
            [(n, p.requires_grad) for n, p in model.named_parameters()])


def _assert_unchanged(before, model: nn.Module) -> None:
    state, flags, grads = before
    now_state, now_flags, now_grads = _snapshot(model)
    assert now_flags == flags and now_grads == grads
    assert now_state.keys() == state.keys()
    for k in state:
        assert torch.equal(now_state[k], state[k]), k  # bit-for-bit, BatchNorm running statistics included


def _images(n: int = 16) -> torch.Tensor:
    """Inputs far from the BatchNorm statistics the zoo CNN learnt: a train-mode pass would move them."""
    return torch.randn(n, 1, 28, 28) * 3 + 1


# ---------------------------------------------------------------- item 3: the caller's model is never changed


_CALLS = {
    "prepare": lambda m, x: prepare(m, PTQConfig(), (x[:1],)),
    "quantize": lambda m, x: quantize(m, [x]),
    "quantize_equalize": lambda m, x: quantize(m, [x], PTQConfig(equalize=True)),
    "equalize_channels": lambda m, x: equalize_channels(prepare(m, PTQConfig(), (x[:1],)), [x]),
    "prepare_qat": lambda m, x: prepare_qat(m, QATConfig(), x),
    "prepare_qat_bn": lambda m, x: prepare_qat(m, QATConfig(bn_freeze_steps=3), x),
    "prepare_qat_faq": lambda m, x: prepare_qat(m, QATConfig(method="faq"), x),
    "quantize_weights": lambda m, x: quantize_weights(m),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("call", sorted(_CALLS))
def test_quantizing_never_changes_the_callers_model(call, training):
    model = zoo.pretrained("cnn").train(training)
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _CALLS[call](model, _images())
    _assert_unchanged(before, model)


def test_a_train_mode_pass_would_have_moved_the_statistics():
    """The oracle the test above relies on: the same inputs in train mode do change the model."""
    model = zoo.pretrained("cnn").train()
    before = _snapshot(model)
    with torch.no_grad():
        model(_images())
    with pytest.raises(AssertionError):
        _assert_unchanged(before, model)


# ---------------------------------------------------------------- item 6: silent no-ops warn


def test_a_rule_that_matches_no_layer_warns_and_names_the_layers():
    mlp = zoo.pretrained("mlp")
    with pytest.warns(LowbitWarning, match=r"'layer\.fc2' matches no Conv/Linear layer.*fc1, fc2, fc3"):
        prepare(mlp, PTQConfig(rules=(LayerRule("layer.fc2", keep_float=True),)), (_images(1),))


def test_a_rule_shadowed_by_an_earlier_one_warns():
    rules = (LayerRule("fc*", weight=int_weight(6)), LayerRule("fc2", keep_float=True))
    with pytest.warns(LowbitWarning, match=r"'fc2' was ignored: every layer it matches is taken by an earlier rule"):
        prepare(zoo.pretrained("mlp"), PTQConfig(rules=rules), (_images(1),))


def test_keep_float_on_the_cli_that_matches_nothing_warns(capsys):
    assert main(["ptq", "--model", "mlp", "--calib", "8", "--keep-float", "layer.fc2"]) == 0
    assert "warning: lowbit: LayerRule pattern 'layer.fc2' matches no Conv/Linear layer" in capsys.readouterr().out


def test_a_matching_rule_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowbitWarning)
        q = prepare(zoo.pretrained("mlp"), PTQConfig(rules=(LayerRule("fc2", keep_float=True),)), (_images(1),))
    assert q.fc2.weight_quant is None


def test_equalize_without_any_pair_warns():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    prepared = prepare(model, PTQConfig(), (_images(1),))
    assert find_pairs(prepared) == []  # the oracle: there is nothing to equalize
    with pytest.warns(LowbitWarning, match="channel equalization was asked but found no layer pair"):
        quantize(model, [_images()], PTQConfig(equalize=True))


def test_w4_on_a_model_whose_only_layer_is_first_and_last_warns():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.warns(LowbitWarning, match=r"weight=int4 was asked but no layer gets it: '1' \(first and last "
                                           r"layer\) stays at first_last_bits=8; pass first_last_bits=None"):
        q = quantize(model, [_images()], PTQConfig(int_weight(4)))
    assert q.get_submodule("1").weight_quant.spec.format.bits == 8  # what the warning says happened
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowbitWarning)
        q = quantize(model, [_images()], PTQConfig(int_weight(4), first_last_bits=None))
    assert q.get_submodule("1").weight_quant.spec.format.bits == 4


def test_w4_on_a_deeper_model_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowbitWarning)
        prepare(zoo.pretrained("cnn"), PTQConfig(int_weight(4), uint_act(4)), (_images(1),))


@pytest.mark.parametrize("pattern", [5, None, "", b"fc1"])
def test_layer_rule_pattern_must_be_a_string(pattern):
    with pytest.raises(ConfigError, match="LayerRule.pattern must be a non-empty layer name pattern"):
        LayerRule(pattern)


def test_layer_rule_keep_float_with_bits_is_refused():
    with pytest.raises(ConfigError, match="keep_float and for weight/act specs"):
        LayerRule("fc1", weight=int_weight(4), keep_float=True)


# ---------------------------------------------------------------- item 8: errors that name the problem


class _RNNOnly(nn.Module):  # (nn.LSTM and nn.GRU are quantized: lowbit.nn.recurrent; the Elman RNN is not)
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(8, 16, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


class _RNNHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.RNN(8, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.att, self.fc = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.att(x, x, x)[0].mean(1))


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x, z):
        return self.a(x) + self.b(z)


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        return self.a(x), self.b(x)


class _Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: neither torch.fx nor torch.export captures it
            return self.a(x)
        return self.b(x)


def _relative_error(q: torch.Tensor, f: torch.Tensor) -> float:
    return float((q - f).norm() / f.norm())


def test_a_model_of_only_unsupported_layers_is_named():
    for call in (lambda m, x: quantize(m, [x]), lambda m, x: prepare_qat(m, QATConfig(), x)):
        with pytest.raises(ConfigError, match=r"no Conv or Linear layer it can quantize in _RNNOnly "
                                              r"\(it holds RNN, which lowbit does not quantize yet\)"):
            call(_RNNOnly(), torch.randn(4, 5, 8))


@pytest.mark.parametrize("cls", [_RNNHead, _Attention])
def test_rnn_and_attention_stay_float_with_a_warning_and_the_linear_is_quantized(cls):
    model, x = cls().eval(), torch.randn(64, 5, 8)
    with pytest.warns(UserWarning, match="stay in float: (rnn|att)"):
        q = quantize(model, [x])
    assert q.fc.weight_quant is not None and q.fc.weight_quant.mode == "quantize"
    assert any(n.startswith("input_quant") for n, _ in q.named_modules())  # the float op's output is quantized
    with torch.no_grad():
        assert _relative_error(q(x), model(x)) < 0.05  # an 8-bit result, not a silent wrong one


def test_a_tuple_output_model_is_quantized_output_by_output():
    model, x = _TupleOut().eval(), torch.randn(64, 8)
    q = quantize(model, [x])
    with torch.no_grad():
        for got, want in zip(q(x), model(x)):
            assert _relative_error(got, want) < 0.05


def test_a_multi_input_model_is_told_so():
    """PTQ and integer execution take every input of a batch; a batch or an example that gives too few inputs, and
    QAT, say so."""
    from lowbit.integer import to_integer

    model, x, z = _TwoInputs().eval(), torch.randn(64, 8), torch.randn(64, 8)
    q = quantize(model, [(x, z)])
    with torch.no_grad():
        assert _relative_error(q(x, z), model(x, z)) < 0.05
    with pytest.raises(DataError, match=r"calibration batch 0: no value for z, which _TwoInputs.forward\(x, z\) needs"):
        quantize(model, [torch.randn(4, 8)])
    with pytest.raises(DataError, match=r"example_inputs: no value for z"):
        prepare(model, PTQConfig(), (torch.randn(1, 8),))
    with pytest.raises(ConfigError, match=r"_TwoInputs.forward takes 2 inputs \(x, z\).*multi-input models "
                                          "are not supported yet there"):
        prepare_qat(model, QATConfig(), torch.randn(4, 8))
    with pytest.raises(ConfigError, match=r"to_integer: the model takes 2 inputs \(x, z\); example_inputs must be a "
                                          "tuple of as many tensors"):
        to_integer(q, (x[:2],))
    with torch.no_grad():
        assert torch.equal(to_integer(q, (x[:2], z[:2]))(x, z), q(x, z))  # both inputs: integer execution
    with pytest.raises(DataError, match=r"example_inputs: 2 positional inputs, but _TupleOut.forward takes at most 1"):
        prepare(_TupleOut(), PTQConfig(), (torch.randn(1, 8), torch.randn(1, 8)))


@pytest.mark.parametrize("make", [lambda m, x: torch.jit.script(m), lambda m, x: torch.jit.trace(m, x)])
def test_torchscript_is_refused_with_the_fix(make):
    float_model, x = zoo.pretrained("mlp"), _images(4)
    scripted = make(float_model, x)
    for call in (lambda m: quantize(m, [x]), lambda m: prepare(m, PTQConfig(), (x[:1],)),
                 lambda m: prepare_qat(m, QATConfig(), x), lambda m: quantize_weights(m)):
        with pytest.raises(ConfigError, match="TorchScript is not accepted; pass the eager nn.Module"):
            call(scripted)


def test_a_data_dependent_branch_names_the_layer_no_batch_reached(capfd):
    x = torch.randn(16, 8).abs()  # every batch takes the first branch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"activation quantizers of b \(input\) saw no data in calibration: "
                                            "no batch reached them"):
            quantize(_Branch(), [x])
    assert "def forward" not in capfd.readouterr().err  # no graph dumps from torch.export on the terminal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="lowbit QAT needs a graph of _Branch"):
            prepare_qat(_Branch(), QATConfig(), x)
        model = _Branch().eval()
        q = quantize(model, [x, -x])  # batches that reach both branches calibrate both
    with torch.no_grad():
        assert _relative_error(q(-x), model(-x)) < 0.05 and _relative_error(q(x), model(x)) < 0.05


def test_a_second_calibration_batch_of_another_shape_names_the_batch():
    model = zoo.pretrained("cnn")
    with pytest.raises(DataError, match=r"calibration batch 1 of shape \(4, 1, 32, 32\) does not fit the model "
                                        r"\(batch 0 had shape \(4, 1, 28, 28\)\)"):
        quantize(model, [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 32, 32)])
    with pytest.raises(DataError, match=r"calibration batch 2 has shape \(4, 784\) but batch 0 had \(4, 1, 28, 28\)"):
        calibrate(prepare(model, PTQConfig(), (_images(1),)),
                  [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.randn(4, 784)], progress=False)


def test_a_calibration_tensor_instead_of_batches_is_refused():
    with pytest.raises(DataError, match=r"an iterable of batches, e.g. \[x\]"):
        quantize(zoo.pretrained("mlp"), _images())


def _copy_weights(tmp_path, name="mlp"):
    shutil.copy(zoo.weights_path(name), tmp_path / f"{name}.npz")
    return json.loads(zoo.weights_path(name).with_suffix(".json").read_text())


def test_zoo_metadata_that_is_a_list_or_lacks_the_accuracy(tmp_path, capsys):
    meta = _copy_weights(tmp_path)
    (tmp_path / "mlp.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="holds a JSON list, not the object lowbit writes"):
        zoo.pretrained("mlp", tmp_path)
    assert main(["zoo", "eval", "mlp", "--weights-dir", str(tmp_path)]) == 2
    assert _one_error_line(capsys).endswith("re-create it with 'lowbit zoo train'")
    del meta["test_accuracy"]
    (tmp_path / "mlp.json").write_text(json.dumps(meta))
    zoo.pretrained("mlp", tmp_path)  # the weights themselves are fine
    with pytest.raises(CheckpointError, match="has no test_accuracy in"):
        zoo.shipped_accuracy("mlp", tmp_path)


# ---------------------------------------------------------------- CLI: one line, exit status 2


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv,message", [
    (["export", "--model", "mlp", "--onnx", "--opset", "99"], "--opset must be 13.."),
    (["export", "--model", "mlp", "--opset", "18"], "--opset sets the ONNX opset of --onnx"),
    (["export", "--model", "mlp", "--residual", "requantize"], "--residual chooses how --onnx writes residual adds"),
    (["bench", "--model", "mlp", "--threads", "0"], "argument --threads: must be 1..1024, got 0"),
    (["bench", "--model", "mlp", "--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    (["bench", "--model", "mlp", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
    (["bench", "--model", "mlp", "--batch", "-1"], "argument --batch: must be >= 1, got -1"),
    (["bench", "--model", "mlp", "--batch", "1", "100000"], "--batch 100000 is more than the 10,000 images"),
    (["qat", "--model", "mlp", "--train-size", "0"], "argument --train-size: must be >= 1, got 0"),
    (["qat", "--model", "mlp", "--train-size", "-5"], "argument --train-size: must be >= 1, got -5"),
    (["qat", "--model", "mlp", "--train-size", "100000000"], "--train-size 100000000 is more than the 55,000"),
    (["qat", "--model", "mlp", "--lr", "inf"], "argument --lr: must be a finite number > 0.0, got inf"),
    (["qat", "--model", "mlp", "--distill", "nan"], "argument --distill: must be a finite number in [0.0, 1.0]"),
    (["qat", "--model", "mlp", "--granularity", "tensor", "--bn-freeze-steps", "5"],
     "bn_freeze_steps (BatchNorm trained unfolded) needs per-channel weight steps"),
    (["ptq", "--model", "mlp", "--calib", "10000000"], "--calib 10000000 is more than the 55,000 images"),
    (["export", "--model", "mlp", "--calib", "10000000"], "--calib 10000000 is more than the 55,000 images"),
    (["ptq", "--model", "mlp", "--equalize", "2"], "argument --equalize: must be a finite number in [0.0, 1.0]"),
    (["ptq", "--weight-bits", "x"], "argument --weight-bits: invalid int value: 'x'"),
    (["report", "--rounds", "-1"], "argument --rounds: must be >= 0, got -1"),
    (["zoo", "train", "mlp", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["nosuch"], "invalid choice: 'nosuch'"),
])
def test_cli_refuses_bad_numbers_on_one_line(argv, message, capsys):
    assert main(argv) == 2
    assert message in _one_error_line(capsys)


def test_cli_refuses_bad_paths_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (["qat", "--model", "mlp", "--out", str(a_file)], "--out"),
        (["qat", "--model", "mlp", "--out", "/proc/lowbit-cannot-be-here"], "cannot be written"),
        (["zoo", "train", "mlp", "--out", str(a_file)], "is a file, not a folder"),
        (["export", "--model", "mlp", "--out", str(a_file)], "is a file, not a folder"),
        (["report", "--out", str(a_file)], "is a file, not a folder"),
        (["run", "--models", "mlp", "--report-dir", str(a_file)], "is a file, not a folder"),
        (["ptq", "--model", "mlp", "--json", str(folder)], "is a folder: pass a file name"),
        (["ptq", "--model", "mlp", "--json", "/proc/lowbit-no/x.json"], "cannot be made or written"),
        (["ptq", "--model", "mlp", "--data-dir", str(a_file)], "--data-dir"),
        (["ptq", "--model", "mlp", "--data-dir", str(tmp_path / "missing")], "does not exist"),
        (["zoo", "eval", "mlp", "--weights-dir", str(a_file)], "is a file: pass the folder that holds mlp.npz"),
        (["report", "--energy-table", str(folder)], "is a folder, not a file"),
        (["report", "--energy-table", str(tmp_path / "missing.json")], "does not exist"),
        (["report", "--energy-table", str(a_file)], "is not a .json file"),
    ]
    (tmp_path / "list.json").write_text("[1, 2]")
    cases.append((["report", "--energy-table", str(tmp_path / "list.json")], "is not a lowbit energy table"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _one_error_line(capsys), argv
    assert not (tmp_path / "folder" / "checkpoint.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder", "list.json"]  # nothing written


def test_qat_config_clash_is_refused_at_configuration():
    with pytest.raises(ConfigError, match="needs per-channel weight steps"):
        QATConfig(QuantSpec(IntFormat(4), PerTensor()), bn_freeze_steps=0)
    assert QATConfig(QuantSpec(IntFormat(4), PerChannel(0)), bn_freeze_steps=0).bn_freeze_steps == 0


# ---------------------------------------------------------------- the simulation's input, and what is left to quantize


def test_the_simulation_refuses_an_input_of_another_shape_naming_input_layer_and_shapes():
    import copy

    from lowbit.errors import ShapeError
    from lowbit.integer import to_integer

    x = _images(8)
    q = quantize(zoo.pretrained("cnn"), [x])
    for bad in (torch.randn(4, 3, 28, 28), torch.randn(4, 1, 27, 27), torch.randn(1, 28, 28)):
        for model in (q, copy.deepcopy(q)):  # a deep copy of the GraphModule keeps the check
            with pytest.raises(ShapeError, match=r"the quantized model's input 'x' \(it feeds layer 'conv1'\) expects "
                                                 r"shape \(N, 1, 28, 28\), .* got " + re.escape(str(tuple(bad.shape)))):
                model(bad)
    with pytest.raises(ShapeError, match=r"expects shape \(N, 1, 28, 28\), .* got \(2, 3, 28, 28\)"):
        to_integer(q, (torch.randn(2, 3, 28, 28),))
    with torch.no_grad():
        assert q(x[:3]).shape == (3, 10)  # any batch size
        assert torch.equal(to_integer(q, (x[:2],))(x), q(x))


def test_rules_that_keep_every_layer_float_are_refused(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error comes first, without warnings before it
        with pytest.raises(ConfigError, match=r"LayerRule keep_float pattern '\*' \(CLI: --keep-float\) keeps every "
                                              r"Conv/Linear layer in float \(fc1, fc2, fc3\): nothing is left"):
            quantize(zoo.pretrained("mlp"), [_images(4)], PTQConfig(rules=(LayerRule("*", keep_float=True),)))
    assert main(["ptq", "--model", "mlp", "--calib", "8", "--keep-float", "*"]) == 2
    assert "keeps every Conv/Linear layer in float" in _one_error_line(capsys)


def test_bench_refuses_a_loaded_model_of_another_zoo_model(tmp_path, capsys):
    from lowbit.integer import save_integer, to_integer

    x = _images(8)
    p = save_integer(to_integer(quantize(zoo.pretrained("cnn"), [x]), (x[:2],)), tmp_path / "cnn.safetensors")
    assert main(["bench", "--model", "mlp", "--calib", "8", "--rounds", "1", "--batch", "1", "--load", str(p)]) == 2
    err = _one_error_line(capsys)
    assert "is not a quantized 'mlp': its 4 layers have weights 10x128, 32x1x5x5" in err
    assert "pass the --model it was made from" in err

"""`lowbit ptq` on the user's own model: a Python factory, a weights file, arrays of samples."""

import json
import textwrap
import warnings

import numpy as np
import pytest
import torch

from lowbit.cli.main import main
from lowbit.ptq import PTQConfig, quantize
from lowbit.user_model import fidelity, load_model, load_samples

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    class ConvLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 8, 9, stride=4)
            self.lstm = nn.LSTM(8, 32, batch_first=True)
            self.fc = nn.Linear(32, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x)).transpose(1, 2)
            h, _ = self.lstm(h)
            return self.fc(h[:, -1])

    def make_model():
        return ConvLSTM()

    def not_a_model():
        return 3
''')


@pytest.fixture()
def user(tmp_path):
    (tmp_path / "model.py").write_text(FACTORY)
    torch.manual_seed(0)
    spec = f"{tmp_path / 'model.py'}:make_model"
    model = load_model(spec)
    for p in model.parameters():  # other weights than the factory's init: loading must be real
        p.data.uniform_(-0.3, 0.3)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    np.savez(tmp_path / "w.npz", **state)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.standard_normal((96, 1, 200)).astype(np.float32))
    np.savez(tmp_path / "test.npz", x=rng.standard_normal((50, 1, 200)).astype(np.float32), y=rng.integers(0, 3, 50))
    return tmp_path, spec, model


def test_ptq_on_a_factory_with_weights_reports_fidelity_and_the_integer_lstm(user, capsys):
    path, spec, model = user
    out_json = path / "r.json"
    rc = main(["ptq", "--model", spec, "--weights", str(path / "w.npz"), "--calib-data", str(path / "calib.npy"),
               "--test-data", str(path / "test.npz"), "--json", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0, text
    result = json.loads(out_json.read_text())
    # the oracle: the same quantization through the Python API on the same model and batches
    calib = load_samples(path / "calib.npy", "calib")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(model.eval(), calib.batches(64, 32), PTQConfig())
    want = fidelity(model, q, load_samples(path / "test.npz", "test"))
    assert result["cosine_mean"] == pytest.approx(want.cosine_mean) and result["agreement"] == want.agreement
    assert 0.95 < result["cosine_min"] <= result["cosine_mean"] <= 1.0
    assert result["accuracy"] is not None and result["float_accuracy"] == want.float_accuracy
    assert result["quantized_mac_share"] > 0.99  # the LSTM is quantized too (lowbit.nn.recurrent)
    assert "100.0% of MACs quantized" in text
    # conv1d, transpose, LSTM, output[:, -1], linear: all lower, and the integer model equals the simulation
    assert result["to_integer"] is True and "equal to the simulation on all 50 samples: True" in text


def test_pt_weights_load_the_same_model(user):
    path, spec, model = user
    a = load_model(spec, str(path / "w.npz"))
    b = load_model(spec, str(path / "w.pt"))
    x = torch.randn(2, 1, 200)
    assert torch.equal(a(x), model(x)) and torch.equal(b(x), model(x))


@pytest.mark.parametrize("case,args,message", [
    ("no calibration data", ["--weights", "w.npz"], "needs --calib-data"),
    ("unknown function", ["--calib-data", "calib.npy"], "has no function 'missing'"),
    ("not a module", ["--calib-data", "calib.npy"], "returned a value of type int, not a torch.nn.Module"),
    ("weights of another model", ["--weights", "bad.npz", "--calib-data", "calib.npy"], "does not fit the model: missing"),
    ("samples without x", ["--calib-data", "nox.npz"], "needs an array 'x'"),
    ("zoo model with user data", ["--calib-data", "calib.npy"], "are for your own models"),
    ("corrupt samples", ["--calib-data", "corrupt.npz"], "corrupt.npz: cannot be read as .npz samples"),
    ("corrupt weights", ["--weights", "corrupt.safetensors", "--calib-data", "calib.npy"],
     "cannot be read as safetensors"),
    ("test samples of another shape", ["--calib-data", "calib.npy", "--test-data", "wide.npy"],
     "samples of shape (3, 200) (per sample) do not fit the model"),
    ("a factory file that does not import", ["--calib-data", "calib.npy"], "broken.py failed: SyntaxError"),
])
def test_bad_user_input_is_one_clear_line(user, capsys, case, args, message):
    path, spec, _ = user
    np.savez(path / "bad.npz", **{"fc.weight": np.zeros((3, 32), np.float32)})
    np.savez(path / "nox.npz", inputs=np.zeros((4, 1, 200), np.float32))
    (path / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    (path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00 not safetensors")
    np.save(path / "wide.npy", np.zeros((4, 3, 200), np.float32))
    (path / "broken.py").write_text("def make_model(:\n")
    model = {"unknown function": spec.replace("make_model", "missing"),
             "not a module": spec.replace("make_model", "not_a_model"), "zoo model with user data": "cnn",
             "a factory file that does not import": f"{path / 'broken.py'}:make_model"}.get(case, spec)
    argv = ["ptq", "--model", model] + [str(path / a) if a.endswith((".npz", ".npy", ".safetensors")) else a for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_torch_export_program_runs_like_its_module_and_a_fixed_batch_is_refused(user, capsys):
    from lowbit.cost.profile import profile

    path, spec, model = user
    model.eval()
    x = torch.randn(2, 1, 200)
    dynamic = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(dynamic, path / "dyn.pt2")
    torch.export.save(torch.export.export(model, (x,)), path / "fixed.pt2")
    lifted = load_model(str(path / "dyn.pt2"))
    other = torch.randn(5, 1, 200)
    assert torch.allclose(lifted(other), model(other), atol=1e-6)
    # every MAC is counted in the lifted graph too: its LSTM is a functional aten call there
    assert sum(r.macs for r in profile(lifted, (other,))) == sum(r.macs for r in profile(model, (other,)))
    out_json = path / "p.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["ptq", "--model", str(path / "dyn.pt2"), "--calib-data", str(path / "calib.npy"), "--json",
                   str(out_json)])
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert result["cosine_min"] > 0.95 and result["quantized_mac_share"] < 0.1
    capsys.readouterr()
    assert main(["ptq", "--model", str(path / "fixed.pt2"), "--calib-data", str(path / "calib.npy")]) == 2
    assert "exported with a fixed batch of 2 (input x)" in capsys.readouterr().err


def test_the_dynamic_mode_quantizes_the_lstm_the_static_one_leaves_float(user, capsys):
    path, spec, _ = user
    out_json = path / "d.json"
    common = ["ptq", "--model", spec, "--weights", str(path / "w.npz"), "--calib-data", str(path / "calib.npy"),
              "--test-data", str(path / "test.npz")]
    assert main([*common, "--dynamic", "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert result["quantized_mac_share"] > 0.95 and result["cosine_min"] > 0.99  # the LSTM's MACs are int8 now
    capsys.readouterr()
    assert main([*common, "--dynamic", "--auto-mixed", "0.1"]) == 2
    assert "--dynamic and --auto-mixed exclude each other" in capsys.readouterr().err

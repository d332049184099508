"""`lowbit export` and `lowbit bench` on the user's own model (a CREPE-style pitch model from a factory file)."""

import textwrap

import numpy as np
import pytest
import torch

from lowbit.cli.main import main
from lowbit.integer import load_integer

FACTORY = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Pitch(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(1, 8, (16, 1), (4, 1)), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 8, 5)

        def forward(self, x):
            x = x[:, None, :, None]
            x = F.max_pool2d(self.b1(F.relu(self.c1(F.pad(x, (0, 0, 6, 6))))), (2, 1), (2, 1))
            return torch.sigmoid(self.fc(x.permute(0, 2, 1, 3).reshape(-1, 64)))

    def make():
        return Pitch()
''')


@pytest.fixture()
def user(tmp_path):
    (tmp_path / "pitch.py").write_text(FACTORY)
    spec = f"{tmp_path / 'pitch.py'}:make"
    from lowbit.user_model import load_model

    torch.manual_seed(0)
    model = load_model(spec)
    model.b1.running_mean.uniform_(-0.5, 0.5)
    model.b1.weight.data.uniform_(-1.5, 1.5)
    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.standard_normal((40, 64)).astype(np.float32))
    np.save(tmp_path / "test.npy", rng.standard_normal((24, 64)).astype(np.float32))
    return tmp_path, spec


def test_export_writes_an_integer_model_and_onnx_that_agree(user, capsys):
    from lowbit.export.ort import session

    path, spec = user
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


def test_ptq_says_the_users_model_lowers(user, capsys):
    path, spec = user
    rc = main(["ptq", "--model", spec, "--weights", str(path / "w.npz"), "--calib-data", str(path / "calib.npy")])
    text = capsys.readouterr().out
    assert rc == 0 and "integer model: lowers" in text and "equal to the simulation on all 40 samples: True" in text


def test_bench_times_the_users_model(user, capsys):
    path, spec = user
    rc = main(["bench", "--model", spec, "--weights", str(path / "w.npz"), "--calib-data", str(path / "calib.npy"),
               "--batch", "1", "8", "--rounds", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and text.count("lowbit integer") == 2, text


def test_zoo_models_refuse_the_user_model_options(user, capsys):
    path, _ = user
    rc = main(["export", "--model", "cnn", "--calib-data", str(path / "calib.npy"), "--out", str(path / "o")])
    assert rc != 0 and "--calib-data belong to your own model" in capsys.readouterr().err

import textwrap

import numpy as np
import pytest
import torch
from hypothesis import settings

settings.register_profile("lowbit", deadline=None, max_examples=60, derandomize=True)
settings.load_profile("lowbit")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


USER_FACTORY = textwrap.dedent('''
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
def pitch_user(tmp_path):
    """A CREPE-style pitch model of the user's (factory file, weights as .npz, calibration and test samples as .npy):
    ``(folder, 'FILE.py:make')``."""
    (tmp_path / "pitch.py").write_text(USER_FACTORY)
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

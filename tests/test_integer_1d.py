"""1-D convolutions and pools in the integer model: the 2-D ops of height 1 between unsqueeze and squeeze.

Oracles: the simulation (bit for bit, on every kernel path), the float model (closeness), the file
form (save/load), and onnxruntime running the exported graph."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.errors import ShapeError
from lowbit.export.onnx_qdq import export_onnx
from lowbit.export.ort import session
from lowbit.integer import Kernels, load_integer, save_integer, to_integer
from lowbit.ptq import PTQConfig, quantize


class Audio1d(nn.Module):
    """Conv1d-BN-ReLU-MaxPool1d, a grouped conv, a residual conv, an average pool, a global pool, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1, self.p1 = nn.Conv1d(1, 16, 9, stride=2, padding=4), nn.BatchNorm1d(16), nn.MaxPool1d(2)
        self.c2, self.b2 = nn.Conv1d(16, 32, 5, padding=2, groups=2), nn.BatchNorm1d(32)
        self.c3 = nn.Conv1d(32, 32, 3, padding=2, dilation=2)
        self.avg = nn.AvgPool1d(2)
        self.gap, self.fc = nn.AdaptiveAvgPool1d(1), nn.Linear(32, 5)

    def forward(self, x):
        x = self.p1(torch.relu(self.b1(self.c1(x))))
        x = torch.relu(self.b2(self.c2(x)))
        x = self.avg(torch.relu(self.c3(x) + x))
        return self.fc(torch.flatten(self.gap(x), 1))


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = Audio1d().eval()
    for bn in (m.b1, m.b2):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def lowered():
    model = _model()
    x = torch.randn(48, 1, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(model, [x[:32]], PTQConfig())
    return model, q, to_integer(q, (x[:2],)), x[32:]


def test_a_chain_of_1d_layers_stays_4d_between_one_unsqueeze_and_one_squeeze(lowered):
    kinds = [n.op.ir.kind for n in lowered[2].nodes]
    assert kinds == ["quantize", "unsqueeze", "conv2d", "maxpool2d", "conv2d", "conv2d", "avgpool2d", "avgpool2d",
                     "squeeze", "flatten", "linear"]


@pytest.mark.parametrize("kernels", list(Kernels))
def test_1d_integer_model_equals_its_simulation_on_every_kernel_path(lowered, kernels):
    model, q, im, x = lowered
    with torch.no_grad():
        sim = q(x)
        assert torch.equal(im.with_kernels(kernels)(x), sim)
        assert (sim - model(x)).abs().max() < 0.05 * model(x).abs().max()


def test_1d_integer_model_survives_its_file(lowered, tmp_path):
    _, q, im, x = lowered
    back = load_integer(save_integer(im, tmp_path / "audio.safetensors"))
    assert torch.equal(back(x), im(x))


def test_1d_integer_model_runs_in_onnxruntime(lowered, tmp_path):
    _, q, im, x = lowered
    path = export_onnx(im, tmp_path / "audio.onnx", (1, 1, 256))
    sess = session(path, threads=1)
    got = np.concatenate([sess.run(["output"], {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    ref = im(x).numpy()
    lsb = float(im.nodes[-1].op.tensors["acc_scale"].max())
    assert np.abs(got - ref).max() <= 2 * lsb * np.abs(im.nodes[-1].op.tensors["weight"].numpy()).sum(1).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_a_squeeze_of_a_dimension_that_is_not_1_is_refused(lowered):
    im = lowered[2]
    squeeze = next(n for n in im.nodes if n.op.ir.kind == "squeeze")
    with pytest.raises(ShapeError, match=r"squeeze\(2\) of a tensor of shape \(2, 32, 3, 1\)"):
        squeeze.op(torch.zeros(2, 32, 3, 1, dtype=torch.int8))


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 7), st.integers(1, 3), st.integers(0, 3), st.integers(1, 2), st.sampled_from([1, 2, 4]),
       st.integers(0, 10_000))
def test_any_conv1d_geometry_lowers_bit_exactly(k, stride, pad, dil, groups, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv1d(4, 8, k, stride, pad, dil, groups), nn.ReLU(), nn.Conv1d(8, 3, 1)).eval()
    x = torch.randn(6, 4, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(model, [x], PTQConfig())
    im = to_integer(q, (x[:2],))
    with torch.no_grad():
        assert torch.equal(im(x), q(x))
        assert torch.equal(im.with_kernels(Kernels.REFERENCE)(x), q(x))


def test_the_integer_cost_of_1d_layers_equals_the_simulation_profile(lowered):
    from lowbit.cost.integer import profile_integer
    from lowbit.cost.profile import profile

    _, q, im, x = lowered
    ours = [r.macs for r in profile_integer(im) if r.kind in ("linear", "conv2d")]
    sim = [r.macs for r in profile(q, (x[:1],)) if r.kind in ("linear", "conv")]
    assert ours == sim and len(ours) == 4

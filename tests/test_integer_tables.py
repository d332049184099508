"""Elementwise float ops on quantized tensors as lookup tables: a BatchNorm after an activation, sigmoid,
tanh, GELU; and the layout ops permute, reshape and new axes (a CREPE-style pitch model needs all of them).

Oracles: the float ops themselves (each table entry is the op of the value it stands for), the simulation
(the integer model bit for bit, on every kernel path), the float model (closeness), the file form."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.functional.lookup import grid_values, table_index
from lowbit.integer import Kernels, load_integer, save_integer, to_integer
from lowbit.nn.lookup import Lookup
from lowbit.nn.qparams import QParams
from lowbit.ptq import PTQConfig, quantize


class Pitch(nn.Module):
    """CREPE's shape in small: audio frames as (N, 1, T, 1), asymmetric pads, conv-ReLU-BatchNorm-maxpool,
    a permute and reshape into the classifier, a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, (16, 1), (4, 1)), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, (8, 1)), nn.BatchNorm2d(8)
        self.fc = nn.Linear(32, 10)

    @staticmethod
    def layer(x, conv, bn, pad):
        return F.max_pool2d(bn(F.relu(conv(F.pad(x, pad)))), (2, 1), (2, 1))

    def forward(self, x):
        x = x[:, None, :, None]
        x = self.layer(x, self.c1, self.b1, (0, 0, 6, 6))
        x = self.layer(x, self.c2, self.b2, (0, 0, 3, 4))
        x = x.permute(0, 2, 1, 3).reshape(-1, 32)
        return torch.sigmoid(self.fc(x))


def _pitch(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = Pitch().eval()
    for bn in (m.b1, m.b2):  # some negative scales: the max pool then sees a decreasing map of its input
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(-1.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return m


def _quantize(model: nn.Module, data: list, config: PTQConfig = PTQConfig()) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize(model, data, config)


@pytest.fixture(scope="module")
def pitch():
    model = _pitch()
    x = torch.randn(96, 64)
    q = _quantize(model, [x[:32], x[32:64]])
    return model, q, to_integer(q, (x[:2],)), x[64:]


def test_the_pitch_model_lowers_with_tables_and_layout_ops(pitch):
    kinds = [n.op.ir.kind for n in pitch[2].nodes]
    assert kinds == ["unsqueeze", "unsqueeze", "pad", "quantize", "conv2d", "table", "maxpool2d", "pad", "conv2d",
                     "table", "maxpool2d", "permute", "reshape", "linear", "table"]
    tables = [n for n in pitch[2].nodes if n.op.ir.kind == "table"]
    assert [tuple(t.op.tensors["table"].shape) for t in tables] == [(8, 256), (8, 256), (1, 256)]
    assert [t.op.tensors["table"].dtype for t in tables] == [torch.int8, torch.int8, torch.float32]


@pytest.mark.parametrize("kernels", list(Kernels))
def test_the_pitch_integer_model_equals_its_simulation_on_every_kernel_path(pitch, kernels):
    model, q, im, x = pitch
    with torch.no_grad():
        sim = q(x)
        assert torch.equal(im.with_kernels(kernels)(x), sim)
        assert torch.equal(im.with_kernels(kernels)(x[:1]), sim[:1])
        assert (sim - model(x)).abs().max() < 0.03  # sigmoid outputs in (0, 1)


def test_the_pitch_integer_model_survives_its_file(pitch, tmp_path):
    _, _, im, x = pitch
    back = load_integer(save_integer(im, tmp_path / "pitch.safetensors"))
    assert torch.equal(back(x), im(x))


def test_the_simulation_looks_up_what_the_float_ops_give(pitch):
    """Each BatchNorm and the sigmoid became a table; the tabulated simulation equals the one that runs the float
    ops, but where float rounding inside the ops moves a value across a rounding boundary of the next grid."""
    from lowbit.ptq import calibrate, convert, prepare

    q = pitch[1]
    names = sorted(n for n, m in q.named_modules() if isinstance(m, Lookup))
    assert names == ["b1_lookup", "b2_lookup", "sigmoid_lookup"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    x = torch.randn(40, 64)
    p = prepare(_pitch(), PTQConfig(), (x[:2],))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibrate(p, [x[:32]], progress=False)
    tabled, untabled = convert(copy.deepcopy(p)), convert(p, tables=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in untabled.modules())
    with torch.no_grad():
        diff = (untabled(x) - tabled(x)).abs()
    # the float BatchNorm rounds a few values across a half step of the next grid (hence the tables: the integer
    # model is bit-exact with the tabulated simulation); the outputs move by a step of the fc's grid there
    assert (diff > 0).float().mean() < 0.05 and diff.max() < 0.002


GRIDS = st.builds(lambda bits, signed, scale, z: QParams(scale, z if not signed else 0, IntFormat(bits, signed)),
                  st.integers(2, 8), st.booleans(), st.floats(1e-3, 0.5), st.integers(0, 3))
FNS = [torch.sigmoid, torch.tanh, F.gelu, F.silu, nn.Hardswish(), nn.ELU(), nn.LeakyReLU(0.2), nn.Softplus()]


@settings(max_examples=40, deadline=None)
@given(GRIDS, st.sampled_from(FNS), st.integers(0, 10_000))
def test_a_table_holds_the_function_of_every_grid_value(q, fn, seed):
    from lowbit.functional.lookup import tabulate

    torch.manual_seed(seed)
    table = tabulate(fn, q)
    x = (torch.randint(q.fmt.qmin, q.fmt.qmax + 1, (5, 7)) - q.zero_point).float() * q.scale
    got = Lookup(q, table, "f")(x)
    torch.testing.assert_close(got, fn(x), rtol=1e-6, atol=1e-7)
    assert torch.equal(grid_values(q)[table_index(q, x)], x)  # the column of each value stands for it


def test_a_per_channel_table_is_the_batchnorm_of_each_channel():
    from lowbit.functional.lookup import tabulate

    bn = nn.BatchNorm1d(5).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.weight.data.uniform_(-2, 2)
    q = QParams(0.05, 3, IntFormat(8, False))
    x = (torch.randint(0, 256, (4, 5, 6)) - 3).float() * 0.05
    lut = Lookup(q, tabulate(lambda v: bn(v), q, channels=5, ndim=3), "bn")
    torch.testing.assert_close(lut(x), bn(x), rtol=1e-6, atol=1e-6)


def test_a_batchnorm_then_a_sigmoid_become_one_table():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.out = nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)

        def forward(self, x):
            return self.out(torch.sigmoid(self.bn(torch.relu(self.fc(x)))))

    torch.manual_seed(1)
    m = M().eval()
    m.bn.weight.data.uniform_(-2, 2)
    x = torch.randn(64, 6)
    q = _quantize(m, [x])
    lookups = [mod for mod in q.modules() if isinstance(mod, Lookup)]
    assert len(lookups) == 1 and lookups[0].table.shape == (4, 256) and "sigmoid" in lookups[0].source
    im = to_integer(q, (x[:2],))
    assert [n.op.ir.kind for n in im.nodes] == ["quantize", "linear", "table", "linear"]
    with torch.no_grad():
        assert torch.equal(im(x), q(x))
        assert (q(x) - m(x)).abs().max() < 0.05


@pytest.mark.parametrize("act", [nn.GELU(), nn.Tanh(), nn.SiLU(), nn.GELU(approximate="tanh")])
def test_an_mlp_with_a_smooth_activation_runs_in_integers(act):
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(12, 32), act, nn.Linear(32, 32), act, nn.Linear(32, 5)).eval()
    x = torch.randn(80, 12)
    q = _quantize(m, [x[:48]])
    im = to_integer(q, (x[:2],))
    assert [n.op.ir.kind for n in im.nodes] == ["quantize", "linear", "table", "linear", "table", "linear"]
    with torch.no_grad():
        assert torch.equal(im(x[48:]), q(x[48:]))
        assert (q(x[48:]) - m(x[48:])).abs().max() < 0.1 * m(x[48:]).abs().max()


def test_a_table_whose_float_output_feeds_an_add_is_refused_by_name():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.sigmoid(h) + x)

    torch.manual_seed(3)
    x = torch.randn(32, 6)
    q = _quantize(M().eval(), [x])
    with pytest.raises(ConfigError, match="sigmoid.*float output feeds"):
        to_integer(q, (x[:2],))


def test_a_permute_of_the_batch_and_a_reshape_across_it_are_refused():
    class Swap(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.fc, self.f = nn.Linear(8, 8), f

        def forward(self, x):
            return self.f(self.fc(x))

    x = torch.randn(4, 2, 8)
    for f, msg in ((lambda y: y.permute(1, 0, 2), "moves the batch"), (lambda y: y.reshape(-1, 8), "batch")):
        q = _quantize(Swap(f).eval(), [x])
        with pytest.raises(ConfigError, match=msg):
            to_integer(q, (x[:4],))


def test_wider_than_8_bit_grids_keep_their_float_op():
    from lowbit.ptq import uint_act

    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 2)).eval()
    x = torch.randn(32, 6)
    q = _quantize(m, [x], PTQConfig(act=uint_act(16)))
    assert not any(isinstance(mod, Lookup) for mod in q.modules())


def test_quantization_aware_training_keeps_the_float_ops():
    from lowbit.qat import QATConfig, prepare_qat

    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 2))
    gm = prepare_qat(m, QATConfig(method="faq"), torch.randn(16, 6))
    assert not any(isinstance(mod, Lookup) for mod in gm.modules())
    gm(torch.randn(4, 6)).sum().backward()
    assert gm.get_submodule("0").weight.grad.abs().sum() > 0  # the gradient crosses the sigmoid


def test_the_pitch_integer_model_runs_in_onnxruntime_bit_exactly(pitch, tmp_path):
    import numpy as np

    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    _, _, im, x = pitch
    sess = session(export_onnx(im, tmp_path / "pitch.onnx", (1, 64)), threads=1)
    got = np.concatenate([sess.run(["output"], {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    assert np.array_equal(got, im(x).numpy())


class Branches(nn.Module):
    """Two conv branches on their own grids joined by torch.cat (as Inception and U-Net skips do), then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 5, padding=2)
        self.c, self.fc = nn.Conv2d(10, 8, 3), nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.relu(self.c(y)).flatten(1))


def test_a_concat_of_branches_on_their_own_grids_lowers_bit_exactly(tmp_path):
    import numpy as np

    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    torch.manual_seed(6)
    model = Branches().eval()
    with torch.no_grad():
        model.b.weight.mul_(3.0)  # the second branch spans another range: another grid
    x = torch.randn(48, 3, 8, 8)
    q = _quantize(model, [x[:32]])
    im = to_integer(q, (x[:2],))
    kinds = [n.op.ir.kind for n in im.nodes]
    assert "concat" in kinds and kinds.count("table") >= 1  # at least one branch is mapped onto the joint grid
    with torch.no_grad():
        for k in Kernels:
            assert torch.equal(im.with_kernels(k)(x[32:]), q(x[32:]))
        assert (q(x[32:]) - model(x[32:])).abs().max() < 0.05 * model(x[32:]).abs().max()
    back = load_integer(save_integer(im, tmp_path / "branches.safetensors"))
    assert torch.equal(back(x[32:]), im(x[32:]))
    sess = session(export_onnx(im, tmp_path / "branches.onnx", (1, 3, 8, 8)), threads=1)
    got = np.concatenate([sess.run(["output"], {"input": x[i:i + 1].numpy()})[0] for i in range(32, 48)])
    lsb = float(im.nodes[-1].op.tensors["acc_scale"].max())  # a dequantizing last layer: float32 products
    assert np.abs(got - im(x[32:]).numpy()).max() <= 2 * lsb * np.abs(im.nodes[-1].op.tensors["weight"].numpy()).sum(1).max()


def test_a_concat_along_the_batch_is_refused():
    class Batch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.cat([self.a(x), self.a(x)], 0))

    x = torch.randn(8, 4)
    q = _quantize(Batch().eval(), [x])
    with pytest.raises(ConfigError, match="cat along dimension 0"):
        to_integer(q, (x[:2],))


@pytest.mark.parametrize("attrs", [{"dims": ["a", 0]}, {"dims": [0, 0]}, {"dims": [1, 0]}, {"dims": [0, True]}])
def test_a_file_with_a_bad_permutation_is_refused_by_name(attrs):
    from lowbit.integer import validate

    with pytest.raises(validate.Invalid, match="attribute 'dims'"):
        validate.check_of("permute").attrs(attrs, {}, 1)

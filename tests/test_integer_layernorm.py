"""Integer LayerNorm: the arithmetic against a Python-integer brute force (exact) and float64 LayerNorm (error bound),
PTQ's swap of ``nn.LayerNorm`` and ``F.layer_norm``, the integer model against the simulation bit for bit (per-feature
and per-tensor input grids), the file form, onnxruntime bit for bit, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.errors import ConfigError
from lowbit.functional.layernorm import (MAX_COEF, MAX_EPS, MAX_MULT, MAX_SHIFT, VAR_SHIFT, layernorm_codes,
                                         layernorm_params)
from lowbit.integer import ir, to_integer, validate
from lowbit.integer.io import load_integer, save_integer
from lowbit.nn.layernorm import QLayerNorm
from lowbit.ptq import PTQConfig, quantize

# ---------------------------------------------------------------- the arithmetic


def _brute(row: list[int], mult: list[int], a: list[int], b: list[int], k: int, eps: int, z: int, lo: int,
           hi: int) -> list[int]:
    """The codes by the definition, in Python integers."""
    c = len(row)
    big = [x * m for x, m in zip(row, mult)]
    mu = (2 * sum(big) + c) // (2 * c)
    d = [v - mu for v in big]
    sigma = math.isqrt(sum((v >> VAR_SHIFT) ** 2 for v in d) // c + eps)  # the variance on the grid 2^9 S
    if sigma == 0:
        d, sigma = [0] * c, 1
    out = []
    for dv, av, bv in zip(d, a, b):
        num, den = dv * av + (bv * sigma << VAR_SHIFT), sigma << (k + VAR_SHIFT)
        r = (2 * abs(num) + den) // (2 * den)
        out.append(min(max(z + (r if num >= 0 else -r), lo), hi))
    return out


_case = st.integers(1, 24).flatmap(lambda c: st.tuples(
    st.lists(st.lists(st.integers(0, 255), min_size=c, max_size=c), min_size=1, max_size=3),  # codes
    st.lists(st.integers(0, 255), min_size=c, max_size=c),  # zero points
    st.lists(st.floats(1e-3, 1.0), min_size=c, max_size=c),  # scales
    st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.37, -2.5, 1e-3]), min_size=c, max_size=c),  # gamma
    st.lists(st.sampled_from([0.0, 0.5, -0.5, 3.0, -7.0]), min_size=c, max_size=c),  # beta
    st.sampled_from([0.0, 1e-12, 1e-5, 1e-2]), st.floats(0.005, 0.2), st.integers(0, 255)))


@settings(max_examples=150, deadline=None)
@given(_case)
def test_codes_equal_the_python_integer_brute_force(case):
    codes, zps, scales, gamma, beta, eps, s_o, z_o = case
    p = layernorm_params(torch.tensor(scales), torch.tensor(gamma), torch.tensor(beta), eps, s_o)
    x = torch.tensor(codes, dtype=torch.int64) - torch.tensor(zps)
    got = layernorm_codes(x, p.multipliers, p.gamma, p.beta, p.shift, p.eps, z_o, 0, 255)
    for row, out in zip(x.tolist(), got.tolist()):
        assert out == _brute(row, p.multipliers.tolist(), p.gamma.tolist(), p.beta.tolist(), p.shift, p.eps, z_o,
                             0, 255)


@settings(max_examples=100, deadline=None)
@given(st.integers(8, 64), st.integers(0, 2**31 - 1), st.booleans())
def test_within_one_code_of_float64_layernorm(c, seed, per_feature):
    g = torch.Generator().manual_seed(seed)
    scales = (torch.rand(c, generator=g, dtype=torch.float64) * 0.9 + 0.1) * 0.05 if per_feature \
        else torch.full((c,), 0.03, dtype=torch.float64)
    zps = torch.randint(0, 256, (c,), generator=g)
    gamma = torch.randn(c, generator=g, dtype=torch.float64)
    beta = torch.randn(c, generator=g, dtype=torch.float64) * 0.2
    s_o, z_o, eps = 0.04, 128, 1e-5
    q = torch.randint(0, 256, (16, c), generator=g)
    p = layernorm_params(scales, gamma, beta, eps, s_o)
    got = layernorm_codes(q - zps, p.multipliers, p.gamma, p.beta, p.shift, p.eps, z_o, -10**6, 10**6)
    ref = F.layer_norm((q - zps).double() * scales, (c,), gamma, beta, eps) / s_o + z_o
    assert float((got - ref).abs().max()) <= 0.5 + 2e-3 * float(ref.sub(z_o).abs().max() + 1)
    assert float((got - ref.round()).abs().max()) <= 1


def test_a_constant_row_gives_the_code_of_beta():
    p = layernorm_params(torch.full((4,), 0.1), torch.ones(4), torch.tensor([0.0, 0.4, -0.4, 2.0]), 0.0, 0.1)
    x = torch.full((2, 4), 7, dtype=torch.int64)  # sigma = 0: eps 0, every deviation 0
    got = layernorm_codes(x, p.multipliers, p.gamma, p.beta, p.shift, p.eps, 100, 0, 255)
    assert got.tolist() == [[100, 104, 96, 120]] * 2


def test_the_worst_case_stays_within_int64():
    """Extreme codes, widest multipliers, largest coefficients: equal to the Python-integer brute force."""
    c = 4096
    row = [255 if i % 2 else -255 for i in range(c)]
    row[0] = 255
    mult, a, b = [MAX_MULT] * c, [-MAX_COEF] * c, [MAX_COEF] * c
    got = layernorm_codes(torch.tensor([row]), torch.tensor(mult), torch.tensor(a), torch.tensor(b), MAX_SHIFT,
                          MAX_EPS, 0, -10**9, 10**9)
    assert got[0].tolist() == _brute(row, mult, a, b, MAX_SHIFT, MAX_EPS, 0, -10**9, 10**9)


# ---------------------------------------------------------------- PTQ, the integer model, the file, ONNX


class Block(nn.Module):
    """``Linear -> +residual -> LayerNorm -> Linear -> ReLU -> Linear``; ``functional`` uses ``F.layer_norm``."""

    def __init__(self, d: int = 32, functional: bool = False) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2, self.fc3 = nn.Linear(d, d), nn.LayerNorm(d), nn.Linear(d, 64), nn.Linear(64, 10)
        self.functional = functional
        with torch.no_grad():  # outlier features of the residual stream, a non-trivial affine map
            self.fc1.bias[:2] = torch.tensor([6.0, -5.0])
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        h = self.fc1(x) + x
        h = F.layer_norm(h, h.shape[-1:], self.ln.weight, self.ln.bias) if self.functional else self.ln(h)
        return self.fc3(torch.relu(self.fc2(h)))


def _data(n: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 5, 32, generator=g) for _ in range(n)]


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("per_feature", [True, False])
def test_block_lowers_and_exports_bit_for_bit(functional, per_feature, tmp_path):
    torch.manual_seed(0)
    model = Block(functional=functional).eval()
    q = quantize(model, _data(), PTQConfig(ln_inputs_per_feature=per_feature))
    lns = [m for m in q.modules() if isinstance(m, QLayerNorm)]
    assert len(lns) == 1 and lns[0].frozen
    assert (q.fc1.output_quant.scale.numel() == 32) is per_feature
    x = torch.randn(16, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sim, ref = q(x), model(x)
    assert float(F.cosine_similarity(sim.flatten(), ref.flatten(), 0)) > 0.99
    im = to_integer(q, (x[:1],))
    assert any(isinstance(n.op.ir, ir.LayerNorm) for n in im.nodes)
    assert ("zp" in next(n for n in im.nodes if n.output.startswith("fc1")).op.tensors) is per_feature
    y = im(x)
    assert torch.equal(y, sim)
    save_integer(im, tmp_path / "m.safetensors")
    assert torch.equal(load_integer(tmp_path / "m.safetensors")(x), y)
    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    path = export_onnx(im, tmp_path / "m.onnx", (1, 5, 32), exact_layers=True)
    sess = session(path, threads=1)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.array_equal(out, y.numpy())


def test_a_layer_norm_at_the_output_stays_float_and_to_integer_refuses():
    class Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.ln = nn.Linear(32, 32), nn.LayerNorm(32)

        def forward(self, x):
            return self.ln(self.fc(x) + x)

    q = quantize(Tail().eval(), _data(), PTQConfig())
    assert not any(isinstance(m, QLayerNorm) for m in q.modules())
    with pytest.raises(ConfigError, match=r"fc has one output scale per feature.*ln_inputs_per_feature"):
        to_integer(q, (torch.randn(1, 5, 32),))


def test_a_corrupt_file_is_refused():
    torch.manual_seed(0)
    q = quantize(Block().eval(), _data(), PTQConfig())
    im = to_integer(q, (torch.randn(1, 5, 32),))
    views = validate.views(im.nodes)
    i = next(k for k, v in enumerate(views) if v.kind == "layernorm")
    spec = [validate.input_spec([5, 32], "float32")]
    for change in ({"shift": MAX_SHIFT + 1}, {"eps": MAX_EPS + 1}, {"lo": 200}):
        bad = list(views)
        bad[i] = validate.NodeView(views[i].kind, {**views[i].attrs, **change}, views[i].tensors, views[i].inputs,
                                   views[i].output, views[i].grid)
        with pytest.raises(validate.Invalid):
            validate.check_model(bad, im.input_names, im.output_name, spec)
    for name, value in (("multipliers", MAX_MULT + 1), ("gamma", MAX_COEF + 1)):
        t = dict(views[i].tensors)
        t[name] = t[name].clone()
        t[name][0] = value
        bad = list(views)
        bad[i] = validate.NodeView(views[i].kind, views[i].attrs, t, views[i].inputs, views[i].output, views[i].grid)
        with pytest.raises(validate.Invalid):
            validate.check_model(bad, im.input_names, im.output_name, spec)

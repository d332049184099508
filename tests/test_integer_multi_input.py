"""Integer execution of multi-input models: ``to_integer(q, (x, z, ...))`` lowers every input.

Real PyTorch models of 2 and 3 inputs of different shapes (branches of convs and linears added as a residual or
concatenated), quantized by ``lowbit.ptq.quantize`` on tuple batches. The oracles: the PTQ simulation (the integer
model equals it bit for bit on held-out inputs), the model file read back, onnxruntime on the exported graph (every
int8 tensor's codes equal; the float output too where no dequantizing linear head rounds in float32), and the
messages of the input checks.
"""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.cost.integer import profile_integer
from lowbit.errors import CheckpointError, ConfigError, DataError, ShapeError
from lowbit.integer import Kernels, load_integer, save_integer, to_integer, validate
from lowbit.integer.io import MULTI_VERSION
from lowbit.integer.model import Input, IntegerModel
from lowbit.ptq import quantize
from lowbit.utils.tensorfile import load_tensors, save_tensors

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from lowbit.export.onnx_qdq import CODES_KEY, export_onnx, to_onnx_model  # noqa: E402
from lowbit.export.ort import session  # noqa: E402


class TwoConvs(nn.Module):
    """``x`` (3 channels) and ``z`` (1 channel) through their own convs, summed (a residual of the first conv),
    max-pooled and flattened: the output is a dequantization of codes (exact in ONNX too)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x, z):
        return torch.flatten(F.max_pool2d(torch.relu(self.c1(x) + self.c2(z)), 2), 1)


class ThreeInputs(nn.Module):
    """An image ``x``, a feature map ``h`` of other channels, a vector ``c``: two convs summed, pooled and
    flattened, concatenated with a linear branch of ``c``, and a linear head."""

    def __init__(self):
        super().__init__()
        self.cx, self.ch = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(2, 6, 1)
        self.lc, self.head = nn.Linear(16, 8), nn.Linear(6 * 4 * 4 + 8, 5)

    def forward(self, x, h, c):
        a = torch.relu(self.cx(x) + self.ch(h))
        f = torch.flatten(F.max_pool2d(a, 2), 1)
        return self.head(torch.cat([f, torch.relu(self.lc(c))], 1))


class Unused(nn.Module):
    """``forward(x, extra)`` that never reads ``extra``."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x, extra):
        return self.head(torch.relu(self.a(x)))


SHAPES = {TwoConvs: [(3, 8, 8), (1, 8, 8)], ThreeInputs: [(3, 8, 8), (2, 8, 8), (16,)], Unused: [(8,), (5,)]}


def _batch(cls, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, *s, generator=g) * (1 + k) for k, s in enumerate(SHAPES[cls]))


def _lowered(cls):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(cls().eval(), [_batch(cls, 32, seed) for seed in range(4)])
    return q, to_integer(q, _batch(cls, 2, 99))


@pytest.fixture(scope="module", params=[TwoConvs, ThreeInputs])
def lowered(request):
    q, im = _lowered(request.param)
    return request.param, q, im


def test_the_integer_model_equals_the_simulation_bit_for_bit(lowered):
    cls, q, im = lowered
    assert im.input_names == [str(n.target) for n in q.graph.nodes if n.op == "placeholder"]
    assert im.input_shapes == SHAPES[cls] and im.input_dtypes == [torch.float32] * len(SHAPES[cls])
    for seed, n in ((1, 1), (2, 7), (3, 33)):  # held-out inputs, batches of several sizes
        xs = _batch(cls, n, 100 + seed)
        with torch.no_grad():
            want = q(*xs)
        assert torch.equal(im(*xs), want)
        assert torch.equal(im.run(*xs)[im.output_name], want)
        assert torch.equal(im.run(*xs, kernels=Kernels.REFERENCE)[im.output_name], want)
        assert torch.equal(im.with_kernels(Kernels.INT_MM)(*xs), want)


def test_a_multi_input_model_runs_op_by_op_and_the_single_input_api_refuses_it(lowered):
    cls, _, im = lowered
    xs = _batch(cls, 3, 5)
    assert torch.equal(im(*xs), im.run(*xs)[im.output_name])
    assert not im.plans._plans  # no plan was built (the plan has one input buffer)
    for field in ("input_name", "input_shape", "input_dtype"):
        with pytest.raises(ConfigError, match=rf"IntegerModel.{field}: the model takes {len(SHAPES[cls])} inputs"):
            getattr(im, field)
    back = pickle.loads(pickle.dumps(im))
    assert back.inputs == im.inputs and torch.equal(back(*xs), im(*xs))


def test_save_and_load_round_trip(lowered, tmp_path):
    cls, _, im = lowered
    path = save_integer(im, tmp_path / "m.safetensors")
    _, meta = load_tensors(path)
    meta = json.loads(meta["lowbit"])
    assert meta["version"] == MULTI_VERSION and "input" not in meta
    assert meta["inputs"] == [{"name": n, "shape": list(s), "dtype": "float32"}
                              for n, s in zip(im.input_names, SHAPES[cls])]
    back = load_integer(path)
    assert back.inputs == im.inputs and back.output_name == im.output_name
    xs = _batch(cls, 5, 7)
    assert torch.equal(back(*xs), im(*xs))
    with pytest.raises(ShapeError, match=rf"input {im.input_names[-1]!r}: expected shape"):
        back(*xs[:-1], xs[-1][..., :1])


def _rewrite(path, tmp_path, edit) -> object:
    tensors, meta = load_tensors(path)
    m = json.loads(meta["lowbit"])
    edit(m)
    out = tmp_path / "edited.safetensors"
    save_tensors(out, tensors, {"lowbit": json.dumps(m)}, checksum=True)
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["inputs"].pop(), r"node 1 \(quantize\): reads \['z'\], which no earlier node defines"),
    (lambda m: m["inputs"][1].update(name=m["inputs"][0]["name"]), "list of distinct ones"),
    (lambda m: m["inputs"][0].pop("dtype"), "allowed: an object with name, shape and dtype"),
    (lambda m: m["inputs"][0].update(shape=[0, 8]), "input_shape = "),
    (lambda m: m["inputs"][0].update(shape=[4, 8, 8]), r"node \d \(conv2d\)"),
    (lambda m: m.update(inputs="x"), "'inputs' = 'x'; allowed: a list"),
], ids=["missing", "duplicate", "no-dtype", "bad-shape", "wrong-shape", "not-a-list"])
def test_a_bad_inputs_field_is_refused_before_any_op_is_built(edit, message, tmp_path):
    _, im = _lowered(TwoConvs)
    path = _rewrite(save_integer(im, tmp_path / "m.safetensors"), tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_integer(path)


def test_validate_propagates_several_inputs(lowered):
    cls, _, im = lowered
    specs = [validate.Spec(s, torch.float32) for s in SHAPES[cls]]
    out = validate.propagate(validate.views(im.nodes), im.input_names, im.output_name, specs)
    assert out == validate.Spec(tuple(im(*_batch(cls, 1, 3)).shape[1:]), torch.float32)
    with pytest.raises(validate.Invalid, match="input specs for the"):
        validate.propagate(validate.views(im.nodes), im.input_names, im.output_name, specs[:1])
    bad = [validate.Spec((5, 8, 8), torch.float32), *specs[1:]]
    with pytest.raises(validate.Invalid, match=r"node \d \(conv2d\)"):
        validate.propagate(validate.views(im.nodes), im.input_names, im.output_name, bad)


def test_onnx_has_one_graph_input_per_model_input_and_equals_the_integer_model(lowered, tmp_path):
    """Every int8 tensor's codes equal; the float output too for TwoConvs (a dequantization of codes), and within
    float32 rounding for ThreeInputs, whose dequantizing linear head multiplies in float32 as the other exporters'
    tests allow (``tests/test_export_onnx_int.py``)."""
    cls, _, im = lowered
    shapes = tuple((1, *s) for s in SHAPES[cls])
    path = export_onnx(im, tmp_path / "m.onnx", shapes, exact_layers=True)
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == im.input_names and [o.name for o in graph.output] == ["output"]
    xs = _batch(cls, 6, 11) if cls is TwoConvs else tuple(t * 3 for t in _batch(cls, 6, 11))  # past calibration too
    feed = {n: t.numpy() for n, t in zip(im.input_names, xs)}
    out = session(path, threads=1).run(["output"], feed)[0]
    env = im.run(*xs)
    proto = to_onnx_model(im, shapes, expose_codes=True, exact_layers=True)
    names = json.loads({p.key: p.value for p in proto.metadata_props}[CODES_KEY])
    got = session(proto, threads=1).run(list(names), feed)
    grids = {n.output: n.grid for n in im.nodes}
    assert names
    for label, r in zip(names.values(), got):
        assert np.array_equal(r.astype(np.int32) - (0 if grids[label].signed else 128),
                              env[label].numpy().astype(np.int32)), label
    ref = env[im.output_name].numpy()
    if cls is TwoConvs:
        assert np.array_equal(out, ref)
    else:
        assert np.allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_onnx_input_shape_must_give_one_shape_per_input(tmp_path):
    _, im = _lowered(TwoConvs)
    with pytest.raises(ConfigError, match=r"the model takes 2 inputs \(x, z\): input_shape must be a tuple of 2 "
                                          "shapes"):
        export_onnx(im, tmp_path / "m.onnx", (1, 3, 8, 8))
    with pytest.raises(ConfigError, match=r"the model takes 2 inputs \(x, z\)"):
        export_onnx(im, tmp_path / "m.onnx", ((1, 3, 8, 8),))
    with pytest.raises(ConfigError, match=r"input_shape\[1\] \(input 'z'\) must be the input's shape, batch first"):
        export_onnx(im, tmp_path / "m.onnx", ((1, 3, 8, 8), (1, 0, 8, 8)))


@pytest.mark.parametrize("call, error, message", [
    (lambda im, x, z: im(x), DataError, r"IntegerModel takes 2 inputs \(x, z\), got 1: call it as model\(x, z\)"),
    (lambda im, x, z: im(x, z, z), DataError, r"IntegerModel takes 2 inputs \(x, z\), got 3"),
    (lambda im, x, z: im.run(x), DataError, r"IntegerModel takes 2 inputs \(x, z\), got 1"),
    (lambda im, x, z: im(x, z[:, :, :4]), ShapeError, r"input 'z': expected shape \(N, 1, 8, 8\) .* got \(2, 1, 4, 8\)"),
    (lambda im, x, z: im(z, x), ShapeError, r"input 'x': expected shape \(N, 3, 8, 8\)"),
    (lambda im, x, z: im(x, z.double()), DataError, r"input 'z': expected dtype torch.float32 .* got torch.float64"),
    (lambda im, x, z: im(x, z.numpy()), DataError, r"input 'z' must be a torch.Tensor, got ndarray"),
    (lambda im, x, z: im(x, z[:1]), ShapeError, r"inputs must be batches of one size .* got 'x' 2, 'z' 1"),
    (lambda im, x, z: im(x[:0], z[:0]), DataError, r"empty"),
], ids=["too-few", "too-many", "run", "shape", "swapped", "dtype", "not-a-tensor", "batches", "empty"])
def test_bad_calls_are_refused_before_any_kernel_runs(call, error, message):
    _, im = _lowered(TwoConvs)
    x, z = _batch(TwoConvs, 2, 1)
    with pytest.raises(error, match=message):
        call(im, x, z)


def test_to_integer_needs_one_example_per_input():
    q, _ = _lowered(TwoConvs)
    x, z = _batch(TwoConvs, 2, 1)
    with pytest.raises(ConfigError, match=r"to_integer: the model takes 2 inputs \(x, z\); example_inputs must be a "
                                          r"tuple of as many tensors, in that order, got \(Tensor\)"):
        to_integer(q, (x,))


def test_an_unused_input_is_accepted_checked_and_ignored(tmp_path):
    q, im = _lowered(Unused)
    assert im.input_names == ["x", "extra"] and not any("extra" in n.inputs for n in im.nodes)
    x, extra = _batch(Unused, 4, 2)
    with torch.no_grad():
        assert torch.equal(im(x, extra), q(x, extra))
    with pytest.raises(ShapeError, match=r"input 'extra': expected shape \(N, 5\)"):
        im(x, x)
    back = load_integer(save_integer(im, tmp_path / "m.safetensors"))
    assert torch.equal(back(x, extra), im(x, extra))
    path = export_onnx(im, tmp_path / "m.onnx", ((1, 8), (1, 5)))
    assert [i.name for i in onnx.load(path).graph.input] == ["x", "extra"]


def test_cost_profile_of_several_inputs(lowered):
    cls, _, im = lowered
    rows = profile_integer(im)
    assert [r.name for r in rows] == [n.output for n in im.nodes] and sum(r.macs for r in rows) > 0
    assert [r.macs for r in profile_integer(im, SHAPES[cls])] == [r.macs for r in rows]
    with pytest.raises(ConfigError, match=rf"profile_integer: the model takes {len(SHAPES[cls])} inputs"):
        profile_integer(im, SHAPES[cls][0])


def test_the_single_input_form_is_unchanged(tmp_path):
    """One input: the version-3 file, the graph input "input", the Input built from the three old fields."""
    im = IntegerModel([], "x", "output", (1, 4, 4))
    assert im.inputs == (Input("x", (1, 4, 4), torch.float32),) and im.input_name == "x"
    im.input_shape, im.input_dtype = (2, 3), torch.float64
    assert im.inputs == (Input("x", (2, 3), torch.float64),) and im.input_names == ["x"]
    with pytest.raises(ConfigError, match="either inputs or input_name"):
        IntegerModel([], "x", inputs=[Input("x")])
    with pytest.raises(ConfigError, match="must be distinct"):
        IntegerModel([], inputs=[Input("x"), Input("x")])


def test_a_model_pickled_before_inputs_existed_loads_as_one_input():
    """Its state has the three single-input fields and no ``inputs``: ``__setstate__`` builds the one Input."""
    state = dict(IntegerModel([], "x", "output", (3,)).__dict__)
    del state["inputs"]
    state.update(input_name="x", input_shape=(3,), input_dtype=torch.float32)
    old = IntegerModel.__new__(IntegerModel)
    old.__setstate__(state)
    assert old.inputs == (Input("x", (3,), torch.float32),) and old.input_shape == (3,)
    assert "input_name" not in old.__dict__

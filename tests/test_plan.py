"""The compiled whole-model runner (lowbit.integer.plan, csrc/plan.c) against the op-by-op path it replaces."""

import copy
import dataclasses
import math
import pickle
import threading

import pytest
import torch
from torch import nn

from lowbit.integer.backend import Kernels
from lowbit import zoo
from lowbit.bench.latency import torch_threads
from lowbit.data import fashion_mnist
from lowbit.errors import DataError, ShapeError
from lowbit.integer import plan, planner, vnni
from lowbit.integer.lower import to_integer
from lowbit.integer.model import make_op
from lowbit.ptq import PTQConfig, quantize

pytestmark = pytest.mark.skipif(not vnni.available(), reason="needs an AVX512-VNNI or AVX2 CPU and a C compiler")


@pytest.fixture(scope="module")
def data():
    return fashion_mnist("train").take(32).x, fashion_mnist("test").take(200).x


def _lower(model: nn.Module, calib: torch.Tensor):
    return to_integer(quantize(model.eval(), [calib], PTQConfig()), (calib[:2],))


@pytest.fixture(scope="module")
def zoo_models(data):
    calib, _ = data
    return {name: _lower(zoo.pretrained(name), calib) for name in ("cnn", "cnn-avgpool", "mlp", "resnet")}


def _op_by_op(im, x):
    return im.run(x)[im.output_name]


def _plan_of(im, x):
    return im.plans.get(im, tuple(x.shape), torch.get_num_threads())


def _assert_plan_equals_op_by_op(im, x):
    """forward (through a plan, which must exist) gives the op-by-op output: same bytes, same strides."""
    want = _op_by_op(im, x)
    got = im(x)
    assert _plan_of(im, x) is not None
    assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
    assert torch.equal(got, want)


def _inputs(test: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Test images, and the same with noise (codes clamped at both ends), and a non-contiguous copy."""
    x = test[:batch]
    g = torch.Generator().manual_seed(batch)
    noisy = x + 2 * torch.randn(x.shape, generator=g)
    return [x, noisy, noisy.transpose(-1, -2).contiguous().transpose(-1, -2)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("name", ["cnn", "cnn-avgpool", "mlp", "resnet"])
def test_plan_equals_op_by_op_on_zoo_models(zoo_models, data, name, batch, threads):
    im = zoo_models[name]
    with torch_threads(threads):
        for x in _inputs(data[1], batch):
            _assert_plan_equals_op_by_op(im, x)


def test_plan_covers_residual_linear_rgb_input_depthwise_and_dequantize(data):
    """Layers the zoo models lack: a linear with a residual input, a 3-channel input (transposed to NHWC, im2col
    conv), a depthwise conv, a stride-2 implicit conv, and a model whose output is a Dequantize op."""
    calib, test = data

    class ResidualMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(784, 64), nn.Linear(64, 64), nn.Linear(64, 10)

        def forward(self, x):
            h = torch.relu(self.a(torch.flatten(x, 1)))
            return self.c(torch.relu(self.b(h) + h))

    torch.manual_seed(0)
    rgb_calib, rgb_test = torch.rand(32, 3, 28, 28), torch.rand(5, 3, 28, 28)
    models = [
        (ResidualMLP(), calib, test[:5], "linear"),
        (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                       nn.Flatten(), nn.Linear(8 * 14 * 14, 10)), rgb_calib, rgb_test, "conv2d"),
        (nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                       nn.Flatten(), nn.Linear(8 * 784, 10)), calib, test[:5], "conv2d"),
        (nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)), calib, test[:5], "dequantize"),
        (nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, stride=2), nn.Flatten(),
                       nn.Linear(8 * 13 * 13, 10)), calib, test[:5], "avgpool2d"),  # overlapping, odd windows
        (nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d((2, 3)), nn.Conv2d(8, 4, 3),
                       nn.ReLU(), nn.AvgPool2d(2)), calib, test[:5], "avgpool2d"),  # windows cropping the input
    ]
    for model, c, x, kind in models:
        im = _lower(model, c)
        assert any(n.kind == kind for n in im.nodes)
        for batch in (1, 5):
            _assert_plan_equals_op_by_op(im, x[:batch])
    assert any(len(n.inputs) == 2 for n in _lower(models[0][0], calib).nodes)  # the residual linear


def test_unsupported_ops_fall_back(data):
    """Zero padding of the float input has no plan step: op by op, same result."""
    calib, test = data
    for model in (nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 784, 10)),):
        im = _lower(model, calib)
        x = test[:3]
        assert _plan_of(im, x) is None
        assert torch.equal(im(x), _op_by_op(im, x))


def test_an_input_the_model_rejects_is_refused_before_any_kernel(zoo_models):
    im = zoo_models["cnn"]
    x = torch.zeros(1, 1, 20, 20)  # flattens to 1600 features; fc1 takes 3136
    assert _plan_of(im, x) is None
    for run in (im, lambda x: _op_by_op(im, x)):
        with pytest.raises(ShapeError, match=r"expected shape \(N, 1, 28, 28\).*got \(1, 1, 20, 20\)"):
            run(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises_the_simulations_error_on_both_paths(zoo_models, data, bad):
    im = zoo_models["cnn"]
    x = data[1][:3].clone()
    x[1, 0, 5, 7] = bad
    words = "holds 1 NaN and 0 inf" if math.isnan(bad) else "holds 0 NaN and 1 inf"
    with pytest.raises(DataError, match=words):
        _plan_of(im, x).run(x)  # the C quantizer reports it
    with pytest.raises(DataError, match=words):
        im(x)
    with pytest.raises(DataError, match=words):
        _op_by_op(im, x)


def test_output_is_not_overwritten_by_the_next_call(zoo_models, data):
    for im in zoo_models.values():
        x1, x2 = data[1][:2], data[1][2:4]
        y1 = im(x1)
        kept = y1.clone()
        y2 = im(x2)
        assert torch.equal(y1, kept) and not torch.equal(y1, y2)
        assert y1.data_ptr() != y2.data_ptr()


def test_only_plan_kernels_run_the_plan_and_every_choice_gives_the_same_output(zoo_models, data, monkeypatch):
    """Kernels.PLAN runs the plan; every other choice goes op by op, to the same bytes."""
    im = zoo_models["cnn"]
    x = data[1][:3]
    want = im(x)

    def boom(self, x):
        raise AssertionError("the plan ran")

    monkeypatch.setattr(plan.Plan, "run", boom)
    for kernels in Kernels:
        if kernels is not Kernels.PLAN:
            assert torch.equal(im.with_kernels(kernels)(x), want), kernels
    with pytest.raises(AssertionError, match="the plan ran"):
        im(x)


def test_the_plan_cache_turns_only_unsupported_into_no_plan(zoo_models, data, monkeypatch):
    """A planner bug is not hidden as the slow path: only Unsupported means "no plan"."""
    im = zoo_models["cnn"].with_kernels(Kernels.PLAN)
    x = data[1][:2]

    def bug(*args, **kwargs):
        raise KeyError("a planner bug")

    monkeypatch.setattr(plan.Plan, "__init__", bug)
    with pytest.raises(KeyError, match="a planner bug"):
        im(x)

    def unsupported(*args, **kwargs):
        raise planner.Unsupported("not covered")

    monkeypatch.setattr(plan.Plan, "__init__", unsupported)
    assert torch.equal(im(x), zoo_models["cnn"].with_kernels(Kernels.VNNI)(x))


def test_kernels_by_name_and_a_bad_name():
    from lowbit.errors import ConfigError
    from lowbit.integer.backend import as_kernels

    assert as_kernels("reference") is Kernels.REFERENCE
    with pytest.raises(ConfigError, match="kernels must be one of"):
        as_kernels("fast")


def test_a_busy_plan_sends_the_call_op_by_op(zoo_models, data, monkeypatch):
    im = zoo_models["mlp"]
    x = data[1][:3]
    want = im(x)
    monkeypatch.setattr(plan.Plan, "run", lambda self, x: pytest.fail("the plan ran while busy"))
    with im.plans._lock:  # another call in progress
        assert torch.equal(im(x), want)


def test_concurrent_calls_give_each_its_own_result(zoo_models, data):
    im = zoo_models["cnn"]
    xs = [data[1][i:i + 1] for i in range(8)]
    want = [_op_by_op(im, x) for x in xs]
    errors = []

    def work(k):
        for _ in range(30):
            for i in range(k, k + 8):
                if not torch.equal(im(xs[i % 8]), want[i % 8]):
                    errors.append(i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_changed_nodes_are_planned_anew(data):
    """A plan holds pointers into the weights of the nodes it was built from: new nodes, new plan."""
    calib, test = data
    im = _lower(zoo.pretrained("mlp"), calib)
    x = test[:3]
    before = im(x)
    last = im.nodes[-1]
    tensors = dict(last.op.tensors, weight=-last.op.tensors["weight"].clamp(min=-127))
    im.nodes[-1] = dataclasses.replace(last, op=make_op(last.kind, last.op.attrs, tensors))
    after = im(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, _op_by_op(im, x))
    im.nodes[-1].op = last.op  # the same node object, given another op
    assert torch.equal(im(x), before)


def test_copies_and_pickles_start_without_plans(zoo_models, data):
    im = zoo_models["resnet"]
    x = data[1][:2]
    want = im(x)
    for other in (copy.deepcopy(im), pickle.loads(pickle.dumps(im))):
        assert other.plans is not im.plans and not other.plans._plans
        assert torch.equal(other(x), want)


def test_large_batches_and_other_inputs_go_op_by_op(zoo_models, data):
    im = zoo_models["cnn"]
    x = data[1][:3]
    im.plan_max_bytes = 1000  # applies to plans built from now on
    im.plans.clear()
    try:
        assert _plan_of(im, x[:2]) is None
        assert torch.equal(im(x[:2]), _op_by_op(im, x[:2]))
    finally:
        del im.plan_max_bytes
        im.plans.clear()
    xd = x.double()  # only float32 inputs have a plan; the model, built for float32, refuses others
    assert im.plans.run(im, xd) is None
    with pytest.raises(DataError, match="expected dtype torch.float32"):
        im(xd)


def test_the_sum_pool_step_is_checked_against_its_geometry():
    """The windowed average pool's C step (sum_pool_nhwc) refuses an output size its input and window do not give,
    and a buffer too small for the output, before any kernel runs."""
    from lowbit.native import guard

    x, out = guard.Buf(torch.int8, 2 * 6 * 6 * 4), guard.Buf(torch.int32, 2 * 2 * 2 * 4)
    guard.sum_pool(x, 2, 6, 6, 4, 3, 3, 2, 2, 2, 2, out)  # (6 - 3) // 2 + 1 = 2: fine
    with pytest.raises(ShapeError, match="output size Ho = 3"):
        guard.sum_pool(x, 2, 6, 6, 4, 3, 3, 2, 2, 3, 2, out)
    with pytest.raises(ShapeError, match="out"):
        guard.sum_pool(x, 2, 6, 6, 4, 3, 3, 2, 2, 2, 2, guard.Buf(torch.int32, 2 * 2 * 2 * 4 - 1))

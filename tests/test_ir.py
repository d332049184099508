"""The typed integer IR: every op type has an entry in every backend table (or a stated reason why not),
ops survive their file form, and the cost backend agrees with the simulation's profile."""

from __future__ import annotations

import pytest

from lowbit import zoo
from lowbit.cost.integer import COSTS, profile_integer
from lowbit.cost.profile import profile
from lowbit.data import fashion_mnist
from lowbit.export import onnx_qdq
from lowbit.integer import ir, ops, planner, to_integer, validate
from lowbit.ptq import PTQConfig, quantize

TABLES = {"reference / op by op (ops.RUNNERS)": ops.RUNNERS, "safetensors I/O (validate.CHECKS)": validate.CHECKS,
          "ONNX (onnx_qdq.EXPORTERS)": onnx_qdq.EXPORTERS, "cost (cost.integer.COSTS)": COSTS}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_op_type_is_in_every_backend_table(table):
    assert set(TABLES[table]) == set(ir.OP_TYPES), table


def test_every_op_type_is_planned_or_says_why_not():
    assert set(planner.HANDLERS) | set(planner.NO_PLAN) == set(ir.OP_TYPES)
    assert not set(planner.HANDLERS) & set(planner.NO_PLAN)
    assert all(isinstance(why, str) and len(why) > 20 for why in planner.NO_PLAN.values())


def test_kinds_are_unique_and_name_their_type():
    assert len(ir.KINDS) == len(ir.OP_TYPES)
    assert all(ir.KINDS[t.kind] is t for t in ir.OP_TYPES)


@pytest.fixture(scope="module")
def integer_models():
    calib = fashion_mnist("train").take(32).x
    return {name: (to_integer(q := quantize(zoo.pretrained(name), [calib], PTQConfig()), (calib[:2],)), q, calib)
            for name in ("mlp", "cnn", "resnet")}


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_every_op_survives_its_file_form(integer_models, name):
    """parse(attrs_of(op)) == op for every node (the file's JSON is a faithful form of the typed op)."""
    im = integer_models[name][0]
    kinds = set()
    for node in im.nodes:
        op = node.op.ir
        back = ir.parse(op.kind, node.op.attrs, requantized="acc_scale" not in node.op.tensors)
        assert back == op, node.output
        assert ir.Grid.from_json(None if node.grid is None else node.grid.to_json()) == node.grid
        kinds.add(op.kind)
    assert {"quantize", "linear"} <= kinds


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_integer_cost_equals_the_simulation_profile(integer_models, name):
    """The MACs of every conv/linear op of the integer model equal those the simulation's profile counts."""
    im, q, calib = integer_models[name]
    rows = profile_integer(im)
    sim = [r for r in profile(q, (calib[:1],)) if r.kind in ("linear", "conv")]
    ours = [r for r in rows if r.kind in ("linear", "conv2d")]
    assert [r.macs for r in ours] == [r.macs for r in sim]
    assert all(r.bops == r.macs * 8 * 8 for r in ours)  # int8 weights and activations
    weights = sum(node.op.tensors["weight"].numel() for node in im.nodes if isinstance(node.op.ir, ir.LAYERS))
    biases = sum(node.op.tensors["bias"].numel() for node in im.nodes if isinstance(node.op.ir, ir.LAYERS))
    assert sum(r.weight_bytes for r in ours) >= weights + 4 * biases


def test_integer_cost_needs_a_shape():
    from lowbit.errors import ConfigError
    from lowbit.integer.model import IntegerModel

    im = IntegerModel([], "x", "y")
    with pytest.raises(ConfigError, match="pass input_shape"):
        profile_integer(im)

"""QDQ ONNX export of ``permute``, ``reshape`` and ``table``: onnxruntime reproduces the integer model bit for bit."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lowbit.errors import ConfigError  # noqa: E402
from lowbit.export.onnx_qdq import CODES_KEY, export_onnx, to_onnx_model  # noqa: E402
from lowbit.export.ort import session  # noqa: E402
from lowbit.integer import ir, ops  # noqa: E402
from lowbit.integer.model import IntegerModel, Node  # noqa: E402

SHAPE = (5, 6, 8)  # per-sample input: (C, H, W)


def _grid(scale: float, zero_point: int, signed: bool) -> ir.Grid:
    return ir.Grid(scale, zero_point, 8, signed)


def _codes_table(rows: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(-128, 128, (rows, 256), generator=g, dtype=torch.int8)


def _model(signed: bool, rows: int, float_end: bool) -> IntegerModel:
    """Quantize -> table of codes (``rows`` rows) -> max pool -> permute -> reshape -> a float table (per channel)
    or a one-row table of codes and a dequantize. ``signed``: the grids' sign (int8 or uint8 codes in ONNX)."""
    g = torch.Generator().manual_seed(rows + 2 * signed + 4 * float_end)
    g0, g1, g2 = _grid(0.05, 3, signed), _grid(0.031, -100, signed), _grid(0.17, 7, signed)
    nodes = [
        Node(ops.build(ir.Quantize(g0.scale, g0.zero_point, -128, 127)), ["x"], "q", g0),
        Node(ops.build(ir.Table(), {"table": _codes_table(rows, g)}), ["q"], "t1", g1),
        Node(ops.build(ir.MaxPool2d((2, 2), (2, 2), (0, 0), (1, 1), False)), ["t1"], "mp", g1),  # (5, 3, 4)
        Node(ops.build(ir.Permute((0, 3, 1, 2))), ["mp"], "pm", g1),  # (4, 5, 3)
        Node(ops.build(ir.Reshape((4, 15))), ["pm"], "rs", g1),
    ]
    if float_end:
        table = torch.randn((4, 256), generator=g, dtype=torch.float32) * 3
        nodes.append(Node(ops.build(ir.Table(float_output=True), {"table": table}), ["rs"], "out"))
    else:
        nodes += [Node(ops.build(ir.Table(), {"table": _codes_table(1, g)}), ["rs"], "t2", g2),
                  Node(ops.build(ir.Dequantize(g2.scale, g2.zero_point)), ["t2"], "out")]
    im = IntegerModel(nodes, "x", "out")
    im.input_shape, im.input_dtype = SHAPE, torch.float32
    return im


def _inputs(batch: int, seed: int) -> torch.Tensor:
    return torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(seed)) * 3


CASES = [(signed, rows, float_end) for signed in (False, True) for rows in (1, SHAPE[0]) for float_end in (True, False)]


@pytest.mark.parametrize("signed,rows,float_end", CASES)
def test_onnxruntime_equals_the_integer_model(signed, rows, float_end, tmp_path):
    im = _model(signed, rows, float_end)
    sess = session(export_onnx(im, tmp_path / "m.onnx", (1, *SHAPE)), threads=1)
    for batch in (1, 3):
        x = _inputs(batch, seed=batch)
        got = torch.from_numpy(sess.run(["output"], {"input": x.numpy()})[0])
        ref = im(x)
        assert got.shape == ref.shape == (batch, 4, 15) and got.dtype == ref.dtype == torch.float32
        assert torch.equal(got, ref)


@pytest.mark.parametrize("signed", [False, True])
def test_every_code_equals_the_integer_model(signed):
    """The codes of every int8 tensor (a table's gathered codes included), read as graph outputs."""
    im = _model(signed, SHAPE[0], float_end=False)
    probe = to_onnx_model(im, (1, *SHAPE), expose_codes=True)
    names = json.loads({p.key: p.value for p in probe.metadata_props}[CODES_KEY])  # graph output -> tensor
    assert set(names.values()) == {"q", "t1", "mp", "pm", "rs", "t2"}
    x = _inputs(3, seed=7)
    got = session(probe, threads=1).run(list(names), {"input": x.numpy()})
    env = im.run(x)
    for out, codes in zip(names.values(), got):
        stored = codes.astype(np.int16) - (0 if signed else 128)  # ONNX codes -> lowbit's stored int8
        assert np.array_equal(stored, env[out].numpy().astype(np.int16)), out


def test_graph_has_gather_transpose_reshape():
    graph = to_onnx_model(_model(False, SHAPE[0], float_end=True), (1, *SHAPE)).graph
    kinds = Counter(n.op_type for n in graph.node)
    assert kinds["Gather"] == 2 and kinds["Transpose"] == 1 and kinds["Reshape"] == 1 and kinds["Cast"] == 2
    tables = {i.name: i for i in graph.initializer if i.name.endswith("_table")}
    assert {i.data_type for i in tables.values()} == {onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT}
    assert [n.output[0] for n in graph.node if n.op_type == "Gather"][-1] == "output"  # the float table's values


def test_a_table_of_the_wrong_size_is_refused(tmp_path):
    im = _model(False, SHAPE[0], float_end=True)
    table = torch.zeros((3, 256), dtype=torch.int8)  # neither one row nor one per channel
    im.nodes[1] = Node(ops.build(ir.Table(), {"table": table}), ["q"], "t1", im.nodes[1].grid)
    with pytest.raises(ConfigError, match="table of shape"):
        export_onnx(im, tmp_path / "m.onnx", (1, *SHAPE))
    assert not (tmp_path / "m.onnx").exists()

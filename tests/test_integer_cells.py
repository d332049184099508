"""Integer ``nn.LSTMCell`` / ``nn.GRUCell`` (a ``recurrent`` op with ``step``): the simulation and the integer model.

Oracles: the integer LSTM / GRU over a whole sequence (:func:`lowbit.nn.recurrent.run_recurrent`, itself tested
against ``nn.LSTM`` / ``nn.GRU``): a cell run step by step with its state fed back must give its codes at every
step; the simulation (the integer model equals it bit for bit); onnxruntime (the exported graph equals the
integer model); the float cell (the quantized one stays close)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.integer import ir, to_integer
from lowbit.integer.io import load_integer, save_integer
from lowbit.integer.validate import CHECKS, Invalid
from lowbit.nn.qparams import QParams
from lowbit.formats import IntFormat
from lowbit.nn.recurrent import (c_codes, c_values, h_codes, h_values, quantize_recurrent, run_recurrent)
from lowbit.ptq import PTQConfig, quantize

CELL = {"lstm": (nn.LSTMCell, nn.LSTM), "gru": (nn.GRUCell, nn.GRU)}


class CellHead(nn.Module):
    """x -> Linear + ReLU -> cell (no state) -> ReLU(h) -> 1x1 Conv1d -> sigmoid, joined with h and c at the output
    (what Silero VAD's decoder does, from a zero state)."""

    def __init__(self, kind: str, i: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.kind = kind
        self.fc, self.cell, self.head = nn.Linear(i, 16), CELL[kind][0](16, hidden), nn.Conv1d(hidden, 1, 1)

    def forward(self, x):
        r = self.cell(torch.relu(self.fc(x)))
        h = r[0] if self.kind == "lstm" else r
        p = torch.sigmoid(self.head(torch.relu(h).unsqueeze(-1))).squeeze(-1)
        return torch.cat([p, h, r[1]], dim=1) if self.kind == "lstm" else torch.cat([p, h], dim=1)


def _quantized(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = CellHead(kind).eval()
    data = [torch.randn(8, 6) for _ in range(4)]
    return model, quantize(model, data, PTQConfig())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_integer_model_equals_the_simulation_and_onnxruntime_equals_it(kind, tmp_path):
    pytest.importorskip("onnxruntime")
    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    model, q = _quantized(kind)
    im = to_integer(q, (torch.randn(1, 6),))
    assert [n.op.ir.step for n in im.nodes if n.kind == "recurrent"] == [True] * (2 if kind == "lstm" else 1)
    x = torch.randn(64, 6) * 1.5
    with torch.no_grad():
        ref = q(x)
        assert torch.equal(im(x), ref)
        x0 = torch.randn(64, 6)  # inside the calibration range
        assert torch.nn.functional.cosine_similarity(q(x0), model(x0)).mean() > 0.99
    path = export_onnx(im, tmp_path / "m.onnx", (1, 6), exact_layers=True)
    got = session(path, threads=1).run(["output"], {"input": x.numpy()})[0]
    assert np.array_equal(got, ref.numpy())
    back = load_integer(save_integer(im, tmp_path / "m.safetensors"))
    assert torch.equal(back(x), ref)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_cell_step_by_step_equals_the_integer_layer_over_the_sequence(kind):
    torch.manual_seed(1)
    cell_cls, layer_cls = CELL[kind]
    cell, layer = cell_cls(5, 7), layer_cls(5, 7)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(layer, f"{name}_l0").data.copy_(getattr(cell, name).data)
    grid = QParams(0.05, 3, IntFormat(8, signed=True))
    q_cell, q_layer = quantize_recurrent(cell, grid), quantize_recurrent(layer, grid)
    codes = torch.randint(-128, 128, (6, 3, 5), dtype=torch.int8)  # (T, N, I)
    out, _, _ = run_recurrent(q_layer, codes)
    state = None
    for t in range(codes.shape[0]):
        _, h, c = run_recurrent(q_cell, codes[t:t + 1], state=state)
        assert torch.equal(h[0], out[t])
        # fed back as the float values a model passes on, quantized again by the cell: the same codes
        hv, cv = h_values(h), None if c is None else c_values(c)
        state = (h_codes(hv), None if cv is None else c_codes(cv))


def test_state_codes_and_values_are_inverse():
    h = torch.arange(-127, 128)
    assert torch.equal(h_codes(h_values(h)), h)
    c = torch.arange(-(1 << 15), 1 << 15)
    assert torch.equal(c_codes(c_values(c)), c)
    assert int(h_codes(torch.tensor([5.0]))) == 127 and int(c_codes(torch.tensor([-40.0]))) == -(1 << 15)


def test_a_step_op_is_checked():
    _, q = _quantized("lstm")
    im = to_integer(q, (torch.randn(1, 6),))
    node = next(n for n in im.nodes if n.kind == "recurrent")
    bad = ir.Recurrent(ir.Cell.LSTM, 1, False, node.op.ir.input_zero_point, ir.Emit.OUTPUT, 8, True)
    with pytest.raises(Invalid, match="a recurrent step"):
        CHECKS[ir.Recurrent].attrs(ir.attrs_of(bad), node.op.tensors, 1)


class Stream(nn.Module):
    """Silero VAD's stream form: a cell step over chunks, the state carried as floats from step to step, taken
    apart from the step's joined output ``[p, h, c]`` (zero at the start: ``x.new_zeros``)."""

    def __init__(self, chunks: int = 3, width: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.chunks, self.width, self.hidden = chunks, width, hidden
        self.fc, self.cell, self.head = nn.Linear(width, 16), nn.LSTMCell(16, hidden), nn.Linear(hidden, 1)

    def step(self, x, h, c):
        h, c = self.cell(torch.relu(self.fc(x)), (h, c))
        return torch.cat([torch.sigmoid(self.head(torch.relu(h))), h, c], dim=1)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], self.hidden)
        probs = []
        for i in range(self.chunks):
            out = self.step(x[:, i * self.width:(i + 1) * self.width], h, c)
            probs.append(out[:, :1])
            h, c = out[:, 1:1 + self.hidden], out[:, 1 + self.hidden:]
        return torch.cat(probs, dim=1)


def test_a_stream_of_cell_steps_lowers_and_exports_exactly(tmp_path):
    pytest.importorskip("onnxruntime")
    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    torch.manual_seed(2)
    model = Stream().eval()
    data = [torch.randn(8, 18) for _ in range(4)]
    q = quantize(model, data, PTQConfig())
    im = to_integer(q, (data[0][:1],))
    steps = [n for n in im.nodes if n.kind == "recurrent"]
    assert len(steps) == 6 and [len(n.inputs) for n in steps[:2]] == [1, 1]  # the first step from the zero state
    assert all(len(n.inputs) == 3 for n in steps[2:])
    x = torch.randn(32, 18)
    with torch.no_grad():
        ref = q(x)
        assert torch.equal(im(x), ref)
        assert (ref - model(x)).abs().max() < 0.05
    got = session(export_onnx(im, tmp_path / "s.onnx", (1, 18), exact_layers=True), threads=1).run(
        ["output"], {"input": x.numpy()})[0]
    assert np.array_equal(got, ref.numpy())


def test_a_state_half_zero_is_refused_by_name():
    class HalfZero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.cell = nn.Linear(6, 16), nn.LSTMCell(16, 8)

        def forward(self, x, c):
            h = x.new_zeros(x.shape[0], 8)
            return self.cell(torch.relu(self.fc(x)), (h, c))[0]

    from lowbit.errors import ConfigError

    torch.manual_seed(3)
    data = [(torch.randn(8, 6), torch.randn(8, 8)) for _ in range(2)]
    q = quantize(HalfZero().eval(), data, PTQConfig())
    with pytest.raises(ConfigError, match="cell .*one part of its state is a zero tensor"):
        to_integer(q, (data[0][0][:1], data[0][1][:1]))


def test_a_non_finite_state_is_refused_by_the_simulation_and_the_integer_model():
    from lowbit.errors import DataError

    class StepModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.cell = nn.Linear(6, 16), nn.LSTMCell(16, 8)

        def forward(self, x, h, c):
            h, c = self.cell(torch.relu(self.fc(x)), (h, c))
            return torch.cat([h, c], dim=1)

    torch.manual_seed(4)
    data = [(torch.randn(8, 6), torch.rand(8, 8) - 0.5, torch.randn(8, 8)) for _ in range(2)]
    q = quantize(StepModel().eval(), data, PTQConfig())
    im = to_integer(q, tuple(t[:1] for t in data[0]))
    x, h, c = data[0]
    assert torch.equal(im(x, h, c), q(x, h, c))
    bad = c.clone()
    bad[0, 0] = float("nan")
    for run in (q, im):
        with pytest.raises(DataError, match="1 NaN"):
            run(x, h, bad)


def test_a_cat_of_a_whole_tuple_is_refused_by_name():
    from lowbit.errors import ConfigError

    class CatTuple(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.cell = nn.Linear(6, 16), nn.LSTMCell(16, 8)

        def forward(self, x):
            return torch.cat(self.cell(torch.relu(self.fc(x))), dim=1)

    torch.manual_seed(5)
    data = [torch.randn(8, 6) for _ in range(2)]
    q = quantize(CatTuple().eval(), data, PTQConfig())
    with pytest.raises(ConfigError, match="a tuple the model does not take apart: join its parts by name"):
        to_integer(q, (data[0][:1],))

"""Integer LSTM and GRU layers: the simulation against float ``nn.LSTM`` / ``nn.GRU``, the integer model against
the simulation bit for bit (C kernel and PyTorch reference), a file round trip, and the refusals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lowbit import ptq
from lowbit.cost.integer import profile_integer
from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import IntFormat
from lowbit.functional.fixed_rnn import H_FRAC
from lowbit.integer import ir, to_integer
from lowbit.integer.backend import Kernels
from lowbit.integer.io import load_integer, save_integer
from lowbit.integer.ops import build
from lowbit.native import cext
from lowbit.nn.qparams import QParams
from lowbit.nn.recurrent import QRecurrent, quantize_recurrent, run_recurrent
from lowbit.utils.tensorfile import load_tensors, save_tensors
from tests._integer_checks import check_exact

STEP = 2.0 ** -H_FRAC  # the hidden state's grid


def _grid_input(x: torch.Tensor) -> tuple[torch.Tensor, QParams]:
    """``x`` on an unsigned 8-bit grid (zero point 128) and that grid."""
    s = float(x.abs().max()) / 127
    q = QParams(s, 128, IntFormat(8, signed=False))
    return torch.round(x / s).clamp(-128, 127) * s, q


# ---------------------------------------------------------------- (a) simulation against float


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("layers", [1, 2])
def test_simulation_close_to_float(cls, layers):
    """h lies on a 2^-7 grid and is rounded at every step; with int8 weights per row and Q.8 gate inputs the
    error stays within a few grid steps: max |h - h_float| < 4 * 2^-7 and cosine > 0.999 over 20 steps."""
    torch.manual_seed(1)
    layer = cls(13, 24, num_layers=layers, batch_first=True).eval()
    xq, grid = _grid_input(torch.randn(3, 20, 13))
    sim = QRecurrent(layer, "rnn")
    sim.freeze(grid)
    with torch.no_grad():
        y, state = sim(xq)
        ref, ref_state = layer(xq)
    assert float((y - ref).abs().max()) < 4 * STEP
    assert float(nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0)) > 0.999
    h, h_ref = (state[0], ref_state[0]) if cls is nn.LSTM else (state, ref_state)
    assert float((h - h_ref).abs().max()) < 4 * STEP
    if cls is nn.LSTM:  # c on Q.11, unbounded by 1: a relative bound
        c, c_ref = state[1], ref_state[1]
        assert float((c - c_ref).abs().max()) < 0.05 * max(1.0, float(c_ref.abs().max()))
    assert bool(((y / STEP).round() == y / STEP).all())  # the outputs are the grid's values


def test_simulation_detects_wrong_gate_order():
    """The comparison with float fails for a simulation whose gates are permuted (a test that can fail)."""
    torch.manual_seed(2)
    layer = nn.LSTM(8, 16, batch_first=True).eval()
    xq, grid = _grid_input(torch.randn(2, 10, 8))
    wrong = nn.LSTM(8, 16, batch_first=True).eval()
    with torch.no_grad():  # i and f swapped
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            i, f, g, o = getattr(layer, name).chunk(4)
            getattr(wrong, name).copy_(torch.cat([f, i, g, o]))
    sim = QRecurrent(wrong, "rnn")
    sim.freeze(grid)
    with torch.no_grad():
        assert float((sim(xq)[0] - layer(xq)[0]).abs().max()) > 4 * STEP


# ---------------------------------------------------------------- (b) integer model == simulation


class _Net(nn.Module):
    """A recurrent layer, one tensor of its result read (``read``), and a linear head when ``head``."""

    def __init__(self, cls, i, h, layers, batch_first, read, head):
        super().__init__()
        self.rnn = cls(i, h, num_layers=layers, batch_first=batch_first)
        self.read, self.batch_first, self.lstm = read, batch_first, cls is nn.LSTM
        self.head = nn.Linear(h, 5) if head else None

    def forward(self, x):
        out, state = self.rnn(x)
        h_n, c_n = state if self.lstm else (state, None)
        if self.read == "output":
            y = out
        elif self.read == "h_last":
            y = h_n[-1]
        elif self.read == "h_first":
            y = h_n[0]
        elif self.read == "c_last":
            y = c_n[-1]
        elif self.read == "output_last":
            y = out[:, -1] if self.batch_first else out[-1]
        else:  # "output_last_full"
            y = out[:, -1, :] if self.batch_first else out[-1, :]
        return self.head(y) if self.head is not None else y


def _quantized(net, x):
    return ptq.quantize(net.eval(), [x], example_inputs=(x[:1],)).eval()



CASES = [(cls, layers, bf, steps, batch)
         for cls in (nn.LSTM, nn.GRU) for layers in (1, 2) for bf in (True, False) for steps in (1, 20)
         for batch in (1, 3)]
READS = ["output", "h_last", "output_last", "h_first", "output_last_full"]


@pytest.mark.parametrize("cls,layers,batch_first,steps,batch", CASES)
def test_integer_equals_simulation(cls, layers, batch_first, steps, batch):
    torch.manual_seed(steps * 7 + batch + layers)
    read = READS[(steps + batch + layers + batch_first) % len(READS)]
    head = (batch + layers) % 2 == 0
    net = _Net(cls, 13, 20, layers, batch_first, read, head)
    shape = (batch, steps, 13) if batch_first else (steps, batch, 13)
    x = torch.randn(*shape)
    q = _quantized(net, torch.randn(*shape) * 1.5)
    im = to_integer(q, (x[:1],))
    assert any(n.kind == "recurrent" for n in im.nodes)
    ys = check_exact(q, im, x)
    with torch.no_grad():
        yf = net(x)
    assert float(nn.functional.cosine_similarity(ys.flatten(), yf.flatten(), dim=0)) > 0.99


def test_lstm_cell_state_output():
    """``c_n[-1]`` at the network output: float32 values of its Q.11 grid, equal in both models."""
    torch.manual_seed(3)
    net = _Net(nn.LSTM, 7, 12, 2, True, "c_last", False)
    x = torch.randn(3, 9, 7)
    q = _quantized(net, x)
    im = to_integer(q, (x[:1],))
    ys = check_exact(q, im, x)
    assert bool(((ys * 2 ** 11).round() == ys * 2 ** 11).all())


def test_plan_falls_back_op_by_op():
    """The compiled plan has no recurrent step: such a model runs op by op (and gives the same output)."""
    torch.manual_seed(4)
    net = _Net(nn.GRU, 9, 16, 1, True, "h_last", True)
    x = torch.randn(2, 6, 9)
    q = _quantized(net, x)
    im = to_integer(q, (x[:1],))
    assert im.plans.run(im, x) is None
    check_exact(q, im, x)


class _ConvGRU(nn.Module):
    """A 1-D conv front end, channels moved last (transpose), a GRU, its last step, a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 6, 5, stride=2)
        self.gru = nn.GRU(6, 12, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).transpose(1, 2)
        out, _ = self.gru(h)
        return self.fc(out[:, -1])


def test_conv_front_end_and_transpose():
    torch.manual_seed(8)
    x = torch.randn(4, 1, 50)
    q = _quantized(_ConvGRU(), x)
    im = to_integer(q, (x[:1],))
    assert "permute" in [n.kind for n in im.nodes] and "recurrent" in [n.kind for n in im.nodes]
    check_exact(q, im, x)


# ---------------------------------------------------------------- (c) property: C kernel == reference


@settings(max_examples=25, deadline=None)
@given(cell=st.sampled_from([nn.LSTM, nn.GRU]), i=st.integers(1, 11), h=st.integers(1, 11), layers=st.integers(1, 2),
       steps=st.integers(1, 6), batch=st.integers(1, 3), batch_first=st.booleans(), bias=st.booleans(),
       seed=st.integers(0, 2 ** 16), emit=st.sampled_from(list(ir.Emit)))
def test_property_kernels_agree(cell, i, h, layers, steps, batch, batch_first, bias, seed, emit):
    """On small random layers (large weights included, so gates saturate and c clamps): the op on the C kernel and
    on the PyTorch reference give the simulation's codes; h codes stay in +-127."""
    g = torch.Generator().manual_seed(seed)
    layer = cell(i, h, num_layers=layers, batch_first=batch_first, bias=bias)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (4.0 if seed % 5 == 0 else 0.5))
    grid = QParams(0.02 + seed % 7 * 0.01, 128 - seed % 40, IntFormat(8, signed=False))
    q = quantize_recurrent(layer, grid)
    shape = (batch, steps, i) if batch_first else (steps, batch, i)
    x = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    out, h_n, c_n = run_recurrent(q, x)
    assert int(out.abs().max()) <= 127 and int(h_n.abs().max()) <= 127
    if emit is ir.Emit.C and cell is nn.GRU:
        emit = ir.Emit.H
    tensors = {n: t for k, lq in enumerate(q.layers) for n, t in lq.tensors(k).items()}
    op = build(ir.Recurrent(ir.Cell(q.cell), layers, batch_first, q.input_zero_point, emit),
               {**tensors, "sigmoid": q.sigmoid, "tanh": q.tanh})
    want = {ir.Emit.OUTPUT: out.to(torch.int8), ir.Emit.H: h_n[-1].to(torch.int8)}.get(emit)
    if want is None:
        want = c_n[-1].to(torch.float32) / 2 ** 11
    for k in (Kernels.VNNI, Kernels.REFERENCE):
        assert torch.equal(op(x, kernels=k), want), k


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("i, steps, batch", [(40, 70, 5), (13, 300, 1)], ids=["chunks-of-51-steps", "i-not-4k"])
def test_kernels_agree_over_many_steps(cell, i, steps, batch):
    """Long sequences: the C layer projects the input of many steps in one GEMM, in chunks (256 rows: 51 steps of
    5, or 256 of 1, the last chunk shorter); the codes equal the reference's at every step."""
    g = torch.Generator().manual_seed(3)
    layer = cell(i, 36, num_layers=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    q = quantize_recurrent(layer, QParams(0.03, 101, IntFormat(8, signed=False)))
    x = torch.randint(-128, 128, (steps, batch, i), generator=g, dtype=torch.int8)
    tensors = {n: t for k, lq in enumerate(q.layers) for n, t in lq.tensors(k).items()}
    op = build(ir.Recurrent(ir.Cell(q.cell), 2, False, q.input_zero_point, ir.Emit.OUTPUT),
               {**tensors, "sigmoid": q.sigmoid, "tanh": q.tanh})
    want = run_recurrent(q, x)[0].to(torch.int8)
    assert torch.equal(op(x, kernels=Kernels.VNNI), want)
    assert torch.equal(op(x, kernels=Kernels.REFERENCE), want)
    assert int(want.abs().max()) > 30  # the layer is not saturated at zero


# ---------------------------------------------------------------- (d) a Resemblyzer-shaped model


class _SpeakerEncoder(nn.Module):
    """Resemblyzer's shape, smaller: LSTM(40, 64, 3 layers) -> last layer's h -> Linear -> ReLU."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 64, num_layers=3, batch_first=True)
        self.linear = nn.Linear(64, 32)
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        return self.relu(self.linear(hidden[-1]))


def test_resemblyzer_shaped(tmp_path):
    torch.manual_seed(5)
    net = _SpeakerEncoder().eval()
    calib = [torch.rand(4, 30, 40) for _ in range(3)]  # mel energies are >= 0
    q = ptq.quantize(net, calib).eval()
    im = to_integer(q, (calib[0][:1],))
    assert [n.kind for n in im.nodes] == ["quantize", "recurrent", "linear"]
    x = torch.rand(3, 30, 40)
    ys = check_exact(q, im, x)
    with torch.no_grad():
        yf = net(x)
    assert float(nn.functional.cosine_similarity(ys.flatten(), yf.flatten(), dim=0)) > 0.99
    path = save_integer(im, tmp_path / "encoder.safetensors")
    back = load_integer(path)
    assert torch.equal(back(x), ys)
    rows = {r.kind: r for r in profile_integer(back)}
    assert rows["recurrent"].macs == 30 * 4 * 64 * (40 + 64 + 2 * (64 + 64))  # T G H (I_k + H) summed over layers
    assert rows["recurrent"].weight_bytes > 4 * 64 * (40 + 64 * 5)


def test_corrupt_file_is_refused(tmp_path):
    torch.manual_seed(6)
    net = _Net(nn.GRU, 5, 8, 1, True, "h_last", True)
    x = torch.randn(2, 4, 5)
    im = to_integer(_quantized(net, x), (x[:1],))
    path = save_integer(im, tmp_path / "gru.safetensors")
    tensors, meta = load_tensors(path)
    i = next(k for k, n in enumerate(im.nodes) if n.kind == "recurrent")
    tensors[f"{i}.sigmoid"] = tensors[f"{i}.sigmoid"][:100].clone()
    save_tensors(tmp_path / "bad.safetensors", tensors, meta, checksum=True)
    with pytest.raises(CheckpointError, match="sigmoid"):
        load_integer(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- (e) refusals


def _prepare(net, x):
    return ptq.quantize(net.eval(), [x], example_inputs=(x[:1],))


def _stays_float(net, x, match, refusal="enc"):
    """PTQ keeps a layer the integer layers cannot run float, warning with its name and the reason (before, PTQ
    kept every LSTM float, so such a model must still quantize); to_integer then refuses it."""
    with pytest.warns(UserWarning, match=match):
        q = _prepare(net, x)
    assert isinstance(q.enc, (nn.LSTM, nn.GRU)) or q.enc.float_only  # (an untraced model keeps its QRecurrent)
    with torch.no_grad():
        assert torch.equal(q.enc(x)[0], net.enc(x)[0])  # the float layer itself
    with pytest.raises(ConfigError, match=refusal):
        to_integer(q, (x[:1],))


@pytest.mark.parametrize("kw,what", [({"bidirectional": True}, "bidirectional"), ({"proj_size": 4}, "proj_size")])
def test_unsupported_layers_stay_float(kw, what):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.LSTM(6, 8, batch_first=True, **kw)
            self.fc = nn.Linear(16 if kw.get("bidirectional") else 4, 3)

        def forward(self, x):
            return self.fc(self.enc(x)[0][:, -1])

    _stays_float(Net(), torch.randn(2, 5, 6), rf"enc .*stays float: {what}")


class _GRUNet(nn.Module):
    """A GRU read by ``fc``; ``call(gru, x)`` is how the model calls it."""

    def __init__(self, call):
        super().__init__()
        self.enc, self.fc, self.call = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 3), call

    def forward(self, x):
        return self.fc(self.call(self.enc, x)[1][-1])


def _packed(gru, x):
    return gru(nn.utils.rnn.pack_padded_sequence(x, torch.tensor([x.shape[1]] * x.shape[0]), batch_first=True))


def _with_hx(gru, x):
    return gru(x, torch.zeros(1, x.shape[0], 8))


# torch.fx cannot trace pack_padded_sequence: the eager fallback's layer learns it while calibrating
@pytest.mark.parametrize("call,match,refusal", [(_packed, "enc.*stays float: .*PackedSequence", "eager fallback"),
                                                (_with_hx, "enc.*stays float: .*initial state", "enc")],
                         ids=["packed_sequence", "initial_state"])  # (test_sanitizers leaves packed_sequence out)
def test_calls_the_integer_layer_cannot_run_stay_float(call, match, refusal):
    _stays_float(_GRUNet(call), torch.randn(2, 5, 6), match, refusal)


def test_stacked_states_without_index_are_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.GRU(6, 8)

        def forward(self, x):
            return self.enc(x)[1]  # (L, N, H): the batch is not first

    x = torch.randn(5, 2, 6)
    q = _quantized(Net(), x)
    with pytest.raises(ConfigError, match="h_n"):
        to_integer(q, (x[:1],))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_exports_to_onnx_exactly(cls, tmp_path):
    """The recurrent op has an exact ONNX form (more cases in tests/test_export_onnx_int.py): onnxruntime's
    output equals the integer model's."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    net = _Net(cls, 5, 8, 2, True, "output", False)
    x = torch.randn(2, 4, 5)
    im = to_integer(_quantized(net, x), (x[:1],))
    path = export_onnx(im, tmp_path / "m.onnx", (1, 4, 5))
    got = session(path, threads=1).run(["output"], {"input": x.numpy()})[0]
    assert torch.equal(torch.from_numpy(got), im(x))


def test_c_kernel_is_built():
    """Where a C compiler works, the recurrent op runs the C layer kernel (not only the reference)."""
    if cext.library() is None:
        pytest.skip("no C compiler")
    from lowbit.integer import rnn

    assert rnn._c_layer() is cext.rnn_layer


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), [a.dtype for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kernels", [Kernels.VNNI, Kernels.REFERENCE])
def test_recurrent_op_runs_no_float(kernels):
    """The recurrent op never runs float arithmetic: its matmuls are int8 GEMMs (``_int_mm``) in the reference and
    none at all in C; nothing in it touches a float tensor."""
    torch.manual_seed(7)
    net = _Net(nn.LSTM, 9, 16, 2, True, "output", False)
    x = torch.randn(2, 5, 9)
    im = to_integer(_quantized(net, x), (x[:1],))
    node = next(n for n in im.nodes if n.kind == "recurrent")
    codes = im.run(x)[node.inputs[0]]
    with _Ops() as mode:
        node.op(codes, kernels=kernels)
    assert not [c for c in mode.calls if any(d.is_floating_point for d in c[1])]
    heavy = [c[0] for c in mode.calls if any(k in c[0] for k in ("mm", "conv", "linear", "bmm"))]
    assert all(c.startswith("aten._int_mm") for c in heavy) and (bool(heavy) == (kernels is Kernels.REFERENCE))

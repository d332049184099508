"""Every MAC counted: recurrent layers, attention, transposed and 1-D/3-D convs, functional matmuls.

Oracle: PyTorch's own ``FlopCounterMode`` (2 FLOPs per MAC) with oneDNN off and attention in its
math backend, so that LSTMs and attention lower to the ``mm``/``bmm`` calls it counts.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lowbit.cost.profile import coverage_warning, profile, quantized_share
from lowbit.ptq import LayerRule, PTQConfig, quantize


def torch_macs(model: nn.Module, *inputs) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), sdpa_kernel(SDPBackend.MATH), \
                    FlopCounterMode(display=False) as counter:
                model(*inputs)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() // 2


class Functional(nn.Module):
    """Matrix products written in forward: @, bmm, einsum, scaled_dot_product_attention, F.conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 16))
        self.k = nn.Parameter(torch.randn(4, 16, 3))

    def forward(self, x):  # x: (N, T, 16)
        h = x @ self.w
        h = torch.einsum("ntc,dc->ntd", h, self.w)
        q = h.view(h.shape[0], h.shape[1], 2, 8).transpose(1, 2)
        a = nn.functional.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(h.shape)
        return nn.functional.conv1d(a.transpose(1, 2), self.k, padding=1)


CASES = [
    ("lstm 2 layers, bidirectional, batch_first", nn.LSTM(16, 32, 2, batch_first=True, bidirectional=True),
     torch.randn(3, 20, 16), 3),
    ("lstm with projection", nn.LSTM(16, 32, proj_size=8), torch.randn(7, 3, 16), 3),
    ("gru 3 layers", nn.GRU(8, 16, 3), torch.randn(5, 2, 8), 2),
    ("elman rnn", nn.RNN(8, 16, batch_first=True), torch.randn(2, 5, 8), 2),
    ("lstm cell", nn.LSTMCell(8, 16), torch.randn(4, 8), 4),
    ("gru cell", nn.GRUCell(8, 16), torch.randn(4, 8), 4),
    ("attention", nn.MultiheadAttention(32, 4, batch_first=True), torch.randn(2, 9, 32), 2),
    ("transformer layer", nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0),
     torch.randn(2, 9, 32), 2),
    ("conv1d", nn.Conv1d(4, 8, 5, stride=2, groups=2), torch.randn(3, 4, 40), 3),
    ("conv3d", nn.Conv3d(2, 4, 3), torch.randn(2, 2, 6, 6, 6), 2),
    ("transposed conv2d", nn.ConvTranspose2d(4, 6, 3, stride=2), torch.randn(2, 4, 5, 5), 2),
    ("functional matmuls", Functional(), torch.randn(2, 10, 16), 2),
]


@pytest.mark.parametrize("label,model,x,batch", CASES, ids=[c[0] for c in CASES])
def test_profile_counts_what_pytorch_counts(label, model, x, batch):
    model.eval()
    inputs = (x, x, x) if isinstance(model, nn.MultiheadAttention) else (x,)
    rows = profile(model, inputs)
    assert sum(r.macs for r in rows) * batch == torch_macs(model, *inputs)
    assert all(r.weight_bits == 32 and r.act_bits == 32 for r in rows)
    assert torch.backends.mha.get_fastpath_enabled()  # profile turns the fused attention path back on


def test_recurrent_rows_carry_their_parameters_and_kind():
    lstm = nn.LSTM(16, 32, 2)
    (row,) = profile(lstm, (torch.randn(6, 2, 16),))
    assert row.kind == "rnn" and row.params == sum(p.numel() for p in lstm.parameters())
    assert row.macs == 6 * (4 * 32 * (16 + 32) + 4 * 32 * (32 + 32))
    assert row.weight_bytes == row.params * 4
    (cell,) = profile(nn.LSTMCell(8, 16), (torch.randn(8),))  # unbatched: one sample
    assert cell.macs == 4 * 16 * 24 and cell.act_bytes == 16 * 4


class ConvLSTM(nn.Module):
    """A 1-D conv front end and an LSTM: lowbit quantizes the convs and the head, not the LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 9, stride=4)
        self.lstm = nn.LSTM(8, 64, batch_first=True)
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x)).transpose(1, 2)
        h, _ = self.lstm(h)
        return self.fc(h[:, -1])


def test_a_quantized_model_whose_compute_is_a_float_lstm_is_not_shown_as_covered():
    torch.manual_seed(0)
    model = ConvLSTM().eval()
    x = torch.randn(8, 1, 400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = quantize(model, [x], PTQConfig(rules=(LayerRule("lstm", keep_float=True),)))
    rows = {r.name: r for r in profile(sim, (x[:1],))}
    assert rows["conv"].weight_bits == 8 and rows["fc"].weight_bits == 8
    assert rows["lstm"].weight_bits == 32
    lstm_share = rows["lstm"].macs / sum(r.macs for r in rows.values())
    assert lstm_share > 0.9
    assert quantized_share(list(rows.values())) == pytest.approx(1 - lstm_share)
    message = coverage_warning(list(rows.values()))
    assert message is not None and "lstm (rnn," in message and "below 90%" in message
    assert coverage_warning([rows["conv"], rows["fc"]]) is None  # a fully quantized part passes


def test_a_quantized_lstm_counts_as_covered():
    """PTQ quantizes the LSTM too (lowbit.nn.recurrent): its MACs are int8 x 8-bit ones, once, as the float LSTM's."""
    torch.manual_seed(0)
    model = ConvLSTM().eval()
    x = torch.randn(8, 1, 400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = quantize(model, [x], PTQConfig())
    rows = {r.name: r for r in profile(sim, (x[:1],))}
    float_rows = {r.name: r for r in profile(model, (x[:1],))}
    assert (rows["lstm"].weight_bits, rows["lstm"].act_bits) == (8, 8)
    assert rows["lstm"].macs == float_rows["lstm"].macs
    assert not [n for n in rows if n.startswith("lstm.")]  # the float layer inside is not counted again
    assert coverage_warning(list(rows.values())) is None

"""torch.export capture lifted to module graphs: names of nested buffers next to nested layers."""

import warnings

import torch
from torch import nn

from lowbit.graph.export_lift import export_graph
from lowbit.nn.unified import unified_modules
from lowbit.ptq import PTQConfig, quantize


class Embeddings(nn.Module):
    """As in BERT-style encoders: a buffer (``position_ids``) beside the embedding layers of one module."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(50, 16)
        self.position_embeddings = nn.Embedding(32, 16)
        self.register_buffer("position_ids", torch.arange(32)[None])

    def forward(self, ids):
        n = int(ids.shape[1])  # a Python int from a shape: torch.fx cannot trace it, torch.export can
        return self.word_embeddings(ids) + self.position_embeddings(self.position_ids[:, :n])


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings()
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, ids):
        return self.head(torch.relu(self.fc(self.embeddings(ids)))).mean(1)


def test_a_buffer_of_a_module_that_holds_layers_is_lifted_beside_them():
    torch.manual_seed(0)
    model = Encoder().eval()
    ids = torch.randint(0, 50, (8, 12))
    gm = export_graph(model, (ids[:2],))  # crashed: the buffer took the name 'embeddings' its siblings nest in
    other = torch.randint(0, 50, (3, 12))
    assert torch.equal(gm(other), model(other))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(model, [ids], PTQConfig())
    assert {n for n, _ in unified_modules(q)} == {"fc", "head"}  # the model's own layer names
    with torch.no_grad():
        err = (q(other) - model(other)).abs().max() / model(other).abs().max()
    assert 0 < err < 0.05


class BatchReshape(nn.Module):
    """Untraceable by torch.fx (a Python int from a shape) and batch-dependent (reshape by the batch size)."""

    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16 * 12, 4)

    def forward(self, ids):
        n = int(ids.shape[1])
        h = torch.relu(self.fc(self.e(ids)))
        return self.head(h.reshape(h.shape[0], n * 16))


def test_the_captured_batch_stays_dynamic_with_the_default_examples():
    """A model captured by torch.export runs at other batch sizes than its calibration batch."""
    torch.manual_seed(0)
    model = BatchReshape().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(model, [torch.randint(0, 50, (8, 12))], PTQConfig())
    for batch in (1, 3, 8):
        ids = torch.randint(0, 50, (batch, 12))
        with torch.no_grad():
            out, ref = q(ids), model(ids)
        assert out.shape == (batch, 4)
        assert (out - ref).abs().max() < 0.05 * ref.abs().max()

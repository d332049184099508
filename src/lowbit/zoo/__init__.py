"""Reference models for Fashion-MNIST, their training recipes and shipped weights.

>>> from lowbit import zoo
>>> model = zoo.pretrained("cnn")          # eval mode, weights from the package
>>> zoo.shipped_accuracy("cnn")            # test accuracy the shipped weights reached
0.9243
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.data import fashion_mnist
from lowbit.errors import CheckpointError, ConfigError
from lowbit.zoo.binary import BinaryCNN, BinaryMLP
from lowbit.zoo.models import MLP, BasicBlock, LeNetBN, ResNet
from lowbit.zoo.recipes import Recipe, evaluate, train
from lowbit.zoo.weights_io import load_weights, read_meta, save_weights

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    """A reference model: how to build it and how its shipped weights were trained."""

    name: str
    build: Callable[[], nn.Module]
    recipe: Recipe
    description: str
    shipped: bool = True  # float weights in the package; False: built from its seeded random init (binary nets)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("mlp", MLP, Recipe(epochs=20, lr=0.05, seed=1), "MLP 784-256-256-10, ReLU"),
        ZooEntry("cnn", LeNetBN, Recipe(epochs=12, lr=0.05, augment=True, seed=2),
                 "LeNet-style CNN: 2x (conv5x5-BN-ReLU-maxpool), FC 3136-128-10"),
        # the same CNN with average pooling: the ANN that ANN-to-SNN conversion maps exactly (lowbit.snn)
        ZooEntry("cnn-avgpool", lambda: LeNetBN(pool="avg"), Recipe(epochs=12, lr=0.05, augment=True, seed=2),
                 "LeNet-style CNN: 2x (conv5x5-BN-ReLU-avgpool), FC 3136-128-10"),
        ZooEntry("resnet", ResNet, Recipe(epochs=18, lr=0.1, augment=True, seed=3),
                 "ResNet-14: 3x3 stem, 3 stages x 2 BasicBlocks (16/32/64 ch), GAP, FC"),
        # binary networks (BNN / XNOR-Net) train from their random init with binary QAT (`lowbit qat`): no float
        # weights are shipped; the recipe is the one `train_and_save` would run for float ones
        ZooEntry("binary-mlp", BinaryMLP, Recipe(epochs=10, lr=0.05, seed=4),
                 "BinaryMLP 784-1024x3-10, Linear-BN-Hardtanh blocks, for binary QAT", shipped=False),
        ZooEntry("binary-cnn", BinaryCNN, Recipe(epochs=10, lr=0.05, augment=True, seed=5),
                 "BinaryCNN: 3x (conv3x3-BN-Hardtanh, 64/64/128 ch), 2 max pools, FC, for binary QAT",
                 shipped=False),
    )
}


def entry(name: str) -> ZooEntry:
    """The zoo entry called ``name`` (clear error listing the choices otherwise)."""
    if name not in ZOO:
        raise ConfigError(f"unknown zoo model {name!r}; choose one of {sorted(ZOO)}")
    return ZOO[name]


def build(name: str) -> nn.Module:
    """A freshly initialised (untrained) model."""
    return entry(name).build()


def start_model(name: str, seed: int = 0) -> nn.Module:
    """Where training from zoo model ``name`` starts: its shipped float weights (eval mode), or, for a model
    without any (``shipped=False``: the binary networks), its random init drawn with ``torch.manual_seed(seed)``."""
    if entry(name).shipped:
        return pretrained(name)
    torch.manual_seed(seed)
    return build(name).eval()


def weights_path(name: str, weights_dir: str | Path | None = None) -> Path:
    if weights_dir is None and not entry(name).shipped:
        raise CheckpointError(f"zoo model {name!r} has no shipped weights (binary networks train from their random "
                              f"init): use zoo.build({name!r}), or pass the weights_dir where "
                              "zoo.train_and_save wrote float weights")
    return Path(weights_dir or WEIGHTS_DIR) / f"{entry(name).name}.npz"


def pretrained(name: str, weights_dir: str | Path | None = None) -> nn.Module:
    """The model with its shipped (or ``weights_dir``'s) weights, in eval mode."""
    return load_weights(build(name), weights_path(name, weights_dir)).eval()


def shipped_accuracy(name: str, weights_dir: str | Path | None = None) -> float:
    """Fashion-MNIST test accuracy recorded when the weights were made."""
    meta = read_meta(weights_path(name, weights_dir))
    acc = meta.get("test_accuracy")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0.0 <= acc <= 1.0:
        raise CheckpointError(f"the metadata of {weights_path(name, weights_dir)} has no test_accuracy in [0, 1] "
                              f"(found {acc!r}); re-create it with 'lowbit zoo train'")
    return float(acc)


def train_and_save(name: str, out_dir: str | Path, data_root: str | Path | None = None,
                   recipe: Recipe | None = None, progress: bool = True) -> tuple[nn.Module, float]:
    """Run the model's recipe on the Fashion-MNIST train split, evaluate on test, save."""
    e = entry(name)
    recipe = recipe or e.recipe
    train_set = fashion_mnist("train", root=data_root)
    val_set = fashion_mnist("val", root=data_root)
    test_set = fashion_mnist("test", root=data_root)
    torch.manual_seed(recipe.seed)
    model = e.build()
    start = time.time()
    train(model, recipe, train_set, val_set, progress=progress)
    acc = evaluate(model, test_set)
    meta = {
        "model": name, "description": e.description, "test_accuracy": acc,
        "dataset": "fashion-mnist", "train_split": "train (55000)", "recipe": asdict(recipe),
        "train_seconds": round(time.time() - start, 1), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }
    save_weights(model, weights_path(name, out_dir), meta)
    return model, acc


__all__ = ["ZOO", "BasicBlock", "LeNetBN", "MLP", "Recipe", "ResNet", "ZooEntry", "build", "entry",
           "evaluate", "pretrained", "shipped_accuracy", "start_model", "train", "train_and_save"]

"""Training recipes for the zoo, run by the one training loop (:func:`lowbit.train`, module :mod:`lowbit.training`)."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.data import Split, batches
from lowbit.errors import ConfigError
from lowbit.training import Cosine, CrossEntropy, Hooks, LoopConfig, SGDNesterov, Shuffled
from lowbit.training import train as train_loop


@dataclass(frozen=True)
class Recipe:
    """SGD with Nesterov momentum, linear warm-up then cosine decay to zero."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    augment: bool = False
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Recipe.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0):
            raise ConfigError(f"Recipe.lr must be > 0, got {self.lr}")


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``split`` in eval mode (restores the previous mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in batches(split, batch_size):
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / len(split)


def train(model: nn.Module, recipe: Recipe, train_set: Split, val_set: Split | None = None,
          progress: bool = True, out_dir: str | Path | None = None, resume: bool = False) -> nn.Module:
    """Train ``model`` in place with ``recipe`` through :func:`lowbit.train`; returns it in eval mode.

    The data order is one generator seeded ``recipe.seed`` running through all epochs (``stream=True``),
    the schedule a linear warm-up over ``warmup_epochs`` then a cosine: the trajectory of the shipped weights.
    """
    data = Shuffled(train_set, recipe.batch_size, recipe.seed, augment=recipe.augment, stream=True)
    warmup = max(1, int(recipe.warmup_epochs * len(data)))

    def val_accuracy(m: nn.Module, row: dict) -> None:
        sys.stderr.write(f"  val acc {evaluate(m, val_set):.4f}\n")

    hooks = Hooks(epoch_end=(val_accuracy,)) if val_set is not None and progress else Hooks()
    train_loop(model, data, LoopConfig(recipe.epochs, recipe.batch_size, recipe.seed),
               optimizer=SGDNesterov(recipe.lr, recipe.momentum, recipe.weight_decay),
               loss=CrossEntropy(recipe.label_smoothing), schedule=Cosine(warmup), hooks=hooks,
               out_dir=out_dir, resume=resume, options={"recipe": asdict(recipe)}, progress=progress)
    return model.eval()

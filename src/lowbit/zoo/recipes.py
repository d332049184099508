"""Training recipes for the zoo: one seeded, readable loop (after nanoGPT's train.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.data import Split, batches, random_shift_flip
from lowbit.errors import ConfigError
from lowbit.utils.progress import Progress


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


def sgd_nesterov(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on weight matrices and kernels only (not biases, steps, BN)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                           lr=lr, momentum=momentum, nesterov=True)


def lr_at(recipe: Recipe, step: int, total: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step ``step`` of ``total``."""
    warm = max(1, int(recipe.warmup_epochs * steps_per_epoch))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


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
          progress: bool = True) -> nn.Module:
    """Train ``model`` in place with ``recipe``; returns it in eval mode."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = sgd_nesterov(model, recipe.lr, recipe.momentum, recipe.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    total, step = recipe.epochs * steps_per_epoch, 0
    for epoch in range(recipe.epochs):
        model.train()
        bar = Progress(batches(train_set, recipe.batch_size, gen), steps_per_epoch,
                       f"epoch {epoch + 1}/{recipe.epochs}", enabled=progress)
        seen = correct = 0
        for x, y in bar:
            if recipe.augment:
                x = random_shift_flip(x, gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(recipe, step, total, steps_per_epoch)
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.set(loss=float(loss.detach()), acc=correct / seen)
        if val_set is not None and progress:
            bar.stream.write(f"  val acc {evaluate(model, val_set):.4f}\n")
    return model.eval()

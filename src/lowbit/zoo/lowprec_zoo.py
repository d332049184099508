"""Shipped networks trained with low-precision parameters (``benchmarks/bench_kahan.py --save``).

``kahan-cnn-fixed8``: ``LeNetBN(16, 32, 64)`` with per-layer power-of-two weight gains
(:func:`lowbit.optim.with_weight_gains`), trained from scratch on Fashion-MNIST by
:class:`lowbit.optim.KahanSGD` with every parameter held in ``FixedPoint(8, 6)``. The file stores what
such a training holds: each parameter as its 8-bit code ``k = p 2^frac`` (int8), and BatchNorm's running
statistics (float32 buffers the optimizer never writes). Loading multiplies the codes back by ``2^-frac``
(exact) and refuses codes outside the format. The JSON beside it records the recipe, the storage and the
test accuracy, with the float-SGD and uncompensated runs of the same benchmark for comparison.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowbit.errors import CheckpointError
from lowbit.optim import FixedPoint, as_storage, is_representable, with_weight_gains
from lowbit.zoo.weights_io import load_weights, read_meta, save_state

WEIGHTS = Path(__file__).parent / "weights"
KEYS = ("kahan-cnn-fixed8",)


def weights_path(key: str, folder: str | Path | None = None) -> Path:
    if key not in KEYS:
        raise CheckpointError(f"no shipped low-precision model {key!r}; known: {', '.join(KEYS)}")
    return Path(folder or WEIGHTS) / f"{key}.npz"


def build() -> nn.Module:
    """The untrained architecture (the gains are constants of the structure)."""
    from lowbit.zoo.models import LeNetBN

    return with_weight_gains(LeNetBN(16, 32, 64))


def _storage(meta: dict, path: Path) -> FixedPoint:
    storage = as_storage(str(meta.get("storage")))
    if not isinstance(storage, FixedPoint) or storage.bits > 16:
        raise CheckpointError(f"{path}: storage {meta.get('storage')!r} is not a fixed-point format of <= 16 bits")
    return storage


@torch.no_grad()
def save_lowprec(key: str, model: nn.Module, storage: FixedPoint, meta: dict,
                 folder: str | Path | None = None) -> Path:
    """Write ``model`` (parameters holding ``storage`` values) as the weights ``key`` (in ``folder``, default the
    shipped ones): parameters as their integer codes, buffers as they are."""
    path = weights_path(key, folder)
    params = dict(model.named_parameters())
    state = {}
    for name, value in model.state_dict().items():
        if name in params:
            if not bool(is_representable(value, storage).all()):
                raise CheckpointError(f"parameter {name} holds values outside {storage.name}: train it with KahanSGD or "
                                      "LowPrecisionSGD on that storage")
            code = torch.round(value.double() * 2 ** storage.frac)
            state[name] = code.to(torch.int8 if storage.bits <= 8 else torch.int16)
        else:
            state[name] = value.detach().clone()
    meta = {**meta, "storage": storage.name, "stored": f"parameters as {storage.bits}-bit integer codes p 2^{storage.frac}"}
    return save_state(state, path, meta, compressed=True)


@torch.no_grad()
def pretrained_lowprec(key: str, folder: str | Path | None = None) -> nn.Module:
    """The shipped model ``key`` (or the one in ``folder``) in eval mode, its parameters the stored fixed-point
    values."""
    path = weights_path(key, folder)
    storage = _storage(read_meta(path), path)
    model = load_weights(build(), path)  # checksum, keys, shapes; codes arrive as float32 integers
    lo, hi = storage.min_value * 2 ** storage.frac, storage.max_value * 2 ** storage.frac
    for name, p in model.named_parameters():
        if not bool(((p == torch.round(p)) & (p >= lo) & (p <= hi)).all()):
            raise CheckpointError(f"{path}: parameter {name} holds values that are not {storage.name} codes")
        p.mul_(2.0 ** -storage.frac)
    return model.eval()


def shipped_meta(key: str) -> dict:
    return read_meta(weights_path(key))


__all__ = ["KEYS", "build", "pretrained_lowprec", "save_lowprec", "shipped_meta", "weights_path"]

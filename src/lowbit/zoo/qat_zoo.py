"""Shipped QAT weights: ResNet-14 trained with LSQ at W4A4 and W2A2 by ``benchmarks/bench_qat.py --save``.

Loading rebuilds the converted QAT graph (``prepare_qat`` on a dummy batch: only the structure
matters), loads the weights and learned steps (npz, no pickle, checksum checked) and freezes again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowbit.errors import CheckpointError
from lowbit.zoo.weights_io import load_weights, read_meta

WEIGHTS = Path(__file__).parent / "weights"
SHIP = {"LSQ W4A4": "resnet-lsq-w4a4", "LSQ W2A2": "resnet-lsq-w2a2"}
CONFIGS = {"resnet-lsq-w4a4": (4, 4), "resnet-lsq-w2a2": (2, 2)}


def weights_path(key: str) -> Path:
    return WEIGHTS / f"{key}.npz"


def pretrained_qat(key: str) -> nn.Module:
    """The converted (integer-exact) QAT model ``key``, in eval mode."""
    from lowbit import zoo
    from lowbit.formats import IntFormat
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig, convert_qat, prepare_qat
    from lowbit.spec import QuantSpec

    if key not in CONFIGS:
        raise CheckpointError(f"no shipped QAT model {key!r}; known: {sorted(CONFIGS)}")
    w, a = CONFIGS[key]
    config = QATConfig(QuantSpec(IntFormat(w), PerChannel(0)), QuantSpec(IntFormat(a, signed=False)))
    model = convert_qat(prepare_qat(zoo.pretrained("resnet"), config, torch.zeros(4, 1, 28, 28)))
    load_weights(model, weights_path(key))  # the shapes of a converted model, then its values
    return convert_qat(model)  # scales and input grids from the loaded steps


def shipped_qat_accuracy(key: str) -> float:
    return float(read_meta(weights_path(key))["test_accuracy"])


__all__ = ["CONFIGS", "SHIP", "pretrained_qat", "shipped_qat_accuracy", "weights_path"]

"""Shipped binary networks: ``BinaryCNN`` and ``BinaryMLP`` trained at W1A1 by ``benchmarks/bench_binary_accuracy.py --save``.

As :mod:`lowbit.zoo.qat_zoo`: loading rebuilds the converted QAT graph (``prepare_qat`` on a dummy
batch: only the structure matters), loads the weights (npz read without pickle, checksum checked by
:func:`lowbit.zoo.weights_io.load_weights`) and freezes again. The JSON beside each file records the
recipe and the test accuracy.

To keep the files small the weights are stored as their codes, which is all a converted model uses:

* binary layers: ``sign(w)`` as int8 (+-1, ``sign(0) = +1``), and the frozen per-channel scale
  (``mean|w|`` times the folded BatchNorm gain) in place of ``gain``: re-freezing ``+-1`` weights gives
  ``mean|w| = 1``, so the scale comes back bit for bit;
* 8-bit layers (first layer, classifier): ``round(w / scale)`` as int8, multiplied back by the
  stored scale on loading (re-freezing gives the same codes).

The archive is compressed (``np.savez_compressed``; ``np.load`` reads it as any npz).

A model whose binary weights are sampled later (``LATENT``: the stochastic-trained CNN that
:class:`lowbit.nn.ensemble.StochasticEnsemble` draws its members from, +1 with probability
``hard_sigmoid(w)``) keeps its latent float32 weights in the binary layers and its ``gain`` as trained:
re-freezing them gives the same ``mean|w| * gain`` scale, and the ensemble the same draws.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowbit.errors import CheckpointError
from lowbit.zoo.weights_io import load_weights, read_meta, save_state

WEIGHTS = Path(__file__).parent / "weights"
CONFIGS = {"binary-cnn-w1a1": "cnn", "binary-mlp-w1a1": "mlp"}  # the main job's binary table
LATENT = {"binary-cnn-w1a1s": "cnn"}  # binary layers stored as latent weights (stochastic ensembles sample them)


def weights_path(key: str) -> Path:
    return WEIGHTS / f"{key}.npz"


def _config(binary: str):
    from lowbit.formats import Binary
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec

    return QATConfig(QuantSpec(Binary(), PerChannel(0), binary=binary), QuantSpec(Binary()))


def _channel_shape(w: torch.Tensor) -> tuple[int, ...]:
    return (-1, *[1] * (w.ndim - 1))


def _check_key(key: str) -> None:
    if key not in CONFIGS and key not in LATENT:
        raise CheckpointError(f"no shipped binary model {key!r}; known: {sorted(CONFIGS) + sorted(LATENT)}")


def pretrained_binary(key: str) -> nn.Module:
    """The converted (integer-exact) W1A1 model ``key``, in eval mode."""
    from lowbit.nn.unified import unified_modules
    from lowbit.qat import convert_qat, prepare_qat
    from lowbit.zoo.binary import BinaryCNN, BinaryMLP

    _check_key(key)
    meta = read_meta(weights_path(key))
    kind = CONFIGS.get(key) or LATENT[key]
    net: nn.Module = BinaryCNN(channels=int(meta.get("channels") or 64)) if kind == "cnn" else BinaryMLP()
    model = convert_qat(prepare_qat(net, _config(str(meta.get("binary_scale", "xnor"))), torch.zeros(4, 1, 28, 28)))
    load_weights(model, weights_path(key))  # the shapes of a converted model, then its values
    with torch.no_grad():
        for _, u in unified_modules(model):
            wq = u.weight_quant
            if wq is not None and not wq.binary:  # int8 codes -> codes * scale
                u.weight.mul_(wq.scale.reshape(_channel_shape(u.weight)))
    return convert_qat(model)  # scales from the loaded weights, gains and steps


@torch.no_grad()
def save_binary(key: str, model: nn.Module, meta: dict) -> Path:
    """Write a converted W1A1 model as the shipped weights ``key`` (codes, see the module docstring; the binary layers'
    latent weights for a key in ``LATENT``); returns the npz path."""
    from lowbit.nn.unified import unified_modules

    _check_key(key)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for name, u in unified_modules(model):
        wq = u.weight_quant
        if wq is None:
            continue
        prefix = f"{name}." if name else ""
        if wq.binary and key in LATENT:
            continue  # latent float32 weights and the trained gain, as they are
        if wq.binary:
            state[prefix + "weight"] = torch.where(u.weight >= 0, 1, -1).to(torch.int8)
            state[prefix + "weight_quant.gain"] = wq.scale.detach().clone().reshape(state[prefix + "weight_quant.gain"].shape)
        else:
            s = wq.scale.reshape(_channel_shape(u.weight))
            state[prefix + "weight"] = torch.round(u.weight / s).clamp(-128, 127).to(torch.int8)
    binary = ("binary layers' latent float32 weights and gain" if key in LATENT
              else "binary weights as int8 sign codes (scale in gain)")
    meta = {**meta, "stored": f"{binary}, 8-bit weights as int8 codes"}
    return save_state(state, weights_path(key), meta, compressed=True)


def shipped_binary_accuracy(key: str) -> float:
    """The recorded test accuracy of ``key`` (a fraction, as :func:`lowbit.zoo.recipes.evaluate` returns)."""
    return float(read_meta(weights_path(key))["test_accuracy"])


__all__ = ["CONFIGS", "LATENT", "pretrained_binary", "save_binary", "shipped_binary_accuracy", "weights_path"]

"""Brevitas side of the binary-network comparison on Fashion-MNIST (``BinaryMLP`` / ``BinaryCNN`` twins).

The twins have the layer shapes of :mod:`lowbit.zoo.binary` and brevitas' own BNN recipe (its
``brevitas_examples.bnn_pynq`` LFC/CNV models):

* network input: ``QuantIdentity(Int8ActPerTensorFloat)``, first fc/conv ``Int8WeightPerTensorFloat``;
* hidden fc/conv: ``SignedBinaryWeightPerTensorConst`` with ``scaling_const=1.0`` (its default is 0.1;
  BNN-PYNQ uses 1.0), each fed by ``Hardtanh -> QuantIdentity(SignedBinaryActPerTensorConst)``;
* classifier: ``Int8WeightPerTensorFloat``, its input (the last Hardtanh) through
  ``QuantIdentity(Int8ActPerTensorFloat)``; float bias, float logits;
* BatchNorm stays a float ``BatchNorm1d/2d`` (training statistics in training, running ones in eval).

How brevitas defines "1 bit" here (``ClampedBinaryQuant``, bit_width 1, zero point 0):

* weights: ``w_q = scale * sign(w)``, ``sign(0) = +1``, ``scale = 1.0`` a constant (not learned, not
  per channel, not mean|w| as in XNOR-Net), so ``w_q`` is in {-1, +1}. Before the sign the latent
  weight is clamped to [-scale, scale] *in place* (``InplaceTensorClampSte``) with a straight-through
  gradient: the gradient reaches the latent weight unchanged, also where |w| > 1.
* activations: ``a_q = 1.0 * sign(a)`` in {-1, +1} (scale 1.0 from ``min_val=-1, max_val=1``), after a
  real clamp to [-1, 1] (``TensorClamp``, gradient zero outside) and an identity-gradient sign:
  the Hardtanh STE of Courbariaux/Hubara et al.
* as in BNN-PYNQ's trainer, the latent binary weights are clamped to [-1, 1] after every step.

The budget matches lowbit's: the same ``Shuffled`` batches (``seed``, no augmentation), Adam without
weight decay, cosine learning rate from ``lr`` to 0 over all steps, cross-entropy, ``epochs`` epochs on
the 55000-image train split, test accuracy on the official 10000 test images in eval mode.

    .venv/bin/python benchmarks/binary_brevitas.py --model mlp --epochs 1 --train-limit 5000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

DEFINITION = ("brevitas ClampedBinaryQuant (bit_width 1): weights = 1.0 * sign(w) in {-1,+1} "
              "(SignedBinaryWeightPerTensorConst, constant per-tensor scale overridden from 0.1 to 1.0 "
              "as in brevitas' BNN-PYNQ; latent w clamped in place to [-1,1] with straight-through "
              "gradient, plus a [-1,1] clip after each step); activations = 1.0 * sign(a) in {-1,+1} "
              "(SignedBinaryActPerTensorConst) after Hardtanh, gradient = identity inside [-1,1], "
              "zero outside; sign(0) = +1; first layer and classifier Int8 per-tensor float-scale "
              "weights with Int8ActPerTensorFloat inputs; BatchNorm float")


def _quantizers():
    from brevitas.quant import (Int8ActPerTensorFloat, Int8WeightPerTensorFloat, SignedBinaryActPerTensorConst,
                                SignedBinaryWeightPerTensorConst)

    binary_w = SignedBinaryWeightPerTensorConst.let(scaling_const=1.0)
    return Int8WeightPerTensorFloat, Int8ActPerTensorFloat, binary_w, SignedBinaryActPerTensorConst


def brevitas_mlp(hidden: int = 1024, depth: int = 3, num_classes: int = 10) -> nn.Sequential:
    """Twin of ``BinaryMLP``: 784 -> hidden x depth -> 10."""
    import brevitas.nn as qnn

    int8_w, int8_a, bin_w, bin_a = _quantizers()
    layers: list[nn.Module] = [nn.Flatten(), qnn.QuantIdentity(act_quant=int8_a)]
    width = 784
    for i in range(depth):
        layers += [qnn.QuantLinear(width, hidden, bias=False, weight_quant=int8_w if i == 0 else bin_w),
                   nn.BatchNorm1d(hidden), nn.Hardtanh(),
                   qnn.QuantIdentity(act_quant=int8_a if i == depth - 1 else bin_a)]
        width = hidden
    layers.append(qnn.QuantLinear(width, num_classes, bias=True, weight_quant=int8_w))
    return nn.Sequential(*layers)


def brevitas_cnn(channels: int = 64, num_classes: int = 10) -> nn.Sequential:
    """Twin of ``BinaryCNN``: conv(1->c), pool, conv(c->c), pool, conv(c->2c), Linear(2c*7*7 -> 10)."""
    import brevitas.nn as qnn

    int8_w, int8_a, bin_w, bin_a = _quantizers()
    c = channels

    def block(cin: int, cout: int, w_quant, out_quant) -> list[nn.Module]:
        # sign commutes with max pooling, so binarising before the pool equals binarising after it
        return [qnn.QuantConv2d(cin, cout, 3, padding=1, bias=False, weight_quant=w_quant),
                nn.BatchNorm2d(cout), nn.Hardtanh(), qnn.QuantIdentity(act_quant=out_quant)]

    return nn.Sequential(qnn.QuantIdentity(act_quant=int8_a),
                         *block(1, c, int8_w, bin_a), nn.MaxPool2d(2),
                         *block(c, c, bin_w, bin_a), nn.MaxPool2d(2),
                         *block(c, 2 * c, bin_w, int8_a),
                         nn.Flatten(),
                         qnn.QuantLinear(2 * c * 7 * 7, num_classes, bias=True, weight_quant=int8_w))


def _binary_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "quant_weight") and int(m.quant_weight().bit_width) == 1]


@torch.no_grad()
def _accuracy(model: nn.Module, split, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        logits = model(split.x[start:start + batch_size])
        correct += (logits.argmax(1) == split.y[start:start + batch_size]).sum().item()
    return 100.0 * correct / len(split)


def train_brevitas(model: str, epochs: int, lr: float = 0.005, batch_size: int = 128, seed: int = 0,
                   train_limit: int | None = None, progress: bool = True) -> dict:
    """Train the brevitas twin of ``model`` ("cnn" or "mlp") under lowbit's budget; return the result dict."""
    from lowbit.data import load
    from lowbit.training import Shuffled

    if model not in ("cnn", "mlp"):
        raise ValueError(f"model must be 'cnn' or 'mlp', got {model!r}")
    train, test = load("fashion-mnist", "train"), load("fashion-mnist", "test")
    if train_limit is not None:
        train = train.take(train_limit)
    batches = Shuffled(train, batch_size, seed, augment=False)

    torch.manual_seed(seed)
    net = brevitas_cnn() if model == "cnn" else brevitas_mlp()
    binary = _binary_layers(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    total_steps, step = epochs * len(batches), 0

    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        t0, loss_sum = time.perf_counter(), 0.0
        for x, y in batches.epoch(epoch):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for m in binary:
                    m.weight.clamp_(-1.0, 1.0)
            loss_sum += loss.item()
            step += 1
        if progress:
            print(f"[brevitas {model}] epoch {epoch + 1}/{epochs}: loss {loss_sum / len(batches):.4f}, "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    accuracy = _accuracy(net, test)
    seconds = time.perf_counter() - start
    return {"model": model, "tool": "brevitas", "weight_bits": 1, "act_bits": 1, "accuracy": accuracy,
            "epochs": epochs, "seconds": seconds, "train_samples": len(train), "definition": DEFINITION}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["cnn", "mlp"], required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--train-limit", type=int, default=None)
    args = p.parse_args(argv)
    print(json.dumps(train_brevitas(args.model, args.epochs, lr=args.lr, train_limit=args.train_limit), indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()

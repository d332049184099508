"""Shipped binary networks (lowbit.zoo.binary_zoo): loading without pickle, bit-exact integer model, recorded accuracy."""

import pytest
import torch

from lowbit.data import fashion_mnist
from lowbit.errors import CheckpointError
from lowbit.integer import to_integer
from lowbit.zoo.binary_zoo import CONFIGS, pretrained_binary, shipped_binary_accuracy, weights_path
from lowbit.zoo.recipes import evaluate


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_shipped_binary_weights_reproduce_recorded_accuracy(key):
    test = fashion_mnist("test")
    model = pretrained_binary(key)
    im = to_integer(model, (test.x[:2],))
    assert evaluate(im, test) == pytest.approx(shipped_binary_accuracy(key), abs=1e-9)
    with torch.no_grad():  # the converted model runs the same arithmetic
        assert torch.equal(im(test.x[:200]).argmax(1), model(test.x[:200]).argmax(1))


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_shipped_binary_weights_are_small(key):
    assert weights_path(key).stat().st_size < 1_000_000


def test_unknown_binary_key_is_refused():
    with pytest.raises(CheckpointError, match="no shipped binary model"):
        pretrained_binary("binary-resnet")

"""Data sets that load with no download: Fashion-MNIST, MNIST-5k, sklearn digits.

Every loader returns a :class:`Split` of float images normalised to zero mean and
unit variance (statistics of the training split) and int64 labels.
"""

from lowbit.data.datasets import (
    FASHION_MNIST_DIR,
    Split,
    digits,
    fashion_mnist,
    load,
    mnist5k,
)
from lowbit.data.batches import batches, random_shift_flip

__all__ = [
    "FASHION_MNIST_DIR",
    "Split",
    "batches",
    "digits",
    "fashion_mnist",
    "load",
    "mnist5k",
    "random_shift_flip",
]

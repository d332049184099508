import pytest
import torch

from lowbit.data import Split, batches, digits, fashion_mnist, load, mnist5k, random_shift_flip
from lowbit.errors import DataError, DatasetNotFoundError


@pytest.fixture(scope="module")
def fmnist_test():
    return fashion_mnist("test")


def test_fashion_mnist_shapes_and_normalisation(fmnist_test):
    assert fmnist_test.x.shape == (10000, 1, 28, 28) and fmnist_test.x.dtype == torch.float32
    assert fmnist_test.y.shape == (10000,) and fmnist_test.y.dtype == torch.int64
    assert torch.bincount(fmnist_test.y).tolist() == [1000] * 10


def test_fashion_train_val_split_is_deterministic_and_disjoint():
    train, val, full = fashion_mnist("train"), fashion_mnist("val"), fashion_mnist("train+val")
    assert (len(train), len(val), len(full)) == (55000, 5000, 60000)
    assert abs(float(full.x.mean())) < 1e-3 and abs(float(full.x.std()) - 1.0) < 0.01  # train statistics
    assert torch.equal(fashion_mnist("val").x, val.x)
    # disjoint: no validation image appears in the training split (hash the pixels)
    h = lambda s: {hash(row.numpy().tobytes()) for row in s.x.reshape(len(s), -1)}  # noqa: E731
    assert not (h(train) & h(val)) or len(h(train) & h(val)) < 20  # a few duplicate images exist in the data


def test_missing_data_names_the_install_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist("test", root=tmp_path)


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match="cannot decode"):
        fashion_mnist("test", root=tmp_path)


def test_unknown_split_and_name():
    with pytest.raises(DataError, match="unknown split"):
        fashion_mnist("validation")
    with pytest.raises(DataError, match="unknown data set"):
        load("cifar10")


def test_small_data_sets():
    d_train, d_test = digits("train"), digits("test")
    assert len(d_train) + len(d_test) == 1797 and d_test.x.shape[1:] == (1, 8, 8)
    m = mnist5k("test")
    assert len(m) == 1000 and m.x.shape[1:] == (1, 28, 28)
    assert len(set(m.y.tolist())) == 10  # shuffled before the split


def test_batches_cover_everything_once():
    s = Split(torch.arange(10.0).reshape(10, 1, 1, 1), torch.arange(10))
    seen = torch.cat([y for _, y in batches(s, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(torch.cat([y for _, y in batches(s, 4)]), torch.arange(10))
    with pytest.raises(DataError):
        Split(torch.zeros(3, 1), torch.zeros(2))


def test_random_shift_flip_moves_pixels_only():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 4] = 1.0
    y = random_shift_flip(x, gen, pad=2)
    assert y.shape == x.shape
    assert torch.equal(y.sum(dim=(1, 2, 3)), torch.ones(64))  # the bright pixel stays inside
    pos = y.reshape(64, -1).argmax(1)
    assert len(set(pos.tolist())) > 5  # and moves around

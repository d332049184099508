"""Safety of data, functional ops, zoo weights and tables, as a user meets them (issue "Safety first").

Each test passes what a user could pass by mistake (or a damaged file) and asserts one clear lowbit
error that names the problem and the fix, where lowbit used to return a result or fail deep inside.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import struct

import numpy as np
import pytest
import torch

from lowbit import zoo
from lowbit.cli.main import main
from lowbit.cost.energy import DEFAULT_TABLE, EnergyTable
from lowbit.data import fashion_mnist
from lowbit.errors import CheckpointError, ConfigError, DataError
from lowbit.formats import IntFormat
from lowbit.functional import lsq_quantize, qparams_from_range
from lowbit.ptq import quantize


def test_calibration_data_none_is_refused():
    with pytest.raises(DataError, match="calibration_data must be an iterable of batches .* got NoneType"):
        quantize(zoo.pretrained("mlp"), None)


# ---------------------------------------------------------------- Fashion-MNIST files


def _idx(dims: tuple[int, ...], fill: int = 0) -> bytes:
    return struct.pack(f">HBB{len(dims)}I", 0, 8, len(dims), *dims) + bytes([fill]) * int(np.prod(dims))


def _root(tmp_path, stem: str, images: bytes, labels: bytes):
    for kind, raw in (("images-idx3", images), ("labels-idx1", labels)):
        (tmp_path / f"{stem}-{kind}-ubyte.gz").write_bytes(gzip.compress(raw))
    return tmp_path


def test_a_small_valid_pair_loads(tmp_path):
    root = _root(tmp_path, "t10k", _idx((5, 28, 28), 7), _idx((5,), 9))
    split = fashion_mnist("test", root=root)
    assert split.x.shape == (5, 1, 28, 28) and split.y.tolist() == [9] * 5


def test_an_images_file_of_rank_1_is_refused(tmp_path):
    root = _root(tmp_path, "t10k", _idx((5,)), _idx((5,)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz holds an array of shape \(5,\), not images "
                                        r"\(N, 28, 28\)"):
        fashion_mnist("test", root=root)


def test_labels_out_of_range_are_refused(tmp_path):
    root = _root(tmp_path, "t10k", _idx((5, 28, 28)), _idx((5,), 200))
    with pytest.raises(DataError, match=r"holds labels up to 200; Fashion-MNIST has 10 classes \(0\.\.9\)"):
        fashion_mnist("test", root=root)


@pytest.mark.parametrize("val_size", [-100, 0, 2.5, True])
def test_a_validation_size_below_1_is_refused(val_size):
    with pytest.raises(ConfigError, match="val_size must be an integer >= 1"):
        fashion_mnist("val", val_size=val_size)


def test_a_validation_size_that_leaves_no_training_image_is_refused(tmp_path):
    root = _root(tmp_path, "train", _idx((5, 28, 28)), _idx((5,), 3))
    with pytest.raises(ConfigError, match=r"val_size=5 leaves no training image: .* pass val_size from 1 to 4"):
        fashion_mnist("train", root=root, val_size=5)
    assert len(fashion_mnist("train", root=root, val_size=1)) == 4
    assert len(fashion_mnist("train+val", root=root, val_size=70000)) == 5  # all images: val_size unused


# ---------------------------------------------------------------- functional ops


def test_a_range_whose_minimum_is_above_its_maximum_is_refused():
    with pytest.raises(DataError, match=r"range minimum 1\.0 is above the range maximum -1\.0"):
        qparams_from_range(torch.tensor(1.0), torch.tensor(-1.0), IntFormat(8), symmetric=False)
    with pytest.raises(DataError, match=r"range minimum 2\.0 is above the range maximum 1\.0 \(entry 1\)"):
        qparams_from_range(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]), IntFormat(8))
    scale, zp = qparams_from_range(torch.tensor(-1.0), torch.tensor(0.5), IntFormat(8), symmetric=False)
    s, z = float(scale), int(zp)  # a valid range still works: its grid spans [lo, hi] to within one step
    assert s == pytest.approx(1.5 / 255) and abs((-128 - z) * s + 1.0) <= s and abs((127 - z) * s - 0.5) <= s


def test_an_lsq_step_of_zero_is_refused():
    v = torch.randn(10)
    with pytest.raises(DataError, match="LSQ step is 0: every value would quantize to 0"):
        lsq_quantize(v, torch.tensor(0.0), 8, 7)
    with pytest.raises(DataError, match="LSQ step holds 1 NaN"):
        lsq_quantize(v, torch.tensor(float("nan")), 8, 7)
    with pytest.raises(ConfigError, match="q_n must be an int >= 0"):
        lsq_quantize(v, torch.tensor(0.1), -8, 7)
    step = torch.tensor(0.25, requires_grad=True)  # a learned step is not read (no sync in training)
    out = lsq_quantize(v, step, 8, 7)
    assert torch.equal(out.detach(), torch.clamp(torch.round(v / 0.25), -8, 7) * 0.25)


# ---------------------------------------------------------------- zoo weights re-signed by a careless tool


def _resigned(tmp_path, edit):
    for ext in (".npz", ".json"):
        shutil.copy(zoo.weights_path("mlp").with_suffix(ext), tmp_path / f"mlp{ext}")
    with np.load(tmp_path / "mlp.npz") as a:
        arrays = {k: a[k] for k in a.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (tmp_path / "mlp.npz").write_bytes(buf.getvalue())
    meta = json.loads((tmp_path / "mlp.json").read_text())
    meta["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (tmp_path / "mlp.json").write_text(json.dumps(meta))
    return tmp_path


def test_zoo_weights_with_nan_are_refused(tmp_path):
    d = _resigned(tmp_path, lambda a: a["fc1.weight"].__setitem__((0, 0), np.nan))
    with pytest.raises(CheckpointError, match="'fc1.weight' holds 1 NaN and 0 inf values"):
        zoo.pretrained("mlp", d)


def test_zoo_weights_of_strings_are_refused(tmp_path):
    d = _resigned(tmp_path, lambda a: a.update({"fc3.bias": np.array(["a"] * 10)}))
    with pytest.raises(CheckpointError, match="'fc3.bias' holds <U1 values, not numbers"):
        zoo.pretrained("mlp", d)


# ---------------------------------------------------------------- energy tables


def test_an_energy_table_with_negative_energies_is_refused(tmp_path, capsys):
    t = json.loads(DEFAULT_TABLE.read_text())
    t["energy"]["int8_mult"] = -0.2
    p = tmp_path / "neg.json"
    p.write_text(json.dumps(t))
    with pytest.raises(ConfigError, match=r"energy\.int8_mult = -0\.2; each value must be a finite number >= 0"):
        EnergyTable.load(p)
    assert main(["report", "--model", "mlp", "--rounds", "0", "--out", str(tmp_path / "r"),
                 "--energy-table", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "energy.int8_mult = -0.2" in err
    assert not list((tmp_path / "r").rglob("*"))  # refused before any report was written

"""Safety of training and checkpoints, as a user meets them (issue "Safety first", items 7 and 8).

Bad labels, images of another shape, an output folder that is a file, a float model given to QAT,
re-signed checkpoints of another format, and the temp file a killed checkpoint write leaves: each
gets one clear lowbit error (or is cleaned up) instead of a deep torch traceback or a silent run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.data import Split
from lowbit.errors import CheckpointError, ConfigError, DataError, ShapeError
from lowbit.ptq import int_weight, uint_act
from lowbit.qat import QATConfig, TrainConfig, prepare_qat
from lowbit.qat import train as qat_train
from lowbit.training import LoopConfig, load_checkpoint, save_checkpoint, train


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))


def _split(n: int = 64, y: torch.Tensor | None = None, side: int = 28) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, side, side, generator=g), y if y is not None else torch.randint(0, 10, (n,), generator=g))


_CFG = LoopConfig(epochs=1, batch_size=32)


@pytest.mark.parametrize("labels,message", [
    (torch.full((64,), 10), r"a label is 10, but the model gives 10 class scores: labels must be in 0\.\.9 "
                            r"\(32 of this batch's 32 are not\)"),
    (torch.full((64,), -1), r"a label is -1, but the model gives 10 class scores"),
    (torch.zeros(64), r"the labels are float32 of shape \(32,\): the cross-entropy loss takes integer class labels "
                      r"\(int64\) or class probabilities of the output's shape \(32, 10\); convert them with y\.long\(\)"),
    (torch.zeros(64, dtype=torch.int32), r"the labels are int32: the cross-entropy loss takes int64 class labels"),
])
def test_bad_labels_are_named(labels, message):
    with pytest.raises(DataError, match=message):
        train(_tiny(), _split(y=labels), _CFG, progress=False)


def test_good_labels_and_class_probabilities_train():
    assert train(_tiny(), _split(), _CFG, progress=False)[0]["loss"] > 0
    probs = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(1)), 1)
    assert train(_tiny(), _split(y=probs), _CFG, progress=False)[0]["accuracy"] is None


def _qat_model() -> nn.Module:
    return prepare_qat(_tiny(), QATConfig(int_weight(4), uint_act(4), first_last_bits=None), _split(16).x)


def test_qat_on_images_of_another_shape_names_the_input_and_layer():
    with pytest.raises(ShapeError, match=r"input 'input' \(it feeds layer '1'\) expects shape \(N, 1, 28, 28\), "
                                         r"a batch of any size N of the samples it was prepared with; got "
                                         r"\(32, 1, 14, 14\)"):
        qat_train(_qat_model(), _split(side=14), TrainConfig(epochs=1, batch_size=32), progress=False)


def test_qat_labels_out_of_range_are_named():
    with pytest.raises(DataError, match="a label is 10, but the model gives 10 class scores"):
        qat_train(_qat_model(), _split(y=torch.full((64,), 10)), TrainConfig(epochs=1, batch_size=32), progress=False)


def test_qat_refuses_a_model_prepare_qat_did_not_make():
    with pytest.raises(ConfigError, match=r"trains a model made by lowbit\.qat\.prepare_qat, and this Sequential was "
                                          r"not .* call model = prepare_qat\(model, QATConfig\(\.\.\.\), "):
        qat_train(_tiny().train(), _split(), TrainConfig(epochs=1, batch_size=32), progress=False)


def test_an_output_folder_that_is_a_file_is_refused_before_training(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="out_dir .*afile is a file, not a folder"):
        train(_tiny(), _split(), _CFG, out_dir=a_file, progress=False)
    with pytest.raises(ConfigError, match="out_dir .*afile is a file, not a folder"):
        qat_train(_qat_model(), _split(), TrainConfig(epochs=1, batch_size=32), a_file, progress=False)


def test_a_killed_first_write_leaves_no_temp_file_after_a_failed_resume(tmp_path):
    stale = tmp_path / ".checkpoint.pt.k1ll3d.tmp"  # kill -9 during the first checkpoint write
    stale.write_bytes(b"half a checkpoint")
    with pytest.raises(CheckpointError, match="no checkpoint at .*: run without --resume first"):
        train(_tiny(), _split(), _CFG, out_dir=tmp_path, resume=True, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(format="other"), r"has checkpoint format 'other'; this lowbit reads format 2"),
    (lambda s: s.update(fingerprint="0" * 16), r"holds entries lowbit never writes \(fingerprint\)"),
])
def test_a_resigned_checkpoint_of_another_format_is_refused(tmp_path, edit, message):
    train(_tiny(), _split(), _CFG, out_dir=tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    edit(state)
    save_checkpoint(path, state)  # a valid checksum over the altered content
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)

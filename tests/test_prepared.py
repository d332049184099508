"""The one record prepare / prepare_qat attach: what later steps read instead of loose attributes."""

from __future__ import annotations

import copy

import pytest
from torch import nn

from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.errors import ConfigError
from lowbit.prepared import ATTRIBUTE, Prepared, record_of, require_record
from lowbit.ptq import PTQConfig, int_weight, prepare, quantize
from lowbit.qat import QATConfig, TrainConfig, prepare_qat, train
from lowbit.spec import QuantSpec
from lowbit.formats import IntFormat
from lowbit.granularity import PerChannel


@pytest.fixture(scope="module")
def calib():
    return fashion_mnist("train").take(64)


def test_prepare_attaches_one_record_and_no_loose_attributes(calib):
    config = PTQConfig(int_weight(4))
    p = prepare(zoo.pretrained("cnn"), config, (calib.x[:1],))
    r = record_of(p)
    assert isinstance(r, Prepared) and r.config is config and r.traced and r.qat is None
    assert r.quant_ops.fused[0] < r.quant_ops.unfused[0]
    assert len(r.plan.input_quantizers) == 1
    loose = [k for k in vars(p) if k.startswith("lowbit_") and k not in (ATTRIBUTE, "lowbit_input_check")]
    assert loose == []


def test_the_record_survives_a_deep_copy(calib):
    q = quantize(zoo.pretrained("mlp"), [calib.x[:32]])
    assert record_of(copy.deepcopy(q)) == record_of(q)


def test_prepare_qat_records_its_config_and_train_reads_it(calib):
    config = QATConfig(QuantSpec(IntFormat(4), PerChannel(0)),
                       QuantSpec(IntFormat(4, signed=False)))
    m = prepare_qat(zoo.pretrained("mlp"), config, calib.x[:32])
    assert record_of(m).qat is config
    history = train(m, calib, TrainConfig(epochs=1, batch_size=32, augment=False), progress=False)
    assert len(history) == 1 and history[0]["loss"] > 0


def test_train_refuses_a_model_prepared_for_ptq(calib):
    p = prepare(zoo.pretrained("mlp"), PTQConfig(), (calib.x[:1],))
    with pytest.raises(ConfigError, match="it was prepared for post-training quantization"):
        train(p, calib, TrainConfig(epochs=1, batch_size=32), progress=False)


def test_a_model_lowbit_did_not_prepare_has_no_record():
    m = nn.Linear(2, 2)
    assert record_of(m) is None
    with pytest.raises(ConfigError, match="needs a model returned by lowbit.ptq.prepare"):
        require_record(m, "something")

"""Bad values found by the bad-input catalogue (benchmarks/bad_inputs.py): refused where they enter, with the
field and the allowed range named, instead of being accepted and failing later (or never)."""

import pytest

from lowbit import zoo
from lowbit.data import fashion_mnist
from lowbit.errors import ConfigError
from lowbit.export.onnx_qdq import export_onnx
from lowbit.granularity import PerChannel
from lowbit.integer.io import save_integer
from lowbit.qat import TrainConfig
from lowbit.utils.files import atomic_write_text


@pytest.mark.parametrize("kw, field", [
    ({"epochs": 1.5}, "epochs"), ({"epochs": "3"}, "epochs"), ({"batch_size": 2.5}, "batch_size"),
    ({"seed": -1}, "seed"), ({"lr": float("inf")}, "lr"), ({"lr": "0.1"}, "lr"), ({"augment": "no"}, "augment"),
    ({"momentum": float("nan")}, "momentum"), ({"momentum": 2.0}, "momentum"), ({"temperature": 0.0}, "temperature"),
])
def test_train_config_refuses(kw, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kw)


def test_train_config_defaults_are_valid():
    assert TrainConfig().epochs == 3


@pytest.mark.parametrize("axis", ["0", 1.5, True])
def test_per_channel_axis_must_be_an_integer(axis):
    with pytest.raises(ConfigError, match="PerChannel.axis"):
        PerChannel(axis)


@pytest.mark.parametrize("n", [-5, 0, 10**6])
def test_take_refuses_counts_outside_the_split(n):
    with pytest.raises(ConfigError, match=r"take\("):
        fashion_mnist("test").take(n)


def test_take_returns_the_first_n():
    s = fashion_mnist("test")
    assert (s.take(3).y == s.y[:3]).all()


def test_saving_or_exporting_a_float_model_names_the_fix(tmp_path):
    m = zoo.pretrained("mlp")
    with pytest.raises(ConfigError, match="to_integer"):
        save_integer(m, tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="to_integer"):
        export_onnx(m, tmp_path / "m.onnx", (1, 1, 28, 28))


def test_atomic_write_to_a_folder_or_an_unwritable_place(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    with pytest.raises(ConfigError, match="cannot write"):
        atomic_write_text("/proc/lowbit-nope/x", "x")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


@pytest.mark.parametrize("make,words", [
    (lambda: __import__("lowbit.ptq", fromlist=["x"]).PTQConfig(weight_bit=4), ["no field 'weight_bit'", "did you mean 'weight'"]),
    (lambda: __import__("lowbit.ptq", fromlist=["x"]).PTQConfig(weight_bits=4), ["no field 'weight_bits'", "int_weight(4)"]),
    (lambda: __import__("lowbit.qat", fromlist=["x"]).QATConfig(act_bits=2), ["QATConfig has no field 'act_bits'", "uint_act"]),
    (lambda: __import__("lowbit.weight_only", fromlist=["x"]).WeightOnlyConfig(fmt=8), ["one QuantSpec now"]),
    (lambda: __import__("lowbit.spec", fromlist=["x"]).QuantSpec(bits=4), ["QuantSpec has no field 'bits'", "format"]),
    (lambda: __import__("lowbit.ptq", fromlist=["x"]).PTQConfig(*range(10)), ["at most 9 positional arguments"]),
])
def test_config_classes_refuse_unknown_keywords_naming_the_fields(make, words):
    """A dataclass would raise a bare TypeError; lowbit names the field, the closest one and the new spelling."""
    with pytest.raises(ConfigError) as info:
        make()
    for w in words:
        assert w in str(info.value)


def test_ptq_config_takes_a_rule_list_and_stays_hashable():
    from lowbit.ptq import LayerRule, PTQConfig, int_weight
    c = PTQConfig(rules=[LayerRule("fc1", weight=int_weight(4))])
    assert c.rules == (LayerRule("fc1", weight=int_weight(4)),)
    assert hash(c) == hash(PTQConfig(rules=(LayerRule("fc1", weight=int_weight(4)),)))

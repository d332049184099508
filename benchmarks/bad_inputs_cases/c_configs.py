"""Configs: PTQConfig, QATConfig, TrainConfig, WeightOnlyConfig, LayerRule, formats and granularities
with bad bits, types, NaN and negative values; and a few that pass construction and fail in use."""

from __future__ import annotations

import math
from dataclasses import replace

from bad_inputs_cases import Wrong, add, case

NAN, INF = math.nan, math.inf
CAT = "configs"


def _ptq(**kw):
    from lowbit.ptq import PTQConfig
    return lambda: PTQConfig(**kw)


def _qat(*a, **kw):
    from lowbit.qat import QATConfig
    return lambda: QATConfig(*a, **kw)


def _train(**kw):
    from lowbit.qat import TrainConfig
    return lambda: TrainConfig(**kw)


def _bits_name(v) -> str:
    """A case-name tag for a value: its type shows where the repr alone would collide."""
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, str):
        return f"str_{v}"
    if isinstance(v, tuple):
        return "tuple_of_" + "_".join(type(x).__name__ for x in v)
    return repr(v)


def _spec(*a, **kw):
    from lowbit.spec import QuantSpec
    return QuantSpec(*a, **kw)


def _f(name, *a, **kw):
    import lowbit.formats as f
    return getattr(f, name)(*a, **kw)


def _g(name, *a):
    import lowbit.granularity as g
    return getattr(g, name)(*a)


def _o(name, *a):
    import lowbit.spec as s
    return getattr(s, name)(*a)


# the old keywords (bit widths, granularity and observer strings) are refused, naming the spec that replaces them
for field, v in (("weight_bits", 4), ("act_bits", 4), ("weight_granularity", "tensor"), ("weight_observer", "mse"),
                 ("act_observer", "percentile"), ("act_percentile", 99.9), ("pow2_scales", True)):
    add(CAT, f"PTQConfig_old_keyword_{field}", "error", lambda f=field, v=v: _ptq(**{f: v})())
for v in (4, "int4", None, True, NAN):
    add(CAT, f"PTQConfig_weight_{_bits_name(v)}", "error", lambda v=v: _ptq(weight=v)())
for v in (8, "uint8", None):
    add(CAT, f"PTQConfig_act_{_bits_name(v)}", "error", lambda v=v: _ptq(act=v)())
add(CAT, "PTQConfig_weight_a_format_not_a_spec", "error", lambda: _ptq(weight=_f("IntFormat", 4))())
for tag, make in (("Binary_PerGroup_8", lambda: _spec(_f("Binary"), _g("PerGroup", 8))),
                  ("Log2_4", lambda: _spec(_f("Log2", 4), _g("PerChannel", 0))),
                  ("PowerOfTwo_6", lambda: _spec(_f("PowerOfTwo", 6), _g("PerChannel", 0))),
                  ("unsigned_int8", lambda: _spec(_f("IntFormat", 8, signed=False), _g("PerChannel", 0))),
                  ("asymmetric_int8", lambda: _spec(_f("IntFormat", 8), _g("PerChannel", 0), symmetric=False)),
                  ("int17", lambda: _spec(_f("IntFormat", 17), _g("PerChannel", 0))),
                  ("PerChannel_1", lambda: _spec(_f("IntFormat", 4), _g("PerChannel", 1))),
                  ("PerGroup_8", lambda: _spec(_f("IntFormat", 4), _g("PerGroup", 8)))):
    add(CAT, f"PTQConfig_weight_spec_{tag}", "error", lambda m=make: _ptq(weight=m())())
for tag, make in (("Ternary", lambda: _spec(_f("Ternary"))),
                  ("signed_PerChannel", lambda: _spec(_f("IntFormat", 8, signed=False), _g("PerChannel", 1))),
                  ("int1", lambda: _spec(_f("IntFormat", 1))),
                  ("Binary_PerChannel", lambda: _spec(_f("Binary"), _g("PerChannel", 1)))):
    add(CAT, f"PTQConfig_act_spec_{tag}", "error", lambda m=make: _ptq(act=m())())
for v in (0, 1, 33, "8"):
    add(CAT, f"PTQConfig_first_last_bits_{_bits_name(v)}", "error", lambda v=v: _ptq(first_last_bits=v)())
for field, v in (("rounding", "stochastic"), ("equalize_alpha", -0.1), ("equalize_alpha", 1.5),
                 ("equalize_alpha", NAN), ("equalize_alpha", "half"), ("rules", ("fc1",)), ("rules", "fc1"),
                 ("bias_correction", "no"), ("equalize", "yes"), ("bias_correction", None)):
    add(CAT, f"PTQConfig_{field}_{_bits_name(v)}", "error", lambda f=field, v=v: _ptq(**{f: v})())
add(CAT, "PTQConfig_gptq_with_ternary", "error",
    lambda: _ptq(weight=_spec(_f("Ternary"), _g("PerChannel", 0)), rounding="gptq")())
add(CAT, "PTQConfig_too_many_positional", "error", lambda: _ptq()().__class__(*range(9)))

# QuantSpec fields
for tag, make in (("format_str", lambda: _spec("int8")), ("format_int", lambda: _spec(8)),
                  ("granularity_str", lambda: _spec(_f("IntFormat", 8), "channel")),
                  ("granularity_None", lambda: _spec(_f("IntFormat", 8), None)),
                  ("observer_str", lambda: _spec(_f("IntFormat", 8), _g("PerTensor"), "percentile")),
                  ("symmetric_str", lambda: _spec(_f("IntFormat", 8), symmetric="no")),
                  ("pow2_scale_str", lambda: _spec(_f("IntFormat", 8), pow2_scale="yes")),
                  ("ternary_magic", lambda: _spec(_f("Ternary"), ternary="magic")),
                  ("ternary_twn_on_int", lambda: _spec(_f("IntFormat", 4), ternary="twn")),
                  ("mse_observer_on_ternary", lambda: _spec(_f("Ternary"), observer=_o("MSE"))),
                  ("pow2_scale_on_ternary", lambda: _spec(_f("Ternary"), pow2_scale=True)),
                  ("channel_percentile_per_channel", lambda: _spec(_f("IntFormat", 8), _g("PerChannel", 0),
                                                                   _o("ChannelPercentile"))),
                  ("unknown_keyword_bits", lambda: _spec(bits=4))):
    add(CAT, f"QuantSpec_{tag}", "error", make)
for v in (0.0, 101.0, NAN, -5.0, "high", 150.0, True):
    add(CAT, f"Percentile_{_bits_name(v)}", "error", lambda v=v: _o("Percentile", v))
for v in (0.0, -0.1, 1.5, NAN):
    add(CAT, f"MovingAverage_{_bits_name(v)}", "error", lambda v=v: _o("MovingAverage", v))


@case(CAT, "error")
def PTQConfig_unknown_keyword():
    _ptq(weight_bit=4)()


@case(CAT, "any")
def PTQConfig_rules_as_list():
    """A list where a tuple is asked: refuse it, or take it and stay a usable (hashable) frozen config."""
    from lowbit.ptq import LayerRule, PTQConfig, int_weight
    c = PTQConfig(rules=[LayerRule("fc1", weight=int_weight(4))])
    hash(c)
    return "rules list accepted, config hashable"


@case(CAT, "valid")
def PTQConfig_defaults_and_extremes():
    from lowbit.ptq import PTQConfig, int_weight, uint_act
    for wb in (2, 8, 16):
        c = PTQConfig(int_weight(wb), uint_act(16 if wb == 16 else 8), first_last_bits=None)
        if c.weight.format.bits != wb:
            raise Wrong("weight bits not stored")
    c = PTQConfig(_spec(_f("Ternary"), _g("PerChannel", 0), ternary="twn"))
    PTQConfig(_spec(_f("PowerOfTwo", 4), _g("PerTensor")), rules=[])


for v in (5, None, b"fc1", ["fc1"]):
    add(CAT, f"LayerRule_pattern_{type(v).__name__}", "error",
        lambda v=v: __import__("lowbit.ptq", fromlist=["LayerRule"]).LayerRule(v))
for field, v in (("weight", 4), ("act", "8"), ("keep_float", "yes"), ("weight_bits", 4), ("act_bits", 4)):
    add(CAT, f"LayerRule_{field}_{_bits_name(v)}", "error",
        lambda f=field, v=v: __import__("lowbit.ptq", fromlist=["LayerRule"]).LayerRule("fc1", **{f: v}))
add(CAT, "LayerRule_weight_Log2", "error",
    lambda: _ptq(rules=(__import__("lowbit.ptq", fromlist=["LayerRule"]).LayerRule(
        "fc1", weight=_spec(_f("Log2", 4), _g("PerChannel", 0))),))())
add(CAT, "LayerRule_keep_float_with_a_spec", "error",
    lambda: __import__("lowbit.ptq", fromlist=["LayerRule"]).LayerRule(
        "fc1", weight=_spec(_f("IntFormat", 4), _g("PerChannel", 0)), keep_float=True))


@case(CAT, "error")
def LayerRule_empty_pattern():
    from lowbit.ptq import LayerRule
    LayerRule("")


def _w(bits):
    return lambda: _spec(_f("IntFormat", bits), _g("PerChannel", 0))


def _a(bits):
    return lambda: _spec(_f("IntFormat", bits, signed=False))


for make, kw, tag in ((_w(9), {}, "weight_int9"), (lambda: 4, {}, "weight_int_4"), (_a(9), {}, "act_uint9"),
                      (lambda: _spec(_f("Binary"), _g("PerTensor")), {}, "weight_Binary_PerTensor"),
                      (lambda: "4", {}, "weight_str"), (_w(4), {"method": "magic"}, "method_magic"),
                      (_w(4), {"convention": "x"}, "convention_x"), (_w(4), {"init": "x"}, "init_x"),
                      (_w(4), {"bn_freeze_steps": -1}, "bn_freeze_steps_-1"),
                      (_w(4), {"bn_freeze_steps": 1.5}, "bn_freeze_steps_1.5"),
                      (_w(4), {"bn_freeze_steps": True}, "bn_freeze_steps_True"),
                      (lambda: _spec(_f("IntFormat", 4), _g("PerTensor")), {"bn_freeze_steps": 0},
                       "per_tensor_with_bn_freeze_steps"),
                      (_w(4), {"first_last_bits": 9}, "first_last_bits_9"),
                      (_w(4), {"first_last_bits": 1}, "first_last_bits_1"),
                      (_w(4), {"weight_bits": 4}, "old_keyword_weight_bits")):
    add(CAT, f"QATConfig_{tag}", "error", lambda m=make, k=kw: _qat(m(), **k)())
add(CAT, "QATConfig_act_int9", "error", lambda: _qat(act=_a(9)())())

for field, v in (("epochs", 0), ("epochs", -1), ("epochs", 1.5), ("epochs", "3"), ("batch_size", 0),
                 ("batch_size", -3), ("batch_size", 2.5), ("lr", 0.0), ("lr", -0.1), ("lr", NAN), ("lr", INF),
                 ("distill", -0.1), ("distill", 1.5), ("distill", NAN), ("weight_decay", -1.0),
                 ("weight_decay", NAN), ("momentum", -1.0), ("momentum", NAN), ("momentum", 2.0),
                 ("temperature", 0.0), ("temperature", -1.0), ("temperature", NAN), ("seed", -1), ("seed", 1.5),
                 ("augment", "no"), ("lr", "0.1"), ("epoch", 3)):
    add(CAT, f"TrainConfig_{field}_{_bits_name(v)}", "error", lambda f=field, v=v: _train(**{f: v})())


@case(CAT, "valid")
def TrainConfig_and_QATConfig_extremes():
    from lowbit.qat import QATConfig, TrainConfig
    TrainConfig(epochs=1, batch_size=1, lr=1e-6, distill=1.0, weight_decay=0.0)
    QATConfig(_w(2)(), _a(2)())
    QATConfig(_w(8)(), _a(8)(), method="faq", bn_freeze_steps=0, first_last_bits=None)
    QATConfig(_spec(_f("IntFormat", 8), _g("PerTensor")), _a(8)(), method="faq", first_last_bits=None)
    QATConfig(_spec(_f("Ternary"), _g("PerChannel", 0)), _a(8)())


def _wo(**kw):
    from lowbit.weight_only import WeightOnlyConfig
    return WeightOnlyConfig(**kw)


add(CAT, "WeightOnlyConfig_weight_str", "error", lambda: _wo(weight="int8"))
add(CAT, "WeightOnlyConfig_weight_int", "error", lambda: _wo(weight=8))
add(CAT, "WeightOnlyConfig_weight_a_format", "error", lambda: _wo(weight=_f("IntFormat", 4)))
add(CAT, "WeightOnlyConfig_old_keyword_fmt", "error", lambda: _wo(fmt=_f("IntFormat", 4)))
add(CAT, "WeightOnlyConfig_old_keyword_granularity", "error", lambda: _wo(granularity=_g("PerChannel", 0)))
add(CAT, "WeightOnlyConfig_weight_None", "error", lambda: _wo(weight=None))


@case(CAT, "error")
def quantize_weights_with_unfit_granularity_axis():
    from bad_inputs_cases import fixtures
    from lowbit.granularity import PerChannel
    from lowbit.formats import IntFormat
    from lowbit.spec import QuantSpec
    from lowbit.weight_only import WeightOnlyConfig, quantize_weights
    quantize_weights(fixtures.model("mlp"), WeightOnlyConfig(QuantSpec(IntFormat(4), PerChannel(7))))


@case(CAT, "error")
def quantize_weights_pergroup_not_dividing():
    from bad_inputs_cases import fixtures
    from lowbit.granularity import PerGroup
    from lowbit.formats import IntFormat
    from lowbit.spec import QuantSpec
    from lowbit.weight_only import WeightOnlyConfig, quantize_weights
    quantize_weights(fixtures.model("cnn"), WeightOnlyConfig(QuantSpec(IntFormat(4), PerGroup(7))))


def _fmt(name, *a, **kw):
    import lowbit.formats as f
    return lambda: getattr(f, name)(*a, **kw)


for name, a, kw, tag in (("IntFormat", (0,), {}, "0"), ("IntFormat", (17,), {}, "17"), ("IntFormat", (-1,), {}, "-1"),
                         ("IntFormat", (8.0,), {}, "8.0"), ("IntFormat", ("8",), {}, "str"),
                         ("IntFormat", (1,), {"narrow": True}, "1_narrow"),
                         ("IntFormat", (8,), {"signed": False, "narrow": True}, "unsigned_narrow"),
                         ("PowerOfTwo", (1,), {}, "1"), ("PowerOfTwo", (9,), {}, "9"), ("Ternary", (3,), {}, "3"),
                         ("Binary", (2,), {}, "2"), ("Log2", (1,), {}, "1"), ("Log2", (9,), {}, "9"),
                         ("DynamicFixedPoint", (0,), {}, "0"), ("DynamicFixedPoint", (NAN,), {}, "nan")):
    add(CAT, f"{name}_{tag}", "error", _fmt(name, *a, **kw))


def _gran(name, *a):
    import lowbit.granularity as g
    return lambda: getattr(g, name)(*a)


for name, a, tag in (("PerGroup", (0,), "0"), ("PerGroup", (-1,), "-1"), ("PerGroup", (2.5,), "2.5"),
                     ("PerChannel", ("0",), "str"), ("PerChannel", (1.5,), "1.5")):
    add(CAT, f"{name}_{tag}", "error", _gran(name, *a))


@case(CAT, "error")
def quantize_with_percentile_150_in_use():
    """A percentile of 150 passes construction unless validated; in use it must not calibrate silently."""
    from bad_inputs_cases import fixtures
    from lowbit.ptq import PTQConfig, quantize
    from lowbit.ptq import uint_act
    from lowbit.spec import Percentile
    quantize(fixtures.model("mlp"), [fixtures.calib(8)], PTQConfig(act=replace(uint_act(8), observer=Percentile(150.0))))


@case(CAT, "error")
def quantize_with_a_QATConfig():
    from bad_inputs_cases import fixtures
    from lowbit.ptq import quantize
    from lowbit.qat import QATConfig
    quantize(fixtures.model("mlp"), [fixtures.calib(8)], QATConfig())


@case(CAT, "error")
def quantize_with_config_dict():
    from bad_inputs_cases import fixtures
    from lowbit.ptq import quantize
    quantize(fixtures.model("mlp"), [fixtures.calib(8)], {"weight_bits": 4})

"""Configs: PTQConfig, QATConfig, TrainConfig, WeightOnlyConfig, LayerRule, formats and granularities
with bad bits, types, NaN and negative values; and a few that pass construction and fail in use."""

from __future__ import annotations

import math

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


for v in (0, 1, -1, 17, 100, 2.5, "8", None, True, NAN, 8.0):
    add(CAT, f"PTQConfig_weight_bits_{_bits_name(v)}", "error", lambda v=v: _ptq(weight_bits=v)())
for v in (0, 1, 17, 4.0, "4", -8):
    add(CAT, f"PTQConfig_act_bits_{_bits_name(v)}", "error", lambda v=v: _ptq(act_bits=v)())
for v in (0, 1, 33, "8"):
    add(CAT, f"PTQConfig_first_last_bits_{_bits_name(v)}", "error", lambda v=v: _ptq(first_last_bits=v)())
for field, v in (("weight_granularity", "row"), ("weight_granularity", None), ("weight_observer", "percentile"),
                 ("act_observer", "bogus"), ("rounding", "stochastic"), ("equalize_alpha", -0.1),
                 ("equalize_alpha", 1.5), ("equalize_alpha", NAN), ("act_percentile", 0.0),
                 ("act_percentile", 101.0), ("act_percentile", NAN), ("act_percentile", -5.0),
                 ("rules", ("fc1",)), ("rules", "fc1"), ("pow2_scales", "yes"), ("bias_correction", "no"),
                 ("equalize", "yes"), ("act_percentile", "high")):
    add(CAT, f"PTQConfig_{field}_{_bits_name(v)}", "error", lambda f=field, v=v: _ptq(**{f: v})())


@case(CAT, "error")
def PTQConfig_unknown_keyword():
    _ptq(weight_bit=4)()


@case(CAT, "any")
def PTQConfig_rules_as_list():
    """A list where a tuple is asked: refuse it, or take it and stay a usable (hashable) frozen config."""
    from lowbit.ptq import LayerRule, PTQConfig
    c = PTQConfig(rules=[LayerRule("fc1", weight_bits=4)])
    hash(c)
    return "rules list accepted, config hashable"


@case(CAT, "valid")
def PTQConfig_defaults_and_extremes():
    from lowbit.ptq import PTQConfig
    for wb in (2, 8, 16):
        c = PTQConfig(weight_bits=wb, act_bits=16 if wb == 16 else 8, first_last_bits=None)
        if c.weight_bits != wb:
            raise Wrong("weight_bits not stored")


for v in (5, None, b"fc1", ["fc1"]):
    add(CAT, f"LayerRule_pattern_{type(v).__name__}", "error",
        lambda v=v: __import__("lowbit.ptq", fromlist=["LayerRule"]).LayerRule(v))
for field, v in (("weight_bits", 1), ("weight_bits", 99), ("act_bits", 0), ("act_bits", 4.5), ("keep_float", "yes"),
                 ("weight_bits", "4")):
    add(CAT, f"LayerRule_{field}_{_bits_name(v)}", "error",
        lambda f=field, v=v: __import__("lowbit.ptq", fromlist=["LayerRule"]).LayerRule("fc1", **{f: v}))


@case(CAT, "error")
def LayerRule_empty_pattern():
    from lowbit.ptq import LayerRule
    LayerRule("")


for args, kw, tag in (((1, 4), {}, "weight_bits_1"), ((9, 4), {}, "weight_bits_9"), ((0, 4), {}, "weight_bits_0"),
                      ((4.5, 4), {}, "weight_bits_4.5"), ((4, 1), {}, "act_bits_1"), ((4, 9), {}, "act_bits_9"),
                      ((4, "4"), {}, "act_bits_str"), ((4, 4), {"method": "magic"}, "method_magic"),
                      ((4, 4), {"convention": "x"}, "convention_x"), ((4, 4), {"init": "x"}, "init_x"),
                      ((4, 4), {"bn_freeze_steps": -1}, "bn_freeze_steps_-1"),
                      ((4, 4), {"bn_freeze_steps": 1.5}, "bn_freeze_steps_1.5"),
                      ((4, 4), {"bn_freeze_steps": True}, "bn_freeze_steps_True"),
                      ((4, 4), {"weight_granularity": "x"}, "weight_granularity_x"),
                      ((4, 4), {"first_last_bits": 9}, "first_last_bits_9"),
                      ((4, 4), {"first_last_bits": 1}, "first_last_bits_1")):
    add(CAT, f"QATConfig_{tag}", "error", lambda a=args, k=kw: _qat(*a, **k)())

for field, v in (("epochs", 0), ("epochs", -1), ("epochs", 1.5), ("epochs", "3"), ("batch_size", 0),
                 ("batch_size", -3), ("batch_size", 2.5), ("lr", 0.0), ("lr", -0.1), ("lr", NAN), ("lr", INF),
                 ("distill", -0.1), ("distill", 1.5), ("distill", NAN), ("weight_decay", -1.0),
                 ("weight_decay", NAN), ("momentum", -1.0), ("momentum", NAN), ("momentum", 2.0),
                 ("temperature", 0.0), ("temperature", -1.0), ("temperature", NAN), ("seed", -1), ("seed", 1.5),
                 ("augment", "no"), ("lr", "0.1")):
    add(CAT, f"TrainConfig_{field}_{_bits_name(v)}", "error", lambda f=field, v=v: _train(**{f: v})())


@case(CAT, "valid")
def TrainConfig_and_QATConfig_extremes():
    from lowbit.qat import QATConfig, TrainConfig
    TrainConfig(epochs=1, batch_size=1, lr=1e-6, distill=1.0, weight_decay=0.0)
    QATConfig(2, 2)
    QATConfig(8, 8, method="faq", bn_freeze_steps=0, weight_granularity="tensor", first_last_bits=None)


def _wo(**kw):
    from lowbit.weight_only import WeightOnlyConfig
    return WeightOnlyConfig(**kw)


add(CAT, "WeightOnlyConfig_fmt_str", "error", lambda: _wo(fmt="int8"))
add(CAT, "WeightOnlyConfig_fmt_int", "error", lambda: _wo(fmt=8))
add(CAT, "WeightOnlyConfig_granularity_str", "error", lambda: _wo(granularity="channel"))
add(CAT, "WeightOnlyConfig_granularity_None", "error", lambda: _wo(granularity=None))
add(CAT, "WeightOnlyConfig_symmetric_str", "error", lambda: _wo(symmetric="no"))


@case(CAT, "error")
def quantize_weights_with_unfit_granularity_axis():
    from bad_inputs_cases import fixtures
    from lowbit.granularity import PerChannel
    from lowbit.weight_only import WeightOnlyConfig, quantize_weights
    quantize_weights(fixtures.model("mlp"), WeightOnlyConfig(granularity=PerChannel(7)))


@case(CAT, "error")
def quantize_weights_pergroup_not_dividing():
    from bad_inputs_cases import fixtures
    from lowbit.granularity import PerGroup
    from lowbit.weight_only import WeightOnlyConfig, quantize_weights
    quantize_weights(fixtures.model("cnn"), WeightOnlyConfig(granularity=PerGroup(7)))


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
    quantize(fixtures.model("mlp"), [fixtures.calib(8)], PTQConfig(act_observer="percentile", act_percentile=150.0))


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

"""Models: architectures lowbit cannot (fully) quantize - LSTM, attention, multi-input, tuple/dict output,
TorchScript, data-dependent branches, no layers - and the caller's model, which must stay unchanged
(train-mode BatchNorm statistics, mode, parameters)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from bad_inputs_cases import Wrong, add, case, fixtures

CAT = "models"


def _quantize(model, x, **kw):
    from lowbit.ptq import PTQConfig, quantize
    return quantize(model, [x], PTQConfig(**kw))


def _first(v):
    """A tuple or dict output's first entry (the logits), else the output itself."""
    if isinstance(v, (tuple, list)):
        return v[0]
    return next(iter(v.values())) if isinstance(v, dict) else v


def _near(q, model, x, tol=0.15) -> str:
    with torch.no_grad():
        ref, out = model(x), q(x)
    ref, out = _first(ref), _first(out)
    err = float((out - ref).norm() / ref.norm().clamp_min(1e-12))
    if not err < tol:
        raise Wrong(f"quantized output far from the float model: relative error {err:.3f}")
    return f"quantized; relative error {err:.3f} to float"


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(28, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        out, _ = self.lstm(x.flatten(1, 2))
        return self.fc(out[:, -1])


class AttnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(28, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = self.proj(x.flatten(1, 2))
        a, _ = self.attn(h, h, h)
        return self.fc(a.mean(1))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(784, 32), nn.Linear(784, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x, y):
        return self.fc(torch.relu(self.a(x.flatten(1)) + self.b(y.flatten(1))))


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 64), nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(h), h


class DictOut(TupleOut):
    def forward(self, x):
        logits, h = super().forward(x)
        return {"logits": logits, "hidden": h}


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 64), nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        if h.sum() > 0:  # data-dependent control flow
            return self.fc2(h)
        return self.fc3(h)


class NoLayers(nn.Module):
    def forward(self, x):
        return torch.relu(x).flatten(1)[:, :10]


class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class NoPair(nn.Module):
    """Two Linears with a sigmoid between: nothing channel equalization can rescale."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.sigmoid(self.fc1(x.flatten(1))))


class Shared(nn.Module):
    """One Linear called twice."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc = nn.Linear(784, 64), nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.out(torch.relu(self.fc(torch.relu(self.fc(h)))))


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = x.flatten(1)
        x.mul_(1.0)
        return self.fc2(self.fc1(x).relu_())


class ScalarOut(OneLinear):
    def forward(self, x):
        return self.fc(x.flatten(1)).sum()


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(28, 16, 3)
        self.fc = nn.Linear(16 * 26, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c(x.flatten(1, 2))).flatten(1))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv3d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c(x.unsqueeze(2))).flatten(1))


class DeconvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.ConvTranspose2d(1, 4, 2, stride=2)
        self.fc = nn.Linear(4 * 56 * 56, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c(x)).flatten(1))


class NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8 * 28 * 28)
        self.fc = nn.Linear(8 * 28 * 28, 10)

    def forward(self, x):
        return self.fc(self.ln(torch.relu(self.gn(self.c(x))).flatten(1)))


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


def _calib(n=16):
    return fixtures.calib(n)


for cls in (LSTMNet, AttnNet, TupleOut, DictOut, Branchy, Shared, InPlace, Conv1dNet, Conv3dNet, DeconvNet, NormNet):
    add(CAT, f"quantize_{cls.__name__}", "any", lambda cls=cls: _near(_quantize(_seeded(cls), _calib()), _seeded(cls),
                                                                        fixtures.xs(32)))

add(CAT, "quantize_NoLayers", "error", lambda: _quantize(_seeded(NoLayers), _calib()))
add(CAT, "quantize_empty_Sequential", "error", lambda: _quantize(nn.Sequential().eval(), _calib()))
add(CAT, "quantize_ScalarOut", "any", lambda: _near(_quantize(_seeded(ScalarOut), _calib()), _seeded(ScalarOut),
                                                    fixtures.xs(32)))
add(CAT, "quantize_not_a_module", "error", lambda: _quantize(lambda x: x, _calib()))
add(CAT, "quantize_a_string", "error", lambda: _quantize("cnn", _calib()))


@case(CAT, "valid")
def quantize_TwoInputs():
    """(x, y) tuples are both inputs of forward(x, y) (PTQ takes multi-input models)."""
    from lowbit.ptq import PTQConfig, quantize
    m = _seeded(TwoInputs)
    x, y = _calib(), fixtures.xs(32)[:16]
    q = quantize(m, [(x, y)], PTQConfig())
    with torch.no_grad():
        err = float((q(x, y) - m(x, y)).norm() / m(x, y).norm())
    if not err < 0.15:
        raise Wrong(f"relative error {err:.3f}")
    return f"relative error {err:.3f}"


@case(CAT, "error")
def quantize_TwoInputs_one_tensor_per_batch():
    """One tensor per batch leaves forward(x, y) without y: refused, naming y."""
    from lowbit.ptq import PTQConfig, quantize
    x = _calib()
    quantize(_seeded(TwoInputs), [x], PTQConfig(), example_inputs=(x[:1], x[:1]))


@case(CAT, "any", misleading=r"no Conv or Linear layer|call lowbit\.ptq\.prepare first")
def quantize_torchscript_cnn():
    m = torch.jit.script(fixtures.model("cnn"))
    return _near(_quantize(m, _calib()), fixtures.model("cnn"), fixtures.xs(32))


@case(CAT, "any")
def quantize_float64_model():
    m = fixtures.model("cnn").double()
    return _near(_quantize(m, _calib().double()), m, fixtures.xs(32).double())


@case(CAT, "error", warn=r"(?i)first|last|fc|8 bits|W4|4")
def quantize_W4_model_whose_only_layer_is_first_and_last():
    """A W4 request on a one-layer model gives W8 (first/last rule): the issue asks for a warning."""
    from lowbit.ptq import int_weight
    from lowbit.ptq import PTQConfig, quantize
    quantize(_seeded(OneLinear), [_calib()], PTQConfig(int_weight(4)))
    return "returned a model at 8 bits for a W4 request, no warning"


@case(CAT, "error", warn=r"layer\.fc2")
def LayerRule_matching_no_layer():
    from lowbit.ptq import int_weight
    from lowbit.ptq import LayerRule, PTQConfig, quantize
    quantize(fixtures.model("mlp"), [_calib()], PTQConfig(rules=(LayerRule("layer.fc2", weight=int_weight(4)),)))
    return "rule 'layer.fc2' matched nothing; fc2 stays at 8 bits"


@case(CAT, "error", warn=r"(?i)equaliz")
def equalize_with_no_pair_to_equalize():
    """The MLP's layers feed each other through ReLU; a model with one Linear has no pair."""
    from lowbit.ptq import PTQConfig, quantize
    quantize(_seeded(NoPair), [_calib()], PTQConfig(equalize=True))
    return "equalize=True found no pair and said nothing"


@case(CAT, "valid")
def keep_float_rule_matching_a_layer():
    from lowbit.ptq import LayerRule, PTQConfig, quantize
    q = quantize(fixtures.model("mlp"), [_calib()], PTQConfig(rules=(LayerRule("fc2", keep_float=True),)))
    return _near(q, fixtures.model("mlp"), fixtures.xs(32))


@case(CAT, "error")
def to_integer_of_float_model():
    from lowbit.integer import to_integer
    to_integer(fixtures.model("cnn"), (_calib(2),))


@case(CAT, "error")
def to_integer_of_prepared_uncalibrated():
    from lowbit.integer import to_integer
    from lowbit.ptq import prepare
    to_integer(prepare(fixtures.model("cnn"), example_inputs=(_calib(1),)), (_calib(2),))(fixtures.xs(4))


@case(CAT, "any")
def to_integer_with_a_float_layer():
    from lowbit.integer import to_integer
    from lowbit.ptq import LayerRule, PTQConfig, quantize
    q = quantize(fixtures.model("mlp"), [_calib()], PTQConfig(rules=(LayerRule("fc2", keep_float=True),)))
    im = to_integer(q, (_calib(2),))
    with torch.no_grad():
        if not torch.allclose(im(fixtures.xs(16)), q(fixtures.xs(16)), atol=1e-4):
            raise Wrong("integer model differs from its simulation")
    return "integer model equals the simulation"


@case(CAT, "error")
def to_integer_example_wrong_shape():
    from lowbit.integer import to_integer
    to_integer(fixtures.sim("cnn"), (torch.randn(2, 3, 28, 28),))


@case(CAT, "error")
def to_integer_of_LSTM_sim():
    from lowbit.integer import to_integer
    m = _seeded(LSTMNet)
    to_integer(_quantize(m, _calib()), (_calib(2),))


# ----------------------------------------------------------------------------- the caller's model


def _snapshot(m: nn.Module):
    return copy.deepcopy(m.state_dict()), m.training, [x.training for x in m.modules()]


def _unchanged(m: nn.Module, snap, what: str) -> str:
    state, training, modes = snap
    now = m.state_dict()
    changed = [k for k in state if not torch.equal(state[k], now[k])]
    if changed:
        raise Wrong(f"{what} changed the caller's model: {len(changed)} tensors, e.g. {changed[:3]}")
    if m.training != training or [x.training for x in m.modules()] != modes:
        raise Wrong(f"{what} changed the caller's model's train/eval mode")
    return "caller's model unchanged"


def _caller_case(name: str, model_name: str, train_mode: bool, call):
    def fn():
        m = fixtures.model(model_name)
        m.train(train_mode)
        snap = _snapshot(m)
        call(m)
        return _unchanged(m, snap, name)
    add(CAT, f"caller_unchanged_{name}_{model_name}_{'train' if train_mode else 'eval'}", "valid", fn)


def _q(m):
    from lowbit.ptq import quantize
    quantize(m, [_calib()])


def _q_eq(m):
    from lowbit.ptq import PTQConfig, quantize
    quantize(m, [_calib()], PTQConfig(equalize=True, rounding="gptq"))


def _prep(m):
    from lowbit.ptq import prepare
    prepare(m, example_inputs=(_calib(4),))


def _pqat(m):
    from lowbit.ptq import int_weight, uint_act
    from lowbit.qat import QATConfig, prepare_qat
    prepare_qat(m, QATConfig(int_weight(4), uint_act(4)), _calib(64))


def _pqat_bn(m):
    from lowbit.ptq import int_weight, uint_act
    from lowbit.qat import QATConfig, prepare_qat
    prepare_qat(m, QATConfig(int_weight(4), uint_act(4), bn_freeze_steps=10), _calib(64))


def _wonly(m):
    from lowbit.ptq import int_weight
    from lowbit.weight_only import WeightOnlyConfig, quantize_weights
    quantize_weights(m, WeightOnlyConfig(int_weight(4)))


def _diag(m):
    from lowbit.diagnostics import layer_diagnostics
    from lowbit.ptq import quantize
    q = quantize(copy.deepcopy(m).eval(), [_calib()])
    layer_diagnostics(q, _calib())


def _profile(m):
    from lowbit.cost.profile import profile
    from lowbit.ptq import quantize
    profile(quantize(copy.deepcopy(m).eval(), [_calib()]), (_calib(2),))


for name, call in (("quantize", _q), ("quantize_equalize_gptq", _q_eq), ("prepare", _prep), ("prepare_qat", _pqat),
                   ("prepare_qat_bnfreeze", _pqat_bn), ("quantize_weights", _wonly)):
    for model_name in ("cnn", "resnet"):
        _caller_case(name, model_name, True, call)
_caller_case("quantize", "cnn", False, _q)
_caller_case("quantize", "mlp", True, _q)
_caller_case("diagnostics", "cnn", False, _diag)
_caller_case("profile", "resnet", False, _profile)


@case(CAT, "valid")
def caller_train_mode_model_quantized_like_eval():
    """A caller's model in train mode must quantize to what the same model in eval mode gives."""
    from lowbit.ptq import quantize
    m = fixtures.model("cnn")
    q_eval = quantize(m, [_calib()])
    m.train()
    q_train = quantize(m, [_calib()])
    x = fixtures.xs(64)
    with torch.no_grad():
        if not torch.equal(q_eval(x), q_train(x)):
            raise Wrong("train-mode model quantizes differently from the same model in eval mode")
    return "same result"

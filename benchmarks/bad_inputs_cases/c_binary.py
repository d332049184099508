"""Binary networks (BNN / XNOR-Net): binary specs in the wrong place (per tensor, ``binary="sign"`` on an
integer format, per-channel activations, FAQ's percentile on a sign), binary activations after ReLU or a
residual add, a binary conv with ``padding="same"``, ONNX export of a W1A1 model, and the ``lowbit qat``
binary flags (``--weight-format binary``, ``--act-format binary``, ``--binary-scale``); two legitimate
runs (W1A2 lowering, a W1A1 CLI run) checked against the simulation and result.json."""

from __future__ import annotations

import json

import torch
from torch import nn

from bad_inputs_cases import Wrong, add, case, cli, workdir

CAT = "binary"
QAT = ["qat", "--train-size", "128", "--batch-size", "64", "--epochs", "1", "--no-augment"]


def _w1a1(**kw):
    from lowbit.formats import Binary
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec
    return QATConfig(weight=QuantSpec(Binary(), PerChannel(0)), act=QuantSpec(Binary()), **kw)


def _data(n: int = 128):
    from lowbit.data import Split
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    return Split(x, (x[:, 0, 10:18, 10:18].mean(dim=(1, 2)) > 0).long())


def _trained(model: nn.Module, config):
    """``model`` after prepare_qat, one Adam epoch on 128 random images and convert_qat."""
    from lowbit.qat import TrainConfig, convert_qat, prepare_qat, train
    torch.manual_seed(0)
    data = _data()
    gm = prepare_qat(model, config, data.x[:64])
    train(gm, data, TrainConfig(epochs=1, batch_size=64, optimizer="adam", augment=False), progress=False)
    return convert_qat(gm)


def _equal_to_simulation(gm) -> str:
    from lowbit.integer import to_integer
    x = _data(64).x
    with torch.no_grad():
        ref = gm(x)
    out = to_integer(gm, (x[:1],))(x)
    if not torch.equal(out, ref):
        raise Wrong(f"integer model differs from its simulation: max |diff| {float((out - ref).abs().max()):.4g}")
    return "integer model equals the converted simulation on 64 inputs"


# ---------------------------------------------------------------- specs and configs


@case(CAT, "error")
def binary_weight_per_tensor_in_qat():
    from lowbit.formats import Binary
    from lowbit.granularity import PerTensor
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec
    return QATConfig(weight=QuantSpec(Binary(), PerTensor()), act=QuantSpec(Binary()))


@case(CAT, "error")
def binary_sign_scale_on_intformat():
    from lowbit.formats import IntFormat
    from lowbit.spec import QuantSpec
    return QuantSpec(IntFormat(4), binary="sign")


@case(CAT, "error")
def binary_act_per_channel():
    from lowbit.formats import Binary, IntFormat
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec
    return QATConfig(weight=QuantSpec(IntFormat(4), PerChannel(0)), act=QuantSpec(Binary(), PerChannel(1)))


# the user set no observer: a message about Percentile names the wrong problem
@case(CAT, "valid")
def binary_act_with_faq():
    """FAQ (fixed activation steps) with binary activations: the sign needs no step; it trains and lowers."""
    from lowbit.zoo.binary import BinaryMLP
    return _equal_to_simulation(_trained(BinaryMLP(hidden=16, depth=2), _w1a1(method="faq")))


# ---------------------------------------------------------------- models


@case(CAT, "error")
def binary_act_after_relu():
    from lowbit import zoo
    from lowbit.qat import prepare_qat
    return prepare_qat(zoo.build("mlp"), _w1a1(), _data(16).x)


class _ResidualHardtanh(nn.Module):
    """conv-BN-Hardtanh, then conv-BN + that block's output, Hardtanh (a binary activation after the add: the
    next conv is binary; the layer before the classifier would requantize at 8 bits), conv-BN-Hardtanh, linear."""

    def __init__(self):
        super().__init__()
        def blk(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o)]
        self.a = nn.Sequential(*blk(1, 8), nn.Hardtanh())
        self.b = nn.Sequential(*blk(8, 8))
        self.c = nn.Sequential(*blk(8, 8), nn.Hardtanh(), nn.MaxPool2d(4))
        self.act, self.fc = nn.Hardtanh(), nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        h = self.a(x)
        return self.fc(self.c(self.act(self.b(h) + h)).flatten(1))


@case(CAT, "error")
def binary_act_after_residual_add():
    from lowbit.qat import prepare_qat
    return prepare_qat(_ResidualHardtanh(), _w1a1(), _data(16).x)


class _SamePadding(nn.Module):
    def __init__(self):
        super().__init__()
        def blk(i, o):
            return [nn.Conv2d(i, o, 3, padding="same", bias=False), nn.BatchNorm2d(o), nn.Hardtanh()]
        self.f = nn.Sequential(*blk(1, 8), nn.MaxPool2d(2), *blk(8, 8), nn.MaxPool2d(2), *blk(8, 8))
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(self.f(x).flatten(1))


# a binary conv input must be padded with -1 (a sign), and "same" is a string padding: refused, or run exactly
@case(CAT, "any")
def binary_conv_padding_same():
    return _equal_to_simulation(_trained(_SamePadding(), _w1a1()))


class _EvenSamePadding(_SamePadding):
    """A 2x2 kernel with padding="same": PyTorch pads one more on the right, which no symmetric -1 padding is."""

    def __init__(self):
        super().__init__()
        self.f[4] = nn.Conv2d(8, 8, 2, padding="same", bias=False)


@case(CAT, "error")
def binary_conv_padding_same_even_kernel():
    return _trained(_EvenSamePadding(), _w1a1())


@case(CAT, "error")
def binary_w1a1_onnx_export():
    from lowbit.export.onnx_qdq import to_onnx_model
    from lowbit.integer import to_integer
    from lowbit.zoo.binary import BinaryMLP
    im = to_integer(_trained(BinaryMLP(hidden=32, depth=2), _w1a1()), (_data(1).x,))
    return to_onnx_model(im, (1, 1, 28, 28))


@case(CAT, "valid")
def binary_w1a2_lowers_exactly():
    from lowbit.formats import Binary, IntFormat
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec
    from lowbit.zoo.binary import BinaryCNN
    w1a2 = QATConfig(weight=QuantSpec(Binary(), PerChannel(0)), act=QuantSpec(IntFormat(2, signed=False)))
    return _equal_to_simulation(_trained(BinaryCNN(channels=8), w1a2))


# ---------------------------------------------------------------- lowbit qat


BIN = [*QAT, "--model", "binary-mlp", "--weight-format", "binary"]
# 1 bit by definition: the run goes on, and says that --weight-bits 4 is ignored
add(CAT, "qat_binary_weight_format_with_weight_bits_4", "error",
    lambda: cli(*BIN, "--weight-bits", "4", "--out", workdir() / "q"), warn=r"--weight-bits 4 is ignored", timeout=300)
add(CAT, "qat_binary_act_format_on_relu_model", "error",
    lambda: cli(*QAT, "--model", "mlp", "--act-format", "binary", "--out", workdir() / "q"))
add(CAT, "qat_binary_weight_format_granularity_tensor", "error",
    lambda: cli(*BIN, "--granularity", "tensor", "--out", workdir() / "q"))
add(CAT, "qat_binary_scale_without_binary_weights", "error",
    lambda: cli(*QAT, "--model", "binary-mlp", "--binary-scale", "sign", "--out", workdir() / "q"))


@case(CAT, "valid", timeout=300)
def qat_binary_valid_w1a1():
    out = workdir() / "q"
    r = cli(*BIN, "--act-format", "binary", "--binary-scale", "sign", "--out", out)
    if r.rc != 0:
        return r
    from lowbit.integer import ir, load_integer
    res = json.loads((out / "result.json").read_text())
    if (res["start"], res["weight"], res["act"], res["train"]["optimizer"]) != ("random init", "binary-sign",
                                                                              "binary", "adam"):
        raise Wrong(f"result.json: start {res['start']}, W {res['weight']}, A {res['act']}, {res['train']['optimizer']}")
    im = load_integer(out / "model.safetensors")
    xnor = [n.op.ir.xnor for n in im.nodes if isinstance(n.op.ir, ir.LAYERS)]
    if xnor != [False, True, True, False]:
        raise Wrong(f"expected the two middle layers on the XNOR kernel, got {xnor}")
    r.note = f"integer model accuracy {res['accuracy']:.4f} (1 epoch on 128 images); hidden layers XNOR"
    return r

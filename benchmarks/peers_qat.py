"""Brevitas QAT counterpart of the zoo ResNet-14, for ``bench_qat.py --peer brevitas`` (a module).

The float ResNet's BatchNorms are folded into its convolutions first (as lowbit's ``prepare_qat``
does), then every layer becomes its brevitas twin with the float weights copied in:

* weights: ``Int8WeightPerChannelFloat`` at ``bits`` - per output channel, scale from the max
  statistic, **narrow range**: 2 bits is {-1, 0, +1}, 4 bits is -7..7 (lowbit: -2..1 and -8..7);
* activations: ``QuantReLU`` (``Uint8ActPerTensorFloat`` at ``bits``): a learned per-tensor scale
  initialised from runtime statistics, 0..2^b - 1 (as lowbit);
* the network input, the stem's weights, the classifier's input and weights at 8 bits (as lowbit's
  ``first_last_bits=8``); the residual add is not quantized before its ReLU quantizer (lowbit:
  conv + add + ReLU is one unified module, requantized once). Biases stay float (lowbit: int32
  on the s_in*s_w grid) and the logits are not quantized (lowbit: 8 bits).

>>> q = brevitas_resnet(zoo.pretrained("resnet"), 4, train_set.x[:256])   # then lowbit.qat.train(q, ...)
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    return fuse_conv_bn_eval(copy.deepcopy(conv).eval(), bn.eval())


def _qconv(conv: nn.Conv2d, bits: int) -> nn.Module:
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat

    q = qnn.QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, bias=True, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=bits)
    q.weight.data.copy_(conv.weight.data)
    q.bias.data.copy_(conv.bias.data)
    return q


def _qrelu(bits: int) -> nn.Module:
    import brevitas.nn as qnn

    return qnn.QuantReLU(bit_width=bits)


class _Block(nn.Module):
    def __init__(self, block: nn.Module, bits: int) -> None:
        super().__init__()
        self.conv1 = _qconv(_fold(block.conv1, block.bn1), bits)
        self.relu1 = _qrelu(bits)
        self.conv2 = _qconv(_fold(block.conv2, block.bn2), bits)
        sc = block.shortcut
        self.shortcut = _qconv(_fold(sc[0], sc[1]), bits) if isinstance(sc, nn.Sequential) else nn.Identity()
        self.relu2 = _qrelu(bits)

    def forward(self, x):
        out = self.conv2(self.relu1(self.conv1(x)))
        return self.relu2(out + self.shortcut(x))


class BrevitasResNet(nn.Module):
    def __init__(self, model: nn.Module, bits: int) -> None:
        import brevitas.nn as qnn
        from brevitas.quant import (
            Int8ActPerTensorFloat,
            Int8WeightPerChannelFloat,
            Uint8ActPerTensorFloat,
        )

        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8)
        self.stem = _qconv(_fold(model.stem[0], model.stem[1]), 8)
        self.stem_relu = _qrelu(bits)
        self.layers = nn.Sequential(*[_Block(b, bits) for b in model.layers])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc_in = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=8)
        fc = model.fc
        self.fc = qnn.QuantLinear(fc.in_features, fc.out_features, bias=True, weight_quant=Int8WeightPerChannelFloat,
                                  weight_bit_width=8)
        self.fc.weight.data.copy_(fc.weight.data)
        self.fc.bias.data.copy_(fc.bias.data)

    def forward(self, x):
        x = self.layers(self.stem_relu(self.stem(self.inp(x))))
        return self.fc(self.fc_in(self.pool(x).flatten(1)))


def brevitas_resnet(model: nn.Module, bits: int, calibration: torch.Tensor) -> nn.Module:
    """A brevitas fake-quant copy of the zoo ResNet at ``bits`` (see the module docstring), in train mode.

    Activation scales start from brevitas' own calibration pass over ``calibration`` (as lowbit's
    LSQ steps start from one calibration batch); without it they start at 1.0 and W8A8 is at 20%.
    """
    from brevitas.graph.calibrate import calibration_mode

    q = BrevitasResNet(model.eval(), bits).eval()
    with torch.no_grad(), calibration_mode(q):
        for i in range(0, len(calibration), 64):
            q(calibration[i:i + 64])
    return q.train()

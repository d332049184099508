"""A fractional length per layer for fixed-point storage: ``W = g w`` with a power-of-two gain ``g``.

Paper B's parameters are fixed point with a fractional length chosen per layer. At PyTorch's default
initialisation a layer with ``n`` inputs has weights of magnitude ``<= 1/sqrt(n)`` (1/56 for a 3136-input
linear layer), below one LSB of any 8-bit :class:`~lowbit.optim.FixedPoint` whose range reaches 1, and
``FixedPoint`` keeps its fractional bits inside the word. :func:`with_weight_gains` therefore writes each
conv/linear weight as ``W = g w`` (a ``torch.nn.utils.parametrize`` parametrization) with the constant

    g = 2^-round(log2 sqrt(n))          (n = fan-in: in_features, or in_channels/groups * kh * kw)

so that the stored part ``w = W / g`` starts with ``|w| <= 2^0.5``; a ``FixedPoint(b, f)`` ``w`` is ``W`` in
``b``-bit fixed point with ``f + log2(1/g)`` fractional bits. :func:`gain_param_groups` gives ``w`` the
learning rate ``lr / g^2``: then ``dL/dw = g dL/dW`` and the step on ``W`` is ``g (lr/g^2) g dL/dW = lr dL/dW``,
exactly plain SGD's (momentum and weight decay scale the same way), so a float run on the gained model
takes the same steps as one on the plain model and only the storage differs.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class PowerOfTwoGain(nn.Module):
    """The parametrization ``W = g w``; ``right_inverse`` stores ``w = W / g`` (exact: ``g`` is a power of 2)."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = float(gain)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.gain

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w / self.gain

    def extra_repr(self) -> str:
        return f"gain=2^{round(math.log2(self.gain))}"


def fan_in_gain(weight: torch.Tensor) -> float:
    """``2^-round(log2 sqrt(fan_in))`` for a linear ``(out, in)`` or conv ``(out, in/groups, kh, kw)`` weight."""
    return 2.0 ** -round(math.log2(math.sqrt(weight[0].numel())))


def with_weight_gains(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every ``nn.Linear`` / ``nn.Conv*d`` weight is ``W = g w`` (module doc); the
    caller's model is not modified. The copy computes the same function."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", PowerOfTwoGain(fan_in_gain(m.weight)))
    return model


def gain_param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups for a model from :func:`with_weight_gains`: each gained weight alone with
    ``lr / g^2`` and ``weight_decay`` (it applies to ``w``: the decay term ``wd w`` scales like the gradient, so
    use ``wd * g^2`` to match decay on ``W``, which is what this sets), everything else in one group at ``lr``
    without weight decay (biases, BatchNorm)."""
    groups, seen = [], set()
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            gains = [p for p in m.parametrizations.weight if isinstance(p, PowerOfTwoGain)]
            if gains:
                w, g = m.parametrizations.weight.original, gains[0].gain
                groups.append({"params": [w], "lr": lr / g ** 2, "weight_decay": weight_decay * g ** 2})
                seen.add(id(w))
    rest = [p for p in model.parameters() if id(p) not in seen and p.requires_grad]
    if rest:
        groups.append({"params": rest, "lr": lr, "weight_decay": 0.0})
    return groups


STORAGE_SGD = ("float", "kahan", "nearest", "stochastic")


def storage_sgd(model: nn.Module, kind: str, lr: float, momentum: float = 0.0, storage: object = None,
                seed: int = 0) -> torch.optim.Optimizer:
    """SGD over :func:`gain_param_groups` of ``model``: ``"float"`` (``torch.optim.SGD``, float32 parameters),
    ``"kahan"`` (:class:`~lowbit.optim.KahanSGD`), ``"nearest"`` / ``"stochastic"``
    (:class:`~lowbit.optim.LowPrecisionSGD`, the stochastic one drawing from a generator seeded ``seed``). For the
    low-precision kinds the model's parameters are first rounded onto ``storage`` (in place)."""
    from lowbit.errors import ConfigError
    from lowbit.optim.kahan import KahanSGD, LowPrecisionSGD
    from lowbit.optim.storage import as_storage, round_to_storage

    if kind not in STORAGE_SGD:
        raise ConfigError(f"storage_sgd kind must be one of {', '.join(STORAGE_SGD)}, got {kind!r}")
    groups = gain_param_groups(model, lr)
    if kind == "float":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    storage = as_storage(storage)
    round_to_storage(model, storage)
    if kind == "kahan":
        return KahanSGD(groups, lr=lr, momentum=momentum, storage=storage)
    gen = torch.Generator().manual_seed(seed) if kind == "stochastic" else None
    return LowPrecisionSGD(groups, lr=lr, momentum=momentum, storage=storage, rounding=kind, generator=gen)

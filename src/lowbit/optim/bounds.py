"""How many bits the last FC layer (the logits before the softmax) needs, from the number of classes.

Paper B (Park, Lee, Oh, Ha, Lee, "Training Deep Neural Network in Limited Precision", SAIT 2018, arXiv
1810.05486) gives "a simple guideline ... for the last FC layer followed by a softmax nonlinearity layer"
that "determines the lower bound of the required bit-width based on the class size of the dataset"
(abstract). The paper's own formula was not retrieved (research notes, papers.md section B); what follows
is the notes' reconstruction of the two constraints that grow with the class count ``N``, for a signed
fixed-point format of ``b`` bits, ``f`` of them fractional (largest magnitude ``R = 2^(b-1-f)``):

(a) Logit range. With every logit in ``[-R, R]`` the most confident softmax output is reached with the
    target's logit at ``R`` and the ``N - 1`` others at ``-R``::

        p_max = e^R / (e^R + (N - 1) e^-R) = 1 / (1 + (N - 1) e^(-2R))

    Training drives the target's probability up (the cross-entropy gradient ``p - y`` goes to 0 only as
    ``p -> 1``); for the format to allow a target probability ``p*``, ``p_max >= p*``, i.e.::

        R >= 1/2 ln((N - 1) p* / (1 - p*)),  so  b - 1 - f >= log2(R),  b >= 1 + f + ceil(log2 R)

(b) Resolution of the back-propagated error ``delta = p - y``. The ``N - 1`` non-target probabilities start
    near ``1/N``; they (and ``delta``) round to 0 unless the format has a step ``2^-f <= 1/N``::

        f >= ceil(log2 N)        (N = 10: 4, N = 100: 7, N = 1000: 10 fractional bits)

Together: ``bits = 1 (sign) + ceil(log2 N) + max(0, ceil(log2 R))``. Both grow like ``log N``: ten times
more classes need about 3.3 more fractional bits and a logit range ``ln(10)/2`` wider. The target
probability ``p*`` is not a value of the paper as the notes have it; ``0.99`` is this module's default.
Replace this with the paper's formula once the PDF is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.optim.storage import FixedPoint, round_storage


@dataclass(frozen=True)
class LastFCBound:
    """The lower bound for a last FC layer with ``num_classes`` outputs (see the module doc)."""

    num_classes: int
    p_target: float
    logit_range: float  # R >= 1/2 ln((N-1) p*/(1-p*))
    int_bits: int  # ceil(log2 R), at least 0
    frac_bits: int  # ceil(log2 N)
    layer: str | None = None

    @property
    def bits(self) -> int:
        """Total bits: sign + integer + fractional."""
        return 1 + self.int_bits + self.frac_bits


def min_bits_last_fc(num_classes: int, p_target: float = 0.99) -> LastFCBound:
    """The bit-width lower bound of the last FC layer for ``num_classes`` classes (paper B's guideline, as
    reconstructed in the module doc): ``frac_bits = ceil(log2 N)``, ``int_bits = ceil(log2 R)`` with
    ``R = 1/2 ln((N-1) p_target / (1 - p_target))``, ``bits = 1 + int_bits + frac_bits``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} is out of range: a softmax classifier has >= 2 classes")
    if isinstance(p_target, bool) or not isinstance(p_target, (int, float)) \
            or not 1.0 / num_classes < p_target < 1.0:
        raise ConfigError(f"p_target={p_target!r} is out of range: it must be in (1/num_classes, 1) = "
                          f"({1.0 / num_classes:g}, 1)")
    r = 0.5 * math.log((num_classes - 1) * p_target / (1.0 - p_target))
    int_bits = max(0, math.ceil(math.log2(r) - 1e-12)) if r > 0 else 0
    frac_bits = math.ceil(math.log2(num_classes) - 1e-12)
    return LastFCBound(num_classes, float(p_target), r, int_bits, frac_bits)


def last_fc_bound(model: nn.Module, p_target: float = 0.99) -> LastFCBound:
    """:func:`min_bits_last_fc` for the last ``nn.Linear`` of ``model`` (in module order), its
    ``out_features`` taken as the class count; ``layer`` names it."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear layer: pass the class count to "
                          "min_bits_last_fc(num_classes) instead")
    bound = min_bits_last_fc(last[1].out_features, p_target)
    return LastFCBound(bound.num_classes, bound.p_target, bound.logit_range, bound.int_bits, bound.frac_bits,
                       last[0] or type(last[1]).__name__)


class _FixedPointLogits(torch.autograd.Function):
    """Forward: logits rounded (nearest) onto the fixed-point grid and clamped to its range. Backward: the
    gradient is zero where the clamp bit, and the per-example error (``B`` times the gradient of a mean loss
    over ``B`` examples, i.e. ``p - y`` for cross entropy) is rounded onto the same grid."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, fmt: FixedPoint) -> torch.Tensor:  # noqa: ANN001 - autograd's signature
        ctx.fmt = fmt
        ctx.save_for_backward((z >= fmt.min_value) & (z <= fmt.max_value))
        return round_storage(z, fmt, z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (inside,) = ctx.saved_tensors
        batch = grad.shape[0] if grad.ndim > 1 else 1
        delta = round_storage(grad * batch, ctx.fmt, grad.dtype)
        return torch.where(inside, delta / batch, torch.zeros_like(delta)), None


def fixed_point_logits(z: torch.Tensor, fmt: FixedPoint) -> torch.Tensor:
    """The last FC layer's output ``z`` (``(B, N)`` logits) and its back-propagated error in the fixed-point
    format ``fmt``, the quantity :func:`min_bits_last_fc` bounds: ``z`` is rounded to the nearest multiple of
    ``2^-frac`` and clamped to ``[-2^(bits-1-frac), 2^(bits-1-frac) - 2^-frac]``; in the backward pass the
    gradient is zero where ``z`` was clamped and the per-example error (for a mean cross entropy over ``B``
    examples, ``B dL/dz = p - y``) is rounded onto the same grid. With ``frac < log2 N`` the non-target errors
    ``p_k ~ 1/N`` round to zero (constraint (b)); with a range below ``R`` the logits saturate (constraint (a)).
    """
    if not isinstance(fmt, FixedPoint):
        raise ConfigError(f"fixed_point_logits needs a lowbit.optim.FixedPoint(bits, frac), got {fmt!r}")
    return _FixedPointLogits.apply(z, fmt)

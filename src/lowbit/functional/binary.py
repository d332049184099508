"""Binarization (Courbariaux, Hubara et al., "Binarized Neural Networks", 2016).

Deterministic:  x_b = sign(x) = +1 if x >= 0 else -1
Stochastic:     x_b = +1 with probability sigma(x), else -1,
                sigma(x) = hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)

Backward: the straight-through estimator of hard-tanh,
``d x_b / dx = 1_{|x| <= 1}`` (the gradient is cancelled where ``|x| > 1``).
An optional per-row scale (XNOR-Net: ``alpha = mean|w|``) multiplies the signs.
"""

from __future__ import annotations

import torch

from lowbit.functional._checks import check_tensor
from lowbit.functional.rounding import ste


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``clip((x + 1) / 2, 0, 1)``."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _ste_hardtanh(x: torch.Tensor, forward_value: torch.Tensor) -> torch.Tensor:
    """``forward_value`` forward; gradient of ``hardtanh(x)`` backward."""
    clipped = x.clamp(-1.0, 1.0)
    return ste(clipped, forward_value)


def binarize(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic sign binarization to {-1, +1} (times ``scale``), hard-tanh STE."""
    check_tensor(x)
    signs = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    out = _ste_hardtanh(x, signs)
    return out * scale if scale is not None else out


def binarize_stochastic(x: torch.Tensor, generator: torch.Generator | None = None,
                        scale: torch.Tensor | None = None) -> torch.Tensor:
    """+1 with probability ``hard_sigmoid(x)``, else -1 (times ``scale``); hard-tanh STE.

    ``E[x_b] = 2 * hard_sigmoid(x) - 1 = clip(x, -1, 1)``.
    """
    check_tensor(x)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    signs = torch.where(u < hard_sigmoid(x), 1.0, -1.0).to(x.dtype)
    out = _ste_hardtanh(x, signs)
    return out * scale if scale is not None else out

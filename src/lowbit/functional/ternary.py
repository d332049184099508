"""Exact optimal ternarization in O(N log N): the support both LBW-Net and TNT find.

For a vector ``w`` (one row of a granularity) we look for ``t in {-1,0,+1}^N``
and ``alpha > 0`` minimising ``||w - alpha t||^2`` (LBW-Net, Yin et al. 2016) or
maximising ``cos(w, t)`` (TNT, Zhang et al. 2019). For a support of size ``k`` the
best choice is ``t_i = sign(w_i)`` on the ``k`` largest ``|w_i|``, and both
objectives reduce to the same score:

    k* = argmax_k  (sum_{i<=k} |w|_(i))^2 / k          (|w|_(1) >= |w|_(2) >= ...)

(for a fixed support ``S`` the optimal ``alpha`` is ``mean_S |w|`` and the residual
``||w||^2 - (sum_S |w|)^2 / |S|``; and ``cos = sum_S |w| / (sqrt(|S|) ||w||)``).
One sort, a cumulative sum and an argmax: O(N log N).

Scaling rules:
    ``"lbw"``: one scale ``alpha = mean_S |w|`` (least squares, LBW-Net);
    ``"tnt"``: two scales, ``alpha+ = mean`` of the selected positive weights and
               ``alpha- = mean |.|`` of the selected negative ones (TNT's code);
    ``"norm"``: ``||w|| / ||t||`` (the norm-matching variant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lowbit.errors import ConfigError
from lowbit.functional._checks import check_tensor
from lowbit.functional.rounding import ste
from lowbit.granularity import Granularity, PerTensor, broadcast, rows, unrows

Scaling = Literal["lbw", "tnt", "norm"]


@dataclass(frozen=True)
class TernaryResult:
    """Codes in {-1, 0, +1} (int8, the weight's shape) and per-row scales for + and - codes."""

    codes: torch.Tensor
    alpha_pos: torch.Tensor  # (R,)
    alpha_neg: torch.Tensor  # (R,)
    granularity: Granularity

    def dequantize(self) -> torch.Tensor:
        """``alpha+ * [t = +1] - alpha- * [t = -1]`` as float32 in the weight's shape."""
        shape = self.codes.shape
        pos = broadcast(self.alpha_pos, self.granularity, shape)
        neg = broadcast(self.alpha_neg, self.granularity, shape)
        t = self.codes.to(torch.float32)
        return torch.where(t > 0, pos, torch.where(t < 0, -neg, torch.zeros_like(pos)))


def ternary_support(r: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the optimal support for each row of ``r`` (R, M)."""
    mags, order = r.abs().sort(dim=1, descending=True, stable=True)
    csum = mags.to(torch.float64).cumsum(dim=1)
    k = torch.arange(1, r.shape[1] + 1, dtype=torch.float64)
    best = (csum.square() / k).argmax(dim=1)  # first maximum: the smallest optimal support
    in_support_sorted = torch.arange(r.shape[1])[None, :] <= best[:, None]
    mask = torch.zeros_like(in_support_sorted)
    return mask.scatter(1, order, in_support_sorted)


def _row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum(dim=1)
    total = (values * mask).sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def ternarize(w: torch.Tensor, granularity: Granularity = PerTensor(), scaling: Scaling = "lbw") -> TernaryResult:
    """Optimal ternary codes and scales of ``w`` for each block of ``granularity``."""
    check_tensor(w, "weights")
    if scaling not in ("lbw", "tnt", "norm"):
        raise ConfigError(f"ternary scaling must be 'lbw', 'tnt' or 'norm', got {scaling!r}")
    r = rows(w.detach().to(torch.float32), granularity)
    mask = ternary_support(r)
    signs = torch.where(r >= 0, 1, -1) * mask
    if scaling == "lbw":
        alpha = _row_mean(r.abs(), mask)
        a_pos = a_neg = alpha
    elif scaling == "tnt":
        a_pos = _row_mean(r, mask & (r > 0))
        a_neg = _row_mean(-r, mask & (r < 0))
    else:
        alpha = r.norm(dim=1) / mask.sum(dim=1).clamp_min(1).sqrt()
        a_pos = a_neg = alpha
    codes = unrows(signs.to(torch.int8), granularity, w.shape)
    return TernaryResult(codes, a_pos, a_neg, granularity)


def ternary_fake_quant(w: torch.Tensor, granularity: Granularity = PerTensor(), scaling: Scaling = "lbw") -> torch.Tensor:
    """Ternarized ``w`` (float) with a straight-through gradient (BinaryConnect-style training)."""
    q = ternarize(w, granularity, scaling).dequantize().to(w.dtype)
    return ste(w, q)

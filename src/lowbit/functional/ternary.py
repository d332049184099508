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

TWN (Li & Liu 2016, "Ternary Weight Networks") replaces the search by a rule of thumb:
the support is ``|w| > Delta`` with ``Delta = 0.7 mean|w|`` (:func:`ternarize_twn`), the
scale the mean of the selected magnitudes.

Every result also carries a per-row ``threshold``: the support is exactly ``|w| > threshold``
(for the exact solver the largest magnitude left out, -1 when none is: at the optimum every
selected magnitude exceeds ``alpha/2`` and every other one stays below it, so the two never
tie). With it a frozen quantizer recomputes the same codes from the weight.

Scaling rules:
    ``"lbw"``: one scale ``alpha = mean_S |w|`` (least squares, LBW-Net);
    ``"tnt"``: two scales, ``alpha+ = mean`` of the selected positive weights and
               ``alpha- = mean |.|`` of the selected negative ones (TNT's code);
    ``"norm"``: ``||w|| / ||t||`` (the norm-matching variant).

TNT's two scales on an integer engine with one scale per block: :func:`tnt_integer_codes` writes them
as int8 codes ``{-m-, 0, +m+}`` times a common scale (the ratio kept to 1/254).
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
    threshold: torch.Tensor | None = None  # (R,): the support is |w| > threshold

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
    return TernaryResult(codes, a_pos, a_neg, granularity, _threshold(r.abs(), mask))


def _threshold(mags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the largest magnitude outside the support (-1 if the support is the whole row)."""
    return torch.where(mask, torch.full_like(mags, -1.0), mags).amax(dim=1)


def ternary_codes(w: torch.Tensor, threshold: torch.Tensor, granularity: Granularity = PerTensor()) -> torch.Tensor:
    """``sign(w) [|w| > threshold]`` per row of ``granularity`` (sign(0) = +1), as float32 in ``w``'s shape."""
    r = rows(w.detach().to(torch.float32), granularity)
    t = torch.where(r >= 0, 1.0, -1.0) * (r.abs() > threshold.reshape(-1, 1))
    return unrows(t, granularity, w.shape)


def ternarize_twn(w: torch.Tensor, granularity: Granularity = PerTensor(), ratio: float = 0.7) -> TernaryResult:
    """Ternary Weight Networks (Li & Liu 2016): support ``|w| > ratio * mean|w|``, scale ``mean`` of it.

    The paper's ``Delta = 0.7 E|W|`` approximates the optimal threshold for Gaussian or
    uniform weights; :func:`ternarize` finds the optimum itself.
    """
    check_tensor(w, "weights")
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"TWN threshold ratio must be in (0, 1), got {ratio}")
    r = rows(w.detach().to(torch.float32), granularity)
    threshold = ratio * r.abs().mean(dim=1)
    mask = r.abs() > threshold[:, None]
    alpha = _row_mean(r.abs(), mask)
    codes = unrows((torch.where(r >= 0, 1, -1) * mask).to(torch.int8), granularity, w.shape)
    return TernaryResult(codes, alpha, alpha, granularity, threshold)


def ternary_fake_quant(w: torch.Tensor, granularity: Granularity = PerTensor(), scaling: Scaling = "lbw") -> torch.Tensor:
    """Ternarized ``w`` (float) with a straight-through gradient (BinaryConnect-style training)."""
    q = ternarize(w, granularity, scaling).dequantize().to(w.dtype)
    return ste(w, q)


def tnt_integer_codes(alpha_pos: torch.Tensor, alpha_neg: torch.Tensor,
                      top: int = 127) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TNT's two scales on one integer grid: ``(s, m+, m-)`` per row with ``alpha+- ~= m+- s``.

    TNT (Zhang, Zhu, Zhao & Shin 2019, "Target None-retraining Ternary") keeps a separate scale for
    the positive and the negative weights of a block: values ``{-alpha-, 0, +alpha+}``. An int8 engine
    with one scale per block runs them as the integer codes ``{-m-, 0, +m+}`` times a common scale

        s = max(alpha+, alpha-) / top,   m_max = top,   m_other = round(top * min(alpha+, alpha-) / max(...))

    (``top = 127``: int8 codes). The larger scale is kept exactly, the smaller one moves by at most
    ``max(alpha+, alpha-) / (2 top)``: the ratio ``alpha+ / alpha-`` is kept to ``1/254`` of the larger scale
    (a ratio below ``1/254`` rounds to a code 0: that side's weights then vanish). A row with both scales 0
    (an all-zero block) gets ``s = 1`` and codes ``top`` (it has no support, so its codes never show).
    Returns float32 ``s`` and the float32 integers ``m+`` and ``m-``, each (R,).
    """
    a_pos, a_neg = alpha_pos.to(torch.float32), alpha_neg.to(torch.float32)
    big = torch.maximum(a_pos, a_neg)
    empty = big <= 0
    safe = torch.where(empty, torch.ones_like(big), big)
    scale = torch.where(empty, torch.ones_like(big), big / top)
    m_pos = torch.where(empty | (a_pos >= a_neg), torch.full_like(big, float(top)), torch.round(top * a_pos / safe))
    m_neg = torch.where(empty | (a_neg >= a_pos), torch.full_like(big, float(top)), torch.round(top * a_neg / safe))
    return scale, m_pos, m_neg


def eedn_trinary(h: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Eedn's trinary weights (Esser et al., PNAS 2016) with a straight-through gradient to the hidden weight.

    The hidden weights ``h`` live in ``[-1, 1]`` (clipped after every update, see
    :func:`lowbit.snn.eedn.clip_hidden_`); the forward pass uses

        w = sign(h) * 1[|h| >= threshold]          (threshold 0.5: the paper's rule)

    in ``{-1, 0, +1}`` (same dtype as ``h``), and the backward pass passes ``dL/dw`` to ``h`` unchanged
    (``dw/dh := 1``, the straight-through estimator). No scale: TrueNorth's synapses are exactly -1, 0, +1.
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"eedn_trinary threshold = {threshold!r}; allowed: a number in (0, 1]")
    w = torch.sign(h) * (h.abs() >= threshold).to(h.dtype)
    return ste(h, w)

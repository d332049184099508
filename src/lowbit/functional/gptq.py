"""Error-compensating weight rounding (GPTQ / Optimal Brain Quantization) on a fixed grid.

Nearest rounding minimises each weight's own error ``|w - q s|``; what matters is the
layer's output error on real inputs. With ``H = E[x x^T]`` the (uncentred) second moment
of a row's inputs, the expected squared output error of a row is

    e(q) = (w - s q)^T H (w - s q),

so errors in correlated inputs can cancel. GPTQ (Frantar et al., "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023), after
Optimal Brain Quantization (Frantar & Alistarh, NeurIPS 2022), rounds the columns one at a
time and moves each rounding error onto the columns not yet rounded, in proportion to the
inverse Hessian: with ``U`` the upper Cholesky factor of ``H^{-1}``,

    q_i = clamp(round(w_i / s)),   d_i = (w_i - s q_i) / U_ii,   w_{j>i} -= d_i U_ij.

Because ``H`` is uncentred, the mean shift ``E[(Q(W) - W) x]`` that bias correction removes
afterwards is part of the objective too. The scale ``s`` (per row or per tensor) is fixed
beforehand, so the result lands on exactly the grid nearest rounding would use.

Rows are batched by groups: ``w`` is ``(G, R, K)`` and ``h`` is ``(G, K, K)`` - one Hessian for
all rows of a dense layer (G = 1), one per channel of a depthwise convolution.
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^{-1}``, batched, float64."""
    h = h.to(torch.float64).clone()
    diag = h.diagonal(dim1=-2, dim2=-1)
    dead = diag <= 0
    diag[dead] = 1.0  # an input that was always zero: its weight does not matter
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    h = h + damp * diag.mean(-1)[..., None, None] * eye
    lower = torch.linalg.cholesky(h)
    inv = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inv, upper=True)


def gptq_codes(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               qmin: int, qmax: int, damp: float = 0.01, block: int = 64) -> torch.Tensor:
    """Integer codes of ``w`` ``(G, R, K)`` on the grid ``scale * (q - zero_point)``.

    ``h``: ``(G, K, K)`` input second moments; ``scale``/``zero_point``: broadcastable to ``(G, R, 1)``
    (per row or per tensor). Returns float codes in ``[qmin, qmax]``, shape ``(G, R, K)``.
    """
    if w.ndim != 3 or h.ndim != 3 or h.shape[0] != w.shape[0] or h.shape[1:] != (w.shape[2], w.shape[2]):
        raise ConfigError(f"gptq_codes needs w (G, R, K) and h (G, K, K), got {tuple(w.shape)}, {tuple(h.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise ConfigError("the input statistics hold NaN or inf: check the calibration data")
    u = _inverse_cholesky(h, damp).to(torch.float32)
    work = w.detach().to(torch.float32).clone()
    s = scale.to(torch.float32).expand(w.shape[0], w.shape[1], 1)
    z = zero_point.to(torch.float32).expand(w.shape[0], w.shape[1], 1)
    codes = torch.empty_like(work)
    k = work.shape[2]
    for b0 in range(0, k, block):  # lazy batch updates: columns past the block are updated once per block
        b1 = min(b0 + block, k)
        blk = work[:, :, b0:b1]
        err = torch.empty_like(blk)
        for i in range(b1 - b0):
            col = blk[:, :, i:i + 1]
            q = torch.clamp(torch.round(col / s + z), qmin, qmax)
            codes[:, :, b0 + i:b0 + i + 1] = q
            e = (col - s * (q - z)) / u[:, None, b0 + i, b0 + i, None]
            err[:, :, i:i + 1] = e
            blk[:, :, i + 1:] -= e * u[:, None, b0 + i, b0 + i + 1:b1]
        work[:, :, b1:] -= torch.bmm(err, u[:, b0:b1, b1:])
    return codes.to(w.dtype)


__all__ = ["gptq_codes"]

"""Pure functions of a delta RNN step (Neil et al., ICML 2017, "Delta Networks").

Thresholded delta (the paper's eq. 6-7), element-wise::

    d      = x_t - x_hat
    Δx_t   = d        if |d| > θ    else 0
    x_hat := x_t      if |d| > θ    else x_hat

At θ = 0 every change is sent and ``x_hat`` follows ``x`` exactly. The accumulators
``acc_x = b_ih + W_ih x_hat`` and ``acc_h = b_hh + W_hh h_hat`` are then updated by
``acc += W Δ``: only the weight columns of the non-zero deltas are touched.

Gates from the accumulators (``nn.GRU`` order r, z, n; ``nn.LSTM`` order i, f, g, o)::

    GRU:  r = σ(ax_r + ah_r),  z = σ(ax_z + ah_z),  n = tanh(ax_n + r ⊙ ah_n)
          h' = (1 - z) ⊙ n + z ⊙ h
    LSTM: i, f, g, o = ax + ah  (chunks);  c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g);  h' = σ(o) ⊙ tanh(c')

``h`` and ``c`` are the true previous states, not the memories: only the matrix products
see the thresholded values (as in the paper's DeltaGRU, eq. 11-15).
"""

from __future__ import annotations

import torch


def threshold_delta(x: torch.Tensor, x_hat: torch.Tensor, theta: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Δ, new x_hat, mask)`` for one step; ``mask`` marks the transmitted elements.

    The gradient of ``Δ`` with respect to ``x`` is 1 where transmitted and 0 elsewhere. A NaN
    change is transmitted (it is not known to be small), so NaN propagates as in ``nn.GRU``.
    """
    d = x - x_hat
    mask = ~(d.abs() <= theta)
    delta = torch.where(mask, d, torch.zeros_like(d))
    return delta, torch.where(mask, x, x_hat), mask


def gru_from_acc(acc_x: torch.Tensor, acc_h: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The next hidden state of ``nn.GRU`` from the input and hidden pre-activations ``(B, 3H)``."""
    xr, xz, xn = acc_x.chunk(3, dim=-1)
    hr, hz, hn = acc_h.chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def lstm_from_acc(acc_x: torch.Tensor, acc_h: torch.Tensor, c: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h', c')`` of ``nn.LSTM`` from the input and hidden pre-activations ``(B, 4H)``."""
    i, f, g, o = (acc_x + acc_h).chunk(4, dim=-1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_next), c_next

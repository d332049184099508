"""Max pooling over spike trains: the gate of Rueckauer et al. (2017, "Conversion of continuous-valued deep
networks to efficient event-driven networks for image classification", section 2.2.3).

A max of spikes per time step would pass a spike whenever *any* input in the window fires -- the rate of the
OR, not of the max. The gate instead keeps, per window, the running sum of each input's spikes and passes the
current spikes of the input whose running sum is largest (the one with the highest rate so far):

    c_t = c_{t-1} + s_t;      out_t[w] = s_t[argmax_{i in w} c_t[i]]

State (``c``) is explicit: ``out, state = gate(s, state)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import ShapeError


class MaxPoolGate(nn.Module):
    """``out, counts = gate(s, counts)``: max pooling of spike trains by cumulative count."""

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding

    def forward(self, s: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        counts = s if state is None else state + s
        if counts.shape != s.shape:
            raise ShapeError(f"max-pool gate state has shape {tuple(counts.shape)}, spikes {tuple(s.shape)}")
        # ties go to the first input of the window (max_pool2d's index); -inf padding never wins
        _, idx = F.max_pool2d(counts, self.kernel_size, self.stride, self.padding, return_indices=True)
        out = s.flatten(2).gather(2, idx.flatten(2)).reshape(idx.shape)
        return out, counts

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

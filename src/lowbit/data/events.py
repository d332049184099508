"""Frames to spikes: input codings for spiking networks, and DVS-style events from saccades over a still image.

Codings turn a batch of intensities ``I`` in [0, 1], shaped ``[N, C, H, W]``, into ``T`` steps ``[N, T, C, H, W]``:

- :func:`direct_coding` (analog input, Rueckauer et al. 2017; Wu et al. 2019): ``x_t = I`` at every step; the
  first layer's neurons do the encoding.
- :func:`rate_coding` (Poisson / Bernoulli, Diehl et al. 2015): ``s_t ~ Bernoulli(I)`` independently per step,
  so ``E[mean_t s_t] = I``.
- :func:`latency_coding` (time to first spike, Thorpe et al. 2001): one spike at ``t = floor((1 - I) T)``,
  bright pixels first; ``I = 0`` never fires.

Events (an N-MNIST stand-in; Orchard et al. 2015 moved an ATIS camera in three saccades over MNIST digits on a
screen): :func:`saccade_frames` shifts the image along a path of ``T + 1`` sub-pixel positions (bilinear,
zero background, on a canvas padded by ``pad``), and :func:`dvs_events` runs the DVS pixel model on them
(Lichtsteiner, Posch, Delbruck 2008): with log intensity ``L = log(I + eps)`` and a per-pixel reference
``L_ref`` (the first frame's),

    ON_t  = 1[L_t - L_ref >= c],   OFF_t = 1[L_t - L_ref <= -c],   L_ref <- L_t where an event fired,

one event per pixel and step at most. :func:`saccade_events` = both, giving ``[N, T, 2, H', W']`` (channel 0 ON,
channel 1 OFF) of 0/1 floats. Everything is deterministic and vectorised over the batch; a still image (no
motion) gives no events at all.

Fashion-MNIST batches from :func:`lowbit.data.fashion_mnist` are normalised; :func:`intensity` undoes that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lowbit.data.datasets import FASHION_MEAN, FASHION_STD
from lowbit.errors import ConfigError, DataError, ShapeError


def intensity(x: torch.Tensor, mean: float = FASHION_MEAN, std: float = FASHION_STD) -> torch.Tensor:
    """Normalised frames back to intensities in [0, 1]: ``clamp(x std + mean, 0, 1)``."""
    return (x * std + mean).clamp(0.0, 1.0)


def _check_frames(x: object, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{what} takes frames shaped [N, C, H, W], got {shape}")


def _check_steps(time_steps: object) -> None:
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ConfigError(f"time_steps must be an int >= 1, got {time_steps!r}")


def _check_unit(x: torch.Tensor, what: str) -> None:
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(f"{what} takes intensities in [0, 1], got values in [{float(x.min()):.3g}, "
                        f"{float(x.max()):.3g}]; un-normalise first with lowbit.data.events.intensity(x)")


def direct_coding(x: torch.Tensor, time_steps: int) -> torch.Tensor:
    """``[N, C, H, W] -> [N, T, C, H, W]``: the same analog frame at every step (a view, no copy)."""
    _check_frames(x, "direct_coding")
    _check_steps(time_steps)
    return x.unsqueeze(1).expand(-1, time_steps, -1, -1, -1)


def rate_coding(x: torch.Tensor, time_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``s_t ~ Bernoulli(I)`` per pixel and step: ``[N, C, H, W]`` intensities -> ``[N, T, C, H, W]`` of 0/1."""
    _check_frames(x, "rate_coding")
    _check_steps(time_steps)
    _check_unit(x, "rate_coding")
    p = x.unsqueeze(1).expand(-1, time_steps, -1, -1, -1)
    return (torch.rand(p.shape, generator=generator, dtype=x.dtype, device=x.device) < p).to(x.dtype)


def latency_coding(x: torch.Tensor, time_steps: int) -> torch.Tensor:
    """One spike per pixel at ``t = floor((1 - I) T)`` (clamped to ``T - 1``); ``I = 0`` never fires."""
    _check_frames(x, "latency_coding")
    _check_steps(time_steps)
    _check_unit(x, "latency_coding")
    t_fire = torch.floor((1.0 - x) * time_steps).clamp(max=time_steps - 1)
    t_fire = torch.where(x > 0, t_fire, torch.full_like(x, float(time_steps)))  # never
    steps = torch.arange(time_steps, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
    return (t_fire.unsqueeze(1) == steps).to(x.dtype)


def triangle_path(time_steps: int, amplitude: float = 2.0) -> torch.Tensor:
    """``T + 1`` offsets ``(dy, dx)`` in pixels, evenly spaced along three saccades over a triangle
    ``(0, 0) -> (a, a/2) -> (0, a) -> (0, 0)`` (N-MNIST's camera path, scaled to ``a`` pixels)."""
    _check_steps(time_steps)
    if not amplitude > 0:
        raise ConfigError(f"amplitude must be > 0 pixels, got {amplitude!r}")
    corners = torch.tensor([[0.0, 0.0], [amplitude, amplitude / 2], [0.0, amplitude], [0.0, 0.0]])
    s = torch.linspace(0.0, 3.0, time_steps + 1)  # position along the 3 sides
    side = s.floor().clamp(max=2).long()
    frac = (s - side).unsqueeze(1)
    return corners[side] * (1 - frac) + corners[side + 1] * frac


def saccade_frames(x: torch.Tensor, path: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """The image seen at each offset of ``path`` (``[K, 2]``, ``(dy, dx)`` pixels): ``[N, C, H, W]`` ->
    ``[N, K, C, H + 2 pad, W + 2 pad]``. Content moves by ``+dy, +dx``; sub-pixel offsets interpolate bilinearly,
    the background is 0 (black)."""
    _check_frames(x, "saccade_frames")
    if not isinstance(path, torch.Tensor) or path.ndim != 2 or path.shape[1] != 2 or path.shape[0] < 1:
        raise ShapeError(f"path must be a [K, 2] tensor of (dy, dx) offsets, got "
                         f"{tuple(path.shape) if isinstance(path, torch.Tensor) else type(path).__name__}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ConfigError(f"pad must be an int >= 0, got {pad!r}")
    n, c, _, _ = x.shape
    canvas = F.pad(x, (pad, pad, pad, pad))  # [N, C, H', W']
    hp, wp = canvas.shape[-2:]
    k = path.shape[0]
    # output pixel (i, j) reads the input at (i - dy, j - dx); align_corners=True maps pixel p to 2p/(S-1) - 1
    ys = torch.arange(hp, dtype=x.dtype).view(1, hp, 1) - path[:, 0].to(x.dtype).view(k, 1, 1)
    xs = torch.arange(wp, dtype=x.dtype).view(1, 1, wp) - path[:, 1].to(x.dtype).view(k, 1, 1)
    grid = torch.stack([(2 * xs / max(wp - 1, 1) - 1).expand(k, hp, wp),
                        (2 * ys / max(hp - 1, 1) - 1).expand(k, hp, wp)], dim=-1)  # [K, H', W', 2] (x, y)
    src = canvas.unsqueeze(1).expand(n, k, c, hp, wp).reshape(n * k, c, hp, wp)
    out = F.grid_sample(src, grid.repeat(n, 1, 1, 1).to(x.device), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out.view(n, k, c, hp, wp)


def dvs_events(frames: torch.Tensor, threshold: float = 0.2, eps: float = 0.1) -> torch.Tensor:
    """DVS pixel model over ``[N, K, 1, H, W]`` intensities: ``[N, K - 1, 2, H, W]`` ON/OFF events (0/1).

    ``L = log(I + eps)``; the reference starts at frame 0's ``L``; step ``t`` compares frame ``t + 1`` with it
    and resets it where an event fires (see the module doc).
    """
    if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[2] != 1:
        raise ShapeError(f"dvs_events takes grayscale frame sequences [N, K, 1, H, W], got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    if frames.shape[1] < 2:
        raise ShapeError(f"dvs_events needs K >= 2 frames (K - 1 steps of events), got K = {frames.shape[1]}")
    if not (isinstance(threshold, (int, float)) and threshold > 0 and math.isfinite(threshold)):
        raise ConfigError(f"the DVS contrast threshold must be a number > 0, got {threshold!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ConfigError(f"eps must be > 0 (it keeps log(I + eps) finite at I = 0), got {eps!r}")
    _check_unit(frames, "dvs_events")
    log_i = torch.log(frames[:, :, 0] + eps)  # [N, K, H, W]
    ref = log_i[:, 0]
    out = []
    for t in range(1, log_i.shape[1]):  # a loop over time only; pixels and batch are vectorised
        d = log_i[:, t] - ref
        on, off = d >= threshold, d <= -threshold
        ref = torch.where(on | off, log_i[:, t], ref)
        out.append(torch.stack([on, off], dim=1))
    return torch.stack(out, dim=1).to(frames.dtype)


def saccade_events(x: torch.Tensor, time_steps: int, amplitude: float = 2.0, pad: int = 2,
                   threshold: float = 0.2, eps: float = 0.1) -> torch.Tensor:
    """Intensities ``[N, 1, H, W]`` -> events ``[N, T, 2, H + 2 pad, W + 2 pad]``: :func:`triangle_path`,
    :func:`saccade_frames`, :func:`dvs_events`."""
    _check_frames(x, "saccade_events")
    _check_steps(time_steps)
    _check_unit(x, "saccade_events")
    frames = saccade_frames(x, triangle_path(time_steps, amplitude), pad).clamp(0.0, 1.0)
    return dvs_events(frames, threshold, eps)


__all__ = ["direct_coding", "dvs_events", "intensity", "latency_coding", "rate_coding", "saccade_events",
           "saccade_frames", "triangle_path"]

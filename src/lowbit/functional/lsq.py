"""Learned Step Size Quantization (Esser et al., ICLR 2020, arXiv:1902.08153).

Quantizer with a learnable step size ``s``:

    v_bar = round(clamp(v / s, -Q_N, Q_P)),      v_hat = v_bar * s
    unsigned (post-ReLU activations):  Q_N = 0,          Q_P = 2^b - 1
    signed   (weights):                Q_N = 2^(b-1),    Q_P = 2^(b-1) - 1

Gradients (straight-through estimator through ``round``):

    d v_hat / d v = 1 if -Q_N < v/s < Q_P else 0
    d v_hat / d s = -v/s + round(v/s)   if -Q_N < v/s < Q_P
                  = -Q_N                 if v/s <= -Q_N
                  =  Q_P                 if v/s >=  Q_P

The quantizer uses ``|s|``: an optimizer can carry a learned step through zero (Adam's first updates are about
``lr`` in size, more than a small weight step), and the sign of a step means nothing, so the forward pass is a
function of ``|s|`` (gradient ``sign(s)`` times the above), as the frozen scale is (``scale = |s|``). A
trained model and its conversion then quantize alike: with a raw negative step, ``clamp(v / s, -Q_N, Q_P)``
would mirror the code range (2-bit weights ``{-1 .. 2} |s|`` instead of ``{-2 .. 1} |s|``, unsigned activations
clipped from the other side).

The step's gradient is multiplied by ``g = 1 / sqrt(N * Q_P)`` (``N`` = number of
weights of the layer, or of features of the activation; see
:func:`lsq_grad_scale` for the convention), and the step is initialised as
``s = 2 * mean(|v|) / sqrt(Q_P)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from lowbit.errors import ConfigError, DataError
from lowbit.formats import IntFormat
from lowbit.functional._checks import check_tensor
from lowbit.functional.rounding import round_ste


def lsq_bounds(fmt: IntFormat) -> tuple[int, int]:
    """``(Q_N, Q_P)`` of the paper for a format: signed ``(2^(b-1), 2^(b-1)-1)``, unsigned ``(0, 2^b-1)``."""
    return -fmt.qmin, fmt.qmax


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value ``x`` in the forward pass, gradient multiplied by ``g`` in the backward pass."""
    scaled = x * g
    return x.detach() + (scaled - scaled.detach())


def lsq_grad_scale(v: torch.Tensor, q_p: int, convention: Literal["numel", "features", "paper"] = "paper",
                   is_activation: bool = False) -> float:
    """``g = 1 / sqrt(N * Q_P)``.

    ``N`` by ``convention``: ``"numel"`` counts every element of ``v`` (many
    reimplementations, batch included); ``"features"`` counts one sample's
    elements (``v[0].numel()``); ``"paper"`` is ``numel`` for weights and
    ``features`` for activations, as the paper words it.
    """
    if convention not in ("numel", "features", "paper"):
        raise ConfigError(f"LSQ gradient-scale convention must be numel, features or paper, got {convention!r}")
    per_sample = convention == "features" or (convention == "paper" and is_activation)
    n = v[0].numel() if (per_sample and v.ndim > 1) else v.numel()
    return 1.0 / math.sqrt(n * q_p)


def step_magnitude(step: torch.Tensor, g: float = 1.0) -> torch.Tensor:
    """``|s|`` (at least the smallest normal float32), the step's gradient scaled by ``g``: the step the
    quantizer uses (see the module docstring)."""
    return grad_scale(step, g).abs().clamp_min(torch.finfo(torch.float32).tiny)


def lsq_init_step(v: torch.Tensor, q_p: int) -> torch.Tensor:
    """The paper's initial step ``2 * mean(|v|) / sqrt(Q_P)`` (a 0-dim tensor)."""
    check_tensor(v)
    return (2.0 * v.detach().abs().mean() / math.sqrt(q_p)).clamp_min(torch.finfo(torch.float32).eps)


def mse_init_step(v: torch.Tensor, q_n: int, q_p: int, candidates: int = 64) -> torch.Tensor:
    """The step that minimises ``||v - s clamp(round(v / s), -Q_N, Q_P)||^2`` (a 0-dim tensor).

    Searched over ``s = a * max|v| / Q_P`` for ``a`` in ``(0, 1]`` (``candidates`` values), then
    refined between the neighbours of the best. At
    few bits the paper's ``2 mean|v| / sqrt(Q_P)`` can start far from this; starting at the
    MSE step, training begins from the best post-training quantizer instead of relearning it.
    """
    check_tensor(v)
    x = v.detach().reshape(-1).float()
    top = float(x.abs().max())
    if top == 0:
        return torch.tensor(torch.finfo(torch.float32).eps)
    coarse = torch.linspace(1.0 / candidates, 1.0, candidates) * top / q_p
    best = _least_error(x, coarse, q_n, q_p)
    fine = best + torch.linspace(-1.0, 1.0, 2 * candidates + 1)[1:-1] * top / (q_p * candidates)  # refine around it
    return _least_error(x, torch.cat([best.reshape(1), fine[fine > 0]]), q_n, q_p)


def _least_error(x: torch.Tensor, steps: torch.Tensor, q_n: int, q_p: int) -> torch.Tensor:
    errs = torch.stack([((torch.clamp(torch.round(x / st), -q_n, q_p) * st - x) ** 2).sum() for st in steps])
    return steps[int(errs.argmin())]


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, g: float = 1.0) -> torch.Tensor:
    """Fake-quantize ``v`` with learnable ``step`` (broadcastable: per tensor or per channel).

    Autograd yields exactly the gradients of the module docstring; ``g`` scales
    the step's gradient only. ``Q_N``/``Q_P`` are checked on every call (plain ints); a fixed
    step (one that does not require grad) is checked to be finite and non-zero (a zero step
    maps every value to 0). A learned step is not read here: that would cost a device
    synchronisation per layer and step in the training loop.
    """
    for name, q in (("q_n", q_n), ("q_p", q_p)):
        if isinstance(q, bool) or not isinstance(q, int) or q < 0:
            raise ConfigError(f"lsq_quantize: {name} must be an int >= 0 (see lsq_bounds), got {q!r}")
    if q_n + q_p == 0:
        raise ConfigError("lsq_quantize: q_n = q_p = 0 leaves one level; see lsq_bounds(fmt) for a format's bounds")
    if not isinstance(step, torch.Tensor):
        raise DataError(f"lsq_quantize: step must be a tensor, got {type(step).__name__}")
    if not step.requires_grad:
        check_tensor(step, "LSQ step")
        if bool((step == 0).any()):
            raise DataError("LSQ step is 0: every value would quantize to 0; pass a step > 0, e.g. "
                            "lsq_init_step(v, q_p) (2 mean|v| / sqrt(Q_P))")
    s = step_magnitude(step, g)
    return round_ste(torch.clamp(v / s, -q_n, q_p)) * s


def lsq_quantize_int(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int) -> torch.Tensor:
    """The integer codes ``v_bar`` (int32), for the integer execution path."""
    return torch.round(torch.clamp(v / step_magnitude(step.detach()), -q_n, q_p)).to(torch.int32)

"""LSQ quantizer slots (Esser et al., ICLR 2020): the step size is a learned parameter.

They subclass the PTQ slots so that everything downstream (``convert``, the exact
simulation, :mod:`lowbit.integer`, ONNX export) works unchanged: in ``"lsq"`` mode
the forward is :func:`lowbit.functional.lsq.lsq_quantize` with the paper's gradient
scale; :meth:`freeze` turns the learned step into the slot's ``scale`` (zero point 0)
and switches to ``"quantize"``.

Activations are unsigned (``Q_N = 0``, ``Q_P = 2^b - 1``) when the first batch they see
is non-negative (after ReLU), else signed; weights are signed two's complement
(``-2^(b-1) .. 2^(b-1) - 1``), one step per output channel; ternary and power-of-two weights
learn their step the same way on their own codes (:func:`lowbit.spec.lsq_fake_quant`). Steps start at
``2 mean|v| / sqrt(Q_P)`` on the first batch, or (``init="mse"``) at the step of least
quantization error (:func:`lowbit.functional.lsq.mse_init_step`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from lowbit.formats import IntFormat
from lowbit.functional.lsq import lsq_bounds, lsq_grad_scale, lsq_init_step, lsq_quantize, mse_init_step
from lowbit.granularity import rows
from lowbit.nn.quantizers import ActQuantizer, WeightQuantizer
from lowbit.spec import QuantSpec, lsq_fake_quant, lsq_range, lsq_weight_format, solve_weight


class LSQActQuantizer(ActQuantizer):
    """Per-tensor activation quantizer with a learned step."""

    def __init__(self, spec: QuantSpec, convention: str = "paper", init: str = "lsq") -> None:
        super().__init__(spec)
        self.convention = convention
        self.init = init
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.mode = "lsq"

    def _fmt(self) -> IntFormat:
        return IntFormat(self.spec.format.bits, signed=bool(self.signed))

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        self.signed.fill_(bool((x < 0).any()))
        self.spec = replace(self.spec, format=self._fmt())
        q_n, q_p = lsq_bounds(self._fmt())
        self.step.copy_(mse_init_step(x, q_n, q_p) if self.init == "mse" else lsq_init_step(x, q_p))
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode != "lsq":
            return super().forward(x)
        if not bool(self.initialised):
            self._init(x)
        q_n, q_p = lsq_bounds(self._fmt())
        g = lsq_grad_scale(x, q_p, self.convention, is_activation=True)
        return lsq_quantize(x, self.step, q_n, q_p, g)

    def freeze(self) -> None:
        self.spec = replace(self.spec, format=self._fmt())
        self.scale = self.step.detach().abs().reshape(1).clone()
        self.zero_point = torch.zeros(1, dtype=torch.int32)
        self.mode = "quantize"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # the format follows the loaded sign
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.spec = replace(self.spec, format=self._fmt())


class LSQWeightQuantizer(WeightQuantizer):
    """Weight quantizer with one learned step per output channel (or per tensor).

    Integer specs train two's complement codes; ``Ternary()`` codes ``{-1, 0, 1}`` (``Q_N = Q_P = 1``) and
    ``PowerOfTwo(b)`` codes ``{0, +-1, +-2, ..., +-2^(n-1)}`` train the same way
    (:func:`lowbit.spec.lsq_fake_quant`). Ternary and power-of-two steps start at their solver's scale
    (the exact or TWN ternary ``alpha``, LBW-Net's least-squares ``alpha / 2^(n-1)``): for the exact
    ternary solution rounding ``w / alpha`` gives back the optimal codes, so training starts from PTQ.
    """

    def __init__(self, spec: QuantSpec, weight: torch.Tensor, convention: str = "paper", init: str = "lsq") -> None:
        spec = lsq_weight_format(spec)
        super().__init__(spec)
        self.convention = convention
        q_n, q_p = lsq_range(spec)
        if isinstance(spec.format, IntFormat):
            r = rows(weight.detach(), spec.granularity)
            first = (lambda row: mse_init_step(row, q_n, q_p)) if init == "mse" else (lambda row: lsq_init_step(row, q_p))
            steps = torch.stack([first(row) for row in r])
        else:
            steps = solve_weight(weight, spec).scale.clone()
        self.step = nn.Parameter(steps)
        self.mode = "lsq"

    def _step_view(self, w: torch.Tensor) -> torch.Tensor:
        return self.step.reshape(-1, *([1] * (w.ndim - 1))) if self.step.numel() > 1 else self.step.reshape(())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode != "lsq":
            return super().forward(w)
        g = lsq_grad_scale(w, lsq_range(self.spec)[1], self.convention)
        return lsq_fake_quant(w, self._step_view(w), self.spec, g)

    def freeze(self, weight: torch.Tensor) -> None:
        self.scale = self.step.detach().abs().clone()
        self.zero_point = torch.zeros_like(self.scale, dtype=torch.int32)
        if self.ternary:  # round(w / s) is nonzero where |w| > s / 2
            self.threshold = self.scale / 2
        self.mode = "quantize"


__all__ = ["LSQActQuantizer", "LSQWeightQuantizer"]

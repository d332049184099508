"""Training for temporal sparsity (Neil, Lee, Delbruck, Liu, "Delta Networks", ICML 2017).

The paper's four methods, as parts for the one training loop :func:`lowbit.train`:

1. **Thresholded deltas in the forward pass** (:func:`delta_training`, a mode for the length of a
   ``with`` block). Every delta layer of the model computes what it computes at inference, from the
   memories of the last transmitted values::

       mask_t  = |x_t - x_hat| > θ ;  x_hat := x_t where mask_t           (the same rule as inference)
       a_x,t   = acc_x,0 + W_ih (x_hat_t - x_hat_0)    (= the accumulator b_ih + W_ih x_hat_t)
       a_h,t   = acc_h,0 + W_hh (h_hat_t - h_hat_0)    (h_hat: the memory of h_{t-1}, threshold θ_h)

   written as products of the memories instead of sums of deltas (the same values up to float
   rounding; the sums would put a T-long chain of additions in the autograd graph).
   **Gradient: straight-through.** The memory is used as ``x_hat + (x - x.detach())``: its value in
   the forward pass, the gradient of the identity ``d x_hat / d x := 1`` backward, as for rounding
   (:func:`lowbit.functional.rounding.ste`). The exact gradient of the thresholding is zero at every
   element that was not transmitted (the memory does not depend on ``x_t`` there) and reaches a held
   value only through the step that last sent it; in the paper's code (Gao's DeltaGRU, a
   ``masked_fill``) the gradient flows through the sent deltas only. The straight-through choice
   gives every step its gradient, as if the layer saw the true value, while the forward pass keeps
   the error of the approximation; the loss sees that error and the weights learn to tolerate it.
   The thresholds are the layers' own ``theta_x``/``theta_h``; the counters count as at inference.
2. **Activation rounding to fixed point** (``DeltaTrainSpec.rounding``, a :class:`QFormat`): the
   layer input and every new hidden state are rounded to ``Qm.n`` (``m`` integer bits with the sign,
   ``n`` fractional bits; values ``k 2^-n``, ``k`` an ``(m+n)``-bit signed integer, saturating),
   straight-through gradient. Changes below one LSB are then exactly zero. Applied in training and
   in evaluation (inside the ``with`` block), as the fixed-point runtime would compute.
3. **Gaussian noise** (``DeltaTrainSpec.noise_std``): ``σ ε`` (``ε ~ N(0, 1)``, the global RNG,
   which :func:`lowbit.train` seeds) added to the memories the products read, in training mode only:
   the network learns to tolerate the error of the delta approximation.
4. **L1 cost on temporal changes** (:class:`TemporalL1`, a loss around the task loss)::

       L = L_task + λ (1/B) Σ_b Σ_t Σ_j |h_{b,t,j} - h_{b,t-1,j}|      (t = 2..T of each sequence)

   summed over time and units, averaged over the batch. It reads the hidden states that the model
   returns: the model's forward returns ``(logits, hidden)`` (a :class:`SequenceOutput`, see
   :class:`DeltaClassifier`), ``hidden`` one tensor or a tuple of tensors ``(B, T, H)``.

:func:`train_delta` calls :func:`lowbit.train` with these parts; it is
``with delta_training(model, spec): train(model, batches, cfg, loss=TemporalL1(lam), ...)``.
Fine-tuning a trained dense GRU, as the paper does: ``DeltaClassifier(DeltaGRU.from_torch(gru, θ_x, θ_h), head)``.

>>> import torch
>>> from torch import nn
>>> from lowbit.delta import DeltaGRU, record_counts
>>> from lowbit.training import LoopConfig
>>> _ = torch.manual_seed(0)
>>> model = DeltaClassifier(DeltaGRU(3, 8, batch_first=True, theta_x=0.1, theta_h=0.1), nn.Linear(8, 2))
>>> x, y = torch.cumsum(0.1 * torch.randn(16, 10, 3), dim=1), torch.randint(0, 2, (16,))
>>> history = train_delta(model, [(x, y)], LoopConfig(epochs=2), lam=1e-3, progress=False)
>>> [row["epoch"] for row in history]
[1, 2]
>>> with torch.no_grad(), record_counts(model) as rec:
...     logits, hidden = model(x)
>>> logits.shape, hidden.shape, rec.total().mac_reduction > 1
(torch.Size([16, 2]), torch.Size([16, 10, 8]), True)
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from lowbit.delta.cells import _DeltaRNNBase, layer_counts
from lowbit.delta.functional import gru_from_acc, lstm_from_acc, threshold_delta
from lowbit.delta.state import DeltaLayerState
from lowbit.errors import ConfigError
from lowbit.functional._checks import check_tensor
from lowbit.functional.rounding import ste
from lowbit.training import CrossEntropy, Hooks, LoopConfig, train


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r}: pass an integer >= {low}")
    return value


def _check_nonneg(name: str, value: object, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
            or math.isinf(value) or value < 0:
        raise ConfigError(f"{name}={value!r}: pass a finite real number >= 0, e.g. {name}={example} (0 turns it off)")
    return float(value)


@dataclass(frozen=True)
class QFormat:
    """Signed fixed point ``Qm.n``: ``int_bits`` (sign included) + ``frac_bits`` bits, step ``2^-frac_bits``,
    range ``[-2^(m-1), 2^(m-1) - 2^-n]``. ``QFormat(8, 8)`` is 16-bit Q8.8."""

    int_bits: int = 8
    frac_bits: int = 8

    def __post_init__(self) -> None:
        _check_int("QFormat.int_bits", self.int_bits, 1)
        _check_int("QFormat.frac_bits", self.frac_bits, 0)
        if not 2 <= self.int_bits + self.frac_bits <= 24:  # 24: every level exact in float32
            raise ConfigError(f"QFormat({self.int_bits}, {self.frac_bits}) has {self.int_bits + self.frac_bits} bits; "
                              "pass 2 to 24 in all, e.g. QFormat(8, 8)")

    @property
    def bits(self) -> int:
        return self.int_bits + self.frac_bits

    @property
    def step(self) -> float:
        return 2.0 ** -self.frac_bits


def fixed_point_ste(x: torch.Tensor, fmt: QFormat) -> torch.Tensor:
    """``x`` rounded (half to even) to the ``fmt`` grid and saturated; identity gradient (STE)."""
    if not isinstance(fmt, QFormat):
        raise ConfigError(f"fixed_point_ste takes a QFormat, got {type(fmt).__name__}")
    check_tensor(x, "the activations to round")
    q = torch.clamp(torch.round(x.detach() / fmt.step), -2 ** (fmt.bits - 1), 2 ** (fmt.bits - 1) - 1)
    return ste(x, q * fmt.step)


@dataclass(frozen=True)
class DeltaTrainSpec:
    """How the delta layers compute during training: ``rounding`` (a :class:`QFormat`, or ``None``)
    and ``noise_std`` (σ of the Gaussian noise on the thresholded values, ``0`` for none)."""

    rounding: QFormat | None = None
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if self.rounding is not None and not isinstance(self.rounding, QFormat):
            raise ConfigError(f"DeltaTrainSpec.rounding={self.rounding!r}: pass a QFormat (e.g. QFormat(8, 8)) "
                              "or None")
        object.__setattr__(self, "noise_std", _check_nonneg("DeltaTrainSpec.noise_std", self.noise_std, "0.05"))


def _memory(value: torch.Tensor, hat: torch.Tensor, noise_std: float, training: bool) -> torch.Tensor:
    """The memory ``hat`` in the forward pass, the gradient of ``value`` backward, plus noise in training."""
    out = ste(value, hat)
    if training and noise_std > 0:
        out = out + noise_std * torch.randn_like(out)
    return out


def _ste_layer(layer: _DeltaRNNBase, k: int, xs: torch.Tensor, s: DeltaLayerState, theta_in: float,
               spec: DeltaTrainSpec) -> tuple[torch.Tensor, DeltaLayerState, Any, Any]:
    """One layer over ``xs`` ``(T, B, I_k)`` as in the module docstring; returns what ``_run_layer`` returns."""
    w_ih, w_hh, _, _ = layer._layer_weights(k)
    noise = spec.noise_std if layer.training else 0.0
    if spec.rounding is not None:
        xs = fixed_point_ste(xs, spec.rounding)
    x_hat, used, x_masks = s.x_hat, [], []
    for t in range(xs.shape[0]):  # element-wise but sequential: the memory of step t depends on t - 1
        _, x_hat, m = threshold_delta(xs[t].detach(), x_hat, theta_in)
        used.append(_memory(xs[t], x_hat, noise, layer.training))
        x_masks.append(m)
    acc_x = s.acc_x + (torch.stack(used) - s.x_hat) @ w_ih.T  # (T, B, G*H)
    h, c, h_hat, hs, h_masks = s.h, s.c, s.h_hat, [], []
    acc_h = s.acc_h
    for t in range(xs.shape[0]):
        _, h_hat, m = threshold_delta(h.detach(), h_hat, layer.theta_h)
        acc_h = s.acc_h + (_memory(h, h_hat, noise, layer.training) - s.h_hat) @ w_hh.T
        if layer.gates == 3:
            h = gru_from_acc(acc_x[t], acc_h, h)
        else:
            h, c = lstm_from_acc(acc_x[t], acc_h, c)
        if spec.rounding is not None:
            h = fixed_point_ste(h, spec.rounding)
        hs.append(h)
        h_masks.append(m)
    counts, events = layer_counts(s.counts, torch.stack(x_masks), torch.stack(h_masks))
    new = DeltaLayerState(h, c, x_hat, h_hat, acc_x[-1], acc_h, s.counts + counts)
    return torch.stack(hs), new, counts, events


@contextlib.contextmanager
def delta_training(model: nn.Module, spec: DeltaTrainSpec = DeltaTrainSpec()) -> Iterator[nn.Module]:
    """``with delta_training(model, spec): ...``: every delta layer of ``model`` runs the training-mode
    forward (straight-through thresholding, ``spec``'s rounding and noise) until the block ends, even
    on error. Outside the block the layers run their accumulator form again. Returns ``model``.
    A block nested in one with the same spec (an evaluation hook inside :func:`train_delta`) changes
    nothing; with another spec it is refused."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"delta_training takes an nn.Module, got {type(model).__name__}")
    if not isinstance(spec, DeltaTrainSpec):
        raise ConfigError(f"spec must be a DeltaTrainSpec, got {type(spec).__name__}")
    layers = [m for m in model.modules() if isinstance(m, _DeltaRNNBase)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no delta layer to train: build it with lowbit.delta.DeltaGRU/"
                          "DeltaLSTM, or convert it with lowbit.delta.to_delta(model, theta_x=..., theta_h=...)")
    runner = functools.partial(_ste_layer, spec=spec)
    outer = {m._layer_runner.keywords.get("spec") for m in layers  # type: ignore[union-attr]
             if isinstance(m._layer_runner, functools.partial) and m._layer_runner.func is _ste_layer}
    if outer - {spec} or any(m._layer_runner is not None and not isinstance(m._layer_runner, functools.partial)
                             for m in layers):
        raise ConfigError(f"the model is already inside a delta_training block with another spec ({outer}); "
                          "a nested block (e.g. an evaluation hook during train_delta) must use the same spec")
    if outer:  # nested with the same spec (an evaluation inside train_delta): the outer block owns the mode
        yield model
        return
    try:
        for m in layers:
            m._layer_runner = runner
        yield model
    finally:
        for m in layers:
            m._layer_runner = None


class SequenceOutput(NamedTuple):
    """What a model trained with :class:`TemporalL1` returns: class scores ``(B, C)`` and the hidden
    states it exposes, one tensor ``(B, T, H)`` or a tuple of them (one per layer)."""

    logits: torch.Tensor
    hidden: torch.Tensor | tuple[torch.Tensor, ...]


def temporal_l1(hidden: torch.Tensor) -> torch.Tensor:
    """``(1/B) Σ_b Σ_{t>=2} Σ_j |h_{b,t,j} - h_{b,t-1,j}|`` of one ``(B, T, H)`` tensor (batch first)."""
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ConfigError(f"temporal_l1 takes hidden states of shape (batch, time, hidden), got {shape}")
    return (hidden[:, 1:] - hidden[:, :-1]).abs().sum() / hidden.shape[0]


@dataclass(frozen=True)
class TemporalL1:
    """``loss(output, y, x) = base(logits, y, x) + lam * Σ_layers temporal_l1(hidden)`` (the paper's
    ``β Σ_t ‖h_t - h_{t-1}‖₁``); ``output`` is ``(logits, hidden)`` (:class:`SequenceOutput`)."""

    lam: float = 0.0
    base: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = CrossEntropy()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _check_nonneg("TemporalL1.lam", self.lam, "1e-3"))
        if not callable(self.base):
            raise ConfigError(f"TemporalL1.base={self.base!r}: pass a loss(output, y, x), e.g. CrossEntropy()")

    def __call__(self, output: object, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, tuple) or len(output) != 2:
            raise ConfigError("TemporalL1 needs the model to return (logits, hidden states), got "
                              f"{type(output).__name__}; wrap the model in lowbit.delta.training.DeltaClassifier "
                              "or return SequenceOutput(logits, hidden) from its forward")
        logits, hidden = output
        value = self.base(logits, y, x)
        if self.lam == 0:
            return value
        for h in (hidden if isinstance(hidden, (tuple, list)) else (hidden,)):
            value = value + self.lam * temporal_l1(h)
        return value


class DeltaClassifier(nn.Module):
    """A delta layer (``batch_first``), then ``head`` on the last step: ``SequenceOutput(head(y[:, -1]), y)``.

    ``y`` is the top layer's hidden state at every step, the sequence :class:`TemporalL1` penalises.
    """

    def __init__(self, rnn: _DeltaRNNBase, head: nn.Module) -> None:
        super().__init__()
        if not isinstance(rnn, _DeltaRNNBase) or not rnn.batch_first:
            raise ConfigError("DeltaClassifier takes a batch_first DeltaGRU/DeltaLSTM, e.g. "
                              "DeltaGRU.from_torch(nn.GRU(..., batch_first=True), theta_x, theta_h)")
        self.rnn, self.head = rnn, head

    def forward(self, x: torch.Tensor) -> SequenceOutput:
        y, _ = self.rnn(x)
        return SequenceOutput(self.head(y[:, -1]), y)


def train_delta(model: nn.Module, batches: object, cfg: LoopConfig = LoopConfig(), *, lam: float = 0.0,
                spec: DeltaTrainSpec = DeltaTrainSpec(), optimizer: Any = None, schedule: Any = None,
                hooks: Hooks = Hooks(), out_dir: str | Path | None = None, resume: bool = False,
                progress: bool = True) -> list[dict]:
    """Train the delta layers of ``model`` in place with :func:`lowbit.train`, the thresholded forward
    (:func:`delta_training`) and the loss ``TemporalL1(lam)``; ``model`` returns ``(logits, hidden)``.

    The thresholds, ``lam`` and ``spec`` go into the run's options (a resumed run must match them).
    The history's accuracy is ``None`` (the output is a pair): evaluate in an ``epoch_end`` hook.
    """
    loss = TemporalL1(lam)
    if not isinstance(spec, DeltaTrainSpec):
        raise ConfigError(f"spec must be a DeltaTrainSpec, got {type(spec).__name__}")
    thetas = [[m.theta_x, m.theta_h] for m in model.modules() if isinstance(m, _DeltaRNNBase)]
    rounding = None if spec.rounding is None else asdict(spec.rounding)
    options: Mapping[str, object] = {"delta_lam": loss.lam, "delta_thetas": thetas,
                                     "delta_rounding": rounding, "delta_noise_std": spec.noise_std}
    with delta_training(model, spec):
        return train(model, batches, cfg, optimizer=optimizer, loss=loss, schedule=schedule, hooks=hooks,
                     out_dir=out_dir, resume=resume, options=options, progress=progress)


__all__ = ["DeltaClassifier", "DeltaTrainSpec", "QFormat", "SequenceOutput", "TemporalL1", "delta_training",
           "fixed_point_ste", "temporal_l1", "train_delta"]

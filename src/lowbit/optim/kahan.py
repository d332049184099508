"""SGD for parameters held in a low-precision storage format, with and without Kahan compensation.

Paper B (Park, Lee, Oh, Ha, Lee, "Training Deep Neural Network in Limited Precision", SAIT 2018,
arXiv 1810.05486): when parameters are stored in few bits, an update smaller than half a storage step
(one LSB) rounds away and is lost, step after step. SGD with Kahan summation keeps, per parameter, a
compensation ``c`` of what the last write dropped and feeds it back into the next one; the pair
``(p, c)`` "virtually extends the bit width" of ``p``.

One step of :class:`KahanSGD`, per parameter ``p`` (``round`` is the storage's round-to-nearest)::

    d = g + weight_decay p                      # torch.optim.SGD's update direction,
    b = momentum b + d   (b = d on the first)   #   momentum and Nesterov as torch does them
    d = d + momentum b if nesterov else b
    u = -lr d                                   # the update SGD wants to make
    y = u + c                                   # plus what earlier writes dropped
    new = round(p + y)                          # the low-precision write
    c = y - (new - p)  = (p + y) - new          # what this write dropped (|c| <= LSB/2 inside the range)
    p = new

This is the standard Kahan scheme of the research notes (``Y = U - C; T = Q_W(W + Y); C = (T - W) - Y``)
with ``c = -C``; ``new - p`` is a difference of two storage values, exact in float64, so ``c`` holds the
sub-LSB remainder of the whole accumulated update: after any number of steps ``p + c`` equals the
initial ``p`` plus the sum of all ``u`` up to float64 rounding. (At the range's ends the clamp's
excess also lands in ``c`` and is fed back, as Kahan summation does; it is written once the
parameter moves back into the range.)

Choices where the paper (as the notes have it) gives no value:

- the arithmetic of a step is float64; ``c`` and the momentum buffer are kept in the parameter's dtype
  (float32), not on a finer fixed-point grid ``f_C = f_W + b_c`` as the notes' hardware version does;
- round-to-nearest is half-to-even; writes saturate at the range's ends (fp16 at +-65504, not inf);
- momentum, dampening-free, and weight decay follow torch.optim.SGD exactly, so that a storage finer than
  float32 (``FixedPoint(32, 24)`` on values below 1) reproduces torch.optim.SGD.

:class:`LowPrecisionSGD` is the same step without ``c`` (``p = round(p + u)``), with round-to-nearest or
stochastic rounding (Gupta et al. 2015) from an explicit ``torch.Generator``; its generator state is part
of its ``state_dict``. Both refuse a parameter whose values are not storage values: call
:func:`~lowbit.optim.round_to_storage` first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError, DataError
from lowbit.optim.storage import ROUNDINGS, Rounding, Storage, as_storage, is_representable, round_storage
from lowbit.utils.fields import checked_init


def _number(value: object, name: str, low: float, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = f"{'(' if low_open else '['}{low:g}"
        hi = f"{high:g}{')' if high_open else ']'}" if math.isfinite(high) else "inf)"
        raise ConfigError(f"{name}={value!r} is out of range: it must be a number in {lo}, {hi}")
    return float(value)


def _check_hyper(cls: str, lr: object, momentum: object, weight_decay: object, nesterov: object) -> None:
    _number(lr, f"{cls} lr", 0.0, low_open=True)
    _number(momentum, f"{cls} momentum", 0.0, 1.0, high_open=True)
    _number(weight_decay, f"{cls} weight_decay", 0.0)
    if not isinstance(nesterov, bool):
        raise ConfigError(f"{cls} nesterov must be True or False, got {nesterov!r}")
    if nesterov and momentum == 0:
        raise ConfigError(f"{cls} nesterov=True needs momentum > 0")


class _StorageSGD(torch.optim.Optimizer):
    """Shared part: hyper-parameters, storage per group (as its plain name), checks, the update ``u``."""

    _compensated = False

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, *,
                 storage: object, nesterov: bool = False) -> None:
        name = type(self).__name__
        _check_hyper(name, lr, momentum, weight_decay, nesterov)
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov,
                    "storage": as_storage(storage).name}
        super().__init__(params, defaults)
        for group in self.param_groups:  # a group may name its own storage (the last FC layer, paper B)
            group["storage"] = as_storage(group["storage"]).name
            _check_hyper(name, group["lr"], group["momentum"], group["weight_decay"], group["nesterov"])
        for i, p in enumerate(self._params()):
            if p.dtype not in (torch.float32, torch.float64):
                raise ConfigError(f"parameter {i} is {p.dtype}: {name} simulates low-precision storage in float32 "
                                  "or float64 tensors")
        for group in self.param_groups:
            self._check_representable(group)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _index(self, p: torch.Tensor) -> int:
        return next(i for i, q in enumerate(self._params()) if q is p)

    def _check_representable(self, group: dict) -> None:
        storage = as_storage(group["storage"])
        for p in group["params"]:
            ok = is_representable(p, storage)
            if not bool(ok.all()):
                bad = float(p.detach().reshape(-1)[(~ok).reshape(-1)][0])
                raise DataError(f"parameter {self._index(p)} holds {bad!r}, which is not a value of the storage "
                                f"{storage} (range {storage.min_value:g}..{storage.max_value:g}); call "
                                f"lowbit.optim.round_to_storage(model, {storage!r}) before building the optimizer "
                                "(and after changing the parameters outside it)")

    def _direction(self, group: dict, p: torch.Tensor) -> torch.Tensor:
        """torch.optim.SGD's ``d`` (weight decay, momentum, Nesterov), in the parameter's dtype."""
        g = p.grad.detach()
        if g.is_sparse:
            raise DataError(f"parameter {self._index(p)} has a sparse gradient, which {type(self).__name__} "
                            "does not take")
        if not bool(torch.isfinite(g).all()):
            kind = "NaN" if bool(torch.isnan(g).any()) else "inf"
            raise DataError(f"parameter {self._index(p)} has a {kind} gradient: the step would write garbage into "
                            "the low-precision storage (lower the learning rate, check the loss and the data)")
        d = g.add(p.detach(), alpha=group["weight_decay"]) if group["weight_decay"] else g.clone()
        if group["momentum"]:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d.clone()
            else:
                buf.mul_(group["momentum"]).add_(d)
            d = d.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        return d

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _number(group["lr"], f"{type(self).__name__} lr", 0.0)  # a schedule may reach 0
            self._check_representable(group)
            storage = as_storage(group["storage"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                u = self._direction(group, p).to(torch.float64).mul_(-group["lr"])
                self._write(p, u, storage, group)
        return loss

    def _write(self, p: torch.Tensor, u: torch.Tensor, storage: Storage, group: dict) -> None:
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict) -> None:
        for saved, group in zip(state_dict.get("param_groups", []), self.param_groups):
            if saved.get("storage") != group["storage"]:
                raise ValueError(f"the saved state is for storage {saved.get('storage')!r}, this optimizer's is "
                                 f"{group['storage']!r}")
        super().load_state_dict(state_dict)


class KahanSGD(_StorageSGD):
    """SGD on parameters held in ``storage`` (a :class:`~lowbit.optim.FixedPoint`, a
    :class:`~lowbit.optim.Float16Storage`, ``"bf16"`` or ``"fp16"``), with a Kahan compensation buffer per
    parameter (paper B; the step is in the module doc). Parameters stay float32 tensors holding storage
    values (simulated storage). ``state_dict()`` holds each parameter's ``"compensation"`` (and
    ``"momentum_buffer"``), so a resumed run continues bit for bit. A parameter group may set its own
    ``"storage"`` (e.g. more bits for the last FC layer, see :func:`~lowbit.optim.last_fc_min_bits`).
    """

    _compensated = True

    def _write(self, p: torch.Tensor, u: torch.Tensor, storage: Storage, group: dict) -> None:
        state = self.state[p]
        c = state.get("compensation")
        if c is None:
            c = state["compensation"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        p64 = p.detach().to(torch.float64)
        y = u + c.to(torch.float64)
        new = round_storage(p64 + y, storage, p.dtype)
        c.copy_(y - (new.to(torch.float64) - p64))
        p.copy_(new)


class LowPrecisionSGD(_StorageSGD):
    """SGD on parameters held in ``storage`` without compensation: ``p = round(p + u)``, the baseline that
    loses updates below half an LSB (``rounding="nearest"``) or keeps them on average
    (``rounding="stochastic"``, drawing from ``generator``, which it requires: never the global RNG).
    The generator's state is saved in ``state_dict()`` and restored by ``load_state_dict()``."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, *,
                 storage: object, nesterov: bool = False, rounding: Rounding = "nearest",
                 generator: torch.Generator | None = None) -> None:
        if rounding not in ROUNDINGS:
            raise ConfigError(f"LowPrecisionSGD rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        if rounding == "stochastic" and not isinstance(generator, torch.Generator):
            raise ConfigError("LowPrecisionSGD(rounding='stochastic') needs generator=torch.Generator() (seeded, "
                              "e.g. torch.Generator().manual_seed(0)); lowbit never draws from the global RNG")
        super().__init__(params, lr, momentum, weight_decay, storage=storage, nesterov=nesterov)
        for group in self.param_groups:
            group["rounding"] = rounding
        self.generator = generator

    def _write(self, p: torch.Tensor, u: torch.Tensor, storage: Storage, group: dict) -> None:
        p.copy_(round_storage(p.detach().to(torch.float64) + u, storage, p.dtype, rounding=group["rounding"],
                              generator=self.generator))

    def state_dict(self) -> dict:
        sd = super().state_dict()
        if self.generator is not None:
            sd["generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        gen = state_dict.pop("generator", None)
        if (gen is None) != (self.generator is None):
            raise ValueError("the saved state and this optimizer differ in having a random generator")
        super().load_state_dict(state_dict)
        if gen is not None:
            self.generator.set_state(gen)


# ---------------------------------------------------------------- factories for lowbit.train


def _groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """As :class:`lowbit.training.SGDNesterov`: weight decay on weight matrices and kernels only."""
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


@checked_init()
@dataclass(frozen=True)
class Kahan:
    """Factory for :func:`lowbit.train`: ``train(model, data, cfg, optimizer=Kahan(lr=0.05, storage=FixedPoint(12, 10)))``
    builds a :class:`KahanSGD` over the trainable parameters (weight decay on weight matrices and kernels
    only, as :class:`~lowbit.training.SGDNesterov`). Round the model first: ``round_to_storage(model, storage)``."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    storage: Storage | str = "bf16"
    nesterov: bool = False

    def __post_init__(self) -> None:
        _check_hyper("Kahan", self.lr, self.momentum, self.weight_decay, self.nesterov)
        object.__setattr__(self, "storage", as_storage(self.storage))

    def __call__(self, params: Iterable[nn.Parameter]) -> KahanSGD:
        return KahanSGD(_groups(params, self.weight_decay), self.lr, self.momentum, self.weight_decay,
                        storage=self.storage, nesterov=self.nesterov)


@checked_init()
@dataclass(frozen=True)
class LowPrecision:
    """Factory for :func:`lowbit.train` building a :class:`LowPrecisionSGD` (no compensation); stochastic
    rounding draws from a generator seeded ``seed`` (one per optimizer built)."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    storage: Storage | str = "bf16"
    nesterov: bool = False
    rounding: Rounding = "nearest"
    seed: int = field(default=0)

    def __post_init__(self) -> None:
        _check_hyper("LowPrecision", self.lr, self.momentum, self.weight_decay, self.nesterov)
        object.__setattr__(self, "storage", as_storage(self.storage))
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"LowPrecision.rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"LowPrecision.seed must be an int >= 0, got {self.seed!r}")

    def __call__(self, params: Iterable[nn.Parameter]) -> LowPrecisionSGD:
        gen = torch.Generator().manual_seed(self.seed) if self.rounding == "stochastic" else None
        return LowPrecisionSGD(_groups(params, self.weight_decay), self.lr, self.momentum, self.weight_decay,
                               storage=self.storage, nesterov=self.nesterov, rounding=self.rounding, generator=gen)

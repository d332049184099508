"""Calibration: run batches through a prepared model so its observers see data.

A layer of its own below :mod:`lowbit.ptq`, so that the passes that need calibration data
(channel equalization in :mod:`lowbit.graph.equalize`, GPTQ in :mod:`lowbit.rounding`, bias
correction) import it without importing the PTQ workflow that calls them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from lowbit.errors import ConfigError, DataError
from lowbit.nn.quantizers import ActQuantizer, WeightQuantizer
from lowbit.nn.unified import _Unified
from lowbit.utils.progress import Progress


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def act_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


def batches(data) -> Iterator[torch.Tensor]:
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


def calibrate(model: nn.Module, data: Iterable, progress: bool = True) -> int:
    """Run calibration batches (tensors, or ``(x, y)`` pairs) through a prepared model; returns the count."""
    quantizers = act_quantizers(model)
    if not quantizers:
        raise ConfigError("the model has no quantizers: call lowbit.ptq.prepare first")
    for q in quantizers:
        q.mode = "observe"
    n, first = 0, None
    with torch.no_grad():
        for i, x in enumerate(Progress(batches(data), desc="calibrate", enabled=progress)):
            check_batch(x, i, first)
            first = first if first is not None else tuple(x.shape)
            run_batch(model, x, i, first)
            n += 1
    if n == 0:
        raise DataError("no calibration batches: pass at least one batch of representative inputs")
    check_reached(model, "calibration")
    return n


def check_batch(x: object, i: int, first: tuple | None) -> None:
    """Batch ``i`` is a non-empty finite tensor of the same kind as batch 0 (shape ``first``)."""
    if not isinstance(x, torch.Tensor) or x.numel() == 0:
        raise DataError(f"calibration batch {i} is empty or not a tensor")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError(f"calibration batch {i} holds NaN or inf values: clean the data first")
    if first is not None and x.ndim != len(first):
        raise DataError(f"calibration batch {i} has shape {tuple(x.shape)} but batch 0 had {first}: every batch "
                        "must hold samples of the same shape")


def run_batch(model: nn.Module, x: torch.Tensor, i: int, first: tuple) -> torch.Tensor:
    """``model(x)`` for calibration batch ``i``; a batch the model cannot take becomes a DataError naming it."""
    try:
        return model(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        if isinstance(exc, DataError):
            raise
        other = f" (batch 0 had shape {first})" if tuple(x.shape[1:]) != first[1:] else ""
        raise DataError(f"calibration batch {i} of shape {tuple(x.shape)} does not fit the model{other}: "
                        f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _quantizer_place(name: str) -> str:
    """A quantizer's module path as the layer it serves: ``fc1.output_quant`` -> ``fc1 (output)``,
    ``fc1.0`` (module swap: quantizer, then layer) -> ``fc1 (input)``."""
    if name.endswith(".output_quant"):
        return f"{name[:-len('.output_quant')]} (output)"
    if name.endswith(".0"):
        return f"{name[:-2]} (input)"
    return name


def check_reached(model: nn.Module, what: str) -> None:
    """Every activation quantizer must have seen data; name the layers a pass never reached."""
    unseen = [_quantizer_place(name) for name, q in model.named_modules()
              if isinstance(q, ActQuantizer) and q.mode == "observe" and int(getattr(q.observer, "n_batches", 1)) == 0]
    if unseen:
        raise DataError(f"the activation quantizers of {', '.join(unseen[:6])} saw no data in {what}: no batch reached them "
                        "(a data-dependent branch the batches never take?). Calibrate with batches that reach "
                        "every layer, or keep those layers in float with LayerRule(pattern, keep_float=True)")


@torch.no_grad()
def run_float_inputs(model: nn.Module, layers: list[tuple[str, nn.Module]], data: Iterable,
                     visit: Callable[[str, nn.Module, torch.Tensor], None]) -> int:
    """Run the batches of ``data`` through ``model`` in float (every quantizer off) and call
    ``visit(name, module, input)`` on the input of each of ``layers``; returns the batch count."""
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: visit(n, mod, args[0])) for n, m in layers]
    count = 0
    try:
        with quantizers_off(model):
            for x in batches(data):
                model(x)
                count += 1
    finally:
        for h in handles:
            h.remove()
    return count


class MeanPatches:
    """Per layer, the mean input patch (:meth:`~lowbit.nn.unified._Unified.mean_patch`) averaged over the
    batches that pass while :meth:`watch` is active: all bias correction needs from the data. Watching
    the calibration pass (float activations, observers only) saves bias correction a pass of its own."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def watch(self, layers: list[tuple[str, _Unified]]) -> Iterator[MeanPatches]:
        def add(name: str, module: _Unified, x: torch.Tensor) -> None:
            mean = module.mean_patch(x.detach())
            self.sums[name] = self.sums[name] + mean if name in self.sums else mean
            self.counts[name] = self.counts.get(name, 0) + 1

        handles = [m.register_forward_pre_hook(lambda mod, args, n=n: add(n, mod, args[0])) for n, m in layers]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def mean(self, name: str) -> torch.Tensor | None:
        return self.sums[name] / self.counts[name] if name in self.sums else None


@contextlib.contextmanager
def quantizers_off(model: nn.Module, keep: Iterable[nn.Module] = ()) -> Iterator[nn.Module]:
    """Temporarily turn every quantizer off (except those inside ``keep``): the model runs in float."""
    keep_ids = {id(q) for k in keep for q in k.modules()}
    saved = []
    for q in model.modules():
        if isinstance(q, (ActQuantizer, WeightQuantizer)) and id(q) not in keep_ids:
            saved.append((q, q.mode))
            q.mode = "off"
    try:
        yield model
    finally:
        for q, mode in saved:
            q.mode = mode


__all__ = ["MeanPatches", "act_quantizers", "batches", "calibrate", "check_batch", "check_reached", "quantizers_off",
           "run_batch", "run_float_inputs"]

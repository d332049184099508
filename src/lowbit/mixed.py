"""Automatic mixed precision: keep the few layers that hurt at higher activation precision, under a budget.

Static W8A8 quantization of a transformer or an audio front end loses most of its fidelity in a few
layers (a BERT's FFN output projections read GELU outputs whose outliers no 8-bit grid per tensor
holds). :func:`auto_mixed` finds them and pays only for them:

1. quantize the whole model with ``config`` (:func:`lowbit.ptq.quantize`);
2. sensitivity by leaving one layer out: for each quantized layer ``L``, the output error with ``L``'s
   quantizers (its weights, its output and the input quantizer in front of it) turned off, everything
   else quantized; the error is ``1 - cos`` between the float model's and the quantized model's outputs,
   per sample, averaged. An integer LSTM / GRU (:class:`~lowbit.nn.recurrent.QRecurrent`) cannot be left float
   that way (its arithmetic needs its input on a grid) and its only activation grid a rule changes is its input:
   when ``high`` is 16 bits, its error is measured by quantizing again with its input on the 16-bit grid (a
   ``LayerRule(name, act=high)``, the int16 input of :mod:`lowbit.nn.recurrent`), and its extra BOPs are those of
   layer 0's input projection at 8 x 16 bits;
3. promote layers to ``high`` activations (default 16 bits: a :class:`~lowbit.ptq.LayerRule` whose ``act``
   is the layer's input and output grid), the largest error drop first, while the estimated extra
   bit-operations stay within ``budget`` of the uniform model's (a layer's input at 16 bits doubles its
   ``b_w b_a`` BOPs);
4. quantize again with those rules and measure the BOPs (a promoted layer's output grid is also its
   consumers' input): over budget, the last promotion is dropped and the model quantized again.

The choice, each layer's error drop and the BOPs ratio are returned, so the user sees what was bought.
Peers' equivalent: AIMET's per-layer analysis (which reports but does not choose), HAWQ-style
sensitivity-driven bit allocation (Dong et al. 2019-2020) with a BOPs budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import fx, nn

from lowbit.calibration import first_samples, model_calls
from lowbit.cost.profile import profile, recurrent_input_macs
from lowbit.errors import ConfigError, DataError
from lowbit.graph.nodes import module_of
from lowbit.formats import IntFormat
from lowbit.nn.quantizers import ActQuantizer, WeightQuantizer
from lowbit.nn.recurrent import QRecurrent
from lowbit.nn.unified import _Unified, unified_modules
from lowbit.ptq import LayerRule, PTQConfig, quantize, uint_act
from lowbit.spec import QuantSpec


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    error_all: float  # 1 - cos with every layer quantized
    error_without: float  # 1 - cos with this layer left float
    extra_bops: int  # per sample, if its activations went to the high precision

    @property
    def gain(self) -> float:
        return self.error_all - self.error_without


@dataclass(frozen=True)
class MixedResult:
    model: nn.Module
    rules: tuple[LayerRule, ...]
    sensitivities: tuple[LayerSensitivity, ...]
    bops_ratio: float  # BOPs of the mixed model / BOPs of the uniform one
    error_before: float
    error_after: float

    def render(self) -> str:
        head = f"{'layer':<40}{'error drop':>12}{'extra BOPs':>14}  promoted"
        chosen = {r.pattern for r in self.rules}
        lines = [head, "-" * len(head)]
        for s in sorted(self.sensitivities, key=lambda s: -s.gain):
            lines.append(f"{s.name[:39]:<40}{s.gain:>12.2e}{s.extra_bops:>14,}  {'yes' if s.name in chosen else ''}")
        lines.append(f"output error 1-cos: {self.error_before:.2e} -> {self.error_after:.2e}; "
                     f"BOPs x{self.bops_ratio:.3f}")
        return "\n".join(lines)


def _first_tensor(out) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"auto_mixed compares model outputs, and this model returns a {type(out).__name__}")
    return out


@torch.no_grad()
def _outputs(model: nn.Module, calls: list[tuple[tuple, dict]]) -> torch.Tensor:
    return torch.cat([_first_tensor(model(*a, **k)).reshape(a[0].shape[0] if a else len(next(iter(k.values()))), -1)
                      .double() for a, k in calls])


def output_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Mean over samples of ``1 - cos(ref, out)`` (flattened outputs)."""
    return float((1 - torch.nn.functional.cosine_similarity(ref, out, dim=1, eps=1e-30)).mean())


def _input_quantizers(gm: nn.Module) -> dict[str, list[ActQuantizer]]:
    """The ActQuantizer modules feeding each unified layer (by the graph), where the model is a graph."""
    feeds: dict[str, list[ActQuantizer]] = {}
    if not isinstance(gm, fx.GraphModule):
        return feeds
    for node in gm.graph.nodes:
        if isinstance(module_of(gm, node), _Unified):
            for a in node.args:
                if isinstance(a, fx.Node) and isinstance(q := module_of(gm, a), ActQuantizer):
                    feeds.setdefault(str(node.target), []).append(q)
    return feeds


@contextlib.contextmanager
def _off(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Turn the quantizers inside ``modules`` off for a while."""
    saved = [(q, q.mode) for m in modules for q in m.modules() if isinstance(q, (ActQuantizer, WeightQuantizer))]
    for q, _ in saved:
        q.mode = "off"
    try:
        yield
    finally:
        for q, mode in saved:
            q.mode = mode


def _recurrent_rows(model: nn.Module, data: list, config: PTQConfig, high: QuantSpec, q: nn.Module,
                    ref: torch.Tensor, calls: list, err_all: float, costs: dict) -> list[LayerSensitivity]:
    """The sensitivity of each integer LSTM / GRU of ``q`` whose 8-bit input grid could be 16 bits (module
    docstring, step 2): the error of the model quantized again with ``LayerRule(name, act=high)``. None unless
    ``high`` is a 16-bit integer spec; a layer whose input grid is another layer's output (which the rule does not
    change) gains nothing and is left out."""
    if not (isinstance(high.format, IntFormat) and high.format.bits == 16):
        return []
    rows = []
    for name, m in q.named_modules():
        if not isinstance(m, QRecurrent) or m.q is None or m.q.input_bits != 8:
            continue
        trial = quantize(model, data, dataclasses.replace(config, rules=(LayerRule(name, act=high), *config.rules)))
        tm = trial.get_submodule(name)
        if not isinstance(tm, QRecurrent) or tm.q is None or tm.q.input_bits != 16:
            continue
        extra = recurrent_input_macs(m.layer, costs.get(name, (0, 8))[0]) * 8 * (16 - 8)
        rows.append(LayerSensitivity(name, err_all, output_error(ref, _outputs(trial, calls)), extra))
    return rows


def auto_mixed(model: nn.Module, calibration_data: Iterable, config: PTQConfig = PTQConfig(), budget: float = 0.05,
               high: QuantSpec | None = None, eval_data: Iterable | None = None, integer: bool = False) -> MixedResult:
    """Quantize ``model`` with ``config``, then keep the layers whose quantization costs the most output
    fidelity at ``high`` activation precision (default unsigned 16-bit), while the extra BOPs stay within
    ``budget`` (a fraction, e.g. 0.05 = 5%) of the uniform model's. ``eval_data`` (default: the calibration
    batches) measures the output error. ``integer``: only promotions :func:`lowbit.integer.to_integer` can run
    (the int8 integer model's one 16-bit activation is a recurrent layer's input), so the result still lowers.
    See the module docstring for the method."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        raise ConfigError(f"auto_mixed budget = {budget!r}; allowed: a fraction >= 0 of the model's BOPs (0.05 = 5%)")
    high = high if high is not None else uint_act(16)
    data = list(calibration_data) if calibration_data is not None else []
    if not data:
        raise DataError("auto_mixed needs calibration batches")
    q = quantize(model, data, config)
    calls = list(model_calls(list(eval_data) if eval_data is not None else data, model))
    ref = _outputs(model.eval(), calls)
    err_all = output_error(ref, _outputs(q, calls))
    feeds = _input_quantizers(q)
    example = first_samples(*calls[0], n=1)
    layers = profile(q, example[0], example_kwargs=example[1])
    costs = {r.name: (r.macs, r.weight_bits) for r in layers}
    total = sum(r.bops for r in layers) or 1
    rows = []
    for name, layer in ([] if integer else unified_modules(q)):
        if layer.weight_quant is None:  # kept in float (the last layer, with weights, counts: its input is a grid)
            continue
        with _off([layer, *feeds.get(name, [])]):
            err = output_error(ref, _outputs(q, calls))
        macs, w_bits = costs.get(name, (0, 8))
        extra = int(macs * w_bits * (high.format.bits - config.act.format.bits))
        rows.append(LayerSensitivity(name, err_all, err, max(extra, 0)))
    rows += _recurrent_rows(model, data, config, high, q, ref, calls, err_all, costs)
    chosen, spent = [], 0
    for s in sorted(rows, key=lambda s: -s.gain):
        if s.gain <= 0 or spent + s.extra_bops > budget * total:
            continue
        chosen.append(s.name)
        spent += s.extra_bops
    while chosen:  # the estimate counts a layer's own input; its output grid also feeds its consumers: measure
        rules = tuple(LayerRule(n, act=high) for n in chosen)
        mixed = quantize(model, data, dataclasses.replace(config, rules=rules + tuple(config.rules)))
        ratio = sum(r.bops for r in profile(mixed, example[0], example_kwargs=example[1])) / total
        if ratio <= 1 + budget + 1e-12:
            err = output_error(ref, _outputs(mixed, calls))
            if err < err_all:  # the leave-one-out gains need not add up: keep the uniform model if nothing is won
                return MixedResult(mixed, rules, tuple(rows), ratio, err_all, err)
            break
        chosen.pop()  # over budget: drop the least useful promotion and measure again
    return MixedResult(q, (), tuple(rows), 1.0, err_all, err_all)


__all__ = ["LayerSensitivity", "MixedResult", "auto_mixed", "output_error"]

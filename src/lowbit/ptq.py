"""Post-training quantization: ``prepare -> calibrate -> convert`` (or one call, :func:`quantize`).

1. :func:`prepare` copies the model, traces it with torch.fx, folds BatchNorm,
   fuses conv/linear [+ add] [+ ReLU/ReLU6/clamp] into unified modules that
   requantize once at their output (method H), and puts observers on every
   quantization point. Models fx cannot trace fall back to an eager module swap
   (each conv/linear gets an input quantizer; BatchNorm is not folded).
2. :func:`calibrate` runs a few batches through it (observers record ranges). A batch is a
   tensor, a dict of keyword inputs, or a tuple: ``(x, y)`` for a one-input model, else one
   positional input per element (:func:`lowbit.calibration.call_inputs`); multi-input models
   run through every step, but :func:`lowbit.integer.to_integer` takes one input only.
3. :func:`convert` freezes scales and zero points: the result is the fake-quant
   simulation of the integer model (per-channel symmetric weights, affine
   unsigned activations; power-of-two scales on request, so that every
   requantization is a shift).
4. :func:`correct_bias` (on by default in :func:`quantize`) removes the mean
   output shift that weight rounding causes (Nagel et al. 2019).

Method A (Lee et al. 2018, channel-wise PTQ with few images) is the
``act=QuantSpec(IntFormat(8, signed=False), observer=ChannelPercentile())`` option and
per-channel weights; method H (Geng et al. 2019) is fusion plus ``pow2_scale=True`` specs.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import fx, nn

from lowbit.errors import ConfigError, DataError, LowbitWarning
from lowbit.formats import Binary, IntFormat, check_bits
from lowbit.granularity import PerChannel
from lowbit.graph.tables import tabulate_elementwise
from lowbit.graph.fx_passes import (
    FusionPlan,
    TraceFailed,
    attach_input_qparams,
    count_fused_quant_points,
    count_primitive_quant_points,
    fold_batchnorm,
    fuse_unified,
    check_binary_outputs,
    insert_input_quantizers,
    mark_binary_inputs,
    shared_original,
    trace,
    unshare_modules,
    widen_last_input,
)
from lowbit.graph.input_check import install as install_input_check
from lowbit.graph.l2norm import swap_l2normalize
from lowbit.graph.layernorm import swap_layernorm
from lowbit.graph.magnitude import swap_magnitude
from lowbit.graph.norm_inputs import per_feature_norm_inputs
from lowbit.graph.recurrent import swap_recurrent
from lowbit.graph.nodes import COMPUTE
from lowbit.nn.quantizers import ActQuantizer
from lowbit.nn.recurrent import RECURRENT, QRecurrent, stays_float, unsupported
from lowbit.nn.unified import UnifiedConv, UnifiedLinear, _Unified, unified_modules
from lowbit.calibration import (
    Arity,
    MeanPatches,
    act_quantizers,
    arity_of,
    calibrate,
    call_inputs,
    check_batch,
    check_call,
    check_reached,
    named_inputs,
    first_samples,
    quantizers_off,
    run_float_inputs,
    split_inputs,
)
from lowbit.prepared import Prepared, QuantOps, attach, record_of
from lowbit.spec import QuantSpec, check_runs
from lowbit.utils.fields import checked_init


def int_weight(bits: int, pow2_scale: bool = False) -> QuantSpec:
    """Symmetric narrow ``bits``-bit integer weights, one scale per output channel (PTQ's default family)."""
    return QuantSpec(IntFormat(bits, signed=True, narrow=True), PerChannel(0), pow2_scale=pow2_scale)


def uint_act(bits: int, pow2_scale: bool = False) -> QuantSpec:
    """Affine unsigned ``bits``-bit activations, one grid per tensor, min/max range."""
    return QuantSpec(IntFormat(bits, signed=False), pow2_scale=pow2_scale)


INT8_WEIGHT = int_weight(8)  # PTQConfig's default weights
UINT8_ACT = uint_act(8)  # and activations


def _int_weight(spec: QuantSpec, bits: int) -> QuantSpec:
    """``spec`` at ``bits`` (first/last layers): an integer spec keeps its options; a ternary or
    power-of-two one becomes symmetric narrow int-``bits`` at the same granularity."""
    f = spec.format
    if isinstance(f, IntFormat):
        return replace(spec, format=replace(f, bits=bits))
    return QuantSpec(IntFormat(bits, signed=True, narrow=True), spec.granularity)


def _act_bits(spec: QuantSpec, bits: int) -> QuantSpec:
    """``spec`` at ``bits`` (the input of the first and last layers); a binary spec becomes affine
    unsigned ``bits``-bit (the network's input and the classifier's input are not signs)."""
    if isinstance(spec.format, Binary):
        return QuantSpec(IntFormat(bits, signed=False))
    return replace(spec, format=replace(spec.format, bits=bits))


_OLD = {k: "bit widths, granularity, observers and pow2 scales are QuantSpec values now: weight=int_weight(4) or QuantSpec(IntFormat(4), PerChannel(0)), act=uint_act(8) or QuantSpec(IntFormat(8, signed=False), observer=Percentile(99.99), pow2_scale=True)"
        for k in ("weight_bits", "act_bits", "weight_granularity", "weight_observer", "act_observer", "act_percentile",
                  "pow2_scales")}


@checked_init(_OLD)
@dataclass(frozen=True)
class LayerRule:
    """Per-layer override for modules whose name matches ``pattern`` (fnmatch, e.g. ``"layers.0.*"``):
    other weight / activation specs, or ``keep_float``."""

    pattern: str
    weight: QuantSpec | None = None
    act: QuantSpec | None = None
    keep_float: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(f"LayerRule.pattern must be a non-empty layer name pattern (a str such as 'fc2' or "
                              f"'layers.0.*'), got {self.pattern!r}")
        if not isinstance(self.keep_float, bool):
            raise ConfigError(f"LayerRule.keep_float must be True or False, got {self.keep_float!r}")
        for name in ("weight", "act"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, QuantSpec):
                raise ConfigError(f"LayerRule.{name} must be a QuantSpec or None, got {v!r}")
        if self.keep_float and (self.weight is not None or self.act is not None):
            raise ConfigError(f"LayerRule({self.pattern!r}) asks for keep_float and for weight/act specs: a layer "
                              "kept in float has none; drop weight/act or keep_float")


@checked_init(_OLD)
@dataclass(frozen=True)
class PTQConfig:
    """Post-training quantization settings (validated on construction).

    ``weight`` and ``act`` are :class:`~lowbit.spec.QuantSpec` values: by default symmetric
    narrow int8 weights per output channel and affine uint8 activations per tensor, min/max
    ranges. Weights may be ``IntFormat(2..16)``, ``Ternary()`` (exact or TWN) or
    ``PowerOfTwo(2..4)`` (all of them integer codes times a per-channel scale, so the integer
    engine runs them); anything else is refused here, naming what would work.
    ``pow2_scale`` on both specs makes every requantization a shift (method H).
    ``rounding="gptq"`` rounds integer weights with GPTQ error compensation on the calibration
    data (:mod:`lowbit.rounding`), which includes bias correction; ``"nearest"`` rounds each
    weight to its nearest grid point, then corrects the bias if ``bias_correction``.
    ``ln_inputs_per_feature`` (default on) gives the output of a layer that only LayerNorms read (a
    transformer's residual sum, whose few outlier features would take a per-tensor grid's range) one scale
    and zero point per feature (:mod:`lowbit.graph.norm_inputs`; Bondarenko et al. 2021).
    """

    weight: QuantSpec = INT8_WEIGHT
    act: QuantSpec = UINT8_ACT
    first_last_bits: int | None = 8
    bias_correction: bool = True
    rounding: Literal["nearest", "gptq"] = "nearest"
    equalize: bool = False
    equalize_alpha: float = 0.5
    rules: tuple[LayerRule, ...] = field(default_factory=tuple)
    ln_inputs_per_feature: bool = True

    def __post_init__(self) -> None:
        check_runs(self.weight, "weight", "PTQ")
        check_runs(self.act, "act", "PTQ")
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, "PTQConfig.first_last_bits", low=2)
        if self.rounding not in ("nearest", "gptq"):
            raise ConfigError(f"PTQConfig.rounding must be 'nearest' or 'gptq', got {self.rounding!r}")
        if isinstance(self.equalize_alpha, bool) or not isinstance(self.equalize_alpha, (int, float)) \
                or not 0.0 <= self.equalize_alpha <= 1.0:
            raise ConfigError(f"PTQConfig.equalize_alpha must be in [0, 1], got {self.equalize_alpha}")
        for name in ("bias_correction", "equalize", "ln_inputs_per_feature"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"PTQConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.rules, (tuple, list)) or not all(isinstance(r, LayerRule) for r in self.rules):
            raise ConfigError("PTQConfig.rules must be a tuple of LayerRule")
        object.__setattr__(self, "rules", tuple(self.rules))  # a list is taken; the config stays hashable
        for r in self.rules:
            if r.weight is not None:
                check_runs(r.weight, "weight", f"PTQ (rule {r.pattern!r})")
            if r.act is not None:
                check_runs(r.act, "act", f"PTQ (rule {r.pattern!r})")
        if self.rounding == "gptq":
            for w in (self.weight, *(r.weight for r in self.rules if r.weight is not None)):
                if not isinstance(w.format, IntFormat):
                    raise ConfigError(f"PTQ rounding='gptq' rounds to an integer grid; {w.format!r} weights "
                                      "take rounding='nearest' (their solver picks the codes)")


def with_pow2_scales(config: PTQConfig) -> PTQConfig:
    """``config`` with every integer scale a power of two (method H: each requantization is a shift)."""
    def p2(spec: QuantSpec | None) -> QuantSpec | None:
        return replace(spec, pow2_scale=True) if spec is not None and isinstance(spec.format, IntFormat) else spec

    rules = tuple(replace(r, weight=p2(r.weight), act=p2(r.act)) for r in config.rules)
    return replace(config, weight=p2(config.weight), act=p2(config.act), rules=rules)


def check_model(model: object, who: str, single_input: bool = False) -> None:
    """Refuse what lowbit cannot quantize before touching it: a non-module, a TorchScript module
    (its Python code is gone: neither torch.fx nor a module swap can see its layers), and, with
    ``single_input`` (QAT, which feeds one tensor per batch), a model whose ``forward`` needs more
    than one input. PTQ takes multi-input models (see :func:`lowbit.calibration.call_inputs`)."""
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise ConfigError(f"{who} got a TorchScript module ({type(model).__name__}, the output of torch.jit.script "
                          "or torch.jit.trace): TorchScript is not accepted; pass the eager nn.Module it was made from")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{who} needs a torch.nn.Module, got {type(model).__name__}")
    if not single_input:
        return
    arity = arity_of(model)
    names = [n for n in arity.positional if n in arity.required]
    if arity.known and not arity.var_positional and len(names) > 1:
        raise ConfigError(f"{type(model).__name__}.forward takes {len(names)} inputs ({', '.join(names)}); {who} feeds "
                          "one tensor per batch: multi-input models are not supported yet there (post-training "
                          "quantization, lowbit.ptq.quantize, takes them; or wrap the model in a module whose forward "
                          "takes one tensor)")


def _check_inputs(model: nn.Module, example_inputs: tuple, example_kwargs: dict, arity: Arity) -> None:
    """The example inputs are tensors that fit ``forward``'s signature (``arity``) and run through ``model``."""
    if not isinstance(example_inputs, tuple) or not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise DataError("example_inputs must be a tuple of tensors, e.g. (torch.randn(1, 1, 28, 28),)")
    if not isinstance(example_kwargs, dict) or not all(isinstance(t, torch.Tensor) for t in example_kwargs.values()):
        raise DataError("example_kwargs must be a dict of tensors (keyword inputs), e.g. {'mask': torch.ones(1, 8)}")
    if not example_inputs and not example_kwargs:
        raise DataError("example_inputs hold no tensor: pass one sample of each input, e.g. (torch.randn(1, 8),)")
    check_call(example_inputs, example_kwargs, arity, "example_inputs")
    for t in (*example_inputs, *example_kwargs.values()):
        if t.numel() == 0:
            raise DataError(f"example_inputs hold an empty tensor of shape {tuple(t.shape)}: pass at least one sample")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError("example_inputs hold NaN or inf values")
    try:
        with torch.no_grad():
            model(*example_inputs, **example_kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure means the inputs do not fit
        shapes = [tuple(t.shape) for t in example_inputs]
        if example_kwargs:
            shapes = ", ".join([*map(str, shapes), *(f"{k}={tuple(t.shape)}" for k, t in example_kwargs.items())])
        raise DataError(f"example_inputs of shapes {shapes} do not fit {type(model).__name__}: "
                        f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _matches(name: str, pattern: str) -> bool:
    """A layer's name, or for a copy of a repeated call (:func:`lowbit.graph.fx_passes.unshare_modules`) its
    original's, matches the rule ``pattern``."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(shared_original(name), pattern)


class _Specs:
    """Maps a layer name to its (weight, output) specs: config, first/last layer, rules."""

    def __init__(self, config: PTQConfig, order: list[str]) -> None:
        self.config = config
        self.first = order[0] if order else None
        self.last = order[-1] if order else None

    def _rule(self, name: str) -> LayerRule | None:
        for rule in self.config.rules:
            if _matches(name, rule.pattern):
                return rule
        return None

    def _specs(self, name: str) -> tuple[QuantSpec, QuantSpec] | None:
        """(weight, output) specs of layer ``name``: the config's, first/last layer at
        ``first_last_bits``, then a matching rule's; None for a layer kept float."""
        c, rule = self.config, self._rule(name)
        if rule is not None and rule.keep_float:
            return None
        w, a = c.weight, c.act
        if c.first_last_bits is not None and name in (self.first, self.last):
            w = _int_weight(w, c.first_last_bits)
            a = _act_bits(a, c.first_last_bits) if name == self.last else a
        if rule is not None:
            w, a = rule.weight or w, rule.act or a
        return w, a

    def layer(self, name: str) -> tuple[QuantSpec | None, QuantSpec | None]:
        specs = self._specs(name)
        return (None, None) if specs is None else specs

    def fate(self, name: str) -> str:
        """Why layer ``name`` does not take the config's own specs (for warnings)."""
        rule = self._rule(name)
        if rule is not None and rule.keep_float:
            return f"{name!r} kept in float by LayerRule({rule.pattern!r})"
        if rule is not None and (rule.weight is not None or rule.act is not None):
            return f"{name!r} set by LayerRule({rule.pattern!r})"
        role = "first and last" if self.first == self.last else ("first" if name == self.first else "last")
        return f"{name!r} ({role} layer) stays at first_last_bits={self.config.first_last_bits}"

    def input_for(self, consumer: str) -> QuantSpec:
        """The spec of ``consumer``'s input quantizer: its act spec; the first layer's at ``first_last_bits``,
        unless a rule for it asks for more bits (``LayerRule('lstm', act=uint_act(16))``: a 16-bit input grid)."""
        specs, rule = self._specs(consumer), self._rule(consumer)
        a = specs[1] if specs else self.config.act
        if consumer == self.first and self.config.first_last_bits is not None:
            wider = rule is not None and rule.act is not None and rule.act.format.bits > self.config.first_last_bits
            a = a if wider else _act_bits(a, self.config.first_last_bits)
        return a


def unused_requests(config: PTQConfig, order: list[str]) -> list[str]:
    """What ``config`` asks for that no layer of ``order`` (the conv/linear names) gets: rules that match
    no layer (or only layers an earlier rule already took), bit widths that every layer overrides."""
    specs, notes = _Specs(config, order), []
    listed = ", ".join(order[:12]) + (", ..." if len(order) > 12 else "")
    for rule in config.rules:
        if not any(_matches(n, rule.pattern) for n in order):
            notes.append(f"LayerRule pattern {rule.pattern!r} matches no Conv/Linear layer, so it was ignored "
                         f"(the layers are: {listed or 'none'})")
        elif not any(specs._rule(n) is rule for n in order):
            notes.append(f"LayerRule pattern {rule.pattern!r} was ignored: every layer it matches is taken by an "
                         "earlier rule (the first matching rule wins)")
    layers = {n: specs._specs(n) for n in order}
    took = [n for n in order if layers[n] is not None]
    w_used = {layers[n][0] for n in took}
    a_used = {layers[n][1] for n in took} | {specs.input_for(n) for n in took}
    for what, asked, used in (("weight", config.weight, w_used), ("act", config.act, a_used)):
        others = [n for n in order if layers[n] is None or (what == "weight" and layers[n][0] != asked)]
        if order and asked not in used:
            named = (others or order)[:6]
            edge = any(specs._rule(n) is None and n in (specs.first, specs.last) for n in named)
            hint = ("; pass first_last_bits=None (CLI: --first-last-bits 0) to quantize the first and last layers "
                    "with it too" if edge and config.first_last_bits is not None else "")
            notes.append(f"{what}={asked.label()} was asked but no layer gets it: "
                         f"{'; '.join(specs.fate(n) for n in named)}{hint}")
    return notes


def _warn_unused(config: PTQConfig, order: list[str]) -> None:
    for note in unused_requests(config, order):
        warnings.warn(f"lowbit: {note}", LowbitWarning, stacklevel=3)


def _compute_order(gm: fx.GraphModule) -> list[str]:
    """The quantized layers (conv, linear, LSTM, GRU) in call order."""
    return [str(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (*COMPUTE, *RECURRENT))]


def _eager_swap(model: nn.Module, specs: _Specs, plan: FusionPlan) -> nn.Module:
    """Fallback for untraceable models: each conv/linear gets an input quantizer and weight quantizer, each LSTM/GRU
    becomes a :class:`QRecurrent` with its own input quantizer."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, RECURRENT) and specs.layer(full) != (None, None) and not stays_float(child, full, unsupported(child)):
                setattr(module, child_name, QRecurrent(child, full, ActQuantizer(specs.input_for(full))))
            elif isinstance(child, COMPUTE):
                w_spec, _ = specs.layer(full)
                if w_spec is None:
                    continue
                cls = UnifiedLinear if isinstance(child, nn.Linear) else UnifiedConv
                setattr(module, child_name, nn.Sequential(ActQuantizer(specs.input_for(full)),
                                                         cls(child, nn.Identity(), False, w_spec, None)))
                plan.unified[full] = [full]
            elif not isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and not list(child.children()):
                plan.float_ops.append(full)
    return model


def prepare(model: nn.Module, config: PTQConfig = PTQConfig(), example_inputs: tuple | None = None,
            fold_bn: bool = True, example_kwargs: dict | None = None) -> nn.Module:
    """A quantization-ready copy of ``model`` with observers on every quantization point.

    ``example_inputs``: a tuple of one or more tensors, ``forward``'s positional inputs (one sample
    each is enough); ``example_kwargs``: a dict of tensors, its keyword inputs. A ``forward``
    parameter with a default that neither gives (``mask=None``) is fixed at that default: the
    prepared model does not take it. Only the first positional input is checked against the shape
    it was prepared with (:mod:`lowbit.graph.input_check`).

    ``fold_bn=False`` keeps each BatchNorm that follows a conv/linear inside its unified module,
    unfolded (for QAT that trains BatchNorm statistics); such a model runs fake-quant only until
    the BatchNorms are folded (:func:`lowbit.qat.fold_trained_bn`)."""
    if not isinstance(config, PTQConfig):
        raise ConfigError(f"config must be a PTQConfig, got {type(config).__name__}")
    check_model(model, "lowbit.ptq.prepare")
    if example_inputs is None and example_kwargs is None:
        raise DataError("prepare needs example_inputs, e.g. (torch.randn(1, 1, 28, 28),)")
    example_inputs = () if example_inputs is None else example_inputs
    example_kwargs = {} if example_kwargs is None else example_kwargs
    m = copy.deepcopy(model).eval()  # the caller's model is never touched, not even its BatchNorm statistics
    arity = arity_of(m)
    _check_inputs(m, example_inputs, example_kwargs, arity)
    plan = FusionPlan()
    try:
        gm = trace(m, arity.unfilled(example_inputs, example_kwargs))
    except TraceFailed as fx_exc:
        from lowbit.graph.export_lift import ExportFailed, export_graph

        try:
            gm = export_graph(m, example_inputs, example_kwargs)
            warnings.warn(f"lowbit: {fx_exc}; captured with torch.export instead", stacklevel=2)
        except ExportFailed as exc:
            gm = None
            warnings.warn(f"lowbit: {fx_exc}; {exc}; falling back to eager module swap (BatchNorm not "
                          "folded, one quantizer per layer input)", stacklevel=2)
    if gm is None:
        order = [n for n, mod in m.named_modules() if isinstance(mod, (*COMPUTE, *RECURRENT))]
        _no_layer(model, order)
        _all_kept_float(config, order)
        _warn_unused(config, order)
        out = _eager_swap(m, _Specs(config, order), plan)
        _guard_first_input(out, example_inputs, example_kwargs, order[0], arity.label(0) if arity.positional else None)
        return attach(out.eval(), Prepared(config, plan, traced=False))
    shared = unshare_modules(gm)
    if shared:
        warnings.warn(f"lowbit: {len(shared)} repeated call(s) of a layer ({', '.join(sorted(set(shared.values()))[:6])}) "
                      "each get their own copy (same weights, own quantizers; LayerRule patterns match the copies "
                      "by the original name)", stacklevel=2)
    order = _compute_order(gm)
    _no_layer(model, order)
    _all_kept_float(config, order)
    _warn_unused(config, order)
    specs = _Specs(config, order)
    unfused = count_primitive_quant_points(gm, example_inputs, example_kwargs)
    if fold_bn:
        fold_batchnorm(gm, plan)
    fuse_unified(gm, specs.layer, plan)
    if config.ln_inputs_per_feature:  # a residual sum only LayerNorms read: one scale per feature (its outliers)
        per_feature_norm_inputs(gm)
    recurrent = swap_recurrent(gm, lambda name: specs.layer(name) == (None, None))  # LSTM/GRU: int8 weights per row
    swap_l2normalize(gm)  # x / x.norm(dim=d, keepdim=True), F.normalize: the integer L2 normalisation
    swap_magnitude(gm)  # sqrt(a ** 2 + b ** 2), torch.hypot: the integer magnitude (an STFT's)
    swap_layernorm(gm)  # a LayerNorm between a quantized producer and a quantizer: the integer LayerNorm
    insert_input_quantizers(gm, specs.input_for, plan)
    if config.first_last_bits is not None and specs.last is not None and specs.layer(specs.last)[0] is not None:
        widen_last_input(gm, specs.last, specs.input_for(specs.last))
    check_binary_outputs(gm)
    mark_binary_inputs(gm)
    if not plan.unified and not recurrent:
        _no_layer(model, [])
    if plan.float_ops:
        warnings.warn(f"lowbit: {len(plan.float_ops)} operation(s) stay in float: "
                      f"{', '.join(plan.float_ops[:10])}", stacklevel=2)
    with quantizers_off(gm):  # counting runs the graph: the observers must not see the example inputs
        fused = count_fused_quant_points(gm, example_inputs, example_kwargs)
    placeholder = next((str(n.target) for n in gm.graph.nodes if n.op == "placeholder"), None)
    _guard_first_input(gm, example_inputs, example_kwargs, order[0], placeholder)
    # the modules inserted above start in training mode; a converted layer in training mode runs float fake-quant
    # instead of the integer model's exact arithmetic, so the whole prepared model follows the copy's eval mode
    return attach(gm.eval(), Prepared(config, plan, traced=True, quant_ops=QuantOps(unfused, fused)))


def _guard_first_input(model: nn.Module, example_inputs: tuple, example_kwargs: dict, first_layer: str,
                       name: str | None) -> None:
    """Install the input shape check (:mod:`lowbit.graph.input_check`) on the first positional input ``name``
    (given by position, or by name in ``example_kwargs``); the other inputs of a multi-input model are not checked."""
    example = example_inputs[0] if example_inputs else example_kwargs.get(name) if name is not None else None
    if isinstance(example, torch.Tensor):
        install_input_check(model, example, first_layer, name or "x")


def _empty_batch(item: object, arity: Arity) -> bool:
    """A batch whose every input is an empty tensor (a batch that cannot be read is not empty: calibrate names it)."""
    try:
        args, kwargs = split_inputs(item, arity)
    except DataError:
        return False
    inputs = [*args, *kwargs.values()]
    return bool(inputs) and all(isinstance(t, torch.Tensor) and t.numel() == 0 for t in inputs)


def _no_layer(model: nn.Module, order: list[str]) -> None:
    """Raise when there is nothing to quantize, naming the layers lowbit does not quantize."""
    if order:
        return
    leaves = [m for m in model.modules() if not list(m.children())]
    if any(isinstance(m, COMPUTE) for m in leaves):  # there are layers, but the graph reached none of them
        raise ConfigError(f"lowbit found no Conv or Linear layer it can quantize in {type(model).__name__}: it holds "
                          f"{', '.join(sorted({type(m).__name__ for m in leaves if isinstance(m, COMPUTE)}))} layers, "
                          "but its forward does not call them as modules lowbit can fuse (e.g. their weights are used "
                          "through torch.nn.functional); call the layers themselves in forward")
    kinds = sorted({type(m).__name__ for m in leaves} - {"Identity"})
    held = f" (it holds {', '.join(kinds[:8])}, which lowbit does not quantize yet)" if kinds else ""
    raise ConfigError(f"lowbit found no Conv or Linear layer it can quantize in {type(model).__name__}{held}: "
                      "lowbit quantizes nn.Conv1d, nn.Conv2d, nn.Linear, nn.LSTM and nn.GRU")


def _all_kept_float(config: PTQConfig, order: list[str]) -> None:
    """Refuse rules that keep every Conv/Linear layer in float: there would be nothing to quantize."""
    specs = _Specs(config, order)
    if order and all(specs.layer(n) == (None, None) for n in order):
        rules = sorted({repr(specs._rule(n).pattern) for n in order if specs._rule(n) is not None})
        listed = ", ".join(order[:8]) + (", ..." if len(order) > 8 else "")
        raise ConfigError(f"LayerRule keep_float pattern {', '.join(rules)} (CLI: --keep-float) keeps every "
                          f"Conv/Linear layer in float ({listed}): nothing is left to quantize; narrow the pattern "
                          "to the layers that must stay float")


def convert(model: nn.Module, tables: bool = True) -> nn.Module:
    """Freeze every quantizer's scale and zero point; the model becomes the fake-quant simulation.

    In a traced model each unified module also learns its input grids, so its
    forward runs the integer model's exact arithmetic (:mod:`lowbit.nn.exact`), and with ``tables``
    each elementwise float op on a quantized tensor of at most 8 bits (sigmoid, tanh, GELU, ..., a
    BatchNorm after an activation) becomes the lookup table the integer model runs
    (:mod:`lowbit.graph.tables`; no gradient flows through a table, so training keeps ``tables=False``).
    """
    check_reached(model, "calibration (call calibrate before convert)")
    for q in act_quantizers(model):
        q.freeze()
    for m in model.modules():
        if isinstance(m, _Unified) and m.weight_quant is not None:
            m.weight_quant.freeze(m.weight)
        if isinstance(m, QRecurrent) and m.input_quant is not None and not m.float_only:  # (a traced model's get their grids below)
            m.freeze(m.input_quant.qparams())
    if isinstance(model, fx.GraphModule):
        attach_input_qparams(model)
        if tables:
            tabulate_elementwise(model)
    return model


def _weight_layers(model: nn.Module) -> list[tuple[str, _Unified]]:
    return [(n, m) for n, m in unified_modules(model) if m.weight_quant is not None]


@torch.no_grad()
def correct_bias(model: nn.Module, data: Iterable | None = None, means: MeanPatches | None = None) -> None:
    """Empirical bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019, sec. 4.2).

    Rounding the weights changes each output channel's mean by
    ``E[(Q(W) - W) x]``; with inputs of nonzero mean (after ReLU) and BatchNorm
    folded in, the shift is systematic and large for depthwise layers. This
    measures it on calibration data (float activations) and subtracts it from
    the bias: ``b <- b - (Q(W) - W) E[x]``, with ``E[x]`` the layer's mean input
    patch (the conv is linear in its input, so this is ``E[conv(x, Q(W) - W)]``).
    Call it after :func:`convert`, with ``data`` (one float pass over it) or with the
    ``means`` a :class:`MeanPatches` collected while calibrating.
    """
    layers = [(n, m) for n, m in _weight_layers(model) if m.weight_quant.mode == "quantize"]
    if not layers:
        raise ConfigError("correct_bias needs a converted model (call convert first)")
    if means is None:
        if data is None:
            raise DataError("correct_bias needs calibration data (or the mean patches of a calibration pass)")
        means = MeanPatches()
        with means.watch(layers):
            run_float_inputs(model, [], data, lambda *_: None)
    for name, m in layers:
        mean = means.mean(name)
        if mean is None:
            raise DataError(f"no calibration batches reached layer {name} for bias correction")
        shift = m.mean_shift(mean)
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros_like(shift))
        m.bias -= shift


@torch.no_grad()
def equalize_channels(model: nn.Module, data: Iterable, alpha: float = 0.5) -> int:
    """Channel equalization of a prepared model's activations on calibration ``data`` (call it before
    :func:`calibrate`); returns the number of layer pairs and LayerNorm groups (SmoothQuant's migration into
    the linear layers a LayerNorm alone feeds) rescaled. See :mod:`lowbit.graph.equalize`.

    A model prepared by eager module swap (not traced) has no graph to follow: it is left as it is,
    with a warning."""
    from lowbit.graph.equalize import equalize, smooth_norms

    record = record_of(model)
    if record is None or not record.traced:
        if not any(isinstance(m, _Unified) for m in model.modules()):
            raise ConfigError("equalize_channels needs a prepared model: call lowbit.ptq.prepare first")
        warnings.warn("lowbit: channel equalization needs a traced graph; this model was prepared by "
                      "module swap and is left unequalized", stacklevel=2)
        return 0
    data = list(data)
    pairs = equalize(model, data, alpha) + smooth_norms(model, data, alpha)
    if not pairs:
        warnings.warn("lowbit: channel equalization was asked but found no layer pair to rescale (a conv/linear "
                      "with ReLU, clamp(0, hi) or no activation, per-channel weights, feeding only one conv/linear, or a "
                      "LayerNorm feeding only linear layers); "
                      "the model is left unequalized", LowbitWarning, stacklevel=2)
    return len(pairs)


def quantize(model: nn.Module, calibration_data: Iterable, config: PTQConfig = PTQConfig(),
             example_inputs: tuple | None = None, progress: bool = False,
             example_kwargs: dict | None = None) -> nn.Module:
    """``prepare`` + ``calibrate`` + ``convert`` in one call.

    Each batch of ``calibration_data`` is a tensor (the one input), a dict of tensors (keyword
    inputs, by ``forward``'s parameter names), or a tuple/list: when ``forward`` takes exactly one
    positional argument it is an ``(x, y, ...)`` pair of a labelled loader and only ``x`` is used;
    otherwise each element is a positional input, in order (``(ids, mask)`` for
    ``forward(ids, mask=None)``). Labels are never guessed from a tuple's position otherwise; a key
    ``forward`` does not accept, or more elements than it takes, is a DataError
    (:func:`lowbit.calibration.call_inputs`). ``example_inputs`` / ``example_kwargs`` default to
    the first batch's inputs, one sample each."""
    check_model(model, "lowbit.ptq.quantize")
    if calibration_data is None or isinstance(calibration_data, (str, bytes)) \
            or not isinstance(calibration_data, Iterable):
        raise DataError(f"calibration_data must be an iterable of batches (a list of tensors, or a DataLoader of "
                        f"(x, y) pairs), got {type(calibration_data).__name__}: pass e.g. [x] for one batch "
                        "tensor x")
    if isinstance(calibration_data, torch.Tensor):
        raise DataError("calibration_data must be an iterable of batches, e.g. [x] for one batch tensor x")
    data = list(calibration_data)
    arity = arity_of(model)
    if not data or all(_empty_batch(item, arity) for item in data):
        raise DataError("no calibration batches: pass at least one batch of representative inputs")
    args, kwargs = call_inputs(data[0], arity, 0)
    check_batch(named_inputs(args, kwargs, arity), 0, None)  # prepare needs batch 0; calibrate checks the rest
    if example_inputs is None and example_kwargs is None:
        example_inputs, example_kwargs = first_samples(args, kwargs)
    prepared = prepare(model, config, example_inputs, example_kwargs=example_kwargs)
    if config.equalize:
        equalize_channels(prepared, data, config.equalize_alpha)
    means = MeanPatches()
    watch = config.bias_correction and config.rounding == "nearest"
    with means.watch(_weight_layers(prepared) if watch else []):  # the calibration pass runs float activations
        calibrate(prepared, data, progress=progress)
    convert(prepared)
    if config.rounding == "gptq":  # GPTQ corrects the bias of the layers it rounds itself
        from lowbit.rounding import gptq_round

        gptq_round(prepared, data)
    elif config.bias_correction and _weight_layers(prepared):  # (a model of LSTM/GRU layers alone has none)
        correct_bias(prepared, means=means)
    return prepared



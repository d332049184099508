"""Calibration: run batches through a prepared model so its observers see data.

A layer of its own below :mod:`lowbit.ptq`, so that the passes that need calibration data
(channel equalization in :mod:`lowbit.graph.equalize`, GPTQ in :mod:`lowbit.rounding`, bias
correction) import it without importing the PTQ workflow that calls them.

A calibration batch becomes the model's call ``model(*args, **kwargs)`` by one rule,
:func:`call_inputs`, read against the model's ``forward`` signature (:func:`arity_of`, once per pass):

* a tensor is the one positional input;
* a dict of ``str -> tensor`` gives keyword inputs (a key ``forward`` does not accept is a DataError);
* a tuple or list: when ``forward`` takes exactly one positional argument (it could not take a
  second), it is an ``(x, y, ...)`` item of a labelled loader: item 0 is the input, the rest is
  ignored; otherwise every element is a positional input, in order (more elements than ``forward``
  takes positionally is a DataError). Labels are never guessed from a tuple's position otherwise.
  When the signature cannot be read, every element is an input.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.errors import ConfigError, DataError, LowbitWarning
from lowbit.nn.quantizers import ActQuantizer, WeightQuantizer
from lowbit.nn.unified import _Unified
from lowbit.utils.progress import Progress


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def act_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


# ---------------------------------------------------------------- from a batch to the model's call


@dataclass(frozen=True)
class Arity:
    """What ``forward`` accepts, read once from its signature by :func:`arity_of` (not per batch).

    ``positional``: the parameters a positional argument fills, in order; ``keywords``: the names a
    keyword argument may use; ``required``: the parameters without a default; ``var_positional`` /
    ``var_keyword``: ``*args`` / ``**kwargs``; ``defaults``: ``(name, default)`` of the others;
    ``known``: False when the signature could not be read (then nothing is checked).
    """

    owner: str  # "Model.forward", for messages
    positional: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    var_positional: bool = False
    var_keyword: bool = False
    defaults: tuple[tuple[str, object], ...] = field(default=(), compare=False, repr=False)
    known: bool = True

    @property
    def one_positional(self) -> bool:
        """``forward`` takes exactly one positional argument: a tuple batch can only be ``(x, y, ...)``."""
        return self.known and not self.var_positional and len(self.positional) == 1

    def label(self, i: int) -> str:
        """The name of positional input ``i`` (``input i`` past the named parameters)."""
        return self.positional[i] if i < len(self.positional) else f"input {i}"

    def unfilled(self, args: tuple, kwargs: Mapping[str, object]) -> dict[str, object]:
        """``{name: default}`` of the parameters with a default that neither ``args`` nor ``kwargs`` fill."""
        filled = set(self.positional[:len(args)]) | set(kwargs)
        return {n: d for n, d in self.defaults if n not in filled}


def arity_of(model: nn.Module) -> Arity:
    """The :class:`Arity` of ``model.forward`` (``known=False`` if its signature cannot be read)."""
    owner = f"{type(model).__name__}.forward"
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return Arity(owner, known=False)
    p = inspect.Parameter
    named = [q for q in params if q.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return Arity(owner,
                 positional=tuple(q.name for q in named if q.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)),
                 keywords=tuple(q.name for q in named if q.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)),
                 required=tuple(q.name for q in named if q.default is q.empty),
                 var_positional=any(q.kind is p.VAR_POSITIONAL for q in params),
                 var_keyword=any(q.kind is p.VAR_KEYWORD for q in params),
                 defaults=tuple((q.name, q.default) for q in named if q.default is not q.empty))


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def check_call(args: tuple, kwargs: Mapping, arity: Arity, where: str) -> None:
    """``model(*args, **kwargs)`` fits ``arity``: not too many positional inputs, no unknown key, every
    required parameter given; otherwise a DataError that starts with ``where`` (e.g. ``calibration batch 3``)."""
    if not arity.known:
        return
    if not arity.var_positional and len(args) > len(arity.positional):
        raise DataError(f"{where}: {len(args)} positional inputs, but {arity.owner} takes at most "
                        f"{len(arity.positional)} ({_names(arity.positional)}): pass one tensor per input of forward, "
                        "or a dict of named inputs")
    for key in kwargs:
        if not isinstance(key, str) or (key not in arity.keywords and not arity.var_keyword):
            raise DataError(f"{where}: key {key!r} is not an input of {arity.owner}, which accepts "
                            f"{_names(arity.keywords)}: rename the key or drop it")
    given = set(arity.positional[:len(args)])
    twice = [k for k in kwargs if k in given]
    if twice:
        raise DataError(f"{where}: {_names(twice)} given both by position and by key: give each input once")
    missing = [n for n in arity.required if n not in given and n not in kwargs]
    if missing:
        raise DataError(f"{where}: no value for {_names(missing)}, which {arity.owner}({_names(arity.positional)}) needs: "
                        "pass each batch as a tuple of tensors in forward's order, or a dict of named inputs")


def call_inputs(item: object, arity: Arity, i: int = 0) -> tuple[tuple, dict]:
    """Calibration batch ``i`` as ``forward``'s arguments ``(args, kwargs)`` (the rule of the module doc).

    A tensor is one positional input; a dict of ``str -> tensor`` keyword inputs; a tuple or list is
    ``(x, y, ...)`` (item 0 the input) when ``forward`` takes exactly one positional argument, else
    one positional input per element. Raises a DataError naming the batch when it cannot fit."""
    where = f"calibration batch {i}"
    args, kwargs = split_inputs(item, arity, where)
    if i == 0 and isinstance(item, (tuple, list)):
        _warn_optional_by_position(args, arity)
    check_call(args, kwargs, arity, where)
    return args, kwargs


def split_inputs(item: object, arity: Arity, where: str = "calibration batch") -> tuple[tuple, dict]:
    """The rule alone, without checks or warnings: ``item`` as ``(args, kwargs)``."""
    if isinstance(item, torch.Tensor):
        return (item,), {}
    if isinstance(item, Mapping):
        return (), dict(item)
    if isinstance(item, (tuple, list)):
        return (tuple(item[:1]) if arity.one_positional else tuple(item)), {}
    raise DataError(f"{where} is a {type(item).__name__}, not a batch: pass a tensor, a tuple of tensors "
                    "(positional inputs) or a dict of tensors (keyword inputs)")


def _warn_optional_by_position(args: tuple, arity: Arity) -> None:
    """A tuple that reaches past ``forward``'s required inputs fills optional ones by position: say so, since a
    labelled loader's ``(x, y)`` would pass its labels as, say, a mask (the rule never drops or guesses)."""
    optional = [n for n in arity.positional[:len(args)] if n not in arity.required]
    if arity.known and optional:
        warnings.warn(f"lowbit: calibration tuples of {len(args)} tensors fill {arity.owner}'s optional "
                      f"parameter(s) {', '.join(optional)} by position; if the batches are (inputs, labels) pairs, "
                      f"pass the inputs alone, or dicts of keyword inputs", LowbitWarning, stacklevel=4)


def model_calls(data: Iterable, model: nn.Module) -> Iterator[tuple[tuple, dict]]:
    """``(args, kwargs)`` of each batch of ``data`` for ``model`` (its signature read once)."""
    arity = arity_of(model)
    for i, item in enumerate(data):
        yield call_inputs(item, arity, i)


def named_inputs(args: tuple, kwargs: Mapping, arity: Arity) -> dict[str, object]:
    """Every input of a call by name: the positional ones by ``forward``'s parameter names, then the keywords."""
    return {**{arity.label(i): a for i, a in enumerate(args)}, **kwargs}


def shapes_of(inputs: Mapping[str, object]) -> dict[str, tuple]:
    """``{name: shape}`` of the tensor inputs."""
    return {k: tuple(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def first_samples(args: tuple, kwargs: Mapping, n: int = 2) -> tuple[tuple, dict]:
    """The call's first ``n`` samples (every tensor input cut to ``[:n]``): prepare's default example inputs.
    Two, not one: torch.export may specialize a batch of one sample (then the captured graph's batch is fixed)."""
    def cut(v: object) -> object:
        return v[:n] if isinstance(v, torch.Tensor) and v.ndim > 0 else v

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def calibrate(model: nn.Module, data: Iterable, progress: bool = True) -> int:
    """Run calibration batches through a prepared model; returns the count.

    Each batch is a tensor (the one input), a dict of tensors (keyword inputs, by ``forward``'s
    parameter names), or a tuple/list: an ``(x, y, ...)`` pair of a labelled loader when ``forward``
    takes exactly one positional argument (only ``x`` is used), else one positional input per
    element. Every tensor must be non-empty and finite, and every batch must give the same inputs,
    each of the same rank as in batch 0. See :func:`call_inputs`."""
    quantizers = act_quantizers(model)
    if not quantizers:
        raise ConfigError("the model has no quantizers: call lowbit.ptq.prepare first")
    for q in quantizers:
        q.mode = "observe"
    arity = arity_of(model)
    n, first = 0, None
    with torch.no_grad():
        for i, item in enumerate(Progress(data, desc="calibrate", enabled=progress)):
            args, kwargs = call_inputs(item, arity, i)
            inputs = named_inputs(args, kwargs, arity)
            check_batch(inputs, i, first)
            first = first if first is not None else shapes_of(inputs)
            run_batch(model, args, kwargs, i, first, arity)
            n += 1
    if n == 0:
        raise DataError("no calibration batches: pass at least one batch of representative inputs")
    check_reached(model, "calibration")
    return n


def _where(i: int, name: str, inputs: Mapping) -> str:
    """``calibration batch i`` (one input), ``calibration batch i, input 'z',`` (several)."""
    return f"calibration batch {i}" if len(inputs) == 1 else f"calibration batch {i}, input {name!r},"


def check_batch(inputs: Mapping[str, object], i: int, first: Mapping[str, tuple] | None) -> None:
    """Every input of batch ``i`` (:func:`named_inputs`) is a non-empty finite tensor, and the batch gives
    the inputs of batch 0 (``first``: their shapes), each of the same rank."""
    if not inputs:
        raise DataError(f"calibration batch {i} is empty or not a tensor")
    for name, x in inputs.items():
        where = _where(i, name, inputs)
        if not isinstance(x, torch.Tensor) or x.numel() == 0:
            raise DataError(f"{where} is empty or not a tensor")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise DataError(f"{where} holds NaN or inf values: clean the data first")
    if first is None:
        return
    if set(inputs) != set(first):
        raise DataError(f"calibration batch {i} gives the inputs ({_names(inputs)}) but batch 0 gave "
                        f"({_names(first)}): every batch must give the same inputs")
    for name, x in inputs.items():
        if x.ndim != len(first[name]):
            raise DataError(f"{_where(i, name, inputs)} has shape {tuple(x.shape)} but batch 0 had {first[name]}: "
                            "every batch must hold samples of the same shape")


def run_batch(model: nn.Module, args: tuple, kwargs: Mapping, i: int, first: Mapping[str, tuple],
              arity: Arity) -> object:
    """``model(*args, **kwargs)`` for calibration batch ``i``; a batch the model cannot take becomes a
    DataError naming it (and batch 0's shapes, ``first``, where they differ)."""
    try:
        return model(*args, **kwargs)
    except (RuntimeError, ValueError, IndexError) as exc:
        if isinstance(exc, (DataError, ConfigError)):  # a layer's own refusal names the layer and the fix
            raise
        shapes = shapes_of(named_inputs(args, kwargs, arity))
        if len(shapes) == 1 and len(first) == 1:
            (shape,), (was,) = shapes.values(), first.values()
            other = f" (batch 0 had shape {was})" if shape[1:] != was[1:] else ""
            what = f"of shape {shape}"
        else:
            other = f" (batch 0 had shapes {_shapes(first)})" if any(
                s[1:] != first.get(k, s)[1:] for k, s in shapes.items()) else ""
            what = f"of shapes {_shapes(shapes)}"
        raise DataError(f"calibration batch {i} {what} does not fit the model{other}: "
                        f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _shapes(shapes: Mapping[str, tuple]) -> str:
    return ", ".join(f"{k}: {s}" for k, s in shapes.items())


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
    ``visit(name, module, input)`` on the input of each of ``layers``; returns the batch count.
    Each batch becomes the model's call by :func:`call_inputs` (every input of a multi-input model)."""
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: visit(n, mod, args[0])) for n, m in layers]
    count = 0
    try:
        with quantizers_off(model):
            for args, kwargs in model_calls(data, model):
                model(*args, **kwargs)
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


__all__ = ["Arity", "MeanPatches", "act_quantizers", "arity_of", "calibrate", "call_inputs", "check_batch",
           "check_call", "check_reached", "model_calls", "named_inputs", "first_samples", "quantizers_off", "run_batch",
           "run_float_inputs", "shapes_of", "split_inputs"]

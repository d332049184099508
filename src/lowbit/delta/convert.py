"""Convert a trained model's recurrent layers to delta layers, without retraining.

Neil et al. (ICML 2017, sec. 5.2) show that an existing network runs as a delta network
after the fact: the weights stay, only the thresholds are chosen (a sweep of ``θ`` trades
accuracy against operations). :func:`to_delta` returns a *copy* of the model in which every
``nn.GRU``/``nn.LSTM`` is replaced by :class:`~lowbit.delta.cells.DeltaGRUDropIn` /
:class:`~lowbit.delta.cells.DeltaLSTMDropIn`: same parameters (same state-dict keys), same
call ``y, h_n = gru(x, h0)`` / ``y, (h_n, c_n) = lstm(x, (h0, c0))``, so the model's own
forward runs unchanged. Read the sparsity with :func:`lowbit.delta.counters.record_counts`.
The thresholds are attributes (``layer.theta_x``), not part of the state dict, which stays
loadable into the original model: to reload a converted model, load the weights into the
original and call :func:`to_delta` again.

Not converted (a :class:`ConfigError`, or listed in ``skipped`` with ``skip_unsupported=True``):

* ``nn.GRUCell``/``nn.LSTMCell``: a cell is called once per step with ``(x, h)`` only, so the
  delta memories would have to live hidden in the module between calls. Use ``nn.GRU`` on the
  whole sequence, or :class:`~lowbit.delta.DeltaGRU` with an explicit state step by step.
* ``nn.RNN`` (no delta version here), bidirectional layers, LSTM projections, and subclasses
  of ``nn.GRU``/``nn.LSTM`` (their forward may differ from the one being replaced).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from lowbit.delta.cells import DeltaGRUDropIn, DeltaLSTMDropIn, _DeltaRNNBase, check_threshold
from lowbit.errors import ConfigError

_SWAP: dict[type, type[_DeltaRNNBase]] = {nn.GRU: DeltaGRUDropIn, nn.LSTM: DeltaLSTMDropIn}
_RECURRENT = (nn.RNNBase, nn.RNNCellBase)


@dataclass(frozen=True)
class SwappedLayer:
    """One recurrent layer replaced by a delta layer (``name`` as in ``named_modules``; ``""`` = the model)."""

    name: str
    kind: str  # "GRU" or "LSTM"
    input_size: int
    hidden_size: int
    num_layers: int
    batch_first: bool


@dataclass(frozen=True)
class SkippedLayer:
    """A recurrent layer left dense, and why."""

    name: str
    type_name: str
    reason: str


class DeltaConversion(NamedTuple):
    """What :func:`to_delta` returns: ``model, swapped, skipped = to_delta(...)``."""

    model: nn.Module
    swapped: tuple[SwappedLayer, ...]
    skipped: tuple[SkippedLayer, ...]


def _why_not(m: nn.Module) -> str | None:
    """``None`` when ``m`` converts, else the reason and the fix."""
    t = type(m)
    if isinstance(m, nn.RNNCellBase):
        return (f"{t.__name__} is called once per step with (x, h) only, so its delta memories would be hidden "
                "state between calls; run nn.GRU/nn.LSTM on the whole sequence, or lowbit.delta.DeltaGRU/"
                "DeltaLSTM step by step with an explicit state")
    if t not in _SWAP:
        if isinstance(m, (nn.GRU, nn.LSTM)):
            return f"{t.__name__} subclasses nn.{t.__mro__[1].__name__} and may have its own forward; " \
                   "use the plain torch class"
        return f"{t.__name__} has no delta version (GRU and LSTM only)"
    if m.bidirectional:
        return "bidirectional: a delta network runs forward in time only"
    if getattr(m, "proj_size", 0):
        return f"proj_size={m.proj_size}: LSTM projections are not supported"
    return None


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def to_delta(model: nn.Module, theta_x: float = 0.0, theta_h: float = 0.0,
             skip_unsupported: bool = False) -> DeltaConversion:
    """A copy of ``model`` with its ``nn.GRU``/``nn.LSTM`` layers swapped for delta layers.

    ``theta_x`` thresholds the changes of each swapped layer's input, ``theta_h`` those of its
    hidden units (see :mod:`lowbit.delta.cells`); both ``>= 0``, ``0`` reproduces the model.
    The caller's model is not modified. Raises :class:`ConfigError` when nothing converts, or
    when a recurrent layer cannot be converted and ``skip_unsupported`` is false.
    """
    theta_x, theta_h = check_threshold("theta_x", theta_x), check_threshold("theta_h", theta_h)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"to_delta takes an nn.Module, got {type(model).__name__}")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _RECURRENT)]
    skipped = [SkippedLayer(n, type(m).__name__, why) for n, m in found if (why := _why_not(m)) is not None]
    if skipped and not skip_unsupported:
        s = skipped[0]
        raise ConfigError(f"cannot convert layer '{s.name or '(the model)'}' ({s.type_name}): {s.reason}. "
                          "Pass skip_unsupported=True to leave such layers dense")
    todo = [n for n, m in found if _why_not(m) is None]
    if not todo:
        already = any(isinstance(m, _DeltaRNNBase) for m in model.modules())
        hint = ("it already holds delta layers: set their theta_x/theta_h attributes instead" if already else
                "to_delta swaps nn.GRU and nn.LSTM layers; pass a model that contains one")
        raise ConfigError(f"{type(model).__name__} has no recurrent layer to convert: {hint}")
    try:
        out = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - any failure to copy is reported the same way
        raise ConfigError(f"cannot copy {type(model).__name__} to convert it ({exc}); to_delta never modifies "
                          "the caller's model, so the model must support copy.deepcopy") from exc
    swapped = []
    for name in todo:
        old = out.get_submodule(name) if name else out
        new = _SWAP[type(old)].from_torch(old, theta_x, theta_h)
        if name:
            _set_child(out, name, new)
        else:
            out = new
        swapped.append(SwappedLayer(name, new.kind, old.input_size, old.hidden_size, old.num_layers,
                                    old.batch_first))
    return DeltaConversion(out, tuple(swapped), tuple(skipped))

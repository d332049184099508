"""Dynamic quantization: int8 weights, activations quantized per row at run time.

``quantize_dynamic(model)`` returns a copy of ``model`` whose ``nn.Linear``, ``nn.LSTM``,
``nn.GRU``, ``nn.LSTMCell`` and ``nn.GRUCell`` layers run on int8 weights (one scale per output channel) and inputs quantized per row
when they arrive (:mod:`lowbit.functional.dynamic`): the mode for models whose activations have
outliers (transformers) or whose compute is recurrent, as PyTorch's
``torch.ao.quantization.quantize_dynamic`` (per-tensor activations there). Everything else stays
float. :func:`lowbit.cost.profile.profile` counts these layers' MACs at ``bits x bits`` with one
dequantizing multiply per output (their outputs are float); :func:`lowbit.integer.to_integer` does not
take them.
"""

from __future__ import annotations

import copy

from torch import nn

from lowbit.dynamic.cells import DynamicGRUCell, DynamicLSTMCell
from lowbit.dynamic.linear import DynamicLinear, DynamicWeight
from lowbit.dynamic.recurrent import DynamicGRU, DynamicLSTM
from lowbit.errors import ConfigError

_SWAPS = {nn.Linear: DynamicLinear, nn.LSTM: DynamicLSTM, nn.GRU: DynamicGRU, nn.LSTMCell: DynamicLSTMCell,
          nn.GRUCell: DynamicGRUCell}
DEFAULT_LAYERS = tuple(_SWAPS)
DYNAMIC = tuple(_SWAPS.values())  # the modules it puts in


def quantize_dynamic(model: nn.Module, layers: tuple[type, ...] = DEFAULT_LAYERS, bits: int = 8,
                     skip: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``model`` with every layer of the types ``layers`` (of ``nn.Linear``, ``nn.LSTM``,
    ``nn.GRU``, ``nn.LSTMCell``, ``nn.GRUCell``) made dynamic at ``bits`` bits, except those whose name is in ``skip``."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"quantize_dynamic needs a torch.nn.Module, got {type(model).__name__}")
    unknown = [t for t in layers if t not in _SWAPS]
    if unknown:
        raise ConfigError(f"quantize_dynamic layers {[t.__name__ for t in unknown]}: allowed "
                          f"{', '.join(t.__name__ for t in _SWAPS)}")
    if type(model) in layers:  # the model is one layer
        return _SWAPS[type(model)](model, bits).eval()
    out = copy.deepcopy(model).eval()
    swapped = 0
    for name, module in list(out.named_modules()):
        kind = type(module)
        if kind in layers and name not in skip and not isinstance(module, DYNAMIC):
            _set(out, name, _SWAPS[kind](module, bits))
            swapped += 1
    if swapped == 0:
        raise ConfigError(f"quantize_dynamic found no {'/'.join(t.__name__ for t in layers)} layer in "
                          f"{type(model).__name__} (exact types: subclasses are left alone)")
    return out


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


__all__ = ["DEFAULT_LAYERS", "DYNAMIC", "DynamicGRU", "DynamicGRUCell", "DynamicLSTM", "DynamicLSTMCell", "DynamicLinear",
           "DynamicWeight", "quantize_dynamic"]

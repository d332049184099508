"""The one record :func:`lowbit.ptq.prepare` and :func:`lowbit.qat.prepare_qat` attach to the model they return.

Everything later steps need to know about how a model was prepared (the config, what the graph
passes did, whether torch.fx traced it, the quantization op counts, the QAT settings) is one typed
value, read back with :func:`record_of`; a model lowbit did not prepare has none, and the steps that
need one say so instead of guessing defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from lowbit.errors import ConfigError

if TYPE_CHECKING:  # the configs import this module's users, not the other way round
    from lowbit.graph.fx_passes import FusionPlan
    from lowbit.ptq import PTQConfig
    from lowbit.qat import QATConfig

ATTRIBUTE = "lowbit_prepared"


@dataclass(frozen=True)
class QuantOps:
    """Quantize/dequantize operations per inference and the elements they touch: ``(ops, elements)``
    before fusion (one pair per primitive op) and after it (one per unified module input)."""

    unfused: tuple[int, int]
    fused: tuple[int, int]


@dataclass(frozen=True)
class Prepared:
    """How a model was prepared: ``traced`` (a torch.fx graph, which :func:`lowbit.integer.to_integer`
    and channel equalization need) or eager module swap; ``qat`` is set by :func:`lowbit.qat.prepare_qat`."""

    config: PTQConfig
    plan: FusionPlan
    traced: bool
    quant_ops: QuantOps | None = None
    qat: QATConfig | None = None


def attach(model: nn.Module, record: Prepared) -> nn.Module:
    """Give ``model`` its record (replacing an earlier one); returns ``model``. A GraphModule keeps it in its
    ``meta`` dict too, which ``copy.deepcopy`` preserves (it drops other attributes)."""
    setattr(model, ATTRIBUTE, record)
    if isinstance(getattr(model, "meta", None), dict):
        model.meta[ATTRIBUTE] = record
    return model


def record_of(model: object) -> Prepared | None:
    """The record of a model lowbit prepared, or None."""
    record = getattr(model, ATTRIBUTE, None)
    if record is None and isinstance(getattr(model, "meta", None), dict):
        record = model.meta.get(ATTRIBUTE)
    return record if isinstance(record, Prepared) else None


def require_record(model: object, who: str, needs: str = "lowbit.ptq.prepare or lowbit.quantize") -> Prepared:
    """The record, or a ConfigError naming ``who`` needed it and which call makes one."""
    record = record_of(model)
    if record is None:
        raise ConfigError(f"{who} needs a model returned by {needs}; {type(model).__name__} was not prepared by lowbit")
    return record


__all__ = ["ATTRIBUTE", "Prepared", "QuantOps", "attach", "record_of", "require_record"]

"""Delta networks (Neil et al., ICML 2017): recurrent layers that compute only with changed values.

``DeltaGRU``/``DeltaLSTM`` (explicit state), their ``nn.GRU``/``nn.LSTM``-call drop-ins,
:func:`to_delta` to convert a trained model, and the event counters.
"""

from lowbit.delta.cells import DeltaGRU, DeltaGRUDropIn, DeltaLSTM, DeltaLSTMDropIn
from lowbit.delta.convert import DeltaConversion, SkippedLayer, SwappedLayer, to_delta
from lowbit.delta.counters import (DeltaCost, DeltaRecorder, StepOccupancy, cost_of, record_counts, state_costs,
                                   total_cost)
from lowbit.delta.state import DeltaCounts, DeltaLayerState, DeltaState

__all__ = ["DeltaConversion", "DeltaCost", "DeltaCounts", "DeltaGRU", "DeltaGRUDropIn", "DeltaLSTM", "DeltaLSTMDropIn",
           "DeltaLayerState", "DeltaRecorder", "DeltaState", "SkippedLayer", "StepOccupancy", "SwappedLayer", "cost_of", "record_counts",
           "state_costs", "to_delta", "total_cost"]

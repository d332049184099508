"""Delta networks (Neil et al., ICML 2017): recurrent layers that compute only with changed values.

``DeltaGRU``/``DeltaLSTM`` (explicit state), their ``nn.GRU``/``nn.LSTM``-call drop-ins,
:func:`to_delta` to convert a trained model, and the event counters.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> from torch import nn
>>> from lowbit.delta import DeltaGRU, record_counts, to_delta
>>> gru = nn.GRU(4, 8, batch_first=True)
>>> x = torch.cumsum(0.1 * torch.randn(2, 50, 4), dim=1)   # a slowly changing signal
>>> y, state = DeltaGRU.from_torch(gru)(x)                # thresholds 0: the same layer
>>> torch.allclose(y, gru(x)[0], atol=1e-5)
True
>>> model, swapped, skipped = to_delta(nn.Sequential(gru), theta_x=0.1, theta_h=0.1)
>>> [(s.name, s.kind) for s in swapped]
[('0', 'GRU')]
>>> with torch.no_grad(), record_counts(model) as rec:
...     y, h_n = model[0](x)                                 # nn.GRU's call
>>> rec.total().mac_reduction > 1.5
True
"""

from lowbit.delta.cells import DeltaGRU, DeltaGRUDropIn, DeltaLSTM, DeltaLSTMDropIn
from lowbit.delta.convert import DeltaConversion, SkippedLayer, SwappedLayer, to_delta
from lowbit.delta.counters import (DeltaCost, DeltaRecorder, StepOccupancy, cost_of, record_counts, state_costs,
                                   total_cost)
from lowbit.delta.state import DeltaCounts, DeltaLayerState, DeltaState
from lowbit.delta.sweep import SweepPoint, operating_point, sweep

__all__ = ["DeltaConversion", "DeltaCost", "DeltaCounts", "DeltaGRU", "DeltaGRUDropIn", "DeltaLSTM", "DeltaLSTMDropIn",
           "DeltaLayerState", "DeltaRecorder", "DeltaState", "SkippedLayer", "StepOccupancy", "SwappedLayer",
           "SweepPoint", "cost_of", "operating_point", "record_counts", "state_costs", "sweep", "to_delta",
           "total_cost"]

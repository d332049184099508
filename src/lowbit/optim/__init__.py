"""Optimizers for parameters held in low-precision storage (paper B: SGD with Kahan summation).

::

    from lowbit.optim import FixedPoint, Kahan, KahanSGD, round_to_storage
    round_to_storage(model, FixedPoint(12, 10))           # parameters become storage values
    opt = KahanSGD(model.parameters(), lr=0.05, storage=FixedPoint(12, 10))
    lowbit.train(model, data, cfg, optimizer=Kahan(lr=0.05, storage="bf16"))   # or through the loop

Parameters stay float32 tensors that hold only storage values (simulated storage), so models run
unchanged. :class:`LowPrecisionSGD` is the uncompensated baseline (nearest or stochastic rounding).
:func:`min_bits_last_fc` / :func:`last_fc_bound` give paper B's bit-width lower bound of the last FC layer.
"""

from lowbit.optim.bounds import LastFCBound, fixed_point_logits, last_fc_bound, min_bits_last_fc
from lowbit.optim.gains import STORAGE_SGD, PowerOfTwoGain, gain_param_groups, storage_sgd, with_weight_gains
from lowbit.optim.kahan import Kahan, KahanSGD, LowPrecision, LowPrecisionSGD
from lowbit.optim.storage import (
    FixedPoint,
    Float16Storage,
    Storage,
    as_storage,
    is_representable,
    round_storage,
    round_to_storage,
)

__all__ = ["STORAGE_SGD", "PowerOfTwoGain", "gain_param_groups", "storage_sgd", "with_weight_gains", "FixedPoint", "Float16Storage", "Kahan", "KahanSGD", "LastFCBound", "LowPrecision", "LowPrecisionSGD",
           "Storage", "as_storage", "fixed_point_logits", "is_representable", "last_fc_bound", "min_bits_last_fc", "round_storage",
           "round_to_storage"]

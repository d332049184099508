"""Simulation layers: quantizer slots and the fused "unified modules" (method H).

A unified module is conv/linear with BatchNorm folded in, an optional residual
input, an activation, and a single requantization at its output. Quantizers
have three modes: ``observe`` (calibration), ``quantize`` and ``off``.
"""

from lowbit.nn.quantizers import ActQuantizer, TensorSpec, WeightQuantizer, make_observer
from lowbit.nn.unified import QAvgPool, UnifiedConv, UnifiedLinear, unified_modules

__all__ = ["ActQuantizer", "QAvgPool", "TensorSpec", "UnifiedConv", "UnifiedLinear", "WeightQuantizer",
           "make_observer", "unified_modules"]

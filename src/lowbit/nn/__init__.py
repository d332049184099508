"""Simulation layers: quantizer slots and the fused "unified modules" (method H).

A unified module is conv/linear with BatchNorm folded in, an optional residual
input, an activation, and a single requantization at its output. Quantizers
have three modes: ``observe`` (calibration), ``quantize`` and ``off``.
"""

from lowbit.nn.quantizers import ActQuantizer, WeightQuantizer
from lowbit.nn.unified import QAvgPool, UnifiedConv, UnifiedLinear, unified_modules

__all__ = ["ActQuantizer", "QAvgPool", "UnifiedConv", "UnifiedLinear", "WeightQuantizer", "unified_modules"]

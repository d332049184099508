"""Per-feature grids for the tensors only LayerNorms read: a transformer's residual sums.

A BERT-style encoder adds each sublayer's output to its residual stream and normalises the sum
(post-LN). That sum carries a few feature dimensions whose values are 10-100x the others' (Bondarenko,
Nagel, Blankevoort 2021, "Understanding and overcoming the challenges of efficient transformer
quantization"): one 8-bit grid per tensor sized for them leaves the other features a handful of levels.
Their fix (per-embedding-group quantization) gives the sum's grid several scales along the feature axis;
here it is the limit of one scale and zero point per feature, ``PerChannel(-1)``:

    q_c = clamp(round(y_c / s_c) + z_c, 0, 255),   y_c ~ s_c (q_c - z_c),

with ``(s_c, z_c)`` from the calibration range of feature ``c`` alone.

It costs nothing where the sum is made: a linear layer's int32 accumulator is already requantized with a
multiplier per output channel (its weights' scale per channel), so a scale per output feature only
changes those multipliers. The LayerNorm that reads the sum dequantizes it feature by feature. On
all-MiniLM-L6-v2 (``benchmarks/bench_real_models.py``) the per-tensor grids of the 12 residual sums cost
most of static W8A8's error: embedding cosine 0.912 with them, 0.987 with per-feature grids.

Only the output grid of a unified conv/linear layer whose every reader is a LayerNorm changes: a grid a
linear layer reads must stay per tensor (its integer GEMM takes one input scale).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.formats import IntFormat
from lowbit.granularity import PerChannel, PerTensor
from lowbit.graph.nodes import module_of
from lowbit.nn.quantizers import ActQuantizer
from lowbit.nn.unified import _Unified

_LAYER_NORM_FUNCTIONS = {F.layer_norm, torch.layer_norm, torch.ops.aten.layer_norm.default,
                         torch.ops.aten.native_layer_norm.default}


def is_layer_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``node`` is a LayerNorm whose normalised input is its first argument (module, function or aten op)."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), nn.LayerNorm)
    return node.op == "call_function" and node.target in _LAYER_NORM_FUNCTIONS


def _shape_query(node: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()``: reads no value of ``x``."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.op == "call_function" and node.target is getattr and node.args[1:2] == ("shape",)


def per_feature_norm_inputs(gm: fx.GraphModule) -> list[str]:
    """Give one scale per feature (last dimension) to the output grid of each unified layer that only
    LayerNorms read; returns those layers' names. The observer and format stay the layer's own."""
    changed = []
    for node in gm.graph.nodes:
        layer = module_of(gm, node)
        if not isinstance(layer, _Unified) or layer.output_quant is None or not node.users:
            continue
        spec = layer.output_quant.spec
        if not isinstance(spec.format, IntFormat) or not isinstance(spec.granularity, PerTensor):
            continue
        readers = [u for u in node.users if not _shape_query(u)]
        if readers and all(is_layer_norm(gm, u) and u.args[0] is node for u in readers):
            layer.output_quant = ActQuantizer(replace(spec, granularity=PerChannel(-1)))
            changed.append(str(node.target))
    return changed


def per_feature(layer: nn.Module) -> bool:
    """True when ``layer``'s output grid has one scale per feature (set by :func:`per_feature_norm_inputs`)."""
    q = getattr(layer, "output_quant", None)
    return isinstance(q, ActQuantizer) and isinstance(q.spec.granularity, PerChannel)


__all__ = ["is_layer_norm", "per_feature", "per_feature_norm_inputs"]

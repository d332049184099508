"""Per-layer cost of a model: parameters, widths, MACs, bit-operations, memory, requantizations.

For a conv or linear layer with ``K`` multiply-accumulates per output element
(``C_in/groups * kh * kw``, or ``in_features``) and ``E`` output elements per sample:

    MACs = E * K
    BOPs = MACs * b_w * b_a          (bit-operations, Baskin et al. / the "BOPs" of the LSQ and
                                      BitSplit literature: one b_w x b_a multiply costs b_w * b_a)
    weight memory = params * b_w / 8 bytes;  activation memory = E * b_out / 8 bytes

Float layers count as 32 x 32 bits. A converted unified module (``lowbit.ptq``)
reports its weight format, its input grid and its output grid, and one
requantization per output element: ``"multiplier"`` (integer multiply + shift),
``"shift"`` (power-of-two scales, method H) or ``"dequantize"`` (the network
output). Average pools count their window additions as accumulations with a
1-bit "weight". ``events`` is the fraction of nonzero inputs (what a delta or
spiking layer would process) measured on the example inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lowbit.errors import DataError
from lowbit.formats import Binary


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    params: int
    weight_bits: float
    act_bits: float
    out_bits: float
    macs: int
    bops: int
    weight_bytes: float
    act_bytes: float
    requant_ops: int
    requant: str
    events: float

    def to_dict(self) -> dict:
        return asdict(self)


def _unified_widths(m) -> tuple[float, float, float, str]:
    wq = m.weight_quant
    w_bits = wq.spec.code_bits if wq is not None and wq.mode == "quantize" else 32
    a_bits = m.input_qparams.fmt.bits if m.input_qparams is not None else 32
    if m.output_quant is None or m.output_quant.mode != "quantize":
        return w_bits, a_bits, 32, ("dequantize" if wq is not None and a_bits < 32 else "none")
    if isinstance(m.output_quant.spec.format, Binary):  # sign: a per-channel threshold, no multiplier
        return w_bits, a_bits, 1, "threshold"
    pow2 = m.output_quant.spec.pow2_scale and wq is not None and wq.spec.pow2_scale
    return w_bits, a_bits, m.output_quant.spec.format.bits, "shift" if pow2 else "multiplier"


def _terms_per_output(m: nn.Module) -> int:
    w = m.weight
    return w[0].numel() if w.ndim > 2 else w.shape[1]


def _layer(name: str, m: nn.Module, x: torch.Tensor, y: torch.Tensor,
           widths: tuple[float, float] | None = None) -> LayerCost | None:
    from lowbit.nn.unified import QAvgPool, _Unified

    per_sample = y.numel() // max(y.shape[0], 1)
    events = float((x != 0).float().mean()) if x.numel() else 0.0
    if isinstance(m, _Unified):
        w_bits, a_bits, o_bits, rq = _unified_widths(m)
    elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        w_bits, a_bits, o_bits, rq = 32, 32, 32, "none"
    else:
        w_bits = a_bits = o_bits = 32
        rq = "none"
    if widths is not None and hasattr(m, "weight"):  # a user's statement: binary, ternary, pow2 ... layers
        w_bits, a_bits = widths
        o_bits = a_bits
    if isinstance(m, (QAvgPool, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        window = max(x.numel() // max(y.numel(), 1), 1)
        bits = 8 if isinstance(m, QAvgPool) else 32
        return LayerCost(name, "avgpool", 0, 1, bits, bits, per_sample * window, per_sample * window * bits, 0,
                         per_sample * bits / 8, per_sample if isinstance(m, QAvgPool) else 0,
                         "multiplier" if isinstance(m, QAvgPool) else "none", events)
    if not isinstance(m, (_Unified, nn.Conv1d, nn.Conv2d, nn.Linear)):
        return None
    params = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
    macs = per_sample * _terms_per_output(m)
    kind = "linear" if m.weight.ndim == 2 else "conv"
    bias_bits = 32
    w_bytes = (m.weight.numel() * w_bits + (m.bias.numel() * bias_bits if m.bias is not None else 0)) / 8
    return LayerCost(name, kind, params, w_bits, a_bits, o_bits, macs, int(macs * w_bits * a_bits), w_bytes,
                     per_sample * o_bits / 8, per_sample if rq != "none" else 0, rq, events)


def profile(model: nn.Module, example_inputs: tuple,
            widths: dict[str, tuple[float, float]] | None = None) -> list[LayerCost]:
    """Run ``model`` once on ``example_inputs`` and return the cost of every conv/linear/pool layer.

    ``widths`` states ``(weight bits, activation bits)`` for layers by name, for formats the model
    does not carry itself (binary 1, ternary 2, a power-of-two code's bits ...).
    """
    widths = widths or {}
    from lowbit.nn.unified import QAvgPool, _Unified

    if not isinstance(example_inputs, tuple) or not example_inputs:
        raise DataError("profile needs example_inputs as a tuple of tensors, e.g. (torch.randn(1, 1, 28, 28),)")
    kinds = (_Unified, QAvgPool, nn.Conv1d, nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    inside_unified = {id(c) for m in model.modules() if isinstance(m, (_Unified, QAvgPool)) for c in m.modules()
                      if c is not m}
    rows: list[LayerCost] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, kinds) and id(m) not in inside_unified:
            def hook(mod, args, out, name=name):
                row = _layer(name, mod, args[0], out, widths.get(name))
                if row is not None:
                    rows.append(row)
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return rows


@dataclass(frozen=True)
class Totals:
    params: int
    macs: int
    bops: int
    weight_bytes: float
    act_bytes: float
    requant_ops: int

    @property
    def mean_weight_bits(self) -> float:
        return 8 * self.weight_bytes / self.params if self.params else math.nan


def totals(rows: list[LayerCost]) -> Totals:
    return Totals(sum(r.params for r in rows), sum(r.macs for r in rows), sum(r.bops for r in rows),
                  sum(r.weight_bytes for r in rows), sum(r.act_bytes for r in rows), sum(r.requant_ops for r in rows))


def render(rows: list[LayerCost]) -> str:
    """A plain-text table of the profile."""
    head = f"{'layer':<22}{'kind':<8}{'W/A/O bits':>12}{'MACs':>12}{'BOPs':>15}{'weights B':>11}{'requant':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        bits = f"{r.weight_bits:g}/{r.act_bits:g}/{r.out_bits:g}"
        lines.append(f"{r.name[:21]:<22}{r.kind:<8}{bits:>12}{r.macs:>12,}{r.bops:>15,}{r.weight_bytes:>11,.0f}"
                     f"{r.requant:>12}")
    t = totals(rows)
    lines += ["-" * len(head), f"{'total':<22}{'':<8}{'':>12}{t.macs:>12,}{t.bops:>15,}{t.weight_bytes:>11,.0f}"]
    return "\n".join(lines)


__all__ = ["LayerCost", "Totals", "profile", "render", "totals"]

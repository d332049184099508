"""Where does a quantized model lose accuracy? Per-layer SQNR, sensitivity and weight similarity.

For each unified module of a converted model:

* ``weight_cosine``: cosine similarity of float and quantized weights (FAQ's diagnostic);
* ``weight_sqnr_db``: ``10 log10(||w||^2 / ||w - Q(w)||^2)``;
* ``output_sqnr_db``: the same for the layer's output on a batch, with the whole
  network quantized against the whole network in float (error accumulated up
  to this layer);
* ``sensitivity``: accuracy with only this layer quantized (its weights and its
  output) and everything else float; the drop from float ranks the layers that
  deserve more bits (peers: AIMET's QuantAnalyzer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lowbit.nn.unified import _Unified, unified_modules
from lowbit.ptq import quantizers_off


@dataclass(frozen=True)
class LayerDiagnostics:
    name: str
    kind: str
    weight_bits: int | None
    act_bits: int | None
    params: int
    weight_cosine: float
    weight_sqnr_db: float
    output_sqnr_db: float
    sensitivity: float | None = None  # accuracy with only this layer quantized


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """``10 log10(||ref||^2 / ||ref - approx||^2)`` (inf when equal)."""
    noise = float((ref.double() - approx.double()).square().sum())
    signal = float(ref.double().square().sum())
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-300) / noise)


def _outputs(model: nn.Module, x: torch.Tensor, layers: list[tuple[str, _Unified]]) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach())) for n, m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_diagnostics(model: nn.Module, batch: torch.Tensor,
                      evaluate: Callable[[nn.Module], float] | None = None) -> list[LayerDiagnostics]:
    """Diagnostics for every unified module of a converted model (sensitivity if ``evaluate`` is given)."""
    layers = unified_modules(model)
    quantized = _outputs(model, batch, layers)
    with quantizers_off(model):
        floats = _outputs(model, batch, layers)
    rows = []
    for name, m in layers:
        w = m.weight.detach()
        wq = m.weight_quant(w) if m.weight_quant is not None else w
        cos = float(torch.nn.functional.cosine_similarity(w.reshape(1, -1).double(), wq.reshape(1, -1).double()))
        sens = None
        if evaluate is not None:
            with quantizers_off(model, keep=[m]):
                sens = evaluate(model)
        rows.append(LayerDiagnostics(
            name=name, kind=type(m).__name__.replace("Unified", ""),
            weight_bits=m.weight_quant.spec.code_bits if m.weight_quant is not None else None,
            act_bits=m.output_quant.spec.format.bits if m.output_quant is not None else None,
            params=w.numel(), weight_cosine=cos, weight_sqnr_db=sqnr_db(w, wq),
            output_sqnr_db=sqnr_db(floats[name], quantized[name]), sensitivity=sens,
        ))
    return rows


def render(rows: list[LayerDiagnostics], float_accuracy: float | None = None) -> str:
    """A text table; sensitivity shown as the drop from ``float_accuracy`` when given."""
    head = f"{'layer':24} {'kind':7} {'W':>3} {'A':>3} {'params':>8} {'cos(w)':>8} {'SQNR w':>8} {'SQNR out':>9} {'sensitivity':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        sens = "" if r.sensitivity is None else (
            f"{100 * (r.sensitivity - float_accuracy):+.2f} pt" if float_accuracy is not None else f"{100 * r.sensitivity:.2f}%")
        lines.append(f"{r.name[:24]:24} {r.kind:7} {r.weight_bits or '-':>3} {r.act_bits or '-':>3} {r.params:>8} "
                     f"{r.weight_cosine:8.5f} {r.weight_sqnr_db:7.1f}dB {r.output_sqnr_db:8.1f}dB {sens:>12}")
    return "\n".join(lines)


def to_dicts(rows: list[LayerDiagnostics]) -> list[dict]:
    """JSON-ready rows (for the cost report)."""
    return [asdict(r) for r in rows]

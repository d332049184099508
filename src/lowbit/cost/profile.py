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

Every MAC is counted (:mod:`lowbit.cost.macs`): convolutions of any dimension and transposed ones,
recurrent layers and cells (``kind`` ``"rnn"``), ``nn.MultiheadAttention`` (``"attention"``) and the
matrix products a ``forward`` writes as functions (``"matmul"``, ``"attention"``, ``"conv"``: one row
per enclosing module and ATen op, named ``module:op``, their MACs divided by the first input's batch
size). What lowbit does not quantize counts as 32 x 32 bits, so :func:`quantized_share` tells how
much of the compute a quantized model really runs in low precision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from lowbit.cost.macs import FunctionalMacs, attention_macs, cell_macs, rnn_macs
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


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_RECURRENT = (nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention)


def _terms_per_output(m: nn.Module) -> int:
    w = m.weight
    return w[0].numel() if w.ndim > 2 else w.shape[1]


def _per_sample(t: torch.Tensor) -> int:
    return t.numel() // max(t.shape[0], 1) if t.ndim > 1 else t.numel()


def _recurrent(name: str, m: nn.Module, args: tuple, kwargs: dict, out, widths) -> LayerCost:
    """A recurrent layer, a cell or an attention module: float unless ``widths`` says otherwise."""
    x = _first_input(args, kwargs)
    if isinstance(m, nn.MultiheadAttention):
        key = args[1] if len(args) > 1 else kwargs.get("key", x)
        macs, kind = attention_macs(m, x, key), "attention"
    else:
        macs, kind = (rnn_macs(m, x) if isinstance(m, nn.RNNBase) else cell_macs(m)), "rnn"
    w_bits, a_bits = widths if widths is not None else (32, 32)
    params = sum(p.numel() for p in m.parameters())
    y = out[0] if isinstance(out, tuple) else out
    data = x.data if isinstance(x, torch.nn.utils.rnn.PackedSequence) else x
    events = float((data != 0).float().mean()) if data.numel() else 0.0
    return LayerCost(name, kind, params, w_bits, a_bits, a_bits, macs, int(macs * w_bits * a_bits), params * w_bits / 8,
                     _out_per_sample(m, x, y) * a_bits / 8, 0, "none", events)


def _qrecurrent(name: str, mod, args: tuple, kwargs: dict, out, widths) -> LayerCost:
    """A :class:`~lowbit.nn.recurrent.QRecurrent`: float until frozen, then int8 weights times int8 codes (8 x 8
    BOPs per MAC), but for layer 0's input projection on a 16-bit input grid (int16 codes: 8 x 16)."""
    if widths is not None or mod.q is None:
        return _recurrent(name, mod.layer, args, kwargs, out, widths)
    bits = mod.input_qparams.fmt.bits
    row = _recurrent(name, mod.layer, args, kwargs, out, (8, min(bits, 8)))
    if mod.q.input_bits == 8:
        return row
    extra = recurrent_input_macs(mod.layer, row.macs) * 8 * (mod.q.input_bits - 8)
    return replace(row, act_bits=bits, bops=row.bops + extra)


def recurrent_input_macs(m: nn.Module, macs: int) -> int:
    """The share of an ``nn.LSTM`` / ``nn.GRU`` / cell's ``macs`` (unidirectional, no projection) spent on layer 0's input
    projection: ``T G H I`` of ``T G H sum_k (I_k + H)``."""
    rows = (4 if isinstance(m, (nn.LSTM, nn.LSTMCell)) else 3) * m.hidden_size  # G H gate rows
    layers = getattr(m, "num_layers", 1)  # (a cell: one layer, one step)
    per_step = rows * (m.input_size + m.hidden_size + (layers - 1) * 2 * m.hidden_size)
    return macs // per_step * rows * m.input_size


def _first_input(args: tuple, kwargs: dict):
    return args[0] if args else kwargs.get("input", kwargs.get("query"))


def _dynamic(name: str, m: nn.Module, x: torch.Tensor, out) -> LayerCost:
    """A layer of :mod:`lowbit.dynamic`: ``bits x bits`` MACs (weights per channel, inputs per row at run time)
    and a float32 output, one dequantizing multiply per output element."""
    from lowbit.dynamic import DynamicGRUCell, DynamicLinear, DynamicLSTMCell

    b = m.bits
    y = out[0] if isinstance(out, tuple) else out
    if isinstance(m, DynamicLinear):
        samples = x.shape[0] if x.ndim > 1 else 1
        macs, kind = y.numel() // samples * m.in_features, "linear"
        params = m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
    elif isinstance(m, (DynamicLSTMCell, DynamicGRUCell)):  # one step: G H (I + H) MACs a sample
        samples = x.shape[0] if x.ndim > 1 else 1
        macs, kind = m.w_ih.codes.numel() + m.w_hh.codes.numel(), "rnn"
        params = macs + (2 * m.b_ih.numel() if m.bias else 0)
    else:
        samples = 1 if x.ndim == 2 else x.shape[0 if m.batch_first else 1]
        macs, kind = rnn_macs(m, x), "rnn"
        params = sum(c.w_ih.codes.numel() + c.w_hh.codes.numel() + 2 * c.b_ih.numel() for layer in m.cells
                     for c in layer)
    outs = y.numel() // samples
    events = float((x != 0).float().mean()) if x.numel() else 0.0
    return LayerCost(name, kind, params, b, b, 32, macs, macs * b * b, params * b / 8, outs * 4, outs, "dequantize",
                     events)


def _out_per_sample(m: nn.Module, x, y) -> int:
    """Output elements per sample; an unbatched call (RNN input (T, I), cell input (I,)) is one sample."""
    if isinstance(y, torch.nn.utils.rnn.PackedSequence):
        return y.data.numel() // max(int(y.batch_sizes[0]), 1)
    unbatched = {nn.RNNBase: 2, nn.RNNCellBase: 1, nn.MultiheadAttention: 2}
    if any(isinstance(m, k) and x.ndim == n for k, n in unbatched.items()):
        return y.numel()
    return _per_sample(y)


def _layer(name: str, m: nn.Module, x: torch.Tensor, y: torch.Tensor,
           widths: tuple[float, float] | None = None) -> LayerCost | None:
    from lowbit.nn.unified import QAvgPool, _Unified

    per_sample = y.numel() // max(y.shape[0], 1)
    events = float((x != 0).float().mean()) if x.numel() else 0.0
    if isinstance(m, _Unified):
        w_bits, a_bits, o_bits, rq = _unified_widths(m)
    elif isinstance(m, (*_CONVS, nn.Linear)):
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
    if not isinstance(m, (_Unified, *_CONVS, nn.Linear)):
        return None
    params = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):  # each input element scatters
        macs = _per_sample(x) * m.weight[0].numel()
    else:
        macs = per_sample * _terms_per_output(m)
    kind = "linear" if m.weight.ndim == 2 else "conv"
    bias_bits = 32
    w_bytes = (m.weight.numel() * w_bits + (m.bias.numel() * bias_bits if m.bias is not None else 0)) / 8
    return LayerCost(name, kind, params, w_bits, a_bits, o_bits, macs, int(macs * w_bits * a_bits), w_bytes,
                     per_sample * o_bits / 8, per_sample if rq != "none" else 0, rq, events)


def profile(model: nn.Module, example_inputs: tuple,
            widths: dict[str, tuple[float, float]] | None = None, example_kwargs: dict | None = None) -> list[LayerCost]:
    """Run ``model`` once on ``example_inputs`` (and ``example_kwargs``) and return the cost of every layer
    that computes: conv/linear/pool layers, recurrent layers and cells, attention, and the functional matrix
    products of ``forward`` (see the module docstring).

    ``widths`` states ``(weight bits, activation bits)`` for layers by name, for formats the model
    does not carry itself (binary 1, ternary 2, a power-of-two code's bits ...).
    """
    widths = widths or {}
    from lowbit.nn.unified import QAvgPool, _Unified

    if not isinstance(example_inputs, tuple) or not (example_inputs or example_kwargs):
        raise DataError("profile needs example_inputs as a tuple of tensors, e.g. (torch.randn(1, 1, 28, 28),) "
                        "(or example_kwargs for keyword inputs)")
    from lowbit.dynamic import DYNAMIC as dynamic
    from lowbit.nn.recurrent import QRecurrent

    kinds = (_Unified, QAvgPool, QRecurrent, *_CONVS, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d, *_RECURRENT,
             *dynamic)
    inside_unified = {id(c) for m in model.modules() if isinstance(m, (_Unified, QAvgPool, QRecurrent))
                      for c in m.modules() if c is not m}
    rows: list[LayerCost] = []
    counter = FunctionalMacs()

    def enter(mod, args, name: str, counted: bool):
        counter.where.append(name)
        counter.depth += counted

    def leave(mod, args, kwargs, out, name: str, counted: bool):
        counter.where.pop()
        counter.depth -= counted
        if not counted:
            return
        if isinstance(mod, dynamic):
            rows.append(_dynamic(name, mod, _first_input(args, kwargs), out))
        elif isinstance(mod, QRecurrent):  # int8 weights per gate row on the input's grid, once frozen
            rows.append(_qrecurrent(name, mod, args, kwargs, out, widths.get(name)))
        elif isinstance(mod, _RECURRENT):
            rows.append(_recurrent(name, mod, args, kwargs, out, widths.get(name)))
        elif (row := _layer(name, mod, args[0], out, widths.get(name))) is not None:
            rows.append(row)

    handles = []
    for name, m in model.named_modules():
        if id(m) in inside_unified:
            continue
        counted = isinstance(m, kinds)
        handles.append(m.register_forward_pre_hook(lambda mod, args, n=name, c=counted: enter(mod, args, n, c)))
        handles.append(m.register_forward_hook(lambda mod, a, k, o, n=name, c=counted: leave(mod, a, k, o, n, c),
                                               with_kwargs=True, always_call=True))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused transformer kernels would skip the layers' hooks
    try:
        with torch.no_grad(), counter:
            model.eval()(*example_inputs, **(example_kwargs or {}))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()
    return rows + _functional_rows(counter, (*example_inputs, *(example_kwargs or {}).values()))


def _functional_rows(counter: FunctionalMacs, example_inputs: tuple) -> list[LayerCost]:
    first = example_inputs[0]
    batch = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim > 1 else 1
    kinds = {"convolution": "conv", "_convolution": "conv", "mkldnn_rnn_layer": "rnn"}
    rows = []
    for (where, op), macs in counter.macs.items():
        kind = "attention" if op.startswith("_scaled_dot_product") else kinds.get(op, "matmul")
        per = round(macs / batch)
        rows.append(LayerCost(f"{where or 'forward'}:{op}", kind, 0, 32, 32, 32, per, per * 32 * 32, 0, 0, 0, "none",
                              1.0))
    return rows


def _quantized(r: LayerCost) -> bool:
    """Weights and inputs both below 32 bits."""
    return r.weight_bits < 32 and r.act_bits < 32


def quantized_share(rows: list[LayerCost]) -> float:
    """Fraction of the MACs whose weights and inputs are both below 32 bits (1.0 for a model without MACs)."""
    total = sum(r.macs for r in rows)
    return sum(r.macs for r in rows if _quantized(r)) / total if total else 1.0


COVERAGE_FLOOR = 0.9


def coverage_warning(rows: list[LayerCost], floor: float = COVERAGE_FLOOR) -> str | None:
    """A warning naming the biggest float layers when less than ``floor`` of the MACs are quantized."""
    share = quantized_share(rows)
    if share >= floor:
        return None
    total = sum(r.macs for r in rows)
    float_rows = sorted((r for r in rows if not _quantized(r)), key=lambda r: -r.macs)
    top = ", ".join(f"{r.name} ({r.kind}, {100 * r.macs / total:.1f}%)" for r in float_rows[:4])
    return (f"only {100 * share:.1f}% of the MACs are quantized (below {100 * floor:.0f}%): the rest run in float "
            f"({top}); the bit, memory and energy savings apply to the quantized share only")


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


__all__ = ["COVERAGE_FLOOR", "LayerCost", "Totals", "coverage_warning", "profile", "quantized_share", "recurrent_input_macs",
           "render", "totals"]

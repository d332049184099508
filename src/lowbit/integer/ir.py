"""The integer model's intermediate representation: one frozen dataclass per op type, one grid type.

An :class:`~lowbit.integer.model.IntegerModel` is a list of nodes ``output = op(*inputs)``; each
node holds an op value of this module (its attributes, typed) and the op's named tensors
(``weight``, ``bias``, ``m``, ``n``, ...), and the :class:`Grid` its int8 output lies on.
Everything that runs or stores a model looks an op up by its type in a table of its own, one
entry per type (see ``docs/design.md``, "How to add an op"):

=====================  ====================================================  =============================
backend                table                                                 module
=====================  ====================================================  =============================
reference / op by op   ``RUNNERS`` (PyTorch reference and C kernels)         :mod:`lowbit.integer.ops`
compiled plan          ``HANDLERS`` (or ``NO_PLAN``: why not)                :mod:`lowbit.integer.planner`
ONNX (QDQ)             ``EXPORTERS``                                         :mod:`lowbit.export.onnx_qdq`
safetensors I/O        ``CHECKS`` (attributes, tensors, shapes of a file)    :mod:`lowbit.integer.validate`
cost profile           ``COSTS``                                             :mod:`lowbit.cost.integer`
=====================  ====================================================  =============================

Stored activations are int8 codes: an op's ``zero_point``, ``lo`` and ``hi`` are in that stored
domain (an unsigned code ``q`` is stored as ``q - 128``). In a file, an op is its ``kind`` and
:func:`attrs_of` (JSON); :func:`parse` reads them back once :mod:`lowbit.integer.validate` has
checked them.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Union

Pair = tuple[int, int]


class Act(enum.Enum):
    """The float activation a dequantizing layer applies to its output."""

    NONE = "none"
    RELU = "relu"
    HARDTANH = "hardtanh"


class WeightCodes(enum.Enum):
    """What a layer's int8 weights hold (the file packs each at its own width)."""

    INT = "int"  # two's complement codes of ``weight_bits``
    TERNARY = "ternary"  # {-1, 0, 1}
    POW2 = "pow2"  # {0, +-2^k}, ``weight_bits`` bits: a sign and an exponent index
    BINARY = "binary"  # {-1, +1}, 1 bit each (BNN, XNOR-Net)


@dataclass(frozen=True)
class Grid:
    """The grid of an int8 tensor (int16 when ``bits`` > 8): real value ``(stored - zero_point) * scale``; ``bits``
    and ``signed`` of the codes (unsigned codes are stored minus 128, minus 32768 in int16, so ``zero_point`` is in
    the stored domain)."""

    scale: float
    zero_point: int
    bits: int = 8
    signed: bool = False

    @property
    def offset(self) -> int:
        """What the stored value adds to a code: 0 for signed codes, -128 (-32768 in int16) for unsigned ones."""
        return 0 if self.signed else -128 if self.bits <= 8 else -(1 << 15)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Grid | None:
        return None if d is None else cls(float(d["scale"]), int(d["zero_point"]), int(d["bits"]), bool(d["signed"]))


# ---------------------------------------------------------------- the ops


@dataclass(frozen=True)
class Quantize:
    """float -> int8: ``clamp(round(x / scale) + zero_point, lo, hi)``; with ``bits`` 16, int16 codes (zero point
    and bounds in int16: a 16-bit grid, unsigned codes stored minus 32768), which only a ``recurrent`` op reads."""

    kind: ClassVar[str] = "quantize"
    scale: float
    zero_point: int
    lo: int
    hi: int
    bits: int = 8  # the stored codes' width: 8 or 16 (QUANTIZE_BITS)


@dataclass(frozen=True)
class Dequantize:
    """int8 -> float32: ``(q - zero_point) * scale``."""

    kind: ClassVar[str] = "dequantize"
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Requantized:
    """A layer's output stage that gives int8 codes: ``clamp(zero_point + (acc m) >> n, lo, hi)`` (tensors
    ``m``, ``n``); with a residual input (tensor ``m2``), its codes minus ``residual_zero_point`` are added. An
    optional int32 tensor ``zp`` gives a zero point per output channel instead (``zero_point`` is then 0): the
    per-feature grid of a linear layer only integer LayerNorms read (:mod:`lowbit.graph.norm_inputs`); such a
    tensor's node grid is nominal (the largest feature scale), the readers carry the real per-feature grid."""

    zero_point: int
    lo: int
    hi: int
    residual_zero_point: int | None = None


@dataclass(frozen=True)
class Dequantized:
    """A layer's output stage that gives float32 (the network output): ``acc * acc_scale``, then ``act``
    (``hardtanh`` clamps to ``[act_lo, act_hi]``); a residual input is dequantized and added first."""

    act: Act = Act.NONE
    act_lo: float | None = None
    act_hi: float | None = None
    residual_scale: float | None = None
    residual_zero_point: int | None = None


@dataclass(frozen=True)
class Binarized:
    """A layer's output stage that gives signs (BNN): ``+1`` where ``acc + bias >= 0``, else ``-1``, on the
    grid ``Grid(1.0, 0, bits=1, signed=True)``. The bias holds ``floor(b / (s_x s_w))``, so this is
    ``sign(s_x s_w acc + b)`` exactly, a folded BatchNorm included; for the XNOR kernel it is the
    per-channel threshold ``acc >= -bias`` of its epilogue."""


OutputStage = Union[Requantized, Dequantized, Binarized]


def _bitserial(codes: WeightCodes, weight_bits: int, input_bits: int) -> str | None:
    kind = {WeightCodes.BINARY: "binary", WeightCodes.TERNARY: "ternary"}.get(codes)
    if codes is WeightCodes.INT and weight_bits == 2:
        kind = "int2"
    planes = 1 if kind == "binary" else 2
    return kind if kind is not None and 2 <= input_bits <= 4 and input_bits * planes <= 4 else None


def input_low(bits: int, signed: bool) -> int:
    """The least stored int8 code of a ``bits``-bit input: ``-2^(bits-1)`` signed, ``-128`` (code 0) unsigned."""
    return -(1 << (bits - 1)) if signed else -128


@dataclass(frozen=True)
class Linear:
    """int8 GEMM with int32 accumulators: ``acc = (x - input_zero_point) W^T + bias``, then ``out``.

    ``input_bits`` is the width of the input's codes (1: signs, -1 or +1). Binary weights on a binary input
    run the XNOR-popcount kernel of :mod:`lowbit.bitwise` (``acc = K - 2 popcount(x XOR w)`` on packed bits,
    the same integers): a kernel of this op, as VNNI is, not another op."""

    kind: ClassVar[str] = "linear"
    input_zero_point: int
    weight_bits: int
    out: OutputStage
    weight_codes: WeightCodes = WeightCodes.INT
    input_bits: int = 8
    input_signed: bool = False  # the input codes' sign (with input_bits < 8: where their range starts)

    @property
    def xnor(self) -> bool:
        """Binary weights and binary inputs: the XNOR-popcount kernel runs it."""
        return self.weight_codes is WeightCodes.BINARY and self.input_bits == 1

    @property
    def bitserial(self) -> str | None:
        """The weight plane kind (:mod:`lowbit.bitwise.bitserial`) where few-bit inputs meet binary, ternary or
        2-bit weights in at most 4 binary GEMMs; None otherwise."""
        return _bitserial(self.weight_codes, self.weight_bits, self.input_bits)

    @property
    def ternary_popcount(self) -> bool:
        """Ternary weights on binary inputs: the ternary kernel of :mod:`lowbit.bitwise.ternary` runs it."""
        return self.weight_codes is WeightCodes.TERNARY and self.input_bits == 1


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution of int8 codes (padding with ``input_zero_point``, the code of 0.0), then ``out``."""

    kind: ClassVar[str] = "conv2d"
    input_zero_point: int
    weight_bits: int
    out: OutputStage
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    weight_codes: WeightCodes = WeightCodes.INT
    input_bits: int = 8
    pad_value: int | None = None  # the stored code the input is padded with; None: input_zero_point (0.0)
    input_signed: bool = False

    @property
    def bitserial(self) -> str | None:
        """As :attr:`Linear.bitserial`, for dense convolutions."""
        return _bitserial(self.weight_codes, self.weight_bits, self.input_bits) if self.groups == 1 else None

    @property
    def ternary_popcount(self) -> bool:
        """As :attr:`Linear.ternary_popcount`, for dense convolutions (the binary input padded with -1)."""
        return self.weight_codes is WeightCodes.TERNARY and self.input_bits == 1 and self.groups == 1

    @property
    def xnor(self) -> bool:
        """Binary weights and binary inputs (padded with -1): the XNOR-popcount kernel runs it."""
        return self.weight_codes is WeightCodes.BINARY and self.input_bits == 1 and self.groups == 1

    @property
    def pad_code(self) -> int:
        return self.input_zero_point if self.pad_value is None else self.pad_value


@dataclass(frozen=True)
class MaxPool2d:
    """Max pooling keeps the grid (PyTorch's geometry, ceil mode included)."""

    kind: ClassVar[str] = "maxpool2d"
    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    ceil_mode: bool


@dataclass(frozen=True)
class AvgPool2d:
    """Window sums of centred codes in int32, requantized by tensors ``m``, ``n``: a global pool
    (``kernel_size`` None) or an unpadded one; ``window`` pixels per output."""

    kind: ClassVar[str] = "avgpool2d"
    kernel_size: Pair | None
    stride: Pair | None
    window: int
    input_zero_point: int
    zero_point: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Flatten:
    kind: ClassVar[str] = "flatten"
    start_dim: int
    end_dim: int


PAD_MODES = ("constant", "reflect", "replicate")


@dataclass(frozen=True)
class Pad:
    """Padding (``torch.nn.functional.pad`` order: (left, right) pairs from the last dimension). ``mode``
    ``constant``: with ``value``, the code of 0.0 (0.0 on a float tensor); ``reflect`` / ``replicate``: the tensor's
    own elements mirrored about (repeated at) each edge, as ``F.pad`` does (``value`` unused). Reflection and
    replication move elements only, so they commute with elementwise quantization: on codes or on floats alike."""

    kind: ClassVar[str] = "pad"
    pad: tuple[int, ...]
    value: int
    mode: str = "constant"  # PAD_MODES; a file written before the modes existed holds constant pads


@dataclass(frozen=True)
class Slice:
    """``x[..., start:stop, ...]`` along ``dim`` (counted with the batch, >= 1), step 1, ``0 <= start < stop <=``
    the dimension's size: codes keep their grid (or floats stay floats)."""

    kind: ClassVar[str] = "slice"
    dim: int
    start: int
    stop: int


@dataclass(frozen=True)
class Unsqueeze:
    """A size-1 dimension inserted at ``dim`` (counted with the batch, >= 1): a 1-D conv or pool runs as the
    2-D op of height 1 between an ``unsqueeze(2)`` and a ``squeeze(2)``."""

    kind: ClassVar[str] = "unsqueeze"
    dim: int


@dataclass(frozen=True)
class Squeeze:
    """The size-1 dimension ``dim`` (counted with the batch, >= 1) removed."""

    kind: ClassVar[str] = "squeeze"
    dim: int


@dataclass(frozen=True)
class Permute:
    """The dimensions reordered (``torch.permute`` order, batch included and kept first: ``dims[0] == 0``)."""

    kind: ClassVar[str] = "permute"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Reshape:
    """The per-sample shape ``shape`` (the batch dimension kept), the same elements in logical order."""

    kind: ClassVar[str] = "reshape"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Table:
    """An elementwise function of int8 codes by lookup: ``y[n, c, ...] = table[c, x[n, c, ...] + 128]``.

    Tensor ``table`` is ``(C, 256)``: int8 codes of the next grid (``float_output`` False) or float32 values
    (True: the network output). ``C`` is 1 (the same function everywhere) or the size of dimension 1 (a
    BatchNorm after an activation: a per-channel affine map). The simulation (:class:`lowbit.nn.lookup.Lookup`)
    looks the same entries up, so the two agree bit for bit whatever the function is."""

    kind: ClassVar[str] = "table"
    float_output: bool = False


@dataclass(frozen=True)
class Concat:
    """Its inputs joined along ``dim`` (counted with the batch, >= 1), all on one grid (the output's): an input
    on another grid reaches it through a ``table`` of that grid's codes first."""

    kind: ClassVar[str] = "concat"
    dim: int


class Cell(enum.Enum):
    """A recurrent layer's cell (PyTorch's gate order: LSTM ``i, f, g, o``, GRU ``r, z, n``)."""

    LSTM = "lstm"
    GRU = "gru"


class Emit(enum.Enum):
    """What a ``recurrent`` op gives: ``output`` (the last layer's ``h`` at every step, int8), ``h`` (one layer's
    last ``h``, int8) or ``c`` (one LSTM layer's last cell state, float32: its grid is 16-bit)."""

    OUTPUT = "output"
    H = "h"
    C = "c"


@dataclass(frozen=True)
class Recurrent:
    """A stacked LSTM or GRU from a zero state (:mod:`lowbit.nn.recurrent` and :mod:`lowbit.functional.fixed_rnn`
    give the arithmetic): per layer ``k`` int8 ``w_ih_k`` (G H, I), ``w_hh_k`` (G H, H), per-row multipliers and
    shifts ``m_ih_k``, ``n_ih_k``, ``m_hh_k``, ``n_hh_k`` (int64) to the Q.8 pre-activations, int32 biases ``b_ih_k``,
    ``b_hh_k`` in Q.8; int32 Q.15 gate tables ``sigmoid``, ``tanh`` (4096 entries over [-8, 8)). ``h`` lies on the
    grid ``Grid(2^-7, 0, 8, signed=True)``, the LSTM's ``c`` is int16 in Q.11.

    The input is int8 codes (``batch_first``: (N, T, I); else (T, N, I), whose leading dimension, the one the
    model calls its batch, is then time), or int16 codes when ``input_bits`` is 16 (a 16-bit input grid; its zero
    point is then in int16, and layer 0's input projection is int16 x int8 in an int32 accumulator). ``emit`` picks the op's output, of its last layer: the lowering keeps
    the layers up to the one whose state is read (``h_n[0]`` of a 3-layer LSTM is a 1-layer op).

    ``step`` (an ``nn.LSTMCell`` / ``nn.GRUCell`` call): one layer, one time step, the input (N, I) and, as further
    inputs, the state it starts from: ``h`` (N, H) int8 codes on ``2^-7`` and, for the LSTM, ``c`` (N, H) int16 codes
    in Q.11 (without them, zero); ``emit`` is ``h`` or ``c``."""

    kind: ClassVar[str] = "recurrent"
    cell: Cell
    num_layers: int
    batch_first: bool
    input_zero_point: int
    emit: Emit
    input_bits: int = 8  # the stored width of the input codes: 8 or 16
    step: bool = False  # one step of an LSTMCell / GRUCell: inputs x (N, I) [, h (N, H) int8 [, c (N, H) int16]]


@dataclass(frozen=True)
class L2Normalize:
    """``x / ||x||_2`` along ``dim`` (counted with the batch, >= 1) of int8 codes, in integers only
    (:mod:`lowbit.functional.l2norm` gives the arithmetic and its proof): with the centred codes
    ``x = q - input_zero_point`` and ``S = sum_dim x^2`` (int64), ``y = sign(x) min(127, (isqrt(floor(2^16 x^2 / S))
    + 1) >> 1)``, the correctly rounded (half away from zero) ``128 x / sqrt(S)``; ``y = 0`` where ``S = 0``.
    The output lies on the fixed grid ``Grid(2^-7, 0, 8, signed=True)`` (codes -127..127): the input's scale
    cancels, so only its zero point is an attribute."""

    kind: ClassVar[str] = "l2normalize"
    dim: int
    input_zero_point: int


@dataclass(frozen=True)
class Magnitude:
    """``sqrt(a^2 + b^2)`` of two int8 tensors of one shape on one grid (zero point ``input_zero_point``), to the
    codes of the output grid (``zero_point``, bounds ``lo``/``hi``), in integers only (:mod:`lowbit.functional.
    magnitude` gives the arithmetic and its proof): with ``x = a - input_zero_point``, ``y = b - input_zero_point``
    (int64) and ``S = x^2 + y^2``, ``out = clamp(zero_point + ((isqrt(4 S m^2) + 2^n) >> (n + 1)), lo, hi)``, the
    correctly rounded (half up) ``sqrt(S) m / 2^n``, where ``m / 2^n`` (``multiplier``, ``shift``) is the ratio of
    the input scale to the output scale."""

    kind: ClassVar[str] = "magnitude"
    input_zero_point: int
    zero_point: int
    lo: int
    hi: int
    multiplier: int
    shift: int


@dataclass(frozen=True)
class LayerNorm:
    """LayerNorm over the last dimension (``C`` features) of int8 codes, to the codes of the output grid
    (``zero_point``, bounds ``lo``/``hi``), in integers only (:mod:`lowbit.functional.layernorm` gives the arithmetic,
    its bounds and its proof). Tensors, each of shape (C,): ``zero_points`` (int32, the input's stored zero point per
    feature), ``multipliers`` ``M`` (int64, ``0..2^15``: the feature scales on one fine grid), ``gamma`` ``A`` and
    ``beta`` ``B`` (int64, ``|.| < 2^31``). With ``X = (q - zero_points) M``, ``mu = round(mean X)``, ``D = X - mu``,
    ``sigma = isqrt(floor(mean D^2) + eps)``: ``out = clamp(zero_point + round((D A + B sigma) / (sigma 2^shift)),
    lo, hi)`` (half away from zero; ``sigma = 0`` gives ``round(B / 2^shift)``)."""

    kind: ClassVar[str] = "layernorm"
    zero_point: int
    lo: int
    hi: int
    shift: int
    eps: int


QUANTIZE_BITS = (8, 16)  # the widths of quantize's codes and of the recurrent op's input
IROp = Union[Quantize, Dequantize, Linear, Conv2d, MaxPool2d, AvgPool2d, Flatten, Pad, Unsqueeze, Squeeze, Permute,
             Reshape, Table, Concat, Recurrent, L2Normalize, Slice, Magnitude, LayerNorm]
OP_TYPES: tuple[type, ...] = (Quantize, Dequantize, Linear, Conv2d, MaxPool2d, AvgPool2d, Flatten, Pad, Unsqueeze,
                              Squeeze, Permute, Reshape, Table, Concat, Recurrent, L2Normalize, Slice, Magnitude,
                              LayerNorm)
KINDS: dict[str, type] = {t.kind: t for t in OP_TYPES}
LAYERS = (Linear, Conv2d)


# ---------------------------------------------------------------- to and from a file's JSON


def _pair(v: Any) -> Pair | None:
    return None if v is None else (int(v[0]), int(v[1]))


def _stage_attrs(out: OutputStage) -> dict[str, Any]:
    if isinstance(out, Binarized):
        return {"binarized": True}
    if isinstance(out, Requantized):
        d = {"zero_point": out.zero_point, "lo": out.lo, "hi": out.hi}
    else:
        d = {"act": out.act.value}
        if out.act is Act.HARDTANH:
            d.update(act_lo=out.act_lo, act_hi=out.act_hi)
        if out.residual_scale is not None:
            d["residual_scale"] = out.residual_scale
    if out.residual_zero_point is not None:
        d["residual_zero_point"] = out.residual_zero_point
    return d


def attrs_of(op: IROp) -> dict[str, Any]:
    """The op's attributes as JSON values (the file format's ``attrs``)."""
    if isinstance(op, LAYERS):
        d: dict[str, Any] = {"input_zero_point": op.input_zero_point, "weight_bits": op.weight_bits}
        if op.weight_codes is not WeightCodes.INT:
            d["weight_codes"] = op.weight_codes.value
        if op.input_bits != 8:
            d["input_bits"] = op.input_bits
            if op.input_signed:
                d["input_signed"] = True
        d.update(_stage_attrs(op.out))
        if isinstance(op, Conv2d):
            d.update(stride=list(op.stride), padding=list(op.padding), dilation=list(op.dilation), groups=op.groups)
            if op.pad_value is not None:
                d["pad_value"] = op.pad_value
        return d
    d = {}
    for f in dataclasses.fields(op):
        v = getattr(op, f.name)
        d[f.name] = list(v) if isinstance(v, tuple) else v.value if isinstance(v, enum.Enum) else v
    if isinstance(op, (Quantize, Recurrent)):  # 8-bit codes: written as before the 16-bit ones existed
        name = "bits" if isinstance(op, Quantize) else "input_bits"
        if d[name] == 8:
            del d[name]
    if isinstance(op, Recurrent) and not op.step:  # (files from before cells)
        del d["step"]
    if isinstance(op, Pad) and op.mode == "constant":  # written as before the modes existed
        del d["mode"]
    return d


def _stage(a: dict[str, Any], requantized: bool) -> OutputStage:
    rz = a.get("residual_zero_point")
    rz = None if rz is None else int(rz)
    if a.get("binarized"):
        return Binarized()
    if requantized:
        return Requantized(int(a["zero_point"]), int(a["lo"]), int(a["hi"]), rz)
    act = Act(a.get("act", "none"))
    lo, hi = a.get("act_lo"), a.get("act_hi")
    rs = a.get("residual_scale")
    return Dequantized(act, None if lo is None else float(lo), None if hi is None else float(hi),
                       None if rs is None else float(rs), rz)


def parse(kind: str, attrs: dict[str, Any], requantized: bool = True) -> IROp:
    """The typed op of ``kind`` with JSON ``attrs`` (checked before, by :mod:`lowbit.integer.validate`);
    ``requantized``: a layer's output stage gives int8 (it has tensors ``m``, ``n``), else float."""
    a = attrs
    if kind in ("linear", "conv2d"):
        common = dict(input_zero_point=int(a["input_zero_point"]), weight_bits=int(a.get("weight_bits", 8)),
                      out=_stage(a, requantized), weight_codes=WeightCodes(a.get("weight_codes", "int")),
                      input_bits=int(a.get("input_bits", 8)), input_signed=bool(a.get("input_signed", False)))
        if kind == "linear":
            return Linear(**common)
        pad = a.get("pad_value")
        return Conv2d(**common, stride=_pair(a["stride"]), padding=_pair(a["padding"]),
                      dilation=_pair(a["dilation"]), groups=int(a["groups"]), pad_value=None if pad is None else int(pad))
    if kind == "quantize":
        return Quantize(float(a["scale"]), int(a["zero_point"]), int(a["lo"]), int(a["hi"]), int(a.get("bits", 8)))
    if kind == "dequantize":
        return Dequantize(float(a["scale"]), int(a["zero_point"]))
    if kind == "maxpool2d":
        return MaxPool2d(_pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"]),
                         bool(a["ceil_mode"]))
    if kind == "avgpool2d":
        return AvgPool2d(_pair(a["kernel_size"]), _pair(a["stride"]), int(a["window"]), int(a["input_zero_point"]),
                         int(a["zero_point"]), int(a["lo"]), int(a["hi"]))
    if kind == "flatten":
        return Flatten(int(a["start_dim"]), int(a["end_dim"]))
    if kind == "pad":
        return Pad(tuple(int(v) for v in a["pad"]), int(a["value"]), str(a.get("mode", "constant")))
    if kind == "slice":
        return Slice(int(a["dim"]), int(a["start"]), int(a["stop"]))
    if kind == "magnitude":
        return Magnitude(*(int(a[k]) for k in ("input_zero_point", "zero_point", "lo", "hi", "multiplier", "shift")))
    if kind == "layernorm":
        return LayerNorm(*(int(a[k]) for k in ("zero_point", "lo", "hi", "shift", "eps")))
    if kind in ("unsqueeze", "squeeze", "concat"):
        return KINDS[kind](int(a["dim"]))
    if kind == "permute":
        return Permute(tuple(int(v) for v in a["dims"]))
    if kind == "reshape":
        return Reshape(tuple(int(v) for v in a["shape"]))
    if kind == "table":
        return Table(bool(a.get("float_output", False)))
    if kind == "recurrent":
        return Recurrent(Cell(a["cell"]), int(a["num_layers"]), bool(a["batch_first"]), int(a["input_zero_point"]),
                         Emit(a["emit"]), int(a.get("input_bits", 8)), bool(a.get("step", False)))
    if kind == "l2normalize":
        return L2Normalize(int(a["dim"]), int(a["input_zero_point"]))
    raise KeyError(f"unknown integer op kind {kind!r}; known: {sorted(KINDS)}")


__all__ = ["input_low", "OP_TYPES", "PAD_MODES", "Act", "Cell", "Emit", "L2Normalize", "LayerNorm", "Magnitude", "Slice", "Recurrent", "AvgPool2d", "Binarized", "Conv2d", "Dequantize", "Dequantized", "Flatten", "Grid", "IROp", "KINDS", "Squeeze", "Unsqueeze",
           "LAYERS", "Concat", "Linear", "MaxPool2d", "OutputStage", "Pad", "Permute", "QUANTIZE_BITS", "Reshape", "Table", "Quantize", "Requantized", "WeightCodes",
           "attrs_of", "parse"]

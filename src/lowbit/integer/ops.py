"""The integer model's op runners: the reference (PyTorch) and op-by-op C kernels of each IR op type.

Each runner is built from a typed op of :mod:`lowbit.integer.ir` and its named tensors, and runs on
int8; :data:`RUNNERS` is this backend's table, one entry per op type.

Stored activations are int8 codes; an op's ``zero_point``, ``lo`` and ``hi``
are in that stored domain (an unsigned code ``q`` is stored as ``q - 128``).
Only :class:`Quantize` (network input) and :class:`Dequantize` / a dequantizing
:class:`Linear`/:class:`Conv2d` and a float-valued :class:`Table` (network output) touch floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.errors import ShapeError
from lowbit.functional._checks import check_tensor
from lowbit.integer import ir
from lowbit.integer.backend import Kernels
from lowbit.native import cext
from lowbit.integer import kernels as torch_kernels
from lowbit.integer import rnn, vnni
from lowbit.functional.l2norm import l2_normalize_codes
from lowbit.functional.layernorm import layernorm_codes
from lowbit.functional.magnitude import magnitude_codes
from lowbit.functional.lookup import lookup
from lowbit.functional.requant import dequantize_acc, dequantize_codes, half_of
from lowbit import bitwise

Tensors = dict[str, torch.Tensor]


class Op:
    """Base: ``ir`` (the typed op) and ``tensors`` are what is saved; ``__call__(*inputs, kernels=...)`` runs
    it on the kernels of :class:`~lowbit.integer.backend.Kernels` (all give the same codes)."""

    def __init__(self, op: ir.IROp, tensors: Tensors | None = None) -> None:
        self.ir, self.tensors = op, tensors or {}

    @property
    def kind(self) -> str:
        return self.ir.kind

    @property
    def attrs(self) -> dict:
        """The attributes as JSON (the file format's form; derived from :attr:`ir`)."""
        return ir.attrs_of(self.ir)

    def __call__(self, *inputs: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _c(kernels: Kernels) -> bool:
    """The C kernels are chosen and compiled."""
    return kernels.c and cext.library() is not None


class Quantize(Op):
    """float -> int8 (int16 with ``bits`` 16): ``clamp(round(x * (1/s)) + z, lo, hi)`` (PyTorch's fake-quant
    arithmetic; the C pass writes int8 only, so int16 codes come from PyTorch)."""

    def __init__(self, op: ir.Quantize, tensors: Tensors | None = None) -> None:
        super().__init__(op, tensors)
        self.inv = torch.reciprocal(torch.tensor(op.scale, dtype=torch.float32))

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        """A NaN or an infinity raises the DataError the simulation's quantizer raises."""
        a = self.ir
        inv = self.inv
        if x.dtype == torch.float32 and a.bits == 8 and _c(kernels):
            q = cext.quantize_f32(x, inv, a.zero_point, a.lo, a.hi)  # one pass, same float32 ops
            if q is not None:
                return q
        check_tensor(x, "input")
        return (torch.round(x * inv) + a.zero_point).clamp_(a.lo, a.hi).to(torch.int16 if a.bits == 16 else torch.int8)


class Dequantize(Op):
    """int8 -> float: ``(q - z) * s`` in float32."""

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        return dequantize_codes(x, self.ir.zero_point, self.ir.scale)


class _Layer(Op):
    """Shared by Linear and Conv2d: the zero-point-folded bias and the output stage.

    The GEMM is the prepacked VNNI kernel with the epilogue fused (:mod:`lowbit.integer.vnni`) on
    CPUs that have it; else ``torch._int_mm`` followed by the C epilogue
    (:mod:`lowbit.native.cext`); else the PyTorch reference
    (:func:`lowbit.functional.requant.requantize`). All three give identical codes.
    """

    def __init__(self, op: ir.Linear | ir.Conv2d, tensors: Tensors | None = None) -> None:
        super().__init__(op, tensors)
        t = self.tensors
        w = t["weight"].to(torch.int32)
        rowsum = w.reshape(w.shape[0], -1).sum(dim=1)
        folded = t["bias"].to(torch.int64) - op.input_zero_point * rowsum
        if bool((folded.abs() >= 2**31).any()):
            raise ValueError("bias out of range: |bias - z sum(w)| must stay below 2^31")
        self.bias_folded = folded.to(torch.int32)
        self.dequant = "acc_scale" in t
        self.binarized = isinstance(op.out, ir.Binarized)
        self.acc_scale64 = t["acc_scale"].to(torch.float64).contiguous() if self.dequant else None
        # the requantization the int8 kernels run: the stage's own, or for a sign output its integer form
        # clamp(1 + 2 (acc + bias), -1, 1): odd, so never 0, and +1 exactly where acc + bias >= 0
        o = t["weight"].shape[0]
        self.req = None if self.dequant else (
            (torch.full((o,), 2, dtype=torch.int64), torch.zeros(o, dtype=torch.int64), 1, -1, 1) if self.binarized
            else (t["m"], t["n"], op.out.zero_point, op.out.lo, op.out.hi))
        self.half = None if self.dequant else half_of(self.req[1])
        self.zp = t.get("zp")  # a zero point per output channel: the PyTorch requantization runs it
        self._bitwise: dict[str, object] = {}  # the weight packed for the bitwise kernels, made on first use
        self._packed: tuple[vnni.PackedWeight, torch.Tensor] | None = None
        self.requant_spec: vnni.Requant | None = None  # the VNNI epilogue's arguments, set when packed

    def packed(self, weight_mat: torch.Tensor, kernels: Kernels) -> tuple[vnni.PackedWeight, torch.Tensor] | None:
        """The VNNI-packed weight and the per-column term added to its accumulators (packed on first
        use); None where ``kernels`` do not use the VNNI GEMM or it is unavailable."""
        if not (kernels.vnni and _c(kernels) and vnni.available() and weight_mat.shape[1] <= vnni.MAX_K) \
                or self.ir.xnor or self.zp is not None:
            return None
        if self._packed is None:
            w = vnni.pack_weight(weight_mat)
            self._packed = (w, w.correction if self.dequant else (self.bias_folded + w.correction))
            t = self.tensors
            rz = getattr(self.ir.out, "residual_zero_point", None) or 0
            self.requant_spec = None if self.dequant else vnni.Requant(*self.req[:2], self.half, *self.req[2:],
                                                                       t.get("m2"), rz)
        return self._packed

    def _gemm_out(self, rows: torch.Tensor | None, packed, residual: torch.Tensor | None,
                  conv: tuple | None = None) -> torch.Tensor:
        """Output (rows, O) of the VNNI GEMM on ``rows`` (or the implicit conv ``conv``): int8 codes through the
        fused epilogue, or dequantized floats."""
        w, col_add = packed
        res = None if self.dequant or residual is None else residual.contiguous()
        if conv is None:
            y = vnni.gemm(rows, w, col_add, self.requant_spec, res)
        else:
            x, kernel, stride, padding, dilation, pad_value, out_hw = conv
            y = vnni.conv(x, w, kernel, stride, padding, dilation, pad_value, out_hw, col_add, self.requant_spec, res)
        return self._dequantize(y, self.bias_folded, residual, lambda v: v, Kernels.VNNI) if self.dequant else y

    def _out(self, acc: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None, chan,
             kernels: Kernels) -> torch.Tensor:
        """The output stage on int32 ``acc`` (bias not yet added): signs, int8 codes or floats."""
        if self.dequant:
            return self._dequantize(acc, bias, residual, chan, kernels)
        return self._requant(acc, bias, residual, chan, kernels)

    def xnor_weight(self, weight_mat: torch.Tensor, order: str = "") -> tuple[bitwise.PackedWeight, torch.Tensor]:
        """The weight rows (O, K) as packed bits in the XNOR kernel's panels, and the sign thresholds
        ``-bias`` (``acc >= -bias`` is ``acc + bias >= 0``), made on first use (once per row ``order``: a conv's
        op-by-op rows are (C, kh, kw), a plan's (kh, kw, C))."""
        if order not in self._bitwise:
            k = weight_mat.shape[1]
            packed = bitwise.pack_weight(bitwise.pack_signs(weight_mat.to(torch.float32)), k)
            self._bitwise[order] = (packed, (-self.tensors["bias"].to(torch.int64)).clamp(-(2**31) + 1, 2**31 - 1)
                                 .to(torch.int32).contiguous())
        return self._bitwise[order]

    def xnor_rows(self, rows: torch.Tensor, weight_mat: torch.Tensor, kernels: Kernels, order: str = "",
                  packed_rows: torch.Tensor | None = None) -> torch.Tensor:
        """XNOR-popcount GEMM of +-1 rows (R, K) (int8 or float32; or ``packed_rows`` already in bits) with the
        binary weight: int8 signs (R, O) through the threshold epilogue, or the int32 accumulators through the
        other output stages."""
        packed, thr = self.xnor_weight(weight_mat, order)
        c = _c(kernels) and (packed_rows is not None or rows.dtype == torch.int8)
        isa = None if _c(kernels) else bitwise.kernels.REFERENCE
        a = packed_rows if packed_rows is not None else cext.bits_pack_i8(rows) if c else \
            bitwise.pack_rows(rows.to(torch.float32).contiguous(), isa=isa)
        if self.binarized:
            bits = bitwise.binary_gemm(a, packed, packed.k, thr=thr, isa=isa)
            return cext.bits_unpack_i8(bits, packed.n) if c else bitwise.unpack_signs(bits, packed.n, torch.int8)
        return bitwise.binary_gemm(a, packed, packed.k, isa=isa)

    def ternary_weight(self, weight_mat: torch.Tensor, order: str = "") -> bitwise.PackedTernary:
        """The ternary weight rows (O, K) as two bit-planes in the ternary kernel's panels, made on first use."""
        key = "ternary" + order
        if key not in self._bitwise:
            self._bitwise[key] = bitwise.pack_ternary_weight(weight_mat.to(torch.int8).contiguous())
        return self._bitwise[key]

    def ternary_acc(self, bits: torch.Tensor, weight_mat: torch.Tensor, order: str = "") -> torch.Tensor:
        """int32 (R, O) of binary input rows packed in ``bits`` against the ternary weight (two bit-planes)."""
        w = self.ternary_weight(weight_mat, order)
        return bitwise.ternary_gemm(bits, w, w.k)

    def planes(self, weight_mat: torch.Tensor):
        """The weight rows (O, K) as bit-serial sign planes (:mod:`lowbit.bitwise.bitserial`), made on first use."""
        if "planes" not in self._bitwise:
            self._bitwise["planes"] = bitwise.bitserial.pack_planes(weight_mat, self.ir.bitserial)
        return self._bitwise["planes"]

    def bitserial_acc(self, rows: torch.Tensor, weight_mat: torch.Tensor, kernels: Kernels) -> torch.Tensor | None:
        """int32 (R, O) ``rows @ W.T`` of few-bit int8 input rows as bit-serial binary GEMMs (the int8 GEMM's
        integers), or None where the C kernels are off (the int8 path runs it)."""
        isa = bitwise.backend()
        if not (_c(kernels) and isa in bitwise.kernels.ISAS):
            return None
        a = self.ir
        return cext.bits_serial_gemm(rows, self.planes(weight_mat), ir.input_low(a.input_bits, a.input_signed),
                                     a.input_bits, bitwise.kernels.ISAS.index(isa))

    def _dequantize(self, acc: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None, chan,
                    kernels: Kernels) -> torch.Tensor:
        a = self.ir.out
        if _c(kernels) and residual is None and a.act is ir.Act.NONE and acc.ndim == 2:  # the usual classifier
            return cext.dequant_rows(acc, bias, self.acc_scale64)
        y = dequantize_acc(acc + chan(bias), chan(self.tensors["acc_scale"]))
        if residual is not None:  # dequantized like the Dequantize op
            y = y + dequantize_codes(residual, a.residual_zero_point, a.residual_scale)
        if a.act is ir.Act.RELU:
            y = torch.relu(y)
        elif a.act is ir.Act.HARDTANH:
            y = y.clamp(a.act_lo, a.act_hi)
        return y

    def _requant(self, acc: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None, chan,
                 kernels: Kernels) -> torch.Tensor:
        """int8 codes from int32 ``acc`` (bias not yet added); ``chan`` shapes per-channel tensors for ``acc``."""
        a, t = self.ir.out, self.tensors
        m, n, zero_point, lo, hi = self.req
        rz = getattr(a, "residual_zero_point", None) or 0
        if self.zp is not None:
            zero_point = chan(self.zp.to(torch.int64))
        elif _c(kernels):
            return cext.requant(acc, bias, m, n, zero_point, lo, hi, residual, rz, t.get("m2"), self.half)
        res = None if residual is None else residual.to(torch.int64) - rz
        m2 = chan(t["m2"]) if "m2" in t else None
        return torch_kernels.requant_int8(acc + chan(bias), chan(m), chan(n), zero_point, lo, hi, res, m2)


class Linear(_Layer):
    """int8 GEMM (``torch._int_mm``), int32 bias, requantization (or dequantization at the output)."""

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                 kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        lead, o = x.shape[:-1], self.tensors["weight"].shape[0]
        if residual is not None:
            residual = residual.reshape(-1, o)
        if self.ir.xnor:
            y = self.xnor_rows(x.reshape(-1, x.shape[-1]), self.tensors["weight"], kernels)
            y = y if self.binarized else self._out(y, self.bias_folded, residual, lambda v: v, kernels)
            return y.reshape(*lead, o)
        if self.ir.ternary_popcount and _c(kernels) and bitwise.backend() in bitwise.kernels.ISAS:
            acc = self.ternary_acc(cext.bits_pack_i8(x.reshape(-1, x.shape[-1])), self.tensors["weight"])
            return self._out(acc, self.bias_folded, residual, lambda v: v, kernels).reshape(*lead, o)
        if self.ir.bitserial and (acc := self.bitserial_acc(x.reshape(-1, x.shape[-1]), self.tensors["weight"],
                                                            kernels)) is not None:
            return self._out(acc, self.bias_folded, residual, lambda v: v, kernels).reshape(*lead, o)
        packed = self.packed(self.tensors["weight"], kernels)
        if packed is not None:
            rows = x.reshape(-1, x.shape[-1]).contiguous()  # int8 rows go straight in when K % 4 == 0
            if packed[0].k != packed[0].kp:
                rows = vnni.pack_rows(rows, packed[0].kp)
            return self._gemm_out(rows, packed, residual).reshape(*lead, o)
        acc = torch_kernels.linear_acc(x, self.tensors["weight"])
        return self._out(acc, self.bias_folded, residual, lambda v: v, kernels).reshape(*lead, o)


class Conv2d(_Layer):
    """Dense conv as im2col + int8 GEMM, grouped/depthwise as an int32 conv; outputs NCHW."""

    def __init__(self, op: ir.Conv2d, tensors: Tensors | None = None) -> None:
        super().__init__(op, tensors)
        w = self.tensors["weight"]
        self.kernel = tuple(w.shape[2:])
        self.weight_mat = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()
        self.depthwise = op.groups > 1 and w.shape[1] == 1 and op.groups == w.shape[0]
        self.weight_hwc = w[:, 0].permute(1, 2, 0).contiguous() if self.depthwise else None
        # the XNOR kernel's rows are F.unfold's (C, kh, kw) order
        self.weight_ckk = w.reshape(w.shape[0], -1).contiguous() if op.xnor else None
        self._geometry: dict[tuple[int, int], tuple] = {}  # output geometry per input size

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                 kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        a, o = self.ir, self.tensors["weight"].shape[0]
        conv = (a.stride, a.padding, a.dilation)
        if a.xnor:
            return self._xnor_conv(x, residual, kernels)
        if a.ternary_popcount and _c(kernels) and bitwise.backend() in bitwise.kernels.ISAS \
                and (a.pad_code == -1 or not any(a.padding)):
            n, _, h, w = x.shape
            geo, (ho, wo) = self.conv_geometry(h, w)
            acc = self.ternary_acc(cext.bits_im2col(x, self.kernel, *geo, (ho, wo)), self.weight_mat, "hwc")
            return self._rows_out(acc, residual, n, ho, wo, o, kernels)
        if a.bitserial and _c(kernels):
            n, _, h, w = x.shape
            geo, (ho, wo) = self.conv_geometry(h, w)
            cols = cext.im2col_nhwc(x, self.kernel, *geo, a.pad_code, (ho, wo))  # (N Ho Wo, kh kw C)
            acc = self.bitserial_acc(cols.reshape(n * ho * wo, -1), self.weight_mat, kernels)
            if acc is not None:
                return self._rows_out(acc, residual, n, ho, wo, o, kernels)
        if self.depthwise and _c(kernels):
            acc, (n, ho, wo) = torch_kernels.depthwise_acc(x, self.weight_hwc, *conv, a.input_zero_point)
            return self._rows_out(acc, residual, n, ho, wo, o, kernels, zero_bias=True)
        if a.groups != 1:
            acc = torch_kernels.grouped_conv2d_acc(x, self.tensors["weight"], *conv, a.groups, a.input_zero_point)
            chan = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
            return self._out(acc, self.tensors["bias"].to(torch.int32), residual, chan, kernels)
        packed = self.packed(self.weight_mat, kernels)
        if packed is not None:
            n, c, h, w = x.shape
            geo, (ho, wo) = self.conv_geometry(h, w)
            if kernels.implicit_conv and vnni.implicit_conv_ok(c, self.kernel):
                y = self._gemm_out(None, packed, self._residual_rows(residual, o),
                                   conv=(x, self.kernel, *geo, a.pad_code, (ho, wo)))
            else:
                rows = vnni.im2col(x, self.kernel, *geo, a.pad_code, (ho, wo), packed[0].kp)
                y = self._gemm_out(rows, packed, self._residual_rows(residual, o))
            return y.reshape(n, ho, wo, o).permute(0, 3, 1, 2)
        acc, (n, ho, wo) = torch_kernels.conv2d_acc(x, self.weight_mat, self.kernel, *conv, a.pad_code, _c(kernels))
        return self._rows_out(acc, residual, n, ho, wo, o, kernels)

    def _xnor_conv(self, x: torch.Tensor, residual: torch.Tensor | None, kernels: Kernels) -> torch.Tensor:
        """Binary conv: the +-1 input padded with -1, im2col (``F.unfold``), the XNOR-popcount GEMM."""
        a, o = self.ir, self.weight_ckk.shape[0]
        n, _, h, w = x.shape
        geo, (ho, wo) = self.conv_geometry(h, w)
        (ph, pw) = a.padding
        if _c(kernels) and x.dtype == torch.int8 and (a.pad_code == -1 or not any(a.padding)):
            bits = cext.bits_im2col(x, self.kernel, *geo, (ho, wo))  # rows in (kh, kw, C) order, -1 padding
            y = self.xnor_rows(None, self.weight_mat, kernels, "hwc", bits)
        else:
            xf = F.pad(x.to(torch.float32), (pw, pw, ph, ph), value=float(a.pad_code))
            cols = F.unfold(xf, self.kernel, dilation=a.dilation, stride=a.stride)  # (N, C kh kw, Ho Wo)
            y = self.xnor_rows(cols.transpose(1, 2).reshape(n * ho * wo, -1), self.weight_ckk, kernels)
        if not self.binarized:
            y = self._out(y, self.bias_folded, self._residual_rows(residual, o), lambda v: v, kernels)
        return y.reshape(n, ho, wo, o).permute(0, 3, 1, 2)

    def conv_geometry(self, h: int, w: int) -> tuple[tuple, tuple[int, int]]:
        """((stride, padding, dilation) pairs, (Ho, Wo)) for an H x W input, computed once per size."""
        if (h, w) not in self._geometry:
            a = self.ir
            geo = (a.stride, a.padding, a.dilation)
            (sh, sw), (ph, pw), (dh, dw) = geo
            out = (torch_kernels.out_size(h, self.kernel[0], sh, ph, dh),
                   torch_kernels.out_size(w, self.kernel[1], sw, pw, dw))
            self._geometry[(h, w)] = (geo, out)
        return self._geometry[(h, w)]

    @staticmethod
    def _residual_rows(residual: torch.Tensor | None, o: int) -> torch.Tensor | None:
        """(N*H*W, O) rows of an NCHW residual: a view when it is channels-last, as conv outputs are."""
        return None if residual is None else residual.permute(0, 2, 3, 1).reshape(-1, o)

    def _rows_out(self, acc, residual, n, ho, wo, o, kernels: Kernels, zero_bias: bool = False) -> torch.Tensor:
        """Output stage for (N*Ho*Wo, O) accumulators; ``zero_bias``: inputs were centred, use the raw bias."""
        bias = self.tensors["bias"].to(torch.int32) if zero_bias else self.bias_folded
        y = self._out(acc, bias, self._residual_rows(residual, o), lambda v: v, kernels)
        return y.reshape(n, ho, wo, o).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


class MaxPool2d(Op):
    """Max pooling (an integer tensor keeps its grid): a C kernel on NHWC int8, or a maximum of strided views."""

    def __init__(self, op: ir.MaxPool2d, tensors: Tensors | None = None) -> None:
        super().__init__(op, tensors)
        self._sizes: dict[tuple[int, int], tuple] = {}

    def geometry(self, h: int, w: int) -> tuple:
        """(kernel, stride, padding, (Ho, Wo)) pairs for an H x W input, computed once per size."""
        if (h, w) not in self._sizes:
            (kh, kw), (sh, sw), (ph, pw) = self.ir.kernel_size, self.ir.stride, self.ir.padding
            out = (torch_kernels.out_size(h, kh, sh, ph, 1), torch_kernels.out_size(w, kw, sw, pw, 1))
            self._sizes[(h, w)] = ((kh, kw), (sh, sw), (ph, pw), out)
        return self._sizes[(h, w)]

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        a = self.ir
        if x.is_floating_point() or a.dilation != (1, 1) or a.ceil_mode:
            return F.max_pool2d(x.contiguous(), a.kernel_size, a.stride, a.padding, a.dilation, a.ceil_mode)
        if x.dtype == torch.int8 and _c(kernels):
            return cext.maxpool_nhwc(x, *self.geometry(x.shape[2], x.shape[3]))
        return torch_kernels.max_pool2d(x, a.kernel_size, a.stride, a.padding)


class AvgPool2d(Op):
    """Window sum of centred codes in int32, then requantization: global (``kernel_size`` None) or unpadded."""

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        a, t = self.ir, self.tensors
        k = a.kernel_size
        if k is None:
            s = x.sum(dim=(2, 3), keepdim=True, dtype=torch.int32)
        else:
            st = a.stride
            s = x.unfold(2, k[0], st[0]).unfold(3, k[1], st[1]).sum(dim=(-1, -2), dtype=torch.int32)
        s = s - a.window * a.input_zero_point
        y = torch_kernels.requant_int8(s, t["m"], t["n"], a.zero_point, a.lo, a.hi)
        if k is not None and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)  # a conv's channels-last layout kept, as max pool
        return y


class Flatten(Op):
    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        a = self.ir
        if (x.dtype == torch.int8 and x.ndim == 4 and a.start_dim == 1 and a.end_dim in (-1, 3)
                and not x.is_contiguous() and x.permute(0, 2, 3, 1).is_contiguous() and _c(kernels)):
            return cext.flatten_channels_last(x)  # a conv output (channels-last) in NCHW order, one C pass
        return torch.flatten(x, a.start_dim, a.end_dim)


def edge_index(size: int, left: int, right: int, mode: str) -> torch.Tensor:
    """The source index of each of the ``left + size + right`` positions of a dimension padded by ``reflect``
    (mirrored about the edge elements, which are not repeated: ``left, right < size``) or ``replicate`` (the
    edge elements repeated), as ``F.pad`` pads."""
    i = torch.arange(-left, size + right)
    if mode == "replicate":
        return i.clamp(0, size - 1)
    i = i.abs()  # reflect: -k -> k, then size - 1 + k -> size - 1 - k
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


class Pad(Op):
    """Constant padding with the zero point (the code of 0.0), or 0.0 on a float tensor; reflect / replicate
    padding moves the tensor's own elements (an index per padded dimension: any dtype, codes or floats)."""

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        a = self.ir
        if a.mode == "constant":
            return F.pad(x, list(a.pad), value=a.value if x.dtype == torch.int8 else 0.0)
        for i in range(len(a.pad) // 2):
            d, (left, right) = x.ndim - 1 - i, a.pad[2 * i:2 * i + 2]
            if left or right:
                x = x.index_select(d, edge_index(x.shape[d], left, right, a.mode))
        return x


class Slice(Op):
    """``x[..., start:stop]`` along ``dim`` (a copy: the next kernels read contiguous tensors)."""

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        a = self.ir
        return x.narrow(a.dim, a.start, a.stop - a.start).contiguous()


class Unsqueeze(Op):
    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        return x.unsqueeze(self.ir.dim)


class Squeeze(Op):
    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        d = self.ir.dim
        if x.ndim <= d or x.shape[d] != 1:
            raise ShapeError(f"squeeze({d}) of a tensor of shape {tuple(x.shape)}: dimension {d} must have size 1")
        return x.squeeze(d)


class Permute(Op):
    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        return x.permute(*self.ir.dims).contiguous()


class Reshape(Op):
    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.ir.shape)


class Table(Op):
    """``table[c, x + 128]`` per element (``c`` the index along dimension 1, or 0 for a one-row table)."""

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        if x.dtype != torch.int8:
            raise ShapeError(f"a lookup table reads int8 codes, got {x.dtype}")
        t = self.tensors["table"]
        if t.shape[0] != 1 and (x.ndim < 2 or x.shape[1] != t.shape[0]):
            raise ShapeError(f"a per-channel table of {t.shape[0]} rows on a tensor of shape {tuple(x.shape)}")
        if _c(kernels):
            return cext.table(x, t)
        return lookup(t, x.to(torch.int64) + 128)


class Concat(Op):
    def __call__(self, *xs: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        return torch.cat([x.contiguous() for x in xs], self.ir.dim)


class Recurrent(Op):
    """A stacked LSTM or GRU (:class:`lowbit.integer.ir.Recurrent`): :func:`lowbit.nn.recurrent.run_recurrent` on its
    int8 input, each layer in C (``lowbit_rnn_layer``) or in PyTorch integer ops (the reference), the same codes."""

    def __init__(self, op: ir.Recurrent, tensors: Tensors | None = None) -> None:
        super().__init__(op, tensors)
        self.q = rnn.recurrent_q(op, self.tensors)

    def __call__(self, x: torch.Tensor, *state: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        return rnn.run(self.ir, self.q, x, _c(kernels), state)


class L2Normalize(Op):
    """``x / ||x||_2`` along ``dim`` on int8 codes (:class:`lowbit.integer.ir.L2Normalize`): int64 sums of squares,
    one integer division and a 9-bit integer square root per element (:func:`lowbit.functional.l2norm.
    l2_normalize_codes`, the simulation's own function), int8 codes on ``2^-7``. Every kernel choice runs it."""

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        centred = x.to(torch.int64) - self.ir.input_zero_point
        return l2_normalize_codes(centred, self.ir.dim).to(torch.int8)


class Magnitude(Op):
    """``sqrt(a^2 + b^2)`` of two int8 tensors on one grid (:class:`lowbit.integer.ir.Magnitude`): int64 squares,
    an exact integer square root and a rounding shift (:func:`lowbit.functional.magnitude.magnitude_codes`, the
    simulation's own function), int8 codes of the output grid. Every kernel choice runs it."""

    def __call__(self, a: torch.Tensor, b: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        if a.dtype != torch.int8 or b.dtype != torch.int8 or a.shape != b.shape:
            raise ShapeError(f"a magnitude reads two int8 tensors of one shape, got {a.dtype} {tuple(a.shape)} and "
                             f"{b.dtype} {tuple(b.shape)}")
        o = self.ir
        z = o.input_zero_point
        y = magnitude_codes(a.to(torch.int64) - z, b.to(torch.int64) - z, o.multiplier, o.shift, o.zero_point,
                            o.lo, o.hi)
        return y.to(torch.int8)


class LayerNorm(Op):
    """LayerNorm over the last dimension of int8 codes (:class:`lowbit.integer.ir.LayerNorm`): int64 sums, one exact
    integer square root per row and one rounding division per element (:func:`lowbit.functional.layernorm.
    layernorm_codes`, the simulation's own function), int8 codes of the output grid. Every kernel choice runs it."""

    def __call__(self, x: torch.Tensor, kernels: Kernels = Kernels.VNNI) -> torch.Tensor:
        t, o = self.tensors, self.ir
        if x.dtype != torch.int8 or x.ndim < 2 or x.shape[-1] != t["multipliers"].numel():
            raise ShapeError(f"a layernorm reads int8 codes of {t['multipliers'].numel()} features (last dimension), "
                             f"got {x.dtype} {tuple(x.shape)}")
        centred = x.to(torch.int64) - t["zero_points"].to(torch.int64)
        y = layernorm_codes(centred, t["multipliers"], t["gamma"], t["beta"], o.shift, o.eps, o.zero_point, o.lo, o.hi)
        return y.to(torch.int8)


# this backend's table: the runner of each op type
RUNNERS: dict[type, type[Op]] = {ir.Quantize: Quantize, ir.Dequantize: Dequantize, ir.Linear: Linear,
                                 ir.Conv2d: Conv2d, ir.MaxPool2d: MaxPool2d, ir.AvgPool2d: AvgPool2d,
                                 ir.Flatten: Flatten, ir.Pad: Pad, ir.Unsqueeze: Unsqueeze, ir.Squeeze: Squeeze,
                                 ir.Permute: Permute, ir.Reshape: Reshape, ir.Table: Table, ir.Concat: Concat,
                                 ir.Recurrent: Recurrent, ir.L2Normalize: L2Normalize, ir.Slice: Slice,
                                 ir.Magnitude: Magnitude, ir.LayerNorm: LayerNorm}


def build(op: ir.IROp, tensors: Tensors | None = None) -> Op:
    """The runner of ``op`` with its tensors."""
    return RUNNERS[type(op)](op, tensors)


def tensor_bytes(op: Op) -> int:
    return sum(t.numel() * t.element_size() for t in op.tensors.values())


__all__ = ["RUNNERS", "Op", "build", "edge_index", "tensor_bytes"]

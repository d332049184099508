"""BitSplit-Net for 1x28x28 inputs (Kim, Kim, Ryu, Kim, arXiv 1903.09807) and its run on the bitwise engine.

:class:`BitSplitCNN` has the widths of :class:`lowbit.zoo.binary.BinaryCNN` (c, c, 2c channels, two 2x2 max
pools, a linear classifier), with n-bit activations kept as n binary paths (:mod:`lowbit.functional.bitsplit`):

    image codes p (0..255) -> conv3x3(1 -> c), 8-bit weights -> maxpool -> BN -> q in {0..2^n-1}, split into b_0..b_{n-1}
    path k:  b_k -> conv3x3(c -> c),  binary weights W2^(k) -> maxpool -> BN -> bit k of q   (bitwise activation)
                 -> conv3x3(c -> 2c), binary weights W3^(k) -> BN -> bit k of q
    merge:   concat_k (bits of path k, 2c x 7 x 7) -> linear(n 2c 49 -> 10), 8-bit weights, float bias

The first layer is the one multi-bit layer: it takes the 8-bit image and produces the n bits; from there no
layer merges paths (no shift-add, no requantization to n bits) until the classifier, whose concatenation is
``logits = sum_k W_k b_k + bias`` (the paper's ``sum_k 2^k logits_k`` with the ``2^k`` learned into ``W_k``).
Each path has its own binary weights (``W^(k)``). Max pooling acts on the integer accumulator before BatchNorm
(BNN's conv -> pool -> BN -> activation). Zero padding everywhere: in the binary layers a padded tap is the bit 0.

**Eval mode is the deployed arithmetic.** In eval mode BatchNorm is folded (``y = acc * A + B``,
``A = gamma / sqrt(var + eps)``, ``B = beta - mean A``, float32), the convolutions see integers (image codes,
int8 weight codes, bits, +-1 weights: every sum is an integer below 2^24, exact in float32), and the classifier
is ``(bits @ codes^T) * s + bias``. :func:`deploy` turns it into :class:`DeployedBitSplit`, which computes the
same numbers with integer kernels (one C call, ``csrc/bitsplit.c``; or layer by layer): the first layer and the
classifier as int8 sums, each binary layer of each path as an XNOR-popcount GEMM (:func:`lowbit.bitwise.binary_gemm`)
of the signs ``s = 2 b - 1`` (a padded tap is the engine's -1, the bit 0; the channels are padded to whole 64-bit
words with -1 in both operands, whose +1 products the thresholds take off), with

    sum_k w_k b_k = (G + V) / 2,    G = sum_k w_k s_k (XNOR-popcount),  V = sum_k w_k

and the folded BatchNorm and bitwise activation as a per-channel threshold set on G
(:func:`lowbit.functional.bitsplit.level_thresholds`): its logits equal the eval-mode model's bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.bitwise import PackedWeight, binary_gemm, pack_signs, pack_weight
from lowbit.bitwise.bitsplit import im2col_words, threshold_bits, threshold_signs
from lowbit.data.datasets import FASHION_MEAN, FASHION_STD
from lowbit.errors import ConfigError, ShapeError
from lowbit.functional import bitsplit as fb
from lowbit.functional.binary import binarize
from lowbit.functional.rounding import round_ste


def image_codes(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit pixel codes 0..255 (float) of Fashion-MNIST images normalised by :mod:`lowbit.data`:
    ``round(x * 255 std + 255 mean)``, clamped (within 1e-4 of the integer pixel value for the loader's images)."""
    return torch.round(x * (FASHION_STD * 255.0) + FASHION_MEAN * 255.0).clamp_(0.0, 255.0)


def int8_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 codes (float, straight-through rounding) and scales of a weight (O, ...):
    ``s = max|w| / 127``, ``codes = round(w / s)`` in [-127, 127]."""
    flat = w.reshape(w.shape[0], -1)
    s = (flat.detach().abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    codes = round_ste(w / s.reshape(-1, *([1] * (w.ndim - 1)))).clamp(-127.0, 127.0)
    return codes, s


def folded_bn(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (A, B) of an eval-mode BatchNorm: ``y = acc * A + B``."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


class BitPath(nn.Module):
    """One bit path: two binary-weight convs (c -> c, c -> 2c) with their BatchNorms."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, 2 * c, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * c)


class BitSplitCNN(nn.Module):
    """BitSplit-Net W1A``bits`` with the widths of BinaryCNN (module docstring). Input: (N, 1, 28, 28) images
    normalised as :func:`lowbit.data.load` gives them."""

    def __init__(self, bits: int = 2, channels: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.bits = fb.check_bits(bits)
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 4096:
            raise ConfigError(f"channels = {channels!r}; expected an integer in 1..4096")
        c = self.channels = channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.paths = nn.ModuleList(BitPath(c) for _ in range(bits))
        self.classifier = nn.Linear(bits * 2 * c * 7 * 7, num_classes)

    def _bn(self, bn: nn.BatchNorm2d, acc: torch.Tensor) -> torch.Tensor:
        if self.training:
            return bn(acc)
        a, b = folded_bn(bn)
        return acc * a.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n 2c 49) concatenated bits of the paths' last layers."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ShapeError(f"BitSplitCNN takes (N, 1, 28, 28) images, got {tuple(x.shape)}")
        codes, _ = int8_codes(self.conv1.weight)
        acc = F.max_pool2d(F.conv2d(image_codes(x), codes, padding=1), 2)  # (N, c, 14, 14)
        bits = fb.split_activation(self._bn(self.bn1, acc), self.bits)  # (n, N, c, 14, 14)
        out = []
        for k, path in enumerate(self.paths):
            acc = F.max_pool2d(F.conv2d(bits[k], binarize(path.conv2.weight), padding=1), 2)  # (N, c, 7, 7)
            b = fb.bitwise_activation(self._bn(path.bn2, acc), self.bits, k)
            acc = F.conv2d(b, binarize(path.conv3.weight), padding=1)  # (N, 2c, 7, 7)
            out.append(fb.bitwise_activation(self._bn(path.bn3, acc), self.bits, k).flatten(1))
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, s = int8_codes(self.classifier.weight)
        return F.linear(self.features(x), codes) * s + self.classifier.bias

    def clip_latent(self) -> None:
        """Clip the latent binary weights to [-1, 1] (BNN: past 1 the sign cannot change; call after each step)."""
        with torch.no_grad():
            for path in self.paths:
                path.conv2.weight.clamp_(-1.0, 1.0)
                path.conv3.weight.clamp_(-1.0, 1.0)


def bops(n: int, c: int) -> dict[str, int]:
    """Bit operations (MACs x weight bits x input bits) of one inference of the W1An net of width c, by part:
    the first layer (8-bit image, 8-bit weights), the hidden binary convs (n paths of 1 x 1 bits) and the
    classifier (n 2c 49 one-bit features, 8-bit weights). The same as the QNN W1An of the same widths, whose
    hidden layers are n bit-serial binary GEMMs each (``benchmarks/bench_bitsplit.py``)."""
    first = 28 * 28 * 9 * c * 8 * 8
    hidden = (14 * 14 * 9 * c * c + 7 * 7 * 9 * c * 2 * c) * 1 * 1 * n
    classifier = 2 * c * 49 * 10 * 8 * n
    return {"first": first, "hidden": hidden, "classifier": classifier, "total": first + hidden + classifier}


# ---------------------------------------------------------------- the bitwise engine


@dataclass(frozen=True)
class BinaryStage:
    """One binary conv of one path: the packed +-1 weight (rows in (kh, kw, C) order, C padded to whole words with
    -1), the thresholds on the XNOR-popcount sums (O, M) and their inversion flags, whether a 2x2 max pool comes
    first, and whether the output is packed bits (for the next binary layer) or int8 signs (for the classifier)."""

    weight: PackedWeight
    thr: torch.Tensor  # int32 (O, M): the levels m 2^k, as thresholds on the popcount sums
    inv: torch.Tensor  # bool (O,)
    pool: bool
    packed: bool

    @cached_property
    def thr_t(self) -> torch.Tensor:
        """``thr`` transposed, (M, O) contiguous: the layout ``csrc/bitsplit.c`` reads."""
        return self.thr.t().contiguous()


@dataclass(frozen=True)
class DeployedBitSplit:
    """The integer / bitwise forward of an eval-mode :class:`BitSplitCNN` (made by :func:`deploy`). CPU only.

    Where the bitwise C library is built, the whole forward is one C call (``lowbit_bitsplit_forward`` in
    ``lowbit/bitwise/csrc/bitsplit.c``, image by image, the XNOR GEMM of :mod:`lowbit.bitwise.kernels` inside);
    :meth:`forward_layers` runs the same integers layer by layer through the checked wrappers, as follows.
    Activations travel channels-last as packed bits (one uint64 per 64 channels of a pixel); each binary layer
    of each path is a word-copy im2col (:func:`lowbit.bitwise.bitsplit.im2col_words`), one XNOR-popcount GEMM
    (:func:`lowbit.bitwise.binary_gemm`) and the threshold epilogue (2x2 max pool included), which writes the next
    layer's packed bits (:func:`lowbit.bitwise.bitsplit.threshold_bits`), or after the last binary layer the
    int8 signs (:func:`lowbit.bitwise.bitsplit.threshold_signs`) the int8 classifier reads."""

    bits: int
    channels: int
    w1: torch.Tensor  # int8 (c, 9)
    w1_zero: torch.Tensor  # int32 (c,): 128 sum w (the uint8 image codes are stored as p - 128)
    thr1: torch.Tensor  # int32 (c, L) on the first layer's accumulator
    inv1: torch.Tensor  # bool (c,)
    stages: tuple[tuple[BinaryStage, BinaryStage], ...]  # per path
    wc: torch.Tensor  # int8 (10, n 49 2c): the classifier's codes, columns in the (path, y, x, channel) order
    wc_sum: torch.Tensor  # int32 (10,): sum of the codes
    sc: torch.Tensor  # float32 (10,)
    bias: torch.Tensor  # float32 (10,)
    w1_packed: object = None  # lowbit.integer.vnni.PackedWeight of w1 where the C int8 GEMM exists
    w1_add: torch.Tensor | None = None  # int32 (c,): its column term, correction + 128 sum w (= 0)
    wc_packed: object = None  # the same for wc
    wc_add: torch.Tensor | None = None  # int32 (10,): correction + sum w

    @cached_property
    def thr1_t(self) -> torch.Tensor:
        """``thr1`` transposed, (L, c) contiguous: the layout ``csrc/bitsplit.c`` reads."""
        return self.thr1.t().contiguous()

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """The n bits of the first layer's level, packed: uint64 (n, N, 14, 14, ceil(c / 64)). The int8 GEMM is
        lowbit's prepacked one (:mod:`lowbit.integer.vnni`) where the C library has it, else ``torch._int_mm``."""
        p = (image_codes(x) - 128.0).to(torch.int8)  # (N, 1, 28, 28) uint8 codes stored as p - 128
        n = p.shape[0]
        if self.w1_packed is not None:
            acc = _int8_gemm_fast(_im2col_fast(p, self.w1_packed.kp), self.w1_packed, self.w1_add)
            fast = _fast_libraries()
            if fast is not None:  # the epilogue as a direct call (shapes fixed by the checked input)
                c = acc.shape[1]
                out = torch.empty((self.bits, n, 14, 14, (c + 63) // 64), dtype=torch.uint64)
                if fast[0].lowbit_bitsplit_threshold_bits(acc.data_ptr(), n, 28, 28, c, 1, self.thr1_t.data_ptr(),
                                                          self.thr1.shape[1], self.inv1.data_ptr(), self.bits,
                                                          out.data_ptr()):
                    raise MemoryError(f"the BitSplit threshold epilogue found no memory for two buffers of {c} int32")
                return out
        else:
            from lowbit.integer.kernels import im2col, int_mm

            cols, _ = im2col(p, (3, 3), 1, 1, 1, pad_value=-128)  # (N 784, 9)
            acc = int_mm(cols, self.w1) + self.w1_zero  # sum s w + 128 sum w
        return threshold_bits(acc.reshape(n, 28, 28, -1), self.thr1, self.inv1, self.bits, True)

    def classifier(self, signs: torch.Tensor) -> torch.Tensor:
        """float32 logits (N, 10) of int8 signs (N, n 49 2c): ``sum_i w_i b_i = (sum_i w_i s_i + sum_i w_i) / 2``
        for the bits ``b = (s + 1) / 2``, then ``* scale + bias``."""
        if self.wc_packed is not None and signs.shape[1] % 4 == 0:
            acc = _int8_gemm_fast(signs.contiguous(), self.wc_packed, self.wc_add)  # int8 rows flipped in the kernel
        else:
            from lowbit.integer.kernels import int_mm

            acc = int_mm(signs.contiguous(), self.wc) + self.wc_sum
        return (acc >> 1).to(torch.float32) * self.sc + self.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != "cpu" \
                or x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            got = f"{x.dtype} {tuple(x.shape)} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"DeployedBitSplit takes float32 CPU images (N, 1, 28, 28), got {got}")
        fast = _fast_libraries()
        if fast is not None and self.w1_packed is not None:
            return self._compiled(x, *fast)
        return self.forward_layers(x)

    @cached_property
    def _plan(self) -> tuple:
        """The arguments of ``lowbit_bitsplit_forward`` that do not depend on the input (ctypes arrays of the
        per-path pointers; the tensors they point into are this object's, kept alive with it)."""
        import ctypes

        n, c = self.bits, self.channels
        if self.w1.shape != (c, 9) or self.wc.shape[1] != n * 98 * c or len(self.stages) != n:
            raise ShapeError("DeployedBitSplit: the weights do not match bits and channels; build it with deploy()")
        ptrs = lambda ts: (ctypes.c_void_p * n)(*[t.data_ptr() for t in ts])  # noqa: E731
        counts = lambda ts: (ctypes.c_int64 * n)(*[t.shape[1] for t in ts])  # noqa: E731
        s2, s3 = [st[0] for st in self.stages], [st[1] for st in self.stages]
        w1_t = self.w1.t().contiguous()  # (9, c): tap-major, the layout the C loop reads
        self.__dict__["_keep"] = [w1_t] + [st.thr_t for st in s2 + s3]  # alive as long as the plan
        return (float(FASHION_STD * 255.0), float(FASHION_MEAN * 255.0), c, n, w1_t.data_ptr(),
                self.thr1_t.data_ptr(), self.thr1.shape[1], self.inv1.data_ptr(),
                ptrs([st.weight.panels for st in s2]), ptrs([st.thr_t for st in s2]), counts([st.thr for st in s2]),
                ptrs([st.inv for st in s2]), ptrs([st.weight.panels for st in s3]), ptrs([st.thr_t for st in s3]),
                counts([st.thr for st in s3]), ptrs([st.inv for st in s3]), self.wc.shape[0], self.wc.data_ptr(),
                self.wc_sum.data_ptr(), self.sc.data_ptr(), self.bias.data_ptr())

    def _compiled(self, x: torch.Tensor, bit, isa: int) -> torch.Tensor:
        """The whole forward in one C call (``lowbit_bitsplit_forward``: the same integers, image by image)."""
        x = x.contiguous()
        out = torch.empty((x.shape[0], self.wc.shape[0]), dtype=torch.float32)
        rc = bit.lowbit_bitsplit_forward(x.data_ptr(), x.shape[0], *self._plan, isa, out.data_ptr())
        if rc:
            raise MemoryError("lowbit_bitsplit_forward: no memory for its buffers") if rc == -2 else \
                RuntimeError(f"lowbit_bitsplit_forward failed ({rc})")
        return out

    def forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        """The forward layer by layer (one C call per layer and path; the path without the compiled plan, and
        its oracle in the tests). ``x`` as for ``__call__``, unchecked."""
        fast = _fast_libraries()
        first = self.first_layer(x)
        feats = []
        for k, stages in enumerate(self.stages):
            s = first[k]  # (N, 14, 14, ceil(c / 64)) packed bit k
            for st in stages:  # packed bits, then the last stage's int8 signs (N, 7, 7, 2c)
                s = _stage_fast(s, st, *fast) if fast is not None else _stage_checked(s, st)
            feats.append(s.reshape(s.shape[0], -1))
        return self.classifier(torch.cat(feats, dim=1))


def _im2col_fast(p: torch.Tensor, kp: int) -> torch.Tensor:
    """:func:`lowbit.integer.vnni.im2col` of the int8 image (N, 1, 28, 28) (3x3, padding 1 with the code 0, stored
    -128) without its per-call checks: the shapes follow from the input checked in DeployedBitSplit.__call__."""
    from lowbit.native import cext

    n = p.shape[0]
    out = torch.empty((n * 784, kp), dtype=torch.uint8)
    if cext.library().lowbit_im2col_u8(p.data_ptr(), n, 28, 28, 1, 3, 3, 1, 1, 1, 1, 1, 1, -128, 28, 28, kp,
                                       out.data_ptr()):
        raise MemoryError("im2col: no memory for a padded copy of the image")
    return out


def _int8_gemm_fast(a: torch.Tensor, w, col_add: torch.Tensor) -> torch.Tensor:
    """:func:`lowbit.integer.vnni.gemm` (int32 out, no requantization) without its per-call checks; ``a`` is
    uint8 (M, kp) rows, or int8 (M, K) with K % 4 == 0 (flipped in the kernel), made by DeployedBitSplit."""
    from lowbit.integer.vnni import RAW_ARGS, _check_rc
    from lowbit.native import cext

    out = torch.empty((a.shape[0], w.n), dtype=torch.int32)
    flip = int(a.dtype == torch.int8)
    _check_rc(cext.library().lowbit_gemm_u8s8(a.data_ptr(), a.shape[0], w.kp, flip, w.panels.data_ptr(), w.n,
                                              col_add.data_ptr(), *RAW_ARGS, out.data_ptr(), 1),
              "lowbit_gemm_u8s8", a.shape[0] * w.kp)
    return out


def _stage_checked(x: torch.Tensor, st: BinaryStage) -> torch.Tensor:
    """One binary layer through the checking wrappers: the packed pixels ``x`` (N, H, W, WP), their 3x3 rows,
    the XNOR GEMM, the threshold epilogue; packed bits (N, H', W', ceil(O / 64)) or int8 signs (N, H', W', O)."""
    n, h, w, _ = x.shape
    g = binary_gemm(im2col_words(x), st.weight, st.weight.k).reshape(n, h, w, -1)  # XNOR-popcount sums
    return (threshold_bits if st.packed else threshold_signs)(g, st.thr, st.inv, 1, st.pool)[0]


def _fast_libraries():
    """(bitwise library, XNOR isa number) when the bitwise C library is built, else None."""
    from lowbit.bitwise import kernels

    bit = kernels.library()
    if bit is None or kernels.backend() == kernels.REFERENCE:
        return None
    return bit, kernels.ISAS.index(kernels.backend())


def _stage_fast(x: torch.Tensor, st: BinaryStage, bit, isa: int) -> torch.Tensor:
    """:func:`_stage_checked` as three direct C calls. Validated at the boundary: every shape here follows from
    the input checked in :meth:`DeployedBitSplit.__call__` and the stage built by :func:`deploy` (``x`` is the
    contiguous (N, H, W, WP) uint64 made by the previous stage, 9 WP words per row = the weight's), so the
    per-call checks of the wrappers (whose overhead dominates at batch 1) are not repeated."""
    n, h, w, wp = x.shape
    k, o = st.weight.k, st.weight.n
    m = n * h * w
    rows = torch.empty((m, 9 * wp), dtype=torch.uint64)
    bit.lowbit_bitsplit_im2col(x.data_ptr(), n, h, w, wp, rows.data_ptr())
    g = torch.empty((m, o), dtype=torch.int32)
    if bit.lowbit_xnor_gemm(rows.data_ptr(), m, st.weight.panels.data_ptr(), o, 9 * wp, k, isa, None, None,
                            g.data_ptr(), 1):
        raise RuntimeError("the XNOR kernel refused its arguments")
    ho, wo = (h // 2, w // 2) if st.pool else (h, w)
    args = (g.data_ptr(), n, h, w, o, int(st.pool), st.thr_t.data_ptr(), st.thr.shape[1], st.inv.data_ptr(), 1)
    if st.packed:
        out = torch.empty((n, ho, wo, (o + 63) // 64), dtype=torch.uint64)
        rc = bit.lowbit_bitsplit_threshold_bits(*args, out.data_ptr())
    else:
        out = torch.empty((n, ho, wo, o), dtype=torch.int8)
        rc = bit.lowbit_bitsplit_threshold(*args, out.data_ptr())
    if rc:
        raise MemoryError(f"the BitSplit threshold epilogue found no memory for two buffers of {o} int32")
    return out


def _stage(conv: nn.Conv2d, bn: nn.BatchNorm2d, n: int, k: int, pool: bool, packed: bool = True) -> BinaryStage:
    """The :class:`BinaryStage` of a binary conv (3x3, padding 1) and its BatchNorm in path k of an n-bit split."""
    w = torch.where(conv.weight.detach().cpu() >= 0, 1.0, -1.0)  # binarize's forward: sign, sign(0) = +1
    o, c = w.shape[:2]
    cp = (c + 63) // 64 * 64  # the input's channels padded to whole words: the pad bits are 0 (-1) in x and in w
    taps = F.pad(w.permute(0, 2, 3, 1), (0, cp - c), value=-1.0)  # (O, kh, kw, Cp), im2col_words' order
    kk = 9 * cp
    a, b = folded_bn(bn)
    thr, inv = fb.level_thresholds(a.detach().cpu().float(), b.detach().cpu().float(), n, 9 * c)
    v = w.sum(dim=(1, 2, 3)).to(torch.int64)  # V = sum of the weights
    # acc = sum w b >= t  <=>  G = 2 acc - V >= 2 t - V, and the kernel's sum G' = G + 9 (Cp - C) adds the pad
    # bits' products (-1 x -1)
    thr_g = 2 * fb.path_thresholds(thr, n, k) - v[:, None] + 9 * (cp - c)
    return BinaryStage(pack_weight(pack_signs(taps.reshape(o, kk)), kk), thr_g.to(torch.int32).contiguous(),
                       inv.contiguous(), pool, packed)


@torch.no_grad()
def deploy(model: BitSplitCNN) -> DeployedBitSplit:
    """The :class:`DeployedBitSplit` of a trained model (its eval-mode arithmetic); the model is not changed."""
    if not isinstance(model, BitSplitCNN):
        raise ConfigError(f"deploy takes a BitSplitCNN, got {type(model).__name__}")
    n, c = model.bits, model.channels
    codes1, _ = int8_codes(model.conv1.weight.detach().cpu())
    w1 = codes1.reshape(c, 9).to(torch.int8)
    a1, b1 = folded_bn(model.bn1)
    thr1, inv1 = fb.level_thresholds(a1.cpu().float(), b1.cpu().float(), n, 9 * 255 * 127)
    stages = tuple((_stage(p.conv2, p.bn2, n, k, True), _stage(p.conv3, p.bn3, n, k, False, packed=False))
                   for k, p in enumerate(model.paths))
    codes_c, sc = int8_codes(model.classifier.weight.detach().cpu())
    # the model flattens (path, channel, y, x); the engine's signs are (path, y, x, channel)
    wc = codes_c.reshape(-1, n, 2 * c, 7, 7).permute(0, 1, 3, 4, 2).reshape(codes_c.shape[0], -1)
    wc = wc.to(torch.int8).contiguous()
    w1_zero = (128 * w1.to(torch.int32).sum(dim=1)).to(torch.int32)
    wc_sum = wc.to(torch.int32).sum(dim=1).to(torch.int32)
    packed = {}
    from lowbit.integer import vnni

    if vnni.available():
        p1, pc = vnni.pack_weight(w1), vnni.pack_weight(wc)
        packed = {"w1_packed": p1, "w1_add": (p1.correction + w1_zero).to(torch.int32),
                  "wc_packed": pc, "wc_add": (pc.correction + wc_sum).to(torch.int32)}
    return DeployedBitSplit(n, c, w1, w1_zero, thr1.to(torch.int32).contiguous(), inv1, stages, wc, wc_sum,
                            sc.float(), model.classifier.bias.detach().cpu().float(), **packed)


__all__ = ["BitPath", "BitSplitCNN", "DeployedBitSplit", "bops", "deploy", "folded_bn", "image_codes", "int8_codes"]

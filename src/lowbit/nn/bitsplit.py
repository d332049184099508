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
same numbers with integer kernels: the first layer and the classifier as int8 GEMMs (``torch._int_mm``), each
binary layer of each path as an XNOR-popcount GEMM (:func:`lowbit.bitwise.binary_conv2d`) of the signs
``s = 2 b - 1`` (a padded tap is the engine's -1, the bit 0), with

    sum_k w_k b_k = (G + V) / 2,    G = sum_k w_k s_k (XNOR-popcount),  V = sum_k w_k

and the folded BatchNorm and bitwise activation as a per-channel threshold set on G
(:func:`lowbit.functional.bitsplit.level_thresholds`): its logits equal the eval-mode model's bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.bitwise import PackedWeight, binary_conv2d, pack_signs, pack_weight
from lowbit.data.datasets import FASHION_MEAN, FASHION_STD
from lowbit.errors import ConfigError, ShapeError
from lowbit.functional import bitsplit as fb
from lowbit.functional.binary import binarize
from lowbit.functional.rounding import round_ste


def image_codes(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit pixel codes 0..255 (float) of Fashion-MNIST images normalised by :mod:`lowbit.data`."""
    return torch.round((x * FASHION_STD + FASHION_MEAN) * 255.0).clamp(0.0, 255.0)


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


# ---------------------------------------------------------------- the bitwise engine


@dataclass(frozen=True)
class BinaryStage:
    """One binary conv of one path: the packed +-1 weight, and the thresholds on G = XNOR-popcount (C, M)."""

    weight: PackedWeight
    thr: torch.Tensor  # int32 (C, M): levels m 2^k, as thresholds on G
    flip: torch.Tensor  # bool (C,)
    pool: bool


@dataclass(frozen=True)
class DeployedBitSplit:
    """The integer / bitwise forward of an eval-mode :class:`BitSplitCNN` (made by :func:`deploy`). CPU only."""

    bits: int
    channels: int
    w1: torch.Tensor  # int8 (c, 9)
    w1_zero: torch.Tensor  # int32 (c,): 128 sum w (the uint8 image codes are stored as p - 128)
    thr1: torch.Tensor  # int32 (c, L) on the first layer's accumulator
    flip1: torch.Tensor  # bool (c,)
    stages: tuple[tuple[BinaryStage, BinaryStage], ...]  # per path
    wc: torch.Tensor  # int8 (10, n 2c 49)
    sc: torch.Tensor  # float32 (10,)
    bias: torch.Tensor  # float32 (10,)

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """The level q (int32 (N, c, 14, 14)) of the first layer."""
        from lowbit.integer.kernels import im2col, int_mm, max_pool2d

        p = (image_codes(x) - 128.0).to(torch.int8)  # (N, 1, 28, 28)
        cols, (n, ho, wo) = im2col(p, (3, 3), 1, 1, 1, pad_value=-128)  # (N 784, 9), a padded pixel is code 0
        acc = int_mm(cols, self.w1) + self.w1_zero  # (N 784, c)
        acc = acc.reshape(n, ho, wo, -1).permute(0, 3, 1, 2)
        return fb.level_from_thresholds(max_pool2d(acc, 2, 2, 0), self.thr1, self.flip1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != "cpu" \
                or x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            got = f"{x.dtype} {tuple(x.shape)} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"DeployedBitSplit takes float32 CPU images (N, 1, 28, 28), got {got}")
        q = self.first_layer(x)
        feats = []
        for k, (s2, s3) in enumerate(self.stages):
            b = (q >> k) & 1  # bit k of the first layer's level
            for st in (s2, s3):
                # signs of the bits for the XNOR GEMM: b - 1/2 >= 0 where b = 1; the engine pads with -1 (bit 0)
                g = binary_conv2d(b.to(torch.float32) - 0.5, st.weight, (3, 3), padding=1)
                if st.pool:
                    g = g.reshape(g.shape[0], g.shape[1], g.shape[2] // 2, 2, g.shape[3] // 2, 2).amax(dim=(3, 5))
                b = fb.bit_from_thresholds(g, st.thr, st.flip).to(torch.int8)
            feats.append(b.reshape(b.shape[0], -1))
        acc = int_mm_rows(torch.cat(feats, dim=1), self.wc)  # (N, 10) int32
        return acc.to(torch.float32) * self.sc + self.bias


def int_mm_rows(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """int32 ``a @ w.T`` of int8 rows (torch._int_mm, via :func:`lowbit.integer.kernels.int_mm`)."""
    from lowbit.integer.kernels import int_mm

    return int_mm(a.contiguous(), w)


def _stage(conv: nn.Conv2d, bn: nn.BatchNorm2d, n: int, k: int, pool: bool) -> BinaryStage:
    w = torch.where(conv.weight.detach().cpu() >= 0, 1.0, -1.0)  # binarize's forward: sign, sign(0) = +1
    rows = w.reshape(w.shape[0], -1)
    kk = rows.shape[1]
    a, b = folded_bn(bn)
    thr, flip = fb.level_thresholds(a.detach().cpu().float(), b.detach().cpu().float(), n, kk)
    v = rows.sum(dim=1).to(torch.int64)  # V = sum of the weights
    thr_g = 2 * fb.path_thresholds(thr, n, k) - v[:, None]  # acc >= t  <=>  G >= 2 t - V
    return BinaryStage(pack_weight(pack_signs(rows), kk), thr_g.clamp(-2**31, 2**31 - 1).to(torch.int32), flip, pool)


@torch.no_grad()
def deploy(model: BitSplitCNN) -> DeployedBitSplit:
    """The :class:`DeployedBitSplit` of a trained model (its eval-mode arithmetic); the model is not changed."""
    if not isinstance(model, BitSplitCNN):
        raise ConfigError(f"deploy takes a BitSplitCNN, got {type(model).__name__}")
    n, c = model.bits, model.channels
    codes1, _ = int8_codes(model.conv1.weight.detach().cpu())
    w1 = codes1.reshape(c, 9).to(torch.int8)
    a1, b1 = folded_bn(model.bn1)
    thr1, flip1 = fb.level_thresholds(a1.cpu().float(), b1.cpu().float(), n, 9 * 255 * 127)
    stages = tuple((_stage(p.conv2, p.bn2, n, k, True), _stage(p.conv3, p.bn3, n, k, False))
                   for k, p in enumerate(model.paths))
    codes_c, sc = int8_codes(model.classifier.weight.detach().cpu())
    return DeployedBitSplit(n, c, w1, (128 * w1.to(torch.int32).sum(dim=1)), thr1.to(torch.int32), flip1, stages,
                            codes_c.to(torch.int8), sc.float(), model.classifier.bias.detach().cpu().float())


__all__ = ["BitPath", "BitSplitCNN", "DeployedBitSplit", "deploy", "folded_bn", "image_codes", "int8_codes"]

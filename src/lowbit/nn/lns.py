"""LNS layers and a multilayer perceptron trained end to end in the log domain (paper L).

Sanyal, Beerel, Chugg (2019), arXiv 1910.09876: forward pass, backward pass and weight update with every
tensor an :class:`~lowbit.functional.lns.LNSTensor`; a product is an addition of log codes, a sum a
tree of approximate log-domain additions (+) (:mod:`lowbit.functional.lns`).

Matrix products ``C[m, n] = (+)_k A[m, k] * B[k, n]`` form the products in a (K, M_chunk, N) block (the
reduction dimension first, so each tree level pairs two contiguous halves) and reduce it with
:func:`~lowbit.functional.lns.lns_sum`'s fixed tree order over ``k``; ``M`` is cut into chunks so the block stays
below ``max_block`` elements. A bias is added after the tree, ``(tree over k) (+) b``.

MLP training (:func:`train_step`), per layer ``h = relu(x W^T (+) b)``:

    forward   z = x W^T (+) b,  relu: a sign test (negative codes become zero)
    backward  e = (softmax(z) - onehot(y)) / B     <- the only non-LNS step, see below
              grad_W = e^T x,  grad_b = (+)_batch e,  grad_x = e W,  relu backward: zero where z was not positive
    update    W <- W (+) ((-lr) * grad_W)        (an LNS product and an LNS addition)

The output error ``e`` of softmax cross-entropy has two versions. :func:`output_error` (the default of
:func:`train_step`) decodes the logits to float, takes the float softmax, subtracts the one-hot labels, divides by
the batch size and encodes the result back to LNS: the one non-LNS step. :func:`output_error_lns`
(``train_step(..., lns_output=True)``) does it in the log domain (log-sum-exp as a (+)-tree of the codes of
``e^z``), needing only an LNS -> fixed-point conversion of the logits. Every other operation (all matrix products,
sums, ReLU and its mask, the SGD update) runs on LNS codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError, ShapeError
from lowbit.functional.lns import (
    Delta,
    LNSFormat,
    LNSTensor,
    add,
    add_work,
    check_delta,
    decode,
    encode,
    from_work,
    lns_sum,
    mul,
    mul_work,
    prepare_delta,
    to_work,
    tree_sum_work,
)

MAX_BLOCK = 1 << 18  # elements of one (K, M_chunk, N) product block: 1 MiB of int32 codes, cache-sized


def _matmul_work(na: torch.Tensor, a: torch.Tensor, nb: torch.Tensor, b: torch.Tensor, fmt: LNSFormat,
                 delta: Delta, table, max_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Working-form ``(M, K) x (K, N) -> (M, N)``."""
    m, k = a.shape
    n = b.shape[1]
    at, nat = a.t().contiguous(), na.t().contiguous()  # (K, M)
    chunk = max(1, max_block // max(1, k * n))
    outs_n, outs_c = [], []
    for start in range(0, m, chunk):
        sl = slice(start, start + chunk)
        # products (K, Mc, N): code adds and sign xors
        pn, pc = mul_work(nat[:, sl, None], at[:, sl, None], nb[:, None, :], b[:, None, :], fmt)
        sn, sc = tree_sum_work(pn, pc, fmt, delta, table)
        outs_n.append(sn)
        outs_c.append(sc)
    return torch.cat(outs_n), torch.cat(outs_c)


def lns_matmul(a: LNSTensor, b: LNSTensor, delta: Delta, max_block: int = MAX_BLOCK) -> LNSTensor:
    """``C[m, n] = (+)_k a[m, k] * b[k, n]``, the sum over ``k`` in :func:`~lowbit.functional.lns.lns_sum`'s
    tree order; products computed in chunks of rows of ``a`` (at most ``max_block`` products at a time)."""
    check_delta(delta)
    if a.fmt != b.fmt:
        raise ConfigError(f"lns_matmul of formats {a.fmt} and {b.fmt}: encode both operands in one format")
    if a.code.dim() != 2 or b.code.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ShapeError(f"lns_matmul needs (M, K) and (K, N) operands, got {tuple(a.shape)} and {tuple(b.shape)}")
    fmt = a.fmt
    out = _matmul_work(*to_work(a), *to_work(b), fmt, delta, prepare_delta(fmt, delta), max_block)
    return from_work(*out, fmt)


def lns_transpose(t: LNSTensor) -> LNSTensor:
    return LNSTensor(t.sign.t().contiguous(), t.code.t().contiguous(), t.fmt)


def lns_add_bias(y: LNSTensor, b: LNSTensor | None, delta: Delta) -> LNSTensor:
    """``y (+) b`` with ``b`` (N,) broadcast over the rows of ``y`` (M, N)."""
    if b is None:
        return y
    if b.shape != y.shape[-1:]:
        raise ShapeError(f"bias of shape {tuple(b.shape)} for outputs of shape {tuple(y.shape)}: pass ({y.shape[-1]},)")
    ny, cy = to_work(y)
    nb, cb = to_work(b)
    out = add_work(ny, cy, nb.expand_as(ny), cb.expand_as(cy), y.fmt, delta, prepare_delta(y.fmt, delta))
    return from_work(*out, y.fmt)


def lns_linear(x: LNSTensor, w: LNSTensor, b: LNSTensor | None, delta: Delta,
               max_block: int = MAX_BLOCK) -> LNSTensor:
    """``y = x W^T (+) b`` for ``x`` (B, K), ``w`` (N, K) (``torch.nn.functional.linear``'s layout), ``b`` (N,)."""
    if w.code.dim() != 2 or x.code.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ShapeError(f"lns_linear: input {tuple(x.shape)} and weight {tuple(w.shape)} do not fit (B, K) and "
                         "(N, K)")
    return lns_add_bias(lns_matmul(x, lns_transpose(w), delta, max_block), b, delta)


def lns_conv2d(x: LNSTensor, w: LNSTensor, b: LNSTensor | None, delta: Delta, stride: int = 1, padding: int = 0,
               max_block: int = MAX_BLOCK) -> LNSTensor:
    """2-D convolution (B, C, H, W) * (O, C, kh, kw) by im2col: unfold the patches of the codes and signs (the
    zero padding is the zero code), then :func:`lns_linear` over the ``C kh kw`` patch elements."""
    if x.code.dim() != 4 or w.code.dim() != 4 or x.shape[1] != w.shape[1]:
        raise ShapeError(f"lns_conv2d: input {tuple(x.shape)} and weight {tuple(w.shape)} do not fit (B, C, H, W) "
                         "and (O, C, kh, kw)")
    batch, _, height, width = x.shape
    out_ch, _, kh, kw = w.shape
    oh = (height + 2 * padding - kh) // stride + 1
    ow = (width + 2 * padding - kw) // stride + 1

    def patches(v: torch.Tensor, fill: int) -> torch.Tensor:  # (B*oh*ow, C*kh*kw)
        v = torch.nn.functional.pad(v, (padding,) * 4, value=fill) if padding else v
        cols = v.unfold(2, kh, stride).unfold(3, kw, stride)  # (B, C, oh, ow, kh, kw)
        return cols.permute(0, 2, 3, 1, 4, 5).reshape(batch * oh * ow, -1)

    xs = LNSTensor(patches(x.sign, 0), patches(x.code, x.fmt.zero_code), x.fmt)
    ws = LNSTensor(w.sign.reshape(out_ch, -1), w.code.reshape(out_ch, -1), w.fmt)
    y = lns_linear(xs, ws, b, delta, max_block)  # (B*oh*ow, O)
    to_nchw = lambda v: v.reshape(batch, oh, ow, out_ch).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return LNSTensor(to_nchw(y.sign), to_nchw(y.code), y.fmt)


def lns_relu(z: LNSTensor) -> tuple[LNSTensor, torch.Tensor]:
    """ReLU as a sign test: negative values become the zero code. Returns the result and the mask of positive
    inputs (the backward pass keeps the gradient where the mask holds)."""
    keep = (z.sign == 0) & (z.code != z.fmt.zero_code)
    return lns_mask(z, keep), keep


def lns_mask(t: LNSTensor, keep: torch.Tensor) -> LNSTensor:
    code = torch.where(keep, t.code, torch.full_like(t.code, t.fmt.zero_code))
    return LNSTensor(torch.where(keep, t.sign, 0).to(torch.int8), code, t.fmt)


# The MLP -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LNSMLP:
    """Weights (N_i, K_i) and biases (N_i,) of ``len(weights)`` linear layers, ReLU between them, in LNS."""

    weights: tuple[LNSTensor, ...]
    biases: tuple[LNSTensor, ...]

    @staticmethod
    def from_float(weights: list[torch.Tensor], biases: list[torch.Tensor], fmt: LNSFormat) -> "LNSMLP":
        """Encode a float MLP's parameters (e.g. ``nn.Linear`` weights) in ``fmt``."""
        return LNSMLP(tuple(encode(w, fmt) for w in weights), tuple(encode(b, fmt) for b in biases))

    def to_float(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [decode(w) for w in self.weights], [decode(b) for b in self.biases]


def mlp_forward(model: LNSMLP, x: LNSTensor, delta: Delta) -> tuple[LNSTensor, list]:
    """Logits (B, classes) and the cache for :func:`mlp_backward`: per layer (input, relu mask or None)."""
    cache = []
    h = x
    last = len(model.weights) - 1
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        z = lns_linear(h, w, b, delta)
        mask = None
        if i < last:
            z, mask = lns_relu(z)
        cache.append((h, mask))
        h = z
    return h, cache


def output_error(logits: LNSTensor, y: torch.Tensor) -> LNSTensor:
    """``(softmax(z) - onehot(y)) / B``, the gradient of the mean cross-entropy with respect to the logits.

    Not in LNS: the logits are decoded to float64, the softmax is taken in float, and the error is encoded back.
    :func:`output_error_lns` is the log-domain version.
    """
    z = decode(logits, torch.float64)
    p = torch.softmax(z, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return encode(p / len(y), logits.fmt)


def lns_to_fixed(t: LNSTensor, frac: int) -> torch.Tensor:
    """LNS -> fixed point: ``round((-1)^s 2^X * 2^frac)`` as int64, 0 for zero.

    Computed as the rounding of the exact value in float64 (in hardware: an antilog table of ``2^(f / 2^F)`` over
    the fraction ``f`` of the code, shifted by its integer part).
    """
    return torch.round(decode(t, torch.float64) * 2.0**frac).to(torch.int64)


def output_error_lns(logits: LNSTensor, y: torch.Tensor, delta: Delta) -> LNSTensor:
    """``(softmax(z) - onehot(y)) / B`` in the log domain, with one LNS -> fixed-point conversion of the logits.

    ``e^z_i`` has the log code ``c_i = round(z_i log2(e) 2^F)``: the logit as a fixed-point number (``F``
    fractional bits, :func:`lns_to_fixed`) times the integer constant ``round(log2(e) 2^16)``, shifted right by
    16 with rounding. Shift invariance of the softmax: ``c_i <- c_i - max_j c_j`` (no saturation). Then

        log-sum-exp   L = (+)_i 2^(c_i)                (a tree sum of codes, :func:`~lowbit.functional.lns.lns_sum`)
        p_i           code c_i - L, i != y              (a division is a code subtraction)
        p_y - 1       -(+)_{i != y} 2^(c_i - L)         (1 - p_y = sum of the other p_i: no log-domain subtraction,
                                                         whose Delta- is least accurate exactly when p_y -> 1)
        / B           times the LNS code of 1/B

    so every step but the conversion of the logits is LNS arithmetic with ``delta``.
    """
    fmt = logits.fmt
    zq = lns_to_fixed(logits, fmt.frac_bits)  # z * 2^F
    k = round(math.log2(math.e) * 2**16)
    c = (zq * k + (1 << 15)) >> 16  # z log2(e) 2^F, rounded
    c = c - c.amax(dim=1, keepdim=True)
    c = torch.where(c < fmt.code_min, fmt.sentinel, c).to(fmt.dtype)  # e^z below the format: zero
    pos = torch.zeros(c.shape, dtype=torch.bool)
    table = prepare_delta(fmt, delta)
    rows = torch.arange(len(y))
    _, lse = tree_sum_work(pos.t(), c.t(), fmt, delta, table)  # (B,)
    others = c.clone()
    others[rows, y] = fmt.sentinel
    _, lse_others = tree_sum_work(pos.t(), others.t(), fmt, delta, table)  # (B,): log2 sum_{i != y} e^z_i
    codes = torch.cat([c, lse_others[:, None]], dim=1) - lse[:, None]  # p_i and 1 - p_y, (B, classes + 1)
    codes = torch.where(codes < fmt.code_min, fmt.sentinel, codes)
    negs = torch.zeros(codes.shape, dtype=torch.bool)
    codes[rows, y], negs[rows, y] = codes[:, -1], True
    inv_b = to_work(encode(torch.tensor(1.0 / len(y)), fmt))
    return from_work(*mul_work(negs[:, :-1], codes[:, :-1], *inv_b, fmt), fmt)


def mlp_backward(model: LNSMLP, cache: list, err: LNSTensor, delta: Delta) -> tuple[list, list]:
    """Gradients (grad_W, grad_b) per layer, all LNS: ``grad_W = e^T h``, ``grad_b = (+)_batch e`` (tree order),
    then ``e <- (e W) masked by the previous layer's ReLU``."""
    grads_w, grads_b = [], []
    for i in range(len(model.weights) - 1, -1, -1):
        h = cache[i][0]
        grads_w.append(lns_matmul(lns_transpose(err), h, delta))  # (N, B) x (B, K)
        grads_b.append(lns_sum(err, 0, delta))
        if i > 0:
            err = lns_mask(lns_matmul(err, model.weights[i], delta), cache[i - 1][1])  # (B, N) x (N, K)
    return grads_w[::-1], grads_b[::-1]


def sgd_update(param: LNSTensor, grad: LNSTensor, lr: float, delta: Delta) -> LNSTensor:
    """``p <- p (+) ((-lr) * g)``: one LNS product (code add) and one LNS addition."""
    step = mul(encode(torch.tensor(-float(lr)), param.fmt), grad)
    return add(param, step, delta)


def train_step(model: LNSMLP, x: LNSTensor, y: torch.Tensor, lr: float, delta: Delta,
               lns_output: bool = False) -> tuple[LNSMLP, LNSTensor]:
    """One SGD step on a batch; returns the updated model and the batch's logits (before the update).

    ``lns_output``: the output error by :func:`output_error_lns` (log domain) instead of :func:`output_error`
    (float softmax)."""
    logits, cache = mlp_forward(model, x, delta)
    err = output_error_lns(logits, y, delta) if lns_output else output_error(logits, y)
    grads_w, grads_b = mlp_backward(model, cache, err, delta)
    weights = tuple(sgd_update(w, g, lr, delta) for w, g in zip(model.weights, grads_w))
    biases = tuple(sgd_update(b, g, lr, delta) for b, g in zip(model.biases, grads_b))
    return LNSMLP(weights, biases), logits


def predict(model: LNSMLP, x: LNSTensor, delta: Delta, batch: int = 500) -> torch.Tensor:
    """Class indices (argmax of the decoded logits) for ``x`` (N, K), ``batch`` rows at a time."""
    out = []
    for start in range(0, x.shape[0], batch):
        sl = slice(start, start + batch)
        logits, _ = mlp_forward(model, LNSTensor(x.sign[sl], x.code[sl], x.fmt), delta)
        out.append(decode(logits, torch.float64).argmax(dim=1))
    return torch.cat(out)

"""L2 normalisation in a quantized model: the simulation of the ``l2normalize`` op of :mod:`lowbit.integer`.

PTQ puts a :class:`QL2Normalize` in place of ``x / x.norm(dim=d, keepdim=True)`` or ``F.normalize(x, dim=d)``
(:mod:`lowbit.graph.l2norm`). While calibrating it is the float op; once :meth:`QL2Normalize.freeze` gives it its
input's grid it runs :func:`lowbit.functional.l2norm.l2_normalize_codes` on the input's codes (eval mode; training
keeps the float op, whose gradient QAT needs), and its output lies on the fixed grid ``2^-7``
(:data:`UNIT_QPARAMS`), exactly as the integer model's op computes it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats import IntFormat
from lowbit.functional.l2norm import OUT_FRAC, l2_normalize_codes, normalize_values
from lowbit.nn.qparams import QParams
from lowbit.nn.recurrent import FixedGrid

UNIT_QPARAMS = QParams(2.0 ** -OUT_FRAC, 0, IntFormat(8, signed=True, narrow=True))  # codes -127..127 on 2^-7
UNIT_GRID = FixedGrid(UNIT_QPARAMS)
MAX_INPUT_BITS = 16  # |x - z| < 2^16 keeps 2^16 x^2 within int64


class QL2Normalize(nn.Module):
    """``x / ||x||_2`` along ``dim``: the float op until frozen, then the integer arithmetic on the input's codes.

    ``eps``: None for ``x / x.norm(...)`` (a zero vector gives NaN in float), ``F.normalize``'s ``eps`` otherwise
    (a zero vector gives 0). The frozen op gives 0 for a zero vector in both cases. ``source`` names the float
    op it replaced, for messages."""

    def __init__(self, dim: int, source: str, eps: float | None = None) -> None:
        super().__init__()
        self.dim, self.source, self.eps = int(dim), source, eps
        self.input_qparams: QParams | None = None

    @property
    def frozen(self) -> bool:
        return self.input_qparams is not None

    def freeze(self, input_qparams: QParams | None) -> None:
        """Run the integer arithmetic on inputs on ``input_qparams`` from now on (eval mode). An input not on an
        integer grid of at most 16 bits leaves the op float, with a warning naming it (``to_integer`` then refuses
        it)."""
        q = input_qparams
        if q is None or not isinstance(q.fmt, IntFormat) or q.fmt.bits > MAX_INPUT_BITS:
            warnings.warn(f"lowbit: {self.source} (L2 normalisation) stays float: its input is not on an integer "
                          f"grid of at most {MAX_INPUT_BITS} bits", stacklevel=3)
            self.input_qparams = None
            return
        self.input_qparams = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_qparams is None or self.training:
            if self.eps is None:
                return x / torch.linalg.vector_norm(x, 2, dim=self.dim, keepdim=True)
            return F.normalize(x, 2.0, self.dim, self.eps)
        q = self.input_qparams
        codes = q.codes(x).to(torch.int64) - q.zero_point  # centred: the scale cancels in x / ||x||
        return normalize_values(l2_normalize_codes(codes, self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, frozen={self.frozen}, from {self.source}"


__all__ = ["MAX_INPUT_BITS", "QL2Normalize", "UNIT_GRID", "UNIT_QPARAMS"]

"""The bitwise engine: +-1 values packed 64 to a word, XNOR-popcount GEMM and convolution.

* :mod:`lowbit.bitwise.pack`: sign -> bits along K (padding bits 0) and back, in PyTorch;
* :mod:`lowbit.bitwise.reference`: the pure-PyTorch reference (GEMM, threshold epilogue, conv2d via im2col);
* :mod:`lowbit.bitwise.kernels`: the compiled kernel (AVX-512 VPOPCNTDQ, AVX2 or scalar, chosen at run time and
  named by :func:`backend`), the weight packed once into panels, the signs of float rows packed in C;
* :mod:`lowbit.bitwise.ternary`: the ternary-weight GEMM ({-1, 0, +1} as a sign and a mask bit-plane) of binary or
  ternary activations, same library and backends.
"""

from __future__ import annotations

from lowbit.bitwise import bitserial
from lowbit.bitwise.kernels import (PackedWeight, backend, backends, binary_conv2d, binary_gemm, pack_rows,
                                    pack_weight)
from lowbit.bitwise.pack import pack_bits, pack_signs, unpack_bits, unpack_signs, words
from lowbit.bitwise.reference import (binary_conv2d_reference, binary_gemm_reference, ternary_gemm_reference,
                                      threshold_from_affine, threshold_reference)
from lowbit.bitwise.ternary import PackedTernary, pack_ternary, pack_ternary_weight, ternary_gemm

__all__ = ["bitserial", "PackedTernary", "PackedWeight", "backend", "backends", "binary_conv2d", "binary_conv2d_reference",
           "binary_gemm", "binary_gemm_reference", "pack_bits", "pack_rows", "pack_signs", "pack_ternary",
           "pack_ternary_weight", "pack_weight", "ternary_gemm", "ternary_gemm_reference", "threshold_from_affine",
           "threshold_reference", "unpack_bits", "unpack_signs", "words"]

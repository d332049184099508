"""The bitwise engine: +-1 values packed 64 to a word, XNOR-popcount GEMM and convolution.

* :mod:`lowbit.bitwise.pack`: sign -> bits along K (padding bits 0) and back;
* :mod:`lowbit.bitwise.reference`: the pure-PyTorch reference (GEMM, threshold epilogue, conv2d via im2col);
* :mod:`lowbit.bitwise.kernels`: the compiled kernel (AVX-512 VPOPCNTDQ, AVX2 or scalar, chosen at run time).
"""

from __future__ import annotations

from lowbit.bitwise.kernels import backend, backends, binary_gemm
from lowbit.bitwise.pack import pack_bits, pack_signs, unpack_bits, unpack_signs, words
from lowbit.bitwise.reference import (binary_conv2d_reference, binary_gemm_reference, threshold_from_affine,
                                      threshold_reference)

__all__ = ["backend", "backends", "binary_conv2d_reference", "binary_gemm", "binary_gemm_reference", "pack_bits",
           "pack_signs", "threshold_from_affine", "threshold_reference", "unpack_bits", "unpack_signs", "words"]

"""The compiled C kernels and the one place their arguments are checked.

A layer below the simulation (``lowbit.nn``) and the integer model (``lowbit.integer``), which
both call it: :mod:`lowbit.native.cext` builds and loads ``csrc/*.c`` (requantization epilogue,
im2col, depthwise conv, the VNNI GEMM, the whole-model plan); :mod:`lowbit.native.guard` checks
every argument before a call, since the kernels trust them.
"""

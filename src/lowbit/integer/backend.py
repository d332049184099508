"""Which kernels an :class:`~lowbit.integer.model.IntegerModel` runs: one choice, one enum.

Every choice gives the same int8 codes and the same outputs, bit for bit (tests compare them);
they differ in speed and in what they need:

* ``PLAN`` (default): the whole model in one C call (:mod:`lowbit.integer.plan`) where the planner
  covers it and the input is float32; otherwise ``VNNI`` op by op.
* ``VNNI``: op by op, the prepacked AVX-512 VNNI GEMM with the epilogue fused, convolutions as
  implicit GEMM.
* ``VNNI_IM2COL``: op by op, the VNNI GEMM on an explicit im2col buffer.
* ``INT_MM``: op by op, ``torch._int_mm`` followed by the C requantization epilogue.
* ``REFERENCE``: the PyTorch reference, no C at all (:func:`lowbit.functional.requant.requantize`).

A kernel a choice needs but this machine lacks (no C compiler, no VNNI) falls back down this list,
as the library does on such machines; nothing else (no environment variable, no per-op flag)
changes the kernels.
"""

from __future__ import annotations

import enum


class Kernels(enum.Enum):
    PLAN = "plan"
    VNNI = "vnni"
    VNNI_IM2COL = "vnni-im2col"
    INT_MM = "int_mm"
    REFERENCE = "reference"

    @property
    def c(self) -> bool:
        """Uses the compiled C kernels (where the library is built)."""
        return self is not Kernels.REFERENCE

    @property
    def vnni(self) -> bool:
        """Uses the VNNI GEMM (where the CPU has it)."""
        return self in (Kernels.PLAN, Kernels.VNNI, Kernels.VNNI_IM2COL)

    @property
    def implicit_conv(self) -> bool:
        """Dense convolutions as implicit GEMM (no im2col buffer)."""
        return self is not Kernels.VNNI_IM2COL


def as_kernels(value: object) -> Kernels:
    """A :class:`Kernels` from itself or its value (``"reference"``); anything else is a ConfigError."""
    from lowbit.errors import ConfigError

    if isinstance(value, Kernels):
        return value
    try:
        return Kernels(value)
    except ValueError:
        raise ConfigError(f"kernels must be one of {[k.value for k in Kernels]} (lowbit.integer.Kernels), "
                          f"got {value!r}") from None


__all__ = ["Kernels", "as_kernels"]

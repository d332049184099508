"""Pure, stateless quantization functions; each docstring carries the maths and the paper."""

from lowbit.functional.affine import dequantize_affine, fake_quant_affine, qparams_from_range, quantize_affine
from lowbit.functional.binary import binarize, binarize_stochastic, hard_sigmoid
from lowbit.functional.bitslice import bit_slices, bitslice_l1, plain_l1
from lowbit.functional.grad_quant import grad_quantized, quantize_grad
from lowbit.functional.lsq import grad_scale, lsq_bounds, lsq_grad_scale, lsq_init_step, lsq_quantize, lsq_quantize_int
from lowbit.functional.pow2 import (
    dynamic_fixed_point,
    frac_length,
    log2_quantize,
    pow2_fake_quant,
    pow2_project,
    pow2_quantize,
    pow2_round,
    pow2_round_ste,
    pow2_scale,
)
from lowbit.functional.rounding import floor_ste, hw_stochastic_round, lfsr_sequence, round_ste, ste, stochastic_round
from lowbit.functional.ternary import (
    TernaryResult,
    ternarize,
    ternarize_twn,
    ternary_codes,
    ternary_fake_quant,
    ternary_support,
    tnt_integer_codes,
)

__all__ = [
    "TernaryResult", "binarize", "bit_slices", "bitslice_l1", "binarize_stochastic", "dequantize_affine", "dynamic_fixed_point",
    "fake_quant_affine", "floor_ste", "frac_length", "grad_quantized", "grad_scale", "hard_sigmoid", "hw_stochastic_round",
    "lfsr_sequence", "log2_quantize", "lsq_bounds", "lsq_grad_scale", "lsq_init_step", "lsq_quantize",
    "lsq_quantize_int", "plain_l1", "pow2_fake_quant", "pow2_project", "pow2_quantize", "pow2_round", "pow2_round_ste", "pow2_scale", "qparams_from_range",
    "quantize_affine", "quantize_grad", "round_ste", "ste", "stochastic_round", "ternarize", "ternarize_twn", "ternary_codes", "ternary_fake_quant",
    "ternary_support", "tnt_integer_codes",
]

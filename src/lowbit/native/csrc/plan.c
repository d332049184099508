/* A whole integer model in one call: a list of steps, each dispatched to the kernels of requant.c and gemm.c.
 *
 * At batch 1 the kernels take a few microseconds each and the Python around them (tensor allocation, layout
 * views, ctypes argument conversion) most of the rest. lowbit.integer.plan builds the step list once per input
 * shape, with every intermediate buffer allocated; lowbit_run_plan then runs the model with no Python between
 * the layers. The steps call the same kernels with the same arguments as the op-by-op path, so the results are
 * the same bytes.
 *
 * A step is a kind, buffer indices into `bufs` (-1: none, a NULL pointer) and integer arguments; the layout of
 * struct lowbit_step is mirrored by lowbit.integer.plan.Step (checked through lowbit_plan_step_size).
 */
#include <stdint.h>
#include <stddef.h>

#define STEP_BUFS 10
#define STEP_ARGS 20

struct lowbit_step {
    int64_t kind;
    int64_t buf[STEP_BUFS];
    int64_t arg[STEP_ARGS];
    double real;
};

/* step kinds: the numbering is shared with lowbit.integer.plan.Kind */
enum {
    STEP_QUANTIZE = 1,   /* buf: x f32, out i8;  arg: count, zp, lo, hi;  real: 1 / scale */
    STEP_TRANSPOSE = 2,  /* buf: x, out (bytes); arg: n, a, b: (n, a, b) -> (n, b, a) */
    STEP_PAD_FLIP = 3,   /* buf: x, out;  arg: N, H, W, C, ph, pw, pad value */
    STEP_CONV = 4,       /* buf: padded, panels, col_add, m, n, half, residual, m2, out;  arg: see run_conv */
    STEP_IM2COL = 5,     /* buf: x, out, padded scratch;  arg: N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, pad,
                          * Ho, Wo, Kp */
    STEP_PACK_A = 6,     /* buf: x, out;  arg: M, K, Kp */
    STEP_GEMM = 7,       /* buf: a, panels, col_add, m, n, half, residual, m2, out;  arg: see run_gemm */
    STEP_MAXPOOL = 8,    /* buf: x, out;  arg: N, H, W, C, kh, kw, sh, sw, ph, pw, Ho, Wo */
    STEP_DEQUANT_ROWS = 9, /* buf: acc, bias, scale, out;  arg: rows, C */
    STEP_REQUANT = 10,   /* buf: acc, bias, m, n, half, residual, m2, out;  arg: rows, C, res_zp, zp, lo, hi */
    STEP_SUM_HW = 11,    /* buf: x, out i32;  arg: N, HW, C */
    STEP_DEPTHWISE = 12, /* buf: x, weight, out i32;  arg: N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, zp, Ho, Wo */
    STEP_DEQUANT_CODES = 13, /* buf: x i8, out f32;  arg: count, zp;  real: scale (a float32 value) */
    STEP_BITS_PACK = 14,   /* buf: x i8 signs, out u64;  arg: M, K */
    STEP_BITS_IM2COL = 15, /* buf: x i8 NHWC signs, out u64;  arg: N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo */
    STEP_XNOR_GEMM = 16,   /* buf: a u64, panels, thr i32 (or none), flip u8, out;  arg: M, N, W, K, isa */
    STEP_BITS_UNPACK = 17, /* buf: bits u64, out i8;  arg: M, N */
    STEP_BITS_SERIAL = 18, /* buf: x i8, panels, a, vsum, wsum, abuf, gbuf, acc, out i32;  arg: M, K, lo, B, P, a0, N,
                            * isa */
    STEP_IM2COL_I8 = 19,   /* buf: x i8 NHWC, out i8 rows;  arg: N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, pad, Ho, Wo */
    STEP_TERNARY_GEMM = 20, /* buf: a u64 (binary rows), panels, pcm i32, out i32;  arg: M, N, W, isa */
    STEP_SUM_POOL = 21,    /* buf: x i8 NHWC, out i32 NHWC;  arg: N, H, W, C, kh, kw, sh, sw, Ho, Wo */
};

int64_t lowbit_quantize_f32(const float *x, int64_t count, float inv, float zp, float lo, float hi, int8_t *out);
void lowbit_nhwc_to_nchw(const int8_t *x, int64_t N, int64_t HW, int64_t C, int8_t *out);
void lowbit_pad_flip_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t ph, int64_t pw,
                          int8_t pad_value, uint8_t *out);
int lowbit_conv_u8s8(const uint8_t *xp, int64_t Nb, int64_t Hp, int64_t Wp, int64_t C, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t Ho, int64_t Wo, const int8_t *wp,
                      int64_t N, const int32_t *col_add, int requant, const int64_t *m, const int64_t *n,
                      const int64_t *h, const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo,
                      int64_t hi, void *out, int threads);
void lowbit_im2col_u8_into(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                           int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int8_t pad_value,
                           int64_t Ho, int64_t Wo, int64_t Kp, uint8_t *out, uint8_t *img);
void lowbit_pack_a(const int8_t *x, int64_t M, int64_t K, int64_t Kp, uint8_t *out);
int lowbit_gemm_u8s8(const uint8_t *a, int64_t M, int64_t Kp, int flip, const int8_t *wp, int64_t N,
                      const int32_t *col_add, int requant, const int64_t *m, const int64_t *n, const int64_t *h,
                      const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo, int64_t hi,
                      void *out, int threads);
void lowbit_maxpool_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                         int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t Ho, int64_t Wo, int8_t *out);
void lowbit_dequant_rows(const int32_t *acc, int64_t rows, int64_t C, const int32_t *bias, const double *scale,
                         float *out);
void lowbit_requant(const int32_t *acc, int64_t rows, int64_t C, int64_t hw, int acc_nchw, const int32_t *bias,
                    const int64_t *m, const int64_t *n, const int64_t *h, const int8_t *res, int64_t res_zp,
                    const int64_t *m2, int64_t zp, int64_t lo, int64_t hi, int8_t *out);
void lowbit_depthwise_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, const int8_t *w,
                           int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           int64_t dh, int64_t dw, int32_t zp, int64_t Ho, int64_t Wo, int32_t *out);
void lowbit_bits_pack_i8(const int8_t *x, int64_t M, int64_t K, uint64_t *out);
void lowbit_bits_unpack_i8(const uint64_t *bits, int64_t M, int64_t N, int8_t *out);
void lowbit_bits_im2col_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                             int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t Ho,
                             int64_t Wo, uint64_t *out);
int lowbit_bits_serial_gemm(const int8_t *x, int64_t M, int64_t K, int64_t lo, int64_t B, const uint64_t *panels,
                            int64_t P, const int64_t *a, int64_t a0, const int64_t *vsum, const int64_t *wsum,
                            int64_t N, int isa, uint64_t *abuf, int32_t *gbuf, int64_t *acc, int32_t *out,
                            int threads);
void lowbit_im2col_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int8_t pad_value,
                        int64_t Ho, int64_t Wo, int8_t *out);
int lowbit_xnor_gemm(const uint64_t *a, int64_t M, const uint64_t *panels, int64_t N, int64_t W, int64_t K, int isa,
                     const int32_t *thr, const uint8_t *flip, void *out, int threads);
int lowbit_ternary_gemm(const uint64_t *a, const uint64_t *amask, int64_t M, const uint64_t *panels,
                        const int32_t *pcm, int64_t N, int64_t W, int isa, int32_t *out, int threads);

/* Global sum pooling of NHWC int8 (N, HW, C) into int32 (N, C): the window sums of a global average pool,
 * as x.sum(dim=(2, 3), dtype=torch.int32) computes them (exact: |sum| < 2^31 for HW < 2^24). */
static void sum_hw_nhwc(const int8_t *x, int64_t N, int64_t HW, int64_t C, int32_t *out) {
    for (int64_t b = 0; b < N; b++) {
        int32_t *restrict o = out + b * C;
        for (int64_t c = 0; c < C; c++) o[c] = 0;
        for (int64_t p = 0; p < HW; p++) {
            const int8_t *restrict s = x + (b * HW + p) * C;
            for (int64_t c = 0; c < C; c++) o[c] += s[c];
        }
    }
}

/* The window sums of an unpadded average pool over NHWC int8 (N, H, W, C) into int32 NHWC (N, Ho, Wo, C), as the
 * op's unfold-and-sum computes them (exact: |sum| <= 128 kh kw < 2^31, checked by the guard); each output
 * pixel sums its window row by row, the C channels as one contiguous run. */
static void sum_pool_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t Ho, int64_t Wo, int32_t *out) {
    for (int64_t b = 0; b < N; b++)
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++) {
                int32_t *restrict o = out + ((b * Ho + oy) * Wo + ox) * C;
                for (int64_t c = 0; c < C; c++) o[c] = 0;
                for (int64_t ky = 0; ky < kh; ky++)
                    for (int64_t kx = 0; kx < kw; kx++) {
                        const int8_t *restrict s = x + ((b * H + oy * sh + ky) * W + ox * sw + kx) * C;
                        for (int64_t c = 0; c < C; c++) o[c] += s[c];
                    }
            }
}

/* The output dequantization of int8 codes: (float)(q - z) * s in float32, as
 * lowbit.functional.requant.dequantize_codes computes it (q - z is exact in float32; one rounding in the product). */
static void dequant_codes(const int8_t *x, int64_t count, float zp, float scale, float *out) {
    for (int64_t i = 0; i < count; i++) out[i] = ((float)x[i] - zp) * scale;
}

#define B(i) (s->buf[i] < 0 ? NULL : bufs[s->buf[i]])
#define A(i) (s->arg[i])

/* implicit-GEMM conv; arg: Nb, Hp, Wp, C, kh, kw, sh, sw, dh, dw, Ho, Wo, O, requant, res_zp, zp, lo, hi */
static int run_conv(const struct lowbit_step *s, void **bufs, int threads) {
    return lowbit_conv_u8s8(B(0), A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11), B(1), A(12),
                     B(2), (int)A(13), B(3), B(4), B(5), B(6), A(14), B(7), A(15), A(16), A(17), B(8), threads);
}

/* GEMM on packed rows; arg: M, Kp, flip, O, requant, res_zp, zp, lo, hi */
static int run_gemm(const struct lowbit_step *s, void **bufs, int threads) {
    return lowbit_gemm_u8s8(B(0), A(0), A(1), (int)A(2), B(1), A(3), B(2), (int)A(4), B(3), B(4), B(5), B(6), A(5), B(7),
                     A(6), A(7), A(8), B(8), threads);
}

/* one step; nonzero: the input holds a NaN or an infinity (1), or an unknown step kind (-1) */
static int run_step(const struct lowbit_step *s, void **bufs, int threads) {
    switch (s->kind) {
    case STEP_QUANTIZE:
        return lowbit_quantize_f32(B(0), A(0), (float)s->real, (float)A(1), (float)A(2), (float)A(3), B(1)) ? 1 : 0;
    case STEP_TRANSPOSE: lowbit_nhwc_to_nchw(B(0), A(0), A(1), A(2), B(1)); return 0;
    case STEP_PAD_FLIP: lowbit_pad_flip_nhwc(B(0), A(0), A(1), A(2), A(3), A(4), A(5), (int8_t)A(6), B(1)); return 0;
    case STEP_CONV: return run_conv(s, bufs, threads) ? -2 : 0; /* no memory for AVX2's int16 rows (-2) */
    case STEP_IM2COL:
        lowbit_im2col_u8_into(B(0), A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11),
                              (int8_t)A(12), A(13), A(14), A(15), B(1), B(2));
        return 0;
    case STEP_PACK_A: lowbit_pack_a(B(0), A(0), A(1), A(2), B(1)); return 0;
    case STEP_GEMM: return run_gemm(s, bufs, threads) ? -2 : 0;
    case STEP_MAXPOOL:
        lowbit_maxpool_nhwc(B(0), A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11), B(1));
        return 0;
    case STEP_DEQUANT_ROWS: lowbit_dequant_rows(B(0), A(0), A(1), B(1), B(2), B(3)); return 0;
    case STEP_REQUANT:
        lowbit_requant(B(0), A(0), A(1), 0, 0, B(1), B(2), B(3), B(4), B(5), A(2), B(6), A(3), A(4), A(5), B(7));
        return 0;
    case STEP_SUM_HW: sum_hw_nhwc(B(0), A(0), A(1), A(2), B(1)); return 0;
    case STEP_SUM_POOL:
        sum_pool_nhwc(B(0), A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), B(1));
        return 0;
    case STEP_DEPTHWISE:
        lowbit_depthwise_nhwc(B(0), A(0), A(1), A(2), A(3), B(1), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11),
                              (int32_t)A(12), A(13), A(14), B(2));
        return 0;
    case STEP_DEQUANT_CODES: dequant_codes(B(0), A(0), (float)A(1), (float)s->real, B(1)); return 0;
    case STEP_BITS_PACK: lowbit_bits_pack_i8(B(0), A(0), A(1), B(1)); return 0;
    case STEP_BITS_IM2COL:
        lowbit_bits_im2col_nhwc(B(0), A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11),
                                A(12), A(13), B(1));
        return 0;
    case STEP_XNOR_GEMM:  /* an instruction set this CPU lacks (-1) or no memory (-2): a failed step */
        return lowbit_xnor_gemm(B(0), A(0), B(1), A(1), A(2), A(3), (int)A(4), B(2), B(3), B(4), threads) ? -2 : 0;
    case STEP_BITS_UNPACK: lowbit_bits_unpack_i8(B(0), A(0), A(1), B(1)); return 0;
    case STEP_BITS_SERIAL:
        return lowbit_bits_serial_gemm(B(0), A(0), A(1), A(2), A(3), B(1), A(4), B(2), A(5), B(3), B(4), A(6),
                                       (int)A(7), B(5), B(6), B(7), B(8), threads) ? -2 : 0;
    case STEP_TERNARY_GEMM:
        return lowbit_ternary_gemm(B(0), NULL, A(0), B(1), B(2), A(1), A(2), (int)A(3), B(3), threads) ? -2 : 0;
    case STEP_IM2COL_I8:
        lowbit_im2col_nhwc(B(0), A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), A(10), A(11),
                           (int8_t)A(12), A(13), A(14), B(1));
        return 0;
    default: return -1;
    }
}

#undef A
#undef B

/* Run n_steps steps in order on the buffers `bufs` (the GEMMs on `threads` threads). Returns 0, or at the first
 * failing step: 1 when the input quantization met a NaN or an infinity (the caller then runs the op-by-op path,
 * which keeps PyTorch's handling of those), -1 for an unknown step kind. */
int lowbit_run_plan(const struct lowbit_step *steps, int64_t n_steps, void **bufs, int threads) {
    for (int64_t i = 0; i < n_steps; i++) {
        int rc = run_step(steps + i, bufs, threads);
        if (rc) return rc;
    }
    return 0;
}

/* sizeof(struct lowbit_step), for the Python mirror's check */
int64_t lowbit_plan_step_size(void) { return (int64_t)sizeof(struct lowbit_step); }

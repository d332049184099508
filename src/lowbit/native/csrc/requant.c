/* Fused epilogue of an int8 layer: bias, multiplier, rounding shift (ties to even), zero point, clamp, int8.
 *
 * v = (acc + bias[c]) * m[c] (+ (res - res_zp) * m2[c]);  q = round_half_even(v / 2^n[c]) + zp;  clamp(lo, hi)
 *
 * Same arithmetic as lowbit.functional.requant.requantize, element for element. Layouts:
 *   acc_nchw = 0: acc, residual and out are (rows, C) (GEMM output, channels last);
 *   acc_nchw = 1: they are (N, C, hw) (grouped convolution output).
 */
#include <stdint.h>

#include "fixed.h"

static inline int8_t rq(int64_t v, int64_t n, int64_t h, int64_t zp, int64_t lo, int64_t hi) {
    /* h = 2^(n-1) (0 for n = 0): round half to even of v / 2^n (fixed.h), branch-free (AVX-512) */
    int64_t q = lb_rshift_even(v, n, h);
    q += zp;
    q = q < lo ? lo : q;
    q = q > hi ? hi : q;
    return (int8_t)q;
}

/* one row of n_el elements; channel of element k is k (per-channel arrays indexed directly) or
 * `chan` (a constant channel, for NCHW rows). Kept free of branches so that it vectorizes. */
__attribute__((noinline)) static void row_cl(const int32_t *restrict a, const int8_t *restrict res, int64_t C, const int32_t *restrict bias,
                   const int64_t *restrict m, const int64_t *restrict n, const int64_t *restrict h,
                   int64_t res_zp, const int64_t *restrict m2, int64_t zp, int64_t lo, int64_t hi,
                   int8_t *restrict o) {
    if (res) {
        for (int64_t c = 0; c < C; c++)
            o[c] = rq(((int64_t)a[c] + bias[c]) * m[c] + ((int64_t)res[c] - res_zp) * m2[c], n[c], h[c], zp, lo, hi);
    } else {
        for (int64_t c = 0; c < C; c++)
            o[c] = rq(((int64_t)a[c] + bias[c]) * m[c], n[c], h[c], zp, lo, hi);
    }
}

__attribute__((noinline)) static void row_const(const int32_t *restrict a, const int8_t *restrict res, int64_t len, int64_t b, int64_t mc,
                      int64_t nc, int64_t hc,
                      int64_t res_zp, int64_t m2c, int64_t zp, int64_t lo, int64_t hi, int8_t *restrict o) {
    if (res) {
        for (int64_t k = 0; k < len; k++)
            o[k] = rq(((int64_t)a[k] + b) * mc + ((int64_t)res[k] - res_zp) * m2c, nc, hc, zp, lo, hi);
    } else {
        for (int64_t k = 0; k < len; k++)
            o[k] = rq(((int64_t)a[k] + b) * mc, nc, hc, zp, lo, hi);
    }
}

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

/* 8 int64 lanes of rq(): the same biased shift, with lanes where n = 0 adding nothing */
static inline __m512i rq8(__m512i v, __m512i n, __m512i h, __m512i zp, __m512i lo, __m512i hi) {
    const __m512i one = _mm512_set1_epi64(1);
    __mmask8 pos = _mm512_cmpgt_epi64_mask(h, _mm512_setzero_si512());
    __m512i bias = _mm512_mask_sub_epi64(h, pos, h, one);
    __m512i odd = _mm512_maskz_and_epi64(pos, _mm512_srav_epi64(v, n), one);
    __m512i q = _mm512_srav_epi64(_mm512_add_epi64(v, _mm512_add_epi64(bias, odd)), n);
    return _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(q, zp), lo), hi);
}

/* (rows, cols) block: acc rows of stride lda, residual/out rows of stride ldo; per-column arrays from column 0.
 * Column groups of 16 outermost so that the per-column vectors are loaded once per group. */
void lowbit_requant_block(const int32_t *acc, int64_t lda, int64_t rows, int64_t cols, const int32_t *bias,
                          const int64_t *m, const int64_t *n, const int64_t *h, const int8_t *res, int64_t res_zp,
                          const int64_t *m2, int64_t zp, int64_t lo, int64_t hi, int8_t *out, int64_t ldo) {
    const __m512i vzp = _mm512_set1_epi64(zp), vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi);
    const __m512i vrz = _mm512_set1_epi64(res_zp);
    for (int64_t j = 0; j < cols; j += 16) {
        const int64_t left = cols - j;
        const __mmask16 k = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        const __mmask8 k0 = (__mmask8)(k & 0xFF), k1 = (__mmask8)(k >> 8);
        const __m512i b = _mm512_maskz_loadu_epi32(k, bias + j);
        const __m512i b0 = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(b));
        const __m512i b1 = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(b, 1));
        const __m512i m0 = _mm512_maskz_loadu_epi64(k0, m + j), m1 = _mm512_maskz_loadu_epi64(k1, m + j + 8);
        const __m512i n0 = _mm512_maskz_loadu_epi64(k0, n + j), n1 = _mm512_maskz_loadu_epi64(k1, n + j + 8);
        const __m512i h0 = _mm512_maskz_loadu_epi64(k0, h + j), h1 = _mm512_maskz_loadu_epi64(k1, h + j + 8);
        __m512i r0 = _mm512_setzero_si512(), r1 = r0;
        if (res) {
            r0 = _mm512_maskz_loadu_epi64(k0, m2 + j);
            r1 = _mm512_maskz_loadu_epi64(k1, m2 + j + 8);
        }
        for (int64_t r = 0; r < rows; r++) {
            const __m512i a = _mm512_maskz_loadu_epi32(k, acc + r * lda + j);
            __m512i v0 = _mm512_mullo_epi64(_mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(a)), b0), m0);
            __m512i v1 = _mm512_mullo_epi64(_mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1)), b1), m1);
            if (res) {
                const __m128i rr = _mm_maskz_loadu_epi8(k, res + r * ldo + j);
                v0 = _mm512_add_epi64(v0, _mm512_mullo_epi64(_mm512_sub_epi64(_mm512_cvtepi8_epi64(rr), vrz), r0));
                v1 = _mm512_add_epi64(v1, _mm512_mullo_epi64(
                                              _mm512_sub_epi64(_mm512_cvtepi8_epi64(_mm_srli_si128(rr, 8)), vrz), r1));
            }
            const __m128i q0 = _mm512_cvtepi64_epi8(rq8(v0, n0, h0, vzp, vlo, vhi));
            const __m128i q1 = _mm512_cvtepi64_epi8(rq8(v1, n1, h1, vzp, vlo, vhi));
            _mm_mask_storeu_epi8(out + r * ldo + j, k, _mm_unpacklo_epi64(q0, q1));
        }
    }
}
#define HAVE_BLOCK 1
#else
/* the GEMM's epilogue without AVX-512: the same arithmetic, a row at a time (vectorized by the compiler) */
void lowbit_requant_block(const int32_t *acc, int64_t lda, int64_t rows, int64_t cols, const int32_t *bias,
                          const int64_t *m, const int64_t *n, const int64_t *h, const int8_t *res, int64_t res_zp,
                          const int64_t *m2, int64_t zp, int64_t lo, int64_t hi, int8_t *out, int64_t ldo) {
    for (int64_t r = 0; r < rows; r++)
        row_cl(acc + r * lda, res ? res + r * ldo : 0, cols, bias, m, n, h, res_zp, m2, zp, lo, hi, out + r * ldo);
}
#endif

void lowbit_requant(const int32_t *acc, int64_t rows, int64_t C, int64_t hw, int acc_nchw,
                    const int32_t *bias, const int64_t *m, const int64_t *n, const int64_t *h,
                    const int8_t *res, int64_t res_zp, const int64_t *m2,
                    int64_t zp, int64_t lo, int64_t hi, int8_t *out) {
    if (acc_nchw) {  /* (N, C, hw) in and out */
        for (int64_t b = 0; b < rows; b++)
            for (int64_t c = 0; c < C; c++) {
                int64_t base = (b * C + c) * hw;
                row_const(acc + base, res ? res + base : 0, hw, bias[c], m[c], n[c], h[c], res_zp, m2 ? m2[c] : 0,
                          zp, lo, hi, out + base);
            }
        return;
    }
#ifdef HAVE_BLOCK
    if (C >= 8) {  /* narrower rows waste most of each 16-lane step */
        const int64_t chunk = 256;
#pragma omp parallel for if (rows * C > (1 << 17))
        for (int64_t r = 0; r < rows; r += chunk)
            lowbit_requant_block(acc + r * C, C, rows - r < chunk ? rows - r : chunk, C, bias, m, n, h,
                                 res ? res + r * C : 0, res_zp, m2, zp, lo, hi, out + r * C, C);
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++)
        row_cl(acc + r * C, res ? res + r * C : 0, C, bias, m, n, h, res_zp, m2, zp, lo, hi, out + r * C);
}

/* im2col of an NHWC int8 tensor: out[(b*Ho + i)*Wo + j][(p*kw + q)*C + c] = x[b][i*sh - ph + p*dh][j*sw - pw + q*dw][c],
 * pad_value outside the image. One memcpy of C bytes per kernel tap. */
#include <string.h>

void lowbit_im2col_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                        int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int8_t pad_value,
                        int64_t Ho, int64_t Wo, int8_t *out) {
    int64_t row = kh * kw * C;
    for (int64_t b = 0; b < N; b++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++) {
                int8_t *o = out + ((b * Ho + i) * Wo + j) * row;
                for (int64_t p = 0; p < kh; p++) {
                    int64_t y = i * sh - ph + p * dh;
                    for (int64_t q = 0; q < kw; q++, o += C) {
                        int64_t xx = j * sw - pw + q * dw;
                        int inside = y >= 0 && y < H && xx >= 0 && xx < W;
                        if (C == 1)
                            *o = inside ? x[(b * H + y) * W + xx] : pad_value;
                        else if (!inside)
                            memset(o, pad_value, (size_t)C);
                        else
                            memcpy(o, x + ((b * H + y) * W + xx) * C, (size_t)C);
                    }
                }
            }
}

/* Depthwise conv (groups = channels, one filter each) on NHWC int8, zero-point-centred, int32 out (N*Ho*Wo, C):
 * out[(b*Ho+i)*Wo+j][c] = sum_{p,q inside} (x[b][i*sh-ph+p*dh][j*sw-pw+q*dw][c] - zp) * w[p][q][c]
 * Taps in the padding contribute (zp - zp) * w = 0 and are skipped. The inner loop runs over channels. */
void lowbit_depthwise_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, const int8_t *w,
                           int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           int64_t dh, int64_t dw, int32_t zp, int64_t Ho, int64_t Wo, int32_t *out) {
#pragma omp parallel for collapse(2) if (N * Ho * Wo * C * kh * kw > (1 << 17))
    for (int64_t b = 0; b < N; b++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++) {
                int32_t *restrict o = out + ((b * Ho + i) * Wo + j) * C;
                for (int64_t c = 0; c < C; c++) o[c] = 0;
                for (int64_t p = 0; p < kh; p++) {
                    int64_t y = i * sh - ph + p * dh;
                    if (y < 0 || y >= H) continue;
                    for (int64_t q = 0; q < kw; q++) {
                        int64_t xx = j * sw - pw + q * dw;
                        if (xx < 0 || xx >= W) continue;
                        const int8_t *restrict xr = x + ((b * H + y) * W + xx) * C;
                        const int8_t *restrict wr = w + (p * kw + q) * C;
                        for (int64_t c = 0; c < C; c++) o[c] += ((int32_t)xr[c] - zp) * (int32_t)wr[c];
                    }
                }
            }
}

/* Max pooling of NHWC int8 (no dilation): out[b][i][j][c] = max over the window inside the image of x[...][c].
 * Taps outside the image are skipped (as padding with -inf would). The inner loop over channels vectorizes. */
void lowbit_maxpool_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                         int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t Ho, int64_t Wo, int8_t *out) {
#pragma omp parallel for collapse(2) if (N * Ho * Wo * C * kh * kw > (1 << 17))
    for (int64_t b = 0; b < N; b++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++) {
                int8_t *restrict o = out + ((b * Ho + i) * Wo + j) * C;
                for (int64_t c = 0; c < C; c++) o[c] = -128;
                for (int64_t p = 0; p < kh; p++) {
                    int64_t y = i * sh - ph + p;
                    if (y < 0 || y >= H) continue;
                    for (int64_t q = 0; q < kw; q++) {
                        int64_t xx = j * sw - pw + q;
                        if (xx < 0 || xx >= W) continue;
                        const int8_t *restrict s = x + ((b * H + y) * W + xx) * C;
                        for (int64_t c = 0; c < C; c++) o[c] = s[c] > o[c] ? s[c] : o[c];
                    }
                }
            }
}

/* The network input's quantization, as PyTorch computes it: q = clamp(rint(x * inv) + zp, lo, hi) in float32
 * (rint rounds half to even in the default rounding mode), then int8. Returns the number of non-finite inputs. */
#include <math.h>
int64_t lowbit_quantize_f32(const float *x, int64_t count, float inv, float zp, float lo, float hi, int8_t *out) {
    int64_t bad = 0; /* non-finite inputs: counted, and the caller falls back to PyTorch's semantics */
    for (int64_t i = 0; i < count; i++) {
        bad += !(fabsf(x[i]) <= 3.402823466e38f);
        float v = rintf(x[i] * inv) + zp;
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
        out[i] = (int8_t)v;
    }
    return bad;
}

/* (N, HW, C) int8 -> (N, C, HW): a channels-last activation flattened in NCHW order */
void lowbit_nhwc_to_nchw(const int8_t *x, int64_t N, int64_t HW, int64_t C, int8_t *out) {
    for (int64_t b = 0; b < N; b++) {
        const int8_t *restrict s = x + b * HW * C;
        int8_t *restrict o = out + b * HW * C;
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < HW; p++) o[c * HW + p] = s[p * C + c];
    }
}

/* An output layer's floats: out[r][c] = (float)((double)(acc[r][c] + bias[c]) * scale[c]), the float64 product
 * rounded once to float32, exactly as lowbit.functional.requant.dequantize_acc computes it. */
void lowbit_dequant_rows(const int32_t *acc, int64_t rows, int64_t C, const int32_t *bias, const double *scale,
                         float *out) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < C; c++)
            out[r * C + c] = (float)((double)((int64_t)acc[r * C + c] + bias[c]) * scale[c]);
}

/* Lookup tables (lowbit.integer.ir.Table): x is (outer, C, inner) int8 codes, table row c (256 entries) maps
 * channel c; out[(o C + c) inner + i] = table[c 256 + x + 128]. A one-row table is C = 1. */
#define LB_TABLE_LOOP(T)                                                                                         \
    for (int64_t o = 0; o < outer; o++)                                                                          \
        for (int64_t c = 0; c < C; c++) {                                                                        \
            const T *t = table + c * 256 + 128;                                                                  \
            const int8_t *src = x + (o * C + c) * inner;                                                         \
            T *dst = out + (o * C + c) * inner;                                                                  \
            for (int64_t i = 0; i < inner; i++) dst[i] = t[src[i]];                                              \
        }

void lowbit_table_i8(const int8_t *x, int64_t outer, int64_t C, int64_t inner, const int8_t *table, int8_t *out) {
    LB_TABLE_LOOP(int8_t)
}

void lowbit_table_f32(const int8_t *x, int64_t outer, int64_t C, int64_t inner, const float *table, float *out) {
    LB_TABLE_LOOP(float)
}

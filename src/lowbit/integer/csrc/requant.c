/* Fused epilogue of an int8 layer: bias, multiplier, rounding shift (ties to even), zero point, clamp, int8.
 *
 * v = (acc + bias[c]) * m[c] (+ (res - res_zp) * m2[c]);  q = round_half_even(v / 2^n[c]) + zp;  clamp(lo, hi)
 *
 * Same arithmetic as lowbit.integer.arith.requantize, element for element. Layouts:
 *   acc_nchw = 0: acc, residual and out are (rows, C) (GEMM output, channels last);
 *   acc_nchw = 1: they are (N, C, hw) (grouped convolution output).
 */
#include <stdint.h>

static inline int8_t rq(int64_t v, int64_t n, int64_t h, int64_t zp, int64_t lo, int64_t hi) {
    /* h = 2^(n-1) (0 for n = 0), passed in: gcc 12 does not vectorize 1 << n for a vector n.
     * Branch-free with same-width conditionals, so that the loops below vectorize (AVX-512). */
    int64_t q = v >> n;
    int64_t r = v - (q << n);
    int64_t odd = q & 1;
    int64_t up = r > h ? 1 : 0;
    int64_t tie = (r == h && h > 0) ? odd : 0;
    q += up + tie + zp;
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

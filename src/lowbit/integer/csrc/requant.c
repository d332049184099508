/* Fused epilogue of an int8 layer: bias, multiplier, rounding shift (ties to even), zero point, clamp, int8.
 *
 * v = (acc + bias[c]) * m[c] (+ (res - res_zp) * m2[c]);  q = round_half_even(v / 2^n[c]) + zp;  clamp(lo, hi)
 *
 * Same arithmetic as lowbit.integer.arith.requantize, element for element. Layouts:
 *   acc_nchw = 0: acc, residual and out are (rows, C) (GEMM output, channels last);
 *   acc_nchw = 1: they are (N, C, hw) (grouped convolution output).
 */
#include <stdint.h>

static inline int8_t rq(int64_t v, int64_t n, int64_t zp, int64_t lo, int64_t hi) {
    int64_t q = v >> n;
    if (n > 0) {
        int64_t r = v - (q << n), half = (int64_t)1 << (n - 1);
        q += (r > half) | ((r == half) & (q & 1));
    }
    q += zp;
    q = q < lo ? lo : (q > hi ? hi : q);
    return (int8_t)q;
}

void lowbit_requant(const int32_t *acc, int64_t rows, int64_t C, int64_t hw, int acc_nchw,
                    const int32_t *bias, const int64_t *m, const int64_t *n,
                    const int8_t *res, int64_t res_zp, const int64_t *m2,
                    int64_t zp, int64_t lo, int64_t hi, int8_t *out) {
    if (acc_nchw) {  /* (N, C, hw) in and out */
        int64_t N = rows;
        for (int64_t b = 0; b < N; b++)
            for (int64_t c = 0; c < C; c++) {
                int64_t base = (b * C + c) * hw, mc = m[c], nc = n[c], bc = bias ? bias[c] : 0;
                for (int64_t k = 0; k < hw; k++) {
                    int64_t v = ((int64_t)acc[base + k] + bc) * mc;
                    if (res) v += ((int64_t)res[base + k] - res_zp) * m2[c];
                    out[base + k] = rq(v, nc, zp, lo, hi);
                }
            }
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *a = acc + r * C;
        const int8_t *rr = res ? res + r * C : 0;
        int8_t *o = out + r * C;
        for (int64_t c = 0; c < C; c++) {
            int64_t v = ((int64_t)a[c] + (bias ? bias[c] : 0)) * m[c];
            if (rr) v += ((int64_t)rr[c] - res_zp) * m2[c];
            o[c] = rq(v, n[c], zp, lo, hi);
        }
    }
}

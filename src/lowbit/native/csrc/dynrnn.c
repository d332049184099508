/* The recurrence of a dynamically quantized LSTM or GRU (lowbit.dynamic.recurrent): per step, the hidden
 * state's rows quantized on their own symmetric grids, one int8 GEMM with the packed recurrent weight
 * (lowbit_gemm_u8s8: exact int32), its float32 scaling, and the gates in float32. The input projection of
 * the whole sequence (gx) is computed before, by one GEMM in Python. Arguments are checked by
 * lowbit.native.guard.dyn_rnn_seq before the call. */
#include <math.h>
#include <stdint.h>

#include "gates.h"

int lowbit_gemm_u8s8(const uint8_t *a, int64_t M, int64_t Kp, int flip, const int8_t *wp, int64_t N,
                      const int32_t *col_add, int requant, const int64_t *m, const int64_t *n, const int64_t *h,
                      const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo, int64_t hi,
                      void *out, int threads);

/* Rows (M, K) of x -> uint8 codes q + 128 (M, Kp; padded with 128, which the zero weight panels ignore) on
 * the rows' symmetric grids rs (given: max|x| / qmax, 1 for a zero row), q = clamp(rint(x / s), -qmax, qmax): the
 * float32 operations of lowbit.functional.dynamic.quantize_rows, one by one (the clamps as selects, so that the
 * loop vectorises). */
void lowbit_quantize_rows_u8(const float *x, int64_t M, int64_t K, int64_t Kp, int64_t qmax, const float *rs,
                             uint8_t *a) {
    const float hi = (float)qmax, lo = -(float)qmax;
    for (int64_t n = 0; n < M; n++) {
        const float *restrict row = x + n * K;
        const float s = rs[n];
        uint8_t *restrict out = a + n * Kp;
        for (int64_t j = 0; j < K; j++) {
            float q = rintf(row[j] / s); /* round half to even (the default mode), as torch.round */
            q = q == q ? q : 0.0f;       /* a NaN (a state grown from a NaN input) has no code: 0, not a UB cast */
            q = q < lo ? lo : q;
            q = q > hi ? hi : q;
            out[j] = (uint8_t)((int32_t)q + 128);
        }
        for (int64_t j = K; j < Kp; j++) out[j] = 128;
    }
}

/* the grid of each row of h (N, H): rs = max|h| / qmax, 1 for a zero row */
static void row_scales(const float *h, int64_t N, int64_t H, int64_t qmax, float *rs) {
    for (int64_t n = 0; n < N; n++) {
        float amax = 0.0f;
        for (int64_t j = 0; j < H; j++) amax = fmaxf(amax, fabsf(h[n * H + j]));
        rs[n] = amax > 0.0f ? amax / (float)qmax : 1.0f;
    }
}

/* out (M, N) = (acc * rs[row]) * ws[col] + bias[col] (bias may be NULL): the float32 operations of
 * lowbit.dynamic.linear.DynamicWeight.matmul and DynamicLinear, one by one. */
void lowbit_dyn_dequant(const int32_t *acc, int64_t M, int64_t N, const float *rs, const float *ws,
                        const float *bias, float *out) {
    for (int64_t m = 0; m < M; m++) {
        const int32_t *restrict a = acc + m * N;
        float *restrict o = out + m * N;
        const float r = rs[m];
        if (bias)
            for (int64_t j = 0; j < N; j++) o[j] = (float)a[j] * r * ws[j] + bias[j];
        else
            for (int64_t j = 0; j < N; j++) o[j] = (float)a[j] * r * ws[j];
    }
}

/* pre = gx + acc (s_row s_w) + b_hh over the first `count` gate columns (vectorised: -fno-trapping-math) */
static void preacts(const float *restrict x, const int32_t *restrict acc, const float *restrict ws,
                    const float *restrict b, float rs, float *restrict pre, int64_t count) {
    for (int64_t j = 0; j < count; j++) pre[j] = x[j] + ((float)acc[j] * (rs * ws[j]) + b[j]);
}

static void lstm_gates(const float *restrict p, float *restrict c, float *restrict h, float *restrict y, int64_t H) {
    for (int64_t j = 0; j < H; j++) {
        const float cc = lb_sigmoid(p[H + j]) * c[j] + lb_sigmoid(p[j]) * lb_tanh(p[2 * H + j]);
        const float hh = lb_sigmoid(p[3 * H + j]) * lb_tanh(cc);
        c[j] = cc;
        h[j] = hh;
        y[j] = hh;
    }
}

/* p holds r and z pre-activations; the candidate's recurrent part is scaled here: n = tanh(x_n + r (W_hn h + b_hn)) */
static void gru_gates(const float *restrict p, const float *restrict xn, const int32_t *restrict an,
                      const float *restrict ws, const float *restrict b, float rs, float *restrict h,
                      float *restrict y, int64_t H) {
    for (int64_t j = 0; j < H; j++) {
        const float r = lb_sigmoid(p[j]), z = lb_sigmoid(p[H + j]);
        const float nn = lb_tanh(xn[j] + r * ((float)an[j] * (rs * ws[j]) + b[j]));
        const float hh = (1.0f - z) * nn + z * h[j];
        h[j] = hh;
        y[j] = hh;
    }
}

/* T steps of one direction. gx (T, N, G H): input projections with b_ih; wp: the packed (G H, Kp) recurrent
 * codes, corr their -128 column sums, ws their per-row scales, b_hh (G H); h (N, H) and, for the LSTM (G = 4),
 * c (N, H): the initial state in, the final state out; out (T, N, H); scratch: a (N, Kp) uint8, acc (N, G H)
 * int32, rs (N) float, pre (G H) float. Returns the GEMM's nonzero code (-2: no memory), else 0. */
int lowbit_dyn_rnn_seq(const float *gx, int64_t T, int64_t N, int64_t H, int64_t G, const int8_t *wp, int64_t Kp,
                       const int32_t *corr, const float *ws, const float *b_hh, int reverse, int64_t qmax,
                       float *h, float *c, float *out, uint8_t *a, int32_t *acc, float *rs, float *pre) {
    const int64_t GH = G * H;
    for (int64_t s = 0; s < T; s++) {
        const int64_t t = reverse ? T - 1 - s : s;
        row_scales(h, N, H, qmax, rs);
        lowbit_quantize_rows_u8(h, N, H, Kp, qmax, rs, a);
        int rc = lowbit_gemm_u8s8(a, N, Kp, 0, wp, GH, corr, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, acc, 1);
        if (rc) return rc;
        const float *x = gx + t * N * GH;
        for (int64_t n = 0; n < N; n++) {
            preacts(x + n * GH, acc + n * GH, ws, b_hh, rs[n], pre, G == 4 ? GH : 2 * H);
            float *hn = h + n * H, *yn = out + (t * N + n) * H;
            if (G == 4)
                lstm_gates(pre, c + n * H, hn, yn, H);
            else
                gru_gates(pre, x + n * GH + 2 * H, acc + n * GH + 2 * H, ws + 2 * H, b_hh + 2 * H, rs[n], hn, yn, H);
        }
    }
    return 0;
}

/* One layer of the integer LSTM (G = 4) or GRU (G = 3) of lowbit.nn.recurrent, T steps of a batch of N from a zero
 * state; the same arithmetic as lowbit.nn.recurrent.run_layer and lowbit.functional.fixed_rnn, bit for bit.
 *
 * x (T, N, I) int8 codes (x_bits 8) or int16 codes (x_bits 16, lowbit.nn.recurrent's 16-bit input grid), zero point
 * zp in x's domain; w_ih (G H, I), w_hh (G H, H) int8; per gate row r
 *   px[r] = clamp(round_even((sum_i w_ih[r, i] (x_i - zp)) m_ih[r] / 2^n_ih[r]), -2^15, 2^15 - 1) + b_ih[r]
 *   ph[r] = the same of w_hh h with m_hh, n_hh, plus b_hh[r]                          (Q.8 pre-activations)
 * then the gates from the Q.15 tables sig, tnh of 2L entries (L = 2048):
 *   LSTM  i, f, o = sig[px + ph], g = tnh[px + ph];  c = clamp(((f c + 2^14) >> 15) + ((i g + 2^18) >> 19), int16)
 *         h = clamp((o tnh[(c + 4) >> 3] + 2^22) >> 23, -127, 127)
 *   GRU   r, z = sig[px + ph];  n = tnh[px_n + ((r clamp(ph_n, int16) + 2^14) >> 15)]
 *         h = clamp((n + ((z (256 h - n) + 2^14) >> 15) + 2^7) >> 8, -127, 127)
 * The int32 accumulators hold |acc_x| <= 128 * 255 * I (int8 x), <= 127 * D * I (int16 x, D = max |x - zp| <= 65535,
 * narrow weights) and |acc_h| <= 128 * 127 * H (the guard bounds I, zp and H);
 * every gate product is below 2^31; the multipliers' products are formed in int64.
 * out (T, N, H) int8: h at every step (its last step is the final h); c (N, H) int32: the final cell (LSTM);
 * scratch: int32 of N (2 G H + max(I, H)); zeros: int8 of N H (the zero initial h). Arguments are checked by lowbit.native.guard.rnn_layer.
 * Where the int8 GEMM of gemm.c is built (AVX-512 VNNI or AVX2), both projections run on it (the input one for
 * many steps at once), with the same integer sums; otherwise, or when memory is short, the plain loops below. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fixed.h"

/* gemm.c: the int8 GEMM (AVX-512 VNNI, or AVX2 vpmaddwd; none: lowbit_gemm_isa() == 0) on packed weights */
int lowbit_gemm_isa(void);
void lowbit_pack_w(const int8_t *w, int64_t N, int64_t K, int64_t Kp, int8_t *out);
void lowbit_pack_a(const int8_t *x, int64_t M, int64_t K, int64_t Kp, uint8_t *out);
int lowbit_gemm_u8s8(const uint8_t *a, int64_t M, int64_t Kp, int flip, const int8_t *wp, int64_t N,
                      const int32_t *col_add, int requant, const int64_t *m, const int64_t *n, const int64_t *h,
                      const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo, int64_t hi,
                      void *out, int threads);

#define RNN_L 2048 /* the tables' half length: 8 * 2^8 */

static inline int32_t clamp16(int64_t v) { return (int32_t)(v < -32768 ? -32768 : v > 32767 ? 32767 : v); }

/* part[s, r] = clamp(round_even(acc m[r] / 2^n[r]), int16) + b[r], acc = sum_k w[r, k] (v[s, k] - zp), for the
 * rows r < R of w (R, K) and the N vectors s of v (N, K); a weight row is read once for all N */
static void parts(const int8_t *restrict w, int64_t R, int64_t K, const int8_t *restrict v, int64_t N, int32_t zp,
                  const int64_t *restrict m, const int64_t *restrict n, const int32_t *restrict b,
                  int16_t *restrict vc, int32_t *restrict part) {
    for (int64_t j = 0; j < N * K; j++) vc[j] = (int16_t)(v[j] - zp); /* |v - zp| <= 255: int16 products vectorize */
    for (int64_t r = 0; r < R; r++) {
        const int8_t *restrict row = w + r * K;
        const int64_t h = n[r] > 0 ? (int64_t)1 << (n[r] - 1) : 0;
        for (int64_t s = 0; s < N; s++) {
            const int16_t *restrict vs = vc + s * K;
            int32_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (int16_t)row[k] * vs[k];
            part[s * R + r] = clamp16(lb_rshift_even((int64_t)acc * m[r], n[r], h)) + b[r];
        }
    }
}

/* parts() for int16 codes v: x - zp needs 17 bits (|x - zp| <= 65535), so it is held in int32 */
static void parts16(const int8_t *restrict w, int64_t R, int64_t K, const int16_t *restrict v, int64_t N, int32_t zp,
                    const int64_t *restrict m, const int64_t *restrict n, const int32_t *restrict b,
                    int32_t *restrict vc, int32_t *restrict part) {
    for (int64_t j = 0; j < N * K; j++) vc[j] = (int32_t)v[j] - zp;
    for (int64_t r = 0; r < R; r++) {
        const int8_t *restrict row = w + r * K;
        const int64_t h = n[r] > 0 ? (int64_t)1 << (n[r] - 1) : 0;
        for (int64_t s = 0; s < N; s++) {
            const int32_t *restrict vs = vc + s * K;
            int32_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (int32_t)row[k] * vs[k];
            part[s * R + r] = clamp16(lb_rshift_even((int64_t)acc * m[r], n[r], h)) + b[r];
        }
    }
}

static void lstm_gates(const int32_t *restrict px, const int32_t *restrict ph, const int32_t *restrict sig,
                       const int32_t *restrict tnh, int64_t H, int32_t *restrict c, int8_t *restrict h) {
    for (int64_t o = 0; o < H; o++) {
        const int64_t gi = sig[lb_table_index((int64_t)px[o] + ph[o], RNN_L)];
        const int64_t gf = sig[lb_table_index((int64_t)px[H + o] + ph[H + o], RNN_L)];
        const int64_t gg = tnh[lb_table_index((int64_t)px[2 * H + o] + ph[2 * H + o], RNN_L)];
        const int64_t go = sig[lb_table_index((int64_t)px[3 * H + o] + ph[3 * H + o], RNN_L)];
        const int32_t cv = clamp16(((gf * c[o] + (1 << 14)) >> 15) + ((gi * gg + (1 << 18)) >> 19));
        c[o] = cv;
        int64_t hv = (go * tnh[lb_table_index(lb_rshift_half_up(cv, 3), RNN_L)] + (1 << 22)) >> 23;
        h[o] = (int8_t)(hv < -127 ? -127 : hv > 127 ? 127 : hv);
    }
}

static void gru_gates(const int32_t *restrict px, const int32_t *restrict ph, const int32_t *restrict sig,
                      const int32_t *restrict tnh, int64_t H, const int8_t *restrict h_prev, int8_t *restrict h) {
    for (int64_t o = 0; o < H; o++) {
        const int64_t r = sig[lb_table_index((int64_t)px[o] + ph[o], RNN_L)];
        const int64_t z = sig[lb_table_index((int64_t)px[H + o] + ph[H + o], RNN_L)];
        const int64_t hn = clamp16(ph[2 * H + o]);
        const int64_t n = tnh[lb_table_index(px[2 * H + o] + ((r * hn + (1 << 14)) >> 15), RNN_L)];
        const int64_t h15 = n + ((z * (256 * (int64_t)h_prev[o] - n) + (1 << 14)) >> 15);
        const int64_t hv = lb_rshift_half_up(h15, 8);
        h[o] = (int8_t)(hv < -127 ? -127 : hv > 127 ? 127 : hv);
    }
}

/* One projection on the GEMM: W (R, K) packed once, its sums acc = sum_k w[r, k] (v[s, k] - zp) for rows of v
 * int8 codes, as the GEMM's int32 output A W^T + col_add with A the codes flipped to unsigned (v + 128) and
 * col_add = -(128 + zp) rowsum(W); then each part rounded as in parts(). Exact integer sums: the same parts. */
typedef struct {
    int8_t *wp;       /* packed W (lowbit_pack_w) */
    int32_t *col_add; /* -(128 + zp) rowsum(W), R */
    uint8_t *a;       /* room for M_max rows of Kp unsigned codes (K % 4 != 0), else NULL */
    int32_t *acc;     /* M_max R int32 */
    int64_t *half;    /* 2^(n[r] - 1), 0 for n[r] = 0: the rounding's half */
    uint8_t *lo;      /* int16 x: the low byte plane (a holds the high one), M_max Kp */
    int32_t *acc_lo;  /* int16 x: the low plane's sums, M_max R */
    int64_t *rowsum;  /* rowsum(W), R */
    int64_t R, K, Kp;
} proj;

static void proj_free(proj *p) {
    free(p->wp);
    free(p->col_add);
    free(p->a);
    free(p->acc);
    free(p->half);
    free(p->lo);
    free(p->acc_lo);
    free(p->rowsum);
}

static int proj_init(proj *p, const int8_t *w, int64_t R, int64_t K, int32_t zp, int64_t rows, const int64_t *n) {
    p->R = R, p->K = K, p->Kp = (K + 3) / 4 * 4;
    p->wp = malloc((size_t)((R + 15) / 16 * p->Kp * 16));
    p->col_add = malloc((size_t)R * sizeof(int32_t));
    p->a = K % 4 ? malloc((size_t)(rows * p->Kp)) : NULL;
    p->acc = malloc((size_t)(rows * R) * sizeof(int32_t));
    p->half = malloc((size_t)R * sizeof(int64_t));
    if (!p->wp || !p->col_add || !p->acc || !p->half || (K % 4 && !p->a)) return 0;
    for (int64_t r = 0; r < R; r++) p->half[r] = n[r] > 0 ? (int64_t)1 << (n[r] - 1) : 0;
    p->rowsum = malloc((size_t)R * sizeof(int64_t));
    if (!p->rowsum) return 0;
    lowbit_pack_w(w, R, K, p->Kp, p->wp);
    for (int64_t r = 0; r < R; r++) {
        int64_t sum = 0;
        for (int64_t k = 0; k < K; k++) sum += w[r * K + k];
        p->rowsum[r] = sum;
        p->col_add[r] = (int32_t)(-(128 + (int64_t)zp) * sum); /* |.| <= 255 * 128 K < 2^31 (the guard bounds I, H by 2^16) */
    }
    return 1;
}

/* part[s, r] = clamp16(round_even(acc[s, r] m[r] / 2^n[r])) + b[r], row by row (contiguous: it vectorizes) */
static void round_parts(const proj *p, const int32_t *accs, int64_t M, const int64_t *restrict m,
                        const int64_t *restrict n, const int32_t *restrict b, int32_t *restrict part) {
    for (int64_t s = 0; s < M; s++) {
        const int32_t *restrict acc = accs + s * p->R;
        int32_t *restrict out = part + s * p->R;
        for (int64_t r = 0; r < p->R; r++) out[r] = clamp16(lb_rshift_even((int64_t)acc[r] * m[r], n[r], p->half[r])) + b[r];
    }
}

/* part[s, r] of the M rows v (M, K) int8, as parts() gives them */
static void proj_run(const proj *p, const int8_t *v, int64_t M, const int64_t *restrict m, const int64_t *restrict n,
                     const int32_t *restrict b, int32_t *restrict part) {
    const uint8_t *a = (const uint8_t *)v;
    if (p->a) {
        lowbit_pack_a(v, M, p->K, p->Kp, p->a);
        a = p->a;
    }
    lowbit_gemm_u8s8(a, M, p->Kp, p->a ? 0 : 1, p->wp, p->R, p->col_add, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, p->acc, 1);
    round_parts(p, p->acc, M, m, n, b, part);
}

/* The int16 x form (x_bits 16): both byte planes' rooms, and no column term (proj16_run subtracts the zero
 * point's share from rowsum(W) itself) */
static int proj16_init(proj *p, const int8_t *w, int64_t R, int64_t K, int64_t rows, const int64_t *n) {
    if (!proj_init(p, w, R, K, 0, rows, n)) return 0;
    p->a = p->a ? p->a : malloc((size_t)(rows * p->Kp));
    p->lo = malloc((size_t)(rows * p->Kp));
    p->acc_lo = malloc((size_t)(rows * R) * sizeof(int32_t));
    if (!p->a || !p->lo || !p->acc_lo) return 0;
    memset(p->col_add, 0, (size_t)R * sizeof(int32_t));
    return 1;
}

/* part[s, r] of the M rows v (M, K) of int16 codes with zero point zp: u = v + 32768 = 256 hi + lo (bytes), two
 * GEMMs of the byte planes, acc = 256 acc_hi + acc_lo - (zp + 32768) rowsum(W) = sum_k w (v - zp): exact, and in
 * int32 by the bound the guard checks; then rounded as parts16() does */
static void proj16_run(const proj *p, const int16_t *v, int64_t M, int64_t zp, const int64_t *restrict m,
                       const int64_t *restrict n, const int32_t *restrict b, int32_t *restrict part) {
    for (int64_t s = 0; s < M; s++) {
        uint8_t *restrict hi = p->a + s * p->Kp, *restrict lo = p->lo + s * p->Kp;
        for (int64_t k = 0; k < p->K; k++) {
            const uint16_t u = (uint16_t)((int32_t)v[s * p->K + k] + 32768);
            hi[k] = (uint8_t)(u >> 8);
            lo[k] = (uint8_t)(u & 255);
        }
        for (int64_t k = p->K; k < p->Kp; k++) hi[k] = lo[k] = 0;
    }
    lowbit_gemm_u8s8(p->a, M, p->Kp, 0, p->wp, p->R, p->col_add, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, p->acc, 1);
    lowbit_gemm_u8s8(p->lo, M, p->Kp, 0, p->wp, p->R, p->col_add, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, p->acc_lo, 1);
    const int64_t zu = zp + 32768;
    for (int64_t s = 0; s < M; s++) { /* the combined sums, in place of the high plane's */
        int32_t *restrict acc = p->acc + s * p->R;
        const int32_t *restrict acc_lo = p->acc_lo + s * p->R;
        for (int64_t r = 0; r < p->R; r++) acc[r] = (int32_t)(256 * (int64_t)acc[r] + acc_lo[r] - zu * p->rowsum[r]);
    }
    round_parts(p, p->acc, M, m, n, b, part);
}

#define RNN_CHUNK 256 /* input rows (steps x batch) projected by one GEMM */

static void gates_step(int64_t G, int64_t H, int64_t N, const int32_t *px, const int32_t *ph, const int32_t *sig,
                       const int32_t *tnh, int32_t *c, const int8_t *h_prev, int8_t *out_t) {
    const int64_t GH = G * H;
    for (int64_t s = 0; s < N; s++) {
        int8_t *h = out_t + s * H;
        if (G == 4)
            lstm_gates(px + s * GH, ph + s * GH, sig, tnh, H, c + s * H, h);
        else
            gru_gates(px + s * GH, ph + s * GH, sig, tnh, H, h_prev + s * H, h);
    }
}

/* The layer on the GEMM: the input projection of up to RNN_CHUNK rows (whole steps) at once (int16 x: two GEMMs of
 * its byte planes), the recurrent one step by step; returns 0 when memory is short (the caller then runs the loop
 * below). */
static int layer_gemm(const void *x, int64_t x_bits, int64_t T, int64_t N, int64_t I, int64_t H, int64_t G, int64_t zp,
                      const int8_t *w_ih, const int8_t *w_hh, const int64_t *m_ih, const int64_t *n_ih,
                      const int64_t *m_hh, const int64_t *n_hh, const int32_t *b_ih, const int32_t *b_hh,
                      const int32_t *sig, const int32_t *tnh, int8_t *out, int32_t *c, int32_t *ph,
                      const int8_t *zeros) {
    const int64_t GH = G * H, steps = N < RNN_CHUNK ? RNN_CHUNK / N : 1;
    proj pi = {0}, phh = {0};
    int32_t *px = malloc((size_t)(steps * N * GH) * sizeof(int32_t));
    int ok = px && (x_bits == 16 ? proj16_init(&pi, w_ih, GH, I, steps * N, n_ih)
                                 : proj_init(&pi, w_ih, GH, I, (int32_t)zp, steps * N, n_ih)) &&
             proj_init(&phh, w_hh, GH, H, 0, N, n_hh);
    if (ok)
        for (int64_t t0 = 0; t0 < T; t0 += steps) {
            const int64_t nt = T - t0 < steps ? T - t0 : steps;
            if (x_bits == 16)
                proj16_run(&pi, (const int16_t *)x + t0 * N * I, nt * N, zp, m_ih, n_ih, b_ih, px);
            else
                proj_run(&pi, (const int8_t *)x + t0 * N * I, nt * N, m_ih, n_ih, b_ih, px);
            for (int64_t t = t0; t < t0 + nt; t++) {
                const int8_t *h_prev = t ? out + (t - 1) * N * H : zeros;
                proj_run(&phh, h_prev, N, m_hh, n_hh, b_hh, ph);
                gates_step(G, H, N, px + (t - t0) * N * GH, ph, sig, tnh, c, h_prev, out + t * N * H);
            }
        }
    free(px);
    proj_free(&pi);
    proj_free(&phh);
    return ok;
}

void lowbit_rnn_layer(const void *x, int64_t x_bits, int64_t T, int64_t N, int64_t I, int64_t H, int64_t G, int64_t zp,
                      const int8_t *w_ih, const int8_t *w_hh, const int64_t *m_ih, const int64_t *n_ih,
                      const int64_t *m_hh, const int64_t *n_hh, const int32_t *b_ih, const int32_t *b_hh,
                      const int32_t *sig, const int32_t *tnh, int8_t *out, int32_t *c, int32_t *scratch,
                      int8_t *zeros) {
    const int64_t GH = G * H;
    int32_t *px = scratch, *ph = scratch + N * GH;
    int32_t *vc32 = scratch + 2 * N * GH; /* N max(I, H) int32: x - zp of int16 x */
    int16_t *vc = (int16_t *)vc32;         /* or N max(I, H) int16 */
    for (int64_t k = 0; k < N * H; k++) zeros[k] = 0;
    for (int64_t k = 0; k < N * H; k++) c[k] = 0;
    if (lowbit_gemm_isa() > 0 && layer_gemm(x, x_bits, T, N, I, H, G, zp, w_ih, w_hh, m_ih, n_ih, m_hh, n_hh, b_ih,
                                            b_hh, sig, tnh, out, c, ph, zeros))
        return;
    for (int64_t k = 0; k < N * H; k++) c[k] = 0; /* (a layer_gemm that ran short of memory may have begun) */
    for (int64_t t = 0; t < T; t++) {
        const int8_t *h_prev = t ? out + (t - 1) * N * H : zeros;
        if (x_bits == 16)
            parts16(w_ih, GH, I, (const int16_t *)x + t * N * I, N, (int32_t)zp, m_ih, n_ih, b_ih, vc32, px);
        else
            parts(w_ih, GH, I, (const int8_t *)x + t * N * I, N, (int32_t)zp, m_ih, n_ih, b_ih, vc, px);
        parts(w_hh, GH, H, h_prev, N, 0, m_hh, n_hh, b_hh, vc, ph);
        gates_step(G, H, N, px, ph, sig, tnh, c, h_prev, out + t * N * H);
    }
}

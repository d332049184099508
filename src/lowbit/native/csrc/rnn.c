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
 * scratch: int32 of N (2 G H + max(I, H)); zeros: int8 of N H (the zero initial h). Arguments are checked by lowbit.native.guard.rnn_layer. */
#include <stdint.h>

#include "fixed.h"

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
    for (int64_t t = 0; t < T; t++) {
        const int8_t *h_prev = t ? out + (t - 1) * N * H : zeros;
        if (x_bits == 16)
            parts16(w_ih, GH, I, (const int16_t *)x + t * N * I, N, (int32_t)zp, m_ih, n_ih, b_ih, vc32, px);
        else
            parts(w_ih, GH, I, (const int8_t *)x + t * N * I, N, (int32_t)zp, m_ih, n_ih, b_ih, vc, px);
        parts(w_hh, GH, H, h_prev, N, 0, m_hh, n_hh, b_hh, vc, ph);
        for (int64_t s = 0; s < N; s++) {
            int8_t *h = out + (t * N + s) * H;
            if (G == 4)
                lstm_gates(px + s * GH, ph + s * GH, sig, tnh, H, c + s * H, h);
            else
                gru_gates(px + s * GH, ph + s * GH, sig, tnh, H, h_prev + s * H, h);
        }
    }
}

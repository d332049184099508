/* The streaming delta RNN step (Neil, Lee, Delbruck, Liu, "Delta Networks for Optimized Recurrent
 * Network Computation", ICML 2017), batch 1, float32, as a device runs it.
 *
 * Weights are stored column-major: wx is W_ih^T, (I, G*H) row-major, so the G*H weights that input j
 * feeds are contiguous; wh is W_hh^T, (H, G*H). One step:
 *
 *   for each input j:  d = x_j - x_hat_j;  if !(|d| <= theta_x): send (j, d), x_hat_j = x_j
 *   for each hidden j: d = h_j - h_hat_j;  if !(|d| <= theta_h): send (j, d), h_hat_j = h_j
 *   acc_x += wx[j, :] * d   for the sent inputs only   (a column of W_ih, G*H contiguous floats)
 *   acc_h += wh[j, :] * d   for the sent hidden units only
 *   GRU:  r = s(ax_r + ah_r), z = s(ax_z + ah_z), n = tanh(ax_n + r ah_n), h = (1 - z) n + z h
 *   LSTM: i, f, g, o = ax + ah;  c = s(f) c + s(i) tanh(g);  h = s(o) tanh(c)
 *
 * so a step reads only the weight columns of the non-zero deltas. With dense = 1 the step is the dense
 * layer instead (acc = b + W x, every column read): the baseline with the same loops.
 *
 * state (floats): x_hat[I], h_hat[H], h[H], c[H], acc_x[G H], acc_h[G H]; counts (int64): [x columns read,
 * h columns read], added to. idx (int32) and dv (float32) are scratch of I + H + 32 elements each.
 * Returns 0, or -1 (state untouched) when x holds a NaN or an infinity. Arguments are checked by
 * lowbit.native.guard.delta_rnn_f32.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "gates.h"
#include "fixed.h"

/* acc[0..n) += w[idx[k] * n ..] * dv[k] for k < count; four columns per pass, the fused multiply-adds
 * in column order (the rounding of one column at a time). */
static void accumulate(float *restrict acc, const float *restrict w, int64_t n, const int32_t *restrict idx,
                       const float *restrict dv, int64_t count) {
    int64_t k = 0;
    for (; k + 4 <= count; k += 4) {
        const float *w0 = w + (int64_t)idx[k] * n, *w1 = w + (int64_t)idx[k + 1] * n;
        const float *w2 = w + (int64_t)idx[k + 2] * n, *w3 = w + (int64_t)idx[k + 3] * n;
        float d0 = dv[k], d1 = dv[k + 1], d2 = dv[k + 2], d3 = dv[k + 3];
        for (int64_t o = 0; o < n; o++)
            acc[o] = fmaf(w3[o], d3, fmaf(w2[o], d2, fmaf(w1[o], d1, fmaf(w0[o], d0, acc[o]))));
    }
    for (; k < count; k++) {
        const float *w0 = w + (int64_t)idx[k] * n;
        float d0 = dv[k];
        for (int64_t o = 0; o < n; o++) acc[o] = fmaf(w0[o], d0, acc[o]);
    }
}

/* The sent elements of v against its memory mem (updated); dense: every element, its value. idx and dv
 * have 16 elements of slack: the AVX-512 path stores whole vectors of the compressed slots. */
static int64_t deltas(const float *restrict v, float *restrict mem, int64_t n, float theta, int dense,
                      int32_t *restrict idx, float *restrict dv) {
    int64_t count = 0, j = 0;
    if (dense) {
        for (j = 0; j < n; j++) {
            idx[j] = (int32_t)j;
            dv[j] = v[j];
            mem[j] = v[j];
        }
        return n;
    }
#ifdef __AVX512F__
    const __m512 th = _mm512_set1_ps(theta);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; j + 16 <= n; j += 16) {
        __m512 vv = _mm512_loadu_ps(v + j), mm = _mm512_loadu_ps(mem + j);
        __m512 d = _mm512_sub_ps(vv, mm);
        __mmask16 sent = _mm512_cmp_ps_mask(_mm512_abs_ps(d), th, _CMP_NLE_UQ);  /* !(|d| <= theta) */
        _mm512_storeu_si512((void *)(idx + count), _mm512_maskz_compress_epi32(sent, iota));
        _mm512_storeu_ps(dv + count, _mm512_maskz_compress_ps(sent, d));
        _mm512_storeu_ps(mem + j, _mm512_mask_blend_ps(sent, mm, vv));
        count += __builtin_popcount((unsigned)sent);
        iota = _mm512_add_epi32(iota, step);
    }
#endif
    for (; j < n; j++) {  /* branch free: the slot is written always, kept when sent */
        float d = v[j] - mem[j];
        int sent = !(fabsf(d) <= theta);
        idx[count] = (int32_t)j;
        dv[count] = d;
        mem[j] = sent ? v[j] : mem[j];
        count += sent;
    }
    return count;
}

static void gru_gates(const float *restrict ax, const float *restrict ah, float *restrict h, int64_t H,
                      float *restrict y) {
    for (int64_t o = 0; o < H; o++) {
        float r = lb_sigmoid(ax[o] + ah[o]);
        float z = lb_sigmoid(ax[H + o] + ah[H + o]);
        float nn = lb_tanh(ax[2 * H + o] + r * ah[2 * H + o]);
        float hn = (1.0f - z) * nn + z * h[o];
        h[o] = hn;
        y[o] = hn;
    }
}

static void lstm_gates(const float *restrict ax, const float *restrict ah, float *restrict h, float *restrict c,
                       int64_t H, float *restrict y) {
    for (int64_t o = 0; o < H; o++) {
        float i = lb_sigmoid(ax[o] + ah[o]);
        float f = lb_sigmoid(ax[H + o] + ah[H + o]);
        float g = lb_tanh(ax[2 * H + o] + ah[2 * H + o]);
        float oo = lb_sigmoid(ax[3 * H + o] + ah[3 * H + o]);
        float cn = f * c[o] + i * g;
        c[o] = cn;
        float hn = oo * lb_tanh(cn);
        h[o] = hn;
        y[o] = hn;
    }
}

int lowbit_delta_rnn_f32(const float *x, int64_t T, int64_t I, int64_t H, int64_t G, const float *wx,
                         const float *wh, const float *b_ih, const float *b_hh, float *state, float theta_x,
                         float theta_h, int dense, float *y, int64_t *counts, int32_t *idx, float *dv) {
    int bad = 0;
    for (int64_t k = 0; k < T * I; k++) bad |= !(fabsf(x[k]) <= 3.40282347e+38f);
    if (bad) return -1;
    const int64_t n = G * H;
    float *x_hat = state, *h_hat = state + I, *h = h_hat + H, *c = h + H, *acc_x = c + H, *acc_h = acc_x + n;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * I;
        int64_t nx = deltas(xt, x_hat, I, theta_x, dense, idx, dv);
        int64_t nh = deltas(h, h_hat, H, theta_h, dense, idx + I + 16, dv + I + 16);
        if (dense) {
            memcpy(acc_x, b_ih, n * sizeof(float));
            memcpy(acc_h, b_hh, n * sizeof(float));
        }
        accumulate(acc_x, wx, n, idx, dv, nx);
        accumulate(acc_h, wh, n, idx + I + 16, dv + I + 16, nh);
        if (G == 3)
            gru_gates(acc_x, acc_h, h, H, y + t * H);
        else
            lstm_gates(acc_x, acc_h, h, c, H, y + t * H);
        counts[0] += nx;
        counts[1] += nh;
    }
    return 0;
}

/* ---- the fixed-point GRU: int8 weights, 16-bit activations, integer accumulators, table gates ----
 *
 * Activations (x, h, their memories and deltas) are integers in Q.F (value * 2^F; x in int16's range, held
 * in int32 like h, |h| <= 2^F); weights int8 in
 * Q.Fw; accumulators int32 in Q.(F + Fw), acc = b + W x_hat exactly (integer sums do not round).
 * A pre-activation is p = round(acc / 2^Fw) (half up, an arithmetic shift); sigmoid and tanh are read
 * from tables of 2L entries in Q.15 (sig[k] = sigma((k - L) / 2^F) * 2^15, the index clamped to
 * 0..2L-1). GRU: r, z from tables of p(ax + ah), n = tanh(p(ax_n) + (r p(ah_n) + 2^14) >> 15),
 * n_F = (n + 2^(14-F)) >> (15 - F), h = n_F + (z (h - n_F) + 2^14) >> 15. The sums are formed in
 * int64. lowbit.delta.fixed.fixed_delta_gru is the same computation in PyTorch (bit-exact).
 * state (int32): x_hat[I], h_hat[H], h[H], acc_x[3H], acc_h[3H]; idx, dv: int32 scratch of I + H + 32.
 * Arguments are checked by lowbit.native.guard.delta_gru_q.
 */
#define rshift_round lb_rshift_half_up /* fixed.h */
#define index_of lb_table_index

static int64_t deltas_q(const int32_t *restrict v, int32_t *restrict mem, int64_t n, int32_t theta,
                        int32_t *restrict idx, int32_t *restrict dv) {
    int64_t count = 0, j = 0;
#ifdef __AVX512F__
    const __m512i th = _mm512_set1_epi32(theta), step = _mm512_set1_epi32(16);
    __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; j + 16 <= n; j += 16) {
        __m512i vv = _mm512_loadu_si512((const void *)(v + j)), mm = _mm512_loadu_si512((const void *)(mem + j));
        __m512i d = _mm512_sub_epi32(vv, mm);
        __mmask16 sent = _mm512_cmpgt_epi32_mask(_mm512_abs_epi32(d), th);
        _mm512_storeu_si512((void *)(idx + count), _mm512_maskz_compress_epi32(sent, iota));
        _mm512_storeu_si512((void *)(dv + count), _mm512_maskz_compress_epi32(sent, d));
        _mm512_storeu_si512((void *)(mem + j), _mm512_mask_blend_epi32(sent, mm, vv));
        count += __builtin_popcount((unsigned)sent);
        iota = _mm512_add_epi32(iota, step);
    }
#endif
    for (; j < n; j++) {
        int32_t d = v[j] - mem[j];
        int sent = (d > theta) | (d < -theta);
        idx[count] = (int32_t)j;
        dv[count] = d;
        mem[j] = sent ? v[j] : mem[j];
        count += sent;
    }
    return count;
}

static void accumulate_q(int32_t *restrict acc, const int8_t *restrict w, int64_t n, const int32_t *restrict idx,
                         const int32_t *restrict dv, int64_t count) {
    int64_t k = 0;
    for (; k + 4 <= count; k += 4) {  /* four columns per pass over acc (integer sums: any order is exact) */
        const int8_t *w0 = w + (int64_t)idx[k] * n, *w1 = w + (int64_t)idx[k + 1] * n;
        const int8_t *w2 = w + (int64_t)idx[k + 2] * n, *w3 = w + (int64_t)idx[k + 3] * n;
        int32_t d0 = dv[k], d1 = dv[k + 1], d2 = dv[k + 2], d3 = dv[k + 3];
#pragma omp simd
        for (int64_t o = 0; o < n; o++)
            acc[o] += (int32_t)w0[o] * d0 + (int32_t)w1[o] * d1 + (int32_t)w2[o] * d2 + (int32_t)w3[o] * d3;
    }
    for (; k < count; k++) {
        const int8_t *w0 = w + (int64_t)idx[k] * n;
        int32_t d0 = dv[k];
#pragma omp simd
        for (int64_t o = 0; o < n; o++) acc[o] += (int32_t)w0[o] * d0;
    }
}

/* a step's input and hidden deltas sent and their weight columns added to the accumulators (n rows each); the
 * columns read are added to counts */
static void send_q(const int32_t *x, int64_t I, int64_t H, int64_t n, const int8_t *wx, const int8_t *wh,
                   int32_t *x_hat, int32_t *h_hat, const int32_t *h, int32_t *acc_x, int32_t *acc_h, int32_t theta_x,
                   int32_t theta_h, int64_t *counts, int32_t *idx, int32_t *dv) {
    const int64_t nx = deltas_q(x, x_hat, I, theta_x, idx, dv);
    const int64_t nh = deltas_q(h, h_hat, H, theta_h, idx + I + 16, dv + I + 16);
    accumulate_q(acc_x, wx, n, idx, dv, nx);
    accumulate_q(acc_h, wh, n, idx + I + 16, dv + I + 16, nh);
    counts[0] += nx;
    counts[1] += nh;
}

void lowbit_delta_gru_q(const int32_t *x, int64_t T, int64_t I, int64_t H, const int8_t *wx, const int8_t *wh,
                        int32_t *state, int32_t theta_x, int32_t theta_h, int64_t F, int64_t Fw, const int32_t *sig,
                        const int32_t *tnh, int64_t L, int32_t *y, int64_t *counts, int32_t *idx, int32_t *dv) {
    const int64_t n = 3 * H;
    int32_t *x_hat = state, *h_hat = state + I, *h = h_hat + H, *acc_x = h + H, *acc_h = acc_x + n;
    int32_t kr[256], kz[256], kn[256], xn[256], hn[256], r[256], z[256];  /* H <= 255 (the guard) */
    for (int64_t t = 0; t < T; t++) {
        send_q(x + t * I, I, H, n, wx, wh, x_hat, h_hat, h, acc_x, acc_h, theta_x, theta_h, counts, idx, dv);
        /* the gates in passes that vectorise: table indices, gathers, the integer update */
        for (int64_t o = 0; o < H; o++) {
            kr[o] = index_of(rshift_round((int64_t)acc_x[o] + acc_h[o], Fw), L);
            kz[o] = index_of(rshift_round((int64_t)acc_x[H + o] + acc_h[H + o], Fw), L);
            xn[o] = (int32_t)rshift_round(acc_x[2 * H + o], Fw);
            hn[o] = (int32_t)rshift_round(acc_h[2 * H + o], Fw);
        }
        for (int64_t o = 0; o < H; o++) {
            r[o] = sig[kr[o]];
            z[o] = sig[kz[o]];
        }
        for (int64_t o = 0; o < H; o++) kn[o] = index_of(xn[o] + (((int64_t)r[o] * hn[o] + (1 << 14)) >> 15), L);
        for (int64_t o = 0; o < H; o++) {
            int32_t nq = (int32_t)rshift_round(tnh[kn[o]], 15 - F);
            int32_t hv = nq + ((z[o] * (h[o] - nq) + (1 << 14)) >> 15);  /* |z (h - nq)| <= 2^15 2^15 */
            h[o] = hv;
            y[t * H + o] = hv;
        }
    }
}

/* ---- the fixed-point LSTM: as the GRU above, gates i, f, g, o in nn.LSTM's order ----
 *
 * i, f, o = sig[p], g = tanh[p] (Q.15) of p = round((acc_x + acc_h) / 2^Fw); the cell (Q.F, clamped to int16's
 * range, 16-bit like every activation) c = ((f c + 2^14) >> 15) + ((i g + 2^(29-F)) >> (30 - F)); the output
 * h = (o tanh[c] + 2^(29-F)) >> (30 - F), the table indexed by c itself (its grid is Q.F). The products are
 * formed in int64. state (int32): x_hat[I], h_hat[H], h[H], c[H], acc_x[4H], acc_h[4H]; idx, dv: int32 scratch
 * of I + H + 32. lowbit.delta.fixed.fixed_delta_lstm is the same computation in PyTorch (bit-exact).
 * Arguments are checked by lowbit.native.guard.delta_lstm_q. */
void lowbit_delta_lstm_q(const int32_t *x, int64_t T, int64_t I, int64_t H, const int8_t *wx, const int8_t *wh,
                         int32_t *state, int32_t theta_x, int32_t theta_h, int64_t F, int64_t Fw, const int32_t *sig,
                         const int32_t *tnh, int64_t L, int32_t *y, int64_t *counts, int32_t *idx, int32_t *dv) {
    const int64_t n = 4 * H, half = (int64_t)1 << (29 - F);
    int32_t *x_hat = state, *h_hat = state + I, *h = h_hat + H, *c = h + H, *acc_x = c + H, *acc_h = acc_x + n;
    for (int64_t t = 0; t < T; t++) {
        send_q(x + t * I, I, H, n, wx, wh, x_hat, h_hat, h, acc_x, acc_h, theta_x, theta_h, counts, idx, dv);
        for (int64_t o = 0; o < H; o++) {
            const int64_t gi = sig[index_of(rshift_round((int64_t)acc_x[o] + acc_h[o], Fw), L)];
            const int64_t gf = sig[index_of(rshift_round((int64_t)acc_x[H + o] + acc_h[H + o], Fw), L)];
            const int64_t gg = tnh[index_of(rshift_round((int64_t)acc_x[2 * H + o] + acc_h[2 * H + o], Fw), L)];
            const int64_t go = sig[index_of(rshift_round((int64_t)acc_x[3 * H + o] + acc_h[3 * H + o], Fw), L)];
            int64_t cv = ((gf * c[o] + (1 << 14)) >> 15) + ((gi * gg + half) >> (30 - F));
            cv = cv < -32768 ? -32768 : cv > 32767 ? 32767 : cv;
            c[o] = (int32_t)cv;
            const int32_t hv = (int32_t)((go * tnh[index_of(cv, L)] + half) >> (30 - F));
            h[o] = hv;
            y[t * H + o] = hv;
        }
    }
}

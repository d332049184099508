/* BitSplit-Net on the bitwise engine, for lowbit.bitwise.bitsplit (compiled into the bitwise library beside xnor.c).
 *
 * Threshold epilogue. g holds a layer's integer sums channels-last, (N, H, W, O) int32 (a binary layer's
 * XNOR-popcount sums, or the first layer's int8 GEMM). With pool = 1 each output pixel first takes the max over
 * its 2x2 window (stride 2, H / 2 x W / 2 outputs, as max_pool2d(2)). Per channel o, with T thresholds
 * thr[t O + o] (t < T; stored transposed so that the loops over o are contiguous and vectorize):
 *
 *     c = #{t : v >= thr[t O + o]},    value = inv[o] ? T - c : c,
 *
 * and bits b < nb of value are written, either as int8 signs (+1 set, -1 clear), out (nb, N, H', W', O)
 * (lowbit_bitsplit_threshold: the classifier's input), or packed channels-last, bit o % 64 of word o / 64 of
 * the pixel, out (nb, N, H', W', ceil(O / 64)) uint64, bits past O clear (lowbit_bitsplit_threshold_bits: the
 * next binary layer's input). lowbit.functional.bitsplit has the maths: value is the level q, or floor(q / 2^k)
 * when thr holds the levels m 2^k only, whose bit 0 is bit k of q. Both return 0, or -2 when two buffers of O
 * int32 cannot be allocated.
 *
 * im2col of packed pixels. lowbit_bitsplit_im2col turns packed pixels x (N, H, W, WP) into the rows of a 3x3
 * convolution with padding 1, out (N H W, 9 WP): tap (i, j) of row (n, y, x) is the pixel (y + i - 1, x + j - 1)'s
 * WP words, all zero (every channel -1, the bit 0) outside the image. A pure word copy: the channels past O in the
 * last word are 0 in every tap, matched by -1 weight bits (lowbit.nn.bitsplit folds their +1 products away). */

#include <stdint.h>
#include <stdlib.h>

#define INLINE static inline __attribute__((always_inline))

/* the counts value[o] of pixel p (see above) */
INLINE void counts(const int32_t *g, int64_t H, int64_t W, int64_t O, int pool, int64_t Ho, int64_t Wo, int64_t p,
                   const int32_t *thr, int64_t T, const uint8_t *inv, int32_t *v, int32_t *cnt) {
    const int64_t n = p / (Ho * Wo), r = p % (Ho * Wo), y = r / Wo, x = r % Wo;
    if (pool) {
        const int32_t *r0 = g + ((n * H + 2 * y) * W + 2 * x) * O, *r1 = r0 + O, *r2 = r0 + W * O, *r3 = r2 + O;
        for (int64_t o = 0; o < O; o++) {
            const int32_t a = r0[o] > r1[o] ? r0[o] : r1[o], b = r2[o] > r3[o] ? r2[o] : r3[o];
            v[o] = a > b ? a : b;
        }
    } else {
        const int32_t *r0 = g + p * O;
        for (int64_t o = 0; o < O; o++) v[o] = r0[o];
    }
    for (int64_t o = 0; o < O; o++) cnt[o] = 0;
    for (int64_t i = 0; i < T; i++) {
        const int32_t *t = thr + i * O;
        for (int64_t o = 0; o < O; o++) cnt[o] += v[o] >= t[o];
    }
    for (int64_t o = 0; o < O; o++) cnt[o] = inv[o] ? (int32_t)T - cnt[o] : cnt[o];
}

INLINE int run(const int32_t *g, int64_t N, int64_t H, int64_t W, int64_t O, int pool, const int32_t *thr, int64_t T,
               const uint8_t *inv, int64_t nb, int8_t *signs, uint64_t *words) {
    const int64_t Ho = pool ? H / 2 : H, Wo = pool ? W / 2 : W, P = N * Ho * Wo, WP = (O + 63) / 64;
    int32_t *v = malloc((size_t)O * sizeof(int32_t)), *cnt = malloc((size_t)O * sizeof(int32_t));
    if (!v || !cnt) {
        free(v);
        free(cnt);
        return -2;
    }
    for (int64_t p = 0; p < P; p++) {
        counts(g, H, W, O, pool, Ho, Wo, p, thr, T, inv, v, cnt);
        for (int64_t b = 0; b < nb; b++) {
            if (signs) {
                int8_t *dst = signs + (b * P + p) * O;
                for (int64_t o = 0; o < O; o++) dst[o] = (int8_t)(((cnt[o] >> b) & 1) * 2 - 1);
            } else {
                uint64_t *dst = words + (b * P + p) * WP;
                for (int64_t w = 0; w < WP; w++) {
                    const int64_t end = O - w * 64 < 64 ? O - w * 64 : 64;
                    uint64_t word = 0;
                    for (int64_t i = 0; i < end; i++) word |= (uint64_t)((cnt[w * 64 + i] >> b) & 1) << i;
                    dst[w] = word;
                }
            }
        }
    }
    free(v);
    free(cnt);
    return 0;
}

int lowbit_bitsplit_threshold(const int32_t *g, int64_t N, int64_t H, int64_t W, int64_t O, int pool,
                              const int32_t *thr, int64_t T, const uint8_t *inv, int64_t nb, int8_t *out) {
    return run(g, N, H, W, O, pool, thr, T, inv, nb, out, NULL);
}

int lowbit_bitsplit_threshold_bits(const int32_t *g, int64_t N, int64_t H, int64_t W, int64_t O, int pool,
                                   const int32_t *thr, int64_t T, const uint8_t *inv, int64_t nb, uint64_t *out) {
    return run(g, N, H, W, O, pool, thr, T, inv, nb, NULL, out);
}

void lowbit_bitsplit_im2col(const uint64_t *x, int64_t N, int64_t H, int64_t W, int64_t WP, uint64_t *out) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t y = 0; y < H; y++)
            for (int64_t xx = 0; xx < W; xx++) {
                uint64_t *row = out + ((n * H + y) * W + xx) * 9 * WP;
                for (int64_t i = 0; i < 3; i++)
                    for (int64_t j = 0; j < 3; j++) {
                        uint64_t *dst = row + (i * 3 + j) * WP;
                        const int64_t yy = y + i - 1, xj = xx + j - 1;
                        if (yy < 0 || yy >= H || xj < 0 || xj >= W) {
                            for (int64_t w = 0; w < WP; w++) dst[w] = 0;
                        } else {
                            const uint64_t *src = x + ((n * H + yy) * W + xj) * WP;
                            for (int64_t w = 0; w < WP; w++) dst[w] = src[w];
                        }
                    }
            }
}

int lowbit_xnor_gemm(const uint64_t *a, int64_t M, const uint64_t *panels, int64_t N, int64_t W, int64_t K, int isa,
                     const int32_t *thr, const uint8_t *flip, void *out, int threads);

/* The whole deployed BitSplitCNN (lowbit.nn.bitsplit.DeployedBitSplit) in one call, image by image:
 *
 *   codes p = clamp(rint(x a + b), 0, 255) of the normalised 28x28 image (float32, mul then add: no FMA);
 *   first layer: acc = sum_{3x3} p w1 (int32, zero padding; w1 stored (9, C)), 2x2 max pool, the level's nbits
 *                bits, packed;
 *   path k: two binary layers (im2col of packed words, XNOR GEMM, threshold epilogue; 2x2 max pool after the
 *           first), the second writing int8 signs into the features at k 49 2c;
 *   classifier: acc_o = (sum_i wc[o, i] s_i + wc_sum[o]) >> 1, logits = (float)acc_o sc[o] + bias[o].
 *
 * The per-path arrays hold one pointer (or count) per path. Returns 0, -1 when the XNOR kernel refuses its
 * arguments (it cannot: the wrapper checked them once when the model was built), -2 without memory. */
#define FORWARD_PARAMS                                                                                                \
    const float *x, int64_t N, float a, float b, int64_t C, int64_t nbits, const int8_t *w1, const int32_t *thr1,    \
        int64_t T1, const uint8_t *inv1, const uint64_t *const *panels2, const int32_t *const *thr2,                 \
        const int64_t *T2, const uint8_t *const *inv2, const uint64_t *const *panels3, const int32_t *const *thr3,   \
        const int64_t *T3, const uint8_t *const *inv3, int64_t NC, const int8_t *wc, const int32_t *wc_sum,          \
        const float *sc, const float *bias, int isa, float *out
#define FORWARD_ARGS                                                                                                  \
    x, N, a, b, C, nbits, w1, thr1, T1, inv1, panels2, thr2, T2, inv2, panels3, thr3, T3, inv3, NC, wc, wc_sum, sc,   \
        bias, isa, out

/* the body, inlined into a plain and an AVX2 clone (the loops around the GEMMs vectorize with the wider ISA) */
INLINE int forward(FORWARD_PARAMS) {
    const int64_t C2 = 2 * C, WP1 = (C + 63) / 64, K2 = 9 * 64 * WP1, WP2 = WP1, KF = nbits * 49 * C2;
    int32_t *p = malloc(30 * 30 * sizeof(int32_t));
    int32_t *acc = malloc((size_t)(28 * 28 * (C2 > C ? C2 : C)) * sizeof(int32_t));
    uint64_t *bits0 = malloc((size_t)(nbits * 196 * WP1) * sizeof(uint64_t));
    uint64_t *rows = malloc((size_t)(196 * 9 * WP1) * sizeof(uint64_t));
    uint64_t *bits1 = malloc((size_t)(49 * WP2) * sizeof(uint64_t));
    int8_t *feats = malloc((size_t)KF);
    int rc = 0;
    if (!p || !acc || !bits0 || !rows || !bits1 || !feats) rc = -2;
    for (int64_t n = 0; n < N && !rc; n++) {
        const float *img = x + n * 784;
        for (int64_t i = 0; i < 900; i++) p[i] = 0;  /* a padded pixel is the code 0 */
        for (int64_t y = 0; y < 28; y++)
            for (int64_t xx = 0; xx < 28; xx++) {
                volatile float t = img[y * 28 + xx] * a;  /* no fused multiply-add: torch rounds twice */
                volatile float v = t + b;
                v = v > -1.0f ? v : -1.0f;  /* also NaN -> -1 (then 0) */
                v = v < 256.0f ? v : 256.0f;
                v = v + 12582912.0f;  /* 1.5 2^23: round to the nearest integer, ties to even, as torch.round */
                v = v - 12582912.0f;
                p[(y + 1) * 30 + xx + 1] = v < 0.0f ? 0 : (v > 255.0f ? 255 : (int32_t)v);
            }
        for (int64_t y = 0; y < 28; y++)
            for (int64_t xx = 0; xx < 28; xx++) {
                int32_t *dst = acc + (y * 28 + xx) * C;
                for (int64_t o = 0; o < C; o++) dst[o] = 0;
                for (int64_t i = 0; i < 3; i++)
                    for (int64_t j = 0; j < 3; j++) {
                        const int32_t pv = p[(y + i) * 30 + xx + j];
                        const int8_t *w = w1 + (i * 3 + j) * C;  /* w1 stored (9, C): tap-major */
                        for (int64_t o = 0; o < C; o++) dst[o] += pv * w[o];
                    }
            }
        if ((rc = run(acc, 1, 28, 28, C, 1, thr1, T1, inv1, nbits, NULL, bits0))) break;
        for (int64_t k = 0; k < nbits && !rc; k++) {
            lowbit_bitsplit_im2col(bits0 + k * 196 * WP1, 1, 14, 14, WP1, rows);
            if (lowbit_xnor_gemm(rows, 196, panels2[k], C, 9 * WP1, K2, isa, NULL, NULL, acc, 1)) { rc = -1; break; }
            if ((rc = run(acc, 1, 14, 14, C, 1, thr2[k], T2[k], inv2[k], 1, NULL, bits1))) break;
            lowbit_bitsplit_im2col(bits1, 1, 7, 7, WP2, rows);
            if (lowbit_xnor_gemm(rows, 49, panels3[k], C2, 9 * WP2, K2, isa, NULL, NULL, acc, 1)) { rc = -1; break; }
            rc = run(acc, 1, 7, 7, C2, 0, thr3[k], T3[k], inv3[k], 1, feats + k * 49 * C2, NULL);
        }
        if (rc) break;
        for (int64_t o = 0; o < NC; o++) {
            const int8_t *w = wc + o * KF;
            int32_t s = 0;
            for (int64_t i = 0; i < KF; i++) s += (int32_t)w[i] * feats[i];
            volatile float t = (float)((s + wc_sum[o]) >> 1) * sc[o];
            out[n * NC + o] = t + bias[o];
        }
    }
    free(p);
    free(acc);
    free(bits0);
    free(rows);
    free(bits1);
    free(feats);
    return rc;
}

__attribute__((target("avx2"))) static int forward_avx2(FORWARD_PARAMS) { return forward(FORWARD_ARGS); }
static int forward_plain(FORWARD_PARAMS) { return forward(FORWARD_ARGS); }

int lowbit_bitsplit_forward(FORWARD_PARAMS) {
    return isa >= 1 ? forward_avx2(FORWARD_ARGS) : forward_plain(FORWARD_ARGS);  /* isa: 1 AVX2, 2 AVX-512 */
}

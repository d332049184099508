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

/* the counts value[o] of pixel p (see above) */
static void counts(const int32_t *g, int64_t H, int64_t W, int64_t O, int pool, int64_t Ho, int64_t Wo, int64_t p,
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

static int run(const int32_t *g, int64_t N, int64_t H, int64_t W, int64_t O, int pool, const int32_t *thr, int64_t T,
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

/* BitSplit-Net's threshold epilogue, for lowbit.bitwise.bitsplit (compiled into the bitwise library beside xnor.c).
 *
 * g holds a layer's integer sums channels-last, (N, H, W, O) int32 (a binary layer's XNOR-popcount sums, or the
 * first layer's int8 GEMM). With pool = 1 each output pixel first takes the max over its 2x2 window (stride 2,
 * H / 2 x W / 2 outputs, as max_pool2d(2)). Per channel o, with T thresholds thr[o T .. o T + T - 1]:
 *
 *     c = #{t : v >= thr[o T + t]},    value = inv[o] ? T - c : c,
 *
 * and out[b] (N, H', W', O) int8 is +1 where bit b of value is set, -1 where it is clear, for b < nb: the signs the
 * next binary layer packs (lowbit.functional.bitsplit has the maths: value is the level q, or floor(q / 2^k) when
 * thr holds the levels m 2^k only, whose bit 0 is bit k of q). The thresholds need not be sorted. */

#include <stdint.h>
#include <stdlib.h>

/* thr is stored transposed, (T, O): thr[t O + o], so that the loops over the channels o are contiguous and
 * vectorize. Returns 0, or -2 when the two per-pixel buffers of O int32 cannot be allocated. */
int lowbit_bitsplit_threshold(const int32_t *g, int64_t N, int64_t H, int64_t W, int64_t O, int pool,
                              const int32_t *thr, int64_t T, const uint8_t *inv, int64_t nb, int8_t *out) {
    const int64_t Ho = pool ? H / 2 : H, Wo = pool ? W / 2 : W, P = N * Ho * Wo;
    int32_t *v = malloc((size_t)O * sizeof(int32_t)), *cnt = malloc((size_t)O * sizeof(int32_t));
    if (!v || !cnt) {
        free(v);
        free(cnt);
        return -2;
    }
    for (int64_t p = 0; p < P; p++) {
        const int64_t n = p / (Ho * Wo), r = p % (Ho * Wo), y = r / Wo, x = r % Wo;
        if (pool) {
            const int32_t *r0 = g + ((n * H + 2 * y) * W + 2 * x) * O, *r1 = r0 + O, *r2 = r0 + W * O,
                          *r3 = r2 + O;
            for (int64_t o = 0; o < O; o++) {
                int32_t a = r0[o] > r1[o] ? r0[o] : r1[o];
                const int32_t b = r2[o] > r3[o] ? r2[o] : r3[o];
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
        for (int64_t b = 0; b < nb; b++) {
            int8_t *dst = out + (b * P + p) * O;
            for (int64_t o = 0; o < O; o++) dst[o] = (int8_t)(((cnt[o] >> b) & 1) * 2 - 1);
        }
    }
    free(v);
    free(cnt);
    return 0;
}

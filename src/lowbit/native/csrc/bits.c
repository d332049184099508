/* Sign codes <-> packed bits, for the binary layers of a compiled plan (lowbit.integer.planner).
 *
 * A binary activation is stored as int8 codes -1 / +1 between the ops of an integer model; the XNOR-popcount
 * GEMM (lowbit.bitwise, csrc/xnor.c, compiled into this library too) reads rows of bits, bit k % 64 of word
 * k / 64 being 1 for +1 and 0 for -1, the padding bits past K 0. These kernels convert both ways and build a
 * binary convolution's rows straight from an NHWC image (the taps outside the image are -1, bit 0), in the
 * (kh, kw, C) order of the weight rows the plan packs. With AVX-512 BW a 64-byte block is one sign mask
 * (vpmovb2m); else plain loops. Every argument is checked by lowbit.native.guard before a plan runs.
 */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512BW__
#include <immintrin.h>
#endif

/* bits of n <= 64 codes: bit i = (x[i] > 0) */
static inline uint64_t signs64(const int8_t *x, int64_t n) {
#ifdef __AVX512BW__
    const __mmask64 live = n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
    const __m512i v = _mm512_maskz_loadu_epi8(live, x);
    return (uint64_t)_mm512_mask_cmpgt_epi8_mask(live, v, _mm512_setzero_si512());
#else
    uint64_t word = 0;
    for (int64_t i = 0; i < n; i++) word |= (uint64_t)(x[i] > 0) << i;
    return word;
#endif
}

/* rows (M, K) of codes -> (M, ceil(K / 64)) words */
void lowbit_bits_pack_i8(const int8_t *x, int64_t M, int64_t K, uint64_t *out) {
    const int64_t W = (K + 63) / 64;
    for (int64_t m = 0; m < M; m++)
        for (int64_t w = 0; w < W; w++) {
            const int64_t n = K - w * 64 < 64 ? K - w * 64 : 64;
            out[m * W + w] = signs64(x + m * K + w * 64, n);
        }
}

/* (M, ceil(N / 64)) words -> codes (M, N): +1 for a set bit, -1 for a clear one */
void lowbit_bits_unpack_i8(const uint64_t *bits, int64_t M, int64_t N, int8_t *out) {
    const int64_t W = (N + 63) / 64;
    for (int64_t m = 0; m < M; m++)
        for (int64_t w = 0; w < W; w++) {
            const uint64_t word = bits[m * W + w];
            const int64_t n = N - w * 64 < 64 ? N - w * 64 : 64;
            int8_t *o = out + m * N + w * 64;
#ifdef __AVX512BW__
            const __mmask64 live = n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
            const __m512i v = _mm512_mask_blend_epi8((__mmask64)word, _mm512_set1_epi8(-1), _mm512_set1_epi8(1));
            _mm512_mask_storeu_epi8(o, live, v);
#else
            for (int64_t i = 0; i < n; i++) o[i] = (word >> i & 1) ? 1 : -1;
#endif
        }
}

/* OR the low n bits of v into the bit row at bit position pos */
static inline void put_bits(uint64_t *row, int64_t pos, uint64_t v, int64_t n) {
    const int64_t w = pos / 64, s = pos % 64;
    row[w] |= v << s;
    if (s && s + n > 64) row[w + 1] |= v >> (64 - s);
}

/* A binary convolution's rows: x NHWC codes (N, H, W, C) -> out (N Ho Wo, ceil(kh kw C / 64)) words, row
 * (n, ho, wo) holding tap (i, j) channel c at bit (i kw + j) C + c; taps in the padding are -1 (bit 0). */
void lowbit_bits_im2col_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                             int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t Ho,
                             int64_t Wo, uint64_t *out) {
    const int64_t K = kh * kw * C, words = (K + 63) / 64;
    for (int64_t n = 0; n < N; n++)
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++) {
                uint64_t *row = out + ((n * Ho + oy) * Wo + ox) * words;
                memset(row, 0, (size_t)words * sizeof(uint64_t));
                for (int64_t i = 0; i < kh; i++) {
                    const int64_t y = oy * sh - ph + i * dh;
                    if (y < 0 || y >= H) continue;
                    for (int64_t j = 0; j < kw; j++) {
                        const int64_t xx = ox * sw - pw + j * dw;
                        if (xx < 0 || xx >= W) continue;
                        const int8_t *px = x + ((n * H + y) * W + xx) * C;
                        const int64_t base = (i * kw + j) * C;
                        for (int64_t c = 0; c < C; c += 64) {
                            const int64_t cnt = C - c < 64 ? C - c : 64;
                            put_bits(row, base + c, signs64(px + c, cnt), cnt);
                        }
                    }
                }
            }
}

int lowbit_xnor_gemm(const uint64_t *a, int64_t M, const uint64_t *panels, int64_t N, int64_t W, int64_t K, int isa,
                     const int32_t *thr, const uint8_t *flip, void *out, int threads);

/* bit j of (x[i] - lo) for n <= 64 codes (x - lo in [0, 128)) */
static inline uint64_t plane64(const int8_t *x, int64_t n, int8_t lo, int64_t j) {
#ifdef __AVX512BW__
    const __mmask64 live = n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
    const __m512i u = _mm512_sub_epi8(_mm512_maskz_loadu_epi8(live, x), _mm512_set1_epi8(lo));
    return (uint64_t)_mm512_mask_test_epi8_mask(live, u, _mm512_set1_epi8((char)(1 << j)));
#else
    uint64_t word = 0;
    for (int64_t i = 0; i < n; i++) word |= (uint64_t)((((int)x[i] - lo) >> j) & 1) << i;
    return word;
#endif
}

/* Bit-serial GEMM of few-bit codes on the XNOR-popcount engine: out (M, N) int32 = sum_k x[m, k] w[n, k], the
 * same integers as an int8 GEMM of the stored codes (so every output stage of the int8 path follows).
 *
 * The input codes x (M, K) int8 lie in [lo, lo + 2^B): u = x - lo has B bit-planes b_j (bit j of u). The weight
 * codes are given as P sign planes v_p (+-1, packed in XNOR panels) with 2 w = sum_p a[p] v_p + a0 (binary:
 * v = w, a = {2}; ternary: v_1 = [w >= 0], v_0 = [w > 0], a = {1, 1}; two's complement 2-bit: v_1 = [w >= 0],
 * v_0 = [w odd], a = {2, 1}, a0 = -1). With G = K - 2 popcount(v XOR s) the XNOR GEMM of a plane against the
 * signs s = 2 b - 1, sum_k v_k b_k = (G + V) / 2 (V = sum_k v_k, vsum), and
 *
 *     4 sum_k w_k b_k = sum_p a[p] (G_p + V_p) + 2 a0 popcount(b),
 *     out = sum_j 2^j (that) / 4 + lo sum_k w_k          (wsum),
 *
 * summed in int64 and exact. abuf: M ceil(K / 64) words, gbuf: M N int32 scratch (the caller's). Returns 0, or
 * the XNOR GEMM's error (-1: instruction set, -2: memory). */
int lowbit_bits_serial_gemm(const int8_t *x, int64_t M, int64_t K, int64_t lo, int64_t B, const uint64_t *panels,
                            int64_t P, const int64_t *a, int64_t a0, const int64_t *vsum, const int64_t *wsum,
                            int64_t N, int isa, uint64_t *abuf, int32_t *gbuf, int64_t *acc, int32_t *out,
                            int threads) {
    const int64_t W = (K + 63) / 64, pw = (N + 31) / 32 * W * 32;
    memset(acc, 0, (size_t)(M * N) * sizeof(int64_t));
    for (int64_t j = 0; j < B; j++) {
        const int64_t pow2 = (int64_t)1 << j;
        for (int64_t m = 0; m < M; m++) {  /* plane j of row m, and its popcount */
            const int8_t *r = x + m * K;
            int64_t ones = 0;
            for (int64_t w = 0; w < W; w++) {
                const int64_t k0 = w * 64, n = K - k0 < 64 ? K - k0 : 64;
                abuf[m * W + w] = plane64(r + k0, n, (int8_t)lo, j);
                ones += __builtin_popcountll(abuf[m * W + w]);
            }
            if (a0)
                for (int64_t n = 0; n < N; n++) acc[m * N + n] += 2 * a0 * ones * pow2;
        }
        for (int64_t p = 0; p < P; p++) {
            const int rc = lowbit_xnor_gemm(abuf, M, panels + p * pw, N, W, K, isa, NULL, NULL, gbuf, threads);
            if (rc) return rc;
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = 0; n < N; n++)
                    acc[m * N + n] += a[p] * ((int64_t)gbuf[m * N + n] + vsum[p * N + n]) * pow2;
        }
    }
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) out[m * N + n] = (int32_t)(acc[m * N + n] / 4 + lo * wsum[n]);
    return 0;
}

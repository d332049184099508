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

/* int8 GEMM with prepacked weights on AVX-512 VNNI (vpdpbusd), or on AVX2 (vpmaddwd on int16, exact), with the
 * requantization epilogue fused.
 *
 * C[i][j] = sum_k A[i][k] * W[j][k]  for int8 A (M, K) (activations, stored codes) and int8 W (N, K).
 *
 * vpdpbusd multiplies unsigned by signed bytes, four at a time, into int32 lanes. The stored activation
 * s = q - 128 is made unsigned again by flipping its top bit (s ^ 0x80 = s + 128), so the kernel computes
 * sum (s + 128) w = C + 128 colsum(w); the caller's per-column `col_add` removes the 128 colsum(w)
 * (and adds the bias) once the whole K is summed. Products are at most 255 * 128, four per lane: exact in
 * int32, as the sum is for K <= 2^16 (2^16 * 255 * 128 = 2 139 095 040 < 2^31).
 *
 * Layouts:
 *   A: (M, Kp) row-major, Kp = K rounded up to 4, already flipped (lowbit_pack_a or lowbit_im2col_u8), or
 *   int8 stored codes with K % 4 == 0, flipped by the kernel as it broadcasts them (flip = 1);
 *   W packed (lowbit_pack_w): panels of 16 columns; panel p holds, for each group of 4 k, 16 x 4 bytes
 *   (column j's 4 consecutive k), so one 64-byte load feeds one vpdpbusd. Padding columns and k are 0.
 *
 * Blocking: a micro-kernel keeps MR x (16 NB) int32 accumulators in registers (MR <= 6, NB <= 4: 24
 * zmm) and runs the whole K. Work is split into tasks of MC rows x 64 columns over OpenMP threads.
 * The 6 x 64 tile then goes through lowbit_requant_block (requant.c) while it is in L1.
 *
 * AVX2 (no VNNI): the same packed weights and the same sums, exactly. vpmaddubsw (u8 x s8) would saturate pairs
 * of products to int16 (255 * 127 * 2 > 32767), so bytes are widened to int16 and multiplied by vpmaddwd, whose
 * pair sums (at most 2 * 255 * 128) are exact in int32. One 16-byte half of a panel group (4 columns x 4 k)
 * widens to 16 int16; the row's 4 bytes, widened and broadcast, meet it in one vpmaddwd giving 2 partial sums
 * per column, added pairwise (vphaddd) once the whole K is done. Columns are taken 8 at a time, MR rows each
 * (12 accumulators, 2 weight registers, 1 row register of 16 ymm).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void lowbit_requant_block(const int32_t *acc, int64_t lda, int64_t rows, int64_t cols, const int32_t *bias,
                          const int64_t *m, const int64_t *n, const int64_t *h, const int8_t *res, int64_t res_zp,
                          const int64_t *m2, int64_t zp, int64_t lo, int64_t hi, int8_t *out, int64_t ldo);

#define MR 6
#define NR 64
#define MC 96

/* the flip and the K padding of A */
void lowbit_pack_a(const int8_t *x, int64_t M, int64_t K, int64_t Kp, uint8_t *out) {
    for (int64_t i = 0; i < M; i++) {
        const int8_t *restrict s = x + i * K;
        uint8_t *restrict o = out + i * Kp;
        for (int64_t k = 0; k < K; k++) o[k] = (uint8_t)s[k] ^ 0x80u;
        for (int64_t k = K; k < Kp; k++) o[k] = 0;
    }
}

/* NHWC int8 (N, H, W, C) -> flipped u8 (N, H + 2 ph, W + 2 pw, C), the border filled with the flipped pad value */
void lowbit_pad_flip_nhwc(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t ph, int64_t pw,
                          int8_t pad_value, uint8_t *out) {
    const uint8_t pad = (uint8_t)pad_value ^ 0x80u;
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
#pragma omp parallel for collapse(2) if (N * Hp * Wp * C > (1 << 17))
    for (int64_t b = 0; b < N; b++)
        for (int64_t y = 0; y < Hp; y++) {
            uint8_t *restrict o = out + (b * Hp + y) * Wp * C;
            if (y < ph || y >= ph + H) {
                memset(o, pad, (size_t)(Wp * C));
                continue;
            }
            const int8_t *restrict s = x + (b * H + y - ph) * W * C;
            memset(o, pad, (size_t)(pw * C));
            for (int64_t k = 0; k < W * C; k++) o[pw * C + k] = (uint8_t)s[k] ^ 0x80u;
            memset(o + (pw + W) * C, pad, (size_t)(pw * C));
        }
}

/* copy a run of len bytes into an output row that has `room` >= len bytes left. 8 to 16 bytes: two 8-byte
 * copies, overlapping; longer: memcpy. A run shorter than 8 bytes is one 8-byte (or two 4-byte) copies when the
 * row has room, the bytes written past `len` being overwritten by the next run or by the row's zero tail; it is
 * then read up to 7 bytes past its end: the padded image has 8 bytes of slack after it. */
static inline void copy_run(uint8_t *restrict o, const uint8_t *restrict s, int64_t len, int64_t room) {
    if (len > 16) {
        memcpy(o, s, (size_t)len);
    } else if (len >= 8) {
        memcpy(o, s, 8);
        memcpy(o + len - 8, s + len - 8, 8);
    } else if (room >= 8) {
        memcpy(o, s, 8);
    } else if (len >= 4) {
        memcpy(o, s, 4);
        memcpy(o + len - 4, s + len - 4, 4);
    } else if (room >= 4) {
        memcpy(o, s, 4);
    } else {
        for (int64_t t = 0; t < len; t++) o[t] = s[t];
    }
}

/* The same run (same kernel tap, same offset in the row) for the `count` patches of one output row: patch j is
 * written at o + j Kp and read at s + j step. The common short run (the first conv of a grey image: C = 1,
 * kw = 5) gets a loop of single 8-byte copies. */
static void copy_runs(uint8_t *restrict o, int64_t Kp, const uint8_t *restrict s, int64_t step, int64_t count,
                      int64_t len, int64_t room) {
    if (len <= 8 && room >= 8) {
        for (int64_t j = 0; j < count; j++) memcpy(o + j * Kp, s + j * step, 8);
        return;
    }
    for (int64_t j = 0; j < count; j++) copy_run(o + j * Kp, s + j * step, len, room);
}

/* zero bytes K..Kp of `count` rows of Kp bytes; the usual 1..3 bytes (Kp = K rounded up to 4) by masking the
 * row's last 4-byte word rather than by a memset call per row */
static void zero_tails(uint8_t *o, int64_t Kp, int64_t K, int64_t count) {
    const int64_t tail = Kp - K;
    if (tail == 0) return;
    if (tail > 3 || Kp < 4) {
        for (int64_t j = 0; j < count; j++) memset(o + j * Kp + K, 0, (size_t)tail);
        return;
    }
    const uint8_t keep_bytes[4] = {0xFF, tail < 3 ? 0xFF : 0, tail < 2 ? 0xFF : 0, 0};
    uint32_t keep, w;
    memcpy(&keep, keep_bytes, 4);
    for (int64_t j = 0; j < count; j++) {
        memcpy(&w, o + j * Kp + Kp - 4, 4);
        w &= keep;
        memcpy(o + j * Kp + Kp - 4, &w, 4);
    }
}

/* im2col of NHWC int8 into flipped u8 rows of Kp bytes (kh*kw*C taps, then zeros), for convs the implicit GEMM
 * does not take (C % 4 != 0: a grey or RGB input layer). The image is padded and flipped once into `img`
 * (N (H + 2 ph) (W + 2 pw) C + 8 bytes); a kernel row of a patch is then kw*C contiguous bytes (dw = 1) or kw
 * runs of C bytes. Each run is copied for a whole output row of patches at once; the runs of a patch are copied
 * in increasing order, so a short run may write up to 8 bytes: the excess lands where the next run or the zeroed
 * K..Kp tail goes, always inside the patch's Kp bytes. */
void lowbit_im2col_u8_into(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                           int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int8_t pad_value,
                           int64_t Ho, int64_t Wo, int64_t Kp, uint8_t *out, uint8_t *img) {
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, K = kh * kw * C, run = dw == 1 ? kw * C : C;
    lowbit_pad_flip_nhwc(x, N, H, W, C, ph, pw, pad_value, img);
#pragma omp parallel for collapse(2) if (N * Ho * Wo * Kp > (1 << 17))
    for (int64_t b = 0; b < N; b++)
        for (int64_t i = 0; i < Ho; i++) {
            uint8_t *restrict o = out + (b * Ho + i) * Wo * Kp;
            int64_t at = 0;
            for (int64_t p = 0; p < kh; p++) {
                const uint8_t *row = img + (b * Hp + i * sh + p * dh) * Wp * C;
                for (int64_t q = 0; q < kw; q += run / C, at += run)
                    copy_runs(o + at, Kp, row + q * dw * C, sw * C, Wo, run, Kp - at);
            }
            zero_tails(o, Kp, K, Wo);
        }
}

/* lowbit_im2col_u8_into with the padded image allocated here; -1 when there is no memory for it */
int lowbit_im2col_u8(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                     int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int8_t pad_value,
                     int64_t Ho, int64_t Wo, int64_t Kp, uint8_t *out) {
    uint8_t *img = malloc((size_t)(N * (H + 2 * ph) * (W + 2 * pw) * C + 8)); /* + 8: see copy_run */
    if (!img) return -1; /* out of memory: the caller raises */
    lowbit_im2col_u8_into(x, N, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, pad_value, Ho, Wo, Kp, out, img);
    free(img);
    return 0;
}

/* W (N, K) int8 -> panels (see top); `out` has ceil(N/16) * Kp * 16 bytes */
void lowbit_pack_w(const int8_t *w, int64_t N, int64_t K, int64_t Kp, int8_t *out) {
    int64_t panels = (N + 15) / 16;
    memset(out, 0, (size_t)(panels * Kp * 16));
    for (int64_t j = 0; j < N; j++)
        for (int64_t k = 0; k < K; k++)
            out[(j / 16) * Kp * 16 + (k / 4) * 64 + (j % 16) * 4 + (k % 4)] = w[j * K + k];
}

/* the GEMM needs lowbit_requant_block (requant.c: AVX-512, or portable C) */
#if defined(__AVX512VNNI__) && defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__)
#include <immintrin.h>

int lowbit_gemm_isa(void) { return 2; } /* 2: AVX-512 VNNI, 1: AVX2, 0: none */

#define ALWAYS static inline __attribute__((always_inline))

/* rows x (16 nb) block of C into tile (MR x NR int32). Row r of A is read at base[r] + tap_off[t] + k for
 * taps t and 0 <= k < C (a dense matrix: one tap, C = Kp); b: first panel, k groups in (tap, k) order. */
ALWAYS void kernel(const int rows, const int nb, const int flip, const uint8_t *const *base, const int64_t *tap_off,
                   int64_t taps, int64_t C, const int8_t *b, int64_t Kp, int32_t *tile) {
    __m512i c[MR][4];
    const uint8_t *ar[MR];
    const int64_t panel = Kp * 16;
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nb; j++) c[r][j] = _mm512_setzero_si512();
    const int8_t *bk = b;
    for (int64_t t = 0; t < taps; t++) {
#pragma GCC unroll 6
        for (int r = 0; r < rows; r++) ar[r] = base[r] + tap_off[t];
        for (int64_t k = 0; k < C; k += 4, bk += 64) {
            __m512i bv[4];
#pragma GCC unroll 4
            for (int j = 0; j < nb; j++) {
                bv[j] = _mm512_loadu_si512((const void *)(bk + j * panel));
                __asm__("" : "+v"(bv[j])); /* keep the panel in a register: one load feeds `rows` vpdpbusd */
            }
#pragma GCC unroll 6
            for (int r = 0; r < rows; r++) {
                int32_t word;
                memcpy(&word, ar[r] + k, 4);
                __m512i av = _mm512_set1_epi32(word);
                if (flip) av = _mm512_xor_si512(av, _mm512_set1_epi32((int32_t)0x80808080u)); /* int8 rows */
#pragma GCC unroll 4
                for (int j = 0; j < nb; j++) c[r][j] = _mm512_dpbusd_epi32(c[r][j], av, bv[j]);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nb; j++) _mm512_storeu_si512((void *)(tile + r * NR + j * 16), c[r][j]);
}

/* The vpdpbusd issue rate with no memory traffic, for the benchmark's "% of peak": iters x 12 independent
 * vpdpbusd (64 MACs each). Returns a value of the accumulators so that nothing is optimised away. */
int lowbit_vnni_peak(int64_t iters) {
    __m512i c0 = _mm512_set1_epi32(1), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0,
            c9 = c0, c10 = c0, c11 = c0;
    const __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x02020202);
    for (int64_t i = 0; i < iters; i++)
        __asm__ volatile("vpdpbusd %[a], %[b], %[c0]\n vpdpbusd %[a], %[b], %[c1]\n vpdpbusd %[a], %[b], %[c2]\n"
                         "vpdpbusd %[a], %[b], %[c3]\n vpdpbusd %[a], %[b], %[c4]\n vpdpbusd %[a], %[b], %[c5]\n"
                         "vpdpbusd %[a], %[b], %[c6]\n vpdpbusd %[a], %[b], %[c7]\n vpdpbusd %[a], %[b], %[c8]\n"
                         "vpdpbusd %[a], %[b], %[c9]\n vpdpbusd %[a], %[b], %[c10]\n vpdpbusd %[a], %[b], %[c11]\n"
                         : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4), [c5] "+v"(c5),
                           [c6] "+v"(c6), [c7] "+v"(c7), [c8] "+v"(c8), [c9] "+v"(c9), [c10] "+v"(c10), [c11] "+v"(c11)
                         : [a] "v"(a), [b] "v"(b));
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
    return _mm512_reduce_add_epi32(s);
}

#define HAVE_GEMM 1

#elif defined(__AVX2__)
#include <immintrin.h>

int lowbit_gemm_isa(void) { return 1; }

#define ALWAYS static inline __attribute__((always_inline))

/* 8 columns (half `hf` of the 16-column panel at b) of `rows` rows over the whole K: see the top for the layout.
 * The rows are int16 (base and tap offsets in bytes): `widen` made them from the unsigned codes. */
ALWAYS void half8(const int rows, const uint8_t *const *base, const int64_t *tap_off, int64_t taps,
                  int64_t C, const int8_t *b, int32_t *tile) {
    __m256i c[MR][2];
    const uint8_t *ar[MR];
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++) c[r][0] = c[r][1] = _mm256_setzero_si256();
    const int8_t *bk = b;
    for (int64_t t = 0; t < taps; t++) {
#pragma GCC unroll 6
        for (int r = 0; r < rows; r++) ar[r] = base[r] + tap_off[t];
        for (int64_t k = 0; k < C; k += 4, bk += 64) {
            const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)bk));
            const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(bk + 16)));
#pragma GCC unroll 6
            for (int r = 0; r < rows; r++) {
                int64_t quad; /* 4 unsigned codes, already widened to int16 (see widen) */
                memcpy(&quad, ar[r] + 2 * k, 8);
                const __m256i av = _mm256_set1_epi64x(quad);
                c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(av, b0));
                c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(av, b1));
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++) { /* (c0 c1 c4 c5 | c2 c3 c6 c7) -> c0 .. c7 */
        const __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(c[r][0], c[r][1]), 0xD8);
        _mm256_storeu_si256((__m256i *)(tile + r * NR), s);
    }
}

ALWAYS void kernel(const int rows, const int nb, const int flip, const uint8_t *const *base, const int64_t *tap_off,
                   int64_t taps, int64_t C, const int8_t *b, int64_t Kp, int32_t *tile) {
    for (int j = 0; j < nb; j++)
        for (int hf = 0; hf < 2; hf++)
            half8(rows, base, tap_off, taps, C, b + j * Kp * 16 + hf * 32, tile + j * 16 + hf * 8);
    (void)flip; /* (the rows were flipped when widened) */
}

/* the vpmaddwd issue rate with no memory traffic: iters x 12 independent vpmaddwd + vpaddd (16 MACs each) */
int lowbit_vnni_peak(int64_t iters) {
    __m256i c[12];
    const __m256i a = _mm256_set1_epi16(3), b = _mm256_set1_epi16(5);
    for (int i = 0; i < 12; i++) c[i] = _mm256_set1_epi32(i);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) {
            c[j] = _mm256_add_epi32(c[j], _mm256_madd_epi16(a, b));
            __asm__("" : "+x"(c[j]));
        }
    }
    __m256i s = c[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_epi32(s, c[i]);
    return _mm256_extract_epi32(s, 0);
}
/* int16 copy of n unsigned codes (flipped from int8 stored codes first when flip): one broadcast load then
 * feeds a row's 4 k to vpmaddwd. O(n) work against the GEMM's O(n N); malloc'd, NULL when out of memory. */
static int16_t *widen(const uint8_t *a, int64_t n, int flip) {
    int16_t *w = malloc((size_t)(n > 0 ? n : 1) * sizeof(int16_t));
    if (!w) return 0;
    const uint8_t x = flip ? 0x80 : 0;
    for (int64_t i = 0; i < n; i++) w[i] = (int16_t)(uint8_t)(a[i] ^ x);
    return w;
}
#define ELEM 2 /* bytes per element of A as the kernel reads it */
#define HAVE_GEMM 1
#endif

#ifdef HAVE_GEMM
#ifndef ELEM
#define ELEM 1
#endif
#define K_NB(R, F)                                                              \
    switch (nb) {                                                               \
    case 1: kernel(R, 1, F, base, tap_off, taps, C, b, Kp, tile); break;        \
    case 2: kernel(R, 2, F, base, tap_off, taps, C, b, Kp, tile); break;        \
    case 3: kernel(R, 3, F, base, tap_off, taps, C, b, Kp, tile); break;        \
    default: kernel(R, 4, F, base, tap_off, taps, C, b, Kp, tile); break;       \
    }
#define K_ROWS(R)        \
    if (flip) {          \
        K_NB(R, 1);      \
    } else {             \
        K_NB(R, 0);      \
    }

static void block(int rows, int nb, int flip, const uint8_t *const *base, const int64_t *tap_off, int64_t taps,
                  int64_t C, const int8_t *b, int64_t Kp, int32_t *tile) {
    switch (rows) {
    case 1: K_ROWS(1); break;
    case 2: K_ROWS(2); break;
    case 3: K_ROWS(3); break;
    case 4: K_ROWS(4); break;
    case 5: K_ROWS(5); break;
    default: K_ROWS(6); break;
    }
}

/* Where the rows of A are: a dense (M, lda) matrix, or (conv) the implicit im2col of a padded, flipped NHWC
 * image (Hp, Wp, C), row i = output pixel (b, y, x) of an Ho x Wo grid, strides sh, sw. */
typedef struct {
    const uint8_t *x;
    int64_t lda;
    int flip; /* the rows are int8 stored codes, flipped in the kernel */
    int conv;
    int64_t Hp, Wp, C, sh, sw, Ho, Wo;
} rows_src;

static inline const uint8_t *row_base(const rows_src *s, int64_t i) {
    if (!s->conv) return s->x + i * s->lda * ELEM;
    const int64_t x = i % s->Wo, t = i / s->Wo, y = t % s->Ho, b = t / s->Ho;
    return s->x + ((b * s->Hp + y * s->sh) * s->Wp + x * s->sw) * s->C * ELEM;
}

/* C = A W^T, then per column: out32 = C + col_add (requant == 0), or
 * out8 = requant(C + col_add; m, n, h, residual, m2, zp, lo, hi) (requant == 1), both (M, N) row-major. */
static void run(const rows_src *src, const int64_t *tap_off, int64_t taps, int64_t C, int64_t M, int64_t Kp,
                const int8_t *wp, int64_t N, const int32_t *col_add, int requant, const int64_t *m, const int64_t *n,
                const int64_t *h, const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo,
                int64_t hi, void *out, int threads) {
    const int64_t mblocks = (M + MC - 1) / MC, nblocks = (N + NR - 1) / NR, tasks = mblocks * nblocks;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int32_t tile[MR * NR] __attribute__((aligned(64)));
        const uint8_t *base[MR];
        const int64_t col0 = (t % nblocks) * NR, row_end = (t / nblocks + 1) * MC < M ? (t / nblocks + 1) * MC : M;
        const int64_t cols = N - col0 < NR ? N - col0 : NR;
        const int nb = (int)((cols + 15) / 16);
        const int8_t *b = wp + (col0 / 16) * Kp * 16;
        for (int64_t r0 = (t / nblocks) * MC; r0 < row_end; r0 += MR) {
            const int rows = row_end - r0 < MR ? (int)(row_end - r0) : MR;
            for (int r = 0; r < rows; r++) base[r] = row_base(src, r0 + r);
            block(rows, nb, src->flip, base, tap_off, taps, C, b, Kp, tile);
            if (requant) {
                lowbit_requant_block(tile, NR, rows, cols, col_add + col0, m + col0, n + col0, h + col0,
                                     res ? res + r0 * N + col0 : 0, res_zp, m2 ? m2 + col0 : 0, zp, lo, hi,
                                     (int8_t *)out + r0 * N + col0, N);
                continue;
            }
            for (int r = 0; r < rows; r++) {
                int32_t *restrict o = (int32_t *)out + (r0 + r) * N + col0;
                for (int64_t c = 0; c < cols; c++) o[c] = tile[r * NR + c] + col_add[col0 + c];
            }
        }
    }
}

int lowbit_gemm_u8s8(const uint8_t *a, int64_t M, int64_t Kp, int flip, const int8_t *wp, int64_t N,
                      const int32_t *col_add, int requant, const int64_t *m, const int64_t *n, const int64_t *h,
                      const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo, int64_t hi,
                      void *out, int threads) {
    const int64_t zero = 0;
#if ELEM == 2
    int16_t *wide = widen(a, M * Kp, flip);
    if (!wide) return -2; /* out of memory: the caller raises */
    const rows_src src = {(const uint8_t *)wide, Kp, 0, 0, 0, 0, 0, 0, 0, 0, 0};
#else
    const rows_src src = {a, Kp, flip, 0, 0, 0, 0, 0, 0, 0, 0};
#endif
    run(&src, &zero, 1, Kp, M, Kp, wp, N, col_add, requant, m, n, h, res, res_zp, m2, zp, lo, hi, out, threads);
#if ELEM == 2
    free(wide);
#endif
    return 0;
}

/* Dense convolution without an im2col buffer: xp is the padded, flipped NHWC image (lowbit_pad_flip_nhwc),
 * C a multiple of 4, the weight packed with K in (kh, kw, C) order; out as lowbit_gemm_u8s8 with
 * M = N Ho Wo rows (channels-last). */
int lowbit_conv_u8s8(const uint8_t *xp, int64_t Nb, int64_t Hp, int64_t Wp, int64_t C, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t Ho, int64_t Wo, const int8_t *wp,
                      int64_t N, const int32_t *col_add, int requant, const int64_t *m, const int64_t *n,
                      const int64_t *h, const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo,
                      int64_t hi, void *out, int threads) {
    int64_t tap_off[256];
    if (kh * kw > 256 || C % 4) return -1; /* refused by the caller */
    for (int64_t p = 0; p < kh; p++)
        for (int64_t q = 0; q < kw; q++) tap_off[p * kw + q] = (p * dh * Wp + q * dw) * C * ELEM;
#if ELEM == 2
    int16_t *wide = widen(xp, Nb * Hp * Wp * C, 0);
    if (!wide) return -2;
    const rows_src src = {(const uint8_t *)wide, 0, 0, 1, Hp, Wp, C, sh, sw, Ho, Wo};
#else
    const rows_src src = {xp, 0, 0, 1, Hp, Wp, C, sh, sw, Ho, Wo};
#endif
    run(&src, tap_off, kh * kw, C, Nb * Ho * Wo, kh * kw * C, wp, N, col_add, requant, m, n, h, res, res_zp, m2,
        zp, lo, hi, out, threads);
#if ELEM == 2
    free(wide);
#endif
    return 0;
}

#else
int lowbit_vnni_peak(int64_t iters) { (void)iters; return 0; }
int lowbit_gemm_isa(void) { return 0; }

int lowbit_gemm_u8s8(const uint8_t *a, int64_t M, int64_t Kp, int flip, const int8_t *wp, int64_t N,
                      const int32_t *col_add, int requant, const int64_t *m, const int64_t *n, const int64_t *h,
                      const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo, int64_t hi,
                      void *out, int threads) {
    (void)a; (void)M; (void)Kp; (void)flip; (void)wp; (void)N; (void)col_add; (void)requant; (void)m; (void)n; (void)h;
    (void)res; (void)res_zp; (void)m2; (void)zp; (void)lo; (void)hi; (void)out; (void)threads;
    return -1;
}

int lowbit_conv_u8s8(const uint8_t *xp, int64_t Nb, int64_t Hp, int64_t Wp, int64_t C, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t Ho, int64_t Wo, const int8_t *wp,
                      int64_t N, const int32_t *col_add, int requant, const int64_t *m, const int64_t *n,
                      const int64_t *h, const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo,
                      int64_t hi, void *out, int threads) {
    (void)xp; (void)Nb; (void)Hp; (void)Wp; (void)C; (void)kh; (void)kw; (void)sh; (void)sw; (void)dh; (void)dw;
    (void)Ho; (void)Wo; (void)wp; (void)N; (void)col_add; (void)requant; (void)m; (void)n; (void)h; (void)res;
    (void)res_zp; (void)m2; (void)zp; (void)lo; (void)hi; (void)out; (void)threads;
    return -1;
}
#endif

/* int8 GEMM with prepacked weights on AVX-512 VNNI (vpdpbusd), with the requantization epilogue fused.
 *
 * C[i][j] = sum_k A[i][k] * W[j][k]  for int8 A (M, K) (activations, stored codes) and int8 W (N, K).
 *
 * vpdpbusd multiplies unsigned by signed bytes, four at a time, into int32 lanes. The stored activation
 * s = q - 128 is made unsigned again by flipping its top bit (s ^ 0x80 = s + 128), so the kernel computes
 * sum (s + 128) w = C + 128 colsum(w); the caller's per-column `col_add` removes the 128 colsum(w)
 * (and adds the bias). Products are at most 255 * 128, four per lane: exact in int32, as the sum is
 * for K < 2^16.
 *
 * Layouts:
 *   A_u8: (M, Kp) row-major, Kp = K rounded up to 4, already flipped (lowbit_pack_a or lowbit_im2col_u8);
 *   W packed (lowbit_pack_w): panels of 16 columns; panel p holds, for each group of 4 k, 16 x 4 bytes
 *   (column j's 4 consecutive k), so one 64-byte load feeds one vpdpbusd. Padding columns and k are 0.
 *
 * Blocking: a micro-kernel keeps MR x (16 NB) int32 accumulators in registers (MR <= 6, NB <= 4: 24
 * zmm) and runs the whole K. Work is split into tasks of MC rows x 64 columns over OpenMP threads.
 * The 6 x 64 tile then goes through lowbit_requant (requant.c) row by row while it is in L1.
 */
#include <stdint.h>
#include <string.h>

void lowbit_requant(const int32_t *acc, int64_t rows, int64_t C, int64_t hw, int acc_nchw,
                    const int32_t *bias, const int64_t *m, const int64_t *n, const int64_t *h,
                    const int8_t *res, int64_t res_zp, const int64_t *m2,
                    int64_t zp, int64_t lo, int64_t hi, int8_t *out);
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

/* im2col of a single-channel image: one byte per tap */
static void im2col_c1(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh,
                      int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, uint8_t pad, int64_t Ho, int64_t Wo,
                      int64_t Kp, uint8_t *out) {
    for (int64_t b = 0; b < N; b++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++) {
                uint8_t *restrict o = out + ((b * Ho + i) * Wo + j) * Kp;
                for (int64_t p = 0; p < kh; p++) {
                    const int64_t y = i * sh - ph + p * dh;
                    if (y < 0 || y >= H) {
                        for (int64_t q = 0; q < kw; q++) *o++ = pad;
                        continue;
                    }
                    const int8_t *restrict xr = x + (b * H + y) * W;
                    for (int64_t q = 0; q < kw; q++) {
                        const int64_t xx = j * sw - pw + q * dw;
                        *o++ = (xx >= 0 && xx < W) ? ((uint8_t)xr[xx] ^ 0x80u) : pad;
                    }
                }
                for (int64_t k = kh * kw; k < Kp; k++) *o++ = 0;
            }
}

/* im2col of NHWC int8 into flipped u8 rows of Kp bytes (kh*kw*C taps, then zeros) */
void lowbit_im2col_u8(const int8_t *x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int8_t pad_value,
                      int64_t Ho, int64_t Wo, int64_t Kp, uint8_t *out) {
    const uint8_t pad = (uint8_t)pad_value ^ 0x80u;
    const int64_t K = kh * kw * C;
    if (C == 1) {
        im2col_c1(x, N, H, W, kh, kw, sh, sw, ph, pw, dh, dw, pad, Ho, Wo, Kp, out);
        return;
    }
    for (int64_t b = 0; b < N; b++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++) {
                uint8_t *restrict o = out + ((b * Ho + i) * Wo + j) * Kp;
                for (int64_t p = 0; p < kh; p++) {
                    int64_t y = i * sh - ph + p * dh;
                    for (int64_t q = 0; q < kw; q++, o += C) {
                        int64_t xx = j * sw - pw + q * dw;
                        if (y < 0 || y >= H || xx < 0 || xx >= W) {
                            memset(o, pad, (size_t)C);
                            continue;
                        }
                        const int8_t *restrict s = x + ((b * H + y) * W + xx) * C;
                        for (int64_t c = 0; c < C; c++) o[c] = (uint8_t)s[c] ^ 0x80u;
                    }
                }
                for (int64_t k = K; k < Kp; k++) *o++ = 0;
            }
}

/* W (N, K) int8 -> panels (see top); `out` has ceil(N/16) * Kp * 16 bytes */
void lowbit_pack_w(const int8_t *w, int64_t N, int64_t K, int64_t Kp, int8_t *out) {
    int64_t panels = (N + 15) / 16;
    memset(out, 0, (size_t)(panels * Kp * 16));
    for (int64_t j = 0; j < N; j++)
        for (int64_t k = 0; k < K; k++)
            out[(j / 16) * Kp * 16 + (k / 4) * 64 + (j % 16) * 4 + (k % 4)] = w[j * K + k];
}

#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>

int lowbit_has_vnni(void) { return 1; }

#define ALWAYS static inline __attribute__((always_inline))

/* rows x (16 nb) block of C into tile (MR x NR int32); a: `rows` rows of stride Kp; b: first panel */
ALWAYS void kernel(const int rows, const int nb, const uint8_t *a, int64_t Kp, const int8_t *b, int32_t *tile) {
    __m512i c[MR][4];
    const uint8_t *ar[MR];
    const int8_t *bp[4];
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++) ar[r] = a + r * Kp;
#pragma GCC unroll 4
    for (int j = 0; j < nb; j++) bp[j] = b + j * Kp * 16;
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nb; j++) c[r][j] = _mm512_setzero_si512();
    for (int64_t k = 0; k < Kp; k += 4) {
        __m512i bv[4];
#pragma GCC unroll 4
        for (int j = 0; j < nb; j++) {
            bv[j] = _mm512_loadu_si512((const void *)(bp[j] + k * 16));
            __asm__("" : "+v"(bv[j]));  /* keep the panel in a register: one load feeds `rows` vpdpbusd */
        }
#pragma GCC unroll 6
        for (int r = 0; r < rows; r++) {
            int32_t word;
            memcpy(&word, ar[r] + k, 4);
            __m512i av = _mm512_set1_epi32(word);
#pragma GCC unroll 4
            for (int j = 0; j < nb; j++) c[r][j] = _mm512_dpbusd_epi32(c[r][j], av, bv[j]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nb; j++) _mm512_storeu_si512((void *)(tile + r * NR + j * 16), c[r][j]);
}

#define K_ROWS(R)                                                   \
    switch (nb) {                                                   \
    case 1: kernel(R, 1, a, Kp, b, tile); break;                    \
    case 2: kernel(R, 2, a, Kp, b, tile); break;                    \
    case 3: kernel(R, 3, a, Kp, b, tile); break;                    \
    default: kernel(R, 4, a, Kp, b, tile); break;                   \
    }

static void block(int rows, int nb, const uint8_t *a, int64_t Kp, const int8_t *b, int32_t *tile) {
    switch (rows) {
    case 1: K_ROWS(1); break;
    case 2: K_ROWS(2); break;
    case 3: K_ROWS(3); break;
    case 4: K_ROWS(4); break;
    case 5: K_ROWS(5); break;
    default: K_ROWS(6); break;
    }
}

/* C = A W^T, then per column: out32 = C + col_add (requant == 0), or
 * out8 = requant(C + col_add; m, n, h, residual, m2, zp, lo, hi) (requant == 1), both (M, N) row-major. */
void lowbit_gemm_u8s8(const uint8_t *a, int64_t M, int64_t Kp, const int8_t *wp, int64_t N,
                      const int32_t *col_add, int requant, const int64_t *m, const int64_t *n, const int64_t *h,
                      const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo, int64_t hi,
                      void *out, int threads) {
    const int64_t mblocks = (M + MC - 1) / MC, nblocks = (N + NR - 1) / NR, tasks = mblocks * nblocks;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int32_t tile[MR * NR] __attribute__((aligned(64)));
        const int64_t col0 = (t % nblocks) * NR, row_end = (t / nblocks + 1) * MC < M ? (t / nblocks + 1) * MC : M;
        const int64_t cols = N - col0 < NR ? N - col0 : NR;
        const int nb = (int)((cols + 15) / 16);
        const int8_t *b = wp + (col0 / 16) * Kp * 16;
        for (int64_t r0 = (t / nblocks) * MC; r0 < row_end; r0 += MR) {
            const int rows = row_end - r0 < MR ? (int)(row_end - r0) : MR;
            block(rows, nb, a + r0 * Kp, Kp, b, tile);
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

#else
int lowbit_has_vnni(void) { return 0; }

void lowbit_gemm_u8s8(const uint8_t *a, int64_t M, int64_t Kp, const int8_t *wp, int64_t N,
                      const int32_t *col_add, int requant, const int64_t *m, const int64_t *n, const int64_t *h,
                      const int8_t *res, int64_t res_zp, const int64_t *m2, int64_t zp, int64_t lo, int64_t hi,
                      void *out, int threads) {
    (void)a; (void)M; (void)Kp; (void)wp; (void)N; (void)col_add; (void)requant; (void)m; (void)n; (void)h;
    (void)res; (void)res_zp; (void)m2; (void)zp; (void)lo; (void)hi; (void)out; (void)threads;
}
#endif

/* Ternary-weight GEMM on bit-planes, for lowbit.bitwise.ternary (compiled into the bitwise library beside xnor.c).
 *
 * A ternary weight row w in {-1, 0, +1}^K is two planes of uint64 words (element k: bit k % 64 of word k / 64):
 * the sign s (1 for +1) and the mask m (1 for a non-zero). Activations are
 *
 *   binary  x in {-1, +1}: one plane of bits b (1 for +1), (M, W) words;
 *   ternary x in {-1, 0, +1}: a sign plane t and a mask plane q, (M, W) words each.
 *
 * With binary activations (lowbit.bitwise.reference.ternary_gemm_reference has the derivation)
 *
 *     out[m, n] = popcount(m_n) - 2 popcount(m_n AND (s_n XOR b_m))
 *
 * and popcount(m_n) is made once per column when the weight is packed. Per word and per 8 outputs that is one
 * vpternlogq ((b XOR s) AND m), one vpopcntq and one vpaddq: the XNOR kernel's count of vector operations.
 *
 * With ternary activations the kernel writes x = (b1 + b2) / 2 with two binary planes b1 = t OR NOT q and
 * b2 = t AND q (x = +1: both 1; x = -1: both 0; x = 0: b1 = 1, b2 = 0, which cancel), so that
 *
 *     out[m, n] = popcount(m_n) - popcount(m_n AND (s_n XOR b1_m)) - popcount(m_n AND (s_n XOR b2_m)),
 *
 * which equals popcount(m AND q) - 2 popcount(m AND q AND (s XOR t)) and keeps one accumulator per output: the
 * same loop as for binary activations, over 2 W activation words (b1, b2 interleaved, made once per call) against
 * W weight words, each weight word used twice. Twice the operations of the binary-activation kernel.
 *
 * The bits of s and m past K are cleared when the weight is packed (and s is ANDed with m), so the padding bits
 * of the activations are multiplied by a zero mask whatever they hold: no masking of the last word is needed.
 *
 * Layout of the weight: lowbit_ternary_pack_b interleaves it once into panels of PANEL = 32 columns,
 * panels[((p W + w) 2 + plane) 32 + j] = plane (0: s AND m, 1: m) word w of column 32 p + j (zeros past N), so a
 * word step of a panel reads 512 contiguous bytes; pcm[n] = popcount(m_n) (int32, zeros past N up to a whole
 * panel). The kernel is an outer product with one output per 64-bit lane, as in xnor.c.
 *
 * Instruction sets, chosen by the caller (numbered as in xnor.c; lowbit_xnor_isas() says which this CPU runs,
 * each compiled with a target attribute):
 *
 *   2  AVX-512 VPOPCNTDQ: 4 rows x 32 columns (16 zmm accumulators), vpternlogq + vpopcntq + vpaddq;
 *   1  AVX2: 2 rows x 8 columns, (b XOR s) AND m then the 4-bit vpshufb popcount (Mula, Kurz, Lemire), byte counts
 *      summed per 64-bit lane with vpsadbw every 31 words;
 *   0  scalar: 2 rows x 4 columns of 64-bit popcnt.
 *
 * Loop order as in xnor.c: groups of panels within 256 KiB (L2), blocks of rows, the panels of the group. Threads
 * (OpenMP) split the rows. The kernels trust their arguments; lowbit.bitwise.ternary checks them first.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define LOWBIT_X86 1
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq")))
#define T256 __attribute__((target("avx2,popcnt")))
#define TPOP __attribute__((target("popcnt")))
#else
#define TPOP
#endif

enum { ISA_SCALAR = 0, ISA_AVX512 = 2, ISA_AVX2 = 1 };
enum { PANEL = 32, GROUP_BYTES = 256 * 1024 };

/* The instruction sets this CPU runs (the test of lowbit_xnor_isas, kept here so this file stands alone). */
static int isas(void) {
#ifdef LOWBIT_X86
    __builtin_cpu_init();
    int mask = 0;
    if (__builtin_cpu_supports("popcnt")) mask |= 1 << ISA_SCALAR;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) mask |= 1 << ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vpopcntdq"))
        mask |= 1 << ISA_AVX512;
    return mask;
#else
    return 1 << ISA_SCALAR;
#endif
}

static inline uint64_t last_mask(int64_t K) { return K % 64 ? ((uint64_t)1 << (K % 64)) - 1 : ~(uint64_t)0; }

/* Sign and mask planes (N, W) of K values per row -> panels (ceil(N / 32) 32 W 2 words, layout above), the bits
 * past K cleared and the sign ANDed with the mask; pcm (ceil(N / 32) 32 int32) = popcount of each mask row. */
void lowbit_ternary_pack_b(const uint64_t *sign, const uint64_t *mask, int64_t N, int64_t W, int64_t K,
                           uint64_t *panels, int32_t *pcm) {
    if (N == 0) return;  /* nothing to write (an empty tensor may hand a NULL pointer) */
    const int64_t cols = (N + PANEL - 1) / PANEL * PANEL;
    memset(panels, 0, (size_t)(cols * W * 2) * sizeof(uint64_t));
    memset(pcm, 0, (size_t)cols * sizeof(int32_t));
    for (int64_t n = 0; n < N; n++) {
        int64_t count = 0;
        for (int64_t w = 0; w < W; w++) {
            const uint64_t m = mask[n * W + w] & (w == W - 1 ? last_mask(K) : ~(uint64_t)0);
            uint64_t *at = panels + ((n / PANEL) * W + w) * 2 * PANEL + n % PANEL;
            at[0] = sign[n * W + w] & m;
            at[PANEL] = m;
            count += __builtin_popcountll(m);
        }
        pcm[n] = (int32_t)count;
    }
}

/* Ternary codes (rows, K) int8 -> the sign plane (code > 0) and the mask plane (code != 0), (rows, ceil(K / 64))
 * words each, padding bits 0 (lowbit.bitwise.ternary.pack_ternary). Returns the number of codes outside
 * {-1, 0, 1} (their bits are still written: sign for > 0, mask for != 0). */
static int64_t pack_codes_scalar(const int8_t *codes, int64_t rows, int64_t K, uint64_t *sign, uint64_t *mask) {
    const int64_t W = (K + 63) / 64;
    int64_t bad = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t w = 0; w < W; w++) {
            uint64_t s = 0, m = 0;
            for (int64_t k = w * 64; k < K && k < w * 64 + 64; k++) {
                const int8_t c = codes[r * K + k];
                s |= (uint64_t)(c > 0) << (k % 64);
                m |= (uint64_t)(c != 0) << (k % 64);
                bad += c < -1 || c > 1;
            }
            sign[r * W + w] = s;
            mask[r * W + w] = m;
        }
    return bad;
}

#ifdef LOWBIT_X86
/* 64 codes per compare: vpcmpgtb and vptestmb give the two words directly. */
T512 static int64_t pack_codes_avx512(const int8_t *codes, int64_t rows, int64_t K, uint64_t *sign, uint64_t *mask) {
    const int64_t W = (K + 63) / 64;
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
    int64_t bad = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t w = 0; w < W; w++) {
            const int64_t left = K - w * 64;
            const __mmask64 valid = left >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << left) - 1;
            const __m512i v = _mm512_maskz_loadu_epi8(valid, codes + r * K + w * 64);
            sign[r * W + w] = _mm512_cmpgt_epi8_mask(v, zero);
            mask[r * W + w] = _mm512_test_epi8_mask(v, v);
            bad += __builtin_popcountll(_mm512_cmpgt_epi8_mask(v, one) | _mm512_cmplt_epi8_mask(v, minus));
        }
    return bad;
}
#endif

int64_t lowbit_ternary_pack_codes(const int8_t *codes, int64_t rows, int64_t K, uint64_t *sign, uint64_t *mask,
                                  int isa) {
#ifdef LOWBIT_X86
    if (isa == ISA_AVX512 && (isas() & (1 << ISA_AVX512))) return pack_codes_avx512(codes, rows, K, sign, mask);
#endif
    (void)isa;
    return pack_codes_scalar(codes, rows, K, sign, mask);
}

/* Arguments of every micro-kernel call. a: (M, AW) words, AW = W (binary activations) or 2 W (ternary: b1, b2
 * interleaved); activation word u meets weight word u >> tern. out = pcm - (acc << (1 - tern)). */
typedef struct {
    const uint64_t *a, *panels;
    const int32_t *pcm;
    int32_t *out;
    int64_t M, N, W, AW;
    int tern;
} tjob_t;

static inline int block_rows(const tjob_t *j, int64_t m0, int R, const uint64_t **ap) {
    const int rows = j->M - m0 < R ? (int)(j->M - m0) : R;
    for (int i = 0; i < R; i++) ap[i] = j->a + (m0 + (i < rows ? i : rows - 1)) * j->AW;
    return rows;
}

static inline void emit1(const tjob_t *j, int64_t m, int64_t n, int64_t acc) {
    j->out[m * j->N + n] = (int32_t)((int64_t)j->pcm[n] - (acc << (1 - j->tern)));
}

/* ------------------------------------------------------------------------------------------ scalar */

TPOP static void tile_scalar(const tjob_t *j, int64_t m0, int64_t p0, int64_t c0) {
    const uint64_t *ap[2];
    const int rows = block_rows(j, m0, 2, ap);
    const uint64_t *bp = j->panels + p0 * j->W * 2 + c0;  /* word w: sign bp[2 w PANEL + c], mask + PANEL */
    int64_t acc[2][4] = {{0}};
    for (int64_t u = 0; u < j->AW; u++) {
        const uint64_t *s = bp + (u >> j->tern) * 2 * PANEL, *mk = s + PANEL;
        for (int i = 0; i < 2; i++) {
            const uint64_t x = ap[i][u];
            for (int c = 0; c < 4; c++) acc[i][c] += __builtin_popcountll((x ^ s[c]) & mk[c]);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < 4 && p0 + c0 + c < j->N; c++) emit1(j, m0 + i, p0 + c0 + c, acc[i][c]);
}

static void panel_scalar(const tjob_t *j, int64_t m0, int64_t p0) {
    for (int64_t c0 = 0; c0 < PANEL && p0 + c0 < j->N; c0 += 4) tile_scalar(j, m0, p0, c0);
}

#ifdef LOWBIT_X86
/* --------------------------------------------------------------------------------------------- AVX2 */

T256 static inline __m256i popcnt_bytes256(__m256i v, __m256i lut, __m256i low) {
    const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

/* Row m, columns n .. n + 7 from two vectors of 4 int64 sums: pcm - (acc << sh), int32, columns < N only. */
T256 static inline void emit256(const tjob_t *j, int64_t m, int64_t n, __m256i lo, __m256i hi) {
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i acc = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(lo, even),
                                           _mm256_permutevar8x32_epi32(hi, even), 0xF0);
    const __m256i pcm = _mm256_loadu_si256((const __m256i *)(j->pcm + n));  /* padded to a whole panel */
    const __m256i v = _mm256_sub_epi32(pcm, _mm256_sll_epi32(acc, _mm_cvtsi32_si128(1 - j->tern)));
    int32_t *o = j->out + m * j->N + n;
    const int64_t left = j->N - n;
    if (left >= 8) {
        _mm256_storeu_si256((__m256i *)o, v);
    } else {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_maskstore_epi32(o, _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)left), lane), v);
    }
}

/* 2 rows x 8 columns (two ymm of 4 columns). */
T256 static void tile_avx2(const tjob_t *j, int64_t m0, int64_t p0, int64_t c0) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    const uint64_t *ap[2];
    const int rows = block_rows(j, m0, 2, ap);
    const uint64_t *bp = j->panels + p0 * j->W * 2 + c0;
    __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;  /* int64 sums per lane (column) */
    __m256i c00 = zero, c01 = zero, c10 = zero, c11 = zero;  /* byte counters: at most 8 per word */
    for (int64_t u = 0; u < j->AW; u++) {
        const uint64_t *bw = bp + (u >> j->tern) * 2 * PANEL;
        const __m256i sg0 = _mm256_loadu_si256((const __m256i *)bw);
        const __m256i sg1 = _mm256_loadu_si256((const __m256i *)(bw + 4));
        const __m256i mk0 = _mm256_loadu_si256((const __m256i *)(bw + PANEL));
        const __m256i mk1 = _mm256_loadu_si256((const __m256i *)(bw + PANEL + 4));
        const __m256i x0 = _mm256_set1_epi64x((long long)ap[0][u]), x1 = _mm256_set1_epi64x((long long)ap[1][u]);
        c00 = _mm256_add_epi8(c00, popcnt_bytes256(_mm256_and_si256(_mm256_xor_si256(x0, sg0), mk0), lut, low));
        c01 = _mm256_add_epi8(c01, popcnt_bytes256(_mm256_and_si256(_mm256_xor_si256(x0, sg1), mk1), lut, low));
        c10 = _mm256_add_epi8(c10, popcnt_bytes256(_mm256_and_si256(_mm256_xor_si256(x1, sg0), mk0), lut, low));
        c11 = _mm256_add_epi8(c11, popcnt_bytes256(_mm256_and_si256(_mm256_xor_si256(x1, sg1), mk1), lut, low));
        if (u % 31 == 30 || u == j->AW - 1) {  /* flush the byte counters before they can pass 255 */
            s00 = _mm256_add_epi64(s00, _mm256_sad_epu8(c00, zero));
            s01 = _mm256_add_epi64(s01, _mm256_sad_epu8(c01, zero));
            s10 = _mm256_add_epi64(s10, _mm256_sad_epu8(c10, zero));
            s11 = _mm256_add_epi64(s11, _mm256_sad_epu8(c11, zero));
            c00 = c01 = c10 = c11 = zero;
        }
    }
    emit256(j, m0, p0 + c0, s00, s01);
    if (rows > 1) emit256(j, m0 + 1, p0 + c0, s10, s11);
}

static void panel_avx2(const tjob_t *j, int64_t m0, int64_t p0) {
    for (int64_t c0 = 0; c0 < PANEL && p0 + c0 < j->N; c0 += 8) tile_avx2(j, m0, p0, c0);
}

/* ------------------------------------------------------------------------------------------- AVX-512 */

/* Row m, columns n .. n + 15 from two vectors of 8 int64 sums (each < 2^31: its low half is the value): one
 * two-source permute gathers the 16 low halves, then pcm - (acc << sh) on 16 int32 lanes, columns < N only. */
T512 static inline void emit512x2(const tjob_t *j, int64_t m, int64_t n, __m512i lo, __m512i hi, const int tern) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i acc = _mm512_permutex2var_epi32(lo, even, hi);
    const __m512i pcm = _mm512_loadu_si512((const void *)(j->pcm + n));  /* padded to a whole panel */
    const __m512i v = _mm512_sub_epi32(pcm, tern ? acc : _mm512_slli_epi32(acc, 1));
    const int64_t left = j->N - n;
    int32_t *o = j->out + m * j->N + n;
    if (left >= 16) _mm512_storeu_si512((void *)o, v);
    else _mm512_mask_storeu_epi32(o, (__mmask16)((1u << left) - 1), v);
}

/* Row m, the NV vectors of columns p0 .. p0 + 8 NV - 1 (a lone last vector goes with a zero one). */
T512 static inline __attribute__((always_inline)) void emit512_row(const tjob_t *j, int64_t m, int64_t p0,
                                                                   __m512i c0, __m512i c1, __m512i c2, __m512i c3,
                                                                   const int NV, const int tern) {
    emit512x2(j, m, p0, c0, NV > 1 ? c1 : _mm512_setzero_si512(), tern);
    if (NV > 2) emit512x2(j, m, p0 + 16, c2, NV > 3 ? c3 : _mm512_setzero_si512(), tern);
}

/* acc += popcount((x XOR s) AND m): vpternlogq with truth table 0x28 (a = x, b = s, c = m). */
#define TPC(acc, x, s, m) acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(x, s, m, 0x28)))
#define ROW(i, x)                                                                                             \
    do {                                                                                                      \
        TPC(c##i##0, x, s0, k0);                                                                              \
        if (NV > 1) TPC(c##i##1, x, s1, k1);                                                                  \
        if (NV > 2) TPC(c##i##2, x, s2, k2);                                                                  \
        if (NV > 3) TPC(c##i##3, x, s3, k3);                                                                  \
    } while (0)

/* 4 rows x NV vectors of 8 columns; NV and tern are constants in each caller. The 16 accumulators are named
 * variables so that they live in zmm registers from the first operation to the stores. */
T512 static inline __attribute__((always_inline)) void tile512(const tjob_t *j, int64_t m0, int64_t p0, const int NV,
                                                               const int tern) {
    const uint64_t *ap[4];
    const int rows = block_rows(j, m0, 4, ap);
    const uint64_t *bp = j->panels + p0 * j->W * 2;
    const __m512i z = _mm512_setzero_si512();
    __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z, c20 = z, c21 = z, c22 = z,
            c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
    const uint64_t *a0 = ap[0], *a1 = ap[1], *a2 = ap[2], *a3 = ap[3];
    for (int64_t w = 0; w < j->W; w++) {
        const uint64_t *bw = bp + w * 2 * PANEL;
        const __m512i s0 = _mm512_loadu_si512((const void *)bw);
        const __m512i s1 = NV > 1 ? _mm512_loadu_si512((const void *)(bw + 8)) : s0;
        const __m512i s2 = NV > 2 ? _mm512_loadu_si512((const void *)(bw + 16)) : s0;
        const __m512i s3 = NV > 3 ? _mm512_loadu_si512((const void *)(bw + 24)) : s0;
        const __m512i k0 = _mm512_loadu_si512((const void *)(bw + PANEL));
        const __m512i k1 = NV > 1 ? _mm512_loadu_si512((const void *)(bw + PANEL + 8)) : k0;
        const __m512i k2 = NV > 2 ? _mm512_loadu_si512((const void *)(bw + PANEL + 16)) : k0;
        const __m512i k3 = NV > 3 ? _mm512_loadu_si512((const void *)(bw + PANEL + 24)) : k0;
        if (!tern) {
            ROW(0, _mm512_set1_epi64((long long)a0[w]));
            ROW(1, _mm512_set1_epi64((long long)a1[w]));
            ROW(2, _mm512_set1_epi64((long long)a2[w]));
            ROW(3, _mm512_set1_epi64((long long)a3[w]));
        } else {  /* the two binary planes b1, b2 of each row against the same weight word */
            ROW(0, _mm512_set1_epi64((long long)a0[2 * w]));
            ROW(0, _mm512_set1_epi64((long long)a0[2 * w + 1]));
            ROW(1, _mm512_set1_epi64((long long)a1[2 * w]));
            ROW(1, _mm512_set1_epi64((long long)a1[2 * w + 1]));
            ROW(2, _mm512_set1_epi64((long long)a2[2 * w]));
            ROW(2, _mm512_set1_epi64((long long)a2[2 * w + 1]));
            ROW(3, _mm512_set1_epi64((long long)a3[2 * w]));
            ROW(3, _mm512_set1_epi64((long long)a3[2 * w + 1]));
        }
    }
    emit512_row(j, m0, p0, c00, c01, c02, c03, NV, tern);
    if (rows > 1) emit512_row(j, m0 + 1, p0, c10, c11, c12, c13, NV, tern);
    if (rows > 2) emit512_row(j, m0 + 2, p0, c20, c21, c22, c23, NV, tern);
    if (rows > 3) emit512_row(j, m0 + 3, p0, c30, c31, c32, c33, NV, tern);
}
#undef ROW
#undef TPC

T512 static void panel_avx512(const tjob_t *j, int64_t m0, int64_t p0) {
    const int64_t cols = j->N - p0;
    if (j->tern) {
        if (cols > 24) tile512(j, m0, p0, 4, 1);
        else if (cols > 16) tile512(j, m0, p0, 3, 1);
        else if (cols > 8) tile512(j, m0, p0, 2, 1);
        else tile512(j, m0, p0, 1, 1);
    } else {
        if (cols > 24) tile512(j, m0, p0, 4, 0);
        else if (cols > 16) tile512(j, m0, p0, 3, 0);
        else if (cols > 8) tile512(j, m0, p0, 2, 0);
        else tile512(j, m0, p0, 1, 0);
    }
}
#endif

/* out (M, N) int32 = the ternary weight (panels, pcm from lowbit_ternary_pack_b) times the activations: binary
 * bits a (M, W) when amask == NULL, else ternary with sign a and mask amask (M, W). Returns 0, -1 when this CPU
 * does not run isa, -2 when out of memory. */
int lowbit_ternary_gemm(const uint64_t *a, const uint64_t *amask, int64_t M, const uint64_t *panels,
                        const int32_t *pcm, int64_t N, int64_t W, int isa, int32_t *out, int threads) {
    if (isa < 0 || isa > ISA_AVX512 || !(isas() & (1 << isa))) return -1;
    void (*panel)(const tjob_t *, int64_t, int64_t) = panel_scalar;
    int64_t mr = 2;
#ifdef LOWBIT_X86
    if (isa == ISA_AVX512) panel = panel_avx512, mr = 4;
    if (isa == ISA_AVX2) panel = panel_avx2;
#endif
    if (M == 0 || N == 0) return 0;  /* no output (an empty tensor may hand a NULL pointer) */
    uint64_t *planes = NULL;
    const int tern = amask != NULL;
    if (tern) {  /* b1 = t OR NOT q, b2 = t AND q, interleaved per word */
        planes = (uint64_t *)malloc((size_t)(M * W * 2) * sizeof(uint64_t));
        if (planes == NULL) return -2;
        for (int64_t i = 0; i < M * W; i++) {
            planes[2 * i] = a[i] | ~amask[i];
            planes[2 * i + 1] = a[i] & amask[i];
        }
    }
    const tjob_t job = {tern ? planes : a, panels, pcm, out, M, N, W, tern ? 2 * W : W, tern};
    const int64_t row_blocks = (M + mr - 1) / mr;
    int64_t group = GROUP_BYTES / (W * 8 * 2 * PANEL) * PANEL;  /* panels of a group within L2 */
    if (group < PANEL) group = PANEL;
    for (int64_t g0 = 0; g0 < N; g0 += group) {
        const int64_t g1 = g0 + group < N ? g0 + group : N;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
        for (int64_t rb = 0; rb < row_blocks; rb++)
            for (int64_t p0 = g0; p0 < g1; p0 += PANEL) panel(&job, rb * mr, p0);
    }
    free(planes);
    return 0;
}

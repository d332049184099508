/* Binary (XNOR-popcount) GEMM on bit-packed +-1 operands, for lowbit.bitwise.kernels.
 *
 * a: (M, W) uint64 words, b: (N, W) uint64 words; element k of a row is bit k % 64 of word k / 64
 * (1 = +1, 0 = -1). The padding bits past K are cleared in b when it is packed into panels and masked off the
 * last word of a in the kernel, so their XOR is 0 whatever the caller left there. Then
 *
 *     out[m, n] = sum_k a[m, k] b[n, k] = K - 2 popcount(a[m] XOR b[n])        (int32)
 *
 * or, with the threshold epilogue (folded BatchNorm followed by sign), the packed bits of the next layer:
 *
 *     bit[m, n] = (out[m, n] >= thr[n]) XOR flip[n],   stored as bit n % 64 of word out[m, n / 64]
 *
 * with 0 in the padding bits past N (flip: one byte per column, 0 or 1).
 *
 * Layout of b: lowbit_xnor_pack_b interleaves it once into panels of PANEL = 32 columns,
 * panels[((p W) + w) 32 + j] = b[32 p + j, w] (zeros past N), so that one 512-bit load holds word w of 8
 * columns. The kernel is then an outer product, as in a float GEMM: for each word w it broadcasts a[m, w] of
 * a few rows, XORs it with the column vectors and adds the popcounts lane by lane, so each 64-bit lane is
 * one output (m, n): no horizontal sum and no padding of K to a multiple of 512 bits.
 *
 * Three instruction sets, chosen by the caller (lowbit_xnor_isas() says which this CPU runs; each is compiled
 * with a target attribute, not -march=native, so the choice is made at run time and a fallback is really the
 * code a CPU without the faster instructions runs):
 *
 *   2  AVX-512 VPOPCNTDQ: 4 rows x 32 columns (16 zmm accumulators), vpxorq + vpopcntq + vpaddq;
 *   1  AVX2: 2 rows x 8 columns, popcount by the 4-bit lookup of Mula, Kurz and Lemire (vpshufb on the two
 *      nibbles of each byte), byte counts summed per 64-bit lane with vpsadbw every 31 words;
 *   0  scalar: 2 rows x 4 columns of 64-bit popcnt.
 *
 * The threshold epilogue is tested as pc <= floor((K - thr) / 2) against a per-column table made once per call,
 * with the flips packed as bits, so a row of a panel costs a few compares and one OR.
 *
 * Loop order: groups of panels within 256 KiB (L2), then blocks of rows of a, then the panels of the group (a
 * panel is 256 W bytes: in L1 for K up to ~6000), so that a block of rows writes its outputs left to right.
 * Rows past M are read as a repeated last row and not stored. Threads (OpenMP) split the rows of a, so no two
 * threads write one output word. The kernels trust their arguments; lowbit.bitwise.kernels checks them first.
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

enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
enum { PANEL = 32, GROUP_BYTES = 256 * 1024 };

/* Bit i set: instruction set i (ISA_*) is compiled in and this CPU runs it. */
int lowbit_xnor_isas(void) {
#ifdef LOWBIT_X86
    __builtin_cpu_init();
    int isas = 0;
    if (__builtin_cpu_supports("popcnt")) isas |= 1 << ISA_SCALAR;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) isas |= 1 << ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vpopcntdq"))
        isas |= 1 << ISA_AVX512;
    return isas;
#else
    return 1 << ISA_SCALAR;
#endif
}

/* Number of uint64 words of the panels of an (N, W) operand (lowbit.bitwise.kernels.panel_words). */
static int64_t panel_words(int64_t N, int64_t W) { return (N + PANEL - 1) / PANEL * W * PANEL; }

/* The bits of the last word of a row that hold values (K - 64 (W - 1) of them). */
static inline uint64_t last_mask(int64_t K) { return K % 64 ? ((uint64_t)1 << (K % 64)) - 1 : ~(uint64_t)0; }

/* b (N, W) of K values per row -> panels (panel_words(N, W) words, see the layout above), the
 * padding bits past K cleared. */
void lowbit_xnor_pack_b(const uint64_t *b, int64_t N, int64_t W, int64_t K, uint64_t *panels) {
    if (N == 0) return;  /* nothing to write (an empty tensor may hand a NULL pointer) */
    memset(panels, 0, (size_t)panel_words(N, W) * sizeof(uint64_t));
    for (int64_t n = 0; n < N; n++)
        for (int64_t w = 0; w < W; w++)
            panels[((n / PANEL) * W + w) * PANEL + n % PANEL] = b[n * W + w] & (w == W - 1 ? last_mask(K) : ~0ULL);
}

/* Arguments of every micro-kernel call. With the threshold epilogue, lim and flipw hold it in the form the
 * kernels test: K - 2 pc >= thr  <=>  pc <= lim = floor((K - thr) / 2), and the flips packed as bits. */
typedef struct {
    const uint64_t *a, *panels;
    const int64_t *lim;    /* NULL: int32 results; else one per column, padded to a whole panel */
    const uint64_t *flipw; /* ceil(N / 64) + 1 words: bit n % 64 of word n / 64 = flip[n] */
    void *out;
    int64_t M, N, W, K;
} job_t;

/* One output from its popcount: the int32 result, or its threshold bit ORed into the packed output. */
static inline void emit1(const job_t *j, int64_t m, int64_t n, int64_t pc) {
    if (j->lim == NULL) {
        ((int32_t *)j->out)[m * j->N + n] = (int32_t)(j->K - 2 * pc);
        return;
    }
    const uint64_t bit = (uint64_t)(pc <= j->lim[n]) ^ (j->flipw[n / 64] >> (n % 64) & 1);
    ((uint64_t *)j->out)[m * ((j->N + 63) / 64) + n / 64] |= bit << (n % 64);
}

/* The rows of a block: pointers to rows m0 .. m0 + R - 1, the last valid row repeated past M. */
static inline int block_rows(const job_t *j, int64_t m0, int R, const uint64_t **ap) {
    const int rows = j->M - m0 < R ? (int)(j->M - m0) : R;
    for (int i = 0; i < R; i++) ap[i] = j->a + (m0 + (i < rows ? i : rows - 1)) * j->W;
    return rows;
}

/* ------------------------------------------------------------------------------------------ scalar */

/* 2 rows x 4 columns (n0 .. n0 + 3 of the panel starting at column p0). */
TPOP static void tile_scalar(const job_t *j, int64_t m0, int64_t p0, int64_t c0) {
    const uint64_t *ap[2];
    const int rows = block_rows(j, m0, 2, ap);
    const uint64_t *bp = j->panels + p0 * j->W + c0;  /* word w of column c0 + c: bp[w PANEL + c] */
    int64_t acc[2][4] = {{0}};
    const uint64_t last = last_mask(j->K);
    for (int64_t w = 0; w < j->W; w++) {
        const uint64_t *bw = bp + w * PANEL;
        const uint64_t keep = w == j->W - 1 ? last : ~(uint64_t)0;  /* a's padding bits off */
        for (int i = 0; i < 2; i++) {
            const uint64_t x = ap[i][w] & keep;
            acc[i][0] += __builtin_popcountll(x ^ bw[0]);
            acc[i][1] += __builtin_popcountll(x ^ bw[1]);
            acc[i][2] += __builtin_popcountll(x ^ bw[2]);
            acc[i][3] += __builtin_popcountll(x ^ bw[3]);
        }
    }
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < 4 && p0 + c0 + c < j->N; c++) emit1(j, m0 + i, p0 + c0 + c, acc[i][c]);
}

static void panel_scalar(const job_t *j, int64_t m0, int64_t p0) {
    for (int64_t c0 = 0; c0 < PANEL && p0 + c0 < j->N; c0 += 4) tile_scalar(j, m0, p0, c0);
}

#ifdef LOWBIT_X86
/* --------------------------------------------------------------------------------------------- AVX2 */

T256 static inline __m256i popcnt_bytes256(__m256i v, __m256i lut, __m256i low) {
    const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

/* Row m, columns n .. n + 7 (n a multiple of 8) from two vectors of 4 int64 popcounts: int32 results, or the
 * threshold bits (pc <= lim, AVX2 has only a signed greater-than), columns < N only. */
T256 static inline void emit256(const job_t *j, int64_t m, int64_t n, __m256i lo, __m256i hi) {
    const int64_t left = j->N - n;
    if (j->lim == NULL) {
        /* the low halves of the 8 popcounts (each < 2^31), then K - 2 pc on 8 int32 lanes */
        const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        const __m256i pc = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(lo, even),
                                              _mm256_permutevar8x32_epi32(hi, even), 0xF0);
        const __m256i v = _mm256_sub_epi32(_mm256_set1_epi32((int32_t)j->K), _mm256_slli_epi32(pc, 1));
        int32_t *o = (int32_t *)j->out + m * j->N + n;
        if (left >= 8) {
            _mm256_storeu_si256((__m256i *)o, v);
        } else {
            const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_maskstore_epi32(o, _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)left), lane), v);
        }
        return;
    }
    const __m256i gt0 = _mm256_cmpgt_epi64(lo, _mm256_loadu_si256((const __m256i *)(j->lim + n)));
    const __m256i gt1 = _mm256_cmpgt_epi64(hi, _mm256_loadu_si256((const __m256i *)(j->lim + n + 4)));
    uint64_t bits = (uint64_t)(~(_mm256_movemask_pd(_mm256_castsi256_pd(gt0)) |
                                 (_mm256_movemask_pd(_mm256_castsi256_pd(gt1)) << 4)) & 0xff);
    const uint64_t valid = left >= 8 ? 0xff : ((uint64_t)1 << left) - 1;
    bits = (bits ^ (j->flipw[n / 64] >> (n % 64))) & valid;
    ((uint64_t *)j->out)[m * ((j->N + 63) / 64) + n / 64] |= bits << (n % 64);
}

/* 2 rows x 8 columns (two ymm of 4 columns). */
T256 static void tile_avx2(const job_t *j, int64_t m0, int64_t p0, int64_t c0) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    const uint64_t *ap[2];
    const int rows = block_rows(j, m0, 2, ap);
    const uint64_t *bp = j->panels + p0 * j->W + c0;
    const uint64_t last[2] = {ap[0][j->W - 1] & last_mask(j->K), ap[1][j->W - 1] & last_mask(j->K)};
    __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;  /* int64 sums per lane (column) */
    __m256i c00 = zero, c01 = zero, c10 = zero, c11 = zero;  /* byte counters: at most 8 per word */
    for (int64_t w = 0; w < j->W; w++) {
        const uint64_t *x = w < j->W - 1 ? ap[0] + w : last, *y = w < j->W - 1 ? ap[1] + w : last + 1;
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(bp + w * PANEL));
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + w * PANEL + 4));
        const __m256i x0 = _mm256_set1_epi64x((long long)*x), x1 = _mm256_set1_epi64x((long long)*y);
        c00 = _mm256_add_epi8(c00, popcnt_bytes256(_mm256_xor_si256(x0, b0), lut, low));
        c01 = _mm256_add_epi8(c01, popcnt_bytes256(_mm256_xor_si256(x0, b1), lut, low));
        c10 = _mm256_add_epi8(c10, popcnt_bytes256(_mm256_xor_si256(x1, b0), lut, low));
        c11 = _mm256_add_epi8(c11, popcnt_bytes256(_mm256_xor_si256(x1, b1), lut, low));
        if (w % 31 == 30 || w == j->W - 1) {  /* flush the byte counters before they can pass 255 */
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

static void panel_avx2(const job_t *j, int64_t m0, int64_t p0) {
    for (int64_t c0 = 0; c0 < PANEL && p0 + c0 < j->N; c0 += 8) tile_avx2(j, m0, p0, c0);
}

/* ------------------------------------------------------------------------------------------- AVX-512 */

/* Row m, columns n .. n + 7: the int32 results, columns < N only. */
T512 static inline void emit512(const job_t *j, int64_t m, int64_t n, __m512i acc) {
    const int64_t left = j->N - n;
    const __mmask8 valid = left >= 8 ? (__mmask8)0xff : (__mmask8)((1u << left) - 1);
    const __m512i v = _mm512_sub_epi64(_mm512_set1_epi64(j->K), _mm512_slli_epi64(acc, 1));
    int32_t *o = (int32_t *)j->out + m * j->N + n;
    if (valid == 0xff) _mm256_storeu_si256((__m256i *)o, _mm512_cvtepi64_epi32(v));
    else _mm256_mask_storeu_epi32(o, valid, _mm512_cvtepi64_epi32(v));
}

/* Row m, the NV vectors of the panel at column p0 (a multiple of 32): the threshold bits, one 64-bit OR. The
 * vectors come by value (an array would be kept in memory). */
T512 static inline __attribute__((always_inline)) void emit512_bits(const job_t *j, int64_t m, int64_t p0, __m512i c0,
                                                                    __m512i c1, __m512i c2, __m512i c3, const int NV) {
    const __m512i c[4] = {c0, c1, c2, c3};
    uint64_t bits = 0;
    for (int v = 0; v < NV; v++)
        bits |= (uint64_t)_mm512_cmple_epi64_mask(c[v], _mm512_loadu_si512((const void *)(j->lim + p0 + 8 * v)))
                << (8 * v);
    const int64_t left = j->N - p0;
    const uint64_t valid = left >= 32 ? 0xffffffffULL : ((uint64_t)1 << left) - 1;
    bits = (bits ^ (j->flipw[p0 / 64] >> (p0 % 64))) & valid;
    ((uint64_t *)j->out)[m * ((j->N + 63) / 64) + p0 / 64] |= bits << (p0 % 64);
}

/* The int32 results of columns n .. n + 15 from two vectors of popcounts (each < 2^31, so its low 32 bits are
 * the value): one two-source permute gathers the 16 low halves, then K - 2 pc on 16 lanes and one store. */
T512 static inline void emit512x2(const job_t *j, int64_t m, int64_t n, __m512i lo, __m512i hi) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i pc = _mm512_permutex2var_epi32(lo, even, hi);
    const __m512i v = _mm512_sub_epi32(_mm512_set1_epi32((int32_t)j->K), _mm512_slli_epi32(pc, 1));
    const int64_t left = j->N - n;
    int32_t *o = (int32_t *)j->out + m * j->N + n;
    if (left >= 16) _mm512_storeu_si512((void *)o, v);
    else _mm512_mask_storeu_epi32(o, (__mmask16)((1u << left) - 1), v);
}

/* Row m, the NV vectors of columns p0 .. p0 + 8 NV - 1: int32 results, 16 columns at a time where possible. */
T512 static inline __attribute__((always_inline)) void emit512_row(const job_t *j, int64_t m, int64_t p0, __m512i c0,
                                                                   __m512i c1, __m512i c2, __m512i c3, const int NV) {
    if (j->lim != NULL) {
        emit512_bits(j, m, p0, c0, c1, c2, c3, NV);
    } else if (NV == 1) {
        emit512(j, m, p0, c0);
    } else {
        emit512x2(j, m, p0, c0, c1);
        if (NV == 3) emit512(j, m, p0 + 16, c2);
        if (NV == 4) emit512x2(j, m, p0 + 16, c2, c3);
    }
}

#define XPC(acc, x, y) acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, y)))
/* Row i of the tile: its broadcast word x against the NV column vectors y0 .. y3. */
#define ROW(i, x)                                                                                             \
    do {                                                                                                      \
        XPC(c##i##0, x, y0);                                                                                  \
        if (NV > 1) XPC(c##i##1, x, y1);                                                                      \
        if (NV > 2) XPC(c##i##2, x, y2);                                                                      \
        if (NV > 3) XPC(c##i##3, x, y3);                                                                      \
    } while (0)
#define STEP512(X0, X1, X2, X3)                                                                              \
    do {                                                                                                      \
        const uint64_t *bw = bp + w * PANEL;                                                                  \
        const __m512i y0 = _mm512_loadu_si512((const void *)bw);                                              \
        const __m512i y1 = NV > 1 ? _mm512_loadu_si512((const void *)(bw + 8)) : y0;                         \
        const __m512i y2 = NV > 2 ? _mm512_loadu_si512((const void *)(bw + 16)) : y0;                        \
        const __m512i y3 = NV > 3 ? _mm512_loadu_si512((const void *)(bw + 24)) : y0;                        \
        const __m512i x0 = _mm512_set1_epi64((long long)(X0)), x1 = _mm512_set1_epi64((long long)(X1));       \
        const __m512i x2 = _mm512_set1_epi64((long long)(X2)), x3 = _mm512_set1_epi64((long long)(X3));       \
        ROW(0, x0);                                                                                           \
        ROW(1, x1);                                                                                           \
        ROW(2, x2);                                                                                           \
        ROW(3, x3);                                                                                           \
    } while (0)

/* 4 rows x NV vectors of 8 columns; NV is a constant in each caller. The 16 accumulators are named variables,
 * not an array, so that they live in zmm registers from the first XOR to the stores. */
T512 static inline __attribute__((always_inline)) void tile512(const job_t *j, int64_t m0, int64_t p0, const int NV) {
    const uint64_t *ap[4];
    const int rows = block_rows(j, m0, 4, ap);
    const uint64_t *bp = j->panels + p0 * j->W;
    const __m512i z = _mm512_setzero_si512();
    __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z, c20 = z, c21 = z, c22 = z,
            c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
    int64_t w = 0;
    const int64_t full = j->K % 64 ? j->W - 1 : j->W;  /* words without padding bits */
    for (; w < full; w++) STEP512(ap[0][w], ap[1][w], ap[2][w], ap[3][w]);  /* broadcasts from memory */
    if (w < j->W) {  /* the last word: a's padding bits off */
        const uint64_t keep = last_mask(j->K);
        STEP512(ap[0][w] & keep, ap[1][w] & keep, ap[2][w] & keep, ap[3][w] & keep);
    }
    emit512_row(j, m0, p0, c00, c01, c02, c03, NV);
    if (rows > 1) emit512_row(j, m0 + 1, p0, c10, c11, c12, c13, NV);
    if (rows > 2) emit512_row(j, m0 + 2, p0, c20, c21, c22, c23, NV);
    if (rows > 3) emit512_row(j, m0 + 3, p0, c30, c31, c32, c33, NV);
}
#undef STEP512
#undef ROW
#undef XPC

T512 static void panel_avx512(const job_t *j, int64_t m0, int64_t p0) {
    const int64_t cols = j->N - p0;
    if (cols > 24) tile512(j, m0, p0, 4);
    else if (cols > 16) tile512(j, m0, p0, 3);
    else if (cols > 8) tile512(j, m0, p0, 2);
    else tile512(j, m0, p0, 1);
}

/* The binary peak for the benchmark: iters x 8 independent (vpxorq, vpopcntq, vpaddq) on 512 bits, registers
 * only (8 x 512 = 4096 bit-MACs per iteration). Returns a value of the accumulators so nothing is dropped. */
T512 static int64_t peak_avx512(int64_t iters) {
    __m512i c0 = _mm512_set1_epi64(1), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, t0, t1, t2,
            t3, t4, t5, t6, t7;
    const __m512i x = _mm512_set1_epi64(0x0123456789abcdefLL), y = _mm512_set1_epi64(0x7edcba9876543210LL);
    for (int64_t i = 0; i < iters; i++)
        __asm__ volatile(
            "vpxorq %[x], %[y], %[t0]\n vpxorq %[x], %[y], %[t1]\n vpxorq %[x], %[y], %[t2]\n"
            "vpxorq %[x], %[y], %[t3]\n vpxorq %[x], %[y], %[t4]\n vpxorq %[x], %[y], %[t5]\n"
            "vpxorq %[x], %[y], %[t6]\n vpxorq %[x], %[y], %[t7]\n"
            "vpopcntq %[t0], %[t0]\n vpopcntq %[t1], %[t1]\n vpopcntq %[t2], %[t2]\n vpopcntq %[t3], %[t3]\n"
            "vpopcntq %[t4], %[t4]\n vpopcntq %[t5], %[t5]\n vpopcntq %[t6], %[t6]\n vpopcntq %[t7], %[t7]\n"
            "vpaddq %[t0], %[c0], %[c0]\n vpaddq %[t1], %[c1], %[c1]\n vpaddq %[t2], %[c2], %[c2]\n"
            "vpaddq %[t3], %[c3], %[c3]\n vpaddq %[t4], %[c4], %[c4]\n vpaddq %[t5], %[c5], %[c5]\n"
            "vpaddq %[t6], %[c6], %[c6]\n vpaddq %[t7], %[c7], %[c7]\n"
            : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4), [c5] "+v"(c5),
              [c6] "+v"(c6), [c7] "+v"(c7), [t0] "=&v"(t0), [t1] "=&v"(t1), [t2] "=&v"(t2), [t3] "=&v"(t3),
              [t4] "=&v"(t4), [t5] "=&v"(t5), [t6] "=&v"(t6), [t7] "=&v"(t7)
            : [x] "v"(x), [y] "v"(y));
    __m512i s = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(c0, c1), _mm512_add_epi64(c2, c3)),
                                 _mm512_add_epi64(_mm512_add_epi64(c4, c5), _mm512_add_epi64(c6, c7)));
    return _mm512_reduce_add_epi64(s);
}

/* Signs of float32 rows to packed words, 16 floats per compare: bit = x >= 0 (-0.0 included, NaN gives 0 and
 * is counted). */
T512 static int64_t pack_f32_avx512(const float *x, int64_t rows, int64_t K, uint64_t *out) {
    const int64_t W = (K + 63) / 64;
    const __m512 zero = _mm512_setzero_ps();
    int64_t nans = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * K;
        for (int64_t w = 0; w < W; w++) {
            uint64_t word = 0;
            for (int q = 0; q < 4; q++) {
                const int64_t k0 = w * 64 + q * 16;
                if (k0 >= K) break;
                const __mmask16 valid = K - k0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k0)) - 1);
                const __m512 v = _mm512_maskz_loadu_ps(valid, row + k0);
                word |= (uint64_t)(_mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_GE_OQ)) << (16 * q);
                nans += __builtin_popcount(_mm512_mask_cmp_ps_mask(valid, v, v, _CMP_UNORD_Q));
            }
            out[r * W + w] = word;
        }
    }
    return nans;
}
#endif

static int64_t pack_f32_scalar(const float *x, int64_t rows, int64_t K, uint64_t *out) {
    const int64_t W = (K + 63) / 64;
    int64_t nans = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t w = 0; w < W; w++) {
            uint64_t word = 0;
            for (int64_t k = w * 64; k < K && k < w * 64 + 64; k++) {
                const float v = x[r * K + k];
                word |= (uint64_t)(v >= 0.0f) << (k % 64);
                nans += v != v;
            }
            out[r * W + w] = word;
        }
    return nans;
}

/* The signs of float32 rows (rows, K) packed into out (rows, ceil(K / 64)) words, padding bits 0, as
 * lowbit.bitwise.pack.pack_signs does; AVX-512 when isa is ISA_AVX512 and this CPU runs it, else scalar code.
 * Returns the number of NaN values (their bit is 0). */
int64_t lowbit_xnor_pack_f32(const float *x, int64_t rows, int64_t K, uint64_t *out, int isa) {
#ifdef LOWBIT_X86
    if (isa == ISA_AVX512 && (lowbit_xnor_isas() & (1 << ISA_AVX512))) return pack_f32_avx512(x, rows, K, out);
#endif
    (void)isa;
    return pack_f32_scalar(x, rows, K, out);
}

/* Runs peak_avx512 (0 where AVX-512 VPOPCNTDQ is missing); the caller times it. */
int64_t lowbit_xnor_peak(int64_t iters) {
#ifdef LOWBIT_X86
    if (lowbit_xnor_isas() & (1 << ISA_AVX512)) return peak_avx512(iters);
#endif
    (void)iters;
    return 0;
}

/* out = the int32 (M, N) results (thr == NULL), or the (M, ceil(N / 64)) packed threshold bits (flip: one byte
 * per column). panels: lowbit_xnor_pack_b of b. Returns 0, -1 when this CPU does not run isa, -2 when out of
 * memory. */
int lowbit_xnor_gemm(const uint64_t *a, int64_t M, const uint64_t *panels, int64_t N, int64_t W, int64_t K, int isa,
                     const int32_t *thr, const uint8_t *flip, void *out, int threads) {
    if (isa < 0 || isa > ISA_AVX512 || !(lowbit_xnor_isas() & (1 << isa))) return -1;
    void (*panel)(const job_t *, int64_t, int64_t) = panel_scalar;
    int64_t mr = 2;
#ifdef LOWBIT_X86
    if (isa == ISA_AVX512) panel = panel_avx512, mr = 4;
    if (isa == ISA_AVX2) panel = panel_avx2;
#endif
    if (M == 0 || N == 0) return 0;  /* no output (an empty tensor may hand a NULL pointer) */
    int64_t *lim = NULL;
    uint64_t *flipw = NULL;
    if (thr != NULL) {
        const int64_t cols = (N + PANEL - 1) / PANEL * PANEL, words = (N + 63) / 64;
        lim = (int64_t *)malloc((size_t)cols * sizeof(int64_t));
        flipw = (uint64_t *)calloc((size_t)words + 1, sizeof(uint64_t));  /* + 1: a panel reads 32 bits */
        if (lim == NULL || flipw == NULL) {
            free(lim);
            free(flipw);
            return -2;
        }
        for (int64_t n = 0; n < cols; n++) {
            const int64_t d = n < N ? K - (int64_t)thr[n] : -2;  /* past N: never (pc >= 0 > -1) */
            lim[n] = d >= 0 ? d / 2 : -((1 - d) / 2);           /* floor(d / 2) */
        }
        for (int64_t n = 0; n < N; n++) flipw[n / 64] |= (uint64_t)(flip[n] != 0) << (n % 64);
        memset(out, 0, (size_t)(M * words) * sizeof(uint64_t));
    }
    const job_t job = {a, panels, lim, flipw, out, M, N, W, K};
    const int64_t row_blocks = (M + mr - 1) / mr;
    /* Groups of panels that fit in GROUP_BYTES (L2): a block of rows sweeps a whole group, so that its output
     * rows are written left to right (stores that miss in a scattered order cost more than the XORs of a short
     * K), while the group's panels stay in L2 for the next block of rows. */
    int64_t group = GROUP_BYTES / (W * 8 * PANEL) * PANEL;
    if (group < PANEL) group = PANEL;
    for (int64_t g0 = 0; g0 < N; g0 += group) {
        const int64_t g1 = g0 + group < N ? g0 + group : N;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
        for (int64_t rb = 0; rb < row_blocks; rb++)
            for (int64_t p0 = g0; p0 < g1; p0 += PANEL) panel(&job, rb * mr, p0);
    }
    free(lim);
    free(flipw);
    return 0;
}

/* Binary (XNOR-popcount) GEMM on bit-packed +-1 operands, for lowbit.bitwise.kernels.
 *
 * a: (M, W) uint64 words, b: (N, W) uint64 words; element k of a row is bit k % 64 of word k / 64
 * (1 = +1, 0 = -1), and the padding bits past K are 0 in both operands (so their XOR is 0). Then
 *
 *     out[m, n] = sum_k a[m, k] b[n, k] = K - 2 popcount(a[m] XOR b[n])        (int32)
 *
 * or, with the threshold epilogue (folded BatchNorm followed by sign), the packed bits of the next layer:
 *
 *     bit[m, n] = (out[m, n] >= thr[n]) XOR flip[n],   stored as bit n % 64 of word out[m, n / 64]
 *
 * with 0 in the padding bits past N. Three instruction sets, chosen by the caller (lowbit_xnor_isas() says
 * which this CPU runs; each is compiled with a target attribute, not -march=native, so the choice is made
 * at run time and a fallback is really the code a CPU without the faster instructions would run):
 *
 *   2  AVX-512 VPOPCNTDQ: 4 x 4 blocks of (row of a, row of b), 512 bits per step (vpxorq, vpopcntq, vpaddq
 *      into 16 zmm accumulators), a masked tail, the 16 sums reduced by a shuffle tree;
 *   1  AVX2: 2 x 2 blocks, popcount by the 4-bit lookup of Mula, Kurz and Lemire (vpshufb on the two
 *      nibbles of each byte), byte counts summed with vpsadbw;
 *   0  scalar: 2 x 2 blocks of 64-bit popcnt.
 *
 * Loop order: panels of b small enough for L1 (at most PANEL_BYTES), then blocks of rows of a, then blocks of
 * the panel. Blocks at the edges of M and N read a repeated (clamped) row and store only valid results.
 * Threads (OpenMP) split the rows of a, so no two threads write one output word.
 *
 * The kernels trust their arguments; lowbit.bitwise.kernels checks them first.
 */
#include <stdint.h>
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
enum { PANEL_BYTES = 24 * 1024 };

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

/* One block's popcounts, pc[i * 4 + j] = popcount(a_i XOR b_j), to the output: int32 K - 2 pc, or the
 * threshold bits ORed into the packed output (zeroed before). Only rows < rows and columns < cols are valid. */
static inline void emit(const int64_t *pc, int rows, int cols, int64_t m0, int64_t n0, int64_t N, int64_t K,
                        const int32_t *thr, const uint8_t *flip, void *out) {
    if (thr == NULL) {
        int32_t *o = (int32_t *)out;
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) o[(m0 + i) * N + n0 + j] = (int32_t)(K - 2 * pc[i * 4 + j]);
        return;
    }
    uint64_t *o = (uint64_t *)out;
    const int64_t words = (N + 63) / 64;
    for (int i = 0; i < rows; i++) {
        uint64_t bits = 0;
        for (int j = 0; j < cols; j++) {
            const int64_t v = K - 2 * pc[i * 4 + j];
            bits |= (uint64_t)((v >= thr[n0 + j]) ^ (flip[n0 + j] != 0)) << j;
        }
        /* a block's columns n0 .. n0 + 3 never straddle a word: n0 is a multiple of the block width (2 or 4) */
        o[(m0 + i) * words + n0 / 64] |= bits << (n0 % 64);
    }
}

typedef void (*block_fn)(const uint64_t *const *a, const uint64_t *const *b, int64_t W, int64_t *pc);

/* ------------------------------------------------------------------------------------------ scalar */

TPOP static void block_scalar(const uint64_t *const *a, const uint64_t *const *b, int64_t W, int64_t *pc) {
    int64_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    for (int64_t w = 0; w < W; w++) {
        const uint64_t a0 = a[0][w], a1 = a[1][w], b0 = b[0][w], b1 = b[1][w];
        c00 += __builtin_popcountll(a0 ^ b0);
        c01 += __builtin_popcountll(a0 ^ b1);
        c10 += __builtin_popcountll(a1 ^ b0);
        c11 += __builtin_popcountll(a1 ^ b1);
    }
    pc[0] = c00, pc[1] = c01, pc[4] = c10, pc[5] = c11;
}

#ifdef LOWBIT_X86
/* --------------------------------------------------------------------------------------------- AVX2 */

T256 static inline __m256i popcnt_bytes256(__m256i v, __m256i lut, __m256i low) {
    const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

T256 static inline int64_t hsum256(__m256i v) {
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

T256 static void block_avx2(const uint64_t *const *a, const uint64_t *const *b, int64_t W, int64_t *pc) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;  /* 4 x int64 sums each */
    int64_t w = 0;
    while (w + 4 <= W) {
        /* byte counters: at most 8 per step, so 31 steps stay below 256 */
        int64_t steps = (W - w) / 4;
        if (steps > 31) steps = 31;
        __m256i c00 = zero, c01 = zero, c10 = zero, c11 = zero;
        for (int64_t s = 0; s < steps; s++, w += 4) {
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)(a[0] + w));
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(a[1] + w));
            const __m256i b0 = _mm256_loadu_si256((const __m256i *)(b[0] + w));
            const __m256i b1 = _mm256_loadu_si256((const __m256i *)(b[1] + w));
            c00 = _mm256_add_epi8(c00, popcnt_bytes256(_mm256_xor_si256(a0, b0), lut, low));
            c01 = _mm256_add_epi8(c01, popcnt_bytes256(_mm256_xor_si256(a0, b1), lut, low));
            c10 = _mm256_add_epi8(c10, popcnt_bytes256(_mm256_xor_si256(a1, b0), lut, low));
            c11 = _mm256_add_epi8(c11, popcnt_bytes256(_mm256_xor_si256(a1, b1), lut, low));
        }
        s00 = _mm256_add_epi64(s00, _mm256_sad_epu8(c00, zero));
        s01 = _mm256_add_epi64(s01, _mm256_sad_epu8(c01, zero));
        s10 = _mm256_add_epi64(s10, _mm256_sad_epu8(c10, zero));
        s11 = _mm256_add_epi64(s11, _mm256_sad_epu8(c11, zero));
    }
    int64_t t00 = hsum256(s00), t01 = hsum256(s01), t10 = hsum256(s10), t11 = hsum256(s11);
    for (; w < W; w++) {  /* the last 0..3 words */
        t00 += __builtin_popcountll(a[0][w] ^ b[0][w]);
        t01 += __builtin_popcountll(a[0][w] ^ b[1][w]);
        t10 += __builtin_popcountll(a[1][w] ^ b[0][w]);
        t11 += __builtin_popcountll(a[1][w] ^ b[1][w]);
    }
    pc[0] = t00, pc[1] = t01, pc[4] = t10, pc[5] = t11;
}

/* ------------------------------------------------------------------------------------------- AVX-512 */

/* Pairwise sums of x and y within each 128-bit lane: lane l = [x_2l + x_2l+1, y_2l + y_2l+1]. */
T512 static inline __m512i pair512(__m512i x, __m512i y) {
    return _mm512_add_epi64(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
}

/* Sums of adjacent 128-bit lanes: (u0 + u1, u2 + u3, v0 + v1, v2 + v3). */
T512 static inline __m512i quad512(__m512i u, __m512i v) {
    return _mm512_add_epi64(_mm512_shuffle_i64x2(u, v, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i64x2(u, v, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* The totals of 8 accumulators, in order: [A, B, C, D, E, F, G, H]. */
T512 static inline __m512i reduce8(__m512i A, __m512i B, __m512i C, __m512i D, __m512i E, __m512i F, __m512i G,
                                   __m512i H) {
    return quad512(quad512(pair512(A, B), pair512(C, D)), quad512(pair512(E, F), pair512(G, H)));
}

#define XPC(acc, x, y) acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, y)))
#define STEP4x4(LOAD)                                                                                         \
    do {                                                                                                      \
        const __m512i a0 = LOAD(a[0]), a1 = LOAD(a[1]), a2 = LOAD(a[2]), a3 = LOAD(a[3]);                     \
        __m512i bj = LOAD(b[0]);                                                                              \
        XPC(c00, a0, bj); XPC(c10, a1, bj); XPC(c20, a2, bj); XPC(c30, a3, bj);                               \
        bj = LOAD(b[1]);                                                                                      \
        XPC(c01, a0, bj); XPC(c11, a1, bj); XPC(c21, a2, bj); XPC(c31, a3, bj);                               \
        bj = LOAD(b[2]);                                                                                      \
        XPC(c02, a0, bj); XPC(c12, a1, bj); XPC(c22, a2, bj); XPC(c32, a3, bj);                               \
        bj = LOAD(b[3]);                                                                                      \
        XPC(c03, a0, bj); XPC(c13, a1, bj); XPC(c23, a2, bj); XPC(c33, a3, bj);                               \
    } while (0)

T512 static void block_avx512(const uint64_t *const *a, const uint64_t *const *b, int64_t W, int64_t *pc) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
            c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    int64_t w = 0;
#define LOAD_FULL(p) _mm512_loadu_si512((const void *)((p) + w))
    for (; w + 8 <= W; w += 8) STEP4x4(LOAD_FULL);
#undef LOAD_FULL
    if (w < W) {  /* 1..7 words left: masked loads read zeros past W on both sides (XOR 0) */
        const __mmask8 k = (__mmask8)((1u << (W - w)) - 1);
#define LOAD_TAIL(p) _mm512_maskz_loadu_epi64(k, (const void *)((p) + w))
        STEP4x4(LOAD_TAIL);
#undef LOAD_TAIL
    }
    _mm512_storeu_si512((void *)pc, reduce8(c00, c01, c02, c03, c10, c11, c12, c13));
    _mm512_storeu_si512((void *)(pc + 8), reduce8(c20, c21, c22, c23, c30, c31, c32, c33));
}
#undef STEP4x4
#undef XPC

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
#endif

/* Runs peak_avx512 (0 where AVX-512 VPOPCNTDQ is missing); the caller times it. */
int64_t lowbit_xnor_peak(int64_t iters) {
#ifdef LOWBIT_X86
    if (lowbit_xnor_isas() & (1 << ISA_AVX512)) return peak_avx512(iters);
#endif
    (void)iters;
    return 0;
}

/* out = the int32 (M, N) results (thr == NULL), or the (M, ceil(N / 64)) packed threshold bits. Returns 0, or
 * -1 when isa is not one this CPU runs. */
int lowbit_xnor_gemm(const uint64_t *a, int64_t M, const uint64_t *b, int64_t N, int64_t W, int64_t K, int isa,
                     const int32_t *thr, const uint8_t *flip, void *out, int threads) {
    if (isa < 0 || isa > ISA_AVX512 || !(lowbit_xnor_isas() & (1 << isa))) return -1;
    block_fn block = block_scalar;
    int mr = 2, nr = 2;
#ifdef LOWBIT_X86
    if (isa == ISA_AVX512) block = block_avx512, mr = 4, nr = 4;
    if (isa == ISA_AVX2) block = block_avx2;
#endif
    if (thr != NULL) memset(out, 0, (size_t)(M * ((N + 63) / 64)) * sizeof(uint64_t));
    if (M == 0 || N == 0) return 0;
    /* columns per panel: a multiple of the block width, its rows of b within PANEL_BYTES */
    int64_t panel = PANEL_BYTES / (W * 8) / nr * nr;
    if (panel < nr) panel = nr;
    const int64_t row_blocks = (M + mr - 1) / mr;
    for (int64_t p0 = 0; p0 < N; p0 += panel) {
        const int64_t p1 = p0 + panel < N ? p0 + panel : N;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
        for (int64_t rb = 0; rb < row_blocks; rb++) {
            const int64_t m0 = rb * mr;
            const int rows = M - m0 < mr ? (int)(M - m0) : mr;
            const uint64_t *ap[4], *bp[4];
            int64_t pc[16];
            for (int i = 0; i < mr; i++) ap[i] = a + (m0 + (i < rows ? i : rows - 1)) * W;
            for (int64_t n0 = p0; n0 < p1; n0 += nr) {
                const int cols = p1 - n0 < nr ? (int)(p1 - n0) : nr;
                for (int j = 0; j < nr; j++) bp[j] = b + (n0 + (j < cols ? j : cols - 1)) * W;
                block(ap, bp, W, pc);
                emit(pc, rows, cols, m0, n0, N, K, thr, flip, out);
            }
        }
    }
    return 0;
}

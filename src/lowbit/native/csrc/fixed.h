/* Fixed-point helpers shared by the integer kernels (requant.c, delta.c, rnn.c): rounding shifts and the
 * clamped index of a gate table (lowbit.functional.fixed_rnn, lowbit.functional.requant). */
#ifndef LOWBIT_FIXED_H
#define LOWBIT_FIXED_H
#include <stdint.h>

/* floor(v / 2^s + 1/2): a right shift rounding half up (s >= 0) */
static inline int64_t lb_rshift_half_up(int64_t v, int64_t s) { return s ? (v + ((int64_t)1 << (s - 1))) >> s : v; }

/* round half to even of v / 2^n, h = 2^(n-1) (0 for n = 0) passed in (gcc 12 does not vectorize 1 << n for a
 * vector n). With v = q 2^n + r, adding h - 1 + (q & 1) carries into q exactly when r > h, or r == h and q is
 * odd; for n = 0 (h = 0) nothing is added. Branch-free, so that the loops using it vectorize. */
static inline int64_t lb_rshift_even(int64_t v, int64_t n, int64_t h) {
    int64_t pos = h > 0;
    return (v + (h - pos) + ((v >> n) & pos)) >> n;
}

/* the entry of a gate table of 2L entries for the pre-activation p, clamped to 0..2L-1 */
static inline int32_t lb_table_index(int64_t p, int64_t L) {
    int64_t k = p + L;
    k = k < 0 ? 0 : k;
    k = k > 2 * L - 1 ? 2 * L - 1 : k;
    return (int32_t)k;
}

#endif

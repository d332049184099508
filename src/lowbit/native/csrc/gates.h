/* Gate non-linearities shared by the recurrent kernels (delta.c, dynrnn.c). */
#ifndef LOWBIT_GATES_H
#define LOWBIT_GATES_H
#include <math.h>
#include <stdint.h>

/* exp(x) for the gates: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, and the degree-6
 * polynomial of Cephes' expf (about 1 ulp); branch free so that the gate loops vectorise. A NaN gives
 * NaN; it is replaced by 0 before the float-to-int cast, which is undefined for a NaN. */
static inline float lb_expf(float a) {
    float x = a != a ? 0.0f : a;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = rintf(x * 1.44269504088896341f);
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return a != a ? a : p * s.f;
}

static inline float lb_sigmoid(float a) { return 1.0f / (1.0f + lb_expf(-a)); }
static inline float lb_tanh(float a) { return 1.0f - 2.0f / (1.0f + lb_expf(2.0f * a)); }

#endif

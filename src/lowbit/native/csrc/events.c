/* Event-driven inference of a converted spiking net at batch 1 (lowbit.snn.events), float32.
 *
 * The net is a program of stages (lowbit.snn.lower): synapses (conv; a linear layer is a 1x1 conv of a 1x1
 * map), neuron layers, max-pool gates and sum pools, on channels-last maps (index (y W + x) C + c). Between
 * stages travel *events*: (index, integer coefficient) pairs, the spikes of one step. One step:
 *
 *   analog synapse:  v = leak v + I0           (I0 = b + W x, computed once: the image is constant)
 *   spike synapse:   v = leak v + b;  for each event (i, s): v[outputs i reaches] += s * W[i, :]
 *                    (the weight column: a pure add for s = +-1, one small integer multiply otherwise)
 *   neurons:         fire and reset every neuron of the layer (lowbit.snn.neurons.neuron_step, bit for bit
 *                    on the same membrane), the non-zero spikes are the next event list
 *   gate:            counts[i] += s * a[c] for the events; an event passes to window w when its input is
 *                    the window's first largest count (lowbit.snn.pooling.MaxPoolGate)
 *   sum pool:        the events of one window merged into one (the average's 1 / k^2 is in the weights)
 *   readout:         the last synapse's outputs, summed over the steps (the caller divides by t)
 *
 * Program layout: per stage 16 int64 (prog), 4 floats (fprog) and 8 pointers (ptrs), see the LB_* kinds.
 * out (T, classes) float32 gets the readout sum after each step; counts (T, S, 2) int64, per stage after each
 * step (cumulative): synapse (input events, synaptic operations), neurons (events, spikes), gate and pool
 * (events in, events out). scratch: int32 of 4 E (two event lists; E >= every map's size).
 * Starts from rest every call (membranes at initial_potential * threshold). Returns 0, or -1 when x holds
 * a NaN or an infinity. Arguments are checked by lowbit.native.guard.snn_run.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { LB_SYNAPSE = 1, LB_NEURONS = 2, LB_GATE = 3, LB_SUMPOOL = 4 };
enum { LB_BINARY = 0, LB_TERNARY = 1, LB_AUGMENTED = 2 };
#define LB_P 16
#define LB_F 4
#define LB_Q 8

/* y[0..n) += c * w[0..n): an add for c = +-1, a multiply-add otherwise */
static void axpy_i(float *restrict y, const float *restrict w, int64_t n, int32_t c) {
    if (c == 1) {
        for (int64_t k = 0; k < n; k++) y[k] += w[k];
    } else if (c == -1) {
        for (int64_t k = 0; k < n; k++) y[k] -= w[k];
    } else {
        const float f = (float)c;
        for (int64_t k = 0; k < n; k++) y[k] += f * w[k];
    }
}

static void axpy_f(float *restrict y, const float *restrict w, int64_t n, float f) {
    for (int64_t k = 0; k < n; k++) y[k] += f * w[k];
}

/* the output rows (or columns) input row y reaches through a kernel of k taps: o = (y + p - k) / s */
static inline int64_t reach(int64_t y, int64_t k, int64_t s, int64_t p, int64_t osize, int64_t *o, int64_t *tap) {
    int64_t n = 0;
    for (int64_t t = 0; t < k; t++) {
        int64_t u = y + p - t;
        if (u < 0) break;
        if (u % s) continue;
        if (u / s >= osize) continue;
        o[n] = u / s;
        tap[n++] = t;
    }
    return n;
}

typedef struct {
    int64_t H, W, Cin, Ho, Wo, Cout, kh, kw, sh, sw, ph, pw;
} geom;

static geom geometry(const int64_t *p) {
    geom g = {p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13]};
    return g;
}

/* scatter the events into target; returns the synaptic operations (weights added) */
static int64_t scatter(const geom *g, const float *w, float *target, const int32_t *idx, const int32_t *coef,
                       int64_t n, int64_t *oy, int64_t *ty, int64_t *ox, int64_t *tx) {
    int64_t ops = 0;
    for (int64_t e = 0; e < n; e++) {
        int64_t i = idx[e], c = i % g->Cin, pos = i / g->Cin, y = pos / g->W, x = pos % g->W;
        int64_t ny = reach(y, g->kh, g->sh, g->ph, g->Ho, oy, ty);
        int64_t nx = reach(x, g->kw, g->sw, g->pw, g->Wo, ox, tx);
        for (int64_t a = 0; a < ny; a++)
            for (int64_t b = 0; b < nx; b++)
                axpy_i(target + (oy[a] * g->Wo + ox[b]) * g->Cout, w + ((c * g->kh + ty[a]) * g->kw + tx[b]) * g->Cout,
                       g->Cout, coef[e]);
        ops += ny * nx * g->Cout;
    }
    return ops;
}

/* I0 = b + W x for the analog input x (H, W, Cin) */
static void analog(const geom *g, const float *w, const float *bias, const float *x, float *cur, int64_t *oy,
                   int64_t *ty, int64_t *ox, int64_t *tx) {
    for (int64_t o = 0; o < g->Ho * g->Wo; o++) memcpy(cur + o * g->Cout, bias, (size_t)g->Cout * sizeof(float));
    for (int64_t y = 0; y < g->H; y++) {
        int64_t ny = reach(y, g->kh, g->sh, g->ph, g->Ho, oy, ty);
        for (int64_t x0 = 0; x0 < g->W; x0++) {
            int64_t nx = reach(x0, g->kw, g->sw, g->pw, g->Wo, ox, tx);
            for (int64_t c = 0; c < g->Cin; c++) {
                float v = x[(y * g->W + x0) * g->Cin + c];
                if (v == 0.0f) continue;
                for (int64_t a = 0; a < ny; a++)
                    for (int64_t b = 0; b < nx; b++)
                        axpy_f(cur + (oy[a] * g->Wo + ox[b]) * g->Cout,
                               w + ((c * g->kh + ty[a]) * g->kw + tx[b]) * g->Cout, g->Cout, v);
            }
        }
    }
}

/* fire and reset every neuron; the spikes go to (idx, coef); returns their count, adds |s| to *spikes */
static int64_t fire(const int64_t *p, void *const *q, int32_t *idx, int32_t *coef, int64_t *spikes) {
    const int64_t N = p[1], C = p[2], kind = p[3], zero = p[4], smax = p[5], sgn = p[6];
    const float *th = q[0], *thn = q[1];
    float *v = q[2];
    int32_t *count = q[3];
    int64_t n = 0, total = 0;
    for (int64_t base = 0; base < N; base += C) {
        for (int64_t c = 0; c < C; c++) {
            const int64_t i = base + c;
            const float u = v[i], t = th[c];
            int32_t s;
            if (kind == LB_AUGMENTED) {
                float f = floorf(u / t);  /* clamp(floor(v / theta), 0, max_spikes); NaN gives 0 */
                s = f >= 1.0f ? (f >= (float)smax ? (int32_t)smax : (int32_t)f) : 0;
            } else {
                s = (u - t) / t >= 0.0f;  /* spike((v - theta) / theta), as neuron_step computes it */
            }
            if (sgn && s == 0 && count[i] > 0) {
                const float tn = thn[c];
                if (kind == LB_TERNARY) {
                    s = -((-u - tn) / tn >= 0.0f);
                } else {
                    float f = floorf(-u / tn);
                    int32_t m = f >= 1.0f ? (f >= (float)smax ? (int32_t)smax : (int32_t)f) : 0;
                    s = -(m < count[i] ? m : count[i]);
                }
            }
            if (s == 0) continue;
            v[i] = zero ? 0.0f : u - (float)s * (s > 0 ? t : thn[c]);
            count[i] += s;
            idx[n] = (int32_t)i;
            coef[n++] = s;
            total += s > 0 ? s : -s;
        }
    }
    *spikes += total;
    return n;
}

/* the gate: counts updated by every event first, then each event passes to the windows it leads */
static int64_t gate(const geom *g, void *const *q, const int32_t *idx, const int32_t *coef, int64_t n,
                    int32_t *oidx, int32_t *ocoef, int64_t *oy, int64_t *ty, int64_t *ox, int64_t *tx) {
    float *cnt = q[0];
    const float *amp = q[1];
    const int64_t C = g->Cin;
    for (int64_t e = 0; e < n; e++) cnt[idx[e]] += (float)coef[e] * amp[idx[e] % C];
    int64_t m = 0;
    for (int64_t e = 0; e < n; e++) {
        int64_t i = idx[e], c = i % C, pos = i / C, y = pos / g->W, x = pos % g->W;
        int64_t ny = reach(y, g->kh, g->sh, g->ph, g->Ho, oy, ty);
        int64_t nx = reach(x, g->kw, g->sw, g->pw, g->Wo, ox, tx);
        for (int64_t a = 0; a < ny; a++)
            for (int64_t b = 0; b < nx; b++) {
                int64_t best = -1;
                float top = -INFINITY;
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    int64_t iy = oy[a] * g->sh - g->ph + ky;
                    if (iy < 0 || iy >= g->H) continue;
                    for (int64_t kx = 0; kx < g->kw; kx++) {
                        int64_t ix = ox[b] * g->sw - g->pw + kx;
                        if (ix < 0 || ix >= g->W) continue;
                        int64_t j = (iy * g->W + ix) * C + c;
                        if (best < 0 || cnt[j] > top) {  /* the first largest, as max_pool2d's index */
                            top = cnt[j];
                            best = j;
                        }
                    }
                }
                if (best == i) {
                    oidx[m] = (int32_t)((oy[a] * g->Wo + ox[b]) * C + c);
                    ocoef[m++] = coef[e];
                }
            }
    }
    return m;
}

/* sum pooling: the events of a window merged into one (none when they cancel) */
static int64_t sumpool(const geom *g, void *const *q, const int32_t *idx, const int32_t *coef, int64_t n,
                       int32_t *oidx, int32_t *ocoef, int64_t *oy, int64_t *ty, int64_t *ox, int64_t *tx) {
    int32_t *acc = q[0], *seen = q[1];
    const int64_t C = g->Cin;
    int64_t m = 0;
    for (int64_t e = 0; e < n; e++) {
        int64_t i = idx[e], c = i % C, pos = i / C, y = pos / g->W, x = pos % g->W;
        int64_t ny = reach(y, g->kh, g->sh, g->ph, g->Ho, oy, ty);
        int64_t nx = reach(x, g->kw, g->sw, g->pw, g->Wo, ox, tx);
        for (int64_t a = 0; a < ny; a++)
            for (int64_t b = 0; b < nx; b++) {
                int64_t j = (oy[a] * g->Wo + ox[b]) * C + c;
                acc[j] += coef[e];
                if (!seen[j]) {
                    seen[j] = 1;
                    oidx[m++] = (int32_t)j;
                }
            }
    }
    int64_t k = 0;
    for (int64_t e = 0; e < m; e++) {
        int32_t j = oidx[e], s = acc[j];
        acc[j] = 0;
        seen[j] = 0;
        if (s) {
            oidx[k] = j;
            ocoef[k++] = s;
        }
    }
    return k;
}

static void rest(const int64_t *prog, const float *fprog, void *const *ptrs, int64_t S) {
    for (int64_t k = 0; k < S; k++) {
        const int64_t *p = prog + k * LB_P;
        void *const *q = ptrs + k * LB_Q;
        if (p[0] == LB_NEURONS) {
            const int64_t N = p[1], C = p[2];
            const float ip = fprog[k * LB_F + 1], *th = q[0];
            float *v = q[2];
            for (int64_t i = 0; i < N; i++) v[i] = ip != 0.0f ? ip * th[i % C] : 0.0f;
            memset(q[3], 0, (size_t)N * sizeof(int32_t));
        } else if (p[0] == LB_GATE) {
            memset(q[0], 0, (size_t)(p[2] * p[3] * p[4]) * sizeof(float));
        } else if (p[0] == LB_SUMPOOL) {
            memset(q[0], 0, (size_t)(p[5] * p[6] * p[4]) * sizeof(int32_t));
            memset(q[1], 0, (size_t)(p[5] * p[6] * p[4]) * sizeof(int32_t));
        } else if (p[0] == LB_SYNAPSE && p[14]) {  /* the readout's sum */
            memset(q[2], 0, (size_t)(p[5] * p[6] * p[7]) * sizeof(float));
        }
    }
}

int lowbit_snn_run(const int64_t *prog, const float *fprog, void *const *ptrs, int64_t S, const float *x, int64_t T,
                   float *out, int64_t *counts, int32_t *scratch, int64_t E) {
    const int64_t *p0 = prog;
    for (int64_t i = 0; i < p0[2] * p0[3] * p0[4]; i++)
        if (!isfinite(x[i])) return -1;
    int64_t oy[64], ty[64], ox[64], tx[64];  /* kernels are at most 64 taps a side (checked) */
    int32_t *idx = scratch, *coef = scratch + E, *nidx = scratch + 2 * E, *ncoef = scratch + 3 * E;
    int64_t n = 0, classes = 0;
    float *readout = NULL;
    rest(prog, fprog, ptrs, S);
    memset(counts, 0, (size_t)(T * S * 2) * sizeof(int64_t));
    for (int64_t t = 0; t < T; t++) {
        int64_t *cnt = counts + t * S * 2;
        if (t) memcpy(cnt, cnt - S * 2, (size_t)(S * 2) * sizeof(int64_t));
        for (int64_t k = 0; k < S; k++) {
            const int64_t *p = prog + k * LB_P;
            void *const *q = ptrs + k * LB_Q;
            const float leak = fprog[k * LB_F];
            if (p[0] == LB_SYNAPSE) {
                geom g = geometry(p);
                const int64_t M = g.Ho * g.Wo * g.Cout;
                float *v = q[2];
                const float *w = q[0], *b = q[1];
                if (p[1]) {  /* analog: the constant current, computed at the first step */
                    float *cur = q[3];
                    if (t == 0) analog(&g, w, b, x, cur, oy, ty, ox, tx);
                    for (int64_t i = 0; i < M; i++) v[i] = leak * v[i] + cur[i];
                } else {
                    for (int64_t o = 0; o < g.Ho * g.Wo; o++)
                        for (int64_t c = 0; c < g.Cout; c++) v[o * g.Cout + c] = leak * v[o * g.Cout + c] + b[c];
                    cnt[2 * k] += n;
                    cnt[2 * k + 1] += scatter(&g, w, v, idx, coef, n, oy, ty, ox, tx);
                }
                if (p[14]) {
                    readout = v;
                    classes = M;
                }
            } else if (p[0] == LB_NEURONS) {
                n = fire(p, q, idx, coef, &cnt[2 * k + 1]);
                cnt[2 * k] += n;
            } else {
                geom g = geometry(p);
                int64_t m = p[0] == LB_GATE ? gate(&g, q, idx, coef, n, nidx, ncoef, oy, ty, ox, tx)
                                            : sumpool(&g, q, idx, coef, n, nidx, ncoef, oy, ty, ox, tx);
                cnt[2 * k] += n;
                cnt[2 * k + 1] += m;
                int32_t *s0 = idx, *s1 = coef;
                idx = nidx;
                coef = ncoef;
                nidx = s0;
                ncoef = s1;
                n = m;
            }
        }
        if (readout) memcpy(out + t * classes, readout, (size_t)classes * sizeof(float));
    }
    return 0;
}

/* Event-driven inference of a converted spiking net at batch 1 (lowbit.snn.events), float32.
 *
 * The net is a program of stages (lowbit.snn.lower): synapses (conv; a linear layer is a 1x1 conv of a 1x1
 * map), neuron layers, max-pool gates and sum pools, on channels-last maps (index (y W + x) C + c). Between
 * stages travel *events*: (index, position, integer coefficient), the spikes of one step (position = y W + x,
 * carried so that no stage divides to find it). One step:
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
 * Program layout: per stage 16 int64 (prog), 4 floats (fprog) and 8 pointers (ptrs), see the LB_* kinds; slot 4
 * of a synapse, gate or pool is int32 room for its tables (built at the start of every call: per axis, the
 * output rows each input row reaches; per input position, its row and column).
 * out (T, classes) float32 gets the readout sum after each step; counts (T, S, 2) int64, per stage after each
 * step (cumulative): synapse (input events, synaptic operations), neurons (events, spikes), gate and pool
 * (events in, events out). scratch: int32 of 6 E (two event lists; E >= every map's size).
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

/* y[0..n) += w[0..n), -= w, or += f * w: the three accumulates of an event (f = the integer count) */
static inline __attribute__((always_inline)) void acc_add(float *restrict y, const float *restrict w, int64_t n) {
    for (int64_t k = 0; k < n; k++) y[k] += w[k];
}

static inline __attribute__((always_inline)) void acc_sub(float *restrict y, const float *restrict w, int64_t n) {
    for (int64_t k = 0; k < n; k++) y[k] -= w[k];
}

static inline __attribute__((always_inline)) void axpy_f(float *restrict y, const float *restrict w, int64_t n, float f) {
    for (int64_t k = 0; k < n; k++) y[k] += f * w[k];
}

/* Which output rows an input row reaches, for one axis, as a table built once per call from the checked
 * geometry (no division per event): entries [start[y], start[y + 1]) of list are pairs (o, tap), o = (y + p -
 * tap) / s for every tap that lands on an output. Layout in tab: start[n + 1], list[2 n k]. */
static void axis_table(int32_t *tab, int64_t n, int64_t k, int64_t s, int64_t p, int64_t osize) {
    int32_t *start = tab, *list = tab + n + 1;
    int64_t m = 0;
    for (int64_t y = 0; y < n; y++) {
        start[y] = (int32_t)m;
        for (int64_t t = 0; t < k; t++) {
            int64_t u = y + p - t;
            if (u < 0 || u % s || u / s >= osize) continue;
            list[2 * m] = (int32_t)(u / s);
            list[2 * m + 1] = (int32_t)t;
            m++;
        }
    }
    start[n] = (int32_t)m;
}

typedef struct {
    int64_t H, W, Cin, Ho, Wo, Cout, kh, kw, sh, sw, ph, pw;
    const int32_t *ys, *yl, *xs, *xl;  /* the axis tables (rows, then columns) */
    const int32_t *py, *px;  /* row and column of each input position */
} geom;

/* the stage's geometry; its tables in tab (H + 1 + 2 H kh + W + 1 + 2 W kw + 2 H W int32), filled when build */
static geom geometry(const int64_t *p, int32_t *tab, int build) {
    geom g = {p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], 0, 0, 0, 0, 0, 0};
    int32_t *xt = tab + g.H + 1 + 2 * g.H * g.kh, *pt = xt + g.W + 1 + 2 * g.W * g.kw;
    if (build) {
        axis_table(tab, g.H, g.kh, g.sh, g.ph, g.Ho);
        axis_table(xt, g.W, g.kw, g.sw, g.pw, g.Wo);
        for (int64_t y = 0; y < g.H; y++)
            for (int64_t x = 0; x < g.W; x++) {
                pt[y * g.W + x] = (int32_t)y;
                pt[g.H * g.W + y * g.W + x] = (int32_t)x;
            }
    }
    g.ys = tab;
    g.yl = tab + g.H + 1;
    g.xs = xt;
    g.xl = xt + g.W + 1;
    g.py = pt;
    g.px = pt + g.H * g.W;
    return g;
}

/* int32 the tables take in a stage's slot 4; the bucket room of a synapse follows them */
static inline int64_t lb_tables(const geom *g) {
    return g->H + 1 + 2 * g->H * g->kh + g->W + 1 + 2 * g->W * g->kw + 2 * g->H * g->W;
}

/* an event list: flat index (y W + x) C + c, position y W + x, integer coefficient */
typedef struct {
    int32_t *idx, *pos, *coef;
} events;

#define LB_BLK 64 /* output channels accumulated in registers at a time */

/* acc[0..LB_BLK) += s * col[0..LB_BLK): an add for s = +-1, one small integer multiply otherwise */
static inline __attribute__((always_inline)) void acc_block(float *restrict acc, const float *restrict col,
                                                            int32_t s) {
    if (s == 1) {
        for (int k = 0; k < LB_BLK; k++) acc[k] += col[k];
    } else if (s == -1) {
        for (int k = 0; k < LB_BLK; k++) acc[k] -= col[k];
    } else {
        const float f = (float)s;
        for (int k = 0; k < LB_BLK; k++) acc[k] += f * col[k];
    }
}

static inline __attribute__((always_inline)) void acc_tail(float *restrict acc, const float *restrict col, int64_t n,
                                                           int32_t s) {
    if (s == 1) acc_add(acc, col, n);
    else if (s == -1) acc_sub(acc, col, n);
    else axpy_f(acc, col, n, (float)s);
}

/* Add the weight columns of the events to target; returns the synaptic operations (weights added).
 * The events are first sorted by input position (a counting sort into the stage's bucket room); then each
 * output position gathers, tap by tap, the columns W[c, ky, kx, :] of the events at the input position that tap
 * reads, LB_BLK output channels at a time in registers: the same additions as scattering each event to every
 * output it reaches, with the membrane read and written once per step. */
static int64_t scatter(const geom *g, const float *w, float *target, events ev, int64_t n, int32_t *bucket) {
    const int64_t Cout = g->Cout, Cin = g->Cin, P = g->H * g->W, full = Cout / LB_BLK * LB_BLK;
    int32_t *start = bucket, *cur = bucket + P + 1, *bc = cur + P, *bs = bc + P * Cin;
    memset(start, 0, (size_t)(P + 1) * sizeof(int32_t));
    if (P == 1) {  /* a vector (after a flatten, positions of the map before it mean nothing): c is the index */
        start[1] = (int32_t)n;
        for (int64_t e = 0; e < n; e++) {
            bc[e] = ev.idx[e];
            bs[e] = ev.coef[e];
        }
    } else {
        for (int64_t e = 0; e < n; e++) start[ev.pos[e] + 1]++;
        for (int64_t p = 0; p < P; p++) {
            start[p + 1] += start[p];
            cur[p] = start[p];
        }
        for (int64_t e = 0; e < n; e++) {
            const int32_t j = cur[ev.pos[e]]++;
            bc[j] = ev.idx[e] - ev.pos[e] * (int32_t)Cin;
            bs[j] = ev.coef[e];
        }
    }
    int64_t ops = 0;
    float acc[LB_BLK];
    for (int64_t oy = 0; oy < g->Ho; oy++)
        for (int64_t ox = 0; ox < g->Wo; ox++) {
            float *v = target + (oy * g->Wo + ox) * Cout;
            int64_t reached = 0;
            for (int64_t c0 = 0; c0 < Cout; c0 += LB_BLK) {
                const int64_t nb = c0 < full ? LB_BLK : Cout - c0;
                memcpy(acc, v + c0, (size_t)nb * sizeof(float));
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    const int64_t iy = oy * g->sh - g->ph + ky;
                    if (iy < 0 || iy >= g->H) continue;
                    for (int64_t kx = 0; kx < g->kw; kx++) {
                        const int64_t ix = ox * g->sw - g->pw + kx, p = iy * g->W + ix;
                        if (ix < 0 || ix >= g->W) continue;
                        const float *wt = w + (ky * g->kw + kx) * Cout + c0;
                        const int32_t e0 = start[p], e1 = start[p + 1];
                        reached += e1 - e0;
                        if (nb == LB_BLK)
                            for (int32_t e = e0; e < e1; e++) acc_block(acc, wt + bc[e] * g->kh * g->kw * Cout, bs[e]);
                        else
                            for (int32_t e = e0; e < e1; e++) acc_tail(acc, wt + bc[e] * g->kh * g->kw * Cout, nb, bs[e]);
                    }
                }
                memcpy(v + c0, acc, (size_t)nb * sizeof(float));
            }
            ops += reached / ((Cout + LB_BLK - 1) / LB_BLK) * Cout;
        }
    return ops;
}

/* I0 = b + W x for the analog input x (H, W, Cin): each output position gathers its taps, 32 output channels
 * at a time in registers (any channel count: a shorter last block from memory) */
static void analog(const geom *g, const float *w, const float *bias, const float *x, float *cur) {
    const int64_t Cout = g->Cout, Cin = g->Cin, full = Cout / 32 * 32;
    float acc[32];
    for (int64_t oy = 0; oy < g->Ho; oy++)
        for (int64_t ox = 0; ox < g->Wo; ox++)
            for (int64_t c0 = 0; c0 < Cout; c0 += 32) {
                const int64_t nb = c0 < full ? 32 : Cout - c0;
                memcpy(acc, bias + c0, (size_t)nb * sizeof(float));
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    const int64_t iy = oy * g->sh - g->ph + ky;
                    if (iy < 0 || iy >= g->H) continue;
                    for (int64_t kx = 0; kx < g->kw; kx++) {
                        const int64_t ix = ox * g->sw - g->pw + kx;
                        if (ix < 0 || ix >= g->W) continue;
                        const float *xp = x + (iy * g->W + ix) * Cin, *wt = w + (ky * g->kw + kx) * Cout + c0;
                        for (int64_t c = 0; c < Cin; c++) {
                            const float f = xp[c], *col = wt + c * g->kh * g->kw * Cout;
                            if (nb == 32)
                                for (int k = 0; k < 32; k++) acc[k] += f * col[k];
                            else
                                axpy_f(acc, col, nb, f);
                        }
                    }
                }
                memcpy(cur + (oy * g->Wo + ox) * Cout + c0, acc, (size_t)nb * sizeof(float));
            }
}

/* One row of C neurons: fire and reset (neuron_step's forward, operation for operation, branch free so that
 * it vectorises); s[c] gets the spike count. kind, sgn, zero are constants where this is inlined. */
static inline __attribute__((always_inline)) int32_t fire_row(float *restrict v, int32_t *restrict count,
                                                           int32_t *restrict s, const float *restrict th,
                                                           const float *restrict thn, int64_t C, float smax,
                                                           const int kind, const int sgn, const int zero) {
    int32_t total = 0;  /* |s| summed over the row */
    for (int64_t c = 0; c < C; c++) {
        const float u = v[c], t = th[c];
        float r;
        if (kind == LB_AUGMENTED) {  /* clamp(floor(v / theta), 0, max) = trunc(clamp(v / theta, 0, max)) */
            const float f = u / t;
            float g = f > 0.0f ? f : 0.0f;  /* NaN gives 0 */
            g = g < smax ? g : smax;
            r = (float)(int32_t)g;
        } else {
            const float d = (u - t) / t;  /* spike((v - theta) / theta) */
            r = d >= 0.0f ? 1.0f : 0.0f;
        }
        float step = t;  /* what one spike takes off the membrane */
        if (sgn) {  /* only what was sent before can be taken back; a positive and a negative spike exclude */
            const float tn = thn[c], k = (float)count[c], kp = k > 0.0f ? k : 0.0f;
            float sn;
            if (kind == LB_TERNARY) {
                const float d = (-u - tn) / tn;
                sn = d >= 0.0f ? 1.0f : 0.0f;
                sn = sn < kp ? sn : kp;  /* count > 0 */
            } else {
                const float f = -u / tn;
                float g = f > 0.0f ? f : 0.0f;
                g = g < smax ? g : smax;
                g = (float)(int32_t)g;
                sn = g < kp ? g : kp;
            }
            r = r - sn;
            step = r >= 0.0f ? t : tn;
        }
        if (zero)
            v[c] = r != 0.0f ? 0.0f : u;
        else
            v[c] = u - r * step;
        const int32_t q = (int32_t)r;
        count[c] += q;
        s[c] = q;
        total += q > 0 ? q : -q;
    }
    return total;
}

/* fire a row of C neurons; when any spiked, compact its non-zero counts into the event list (in place: the
 * list's end never passes the row being read), without a branch per neuron */
#define LB_FIRE(K, G, Z)                                                                               \
    for (int64_t b = 0, pos = 0; b < N; b += C, pos++) {                                               \
        const int32_t row = fire_row(v + b, count + b, coef + b, th, thn, C, smax, K, G, Z);           \
        if (!row) continue;                                                                            \
        total += row;                                                                                  \
        for (int64_t i = b; i < b + C; i++) {                                                          \
            const int32_t si = coef[i];                                                                \
            ev.idx[n] = (int32_t)i;                                                                    \
            ev.pos[n] = (int32_t)pos;                                                                  \
            coef[n] = si;                                                                              \
            n += si != 0;                                                                              \
        }                                                                                              \
    }

/* fire and reset every neuron; the spikes become the event list; returns their count, adds |s| to *spikes */
static int64_t fire(const int64_t *p, void *const *q, events ev, int64_t *spikes) {
    const int64_t N = p[1], C = p[2], kind = p[3], zero = p[4], sgn = p[6];
    const float smax = (float)p[5], *th = q[0], *thn = q[1];
    float *v = q[2];
    int32_t *count = q[3], *coef = ev.coef;
    int64_t n = 0, total = 0;
    /* every combination compiled on its own, so that each loop is branch free */
    switch (kind * 4 + sgn * 2 + zero) {
        case 0: LB_FIRE(LB_BINARY, 0, 0); break;
        case 1: LB_FIRE(LB_BINARY, 0, 1); break;
        case 2: LB_FIRE(LB_BINARY, 1, 0); break;
        case 3: LB_FIRE(LB_BINARY, 1, 1); break;
        case 4: LB_FIRE(LB_TERNARY, 0, 0); break;
        case 5: LB_FIRE(LB_TERNARY, 0, 1); break;
        case 6: LB_FIRE(LB_TERNARY, 1, 0); break;
        case 7: LB_FIRE(LB_TERNARY, 1, 1); break;
        case 8: LB_FIRE(LB_AUGMENTED, 0, 0); break;
        case 9: LB_FIRE(LB_AUGMENTED, 0, 1); break;
        case 10: LB_FIRE(LB_AUGMENTED, 1, 0); break;
        default: LB_FIRE(LB_AUGMENTED, 1, 1); break;
    }
    *spikes += total;
    return n;
}

/* the gate: counts updated by every event first, then each event passes to the windows it leads */
static int64_t gate(const geom *g, void *const *q, events in, int64_t n, events out) {
    float *cnt = q[0];
    const float *amp = q[1];
    const int32_t C = (int32_t)g->Cin;
    for (int64_t e = 0; e < n; e++) cnt[in.idx[e]] += (float)in.coef[e] * amp[in.idx[e] - in.pos[e] * C];
    int64_t m = 0;
    for (int64_t e = 0; e < n; e++) {
        const int32_t i = in.idx[e], pos = in.pos[e], c = i - pos * C, y = g->py[pos], x = g->px[pos];
        for (int32_t a = g->ys[y]; a < g->ys[y + 1]; a++)
            for (int32_t b = g->xs[x]; b < g->xs[x + 1]; b++) {
                const int64_t oy = g->yl[2 * a], ox = g->xl[2 * b];
                int64_t best = -1;
                float top = -INFINITY;
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    int64_t iy = oy * g->sh - g->ph + ky;
                    if (iy < 0 || iy >= g->H) continue;
                    for (int64_t kx = 0; kx < g->kw; kx++) {
                        int64_t ix = ox * g->sw - g->pw + kx;
                        if (ix < 0 || ix >= g->W) continue;
                        int64_t j = (iy * g->W + ix) * C + c;
                        if (best < 0 || cnt[j] > top) {  /* the first largest, as max_pool2d's index */
                            top = cnt[j];
                            best = j;
                        }
                    }
                }
                if (best == i) {
                    out.idx[m] = (int32_t)((oy * g->Wo + ox) * C + c);
                    out.pos[m] = (int32_t)(oy * g->Wo + ox);
                    out.coef[m++] = in.coef[e];
                }
            }
    }
    return m;
}

/* sum pooling: the events of a window merged into one (none when they cancel) */
static int64_t sumpool(const geom *g, void *const *q, events in, int64_t n, events out) {
    int32_t *acc = q[0], *seen = q[1];
    const int32_t C = (int32_t)g->Cin;
    int64_t m = 0;
    for (int64_t e = 0; e < n; e++) {
        const int32_t pos = in.pos[e], c = in.idx[e] - pos * C, y = g->py[pos], x = g->px[pos], s = in.coef[e];
        for (int32_t a = g->ys[y]; a < g->ys[y + 1]; a++)
            for (int32_t b = g->xs[x]; b < g->xs[x + 1]; b++) {
                const int32_t o = (int32_t)(g->yl[2 * a] * g->Wo + g->xl[2 * b]), j = o * C + c;
                acc[j] += s;
                if (!seen[j]) {
                    seen[j] = 1;
                    out.idx[m] = j;
                    out.pos[m++] = o;
                }
            }
    }
    int64_t k = 0;
    for (int64_t e = 0; e < m; e++) {
        const int32_t j = out.idx[e], o = out.pos[e], s = acc[j];
        acc[j] = 0;
        seen[j] = 0;
        out.idx[k] = j;
        out.pos[k] = o;
        out.coef[k] = s;
        k += s != 0;
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
            for (int64_t b = 0; b < N; b += C)
                for (int64_t c = 0; c < C; c++) v[b + c] = ip != 0.0f ? ip * th[c] : 0.0f;
            memset(q[3], 0, (size_t)N * sizeof(int32_t));
            continue;
        }
        geometry(p, q[4], 1);  /* the axis tables of a synapse, gate or pool */
        if (p[0] == LB_GATE) {
            memset(q[0], 0, (size_t)(p[2] * p[3] * p[4]) * sizeof(float));
        } else if (p[0] == LB_SUMPOOL) {
            memset(q[0], 0, (size_t)(p[5] * p[6] * p[4]) * sizeof(int32_t));
            memset(q[1], 0, (size_t)(p[5] * p[6] * p[4]) * sizeof(int32_t));
        } else if (p[14]) {  /* the readout's sum */
            memset(q[2], 0, (size_t)(p[5] * p[6] * p[7]) * sizeof(float));
        }
    }
}

int lowbit_snn_run(const int64_t *prog, const float *fprog, void *const *ptrs, int64_t S, const float *x, int64_t T,
                   float *out, int64_t *counts, int32_t *scratch, int64_t E) {
    const int64_t *p0 = prog;
    for (int64_t i = 0; i < p0[2] * p0[3] * p0[4]; i++)
        if (!isfinite(x[i])) return -1;
    events ev = {scratch, scratch + E, scratch + 2 * E}, nev = {scratch + 3 * E, scratch + 4 * E, scratch + 5 * E};
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
                geom g = geometry(p, q[4], 0);
                const int64_t M = g.Ho * g.Wo * g.Cout;
                float *v = q[2];
                const float *w = q[0], *b = q[1];
                if (p[1]) {  /* analog: the constant current, computed at the first step */
                    float *cur = q[3];
                    if (t == 0) analog(&g, w, b, x, cur);
                    for (int64_t i = 0; i < M; i++) v[i] = leak * v[i] + cur[i];
                } else {
                    for (int64_t o = 0; o < g.Ho * g.Wo; o++)
                        for (int64_t c = 0; c < g.Cout; c++) v[o * g.Cout + c] = leak * v[o * g.Cout + c] + b[c];
                    cnt[2 * k] += n;
                    cnt[2 * k + 1] += scatter(&g, w, v, ev, n, (int32_t *)q[4] + lb_tables(&g));
                }
                if (p[14]) {
                    readout = v;
                    classes = M;
                }
            } else if (p[0] == LB_NEURONS) {
                n = fire(p, q, ev, &cnt[2 * k + 1]);
                cnt[2 * k] += n;
            } else {
                geom g = geometry(p, q[4], 0);
                int64_t m = p[0] == LB_GATE ? gate(&g, q, ev, n, nev) : sumpool(&g, q, ev, n, nev);
                cnt[2 * k] += n;
                cnt[2 * k + 1] += m;
                const events swap = ev;
                ev = nev;
                nev = swap;
                n = m;
            }
        }
        if (readout) memcpy(out + t * classes, readout, (size_t)classes * sizeof(float));
    }
    return 0;
}

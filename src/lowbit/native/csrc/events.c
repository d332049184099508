/* Event-driven inference of a converted spiking net at batch 1 (lowbit.snn.events), float32.
 *
 * The net is a program of stages (lowbit.snn.lower): synapses (conv; a linear layer is a 1x1 conv of a 1x1
 * map), neuron layers, max-pool gates and sum pools, on channels-last maps (index (y W + x) C + c). Between
 * stages travel *events*: (index, position, integer coefficient), the spikes of one step (position = y W + x,
 * carried so that no stage divides to find it). One step:
 *
 *   analog synapse:  v = leak v + I0           (I0 = b + W x, computed once: the image is constant), with its
 *                    neurons, and only for those that can reach threshold within T steps (active_neurons)
 *   spike synapse:   v = leak v + b;  for each event (i, s): v[outputs i reaches] += s * W[i, :]
 *                    (the weight column: a pure add for s = +-1, one small integer multiply otherwise), output
 *                    row by output row, each row's neurons fired while it is in cache
 *   neurons:         fire and reset (lowbit.snn.neurons.neuron_step, bit for bit on the same membrane), the
 *                    non-zero spikes are the next event list, in index order
 *   gate:            counts[i] += s * a[c] for the events; an event passes to window w when its input is
 *                    the window's first largest count (lowbit.snn.pooling.MaxPoolGate)
 *   sum pool:        the events of one window merged into one (the average's 1 / k^2 is in the weights)
 *   readout:         the last synapse's outputs, summed over the steps (the caller divides by t)
 *
 * Program layout: per stage 16 int64 (prog), 4 floats (fprog) and 8 pointers (ptrs), see the LB_* kinds; slot 4
 * of a synapse, gate or pool is int32 room for its tables (built at the start of every call: per axis, the
 * output rows each input row reaches; per input position, its row and column); slot 5 of the analog synapse is
 * int32 room for the compact state of its neurons that can fire (8 M).
 * out (T, classes) float32 gets the readout sum after each step; counts (T, S, 2) int64, per stage after each
 * step (cumulative): synapse (input events, synaptic operations), neurons (events, spikes), gate and pool
 * (events in, events out). scratch: int32 of 6 (E + 1) (two event lists of three arrays of E + 1: E >= every map's
 * size, and one spare slot for the sum pool's branch-free append).
 * Starts from rest every call (membranes at initial_potential * threshold). Returns 0, or -1 when x holds
 * a NaN or an infinity. Arguments are checked by lowbit.native.guard.snn_run.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

enum { LB_SYNAPSE = 1, LB_NEURONS = 2, LB_GATE = 3, LB_SUMPOOL = 4 };
enum { LB_BINARY = 0, LB_TERNARY = 1, LB_AUGMENTED = 2 };
#define LB_P 16
#define LB_F 4
#define LB_Q 8

/* y[0..n) += f w[0..n) */
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

/* acc[0..n) += s col[0..n) on the tail of a channel block (fewer than LB_BLK channels): for s = +-1 (every
 * coefficient of the list) col with its sign bit flipped by mask (0 or 0x80000000), an add and no
 * multiplication; otherwise one small integer multiply. Both give the float sum acc + s col exactly. */
static inline __attribute__((always_inline)) void acc_tail(float *restrict acc, const float *restrict col, int64_t n,
                                                           int32_t s, const int unit) {
    for (int64_t k = 0; k < n; k++) {
        if (unit) {
            uint32_t u;
            float f;
            memcpy(&u, col + k, sizeof u);
            u ^= (uint32_t)s;
            memcpy(&f, &u, sizeof f);
            acc[k] += f;
        } else {
            acc[k] += (float)s * col[k];
        }
    }
}

/* A full block of LB_BLK channels in vector registers (GCC/Clang vector extensions: explicit lanes, so that
 * the compiler vectorises the channels, never the events), the same arithmetic, branch free per event so that
 * the coefficients' signs and sizes cost no mispredicted branch. */
#if defined(__AVX512F__)
#define LB_VL 16 /* float lanes of one vector: a zmm register */
#else
#define LB_VL 8 /* a ymm register: wider generic vectors make GCC spill them through the stack on AVX2 */
#endif
typedef float lb_vf __attribute__((vector_size(4 * LB_VL)));
typedef uint32_t lb_vu __attribute__((vector_size(4 * LB_VL)));
#define LB_NV (LB_BLK / LB_VL)

static inline __attribute__((always_inline)) void acc_full(lb_vf *restrict a, const float *restrict col, int32_t s,
                                                           const int unit) {
    for (int r = 0; r < LB_NV; r++) {
        lb_vf c;
        memcpy(&c, col + LB_VL * r, sizeof c);
        if (unit) {
            lb_vu u = (lb_vu)c ^ (uint32_t)s;
            a[r] += (lb_vf)u;
        } else {
            a[r] += (float)s * c;
        }
    }
}

/* each output position gathers, tap by tap, the columns W[c, ky, kx, :] of the events bucketed at the input
 * position that tap reads (start, channel bc, coefficient or sign mask bs), LB_BLK output channels at a time in
 * registers; returns the synaptic operations */
/* bits lo..lo + k - 1 of a row of W <= 64 columns, clipped to 0..W - 1 */
static inline uint64_t window_mask(int64_t lo, int64_t k, int64_t W) {
    int64_t hi = lo + k - 1;
    lo = lo < 0 ? 0 : lo;
    hi = hi > W - 1 ? W - 1 : hi;
    if (hi < lo) return 0;
    const uint64_t top = hi >= 63 ? ~(uint64_t)0 : (((uint64_t)1 << (hi + 1)) - 1);
    return top & ~(((uint64_t)1 << lo) - 1);
}

/* rows (optional, maps of W <= 64 columns): per input row, a bit per column that holds events, so that each
 * output visits only the taps with events (in the same order: the same floats) */
static inline __attribute__((always_inline)) int64_t gather(const geom *g, const float *w, float *target,
                                                            const int32_t *start, const int32_t *bc,
                                                            const int32_t *bs, const int unit, int64_t oy0,
                                                            int64_t oy1, float leak, const float *bias,
                                                            const uint64_t *rows) {
    const int64_t Cout = g->Cout, full = Cout / LB_BLK * LB_BLK, col = g->kh * g->kw * Cout;
    int64_t ops = 0;
    float acc[LB_BLK];
    lb_vf a[LB_NV];
    for (int64_t oy = oy0; oy < oy1; oy++)
        for (int64_t ox = 0; ox < g->Wo; ox++) {
            float *v = target + (oy * g->Wo + ox) * Cout;
            int64_t reached = 0;
            for (int64_t c0 = 0; c0 < Cout; c0 += LB_BLK) {
                const int64_t nb = c0 < full ? LB_BLK : Cout - c0;
                if (nb == LB_BLK) {
                    memcpy(a, v + c0, sizeof a);
                    if (bias)  /* the step's leak and bias first: v = leak v + b, as the unfused pass */
                        for (int r = 0; r < LB_NV; r++) {
                            lb_vf bv;
                            memcpy(&bv, bias + c0 + LB_VL * r, sizeof bv);
                            a[r] = leak * a[r] + bv;
                        }
                } else {
                    memcpy(acc, v + c0, (size_t)nb * sizeof(float));
                    if (bias)
                        for (int64_t j = 0; j < nb; j++) acc[j] = leak * acc[j] + bias[c0 + j];
                }
                const int64_t x0 = ox * g->sw - g->pw;  /* the input column of tap kx = 0 */
                for (int64_t ky = 0; ky < g->kh; ky++) {
                    const int64_t iy = oy * g->sh - g->ph + ky;
                    if (iy < 0 || iy >= g->H) continue;
                    /* the window's input columns that hold events, in order (all of them without a row mask) */
                    uint64_t m = rows ? rows[iy] & window_mask(x0, g->kw, g->W) : ~(uint64_t)0;
                    for (int64_t kx = 0; kx < g->kw && m; kx++) {
                        if (rows) {
                            kx = __builtin_ctzll(m) - x0;
                            m &= m - 1;
                        }
                        const int64_t ix = x0 + kx, p = iy * g->W + ix;
                        if (ix < 0 || ix >= g->W) continue;
                        const float *wt = w + (ky * g->kw + kx) * Cout + c0;
                        const int32_t e0 = start[p], e1 = start[p + 1];
                        reached += e1 - e0;
                        if (nb == LB_BLK)
                            for (int32_t e = e0; e < e1; e++) acc_full(a, wt + bc[e] * col, bs[e], unit);
                        else
                            for (int32_t e = e0; e < e1; e++) acc_tail(acc, wt + bc[e] * col, nb, bs[e], unit);
                    }
                }
                if (nb == LB_BLK) memcpy(v + c0, a, sizeof a);
                else memcpy(v + c0, acc, (size_t)nb * sizeof(float));
            }
            ops += reached / ((Cout + LB_BLK - 1) / LB_BLK) * Cout;
        }
    return ops;
}

/* The weight columns W[c] (kh kw Cout floats each) of the input channels the events carry, each once, asked
 * into L2 before gather rereads them tap after tap: on a cold cache (batch 1 between other work) the loads
 * then overlap instead of each waiting on memory. Up to 4096 input channels (more: none prefetched). */
static void prefetch_columns(const float *w, const int32_t *bc, int64_t n, int64_t Cin, int64_t col) {
    uint8_t seen[4096];
    if (Cin > 4096) return;
    memset(seen, 0, (size_t)Cin);
    for (int64_t e = 0; e < n; e++) {
        const int32_t c = bc[e];
        if (seen[c]) continue;
        seen[c] = 1;
        const char *p = (const char *)(w + c * col);
        for (int64_t off = 0; off < col * (int64_t)sizeof(float); off += 64) __builtin_prefetch(p + off, 0, 2);
    }
}

#define LB_L2_KEEP (256 * 1024) /* weights (bytes) that stay in L2 from one step to the next */

/* whether a synapse's weights are still in cache from the previous step (small enough, not the first step) */
static inline int lb_warm(const geom *g, int64_t t) {
    return t > 0 && g->Cin * g->kh * g->kw * g->Cout * (int64_t)sizeof(float) <= LB_L2_KEEP;
}

/* The events of a step sorted by input position (a counting sort into the stage's bucket room), ready for
 * gather: the same additions as scattering each event to every output it reaches, with the membrane read and
 * written once per step. When every coefficient is +-1 (binary or ternary spikes not merged by a pool) they are
 * stored as sign masks and added without a multiplication (returns 1; otherwise 0). The weight columns are
 * prefetched unless warm (still in cache from the step before). */
static int bucket(const geom *g, const float *w, events ev, int64_t n, int32_t *room, int warm) {
    const int64_t Cin = g->Cin, P = g->H * g->W;
    int32_t *start = room, *cur = room + P + 1, *bc = cur + P, *bs = bc + P * Cin;
    int unit = 1;
    for (int64_t e = 0; e < n; e++) unit &= (ev.coef[e] == 1) | (ev.coef[e] == -1);
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
    if (!warm) prefetch_columns(w, bc, n, Cin, g->kh * g->kw * g->Cout);
    if (unit)
        for (int64_t e = 0; e < n; e++) bs[e] = (int32_t)(bs[e] < 0 ? 0x80000000u : 0u);
    return unit;
}

/* gather the bucketed events of a stage into output rows [oy0, oy1) (bias: the step's leak and bias fused) */
static int64_t gather_rows(const geom *g, const float *w, float *target, const int32_t *bucket, int unit,
                           int64_t oy0, int64_t oy1, float leak, const float *bias, const uint64_t *rows) {
    const int64_t P = g->H * g->W;
    const int32_t *start = bucket, *bc = bucket + 2 * P + 1, *bs = bc + P * g->Cin;
    return unit ? gather(g, w, target, start, bc, bs, 1, oy0, oy1, leak, bias, rows)
                : gather(g, w, target, start, bc, bs, 0, oy0, oy1, leak, bias, rows);
}

#define LB_MASK_ROWS 1024 /* input rows a row mask covers (more, or rows wider than 64: no mask) */

/* the row masks of the bucketed events into rows (H entries); returns rows, or NULL where they do not apply */
static const uint64_t *row_masks(const geom *g, const int32_t *bucket, uint64_t *rows) {
    if (g->W > 64 || g->H > LB_MASK_ROWS || g->H * g->W == 1) return NULL;
    memset(rows, 0, (size_t)g->H * sizeof(uint64_t));
    for (int64_t p = 0; p < g->H * g->W; p++)
        if (bucket[p + 1] > bucket[p]) rows[g->py[p]] |= (uint64_t)1 << g->px[p];
    return rows;
}

/* I0 = b + W x at one output position: its taps gathered, 32 output channels at a time in registers (any
 * channel count: a shorter last block from memory); per channel the terms in tap order, then input channel */
static void analog_at(const geom *g, const float *w, const float *bias, const float *x, float *row, int64_t oy,
                      int64_t ox) {
    const int64_t Cout = g->Cout, Cin = g->Cin, full = Cout / 32 * 32;
    float acc[32];
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
        memcpy(row + ox * Cout + c0, acc, (size_t)nb * sizeof(float));
    }
}

#define LB_AX 8 /* output positions along a row computed together by analog_row8 */

/* The same sums at LB_AX neighbouring output positions of a row whose taps all lie inside the image along x,
 * NB blocks of LB_VL channels at a time: LB_AX independent accumulators per block share each weight load, and
 * the NB blocks each input value (the same terms in the same order per position as analog_at). Needs Cout a
 * multiple of NB LB_VL. */
static inline __attribute__((always_inline)) void analog_blocks(const geom *g, const float *w, const float *bias,
                                                                const float *x, float *row, int64_t oy, int64_t ox,
                                                                const int NB) {
    const int64_t Cout = g->Cout, Cin = g->Cin, col = g->kh * g->kw * Cout;
    for (int64_t c0 = 0; c0 < Cout; c0 += NB * LB_VL) {
        lb_vf acc[2][LB_AX];
        for (int q = 0; q < NB; q++) {
            lb_vf b;
            memcpy(&b, bias + c0 + q * LB_VL, sizeof b);
            for (int j = 0; j < LB_AX; j++) acc[q][j] = b;
        }
        for (int64_t ky = 0; ky < g->kh; ky++) {
            const int64_t iy = oy * g->sh - g->ph + ky;
            if (iy < 0 || iy >= g->H) continue;
            const float *xrow = x + iy * g->W * Cin;
            for (int64_t kx = 0; kx < g->kw; kx++) {
                const float *wt = w + (ky * g->kw + kx) * Cout + c0;
                const int64_t ix0 = ox * g->sw - g->pw + kx;
                for (int64_t c = 0; c < Cin; c++) {
                    lb_vf wv[2];
                    for (int q = 0; q < NB; q++) memcpy(&wv[q], wt + c * col + q * LB_VL, sizeof wv[q]);
                    for (int j = 0; j < LB_AX; j++) {
                        const float xv = xrow[(ix0 + j * g->sw) * Cin + c];
                        for (int q = 0; q < NB; q++) acc[q][j] += xv * wv[q];
                    }
                }
            }
        }
        for (int q = 0; q < NB; q++)
            for (int j = 0; j < LB_AX; j++) memcpy(row + (ox + j) * Cout + c0 + q * LB_VL, &acc[q][j], sizeof acc[q][j]);
    }
}

/* two blocks at once where 2 LB_AX + 2 vectors fit the registers (AVX-512's 32) and Cout allows */
static void analog_row8(const geom *g, const float *w, const float *bias, const float *x, float *row, int64_t oy,
                        int64_t ox) {
#if LB_VL == 16
    if (g->Cout % (2 * LB_VL) == 0) {
        analog_blocks(g, w, bias, x, row, oy, ox, 2);
        return;
    }
#endif
    analog_blocks(g, w, bias, x, row, oy, ox, 1);
}

/* I0 = b + W x for the analog input x (H, W, Cin), output row oy into row (Wo Cout floats): runs of LB_AX
 * output positions whose taps lie inside the image along x by analog_row8 (when Cout is a multiple of LB_VL), the
 * rest (the borders) by analog_at */
static void analog(const geom *g, const float *w, const float *bias, const float *x, float *row, int64_t oy) {
    /* inside along x: ox sw - pw >= 0 and ox sw - pw + kw - 1 <= W - 1 */
    const int64_t lo = (g->pw + g->sw - 1) / g->sw, hi = g->W - g->kw + g->pw >= 0 ? (g->W - g->kw + g->pw) / g->sw : -1;
    const int blocked = g->Cout % LB_VL == 0;
    for (int64_t ox = 0; ox < g->Wo;) {
        if (blocked && ox >= lo && ox + LB_AX - 1 <= hi) {
            analog_row8(g, w, bias, x, row, oy, ox);
            ox += LB_AX;
        } else {
            analog_at(g, w, bias, x, row, oy, ox);
            ox++;
        }
    }
}

/* One row of C neurons: fire and reset (neuron_step's forward, operation for operation, branch free so that
 * it vectorises); s[c] gets the spike count. kind, sgn, zero are constants where this is inlined. */
static inline __attribute__((always_inline)) int64_t fire_row(float *restrict v, int32_t *restrict count,
                                                           int32_t *restrict s, const float *restrict th,
                                                           const float *restrict thn, int64_t C, float smax,
                                                           const int kind, const int sgn, const int zero,
                                                           const int fast) {
    int64_t total = 0;  /* |s| summed over the row */
    for (int64_t c = 0; c < C; c++) {
        const float u = v[c], t = th[c];
        float r;
        if (kind == LB_AUGMENTED) {  /* clamp(floor(v / theta), 0, max) = trunc(clamp(v / theta, 0, max)) */
            const float f = u / t;
            float g = f > 0.0f ? f : 0.0f;  /* NaN gives 0 */
            g = g < smax ? g : smax;
            r = (float)(int32_t)g;
        } else {  /* spike((v - theta) / theta); with theta finite and > 0 (fast) its sign is that of v - theta */
            const float d = fast ? u - t : (u - t) / t;
            r = d >= 0.0f ? 1.0f : 0.0f;
        }
        float step = t;  /* what one spike takes off the membrane */
        if (sgn) {  /* only what was sent before can be taken back; a positive and a negative spike exclude */
            const float tn = thn[c], k = (float)count[c], kp = k > 0.0f ? k : 0.0f;
            float sn;
            if (kind == LB_TERNARY) {
                const float d = fast ? -u - tn : (-u - tn) / tn;
                sn = d >= 0.0f ? 1.0f : 0.0f;
                sn = sn < kp ? sn : kp;  /* count > 0 */
            } else if (kind == LB_BINARY && fast) {  /* smax 1: trunc(clamp(-v / theta_n, 0, 1)) is -v >= theta_n */
                sn = -u >= tn ? 1.0f : 0.0f;
                sn = sn < kp ? sn : kp;
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
        if (sgn) count[c] += q;  /* the net count is read only by signed neurons */
        s[c] = q;
        total += q > 0 ? q : -q;
    }
    return total;
}

#if !defined(__AVX512F__) && defined(__AVX2__)
/* a bit per lane of 8 int32 that is not zero */
static inline unsigned lb_nonzero8(__m256i v) {
    return ~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, _mm256_setzero_si256()))) & 0xffu;
}
#endif

/* The non-zero counts coef[b..b+C) of a row that spiked, appended to the event list at n (in place: n <= b, the
 * list's end never passes the row being read); returns the new end. With AVX-512, 16 neurons at a time
 * compressed in a register and written by a masked store (a compressing store to memory is slow on some
 * cores); otherwise one neuron at a time without a branch. */
static inline __attribute__((always_inline)) int64_t compact_row(events ev, int32_t *coef, int64_t b, int64_t C,
                                                                 int32_t pos, int64_t n) {
    int64_t i = b;
#if defined(__AVX512F__)
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i vpos = _mm512_set1_epi32(pos);
    for (; i + 16 <= b + C; i += 16) {
        const __m512i sv = _mm512_loadu_si512((const void *)(coef + i));
        const __mmask16 m = _mm512_test_epi32_mask(sv, sv);
        if (!m) continue;
        const int k = __builtin_popcount((unsigned)m);
        const __mmask16 head = (__mmask16)((1u << k) - 1u);
        const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int32_t)i), iota);
        _mm512_mask_storeu_epi32(ev.idx + n, head, _mm512_maskz_compress_epi32(m, idx));
        _mm512_mask_storeu_epi32(ev.pos + n, head, vpos);
        _mm512_mask_storeu_epi32(coef + n, head, _mm512_maskz_compress_epi32(m, sv));
        n += k;
    }
#elif defined(__AVX2__)  /* 8 at a time: a group without spikes skipped on one test, the others by their bits */
    for (; i + 8 <= b + C; i += 8) {
        const __m256i sv = _mm256_loadu_si256((const __m256i *)(coef + i));
        unsigned m = lb_nonzero8(sv);
        if (!m) continue;
        int32_t vals[8];
        _mm256_storeu_si256((__m256i *)vals, sv);  /* read before the in-place writes (n <= i) */
        for (; m; m &= m - 1, n++) {
            const int j = __builtin_ctz(m);
            ev.idx[n] = (int32_t)(i + j);
            ev.pos[n] = pos;
            coef[n] = vals[j];
        }
    }
#endif
    for (; i < b + C; i++) {
        const int32_t si = coef[i];
        ev.idx[n] = (int32_t)i;
        ev.pos[n] = pos;
        coef[n] = si;
        n += si != 0;
    }
    return n;
}

/* BODY(K, G, Z) compiled for each of the 12 neuron combinations (spike kind, signed, reset to zero) and the one of
 * (kind, sgn, zero) run, so that each loop is branch free */
/* Whether a neuron stage may fire without dividing by its thresholds: all of them (and the negative ones of
 * signed neurons) finite and > 0, and a signed binary neuron's count capped at 1. Then, exactly, (v - theta) /
 * theta >= 0 iff v - theta >= 0 (the quotient of a non-zero difference by a finite positive theta keeps its sign
 * and cannot underflow to zero, v - theta is 0 only when v == theta, NaN compares false either way), and
 * trunc(clamp(-v / theta_n, 0, 1)) = 1 iff -v >= theta_n (for -v < theta_n the quotient is at most the float
 * below 1). Computed once per stage and step over its C channels (its rows then share it). */
static int lb_fast(const int64_t *p, void *const *q) {
    const int64_t C = p[2], sgn = p[6];
    const float *th = q[0], *thn = q[1];
    int ok = p[3] != LB_BINARY || !sgn || p[5] == 1;
    for (int64_t c = 0; c < C; c++) {
        ok &= (th[c] > 0.0f) & (th[c] <= 3.4e38f);
        if (sgn) ok &= (thn[c] > 0.0f) & (thn[c] <= 3.4e38f);
    }
    return ok;
}

#define LB_NEURON_SWITCH(BODY, kind, sgn, zero)                                                        \
    switch ((kind) * 4 + (sgn) * 2 + (zero)) {                                                         \
        case 0: BODY(LB_BINARY, 0, 0); break;                                                          \
        case 1: BODY(LB_BINARY, 0, 1); break;                                                          \
        case 2: BODY(LB_BINARY, 1, 0); break;                                                          \
        case 3: BODY(LB_BINARY, 1, 1); break;                                                          \
        case 4: BODY(LB_TERNARY, 0, 0); break;                                                         \
        case 5: BODY(LB_TERNARY, 0, 1); break;                                                         \
        case 6: BODY(LB_TERNARY, 1, 0); break;                                                         \
        case 7: BODY(LB_TERNARY, 1, 1); break;                                                         \
        case 8: BODY(LB_AUGMENTED, 0, 0); break;                                                       \
        case 9: BODY(LB_AUGMENTED, 0, 1); break;                                                       \
        case 10: BODY(LB_AUGMENTED, 1, 0); break;                                                      \
        default: BODY(LB_AUGMENTED, 1, 1); break;                                                      \
    }

/* fire a row of C neurons; when any spiked, compact its non-zero counts into the event list */
#define LB_FIRE(K, G, Z)                                                                               \
    for (int64_t b = b0, pos = b0 / C; b < b1; b += C, pos++) {                                        \
        const int64_t row = fire_row(v + b, count + b, coef + b, th, thn, C, smax, K, G, Z, fast);     \
        if (!row) continue;                                                                            \
        total += row;                                                                                  \
        n = compact_row(ev, coef, b, C, (int32_t)pos, n);                                              \
    }

/* fire and reset the neurons [b0, b1) (whole rows); their spikes appended to the event list at n (rows in
 * order: the list stays in index order); returns its length, adds |s| to *spikes */
static int64_t fire(const int64_t *p, void *const *q, events ev, int64_t b0, int64_t b1, int64_t n,
                    int64_t *spikes, const int fast) {
    const int64_t C = p[2], kind = p[3], zero = p[4], sgn = p[6];
    const float smax = (float)p[5], *th = q[0], *thn = q[1];
    float *v = q[2];
    int32_t *count = q[3], *coef = ev.coef;
    int64_t total = 0;
    LB_NEURON_SWITCH(LB_FIRE, kind, sgn, zero);
    *spikes += total;
    return n;
}

/* The neurons of the analog synapse's membrane that can reach their threshold within T steps. The current I is
 * constant, so with leak in (0, 1] (checked by the guard) a neuron that never fires has v_t <= max(v_0, 0) +
 * t max(I, 0) in exact arithmetic; the float recurrence v = leak v + I rounds at most 2 t times by a relative
 * 2^-24 each, and the bound itself twice, all covered by dividing the threshold by 1 + 8 T 2^-24 + 2^-20. A
 * neuron whose bound stays below that (finite, positive) limit never spikes (nor sends a negative spike, which
 * needs a positive one first) and is never visited: its membrane is not observed. A threshold not finite and
 * positive keeps its neuron. The others are copied, in index order, into a compact state (slot 5 of the analog
 * synapse: 8 arrays of M), stepped there as one contiguous row. */
typedef struct {
    float *v, *cur, *th, *thn;
    int32_t *count, *idx, *pos, *s;
} lb_active;

static lb_active active_room(int32_t *room, int64_t M) {
    lb_active a = {(float *)room, (float *)(room + M), (float *)(room + 2 * M), (float *)(room + 3 * M),
                   room + 4 * M, room + 5 * M, room + 6 * M, room + 7 * M};
    return a;
}

static inline __attribute__((always_inline)) int lb_quiet(float t, float v, float in, float steps, float shrink) {
    const float v0 = v > 0.0f ? v : 0.0f, i0 = in > 0.0f ? in : 0.0f;
    return (t > 0.0f) & (t <= 3.4e38f) & (v0 + steps * i0 < t * shrink);  /* a NaN threshold: not quiet */
}

static int64_t active_neurons(const int64_t *p, void *const *q, float ip, const float *cur, int64_t pos0,
                              int64_t npos, int64_t T, lb_active a, int64_t n) {
    const int64_t C = p[2];
    const float *th = q[0], *thn = q[1], steps = (float)T;
    const float shrink = (float)(1.0 / (1.0 + 8.0 * (double)T * 0x1p-24 + 0x1p-20));
    for (int64_t r = 0; r < npos; r++, cur += C) {
        const int64_t pos = pos0 + r, b = pos * C;
        int64_t c = 0;
#if defined(__AVX512F__)  /* 16 neurons at a time: the quiet test in a vector, the others compressed in registers */
        const __m512 zero = _mm512_setzero_ps(), vsteps = _mm512_set1_ps(steps), vshrink = _mm512_set1_ps(shrink);
        const __m512 big = _mm512_set1_ps(3.4e38f);
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; c + 16 <= C; c += 16) {
            const __m512 t = _mm512_loadu_ps(th + c), in = _mm512_loadu_ps(cur + c);
            const __m512 u = ip != 0.0f ? _mm512_mul_ps(_mm512_set1_ps(ip), t) : zero;  /* the rest potential */
            const __m512 bound = _mm512_add_ps(_mm512_max_ps(u, zero), _mm512_mul_ps(vsteps, _mm512_max_ps(in, zero)));
            const __mmask16 quiet = _mm512_cmp_ps_mask(t, zero, _CMP_GT_OQ) & _mm512_cmp_ps_mask(t, big, _CMP_LE_OQ) &
                                    _mm512_cmp_ps_mask(bound, _mm512_mul_ps(t, vshrink), _CMP_LT_OQ);
            const __mmask16 k = (__mmask16)~quiet;
            if (!k) continue;
            const __mmask16 head = (__mmask16)((1u << __builtin_popcount((unsigned)k)) - 1u);
            _mm512_mask_storeu_ps(a.v + n, head, _mm512_maskz_compress_ps(k, u));
            _mm512_mask_storeu_ps(a.cur + n, head, _mm512_maskz_compress_ps(k, in));
            _mm512_mask_storeu_ps(a.th + n, head, _mm512_maskz_compress_ps(k, t));
            _mm512_mask_storeu_ps(a.thn + n, head, _mm512_maskz_compress_ps(k, _mm512_loadu_ps(thn + c)));
            _mm512_mask_storeu_epi32(a.count + n, head, _mm512_setzero_si512());
            _mm512_mask_storeu_epi32(a.idx + n, head,
                                     _mm512_maskz_compress_epi32(k, _mm512_add_epi32(_mm512_set1_epi32((int32_t)(b + c)), iota)));
            _mm512_mask_storeu_epi32(a.pos + n, head, _mm512_set1_epi32((int32_t)pos));
            n += __builtin_popcount((unsigned)k);
        }
#elif defined(__AVX2__)  /* 8 neurons at a time: the quiet test in a vector (the same float operations), the
                          * neurons that are not quiet copied one by one */
        const __m256 zero = _mm256_setzero_ps(), vsteps = _mm256_set1_ps(steps), vshrink = _mm256_set1_ps(shrink);
        const __m256 big = _mm256_set1_ps(3.4e38f), vip = _mm256_set1_ps(ip);
        for (; c + 8 <= C; c += 8) {
            const __m256 t = _mm256_loadu_ps(th + c), in = _mm256_loadu_ps(cur + c);
            const __m256 u = ip != 0.0f ? _mm256_mul_ps(vip, t) : zero;
            const __m256 bound = _mm256_add_ps(_mm256_max_ps(u, zero), _mm256_mul_ps(vsteps, _mm256_max_ps(in, zero)));
            const __m256 quiet = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(t, zero, _CMP_GT_OQ), _mm256_cmp_ps(t, big, _CMP_LE_OQ)),
                                               _mm256_cmp_ps(bound, _mm256_mul_ps(t, vshrink), _CMP_LT_OQ));
            unsigned k = ~(unsigned)_mm256_movemask_ps(quiet) & 0xffu;
            if (!k) continue;
            float uu[8];
            _mm256_storeu_ps(uu, u);
            for (; k; k &= k - 1, n++) {
                const int j = __builtin_ctz(k);
                a.v[n] = uu[j];
                a.cur[n] = cur[c + j];
                a.th[n] = th[c + j];
                a.thn[n] = thn[c + j];
                a.count[n] = 0;
                a.idx[n] = (int32_t)(b + c + j);
                a.pos[n] = (int32_t)pos;
            }
        }
#endif
        for (; c < C; c++) {
            const float u = ip != 0.0f ? ip * th[c] : 0.0f;  /* the rest potential, as rest() sets it */
            a.v[n] = u;
            a.cur[n] = cur[c];
            a.th[n] = th[c];
            a.thn[n] = thn[c];
            a.count[n] = 0;
            a.idx[n] = (int32_t)(b + c);
            a.pos[n] = (int32_t)pos;
            n += !lb_quiet(th[c], u, cur[c], steps, shrink);
        }
    }
    return n;
}

/* The spikes s[0..n) that are not zero, with their indices and positions, appended to the event list; returns
 * its length. With AVX-512 16 at a time (compressed in registers, masked stores), otherwise branch free. */
static int64_t compact_list(events ev, const int32_t *s, const int32_t *idx, const int32_t *pos, int64_t n) {
    int64_t i = 0, m = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        const __m512i sv = _mm512_loadu_si512((const void *)(s + i));
        const __mmask16 k = _mm512_test_epi32_mask(sv, sv);
        if (!k) continue;
        const __mmask16 head = (__mmask16)((1u << __builtin_popcount((unsigned)k)) - 1u);
        _mm512_mask_storeu_epi32(ev.idx + m, head,
                                 _mm512_maskz_compress_epi32(k, _mm512_loadu_si512((const void *)(idx + i))));
        _mm512_mask_storeu_epi32(ev.pos + m, head,
                                 _mm512_maskz_compress_epi32(k, _mm512_loadu_si512((const void *)(pos + i))));
        _mm512_mask_storeu_epi32(ev.coef + m, head, _mm512_maskz_compress_epi32(k, sv));
        m += __builtin_popcount((unsigned)k);
    }
#elif defined(__AVX2__)
    for (; i + 8 <= n; i += 8) {
        const __m256i sv = _mm256_loadu_si256((const __m256i *)(s + i));
        unsigned k = lb_nonzero8(sv);
        if (!k) continue;
        int32_t vals[8];
        _mm256_storeu_si256((__m256i *)vals, sv);
        for (; k; k &= k - 1, m++) {
            const int j = __builtin_ctz(k);
            ev.idx[m] = idx[i + j];
            ev.pos[m] = pos[i + j];
            ev.coef[m] = vals[j];
        }
    }
#endif
    for (; i < n; i++) {
        ev.idx[m] = idx[i];
        ev.pos[m] = pos[i];
        ev.coef[m] = s[i];
        m += s[i] != 0;
    }
    return m;
}

/* one step of the active neurons: v = leak v + I, fire and reset (fire_row over the compact state, per-neuron
 * thresholds), the spikes into the event list in index order */
#define LB_FIRE_ACTIVE(K, G, Z) total = fire_row(a.v, a.count, a.s, a.th, a.thn, na, smax, K, G, Z, fast)

static int64_t fire_active(const int64_t *p, void *const *q, float leak, lb_active a, int64_t na, events ev,
                           int64_t *spikes) {
    const int64_t kind = p[3], zero = p[4], sgn = p[6];
    const float smax = (float)p[5];
    const int fast = lb_fast(p, q);
    int64_t total = 0;
    for (int64_t i = 0; i < na; i++) a.v[i] = leak * a.v[i] + a.cur[i];
    LB_NEURON_SWITCH(LB_FIRE_ACTIVE, kind, sgn, zero);
    *spikes += total;
    return total ? compact_list(ev, a.s, a.idx, a.pos, na) : 0;
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
    const int32_t *restrict ys = g->ys, *restrict xs = g->xs, *restrict yl = g->yl, *restrict xl = g->xl;
    const int32_t *restrict py = g->py, *restrict px = g->px, Wo = (int32_t)g->Wo;
    int64_t m = 0;
    if (g->kh == g->sh && g->kw == g->sw) {  /* windows that do not overlap: an input is in one window or none */
        for (int64_t e = 0; e < n; e++) {
            const int32_t pos = in.pos[e], c = in.idx[e] - pos * C, y = py[pos], x = px[pos], a = ys[y], b = xs[x];
            if (a == ys[y + 1] || b == xs[x + 1]) continue;  /* cropped by the pool */
            const int32_t o = yl[2 * a] * Wo + xl[2 * b], j = o * C + c;
            acc[j] += in.coef[e];
            out.idx[m] = j;  /* a window's first event opens it, branch free */
            out.pos[m] = o;
            m += !seen[j];
            seen[j] = 1;
        }
    } else {
        for (int64_t e = 0; e < n; e++) {
            const int32_t pos = in.pos[e], c = in.idx[e] - pos * C, y = py[pos], x = px[pos], s = in.coef[e];
            for (int32_t a = ys[y]; a < ys[y + 1]; a++)
                for (int32_t b = xs[x]; b < xs[x + 1]; b++) {
                    const int32_t o = yl[2 * a] * Wo + xl[2 * b], j = o * C + c;
                    acc[j] += s;
                    out.idx[m] = j;
                    out.pos[m] = o;
                    m += !seen[j];
                    seen[j] = 1;
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
            if (k > 0 && prog[(k - 1) * LB_P] == LB_SYNAPSE && prog[(k - 1) * LB_P + 1])
                continue;  /* the analog layer's neurons start in their compact state (active_neurons) */
            const int64_t N = p[1], C = p[2];
            const float ip = fprog[k * LB_F + 1], *th = q[0];
            float *v = q[2];
            for (int64_t b = 0; b < N; b += C)
                for (int64_t c = 0; c < C; c++) v[b + c] = ip != 0.0f ? ip * th[c] : 0.0f;
            if (p[6]) memset(q[3], 0, (size_t)N * sizeof(int32_t));  /* the net counts of signed neurons */
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
    const int64_t L = E + 1;
    events ev = {scratch, scratch + L, scratch + 2 * L}, nev = {scratch + 3 * L, scratch + 4 * L, scratch + 5 * L};
    int64_t n = 0, classes = 0, nactive = 0;
    uint64_t masks[LB_MASK_ROWS];
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
                if (p[1]) {  /* analog: the constant current, computed at the first step; only the neurons that
                              * can fire within T steps are visited, membrane and firing in one pass */
                    const int64_t *pn = p + LB_P;
                    const lb_active a = active_room(q[5], M);
                    if (t == 0) {  /* row by row: the current of a row, then its neurons that can fire kept */
                        nactive = 0;
                        for (int64_t oy = 0; oy < g.Ho; oy++) {
                            analog(&g, w, b, x, q[3], oy);
                            nactive = active_neurons(pn, q + LB_Q, fprog[(k + 1) * LB_F + 1], q[3], oy * g.Wo, g.Wo,
                                                     T, a, nactive);
                        }
                    }
                    k++;  /* the neuron stage that follows (the guard checks it does) */
                    n = fire_active(pn, q + LB_Q, leak, a, nactive, ev, &cnt[2 * k + 1]);
                    cnt[2 * k] += n;
                    continue;
                } else if (!p[14]) {  /* a spike-driven synapse and its neurons, row by row: a row's membranes
                                       * get the step's leak and bias, its events, then fire while in cache */
                    int32_t *room = (int32_t *)q[4] + lb_tables(&g);
                    const int unit = bucket(&g, w, ev, n, room, lb_warm(&g, t));
                    const uint64_t *rows = row_masks(&g, room, masks);
                    const int64_t row = g.Wo * g.Cout, *pn = p + LB_P;
                    const int fast = lb_fast(pn, q + LB_Q);
                    cnt[2 * k] += n;
                    n = 0;
                    for (int64_t oy = 0; oy < g.Ho; oy++) {
                        cnt[2 * k + 1] += gather_rows(&g, w, v, room, unit, oy, oy + 1, leak, b, rows);
                        n = fire(pn, q + LB_Q, ev, oy * row, (oy + 1) * row, n, &cnt[2 * (k + 1) + 1], fast);
                    }
                    k++;  /* the neuron stage that follows (the guard checks it does) */
                    cnt[2 * k] += n;
                    continue;
                } else {  /* the readout */
                    int32_t *room = (int32_t *)q[4] + lb_tables(&g);
                    for (int64_t o = 0; o < g.Ho * g.Wo; o++)
                        for (int64_t c = 0; c < g.Cout; c++) v[o * g.Cout + c] = leak * v[o * g.Cout + c] + b[c];
                    cnt[2 * k] += n;
                    const int unit = bucket(&g, w, ev, n, room, lb_warm(&g, t));
                    cnt[2 * k + 1] += gather_rows(&g, w, v, room, unit, 0, g.Ho, 1.0f, NULL, row_masks(&g, room, masks));
                }
                if (p[14]) {
                    readout = v;
                    classes = M;
                }
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

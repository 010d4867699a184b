/* GGUF (ggml) block formats read in place: dequantization and a few-row matmul.
 *
 * Plain C (+ OpenMP where the compiler has it), no torch headers; loaded through ctypes by kernels/kquant.py, compiled
 * with -O3 -march=native -ffp-contract=off (no fused multiply-add in the dequantization, so
 * every weight comes out bit for bit as ggml's own reference code and gguf-py compute it).
 *
 * Types (ggml ids): Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, IQ4_NL 20 (blocks of 32 weights)
 * and Q2_K 10, Q3_K 11, Q4_K 12, Q5_K 13, Q6_K 14, IQ4_XS 23 (super-blocks of 256). A matrix
 * is its rows one after another, each row k / block weights blocks, exactly as the file
 * stores it.
 *
 * The matmul (kq_gemm, kq_moe) runs at one of two precisions, chosen per call (act):
 *   8 / 16: the activations rounded once to 8-bit blocks (llama.cpp's Q8_0 / Q8_K; 16 adds a
 *     second 8-bit code for the remainder) and integer block dot products: kquant_dot.h;
 *   otherwise: 256 weights of a row at a time dequantized into float32 (from L1), their dot
 *     product with each activation row in float32 -- the dequantized weights' exact product
 *     up to summation order (the reference).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define INLINE static inline __attribute__((always_inline))
#define MAXM 8
#define QK 256

#if defined(__aarch64__)
INLINE float h2f(uint16_t h) {   /* IEEE half -> float: fcvt, exact (subnormals included) */
    __fp16 x;
    memcpy(&x, &h, 2);
    return (float)x;
}
#elif defined(__F16C__)
#include <immintrin.h>
INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }   /* vcvtph2ps: the same exact conversion */
#else
INLINE float h2f(uint16_t h) {   /* IEEE half -> float, exact (subnormals included) */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else {   /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#endif

INLINE uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

INLINE uint16_t f2bf(float f) {   /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* bytes and weights per block */
static int block_bytes(int type) {
    switch (type) {
        case 2: return 18; case 3: return 20; case 6: return 22; case 7: return 24; case 8: return 34;
        case 20: return 18;
        case 10: return 84; case 11: return 110; case 12: return 144; case 13: return 176; case 14: return 210;
        case 23: return 136;
        default: return 0;
    }
}
static int block_size(int type) { return (type >= 10 && type <= 14) || type == 23 ? 256 : 32; }

/* IQ4_NL's (and IQ4_XS's) 16 non-linear levels: code c stands for the weight d x kvalues_iq4[c] */
static const int8_t kvalues_iq4[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

int kq_block_bytes(int type) { return block_bytes(type); }
int kq_block_size(int type) { return block_bytes(type) ? block_size(type) : 0; }

/* ---- one block -> floats ---------------------------------------------------------------- */

INLINE void dq_q4_0(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b));
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) y[j] = d * (float)((int)(qs[j] & 15) - 8);   /* two loops: each vectorizes */
    for (int j = 0; j < 16; j++) y[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
}

INLINE void dq_q4_1(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b)), m = h2f(rd16(b + 2));
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) y[j] = d * (float)(qs[j] & 15) + m;
    for (int j = 0; j < 16; j++) y[j + 16] = d * (float)(qs[j] >> 4) + m;
}

INLINE void dq_q5_0(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b));
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) y[j] = d * (float)((int)((qs[j] & 15) | (((qh >> j) << 4) & 0x10)) - 16);
    for (int j = 0; j < 16; j++) y[j + 16] = d * (float)((int)((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16);
}

INLINE void dq_q5_1(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b)), m = h2f(rd16(b + 2));
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) y[j] = d * (float)((qs[j] & 15) | (((qh >> j) << 4) & 0x10)) + m;
    for (int j = 0; j < 16; j++) y[j + 16] = d * (float)((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) + m;
}

INLINE void dq_q8_0(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b));
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
}

INLINE void dq_iq4_nl(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b));
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) y[j] = d * (float)kvalues_iq4[qs[j] & 15];
    for (int j = 0; j < 16; j++) y[j + 16] = d * (float)kvalues_iq4[qs[j] >> 4];
}

INLINE void scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Q2_K: 16 groups of 16 weights, each a 4-bit scale and 4-bit min; 2-bit codes, byte l of
 * each 32-byte half holding weights l, l + 32, l + 64, l + 96 of that half (2 bits each) */
INLINE void dq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *qs = b + 16;
    const float d = h2f(rd16(b + 80)), dmin = h2f(rd16(b + 82));
    for (int n = 0; n < 2; n++, qs += 32)
        for (int j = 0; j < 4; j++, y += 32, sc += 2)
            for (int h = 0; h < 2; h++) {   /* 16 weights share a scale and a min */
                const float dl = d * (float)(sc[h] & 15), ml = dmin * (float)(sc[h] >> 4);
                for (int l = 16 * h; l < 16 * h + 16; l++) y[l] = dl * (float)((qs[l] >> (2 * j)) & 3) - ml;
            }
}

/* Q3_K's 16 signed 6-bit group scales (stored + 32): low nibbles in bytes 0..7 (groups 0..7
 * low, 8..15 high), the top 2 bits of group g in byte 8 + g % 4 at bit 2 (g / 4) */
INLINE int scale_q3_k(int g, const uint8_t *s) {
    const int lo = g < 8 ? s[g] & 15 : s[g - 8] >> 4, hi = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

/* Q3_K: Q2_K's 2-bit layout plus a high bit per weight (hmask byte l, bit 4 n + j); a clear
 * bit takes 4 off the code: weights d sc (-4 .. 3) */
INLINE void dq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
    const float d = h2f(rd16(b + 108));
    for (int n = 0, g = 0; n < 2; n++, qs += 32)
        for (int j = 0; j < 4; j++, y += 32, g += 2)
            for (int h = 0; h < 2; h++) {
                const float dl = d * (float)scale_q3_k(g + h, sc);
                const int bit = 4 * n + j;
                for (int l = 16 * h; l < 16 * h + 16; l++)
                    y[l] = dl * (float)((int)((qs[l] >> (2 * j)) & 3) - ((hm[l] >> bit) & 1 ? 0 : 4));
            }
}

/* IQ4_XS: 8 blocks of 32 weights, each a signed 6-bit scale (4 low bits in scales_l, 2 high
 * in scales_h), codes as IQ4_NL's */
INLINE int scale_iq4_xs(int ib, const uint8_t *b) {
    const int lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 15, hi = (rd16(b + 2) >> (2 * ib)) & 3;
    return (lo | (hi << 4)) - 32;
}

INLINE void dq_iq4_xs(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b));
    const uint8_t *qs = b + 8;
    for (int ib = 0; ib < 8; ib++, qs += 16, y += 32) {
        const float dl = d * (float)scale_iq4_xs(ib, b);
        for (int j = 0; j < 16; j++) y[j] = dl * (float)kvalues_iq4[qs[j] & 15];
        for (int j = 0; j < 16; j++) y[j + 16] = dl * (float)kvalues_iq4[qs[j] >> 4];
    }
}

INLINE void dq_q4_k(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b)), dmin = h2f(rd16(b + 2));
    const uint8_t *sc = b + 4, *q = b + 16;
    for (int j = 0, is = 0; j < QK; j += 64, is += 2, q += 32) {
        int s, m;
        scale_min_k4(is, sc, &s, &m);
        const float d1 = d * (float)s, m1 = dmin * (float)m;
        scale_min_k4(is + 1, sc, &s, &m);
        const float d2 = d * (float)s, m2 = dmin * (float)m;
        for (int l = 0; l < 32; l++) y[j + l] = d1 * (float)(q[l] & 15) - m1;
        for (int l = 0; l < 32; l++) y[j + 32 + l] = d2 * (float)(q[l] >> 4) - m2;
    }
}

INLINE void dq_q5_k(const uint8_t *b, float *y) {
    const float d = h2f(rd16(b)), dmin = h2f(rd16(b + 2));
    const uint8_t *sc = b + 4, *qh = b + 16, *ql = b + 48;
    int u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < QK; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
        int s, m;
        scale_min_k4(is, sc, &s, &m);
        const float d1 = d * (float)s, m1 = dmin * (float)m;
        scale_min_k4(is + 1, sc, &s, &m);
        const float d2 = d * (float)s, m2 = dmin * (float)m;
        for (int l = 0; l < 32; l++) y[j + l] = d1 * (float)((ql[l] & 15) + (qh[l] & u1 ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++) y[j + 32 + l] = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
}

INLINE void dq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = h2f(rd16(b + 208));
    for (int n = 0; n < QK; n += 128, ql += 64, qh += 32, sc += 8) {
        float ds[8];
        for (int i = 0; i < 8; i++) ds[i] = d * (float)sc[i];
        for (int h = 0; h < 2; h++) {   /* 16 weights share a scale: loops of 16 vectorize */
            const int o = 16 * h;
            for (int l = o; l < o + 16; l++)
                y[n + l] = ds[h] * (float)((int)((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
            for (int l = o; l < o + 16; l++)
                y[n + l + 32] = ds[h + 2] * (float)((int)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
            for (int l = o; l < o + 16; l++)
                y[n + l + 64] = ds[h + 4] * (float)((int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            for (int l = o; l < o + 16; l++)
                y[n + l + 96] = ds[h + 6] * (float)((int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

INLINE int dq_chunk(int type, const uint8_t *b, int left, float *y) {
    switch (type) {
        case 10: dq_q2_k(b, y); return QK;
        case 11: dq_q3_k(b, y); return QK;
        case 23: dq_iq4_xs(b, y); return QK;
        case 12: dq_q4_k(b, y); return QK;
        case 13: dq_q5_k(b, y); return QK;
        case 14: dq_q6_k(b, y); return QK;
        default: break;
    }
    const int bb = block_bytes(type);
    int n = left < QK ? left : QK;
    for (int i = 0; i < n; i += 32, b += bb) {
        switch (type) {
            case 2: dq_q4_0(b, y + i); break;
            case 3: dq_q4_1(b, y + i); break;
            case 6: dq_q5_0(b, y + i); break;
            case 7: dq_q5_1(b, y + i); break;
            case 20: dq_iq4_nl(b, y + i); break;
            default: dq_q8_0(b, y + i); break;
        }
    }
    return n;
}

static void dq_row(int type, const uint8_t *row, int k, float *y) {
    const int bb = block_bytes(type), bs = block_size(type);
    for (int i = 0; i < k;) {
        int n = dq_chunk(type, row + (long)(i / bs) * bb, k - i, y + i);
        i += n;
    }
}

/* rows [n] of a matrix (row stride in bytes) -> out [n][k] float32 or bf16. Returns -1 for
 * an unknown type or a k that is not whole blocks. */
int kq_dequant(int type, const uint8_t *w, long stride, long n, int k, void *out, int out_bf16, int nthreads) {
    if (!block_bytes(type) || k % block_size(type)) return -1;
#pragma omp parallel num_threads(nthreads)
    {
        float *buf = out_bf16 ? malloc(sizeof(float) * (size_t)k) : NULL;
#pragma omp for schedule(static)
        for (long r = 0; r < n; r++) {
            if (out_bf16) {
                dq_row(type, w + r * stride, k, buf);
                uint16_t *o = (uint16_t *)out + r * (long)k;
                for (int i = 0; i < k; i++) o[i] = f2bf(buf[i]);
            } else {
                dq_row(type, w + r * stride, k, (float *)out + r * (long)k);
            }
        }
        free(buf);
    }
    return 0;
}

/* the rows idx[0..n) of a matrix -> out [n][k] float32 (an embedding lookup) */
int kq_get_rows(int type, const uint8_t *w, long stride, const int64_t *idx, long n, int k, float *out) {
    if (!block_bytes(type) || k % block_size(type)) return -1;
    for (long r = 0; r < n; r++) dq_row(type, w + idx[r] * stride, k, out + r * (long)k);
    return 0;
}

#include "kquant_dot.h"

/* the SIMD path of the integer dot products: "avx512-vnni" / "avx-vnni" (AVX2 code with VNNI's
 * dot instruction for the blocks of 32), "avx2", "neon-dotprod" / "neon" (ARM64, with / without
 * ARMv8.2's sdot) or "scalar" (plain C) */
const char *kq_isa(void) {
#if defined(KQ_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return "avx512-vnni";
#elif defined(KQ_AVX2) && defined(__AVXVNNI__)
    return "avx-vnni";
#elif defined(KQ_AVX2)
    return "avx2";
#elif defined(KQ_NEON) && defined(__ARM_FEATURE_DOTPROD)
    return "neon-dotprod";
#elif defined(KQ_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

/* ---- matmul: y[m][j] = sum_i x[m][i] w[j][i] for m < M <= MAXM -------------------------- */

INLINE float dot16(const float *a, const float *b, int n) {
    float acc[16] = {0};
    for (int i = 0; i < n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[i + l] * b[i + l];
    float s = 0.f;
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

static void row_dot(int type, const uint8_t *row, int k, const float *x, int M, float *out, float *buf) {
    const int bb = block_bytes(type), bs = block_size(type);
    float acc[MAXM] = {0};
    for (int i = 0; i < k;) {
        int n = dq_chunk(type, row + (long)(i / bs) * bb, k - i, buf);
        for (int m = 0; m < M; m++) acc[m] += dot16(buf, x + (long)m * k + i, n);
        i += n;
    }
    for (int m = 0; m < M; m++) out[m] = acc[m];
}

/* x float32 [M][k] (M <= 8), w n rows of stride bytes -> y float32 [M][ldy]. act 8 or 16: the
 * activations rounded to 8-bit blocks (16: two 8-bit terms) and integer dot products
 * (kquant_dot.h); otherwise float32 dot products of the dequantized weights (the exact
 * reference). -1: bad arguments, 1: no memory. */
int kq_gemm(int type, const float *x, int M, int k, const uint8_t *w, long stride, long n, float *y, long ldy,
            int nthreads, int act) {
    if (!block_bytes(type) || k % block_size(type) || M > MAXM || M < 1) return -1;
    if (n * stride < (32L << 10)) nthreads = 1;
    if (act == 8 || act == 16) {
        act_t a;
        if (act_quant(&a, x, M, k, k, act_bs(type), act)) { act_free(&a); return 1; }
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (long j = 0; j < n; j++) {
            float out[MAXM];
            qdot_row(type, w + j * stride, &a, 0, M, out);
            for (int m = 0; m < M; m++) y[m * ldy + j] = out[m];
        }
        act_free(&a);
        return 0;
    }
#pragma omp parallel num_threads(nthreads)
    {
        float buf[QK] __attribute__((aligned(64)));
        float out[MAXM];
#pragma omp for schedule(static)
        for (long j = 0; j < n; j++) {
            row_dot(type, w + j * stride, k, x, M, out, buf);
            for (int m = 0; m < M; m++) y[m * ldy + j] = out[m];
        }
    }
    return 0;
}

/* One token through SwiGLU experts stored as GGUF blocks: for each chosen expert e (and the
 * shared one when shared >= 0, weight 1), h = silu(gate_e x) * (up_e x), y += w_e * down_e h.
 * table int64 [E][3]: addresses of gate, up, down rows (row strides gst, ust, dst_ bytes);
 * types[3]: their ggml types; x float32 [hidden]; y float32 [hidden]; act as kq_gemm's (8 or
 * 16: x and each expert's h rounded to integer blocks once, for the block size of the matrix
 * that reads them). Returns 0, or 1 when out of memory. */
int kq_moe(const int64_t *table, const int *types, long gst, long ust, long dst_, int inter, int hidden,
           const int64_t *idx, const float *wts, int k, int shared, const float *x, float *y, int nthreads,
           int act) {
    float *h = malloc(sizeof(float) * (size_t)inter * (k + 1));
    float *g = malloc(sizeof(float) * (size_t)inter * (k + 1));
    float *yy = calloc((size_t)hidden * (k + 1), sizeof(float));
    act_t ag = {0}, au = {0}, ah = {0};
    int ne = k + (shared >= 0 ? 1 : 0), fail = !h || !g || !yy;
    const int q8 = act == 8 || act == 16, same = act_bs(types[0]) == act_bs(types[1]);
    if (!fail && q8) {
        fail = act_quant(&ag, x, 1, hidden, hidden, act_bs(types[0]), act);
        if (!fail && !same) fail = act_quant(&au, x, 1, hidden, hidden, act_bs(types[1]), act);
    }
    if (fail) {
        free(h); free(g); free(yy); act_free(&ag); act_free(&au);
        return 1;
    }
    const act_t *xu = same ? &ag : &au;
    /* gate and up of all experts: one parallel loop over (expert, row) */
#pragma omp parallel num_threads(nthreads)
    {
        float buf[QK] __attribute__((aligned(64)));
        float o;
#pragma omp for schedule(static)
        for (long t = 0; t < (long)ne * inter * 2; t++) {
            int e = (int)(t / (2L * inter)), r = (int)(t % (2L * inter));
            long ex = e < k ? idx[e] : shared;
            const int64_t *row = table + 3 * ex;
            if (r < inter) {
                const uint8_t *wr = (const uint8_t *)row[0] + r * gst;
                if (q8) qdot_row(types[0], wr, &ag, 0, 1, &o);
                else row_dot(types[0], wr, hidden, x, 1, &o, buf);
                g[(long)e * inter + r] = o;
            } else {
                const uint8_t *wr = (const uint8_t *)row[1] + (r - inter) * ust;
                if (q8) qdot_row(types[1], wr, xu, 0, 1, &o);
                else row_dot(types[1], wr, hidden, x, 1, &o, buf);
                h[(long)e * inter + r - inter] = o;
            }
        }
#pragma omp for schedule(static)
        for (long t = 0; t < (long)ne * inter; t++) {
            float a = g[t];
            h[t] = a / (1.f + __builtin_expf(-a)) * h[t];
        }
#pragma omp single
        if (q8) fail = act_quant(&ah, h, ne, inter, inter, act_bs(types[2]), act);
#pragma omp for schedule(static)
        for (long t = 0; t < (long)ne * hidden; t++) {
            if (fail) continue;
            int e = (int)(t / hidden), r = (int)(t % hidden);
            long ex = e < k ? idx[e] : shared;
            const int64_t *row = table + 3 * ex;
            const uint8_t *wr = (const uint8_t *)row[2] + r * dst_;
            if (q8) qdot_row(types[2], wr, &ah, e, 1, &o);
            else row_dot(types[2], wr, inter, h + (long)e * inter, 1, &o, buf);
            yy[t] = o;
        }
#pragma omp for schedule(static)
        for (int r = 0; r < hidden; r++) {
            float s = 0.f;
            for (int e = 0; e < ne; e++) s += (e < k ? wts[e] : 1.f) * yy[(long)e * hidden + r];
            y[r] = s;
        }
    }
    free(h); free(g); free(yy); act_free(&ag); act_free(&au); act_free(&ah);
    return fail ? 1 : 0;
}

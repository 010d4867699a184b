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
 * At 8 / 16 bits on AVX2 builds, Q4_0 and Q4_K rows go eight at a time where they come in
 * eights (qdot_rows8, kquant_dot.h: decode's matrix-vector products); the rest a row at a time.
 * Many rows (prefill), kq_gemm_tiled: Q4_0, Q8_0, Q4_K, Q6_K at 8-bit activations, a tiled GEMM
 * on AVX2 builds (and VNNI ones: the same code, VNNI's dot instructions where they save one),
 * kq_gemm 8 rows at a time on the others (plain C, NEON); kernels/kquant.py runs it on the x86
 * builds where it measured faster (tiled_gemm_for), the other types and builds dequantize tiles
 * of rows for torch's matmuls (kq_dequant).
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

#include "bf16.h"   /* f2bf */

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
/* ggml's i-quants (IQ2_XXS 16, IQ2_XS 17, IQ3_XXS 18, IQ1_S 19, IQ3_S 21, IQ2_S 22, IQ1_M 29):
 * their dot products live in kernels/csrc/iquant.c's library; kq_moe calls them by address */
INLINE int is_iq(int type) { return (type >= 16 && type <= 19) || type == 21 || type == 22 || type == 29; }
static int block_size(int type) { return (type >= 10 && type <= 14) || type == 23 || is_iq(type) ? 256 : 32; }

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
        const long g8 = rows8_type(type) ? n / 8 : 0;   /* groups of eight rows (qdot_rows8), then the rest */
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (long t = 0; t < n - 7 * g8; t++) {
            float out[MAXM * 8];
            if (t < g8) {
                qdot_rows8(type, w + 8 * t * stride, stride, &a, 0, M, out, t + 1 < g8 ? w + 8 * (t + 1) * stride : NULL);
                for (int m = 0; m < M; m++)
                    for (int r = 0; r < 8; r++) y[m * ldy + 8 * t + r] = out[8 * m + r];
            } else {
                const long j = t + 7 * g8;
                qdot_row(type, w + j * stride, &a, 0, M, out);
                for (int m = 0; m < M; m++) y[m * ldy + j] = out[m];
            }
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
 * that reads them). A matrix of i-quants (is_iq) is read by iq_dot (iquant.c's iq_row_dot, its
 * address) with grids[j] its codebook; they need act 8 or 16. Returns 0, 1 when out of memory,
 * -1 for an i-quant without act 8 / 16 or iq_dot. */
typedef float (*iq_dot_fn)(int type, const uint8_t *row, int k, const void *grid, const int8_t *q, const int8_t *r,
                           const float *d);

/* row m of the rounded activations a times one weight row of `type` */
INLINE float moe_dot(int type, const uint8_t *wr, const act_t *a, int m, iq_dot_fn iq_dot, const void *grid) {
    float o;
    if (is_iq(type)) {
        const long off = (long)m * a->k;
        return iq_dot(type, wr, a->k, grid, a->q + off, a->r ? a->r + off : NULL, a->d + (long)m * (a->k / 256));
    }
    qdot_row(type, wr, a, m, 1, &o);
    return o;
}

int kq_moe(const int64_t *table, const int *types, long gst, long ust, long dst_, int inter, int hidden,
           const int64_t *idx, const float *wts, int k, int shared, const float *x, float *y, int nthreads,
           int act, const void *iq_dot_addr, const int64_t *grids) {
    const iq_dot_fn iq_dot = (iq_dot_fn)iq_dot_addr;
    for (int j = 0; j < 3; j++)
        if (is_iq(types[j]) && (!iq_dot || (act != 8 && act != 16))) return -1;
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
    /* gate and up of all experts: one parallel loop over (expert, rows): a row, or eight of Q4_0 / Q4_K
     * (qdot_rows8) where the matrix's rows come in eights */
    const int rg = q8 && rows8_type(types[0]) && inter % 8 == 0 ? 8 : 1;
    const int ru = q8 && rows8_type(types[1]) && inter % 8 == 0 ? 8 : 1;
    const int rd = q8 && rows8_type(types[2]) && hidden % 8 == 0 ? 8 : 1;
    const long ug = inter / rg, uu = inter / ru, ud = hidden / rd;   /* units per expert */
#pragma omp parallel num_threads(nthreads)
    {
        float buf[QK] __attribute__((aligned(64)));
        float o[8];
#pragma omp for schedule(static)
        for (long t = 0; t < (long)ne * (ug + uu); t++) {
            int e = (int)(t / (ug + uu));
            long u = t % (ug + uu);
            long ex = e < k ? idx[e] : shared;
            const int64_t *row = table + 3 * ex;
            if (u < ug) {
                const uint8_t *wr = (const uint8_t *)row[0] + u * rg * gst;
                if (rg == 8) qdot_rows8(types[0], wr, gst, &ag, 0, 1, o, u + 1 < ug ? wr + 8 * gst : NULL);
                else if (q8) o[0] = moe_dot(types[0], wr, &ag, 0, iq_dot, (const void *)grids[0]);
                else row_dot(types[0], wr, hidden, x, 1, o, buf);
                for (int r = 0; r < rg; r++) g[(long)e * inter + u * rg + r] = o[r];
            } else {
                u -= ug;
                const uint8_t *wr = (const uint8_t *)row[1] + u * ru * ust;
                if (ru == 8) qdot_rows8(types[1], wr, ust, xu, 0, 1, o, u + 1 < uu ? wr + 8 * ust : NULL);
                else if (q8) o[0] = moe_dot(types[1], wr, xu, 0, iq_dot, (const void *)grids[1]);
                else row_dot(types[1], wr, hidden, x, 1, o, buf);
                for (int r = 0; r < ru; r++) h[(long)e * inter + u * ru + r] = o[r];
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
        for (long t = 0; t < (long)ne * ud; t++) {
            if (fail) continue;
            int e = (int)(t / ud);
            long u = t % ud;
            long ex = e < k ? idx[e] : shared;
            const int64_t *row = table + 3 * ex;
            const uint8_t *wr = (const uint8_t *)row[2] + u * rd * dst_;
            if (rd == 8) qdot_rows8(types[2], wr, dst_, &ah, e, 1, o, u + 1 < ud ? wr + 8 * dst_ : NULL);
            else if (q8) o[0] = moe_dot(types[2], wr, &ah, e, iq_dot, (const void *)grids[2]);
            else row_dot(types[2], wr, inter, h + (long)e * inter, 1, o, buf);
            for (int r = 0; r < rd; r++) yy[(long)e * hidden + u * rd + r] = o[r];
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

/* ---- many-row matmul (prefill): y[M][n] = x[M][k] W[:n]^T at 8-bit activations -----------
 *
 * kq_gemm reads each weight block once per 8 activation rows and unpacks it each time; over a
 * prompt that leaves it at ~60-85 GFLOP/s a core on AVX2 (8-bit activations; 40-47 at 16),
 * below dequantize + MKL's float32 GEMM (~105). The tiled GEMM (the design of quant_gemv.c's
 * duet_gemm_tiled) instead:
 *   activations  rounded once per call to llama.cpp's 8-bit blocks (Q8_0 / Q8_K, the codes
 *                act_quant(.., 8) gives), rows in parallel, stored as each type's product wants;
 *   threads      split the weight rows in groups of TN (a contiguous range each);
 *   a group      its TN rows' blocks unpacked once (wunpack) per pass of MC activation rows
 *                (their codes stay in L2 while the group's stay in L1), then the activation
 *                rows two at a time against the TN rows (tile_row): per block TN integer dot
 *                products folded by hadds into one vector (lanes j and 4 + j: row j's two
 *                halves), one conversion and one fma with the scale products.
 * The integers per block (per super-block for the K-quants, their 6/8-bit sub-scales applied in
 * int32) are exactly kquant_dot.h's; only the float32 sums' order differs. Types: Q4_0 2, Q8_0 8,
 * Q4_K 12, Q6_K 14 (tiled_type). AVX2 only (VNNI builds run the same code, with vpdpwssd in
 * madd_acc and Q8_0 on dpbusd: TQ8_U8); other builds (plain C, NEON) compute the same through
 * kq_gemm 8 rows at a time. */

#define TN 4      /* weight rows per group */
#define MC 128    /* activation rows per pass over a thread's groups */

INLINE int tiled_type(int type) { return type == 2 || type == 8 || type == 12 || type == 14; }

#if defined(KQ_AVX2)
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
#define TQ8_U8 1   /* Q8_0 as Q4_0: VNNI's dpbusd sums u8 x s8 products in int32, no int16 to overflow */
#else
#define TQ8_U8 0
#endif

/* the activations, laid out for the type's product: Q4_0 and Q6_K the codes + 128 as unsigned
 * bytes (maddubs' unsigned side: the weights keep their sign, their offset taken off), Q8_0 the
 * codes as int16 (madd: a pair of 8-bit x 8-bit products can exceed maddubs' int16; with VNNI
 * as Q4_0's), Q4_K the int8 codes and each 16's sum as int16 (|.| <= 16 x 127) for its mins */
typedef struct {
    int KB;          /* blocks per row */
    long row;        /* bytes of codes per row */
    uint8_t *q;      /* [M][row] */
    float *d;        /* [M][KB] scales */
    int16_t *s16;    /* [M][k / 16] (Q4_K) */
} tact_t;

static void tact_free(tact_t *a) {
    free(a->q); free(a->d); free(a->s16);
}

/* 32 int32 codes (|c| <= 127) -> 32 int8 in order */
INLINE __m256i pack8(const __m256i *c) {
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* One block of bs (32: Q8_0, 256: Q8_K) activations -> its codes and scale: quant_q8_0 /
 * quant_q8_k's results (q8_activations.h) in vectors. The same float32 operations; roundf's
 * ties away from zero put back where round-to-even took the other way (t - trunc(t) is exact);
 * nearest_int is the conversion's own rounding, to even. */
static void quant_block_avx2(int bs, const float *x, int8_t *q, float *d) {
    const __m256 nosign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 am = _mm256_setzero_ps();
    for (int i = 0; i < bs; i += 8) am = _mm256_max_ps(am, _mm256_and_ps(_mm256_loadu_ps(x + i), nosign));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    float scale, dd;
    if (bs == 32) {
        dd = amax / 127.f;
        scale = dd != 0.f ? 1.f / dd : 0.f;
    } else {
        if (amax == 0.f) {
            memset(q, 0, 256);
            *d = 0.f;
            return;
        }
        int i = 0;
        while (i < 255 && fabsf(x[i]) != amax) i++;   /* the first of largest magnitude, sign kept (NaNs: bounded) */
        scale = -127.f / x[i];
        dd = 1.f / scale;
    }
    const __m256 sv = _mm256_set1_ps(scale);
    for (int i = 0; i < bs; i += 32) {
        __m256i c[4];
        for (int v = 0; v < 4; v++) {
            const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * v), sv);
            __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            if (bs == 32) {
                const __m256 tr = _mm256_round_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC), fr = _mm256_sub_ps(t, tr);
                const __m256 tie = _mm256_cmp_ps(_mm256_and_ps(fr, nosign), _mm256_set1_ps(0.5f), _CMP_EQ_OQ);
                r = _mm256_blendv_ps(r, _mm256_add_ps(tr, _mm256_add_ps(fr, fr)), tie);
            }
            c[v] = _mm256_cvtps_epi32(r);
            if (bs == 256) c[v] = _mm256_min_epi32(c[v], _mm256_set1_epi32(127));
        }
        _mm256_storeu_si256((__m256i *)(q + i), pack8(c));
    }
    *d = dd;
}

/* x [M][k] -> a (rows split among threads). -1 when out of memory. */
static int tact_prep(tact_t *a, int type, const float *x, int M, int k, int nthreads) {
    const int bs = block_size(type);
    a->KB = k / bs;
    a->row = type == 8 && !TQ8_U8 ? 2L * k : k;
    a->q = aligned_alloc(32, ((size_t)M * a->row + 31) & ~(size_t)31);
    a->d = malloc(sizeof(float) * (size_t)M * a->KB);
    a->s16 = type == 12 ? malloc(sizeof(int16_t) * (size_t)M * (k / 16)) : NULL;
    if (!a->q || !a->d || (type == 12 && !a->s16)) return -1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int m = 0; m < M; m++) {
        uint8_t *o = a->q + m * a->row;
        for (int b = 0; b < a->KB; b++) {
            int8_t c[QK] __attribute__((aligned(32)));
            quant_block_avx2(bs, x + (long)m * k + (long)b * bs, c, a->d + (long)m * a->KB + b);
            for (int i = 0; i < bs; i += 32) {
                const __m256i v = _mm256_load_si256((const __m256i *)(c + i));
                if (type == 2 || (type == 8 && TQ8_U8) || type == 14) {
                    _mm256_store_si256((__m256i *)(o + (long)bs * b + i), _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)));
                } else if (type == 8) {
                    _mm256_store_si256((__m256i *)(o + 64L * b), _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)));
                    _mm256_store_si256((__m256i *)(o + 64L * b + 32), _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)));
                } else {   /* the codes, and their sums of 16 */
                    _mm256_store_si256((__m256i *)(o + 256L * b + i), v);
                    int16_t *s = a->s16 + (long)m * (k / 16) + 16 * b + i / 16;
                    s[0] = (int16_t)hsum_i32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)),
                                                               _mm256_set1_epi16(1)));
                    s[1] = (int16_t)hsum_i32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)),
                                                               _mm256_set1_epi16(1)));
                }
            }
        }
    }
    return 0;
}

/* vectors and floats per block of an unpacked group of TN rows */
INLINE int kvecs(int type) { return type == 12 ? 17 : 16; }   /* per row of a K-quant: codes, sub-scales (, mins) */
INLINE int wvecs(int type) {
    return type == 2 || (type == 8 && TQ8_U8) ? TN + 1 : type == 8 ? 2 * TN : kvecs(type) * TN + (type == 14);
}
#define WFLOATS (2 * TN)

/* The TN rows from `rows` (stride bytes; a short last group repeats its last row) unpacked for
 * tile_row, block by block: wv [KB][wvecs] and ws [KB][WFLOATS] (the rows' scales, then the
 * K-quants' mins' scales).
 *   Q4_0: the signed codes q - 8 per row, then int32 lanes 0..3: 128 x the rows' code sums (the
 *         activations' + 128 times them, taken off again);
 *   Q8_0: the codes as two int16 vectors per row (with VNNI: as Q4_0's, the codes as stored);
 *   Q4_K: per row its 8 groups of 32 codes (0..15), their int16 sub-scales (kscales_avx2's sv)
 *         and the 16 int16 mins (its cw);
 *   Q6_K: per row its 8 groups of signed codes q - 32 and their sub-scales, then as Q4_0's
 *         int32 lanes 0..3: 128 x the rows' codes times sub-scales, summed. */
static void wunpack(int type, const uint8_t *rows, long stride, int nj, int KB, __m256i *wv, float *ws) {
    const int bb = block_bytes(type), V = wvecs(type);
    for (int b = 0; b < KB; b++) {
        __m256i *v = wv + (long)b * V;
        float *s = ws + (long)b * WFLOATS;
        int32_t sums[TN];
        for (int j = 0; j < TN; j++) {
            const uint8_t *p = rows + (j < nj ? j : nj - 1) * stride + (long)b * bb;
            if (type == 2) {
                const __m256i nib = nib32(p + 2);
                const __m256i sad = _mm256_sad_epu8(nib, _mm256_setzero_si256());
                sums[j] = 128 * (hsum_i32(sad) - 256);
                v[j] = _mm256_sub_epi8(nib, _mm256_set1_epi8(8));
                s[j] = h2f(rd16(p));
            } else if (type == 8 && TQ8_U8) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(p + 2)), one = _mm256_set1_epi16(1);
                sums[j] = 128 * hsum_i32(_mm256_add_epi32(
                                    _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)), one),
                                    _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1)), one)));
                v[j] = q;
                s[j] = h2f(rd16(p));
            } else if (type == 8) {
                v[2 * j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 2)));
                v[2 * j + 1] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 18)));
                s[j] = h2f(rd16(p));
            } else {
                kscale_t ks;
                __m256i *r = v + kvecs(type) * j, cw;
                kscales_avx2(type, p, &ks, r + 8, type == 12 ? r + 16 : &cw);
                unpack256_avx2(type, p, r);
                if (type == 14) {   /* signed codes q - 32, and 128 x their sum times the sub-scales */
                    __m256i t = _mm256_setzero_si256();
                    for (int g = 0; g < 8; g++) {
                        r[g] = _mm256_sub_epi8(r[g], _mm256_set1_epi8(32));
                        t = _mm256_add_epi32(t, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), r[g]), r[8 + g]));
                    }
                    sums[j] = 128 * hsum_i32(t);
                }
                s[j] = ks.d;
                s[TN + j] = ks.dmin;
            }
        }
        if (type == 2 || (type == 8 && TQ8_U8) || type == 14)   /* the code sums' vector, last */
            v[wvecs(type) - 1] = _mm256_setr_epi32(sums[0], sums[1], sums[2], sums[3], 0, 0, 0, 0);
    }
}

/* four vectors of int32 lanes -> one: per 128-bit half, lane j the sum of d[j]'s four */
INLINE __m256i fold4(const __m256i *d) {
    return _mm256_hadd_epi32(_mm256_hadd_epi32(d[0], d[1]), _mm256_hadd_epi32(d[2], d[3]));
}

/* R activation rows (codes xr, row stride xrow; scales xd and sums of 16 xs, strides KB and
 * k / 16) against an unpacked group: out[r][j] = row r's dot product with weight row j over all
 * KB blocks. Two rows at a time share each load of the unpacked weights. */
INLINE void tile_row(const int type, const int R, const __m256i *wv, const float *ws, int KB, const uint8_t *xr,
                     long xrow, const float *xd, const int16_t *xs, long xsrow, float out[][TN]) {
    const int V = wvecs(type);
    __m256 acc[2], accm[2];
    for (int r = 0; r < R; r++) acc[r] = accm[r] = _mm256_setzero_ps();
    for (int b = 0; b < KB; b++) {
        const __m256i *v = wv + (long)b * V;
        const __m256 s4 = _mm256_broadcast_ps((const __m128 *)(ws + (long)b * WFLOATS));
        __m256i h[2];
        if (type == 2) {   /* int16 lanes: a pair <= 2 x 255 x 8, two more hadds <= 8 x 255 x 8 */
            for (int r = 0; r < R; r++) {
                const __m256i xv = _mm256_load_si256((const __m256i *)(xr + r * xrow + 32L * b));
                __m256i d[TN];
                for (int j = 0; j < TN; j++) d[j] = _mm256_maddubs_epi16(xv, v[j]);
                const __m256i t = _mm256_hadd_epi16(_mm256_hadd_epi16(d[0], d[1]), _mm256_hadd_epi16(d[2], d[3]));
                h[r] = _mm256_sub_epi32(_mm256_madd_epi16(t, _mm256_set1_epi16(1)), v[TN]);
            }
        } else if (type == 8 && TQ8_U8) {   /* (x + 128) . w in int32, less 128 x the sum of w */
            for (int r = 0; r < R; r++) {
                const __m256i xv = _mm256_load_si256((const __m256i *)(xr + r * xrow + 32L * b));
                __m256i d[TN];
                for (int j = 0; j < TN; j++) d[j] = dot4_u8s8(xv, v[j]);
                h[r] = _mm256_sub_epi32(fold4(d), v[TN]);
            }
        } else if (type == 8) {
            for (int r = 0; r < R; r++) {
                const __m256i x0 = _mm256_load_si256((const __m256i *)(xr + r * xrow + 64L * b));
                const __m256i x1 = _mm256_load_si256((const __m256i *)(xr + r * xrow + 64L * b + 32));
                __m256i d[TN];
                for (int j = 0; j < TN; j++)
                    d[j] = _mm256_add_epi32(_mm256_madd_epi16(v[2 * j], x0), _mm256_madd_epi16(v[2 * j + 1], x1));
                h[r] = fold4(d);
            }
        } else {   /* per group of 32: maddubs' int16 pairs times the sub-scales, summed in int32 */
            const int ks = kvecs(type);
            __m256i d[2][TN], c[TN];
            for (int r = 0; r < R; r++)
                for (int j = 0; j < TN; j++) d[r][j] = _mm256_setzero_si256();
            for (int g = 0; g < 8; g++) {
                __m256i xv[2];
                for (int r = 0; r < R; r++) xv[r] = _mm256_load_si256((const __m256i *)(xr + r * xrow + 256L * b + 32 * g));
                for (int j = 0; j < TN; j++) {
                    const __m256i q = _mm256_load_si256(v + ks * j + g), sc = _mm256_load_si256(v + ks * j + 8 + g);
                    for (int r = 0; r < R; r++)   /* Q4_K: codes 0..15 x signed x; Q6_K: x + 128 x codes -32..31 */
                        d[r][j] = madd_acc(d[r][j], type == 12 ? _mm256_maddubs_epi16(q, xv[r]) : _mm256_maddubs_epi16(xv[r], q), sc);
                }
            }
            for (int r = 0; r < R; r++) {
                if (type == 14) {   /* less 128 x the codes' scaled sum */
                    h[r] = _mm256_sub_epi32(fold4(d[r]), v[ks * TN]);
                    continue;
                }
                /* Q4_K's mins: their own scale, from the activations' sums of 16 */
                const __m256i sv = _mm256_loadu_si256((const __m256i *)(xs + r * xsrow + 16L * b));
                for (int j = 0; j < TN; j++) c[j] = _mm256_madd_epi16(v[ks * j + 16], sv);
                const __m256 m4 = _mm256_broadcast_ps((const __m128 *)(ws + (long)b * WFLOATS + TN));
                accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold4(c)), _mm256_mul_ps(m4, _mm256_set1_ps(xd[r * KB + b])),
                                          accm[r]);
                h[r] = fold4(d[r]);
            }
        }
        for (int r = 0; r < R; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h[r]), _mm256_mul_ps(s4, _mm256_set1_ps(xd[r * KB + b])), acc[r]);
    }
    for (int r = 0; r < R; r++) {
        const __m256 t = _mm256_sub_ps(acc[r], accm[r]);
        _mm_storeu_ps(out[r], _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    }
}

INLINE void put(float out[][TN], int R, int m, long n0, int nj, float *y, long ldy) {
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nj; j++) y[(m + r) * ldy + n0 + j] = out[r][j];
}

/* activation rows m0 .. m1-1 against one unpacked group (columns n0 .. n0 + nj - 1 of y) */
static void tile_rows(int type, const __m256i *wv, const float *ws, const tact_t *a, int k, int m0, int m1,
                      long n0, int nj, float *y, long ldy) {
    const long xsrow = k / 16;
#define ROWS(T, R)                                                                                     \
    tile_row(T, R, wv, ws, a->KB, a->q + m * a->row, a->row, a->d + (long)m * a->KB,                 \
             a->s16 ? a->s16 + m * xsrow : NULL, xsrow, out)
#define TYPE(T) for (; m + 2 <= m1; m += 2) { ROWS(T, 2); put(out, 2, m, n0, nj, y, ldy); }            \
    if (m < m1) { ROWS(T, 1); put(out, 1, m, n0, nj, y, ldy); }
    float out[2][TN];
    int m = m0;
    switch (type) {
        case 2: TYPE(2) break;
        case 8: TYPE(8) break;
        case 12: TYPE(12) break;
        default: TYPE(14) break;
    }
#undef TYPE
#undef ROWS
}
#endif

/* x float32 [M][k], w n rows of stride bytes -> y float32 [M][ldy], the activations rounded to
 * 8-bit blocks: kq_gemm(.., act 8)'s results for any M, tiled on AVX2 (above). -1: a type
 * without the tiled path (tiled_type) or bad arguments, 1: no memory. */
int kq_gemm_tiled(int type, const float *x, int M, int k, const uint8_t *w, long stride, long n, float *y,
                  long ldy, int nthreads) {
    if (!tiled_type(type) || k % block_size(type) || M < 1) return -1;
#if defined(KQ_AVX2)
    tact_t a = {0};
    if (tact_prep(&a, type, x, M, k, nthreads)) { tact_free(&a); return 1; }
    const long groups = (n + TN - 1) / TN;
    if (n * stride < (32L << 10)) nthreads = 1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
        const int nt = 1, id = 0;
#endif
        const long g0 = groups * id / nt, g1 = groups * (id + 1) / nt;
        __m256i *wv = aligned_alloc(32, sizeof(__m256i) * (size_t)wvecs(type) * a.KB);
        float *ws = aligned_alloc(32, sizeof(float) * (size_t)WFLOATS * a.KB);
        if (!wv || !ws) {
#pragma omp atomic write
            failed = 1;
        } else {
            for (int m0 = 0; m0 < M; m0 += MC) {
                const int m1 = M - m0 < MC ? M : m0 + MC;
                for (long g = g0; g < g1; g++) {
                    const int nj = n - g * TN < TN ? (int)(n - g * TN) : TN;
                    wunpack(type, w + g * TN * stride, stride, nj, a.KB, wv, ws);
                    tile_rows(type, wv, ws, &a, k, m0, m1, g * TN, nj, y, ldy);
                }
            }
        }
        free(wv);
        free(ws);
    }
    tact_free(&a);
    return failed;
#else   /* plain C / NEON: the same integers through the few-row matmul */
    for (int m0 = 0; m0 < M; m0 += MAXM) {
        const int mm = M - m0 < MAXM ? M - m0 : MAXM;
        const int rc = kq_gemm(type, x + (long)m0 * k, mm, k, w, stride, n, y + m0 * ldy, ldy, nthreads, 8);
        if (rc) return rc;
    }
    return 0;
#endif
}

/* Few-row matmul of i-quant weights with 8-bit activation blocks (included by iquant.c, after
   its f16 / le16 / le32 / ksigns / block_bytes).

   int iq_gemm(type, x, M, k, w, stride, n, y, ldy, grid, nthreads, act)
       x float32 [M][k] (1 <= M <= 8, contiguous rows), w: n rows of ggml blocks of `type`, row j
       at w + j * stride bytes, grid as iq_dequant's -> y[m * ldy + j] = x_m . w_j (float32).
       act 8 or 16 only (the float path is kernels/kquant.py's tiles). 0, -1 for bad arguments,
       1 when out of memory.
   const char *iq_isa(void): "avx2" (the AVX2 block dot below) or "scalar" (plain C).

   Activations: rounded once per call and row to llama.cpp's Q8_K blocks (256 per float32
   scale, d = -max / 127, codes round half to even, at most 127) -- with 16 bits each code
   followed by a second one for the remainder x 128 -- by the very formulas of
   kernels/csrc/q8_activations.h's quant_q8_k, which kquant_dot.h includes too
   (kernels/kquant.py's quantize_activations is their torch twin, and tests compare the results).

   Weights: every i-quant weight is an integer code times a scale that is exact in float32:
       IQ2_XXS / IQ2_XS / IQ2_S   d (0.5 + s) / 4 x (+-level)  = d/8 x (2 s + 1) x (+-level)
       IQ3_XXS                    d (0.5 + s) / 2 x (+-level)  = d/4 x (2 s + 1) x (+-level)
       IQ3_S                      d (1 + 2 s) x (+-level)
       IQ1_S / IQ1_M              d (2 s + 1) (g +- 1/8)       = d/8 x (2 s + 1) x (8 g +- 1)
   (levels 1..62, g in -1..1: every code fits int8, |code| <= 62). A block is unpacked into its
   256 int8 codes and 16 integer sub-scales (2 s + 1, one per 16 weights), then
       block sum = sum over 16-groups of (2 s + 1) x (codes . activation codes)   in int32
   and y += (d/8 or d/4 or d) x activation scale x block sum in float32: with 16 bits the
   first and second codes' sums are kept apart (the first's x 128 could pass 2^31 for IQ3_XXS),
   combined as (float) first x 128 + (float) second, as kquant_dot.h does. The integers are
   exactly the reference's (the dequantized weights are these products, without rounding).

   The codes are unpacked by the same portable code on every build (8 grid bytes at a time,
   signs applied as byte masks); only the 256-long integer dot differs: plain C loops, or
   AVX2's maddubs / madd (|code| <= 62, |activation code| <= 127: no int16 saturation). The
   float operations are the same on both, in the same order, so the builds agree bit for bit. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define IQ_MAXM 8

#if defined(__AVX2__)
#define IQ_AVX2 1
#include <immintrin.h>
#endif

const char *iq_isa(void) {
#if defined(IQ_AVX2)
    return "avx2";
#else
    return "scalar";
#endif
}

/* ---- activations: Q8_K (q8_activations.h, shared with kquant_dot.h) ---------------------- */

#include "q8_activations.h"

/* ---- weights: one block -> 256 int8 codes, 16 sub-scales, the float factor --------------- */

/* 8 (4) bytes as a little-endian word and back: byte j of the word is weight j, whatever the host */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define IQ_LE64(v) __builtin_bswap64(v)
#define IQ_LE32(v) __builtin_bswap32(v)
#else
#define IQ_LE64(v) (v)
#define IQ_LE32(v) (v)
#endif
static uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return IQ_LE64(v); }
static uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return IQ_LE32(v); }
static void st64(int8_t *p, uint64_t v) { v = IQ_LE64(v); memcpy(p, &v, 8); }

#define ONES8 0x0101010101010101ull
#define HIGH8 0x8080808080808080ull

/* 8 bits -> 8 bytes, byte j 0xff where bit j is set (byte j of a little-endian word is weight j) */
static uint64_t byte_mask(uint32_t s) {
    uint64_t t = ((uint64_t)(s & 255) * ONES8) & 0x8040201008040201ull;   /* byte j keeps bit j */
    uint64_t h = ((t + 0x7f7f7f7f7f7f7f7full) | t) & HIGH8;               /* nonzero -> 0x80 (no carries: bytes <= 0x80) */
    return (h >> 7) * 0xff;
}

/* 8 positive levels (1..62), negated where the sign bit is set: (g ^ m) + (m & 1) per byte, which
   never carries into the next byte since g > 0 */
static uint64_t signed8(uint64_t g, uint32_t s) {
    uint64_t m = byte_mask(s);
    return (g ^ m) + (m & ONES8);
}

/* 8 ternary levels (int8 -1 / 0 / 1) -> 8 g + 1, or 8 g - 1 where neg: per byte, no carries
   (8 g is -8, 0 or 8; adding -1 is adding 0xff, done as ~(~x + 1) would carry, so by bytes) */
static uint64_t shifted8(uint64_t g, int neg) {
    uint64_t e = (g << 3) & 0xf8f8f8f8f8f8f8f8ull;                 /* 8 g mod 256 in each byte */
    uint64_t down = ((e | HIGH8) - ONES8) ^ ((~e) & HIGH8);        /* bytewise e - 1 without borrows */
    uint64_t up = e + ONES8;                                        /* 0xf8 + 1, 0 + 1, 8 + 1: no carries */
    uint64_t m = (uint64_t)0 - (uint64_t)(neg != 0);                /* a select, not a branch: the signs are random */
    return (down & m) | (up & ~m);
}

static void sc2(int16_t *sc, int ib, int lo, int hi) { sc[2 * ib] = (int16_t)lo; sc[2 * ib + 1] = (int16_t)hi; }

/* the block at b -> c[256] codes, sc[16] sub-scales; returns the float factor (exact) */
static float iq_unpack(int type, const uint8_t *b, const uint8_t *grid, int8_t *c, int16_t *sc) {
    switch (type) {
    case 16: {   /* IQ2_XXS: per 32 weights 4 grid bytes, then 4 x 7 sign bits + the scale */
        for (int ib = 0; ib < 8; ib++) {
            const uint8_t *q = b + 2 + 8 * ib;
            uint32_t aux = le32(q + 4), ls = 2 * (aux >> 28) + 1;
            sc2(sc, ib, ls, ls);
            for (int l = 0; l < 4; l++)
                st64(c + 32 * ib + 8 * l, signed8(ld64(grid + 8 * q[l]), ksigns(aux >> 7 * l & 127)));
        }
        return f16(b) * 0.125f;
    }
    case 17: {   /* IQ2_XS: 32 words of a 9-bit index and 7 sign bits; a scale per 16 */
        const uint8_t *s = b + 66;
        for (int ib = 0; ib < 8; ib++) {
            sc2(sc, ib, 2 * (s[ib] & 15) + 1, 2 * (s[ib] >> 4) + 1);
            for (int l = 0; l < 4; l++) {
                uint32_t q = le16(b + 2 + 2 * (4 * ib + l));
                st64(c + 32 * ib + 8 * l, signed8(ld64(grid + 8 * (q & 511)), ksigns(q >> 9)));
            }
        }
        return f16(b) * 0.125f;
    }
    case 22: {   /* IQ2_S: low index bytes, 8-bit sign bytes, 2 high index bits each, a scale per 16 */
        const uint8_t *qs = b + 2, *signs = b + 34, *qh = b + 66, *s = b + 74;
        for (int ib = 0; ib < 8; ib++) {
            sc2(sc, ib, 2 * (s[ib] & 15) + 1, 2 * (s[ib] >> 4) + 1);
            for (int l = 0; l < 4; l++) {
                uint32_t idx = qs[4 * ib + l] | (qh[ib] >> 2 * l & 3) << 8;
                st64(c + 32 * ib + 8 * l, signed8(ld64(grid + 8 * idx), signs[4 * ib + l]));
            }
        }
        return f16(b) * 0.125f;
    }
    case 18: {   /* IQ3_XXS: grid bytes of 4 weights; per 32 a word of 4 x 7 sign bits + scale */
        for (int ib = 0; ib < 8; ib++) {
            const uint8_t *q = b + 2 + 8 * ib;
            uint32_t aux = le32(b + 66 + 4 * ib), ls = 2 * (aux >> 28) + 1;
            sc2(sc, ib, ls, ls);
            for (int l = 0; l < 4; l++) {
                uint64_t g = ld32(grid + 4 * q[2 * l]) | (uint64_t)ld32(grid + 4 * q[2 * l + 1]) << 32;
                st64(c + 32 * ib + 8 * l, signed8(g, ksigns(aux >> 7 * l & 127)));
            }
        }
        return f16(b) * 0.25f;
    }
    case 21: {   /* IQ3_S: 9-bit indices of 4 weights, 8-bit sign bytes, a scale (1 + 2 s) per 32 */
        const uint8_t *qs = b + 2, *qh = b + 66, *signs = b + 74, *s = b + 106;
        for (int ib = 0; ib < 8; ib++) {
            int ls = 1 + 2 * (s[ib / 2] >> 4 * (ib % 2) & 15);
            sc2(sc, ib, ls, ls);
            for (int l = 0; l < 4; l++) {
                uint32_t i0 = qs[8 * ib + 2 * l] | (qh[ib] >> 2 * l & 1) << 8;
                uint32_t i1 = qs[8 * ib + 2 * l + 1] | (qh[ib] >> (2 * l + 1) & 1) << 8;
                uint64_t g = ld32(grid + 4 * i0) | (uint64_t)ld32(grid + 4 * i1) << 32;
                st64(c + 32 * ib + 8 * l, signed8(g, signs[4 * ib + l]));
            }
        }
        return f16(b);
    }
    case 19: {   /* IQ1_S: per 32 a word of 4 x 3 high index bits, a 3-bit scale, the delta's sign */
        for (int ib = 0; ib < 8; ib++) {
            uint32_t qh = le16(b + 34 + 2 * ib), ls = 2 * (qh >> 12 & 7) + 1;
            sc2(sc, ib, ls, ls);
            for (int l = 0; l < 4; l++) {
                uint32_t idx = b[2 + 4 * ib + l] | (qh >> 3 * l & 7) << 8;
                st64(c + 32 * ib + 8 * l, shifted8(ld64(grid + 8 * idx), qh & 0x8000));
            }
        }
        return f16(b) * 0.125f;
    }
    default: {   /* 29, IQ1_M: a nibble per index (3 high bits, the delta's sign), 3-bit scales per 16 */
        const uint8_t *qs = b, *qh = b + 32, *scp = b + 48;
        uint32_t w[4];
        for (int j = 0; j < 4; j++) w[j] = le16(scp + 2 * j);
        uint32_t bits = w[0] >> 12 | (w[1] >> 8 & 0x00f0) | (w[2] >> 4 & 0x0f00) | (w[3] & 0xf000);
        uint8_t half[2] = {(uint8_t)bits, (uint8_t)(bits >> 8)};
        for (int ib = 0; ib < 8; ib++) {
            uint32_t s = w[ib / 2] >> 6 * (ib % 2);
            sc2(sc, ib, 2 * (s & 7) + 1, 2 * (s >> 3 & 7) + 1);
            for (int l = 0; l < 4; l++) {
                uint32_t h = qh[2 * ib + l / 2] >> 4 * (l % 2) & 15;
                uint32_t idx = qs[4 * ib + l] | (h & 7) << 8;
                st64(c + 32 * ib + 8 * l, shifted8(ld64(grid + 8 * idx), h & 8));
            }
        }
        return f16(half) * 0.125f;
    }
    }
}

/* ---- the integer dot of a block's codes with 256 activation codes ----------------------- */

#if defined(IQ_AVX2)
/* the codes' 8 groups of 32, as |code| (maddubs' unsigned side) and the code (for the signs),
   and the sub-scales as 16-bit lanes (low 128 bits: the first 16 weights of the group) */
typedef struct { __m256i u[8], c[8], s[8]; } iq_vec_t;

static void iq_vec(const int8_t *c, const int16_t *sc, iq_vec_t *v) {
    for (int j = 0; j < 8; j++) {
        v->c[j] = _mm256_loadu_si256((const __m256i *)(c + 32 * j));
        v->u[j] = _mm256_sign_epi8(v->c[j], v->c[j]);
        v->s[j] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * j + 1]), _mm_set1_epi16(sc[2 * j]));
    }
}

static int32_t iq_idot(const iq_vec_t *v, const int8_t *x) {
    __m256i acc = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {   /* |c| x sign(x, c) = c x x; pairs <= 2 x 62 x 127 < 2^15 */
        __m256i xv = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(x + 32 * j)), v->c[j]);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(v->u[j], xv), v->s[j]));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    return _mm_cvtsi128_si32(h);
}
#else
typedef struct { const int8_t *c; const int16_t *sc; } iq_vec_t;

static void iq_vec(const int8_t *c, const int16_t *sc, iq_vec_t *v) { v->c = c; v->sc = sc; }

static int32_t iq_idot(const iq_vec_t *v, const int8_t *x) {
    int32_t sum = 0;
    for (int g = 0; g < 16; g++) {
        int32_t t = 0;
        for (int i = 0; i < 16; i++) t += (int32_t)v->c[16 * g + i] * x[16 * g + i];
        sum += (int32_t)v->sc[g] * t;
    }
    return sum;
}
#endif

/* one weight row of nb blocks against the M activation rows */
static void iq_row(int type, const uint8_t *row, int nb, const uint8_t *grid, int M, int k, const int8_t *aq,
                   const int8_t *ar, const float *ad, float *out) {
    int8_t c[256] __attribute__((aligned(32)));
    int16_t sc[16];
    iq_vec_t v;
    float acc[IQ_MAXM] = {0};
    const int bb = block_bytes(type);
    for (int b = 0; b < nb; b++) {
        const float dw = iq_unpack(type, row + (long)b * bb, grid, c, sc);
        iq_vec(c, sc, &v);
        for (int m = 0; m < M; m++) {
            const long off = (long)m * k + 256L * b;
            const int32_t ia = iq_idot(&v, aq + off);
            const float dx = ad[(long)m * (k / 256) + b];
            if (ar) acc[m] += dw * dx * ((float)ia * 128.f + (float)iq_idot(&v, ar + off));
            else acc[m] += dw * dx * (float)ia;
        }
    }
    for (int m = 0; m < M; m++) out[m] = acc[m];
}

int iq_gemm(int type, const float *x, int M, int k, const uint8_t *w, long stride, long n, float *y, long ldy,
            const void *grid, int nthreads, int act) {
    if (!block_bytes(type) || k % QK_K || k <= 0 || M < 1 || M > IQ_MAXM || (act != 8 && act != 16)) return -1;
    const int nb = k / QK_K;
    int8_t *q = malloc((size_t)M * k), *r = act == 16 ? malloc((size_t)M * k) : NULL;
    float *d = malloc(sizeof(float) * (size_t)M * nb);
    if (!q || !d || (act == 16 && !r)) {
        free(q); free(r); free(d);
        return 1;
    }
    for (int m = 0; m < M; m++)
        for (int b = 0; b < nb; b++) {
            const long off = (long)m * k + 256L * b;
            quant_q8_k(x + off, q + off, r ? r + off : NULL, d + (long)m * nb + b);
        }
    if (n * stride < (32L << 10)) nthreads = 1;   /* a small matrix: not worth waking threads */
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static)
    for (long j = 0; j < n; j++) {
        float out[IQ_MAXM];
        iq_row(type, w + j * stride, nb, grid, M, k, q, r, d, out);
        for (int m = 0; m < M; m++) y[m * ldy + j] = out[m];
    }
    free(q); free(r); free(d);
    return 0;
}

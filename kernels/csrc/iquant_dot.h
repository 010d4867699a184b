/* Few-row matmul of i-quant weights with 8-bit activation blocks (included by iquant.c, after
   its f16 / le16 / le32 / ksigns / block_bytes).

   int iq_gemm(type, x, M, k, w, stride, n, y, ldy, grid, nthreads, act)
       x float32 [M][k] (1 <= M <= 8, contiguous rows), w: n rows of ggml blocks of `type`, row j
       at w + j * stride bytes, grid as iq_dequant's -> y[m * ldy + j] = x_m . w_j (float32).
       act 8 or 16 only (the float path is kernels/kquant.py's tiles). 0, -1 for bad arguments,
       1 when out of memory.
   const char *iq_isa(void): "avx2" (the AVX2 block dot below), "neon-dotprod" / "neon" (ARM64),
       or "scalar" (plain C).

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

   Plain C and ARM64 builds unpack the codes with portable code (8 grid bytes at a time, signs
   applied as byte masks from constant tables), then take the 256-long integer dot in a loop
   (NEON: sdot, or widening multiplies on ARMv8.0). AVX2 builds (iq_group) put the grid points
   straight into vectors as the levels' magnitudes, the signs as bytes of 1 / -1 from the same
   tables (ksigns' parity folded in), and take the dot with maddubs / madd (|code| <= 62,
   |activation code| <= 127: no int16 saturation): the same codes, the same integers. The
   float operations are the same on every build, in the same order, so the builds agree bit for
   bit. iq_row_dot is one row's product, for kquant.c's fused MoE step. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define IQ_MAXM 8
#define IQ_INLINE static inline __attribute__((always_inline))

#if defined(__AVX2__)
#define IQ_AVX2 1
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define IQ_NEON 1
#include <arm_neon.h>
#endif

const char *iq_isa(void) {
#if defined(IQ_AVX2)
    return "avx2";
#elif defined(IQ_NEON) && defined(__ARM_FEATURE_DOTPROD)
    return "neon-dotprod";
#elif defined(IQ_NEON)
    return "neon";
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

/* Sign masks, as constant tables (no code runs at load): a sign byte -> 8 bytes, byte j 0xff
   where bit j is set, else 0 (byte j of a little-endian word is weight j); and the 7 stored sign
   bits of a ksigns group straight to the mask of its 8 (the eighth their parity). */
#define IQ_BM1(s, j) ((uint64_t)(((s) >> (j) & 1) * 0xffu) << (8 * (j)))
#define IQ_BM(s) (IQ_BM1(s, 0) | IQ_BM1(s, 1) | IQ_BM1(s, 2) | IQ_BM1(s, 3) | IQ_BM1(s, 4) | IQ_BM1(s, 5) | \
                  IQ_BM1(s, 6) | IQ_BM1(s, 7))
#define IQ_PARITY7(s) (((s) ^ (s) >> 1 ^ (s) >> 2 ^ (s) >> 3 ^ (s) >> 4 ^ (s) >> 5 ^ (s) >> 6) & 1)
#define IQ_KBM(s) IQ_BM((s) | IQ_PARITY7(s) << 7)
#define IQ_X4(f, s) f(s), f((s) + 1), f((s) + 2), f((s) + 3)
#define IQ_X16(f, s) IQ_X4(f, s), IQ_X4(f, (s) + 4), IQ_X4(f, (s) + 8), IQ_X4(f, (s) + 12)
#define IQ_X64(f, s) IQ_X16(f, s), IQ_X16(f, (s) + 16), IQ_X16(f, (s) + 32), IQ_X16(f, (s) + 48)
static const uint64_t iq_bmask[256] = {IQ_X64(IQ_BM, 0), IQ_X64(IQ_BM, 64), IQ_X64(IQ_BM, 128), IQ_X64(IQ_BM, 192)};
static const uint64_t iq_kbmask[128] = {IQ_X64(IQ_KBM, 0), IQ_X64(IQ_KBM, 64)};
/* the same as bytes of -1 / 1 (0xff / 0x01): the sign side of AVX2's maddubs (_mm256_sign_epi8) */
#define IQ_BS(s) (IQ_BM(s) | ONES8)
#define IQ_KBS(s) (IQ_KBM(s) | ONES8)
static const uint64_t iq_bsign[256] = {IQ_X64(IQ_BS, 0), IQ_X64(IQ_BS, 64), IQ_X64(IQ_BS, 128), IQ_X64(IQ_BS, 192)};
static const uint64_t iq_kbsign[128] = {IQ_X64(IQ_KBS, 0), IQ_X64(IQ_KBS, 64)};

/* 8 positive levels (1..62), negated where the mask m (iq_bmask's) has 0xff: (g ^ m) + (m & 1)
   per byte, which never carries into the next byte since g > 0 */
static uint64_t signed8(uint64_t g, uint64_t m) {
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
                st64(c + 32 * ib + 8 * l, signed8(ld64(grid + 8 * q[l]), iq_kbmask[aux >> 7 * l & 127]));
        }
        return f16(b) * 0.125f;
    }
    case 17: {   /* IQ2_XS: 32 words of a 9-bit index and 7 sign bits; a scale per 16 */
        const uint8_t *s = b + 66;
        for (int ib = 0; ib < 8; ib++) {
            sc2(sc, ib, 2 * (s[ib] & 15) + 1, 2 * (s[ib] >> 4) + 1);
            for (int l = 0; l < 4; l++) {
                uint32_t q = le16(b + 2 + 2 * (4 * ib + l));
                st64(c + 32 * ib + 8 * l, signed8(ld64(grid + 8 * (q & 511)), iq_kbmask[q >> 9]));
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
                st64(c + 32 * ib + 8 * l, signed8(ld64(grid + 8 * idx), iq_bmask[signs[4 * ib + l]]));
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
                st64(c + 32 * ib + 8 * l, signed8(g, iq_kbmask[aux >> 7 * l & 127]));
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
                st64(c + 32 * ib + 8 * l, signed8(g, iq_bmask[signs[4 * ib + l]]));
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
/* the codes' 8 groups of 32, as |code| (maddubs' unsigned side) and a byte of the code's sign
   (the code itself, or 1 / -1), and the sub-scales as 16-bit lanes (low 128 bits: the first 16
   weights of the group) */
typedef struct { __m256i u[8], c[8], s[8]; } iq_vec_t;

#define IQ_G64(i) ((long long)ld64(grid + 8 * (i)))                                        /* a point of 8 levels */
#define IQ_G32X2(i0, i1) ((long long)(ld32(grid + 4 * (i0)) | (uint64_t)ld32(grid + 4 * (i1)) << 32))   /* two of 4 */
#define IQ_V4(e0, e1, e2, e3) _mm256_set_epi64x(e3, e2, e1, e0)
/* four words of signs (iq_bsign's / iq_kbsign's bytes of -1 / 1) */
#define IQ_S4(m0, m1, m2, m3) IQ_V4((long long)(m0), (long long)(m1), (long long)(m2), (long long)(m3))
#define IQ_SC2(lo, hi) _mm256_set_m128i(_mm_set1_epi16((short)(hi)), _mm_set1_epi16((short)(lo)))

/* 8 ternary levels per 64 bits (IQ1's grid, int8 -1 / 0 / 1) -> the codes 8 g + delta (delta
   +-1 per byte: 1 or -1 in each byte of d); bytewise, as shifted8 */
static __m256i iq1_codes(__m256i g, __m256i d) {
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(g, 3), _mm256_set1_epi8((char)0xf8)), d);
}

/* group ib (weights 32 ib .. 32 ib + 31) of the block at b in vectors: *u the codes' magnitudes,
   *c a byte of each code's sign, *s the sub-scales (as iq_unpack's codes and sc, so the same
   integers). Inlined into loops over a constant type. */
IQ_INLINE void iq_group(const int type, const uint8_t *b, const uint8_t *grid, int ib, __m256i *u, __m256i *c,
                        __m256i *s) {
    switch (type) {
    case 16: {   /* IQ2_XXS */
        const uint8_t *q = b + 2 + 8 * ib;
        const uint32_t aux = le32(q + 4), ls = 2 * (aux >> 28) + 1;
        *u = IQ_V4(IQ_G64(q[0]), IQ_G64(q[1]), IQ_G64(q[2]), IQ_G64(q[3]));
        *c = IQ_S4(iq_kbsign[aux & 127], iq_kbsign[aux >> 7 & 127], iq_kbsign[aux >> 14 & 127], iq_kbsign[aux >> 21 & 127]);
        *s = _mm256_set1_epi16((short)ls);
        return;
    }
    case 17: {   /* IQ2_XS */
        const uint8_t sb = b[66 + ib];
        uint32_t q[4];
        for (int l = 0; l < 4; l++) q[l] = le16(b + 2 + 2 * (4 * ib + l));
        *u = IQ_V4(IQ_G64(q[0] & 511), IQ_G64(q[1] & 511), IQ_G64(q[2] & 511), IQ_G64(q[3] & 511));
        *c = IQ_S4(iq_kbsign[q[0] >> 9], iq_kbsign[q[1] >> 9], iq_kbsign[q[2] >> 9], iq_kbsign[q[3] >> 9]);
        *s = IQ_SC2(2 * (sb & 15) + 1, 2 * (sb >> 4) + 1);
        return;
    }
    case 22: {   /* IQ2_S */
        const uint8_t *qs = b + 2 + 4 * ib, *signs = b + 34 + 4 * ib;
        const uint32_t h = b[66 + ib], sb = b[74 + ib];
        *u = IQ_V4(IQ_G64(qs[0] | (h & 3) << 8), IQ_G64(qs[1] | (h >> 2 & 3) << 8),
                   IQ_G64(qs[2] | (h >> 4 & 3) << 8), IQ_G64(qs[3] | (h >> 6 & 3) << 8));
        *c = IQ_S4(iq_bsign[signs[0]], iq_bsign[signs[1]], iq_bsign[signs[2]], iq_bsign[signs[3]]);
        *s = IQ_SC2(2 * (sb & 15) + 1, 2 * (sb >> 4) + 1);
        return;
    }
    case 18: {   /* IQ3_XXS */
        const uint8_t *q = b + 2 + 8 * ib;
        const uint32_t aux = le32(b + 66 + 4 * ib), ls = 2 * (aux >> 28) + 1;
        *u = IQ_V4(IQ_G32X2(q[0], q[1]), IQ_G32X2(q[2], q[3]), IQ_G32X2(q[4], q[5]), IQ_G32X2(q[6], q[7]));
        *c = IQ_S4(iq_kbsign[aux & 127], iq_kbsign[aux >> 7 & 127], iq_kbsign[aux >> 14 & 127], iq_kbsign[aux >> 21 & 127]);
        *s = _mm256_set1_epi16((short)ls);
        return;
    }
    case 21: {   /* IQ3_S */
        const uint8_t *q = b + 2 + 8 * ib, *signs = b + 74 + 4 * ib;
        const uint32_t h = b[66 + ib], ls = 1 + 2 * (b[106 + ib / 2] >> 4 * (ib % 2) & 15);
        *u = IQ_V4(IQ_G32X2(q[0] | (h & 1) << 8, q[1] | (h >> 1 & 1) << 8),
                   IQ_G32X2(q[2] | (h >> 2 & 1) << 8, q[3] | (h >> 3 & 1) << 8),
                   IQ_G32X2(q[4] | (h >> 4 & 1) << 8, q[5] | (h >> 5 & 1) << 8),
                   IQ_G32X2(q[6] | (h >> 6 & 1) << 8, q[7] | (h >> 7 & 1) << 8));
        *c = IQ_S4(iq_bsign[signs[0]], iq_bsign[signs[1]], iq_bsign[signs[2]], iq_bsign[signs[3]]);
        *s = _mm256_set1_epi16((short)ls);
        return;
    }
    case 19: {   /* IQ1_S: one delta sign per 32 */
        const uint32_t qh = le16(b + 34 + 2 * ib), ls = 2 * (qh >> 12 & 7) + 1;
        const uint8_t *q = b + 2 + 4 * ib;
        const __m256i g = IQ_V4(IQ_G64(q[0] | (qh & 7) << 8), IQ_G64(q[1] | (qh >> 3 & 7) << 8),
                                IQ_G64(q[2] | (qh >> 6 & 7) << 8), IQ_G64(q[3] | (qh >> 9 & 7) << 8));
        *c = iq1_codes(g, _mm256_set1_epi8(qh & 0x8000 ? -1 : 1));
        *u = _mm256_sign_epi8(*c, *c);
        *s = _mm256_set1_epi16((short)ls);
        return;
    }
    default: {   /* 29, IQ1_M: a delta sign per 8, 3-bit scales per 16 */
        const uint32_t sw = le16(b + 48 + 2 * (ib / 2)) >> 6 * (ib % 2), h0 = b[32 + 2 * ib], h1 = b[33 + 2 * ib];
        const uint32_t h[4] = {h0 & 15, h0 >> 4, h1 & 15, h1 >> 4};
        const uint8_t *q = b + 4 * ib;
        const long long plus = (long long)ONES8, minus = -1LL;
        const __m256i g = IQ_V4(IQ_G64(q[0] | (h[0] & 7) << 8), IQ_G64(q[1] | (h[1] & 7) << 8),
                                IQ_G64(q[2] | (h[2] & 7) << 8), IQ_G64(q[3] | (h[3] & 7) << 8));
        *c = iq1_codes(g, IQ_V4(h[0] & 8 ? minus : plus, h[1] & 8 ? minus : plus,
                                h[2] & 8 ? minus : plus, h[3] & 8 ? minus : plus));
        *u = _mm256_sign_epi8(*c, *c);
        *s = IQ_SC2(2 * (sw & 7) + 1, 2 * (sw >> 3 & 7) + 1);
        return;
    }
    }
}

/* the block's float factor (iq_unpack's return value) */
IQ_INLINE float iq_factor(const int type, const uint8_t *b) {
    switch (type) {
    case 18: return f16(b) * 0.25f;
    case 21: return f16(b);
    case 29: {   /* IQ1_M: the fp16 scale in the top nibbles of the four scale words */
        const uint32_t bits = le16(b + 48) >> 12 | (le16(b + 50) >> 8 & 0x00f0) | (le16(b + 52) >> 4 & 0x0f00) |
                              (le16(b + 54) & 0xf000);
        const uint8_t half[2] = {(uint8_t)bits, (uint8_t)(bits >> 8)};
        return f16(half) * 0.125f;
    }
    default: return f16(b) * 0.125f;
    }
}

/* acc + the int32 lanes of group (u, c, s) times 32 activation codes x: |u| x sign(x, c) = the
   code x x; pairs <= 2 x 62 x 127 < 2^15 */
IQ_INLINE __m256i iq_gdot(__m256i acc, __m256i u, __m256i c, __m256i s, const int8_t *x) {
    const __m256i xv = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x), c);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), s));
}

IQ_INLINE int32_t iq_hsum(__m256i acc) {
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    return _mm_cvtsi128_si32(h);
}

/* the whole block in vectors, for several activation rows */
IQ_INLINE float iq_unpack_vec(const int type, const uint8_t *b, const uint8_t *grid, iq_vec_t *v) {
    for (int ib = 0; ib < 8; ib++) iq_group(type, b, grid, ib, &v->u[ib], &v->c[ib], &v->s[ib]);
    return iq_factor(type, b);
}

/* the block's 256 weights in float32 (iq_dequant on AVX2): code x sub-scale (an int16, at most
   62 x 31) times the factor (d / 8, d / 4 or d). Every such product is exact in float32 (an fp16
   d's 11 significant bits times at most 11), as is each step of ggml's own order
   (d x (0.5 + s) x 1/4, x level, x sign; IQ1: d x (2 s + 1) x (g + delta)): the same bits. */
static void iq_dequant_vec(const int type, const uint8_t *b, const uint8_t *grid, float *y) {
    const __m256 f = _mm256_set1_ps(iq_factor(type, b));
    for (int ib = 0; ib < 8; ib++) {
        __m256i u, c, s;
        iq_group(type, b, grid, ib, &u, &c, &s);
        const __m256i code = _mm256_sign_epi8(u, c);
        const __m256i w[2] = {
            _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(code)), _mm256_permute2x128_si256(s, s, 0x00)),
            _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(code, 1)), _mm256_permute2x128_si256(s, s, 0x11))};
        for (int h = 0; h < 2; h++) {
            _mm256_storeu_ps(y + 32 * ib + 16 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(w[h]))), f));
            _mm256_storeu_ps(y + 32 * ib + 16 * h + 8,
                             _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(w[h], 1))), f));
        }
    }
}

static int32_t iq_idot(const iq_vec_t *v, const int8_t *x) {
    __m256i acc = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) acc = iq_gdot(acc, v->u[j], v->c[j], v->s[j], x + 32 * j);
    return iq_hsum(acc);
}
#else
typedef struct { const int8_t *c; const int16_t *sc; } iq_vec_t;

static void iq_vec(const int8_t *c, const int16_t *sc, iq_vec_t *v) { v->c = c; v->sc = sc; }

static int32_t iq_idot(const iq_vec_t *v, const int8_t *x) {
#if defined(IQ_NEON)   /* per 16-group: sdot (or widening multiplies: pairs <= 2 x 62 x 127 < 2^15) */
    int32x4_t acc = vdupq_n_s32(0);
    for (int g = 0; g < 16; g++) {
        const int8x16_t c = vld1q_s8(v->c + 16 * g), xv = vld1q_s8(x + 16 * g);
#if defined(__ARM_FEATURE_DOTPROD)
        const int32x4_t d = vdotq_s32(vdupq_n_s32(0), c, xv);
#else
        const int32x4_t d = vpaddlq_s16(vmlal_high_s8(vmull_s8(vget_low_s8(c), vget_low_s8(xv)), c, xv));
#endif
        acc = vmlaq_n_s32(acc, d, v->sc[g]);
    }
    return vaddvq_s32(acc);
#else
    int32_t sum = 0;
    for (int g = 0; g < 16; g++) {
        int32_t t = 0;
        for (int i = 0; i < 16; i++) t += (int32_t)v->c[16 * g + i] * x[16 * g + i];
        sum += (int32_t)v->sc[g] * t;
    }
    return sum;
#endif
}
#endif

/* A weight row is read once, block after block, mostly from DRAM or L3: each block asks for the
   bytes IQ_PREFETCH ahead (the next rows' at a row's end), as kquant_dot.h's kq_prefetch. */
#define IQ_PREFETCH 2048

IQ_INLINE void iq_prefetch(const uint8_t *blk, int bb) {
    for (int o = 0; o < bb; o += 64) __builtin_prefetch(blk + IQ_PREFETCH + o, 0, 3);
}

/* acc[m] += block b's products (its codes in v, its factor dw) with activation rows 0..M-1 */
IQ_INLINE void iq_block_rows(const iq_vec_t *v, float dw, int b, int M, int k, const int8_t *aq, const int8_t *ar,
                             const float *ad, float *acc) {
    for (int m = 0; m < M; m++) {
        const long off = (long)m * k + 256L * b;
        const int32_t ia = iq_idot(v, aq + off);
        const float dx = ad[(long)m * (k / 256) + b];
        if (ar) acc[m] += dw * dx * ((float)ia * 128.f + (float)iq_idot(v, ar + off));
        else acc[m] += dw * dx * (float)ia;
    }
}

/* one weight row of nb blocks against the M activation rows, the type a constant (iq_row's
   switch). AVX2: one activation row takes each group as it is unpacked, more rows unpack the
   block once (iq_unpack_vec) for all of them; other builds unpack it with the portable code. The
   same integers and the same float operations on every build. */
IQ_INLINE void iq_row_t(const int type, const uint8_t *row, int nb, const uint8_t *grid, int M, int k,
                        const int8_t *aq, const int8_t *ar, const float *ad, float *out) {
    iq_vec_t v;
#if !defined(IQ_AVX2)
    int8_t c[256];
    int16_t sc[16];
#endif
    float acc[IQ_MAXM] = {0};
    const int bb = block_bytes(type);
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (long)b * bb;
        iq_prefetch(blk, bb);
#if defined(IQ_AVX2)
        if (M == 1) {
            const int8_t *xq = aq + 256L * b, *xr = ar ? ar + 256L * b : NULL;
            __m256i ia = _mm256_setzero_si256(), ir = _mm256_setzero_si256(), u, cs, s;
            for (int ib = 0; ib < 8; ib++) {
                iq_group(type, blk, grid, ib, &u, &cs, &s);
                ia = iq_gdot(ia, u, cs, s, xq + 32 * ib);
                if (xr) ir = iq_gdot(ir, u, cs, s, xr + 32 * ib);
            }
            const float dw = iq_factor(type, blk), dx = ad[b];
            if (xr) acc[0] += dw * dx * ((float)iq_hsum(ia) * 128.f + (float)iq_hsum(ir));
            else acc[0] += dw * dx * (float)iq_hsum(ia);
            continue;
        }
        const float dw = iq_unpack_vec(type, blk, grid, &v);
#else
        const float dw = iq_unpack(type, blk, grid, c, sc);
        iq_vec(c, sc, &v);
#endif
        iq_block_rows(&v, dw, b, M, k, aq, ar, ad, acc);
    }
    for (int m = 0; m < M; m++) out[m] = acc[m];
}

static void iq_row(int type, const uint8_t *row, int nb, const uint8_t *grid, int M, int k, const int8_t *aq,
                   const int8_t *ar, const float *ad, float *out) {
    switch (type) {
    case 16: iq_row_t(16, row, nb, grid, M, k, aq, ar, ad, out); break;
    case 17: iq_row_t(17, row, nb, grid, M, k, aq, ar, ad, out); break;
    case 18: iq_row_t(18, row, nb, grid, M, k, aq, ar, ad, out); break;
    case 19: iq_row_t(19, row, nb, grid, M, k, aq, ar, ad, out); break;
    case 21: iq_row_t(21, row, nb, grid, M, k, aq, ar, ad, out); break;
    case 22: iq_row_t(22, row, nb, grid, M, k, aq, ar, ad, out); break;
    default: iq_row_t(29, row, nb, grid, M, k, aq, ar, ad, out); break;
    }
}

/* one i-quant weight row against one activation row already rounded to Q8_K blocks (q, r: NULL
   at 8 bits, d): kernels/csrc/kquant.c's fused MoE step calls it (by its address) for experts
   held as i-quants, so its integers and float sums are this library's own */
float iq_row_dot(int type, const uint8_t *row, int k, const void *grid, const int8_t *q, const int8_t *r,
                 const float *d) {
    float out = 0.f;
    if (block_bytes(type) && k > 0 && k % QK_K == 0) iq_row(type, row, k / QK_K, grid, 1, k, q, r, d, &out);
    return out;
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

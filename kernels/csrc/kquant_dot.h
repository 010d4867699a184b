/* Integer dot products of GGUF weight blocks with 8-bit activation blocks (llama.cpp's scheme).
 * Included by kquant.c (after h2f / rd16 / block_bytes / block_size / scale_min_k4 /
 * scale_q3_k / scale_iq4_xs / kvalues_iq4).
 *
 * Activations are rounded once per call, per row:
 *   Q8_0 (for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL weights): blocks of 32, d = absmax / 127,
 *        q = roundf(x / d)  (ggml's quantize_row_q8_0_ref);
 *   Q8_K (for Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS): blocks of 256, d = -max / 127 with max
 *        the element of largest magnitude (sign kept), q = min(127, nearest_int(x / d))
 *        (quantize_row_q8_K_ref).
 * The scale stays float32 (ggml rounds Q8_0's to fp16: ours is never coarser). Sums of each
 * 16 codes are kept for the zero-point / offset terms.
 * With 16 bits (two 8-bit terms), each code q is followed by a second, r = the rounding of
 * the remainder (x / d - q) x 128 (|r| <= 64): x ~ (128 q + r) d / 128, 15 bits of precision
 * for one more maddubs per 32 weights (on AVX2 the blocks of 32 instead multiply 128 q + r as
 * int16, ``x16``, with their codes widened once per block: two madds, no sign tricks); the
 * integers are the same on every path.
 *
 * Each weight block is unpacked to unsigned codes (Q8_0, Q4_0, Q5_0: signed; IQ4_NL / IQ4_XS:
 * their signed non-linear levels, -127..113) and multiplied with the activation codes in
 * int32: per block (32) or per 16/32-weight sub-block (super-blocks, their 4/6/8-bit scales
 * applied in int32 over the super-block; Q2_K's mins and Q3_K's / Q6_K's offsets from the
 * activations' sums of 16). The AVX2 path (maddubs + madd), the ARM64 NEON one (sdot, or
 * widening multiplies before ARMv8.2) and the plain-C path compute the same integers; only
 * the float32 sums of the block results differ in order (AVX2's; NEON keeps plain C's).
 */

typedef struct {
    int M, k, bs;   /* rows, row length, weights per scale (32: Q8_0, 256: Q8_K) */
    int8_t *q;      /* [M][k] codes */
    int8_t *r;      /* [M][k] second codes (16 bits), or NULL (8 bits) */
    float *d;       /* [M][k / bs] scales: x ~ q d (8 bits), (128 q + r) d (16 bits) */
    int32_t *s16;   /* [M][k / 16] sums of 16 codes (128 q + r with 16 bits) */
    int16_t *x16;   /* [M][k] 128 q + r (16 bits, AVX2 builds, blocks of 32), or NULL */
} act_t;

INLINE int act_bs(int type) { return block_size(type); }

#include "q8_activations.h"   /* nearest_int, rest, quant_q8_0, quant_q8_k */

/* rows x [M][k] (row stride ldx) -> a, blocks of bs, 8 or 16 bits. -1 when out of memory. */
static int act_quant(act_t *a, const float *x, int M, int k, long ldx, int bs, int bits) {
    a->M = M; a->k = k; a->bs = bs;
    a->q = malloc((size_t)M * k + 64);
    a->r = bits == 16 ? malloc((size_t)M * k + 64) : NULL;
    a->d = malloc(sizeof(float) * ((size_t)M * (k / bs) + 1));
    a->s16 = malloc(sizeof(int32_t) * ((size_t)M * (k / 16) + 1));
#if defined(__AVX2__)
    a->x16 = bits == 16 && bs == 32 ? malloc(sizeof(int16_t) * ((size_t)M * k + 32)) : NULL;
    if (bits == 16 && bs == 32 && !a->x16) return -1;
#else
    a->x16 = NULL;
#endif
    if (!a->q || !a->d || !a->s16 || (bits == 16 && !a->r)) return -1;
    for (int m = 0; m < M; m++) {
        int8_t *q = a->q + (long)m * k, *r = a->r ? a->r + (long)m * k : NULL;
        for (int b = 0; b < k / bs; b++) {
            if (bs == 32) quant_q8_0(x + m * ldx + 32 * b, q + 32 * b, r ? r + 32 * b : NULL, a->d + (long)m * (k / 32) + b);
            else quant_q8_k(x + m * ldx + 256 * b, q + 256 * b, r ? r + 256 * b : NULL, a->d + (long)m * (k / 256) + b);
        }
        for (int g = 0; g < k / 16; g++) {
            int32_t s = 0;
            for (int i = 0; i < 16; i++) s += r ? 128 * q[16 * g + i] + r[16 * g + i] : q[16 * g + i];
            a->s16[(long)m * (k / 16) + g] = s;
        }
        if (a->x16)
            for (int i = 0; i < k; i++) a->x16[(long)m * k + i] = (int16_t)(128 * q[i] + r[i]);
    }
    return 0;
}

static void act_free(act_t *a) {
    free(a->q); free(a->r); free(a->d); free(a->s16); free(a->x16);
    a->q = NULL; a->r = NULL; a->d = NULL; a->s16 = NULL; a->x16 = NULL;
}

/* A weight row is read once per call, block after block, mostly from DRAM or L3 (a model's
 * matrices far outgrow L2): each block loop asks for the bytes KQ_PREFETCH ahead of the block
 * it reads (the next rows' too, at a row's end: rows lie one after another), so a one-core
 * matrix-vector product is not bound by the latency of each new line (the hardware prefetcher
 * alone left one-row Q2_K / Q4_0 products at 2.5-4 GB/s, from DRAM or L3, on a 2-core Xeon
 * VM; 7-8 GB/s with it). A hint: no fault past the end, no effect on the results. */
#define KQ_PREFETCH 2048
INLINE void kq_prefetch(const uint8_t *p, int bb) {
    for (int o = 0; o < bb; o += 64) __builtin_prefetch(p + KQ_PREFETCH + o, 0, 3);
}

#if defined(__AVX2__)
#define KQ_AVX2 1
#include <immintrin.h>

INLINE float hsum256(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

INLINE __m256i nib32(const uint8_t *p) {   /* 16 bytes -> low nibbles (bytes 0..15), high (16..31) */
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(15));
}

INLINE __m256i bits32(const uint8_t *p) {   /* 32 bits -> 32 bytes of 0x10 (bit set) or 0 */
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_and_si256(_mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

INLINE __m256i iq4_levels(__m256i nibbles) {   /* codes 0..15 -> IQ4_NL's levels (pshufb per lane) */
    const __m256i kv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)kvalues_iq4));
    return _mm256_shuffle_epi8(kv, nibbles);
}

/* int32 [8]: sums of 4 products (u <= 128, |s| <= 127: maddubs never saturates, so VNNI's
 * one instruction gives the same integers) */
INLINE __m256i dot4_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
#elif defined(__aarch64__) && defined(__ARM_NEON)
/* ARM64: the int32 block sums in NEON, the float sums as plain C's. Every weight code fits
 * int8 (K-quants 0..63, the 32-blocks -128..127 with Q4_0's / Q5_0's offset taken off, the
 * IQ4 levels -127..113), so
 * signed x signed products are exact for all types. */
#define KQ_NEON 1
#include <arm_neon.h>

/* acc + int32 [4]: sums of 4 products (|w| <= 128, |x| <= 127). Without sdot (ARMv8.0):
 * int16 lanes hold pairs of products (2 x 128 x 127 < 2^15), then pairwise into acc. */
INLINE int32x4_t sdot16(int32x4_t acc, int8x16_t w, int8x16_t x) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, w, x);
#else
    return vpadalq_s16(acc, vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(x)), w, x));
#endif
}

/* 16 bytes -> low nibbles (codes 0..15), high (16..31) */
INLINE void nib32_neon(const uint8_t *p, int8x16_t *q) {
    const uint8x16_t t = vld1q_u8(p);
    q[0] = vreinterpretq_s8_u8(vandq_u8(t, vdupq_n_u8(15)));
    q[1] = vreinterpretq_s8_u8(vshrq_n_u8(t, 4));
}

/* 16 bytes -> IQ4_NL's levels of the low nibbles (q[0]) and the high ones (q[1]) */
INLINE void iq4_levels_neon(const uint8_t *p, int8x16_t *q) {
    const int8x16_t kv = vld1q_s8(kvalues_iq4);
    const uint8x16_t t = vld1q_u8(p);
    q[0] = vqtbl1q_s8(kv, vandq_u8(t, vdupq_n_u8(15)));
    q[1] = vqtbl1q_s8(kv, vshrq_n_u8(t, 4));
}

/* the low 16 bits of h -> 16 bytes of 0x10 (bit set) or 0 */
INLINE int8x16_t bits16_neon(uint32_t h) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t b = vcombine_u8(vdup_n_u8((uint8_t)h), vdup_n_u8((uint8_t)(h >> 8)));
    return vreinterpretq_s8_u8(vandq_u8(vtstq_u8(b, vld1q_u8(bit)), vdupq_n_u8(0x10)));
}
#endif

/* ---- blocks of 32: Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, IQ4_NL 20 -------------------- */

INLINE int signed32(const int type) { return type == 8 || type == 2 || type == 6 || type == 20; }

/* weight w = dw q + mw; returns the codes in q (signed for Q8_0, Q4_0 and Q5_0: their offset
 * 8 / 16 taken off, as ggml does; IQ4_NL: its levels; else 0..31) */
INLINE void unpack32(const int type, const uint8_t *p, int16_t *q, float *dw, float *mw) {
    *dw = h2f(rd16(p));
    *mw = 0.f;
    int off = 0;
    uint32_t qh = 0;
    const uint8_t *qs;
    switch (type) {
        case 8:
            for (int i = 0; i < 32; i++) q[i] = ((const int8_t *)(p + 2))[i];
            return;
        case 20:
            for (int i = 0; i < 16; i++) {
                q[i] = kvalues_iq4[p[2 + i] & 15];
                q[i + 16] = kvalues_iq4[p[2 + i] >> 4];
            }
            return;
        case 2: qs = p + 2; off = 8; break;
        case 3: qs = p + 4; *mw = h2f(rd16(p + 2)); break;
        case 6: qs = p + 6; off = 16; memcpy(&qh, p + 2, 4); break;
        default: qs = p + 8; *mw = h2f(rd16(p + 2)); memcpy(&qh, p + 4, 4); break;
    }
    for (int i = 0; i < 16; i++) {
        q[i] = (int16_t)(((qs[i] & 15) | (((qh >> i) & 1) << 4)) - off);
        q[i + 16] = (int16_t)(((qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) - off);
    }
}

#if defined(KQ_NEON)
/* unpack32's codes as int8: weights 0..15 in q[0], 16..31 in q[1] */
INLINE void unpack32_neon(const int type, const uint8_t *p, int8x16_t *q, float *dw, float *mw) {
    *dw = h2f(rd16(p));
    *mw = 0.f;
    uint32_t qh;
    switch (type) {
        case 8:
            q[0] = vld1q_s8((const int8_t *)(p + 2));
            q[1] = vld1q_s8((const int8_t *)(p + 18));
            return;
        case 20:
            iq4_levels_neon(p + 2, q);
            return;
        case 2:
            nib32_neon(p + 2, q);
            q[0] = vsubq_s8(q[0], vdupq_n_s8(8));
            q[1] = vsubq_s8(q[1], vdupq_n_s8(8));
            return;
        case 3:
            nib32_neon(p + 4, q);
            *mw = h2f(rd16(p + 2));
            return;
        case 6:
            nib32_neon(p + 6, q);
            memcpy(&qh, p + 2, 4);
            q[0] = vsubq_s8(vorrq_s8(q[0], bits16_neon(qh)), vdupq_n_s8(16));
            q[1] = vsubq_s8(vorrq_s8(q[1], bits16_neon(qh >> 16)), vdupq_n_s8(16));
            return;
        default:
            nib32_neon(p + 8, q);
            *mw = h2f(rd16(p + 2));
            memcpy(&qh, p + 4, 4);
            q[0] = vorrq_s8(q[0], bits16_neon(qh));
            q[1] = vorrq_s8(q[1], bits16_neon(qh >> 16));
            return;
    }
}

/* int32 [4]: partial sums of the 32 products q . x */
INLINE int32x4_t dot32_neon(const int8x16_t *q, const int8_t *x) {
    return sdot16(sdot16(vdupq_n_s32(0), q[0], vld1q_s8(x)), q[1], vld1q_s8(x + 16));
}
#endif

/* one weight row of nb blocks against activation rows m0 .. m0+MM-1 */
INLINE void dot32_t(const int type, const int HI, const int MM, const uint8_t *row, int nb, const act_t *a, int m0, float *out) {
    const int bb = block_bytes(type), k = a->k;
    float corr[MAXM] = {0};
#if defined(KQ_AVX2)
    __m256 acc[MAXM];
    for (int m = 0; m < MM; m++) acc[m] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = row + (long)b * bb;
        kq_prefetch(p, bb);
        float dw = h2f(rd16(p)), mw = 0.f;
        __m256i q;
        switch (type) {
            case 8: q = _mm256_loadu_si256((const __m256i *)(p + 2)); break;
            case 2: q = _mm256_sub_epi8(nib32(p + 2), _mm256_set1_epi8(8)); break;
            case 20: q = iq4_levels(nib32(p + 2)); break;
            case 3: q = nib32(p + 4); mw = h2f(rd16(p + 2)); break;
            case 6: q = _mm256_sub_epi8(_mm256_or_si256(nib32(p + 6), bits32(p + 2)), _mm256_set1_epi8(16)); break;
            default: q = _mm256_or_si256(nib32(p + 8), bits32(p + 4)); mw = h2f(rd16(p + 2)); break;
        }
        /* 8 bits: |w| x sign(x, w) for signed codes, maddubs; 16 bits: the codes widened to int16
         * once, madd with 128 q + r (|.| <= 16320: a pair's sum < 2^23, the block's < 2^27) */
        const int sgn = signed32(type);
        __m256i u = q, w0 = q, w1 = q;
        if (HI) {
            w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
            w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
        } else if (sgn) {
            u = _mm256_sign_epi8(q, q);
        }
        for (int m = 0; m < MM; m++) {
            const long mr = m0 + m;
            __m256i p;
            if (HI) {
                const int16_t *xx = a->x16 + mr * k + 32 * b;
                p = _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)xx)),
                                     _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(xx + 16))));
            } else {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + mr * k + 32 * b));
                p = dot4_u8s8(u, sgn ? _mm256_sign_epi8(xv, q) : xv);
            }
            const float dx = a->d[mr * (k / 32) + b];
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * dx), acc[m]);
            if (type == 3 || type == 7) {
                const int32_t *s = a->s16 + mr * (k / 16) + 2 * b;
                corr[m] += mw * dx * (float)(s[0] + s[1]);
            }
        }
    }
    for (int m = 0; m < MM; m++) out[m] = hsum256(acc[m]) + corr[m];
#else   /* plain C; NEON: the same integer sums in vectors */
    float acc[MAXM] = {0};
#if defined(KQ_NEON)
    int8x16_t q[2];
#else
    int16_t q[32];
#endif
    for (int b = 0; b < nb; b++) {
        float dw, mw;
        kq_prefetch(row + (long)b * bb, bb);
#if defined(KQ_NEON)
        unpack32_neon(type, row + (long)b * bb, q, &dw, &mw);
#else
        unpack32(type, row + (long)b * bb, q, &dw, &mw);
#endif
        for (int m = 0; m < MM; m++) {
            const long mr = m0 + m;
            const int8_t *x = a->q + mr * k + 32 * b, *xr = HI ? a->r + mr * k + 32 * b : NULL;
#if defined(KQ_NEON)   /* 128 q + r: two products, one int32 sum (|.| < 2^27) */
            const int32_t isum = vaddvq_s32(HI ? vaddq_s32(vshlq_n_s32(dot32_neon(q, x), 7), dot32_neon(q, xr))
                                               : dot32_neon(q, x));
#else
            int32_t isum = 0;
            for (int i = 0; i < 32; i++) isum += (int32_t)q[i] * (HI ? 128 * x[i] + xr[i] : x[i]);
#endif
            const float dx = a->d[mr * (k / 32) + b];
            acc[m] += dw * dx * (float)isum;
            if (type == 3 || type == 7) {
                const int32_t *s = a->s16 + mr * (k / 16) + 2 * b;
                corr[m] += mw * dx * (float)(s[0] + s[1]);
            }
        }
    }
    for (int m = 0; m < MM; m++) out[m] = acc[m] + corr[m];
#endif
}

/* ---- super-blocks of 256: Q2_K 10, Q3_K 11, Q4_K 12, Q5_K 13, Q6_K 14, IQ4_XS 23 ------- */

/* w = d sc[g] (q - off) - dmin mn[g] for weight i in 16-group g = i / 16 */
typedef struct {
    float d, dmin;
    int off;
    int16_t sc[16], mn[16];
} kscale_t;

INLINE int signed256(const int type) { return type == 23; }   /* IQ4_XS: signed levels */
INLINE int kcorr_terms(const int type) { return type != 23; }   /* a min or an offset to add */

INLINE void kscales(const int type, const uint8_t *p, kscale_t *s) {
    s->dmin = 0.f;
    s->off = 0;
    switch (type) {
        case 10:   /* a 4-bit scale and a 4-bit min per 16 weights */
            s->d = h2f(rd16(p + 80));
            s->dmin = h2f(rd16(p + 82));
            for (int g = 0; g < 16; g++) {
                s->sc[g] = p[g] & 15;
                s->mn[g] = p[g] >> 4;
            }
            return;
        case 11:   /* codes 0..7 stand for -4..3: offset 4, signed scales */
            s->d = h2f(rd16(p + 108));
            s->off = 4;
            for (int g = 0; g < 16; g++) {
                s->sc[g] = (int16_t)scale_q3_k(g, p + 96);
                s->mn[g] = 0;
            }
            return;
        case 14: {
            const int8_t *sc = (const int8_t *)(p + 192);
            s->d = h2f(rd16(p + 208));
            s->off = 32;
            for (int g = 0; g < 16; g++) {
                s->sc[g] = sc[g];
                s->mn[g] = 0;
            }
            return;
        }
        case 23:   /* a signed scale per 32 weights, signed codes: no correction term */
            s->d = h2f(rd16(p));
            for (int ib = 0; ib < 8; ib++) {
                s->sc[2 * ib] = s->sc[2 * ib + 1] = (int16_t)scale_iq4_xs(ib, p);
                s->mn[2 * ib] = s->mn[2 * ib + 1] = 0;
            }
            return;
        default:   /* Q4_K, Q5_K: a 6-bit scale and min per 32 weights */
            s->d = h2f(rd16(p));
            s->dmin = h2f(rd16(p + 2));
            for (int j = 0; j < 8; j++) {
                int sc, mn;
                scale_min_k4(j, p + 4, &sc, &mn);
                s->sc[2 * j] = s->sc[2 * j + 1] = (int16_t)sc;
                s->mn[2 * j] = s->mn[2 * j + 1] = (int16_t)mn;
            }
            return;
    }
}

/* the codes of the 256 weights, in order (0..63; IQ4_XS: its levels, -127..113) */
INLINE void unpack256(const int type, const uint8_t *p, int8_t *q) {
    if (type == 10 || type == 11) {   /* 2-bit codes; Q3_K: its high bit as 4 */
        const uint8_t *qs = p + (type == 10 ? 16 : 32), *hm = p;
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) {
                    int c = (qs[32 * n + l] >> (2 * j)) & 3;
                    if (type == 11) c |= ((hm[l] >> (4 * n + j)) & 1) << 2;
                    q[128 * n + 32 * j + l] = (int8_t)c;
                }
    } else if (type == 23) {
        const uint8_t *qs = p + 8;
        for (int ib = 0; ib < 8; ib++)
            for (int l = 0; l < 16; l++) {
                q[32 * ib + l] = kvalues_iq4[qs[16 * ib + l] & 15];
                q[32 * ib + 16 + l] = kvalues_iq4[qs[16 * ib + l] >> 4];
            }
    } else if (type == 12) {
        const uint8_t *qs = p + 16;
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                q[64 * j + l] = (int8_t)(qs[32 * j + l] & 15);
                q[64 * j + 32 + l] = (int8_t)(qs[32 * j + l] >> 4);
            }
    } else if (type == 13) {
        const uint8_t *qh = p + 16, *ql = p + 48;
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                q[64 * j + l] = (int8_t)((ql[32 * j + l] & 15) | (((qh[l] >> (2 * j)) & 1) << 4));
                q[64 * j + 32 + l] = (int8_t)((ql[32 * j + l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4));
            }
    } else {
        for (int n = 0; n < 2; n++) {
            const uint8_t *ql = p + 64 * n, *qh = p + 128 + 32 * n;
            int8_t *o = q + 128 * n;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)((ql[l] & 15) | ((qh[l] & 3) << 4));
                o[l + 32] = (int8_t)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4));
                o[l + 64] = (int8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                o[l + 96] = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
            }
        }
    }
}

#if defined(KQ_AVX2)
/* the codes of 32 weights of a super-block, group j (weights 32 j .. 32 j + 31) */
INLINE void unpack256_avx2(const int type, const uint8_t *p, __m256i *g) {
    const __m256i low = _mm256_set1_epi8(15);
    if (type == 10 || type == 11) {   /* byte l of half n: weights 128 n + 32 j + l, bits 2 j */
        const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
        __m256i hb = type == 11 ? _mm256_loadu_si256((const __m256i *)p) : _mm256_setzero_si256();
        for (int n = 0; n < 2; n++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(p + (type == 10 ? 16 : 32) + 32 * n));
            for (int j = 0; j < 4; j++) {   /* shifts in 16-bit lanes: the masked bits stay in their byte */
                __m256i c = _mm256_and_si256(raw, three);
                if (type == 11) {   /* Q3_K's high bit 4 n + j of hmask byte l */
                    c = _mm256_or_si256(c, _mm256_slli_epi16(_mm256_and_si256(hb, one), 2));
                    hb = _mm256_srli_epi16(hb, 1);
                }
                g[4 * n + j] = c;
                raw = _mm256_srli_epi16(raw, 2);
            }
        }
        return;
    }
    if (type == 23) {
        for (int ib = 0; ib < 8; ib++) g[ib] = iq4_levels(nib32(p + 8 + 16 * ib));
        return;
    }
    if (type == 12 || type == 13) {
        const uint8_t *ql = p + (type == 12 ? 16 : 48);
        const __m256i one = _mm256_set1_epi8(1);
        __m256i hb = type == 13 ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(ql + 32 * j));
            __m256i lo = _mm256_and_si256(raw, low), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            if (type == 13) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
                hb = _mm256_srli_epi16(hb, 2);
            }
            g[2 * j] = lo;
            g[2 * j + 1] = hi;
        }
        return;
    }
    const __m256i three = _mm256_set1_epi8(3);
    for (int n = 0; n < 2; n++) {
        const uint8_t *ql = p + 64 * n;
        __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
        __m256i h = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * n));
        g[4 * n] = _mm256_or_si256(_mm256_and_si256(l0, low), _mm256_slli_epi16(_mm256_and_si256(h, three), 4));
        g[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(l1, low),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), three), 4));
        g[4 * n + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), three), 4));
        g[4 * n + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), three), 4));
    }
}
#endif

#if defined(KQ_NEON)
/* unpack256's codes as int8: weights 16 g .. 16 g + 15 in q[g] */
INLINE void unpack256_neon(const int type, const uint8_t *p, int8x16_t *q) {
    const uint8x16_t low = vdupq_n_u8(15);
    uint8x16_t u[16];
    if (type == 23) {
        for (int ib = 0; ib < 8; ib++) iq4_levels_neon(p + 8 + 16 * ib, q + 2 * ib);
        return;
    }
    if (type == 10 || type == 11) {   /* byte l of half n: weights 128 n + 32 j + l, bits 2 j */
        const uint8x16_t three = vdupq_n_u8(3), one = vdupq_n_u8(1);
        const uint8_t *qs = p + (type == 10 ? 16 : 32);
        for (int h = 0; h < 2; h++) {   /* l = 16 h .. 16 h + 15 */
            uint8x16_t hb = type == 11 ? vld1q_u8(p + 16 * h) : vdupq_n_u8(0);   /* Q3_K: bit 4 n + j */
            for (int n = 0; n < 2; n++) {
                uint8x16_t r = vld1q_u8(qs + 32 * n + 16 * h);
                for (int j = 0; j < 4; j++) {
                    u[8 * n + 2 * j + h] = vorrq_u8(vandq_u8(r, three), vshlq_n_u8(vandq_u8(hb, one), 2));
                    r = vshrq_n_u8(r, 2);
                    hb = vshrq_n_u8(hb, 1);
                }
            }
        }
    } else if (type == 12 || type == 13) {
        const uint8_t *ql = p + (type == 12 ? 16 : 48);
        const uint8x16_t one = vdupq_n_u8(1), two = vdupq_n_u8(2);
        uint8x16_t h0 = vdupq_n_u8(0), h1 = h0;   /* Q5_K's fifth bits, of l = 0..15 and 16..31 */
        if (type == 13) {
            h0 = vld1q_u8(p + 16);
            h1 = vld1q_u8(p + 32);
        }
        for (int j = 0; j < 4; j++) {   /* weights 64 j + l: low nibbles, 64 j + 32 + l: high */
            const uint8x16_t r0 = vld1q_u8(ql + 32 * j), r1 = vld1q_u8(ql + 32 * j + 16);
            u[4 * j] = vorrq_u8(vandq_u8(r0, low), vshlq_n_u8(vandq_u8(h0, one), 4));
            u[4 * j + 1] = vorrq_u8(vandq_u8(r1, low), vshlq_n_u8(vandq_u8(h1, one), 4));
            u[4 * j + 2] = vorrq_u8(vshrq_n_u8(r0, 4), vshlq_n_u8(vandq_u8(h0, two), 3));
            u[4 * j + 3] = vorrq_u8(vshrq_n_u8(r1, 4), vshlq_n_u8(vandq_u8(h1, two), 3));
            h0 = vshrq_n_u8(h0, 2);
            h1 = vshrq_n_u8(h1, 2);
        }
    } else {
        const uint8x16_t three = vdupq_n_u8(3);
        for (int n = 0; n < 2; n++)
            for (int h = 0; h < 2; h++) {   /* l = 16 h .. 16 h + 15 of the half n's 32-weight groups */
                const uint8x16_t l0 = vld1q_u8(p + 64 * n + 16 * h), l1 = vld1q_u8(p + 64 * n + 32 + 16 * h);
                const uint8x16_t hb = vld1q_u8(p + 128 + 32 * n + 16 * h);
                u[8 * n + h] = vorrq_u8(vandq_u8(l0, low), vshlq_n_u8(vandq_u8(hb, three), 4));
                u[8 * n + 2 + h] = vorrq_u8(vandq_u8(l1, low), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), three), 4));
                u[8 * n + 4 + h] = vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), three), 4));
                u[8 * n + 6 + h] = vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4));
            }
    }
    for (int g = 0; g < 16; g++) q[g] = vreinterpretq_s8_u8(u[g]);
}

/* sum over the 16-weight groups g of sc[g] (q . x over the group), in int32 */
INLINE int32_t kdot_neon(const int8x16_t *q, const int16_t *sc, const int8_t *x) {
    int32x4_t acc = vdupq_n_s32(0);
    for (int g = 0; g < 16; g++) acc = vmlaq_n_s32(acc, sdot16(vdupq_n_s32(0), q[g], vld1q_s8(x + 16 * g)), sc[g]);
    return vaddvq_s32(acc);
}
#endif

/* the offset and min terms of a super-block from its int32 sum over the 16-groups g of
 * sc[g] s16[g] (an offset: Q3_K, Q6_K) or mn[g] s16[g] (a min: Q2_K, Q4_K, Q5_K). The offset
 * (4 or 32, a power of two) multiplies in float32, exactly: Q6_K's 32 x sum can pass 2^31 at
 * 16 bits (sub-scales of 127 and sums of 16 second-coded values up to 16 x 16320). */
INLINE float kcorr_sum(const kscale_t *s, int32_t sum) {
    const int32_t offs = s->off ? sum : 0, mins = s->off ? 0 : sum;
    return -s->d * ((float)s->off * (float)offs) - s->dmin * (float)mins;
}

/* the offset and min terms of a super-block, from the activation's sums of 16 */
INLINE float kcorr(const kscale_t *s, const int32_t *s16) {
    const int16_t *w = s->off ? s->sc : s->mn;
    int32_t sum = 0;
    for (int g = 0; g < 16; g++) sum += (int32_t)w[g] * s16[g];
    return kcorr_sum(s, sum);
}

#if defined(KQ_AVX2)
/* acc + the int32 sums of pairs of int16 products a . b (madd_epi16; VNNI's vpdpwssd where
 * there is one: the same integers, both wrap mod 2^32) */
INLINE __m256i madd_acc(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

INLINE int32_t hsum_i32(__m256i v) {
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    h = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 1));
    return _mm_cvtsi128_si32(h);
}

/* A super-block's scales, unpacked once into vectors (kscales' integers, without its scalar
 * loop): sv[j] the int16 multipliers of group j of 32 weights (its 16-groups 2 j and 2 j + 1:
 * low 128-bit lane sc[2 j], high sc[2 j + 1], lined up with maddubs' int16 pair sums of
 * weights 32 j .. 32 j + 15 and + 16 .. + 31); *cw the 16 int16 weights of kcorr's sum (sc
 * with an offset, else mn); s only the float scales and the offset (its sc / mn unset). */
INLINE void kscales_avx2(const int type, const uint8_t *p, kscale_t *s, __m256i *sv, __m256i *cw) {
    const __m128i low = _mm_set1_epi8(15);
    __m256i sc;
    s->dmin = 0.f;
    s->off = 0;
    switch (type) {
        case 10: {   /* byte g: scale in the low nibble, min in the high */
            const __m128i raw = _mm_loadu_si128((const __m128i *)p);
            s->d = h2f(rd16(p + 80));
            s->dmin = h2f(rd16(p + 82));
            sc = _mm256_cvtepu8_epi16(_mm_and_si128(raw, low));
            *cw = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), low));
            break;
        }
        case 11: {   /* scale_q3_k for the 16 groups at once */
            uint64_t lo;
            uint32_t hi;
            memcpy(&lo, p + 96, 8);
            memcpy(&hi, p + 104, 4);
            const __m128i l = _mm_cvtsi64_si128((long long)lo);
            /* low 4 bits: groups 0..7 the low nibbles of bytes 0..7, groups 8..15 the high ones */
            const __m128i nib = _mm_unpacklo_epi64(_mm_and_si128(l, low), _mm_and_si128(_mm_srli_epi16(l, 4), low));
            /* top 2 bits of group g: bits 2 (g / 4) of byte 8 + g % 4 (32-bit word g / 4, byte g % 4) */
            const __m128i top = _mm_and_si128(_mm_setr_epi32((int)hi, (int)(hi >> 2), (int)(hi >> 4), (int)(hi >> 6)),
                                              _mm_set1_epi8(3));
            s->d = h2f(rd16(p + 108));
            s->off = 4;
            sc = _mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_or_si128(nib, _mm_slli_epi16(top, 4)), _mm_set1_epi8(32)));
            *cw = sc;
            break;
        }
        case 14:   /* int8 scales as stored */
            s->d = h2f(rd16(p + 208));
            s->off = 32;
            sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192)));
            *cw = sc;
            break;
        case 23: {   /* scale_iq4_xs: 8 signed 6-bit scales, each for two 16-groups */
            uint32_t lo;
            memcpy(&lo, p + 4, 4);
            const __m128i l = _mm_cvtsi32_si128((int)lo);
            /* low 4 bits of block ib: nibble ib % 2 of byte ib / 2 */
            const __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(l, low), _mm_and_si128(_mm_srli_epi16(l, 4), low));
            /* top 2 bits of block ib: bits 2 ib of the 16-bit word, spread to byte ib */
            uint64_t h = rd16(p + 2);
            h = (h | (h << 24)) & 0x000000ff000000ffull;
            h = (h | (h << 12)) & 0x000f000f000f000full;
            h = (h | (h << 6)) & 0x0303030303030303ull;
            const __m128i s8 = _mm_sub_epi8(_mm_or_si128(nib, _mm_slli_epi16(_mm_cvtsi64_si128((long long)h), 4)),
                                            _mm_set1_epi8(32));
            s->d = h2f(rd16(p));
            sc = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(s8, s8));
            *cw = _mm256_setzero_si256();   /* signed codes: no correction term */
            break;
        }
        default: {   /* Q4_K, Q5_K: scale_min_k4 for the 8 blocks of 32 at once */
            uint32_t q[3];
            memcpy(q, p + 4, 12);
            const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
            /* blocks 0..3: the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); blocks 4..7: the
             * nibbles of bytes 8..11 (scales low, mins high), their top 2 bits those of bytes 0..7 */
            const __m128i v = _mm_setr_epi32((int)(q[0] & m6), (int)((q[2] & m4) | (((q[0] >> 6) & m2) << 4)),
                                             (int)(q[1] & m6), (int)(((q[2] >> 4) & m4) | (((q[1] >> 6) & m2) << 4)));
            s->d = h2f(rd16(p));
            s->dmin = h2f(rd16(p + 2));
            sc = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v));   /* each for its two 16-groups */
            *cw = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(v, v));
            break;
        }
    }
    /* groups 0..7 (j < 4) from the low half of sc, 8..15 from the high one: bytes 4 (j % 4)
     * and + 1 (group 2 j) to every int16 lane of the low 128 bits, + 2 and + 3 (2 j + 1) of the high */
    const __m256i half[2] = {_mm256_permute2x128_si256(sc, sc, 0x00), _mm256_permute2x128_si256(sc, sc, 0x11)};
    for (int j = 0; j < 8; j++) {
        const char b = (char)(4 * (j % 4));
        const __m256i pick = _mm256_setr_epi8(b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1,
                                              b + 2, b + 3, b + 2, b + 3, b + 2, b + 3, b + 2, b + 3,
                                              b + 2, b + 3, b + 2, b + 3, b + 2, b + 3, b + 2, b + 3);
        sv[j] = _mm256_shuffle_epi8(half[j / 4], pick);
    }
}

/* kcorr's int32 sum, sum over g of cw[g] s16[g] */
INLINE int32_t kcorr_sum_avx2(__m256i cw, const int32_t *s16) {
    const __m256i lo = _mm256_mullo_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(cw)),
                                          _mm256_loadu_si256((const __m256i *)s16));
    const __m256i hi = _mm256_mullo_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(cw, 1)),
                                          _mm256_loadu_si256((const __m256i *)(s16 + 8)));
    return hsum_i32(_mm256_add_epi32(lo, hi));
}
#endif

INLINE void dotk_t(const int type, const int HI, const int MM, const uint8_t *row, int nb, const act_t *a, int m0, float *out) {
    const int bb = block_bytes(type), k = a->k;
    float corr[MAXM] = {0};
    kscale_t s;
#if defined(KQ_AVX2)
    __m256 acc[MAXM];
    for (int m = 0; m < MM; m++) acc[m] = _mm256_setzero_ps();
    __m256i g[8], u[8], sv[8], cw;
    const int sgn = signed256(type);   /* signed codes (IQ4_XS): |w| x sign(x, w), as dot32_t */
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = row + (long)b * bb;
        kq_prefetch(p, bb);
        kscales_avx2(type, p, &s, sv, &cw);   /* once per super-block, for all MM rows */
        unpack256_avx2(type, p, g);
        for (int j = 0; j < 8; j++) u[j] = sgn ? _mm256_sign_epi8(g[j], g[j]) : g[j];
        for (int m = 0; m < MM; m++) {
            const long mr = m0 + m;
            const int8_t *x = a->q + mr * k + 256 * b;
            __m256i ia = _mm256_setzero_si256(), ir = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {   /* maddubs' int16 pairs (|.| <= 2 x 127 x 127), x the group scales */
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + 32 * j));
                ia = madd_acc(ia, _mm256_maddubs_epi16(u[j], sgn ? _mm256_sign_epi8(xv, g[j]) : xv), sv[j]);
            }
            const float dx = a->d[mr * (k / 256) + b];
            if (HI) {   /* the second codes: their own int32 sum (the first's x 128 could overflow) */
                const int8_t *xr = a->r + mr * k + 256 * b;
                for (int j = 0; j < 8; j++) {
                    __m256i rv = _mm256_loadu_si256((const __m256i *)(xr + 32 * j));
                    ir = madd_acc(ir, _mm256_maddubs_epi16(u[j], sgn ? _mm256_sign_epi8(rv, g[j]) : rv), sv[j]);
                }
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ir), _mm256_set1_ps(s.d * dx), acc[m]);
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_set1_ps(s.d * dx * 128.f), acc[m]);
            } else {
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_set1_ps(s.d * dx), acc[m]);
            }
            if (kcorr_terms(type)) corr[m] += dx * kcorr_sum(&s, kcorr_sum_avx2(cw, a->s16 + mr * (k / 16) + 16 * b));
        }
    }
    for (int m = 0; m < MM; m++) out[m] = hsum256(acc[m]) + corr[m];
#else   /* plain C; NEON: the same integer sums in vectors */
    float acc[MAXM] = {0};
#if defined(KQ_NEON)
    int8x16_t q[16];
#else
    int8_t q[256];
#endif
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = row + (long)b * bb;
        kq_prefetch(p, bb);
        kscales(type, p, &s);
#if defined(KQ_NEON)
        unpack256_neon(type, p, q);
#else
        unpack256(type, p, q);
#endif
        for (int m = 0; m < MM; m++) {
            const long mr = m0 + m;
            const int8_t *x = a->q + mr * k + 256 * b, *xr = HI ? a->r + mr * k + 256 * b : NULL;
#if defined(KQ_NEON)   /* the second codes: their own int32 sum, as below */
            const int32_t ia = kdot_neon(q, s.sc, x), ir = HI ? kdot_neon(q, s.sc, xr) : 0;
#else
            int32_t ia = 0, ir = 0;
            for (int g = 0; g < 16; g++) {
                int32_t t = 0, tr = 0;
                for (int i = 0; i < 16; i++) t += (int32_t)q[16 * g + i] * x[16 * g + i];
                if (HI)
                    for (int i = 0; i < 16; i++) tr += (int32_t)q[16 * g + i] * xr[16 * g + i];
                ia += (int32_t)s.sc[g] * t;
                ir += (int32_t)s.sc[g] * tr;
            }
#endif
            const float dx = a->d[mr * (k / 256) + b];
            acc[m] += s.d * dx * (HI ? (float)ia * 128.f + (float)ir : (float)ia);
            if (kcorr_terms(type)) corr[m] += dx * kcorr(&s, a->s16 + mr * (k / 16) + 16 * b);
        }
    }
    for (int m = 0; m < MM; m++) out[m] = acc[m] + corr[m];
#endif
}

/* one weight row (k = a->k inputs) against activation rows m0 .. m0+MM-1 */
static void qdot_row(int type, const uint8_t *row, const act_t *a, int m0, int MM, float *out) {
#define KQ_CASE(T)                                                                                  \
    case T:                                                                                         \
        if (hi) {                                                                                   \
            if (MM == 1) KQ_DOT(T, 1, 1, row, nb, a, m0, out);                                      \
            else KQ_DOT(T, 1, MM, row, nb, a, m0, out);                                             \
        } else {                                                                                    \
            if (MM == 1) KQ_DOT(T, 0, 1, row, nb, a, m0, out);                                      \
            else KQ_DOT(T, 0, MM, row, nb, a, m0, out);                                             \
        }                                                                                           \
        break;
    const int nb = a->k / block_size(type), hi = a->r != NULL;
    switch (type) {
#define KQ_DOT dot32_t
        KQ_CASE(2) KQ_CASE(3) KQ_CASE(6) KQ_CASE(7) KQ_CASE(8) KQ_CASE(20)
#undef KQ_DOT
#define KQ_DOT dotk_t
        KQ_CASE(10) KQ_CASE(11) KQ_CASE(12) KQ_CASE(13) KQ_CASE(14) KQ_CASE(23)
#undef KQ_DOT
        default: break;
    }
#undef KQ_CASE
}

/* ---- Q4_0, eight rows at a time (AVX2: decode's matrix-vector products) ------------------
 *
 * One row at a time, a Q4_0 block of 32 weights costs ~24 instructions (unpack, sign tricks, one
 * maddubs, convert, scale, fma) and a row's stream of 18-byte blocks is prefetched a block at a
 * time: on a real AVX2 core (Zen 3) that ran at 7-9 GB/s of weights, where a DRAM stream reads
 * at ~25. Eight consecutive rows read together, as stored (no repacking), instead give each
 * 32-bit lane one row: the rows' 16 code bytes are transposed in 4-byte words (lane r of c[i]:
 * row r's bytes 4i..4i+3, i.e. codes 4i..4i+3 in the low nibbles and 16+4i.. in the high), so
 * each maddubs multiplies four codes of all eight rows by the same four activation codes
 * (broadcast), eight maddubs make a block, and the block's eight scales convert in one
 * instruction; the weights go unsigned (0..15) and Q4_0's offset 8 comes off through the
 * activations' block sums (act_t.s16). Per block the eight int16 pair sums add up in int16
 * (|.| <= 8 x 2 x 15 x 127 < 2^15) before one madd. And the next group of eight rows is
 * prefetched a block's share at a time (one group ahead, ~9 KB at k = 2048): the prefetch
 * distance a stream of DRAM reads needs. The integers are dot32_t's; the float sum of a row is
 * over its blocks in order (dot32_t sums eight lanes, then the lanes). */
/* (vcvtph2ps: every AVX2 target Duet builds for has F16C; KQ_ONE_ROW: every row alone, bench/gguf_matvec_bench.py's baseline) */
#if defined(KQ_AVX2) && defined(__F16C__) && !defined(KQ_ONE_ROW)
INLINE int rows8_type(int type) { return type == 2 || type == 12; }

INLINE __m256 q4_0_scales8(const uint8_t *const *p) {
    __m128i s = _mm_cvtsi32_si128(rd16(p[0]));
    s = _mm_insert_epi16(s, rd16(p[1]), 1); s = _mm_insert_epi16(s, rd16(p[2]), 2);
    s = _mm_insert_epi16(s, rd16(p[3]), 3); s = _mm_insert_epi16(s, rd16(p[4]), 4);
    s = _mm_insert_epi16(s, rd16(p[5]), 5); s = _mm_insert_epi16(s, rd16(p[6]), 6);
    s = _mm_insert_epi16(s, rd16(p[7]), 7);
    return _mm256_cvtph_ps(s);
}

INLINE __m256i pair128(const uint8_t *lo, const uint8_t *hi) {
    return _mm256_set_m128i(_mm_loadu_si128((const __m128i *)hi), _mm_loadu_si128((const __m128i *)lo));
}

/* the code bytes of eight blocks p[0..7] -> c[i], lane r: p[r]'s bytes 4i..4i+3 */
INLINE void q4_0_codes8(const uint8_t *const *p, __m256i *c) {
    const __m256i a0 = pair128(p[0] + 2, p[4] + 2), a1 = pair128(p[1] + 2, p[5] + 2);
    const __m256i a2 = pair128(p[2] + 2, p[6] + 2), a3 = pair128(p[3] + 2, p[7] + 2);
    const __m256i t0 = _mm256_unpacklo_epi32(a0, a1), t1 = _mm256_unpackhi_epi32(a0, a1);
    const __m256i t2 = _mm256_unpacklo_epi32(a2, a3), t3 = _mm256_unpackhi_epi32(a2, a3);
    c[0] = _mm256_unpacklo_epi64(t0, t2); c[1] = _mm256_unpackhi_epi64(t0, t2);
    c[2] = _mm256_unpacklo_epi64(t1, t3); c[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* int16 pair sums of the eight rows' unsigned codes (lo[i], hv[i]) with one row of activation
 * codes x (a block of 32), added up over the block */
INLINE __m256i q4_0_sums8(const __m256i *lo, const __m256i *hv, const int8_t *x) {
    __m256i s = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
        int32_t x0, x1;
        memcpy(&x0, x + 4 * i, 4);
        memcpy(&x1, x + 16 + 4 * i, 4);
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(lo[i], _mm256_set1_epi32(x0)));
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(hv[i], _mm256_set1_epi32(x1)));
    }
    return s;
}

/* block b of eight rows (bb bytes a block) -> p[0..7]; and the next group's share of that block
 * (share bytes) prefetched, where there is a next group */
INLINE void rows8_block(const uint8_t *row, long stride, long bb, int b, const uint8_t *next, long share,
                        const uint8_t **p) {
    for (int r = 0; r < 8; r++) p[r] = row + r * stride + bb * b;
    if (next)
        for (long o = 0; o < share; o += 64) __builtin_prefetch(next + b * share + o, 0, 3);
}

/* rows row, row + stride, .., row + 7 stride (Q4_0, a->k inputs) against activation rows m0 ..
 * m0+MM-1 -> out[m * 8 + r]; next: the following group's first row (prefetched), or NULL */
INLINE void q4_0_rows8_t(const int MM, const uint8_t *row, long stride, const act_t *a, int m0, float *out,
                         const uint8_t *next) {
    const int k = a->k, nb = k / 32, HI = a->r != NULL;
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi16(1);
    const long share = (8 * stride + nb - 1) / nb;   /* bytes of the next group per block */
    __m256 acc[MAXM];
    for (int m = 0; m < MM; m++) acc[m] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p[8];
        rows8_block(row, stride, 18, b, next, share, p);
        __m256i c[4], lo[4], hv[4];
        q4_0_codes8(p, c);
        for (int i = 0; i < 4; i++) {
            lo[i] = _mm256_and_si256(c[i], m4);
            hv[i] = _mm256_and_si256(_mm256_srli_epi16(c[i], 4), m4);
        }
        const __m256 dw = q4_0_scales8(p);
        for (int m = 0; m < MM; m++) {
            const long mr = m0 + m;
            __m256i is = _mm256_madd_epi16(q4_0_sums8(lo, hv, a->q + mr * k + 32 * b), one);
            if (HI)   /* 128 q + r: |.| < 2^23 */
                is = _mm256_add_epi32(_mm256_slli_epi32(is, 7),
                                      _mm256_madd_epi16(q4_0_sums8(lo, hv, a->r + mr * k + 32 * b), one));
            const int32_t *s = a->s16 + mr * (k / 16) + 2 * b;   /* the offset: 8 x the block's sum */
            is = _mm256_sub_epi32(is, _mm256_set1_epi32(8 * (s[0] + s[1])));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, _mm256_set1_ps(a->d[mr * nb + b])),
                                     acc[m]);
        }
    }
    for (int m = 0; m < MM; m++) _mm256_storeu_ps(out + 8 * m, acc[m]);
}

/* Q4_K the same way, a super-block of 256 at a time: each quarter's 32 code bytes of the eight
 * rows transposed in 4-byte words (8 x 8), low nibbles sub-block 2i and high 2i+1 against
 * broadcast activation words; a sub-block's int16 sums times its 6-bit scale in one madd (the
 * scale in both halves of the row's lane); the mins against the activations' sub-block sums.
 * The integers are dotk_t's: for 16-bit activations the second codes' sums stay apart (x 128
 * the first's could overflow int32), joined in float. */
INLINE void transpose8_epi32(__m256i *v) {   /* v[r] dword w -> v[w] lane r */
    __m256i t[8], u[8];
    for (int r = 0; r < 8; r += 2) {
        t[r] = _mm256_unpacklo_epi32(v[r], v[r + 1]);
        t[r + 1] = _mm256_unpackhi_epi32(v[r], v[r + 1]);
    }
    for (int h = 0; h < 8; h += 4) {
        u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]);
        u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);
        u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);
        u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);
    }
    for (int w = 0; w < 4; w++) {
        v[w] = _mm256_permute2x128_si256(u[w], u[w + 4], 0x20);
        v[w + 4] = _mm256_permute2x128_si256(u[w], u[w + 4], 0x31);
    }
}

INLINE __m256 half8(const uint8_t *const *p, int at) {   /* the eight blocks' fp16 at byte at */
    const uint8_t *q[8];
    for (int r = 0; r < 8; r++) q[r] = p[r] + at;
    return q4_0_scales8(q);
}

/* int16 pair sums of the eight rows' codes c[w] (low nibbles, or high: shift 4) with one row of
 * activation codes x (32 of them), added up over the sub-block */
INLINE __m256i q4_k_sums8(const __m256i *c, int shift, const int8_t *x) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i s = _mm256_setzero_si256();
    for (int w = 0; w < 8; w++) {
        int32_t xw;
        memcpy(&xw, x + 4 * w, 4);
        const __m256i q = _mm256_and_si256(shift ? _mm256_srli_epi16(c[w], 4) : c[w], m4);
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(q, _mm256_set1_epi32(xw)));
    }
    return s;
}

/* the eight blocks' 6-bit scales and mins (scale_min_k4, all eight sub-blocks at once per row,
 * then an 8 x 8 byte transposition): sc[j][r] row r's scale of sub-block j in both int16 halves
 * (madd then gives a pair sum times the scale), mn[j][r] its min */
INLINE void q4_k_scales8(const uint8_t *const *p, int32_t (*sc)[8], int32_t (*mn)[8]) {
    __m128i vs[8], vm[8];
    for (int r = 0; r < 8; r++) {
        uint32_t w0, w1, w2;
        memcpy(&w0, p[r] + 4, 4);
        memcpy(&w1, p[r] + 8, 4);
        memcpy(&w2, p[r] + 12, 4);
        const uint32_t s_lo = w0 & 0x3f3f3f3fu, m_lo = w1 & 0x3f3f3f3fu;   /* sub-blocks 0..3 */
        const uint32_t s_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);   /* 4..7: low 4 bits, top 2 */
        const uint32_t m_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
        vs[r] = _mm_cvtsi64_si128((long long)((uint64_t)s_hi << 32 | s_lo));
        vm[r] = _mm_cvtsi64_si128((long long)((uint64_t)m_hi << 32 | m_lo));
    }
    for (int t = 0; t < 2; t++) {
        __m128i *v = t ? vm : vs;
        const __m128i a0 = _mm_unpacklo_epi8(v[0], v[1]), a1 = _mm_unpacklo_epi8(v[2], v[3]);
        const __m128i a2 = _mm_unpacklo_epi8(v[4], v[5]), a3 = _mm_unpacklo_epi8(v[6], v[7]);
        const __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
        const __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
        const __m128i c[4] = {_mm_unpacklo_epi32(b0, b2), _mm_unpackhi_epi32(b0, b2),
                              _mm_unpacklo_epi32(b1, b3), _mm_unpackhi_epi32(b1, b3)};   /* sub-blocks 2i, 2i+1 */
        int32_t (*out)[8] = t ? mn : sc;
        for (int j = 0; j < 8; j++) {
            __m256i e = _mm256_cvtepu8_epi32(j & 1 ? _mm_srli_si128(c[j / 2], 8) : c[j / 2]);
            if (!t) e = _mm256_or_si256(e, _mm256_slli_epi32(e, 16));
            _mm256_store_si256((__m256i *)out[j], e);
        }
    }
}

INLINE void q4_k_rows8_t(const int MM, const uint8_t *row, long stride, const act_t *a, int m0, float *out,
                         const uint8_t *next) {
    const int k = a->k, nb = k / 256, HI = a->r != NULL;
    const long share = (8 * stride + nb - 1) / nb;
    __m256 acc[MAXM];
    for (int m = 0; m < MM; m++) acc[m] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p[8];
        rows8_block(row, stride, 144, b, next, share, p);
        int32_t sc[8][8] __attribute__((aligned(32))), mn[8][8] __attribute__((aligned(32)));
        q4_k_scales8(p, sc, mn);
        const __m256 d = half8(p, 0), dmin = half8(p, 2);
        __m256i iq[MAXM], ir[MAXM];
        for (int m = 0; m < MM; m++) iq[m] = ir[m] = _mm256_setzero_si256();
        for (int i = 0; i < 4; i++) {
            __m256i c[8];
            for (int r = 0; r < 8; r++) c[r] = _mm256_loadu_si256((const __m256i *)(p[r] + 16 + 32 * i));
            transpose8_epi32(c);
            const __m256i s0 = _mm256_load_si256((const __m256i *)sc[2 * i]);
            const __m256i s1 = _mm256_load_si256((const __m256i *)sc[2 * i + 1]);
            for (int m = 0; m < MM; m++) {
                const long mr = m0 + m;
                const int8_t *x = a->q + mr * k + 256 * b + 64 * i;
                iq[m] = _mm256_add_epi32(iq[m], _mm256_add_epi32(_mm256_madd_epi16(q4_k_sums8(c, 0, x), s0),
                                                                 _mm256_madd_epi16(q4_k_sums8(c, 1, x + 32), s1)));
                if (HI) {
                    const int8_t *xr = a->r + mr * k + 256 * b + 64 * i;
                    ir[m] = _mm256_add_epi32(ir[m], _mm256_add_epi32(_mm256_madd_epi16(q4_k_sums8(c, 0, xr), s0),
                                                                     _mm256_madd_epi16(q4_k_sums8(c, 1, xr + 32), s1)));
                }
            }
        }
        for (int m = 0; m < MM; m++) {
            const long mr = m0 + m;
            const int32_t *s16 = a->s16 + mr * (k / 16) + 16 * b;
            __m256i im = _mm256_setzero_si256();   /* the mins: sum over sub-blocks of min x the activations' sum */
            for (int j = 0; j < 8; j++)
                im = _mm256_add_epi32(im, _mm256_mullo_epi32(_mm256_load_si256((const __m256i *)mn[j]),
                                                             _mm256_set1_epi32(s16[2 * j] + s16[2 * j + 1])));
            __m256 f = _mm256_cvtepi32_ps(iq[m]);
            if (HI) f = _mm256_fmadd_ps(f, _mm256_set1_ps(128.f), _mm256_cvtepi32_ps(ir[m]));
            const __m256 dx = _mm256_set1_ps(a->d[mr * nb + b]);
            acc[m] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), f, acc[m]);
            acc[m] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(im), acc[m]);
        }
    }
    for (int m = 0; m < MM; m++) _mm256_storeu_ps(out + 8 * m, acc[m]);
}

/* eight rows of a rows8_type (Q4_0, Q4_K) from row on, stride bytes apart, against activation
 * rows m0 .. m0+MM-1 -> out[m * 8 + r]; next: the following group's first row (prefetched), or NULL */
static void qdot_rows8(int type, const uint8_t *row, long stride, const act_t *a, int m0, int MM, float *out,
                       const uint8_t *next) {
    if (type == 2) {
        if (MM == 1) q4_0_rows8_t(1, row, stride, a, m0, out, next);   /* decode: the accumulator in a register */
        else q4_0_rows8_t(MM, row, stride, a, m0, out, next);
    } else {
        if (MM == 1) q4_k_rows8_t(1, row, stride, a, m0, out, next);
        else q4_k_rows8_t(MM, row, stride, a, m0, out, next);
    }
}
#else
INLINE int rows8_type(int type) { (void)type; return 0; }
static void qdot_rows8(int type, const uint8_t *row, long stride, const act_t *a, int m0, int MM, float *out,
                       const uint8_t *next) {
    (void)type; (void)row; (void)stride; (void)a; (void)m0; (void)MM; (void)out; (void)next;
}
#endif

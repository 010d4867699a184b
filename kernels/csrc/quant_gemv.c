/* Duet's native CPU kernels: int8 / int4 weight-only matmul for a few rows (decode), the
 * tiled GEMM and the dequantization used for many rows (prefill), and a fused batch-1 MoE step.
 *
 * Plain C (+ OpenMP where the compiler has it), no torch headers; loaded through ctypes by
 * kernels/cpu_native.py. The SIMD path is picked at compile time from the target's macros:
 * AVX-512BW, AVX2+FMA, or plain C (every other CPU: x86-64 without AVX2, ...; on ARM64 the
 * plain C's integer block products and bf16 dot are NEON, sdot where the target has it), so
 * the file builds with any C11 compiler; ``duet_isa()`` names the one compiled in.
 *
 * Weight layouts ("native"), one row n of a padded [N', K'] matrix:
 *   int8: j int8 [K'] (j = u - 128, w = (j + 0.5) s), scale bf16 [K'/gs]        gs % 32 == 0
 *   int4: 32 bytes per 64 inputs: byte i holds input i (low nibble) and input 32 + i (high);
 *         (scale, zero) bf16 pairs [K'/gs][2], w = (q - 8) s + z                gs % 64 == 0
 * Activations (bf16 or fp32) are rounded per block of XB inputs (32 for int8 weights, 64 for
 * int4) to integers with one float scale per block (|x| max -> the largest code), at one of
 * two precisions chosen per call (``abits``):
 *   16: int16: finer than bf16's 8 significant bits; products via _mm*_madd_epi16.
 *   8:  int8 (llama.cpp's Q8_0 activations for int8 weights); products via
 *       _mm256_maddubs_epi16 (u8 x s8 pairs), half the bytes and instructions of the int16 path.
 * Either way the products are exact integers that accumulate in int32 per block, then in
 * float32 with the block's scale; zero points and half steps use the sums of the rounded blocks.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_num_threads(void) { return 1; }   /* built without OpenMP: one thread */
static int omp_get_thread_num(void) { return 0; }
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define DUET_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define DUET_AVX2 1   /* also in AVX-512 builds: the 8-bit-activation kernels are AVX2 code */
#include <immintrin.h>
#endif
#if !defined(DUET_AVX2) && defined(__aarch64__) && defined(__ARM_NEON)
#define DUET_NEON 1   /* ARM64: the integer block products in NEON (sdot where the target has it) */
#include <arm_neon.h>
#endif
#if defined(DUET_AVX2)
#define PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#elif defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define PREFETCH(p) ((void)0)
#endif

#define MAXM 4
#define SMALL_WORK (96L << 10)   /* weight bytes x rows below which one thread does the job */
#ifndef DUET_PF
#define DUET_PF 4096   /* bytes of weights prefetched ahead of the one being read */
#endif
#ifndef DUET_SPF
#define DUET_SPF 1024  /* bytes of scales prefetched ahead of a row's own */
#endif
#define INLINE static inline __attribute__((always_inline))

static int last_team = 0;   /* threads in the last parallel matmul (tests check torch's count is used) */

int duet_last_team(void) { return last_team; }

/* the SIMD path compiled in: "avx512", "avx2", "neon" (ARM64: plain C with NEON block products)
   or "scalar" (plain C, vectorised by the compiler) */
const char *duet_isa(void) {
#if defined(DUET_AVX512)
    return "avx512";
#elif defined(DUET_AVX2)
    return "avx2";
#elif defined(DUET_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

int duet_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#if defined(DUET_AVX2)
INLINE float hsum256(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
#endif

INLINE float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

INLINE uint16_t f2bf(float f) {  /* round to nearest even, NaN kept quiet */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

INLINE float load_act(const void *x, int bf16, long i) {
    return bf16 ? bf2f(((const uint16_t *)x)[i]) : ((const float *)x)[i];
}

/* ---------------------------------------------------------------------------------------
 * activations -> int16 blocks */

typedef struct {
    int M, Kp, XB, KB;      /* rows, padded length, block size, blocks per row */
    int abits;              /* 16: codes in q; 8: codes in q8 (the same storage) */
    int16_t *q;             /* [M][Kp] */
    int8_t *q8;             /* [M][Kp] */
    float *scale;           /* [M][KB]: x ~ q * scale */
    float *sum;             /* [M][KB]: the sum of the rounded block */
} xq_t;

/* |v| max over one block of XB floats (a NaN is passed over, as the plain loop's compare does) */
INLINE float block_amax(const float *v, int XB) {
#if defined(DUET_AVX2)
    const __m256 nosign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < XB; i += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(v + i), nosign), m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
#else
    float amax = 0.f;
    for (int i = 0; i < XB; i++) {
        float a = fabsf(v[i]);
        amax = a > amax ? a : amax;
    }
    return amax;
#endif
}

#if defined(DUET_AVX2)
/* eight codes of v * inv clamped to +-lim, rounded half away from zero: the plain loop's
   (int)(r + (r >= 0 ? 0.5 : -0.5)), lane for lane */
INLINE __m256i round_codes(const float *v, __m256 inv, __m256 lim) {
    const __m256 sign = _mm256_set1_ps(-0.f), half = _mm256_set1_ps(0.5f);
    __m256 r = _mm256_mul_ps(_mm256_loadu_ps(v), inv);
    r = _mm256_max_ps(_mm256_min_ps(r, lim), _mm256_xor_ps(lim, sign));
    return _mm256_cvttps_epi32(_mm256_add_ps(r, _mm256_or_ps(_mm256_and_ps(r, sign), half)));
}

INLINE int32_t hsum_epi32(__m256i v) {
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    return _mm_cvtsi128_si32(h);
}
#endif

/* one block of XB floats -> int16 codes, scale, sum */
INLINE void quant_block(const float *v, int XB, int16_t *q, float *scale, float *sum) {
    const float amax = block_amax(v, XB), inv = amax > 0.f ? 32767.f / amax : 0.f;
    int32_t qs = 0;
#if defined(DUET_AVX2)
    const __m256 vi = _mm256_set1_ps(inv), lim = _mm256_set1_ps(32767.f);
    __m256i acc = _mm256_setzero_si256();
    for (int i = 0; i < XB; i += 16) {
        const __m256i a = round_codes(v + i, vi, lim), b = round_codes(v + i + 8, vi, lim);
        acc = _mm256_add_epi32(acc, _mm256_add_epi32(a, b));
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8));
    }
    qs = hsum_epi32(acc);
#else
    for (int i = 0; i < XB; i++) {
        float r = v[i] * inv;
        r = r > 32767.f ? 32767.f : (r < -32767.f ? -32767.f : r);
        q[i] = (int16_t)(r + (r >= 0.f ? 0.5f : -0.5f));
        qs += q[i];
    }
#endif
    *scale = amax / 32767.f;
    *sum = (float)qs * *scale;   /* the sum of the rounded block: the zero-point terms see the same x */
}

/* one block of XB floats -> int8 codes in -127..127 (Q8_0's rounding), scale, sum */
INLINE void quant_block8(const float *v, int XB, int8_t *q, float *scale, float *sum) {
    const float amax = block_amax(v, XB), inv = amax > 0.f ? 127.f / amax : 0.f;
    int32_t qs = 0;
#if defined(DUET_AVX2)
    const __m256 vi = _mm256_set1_ps(inv), lim = _mm256_set1_ps(127.f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i acc = _mm256_setzero_si256();
    for (int i = 0; i < XB; i += 32) {
        const __m256i a = round_codes(v + i, vi, lim), b = round_codes(v + i + 8, vi, lim);
        const __m256i c = round_codes(v + i + 16, vi, lim), d = round_codes(v + i + 24, vi, lim);
        acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(p, order));
    }
    qs = hsum_epi32(acc);
#else
    for (int i = 0; i < XB; i++) {
        float r = v[i] * inv;
        r = r > 127.f ? 127.f : (r < -127.f ? -127.f : r);
        q[i] = (int8_t)(r + (r >= 0.f ? 0.5f : -0.5f));
        qs += q[i];
    }
#endif
    *scale = amax / 127.f;
    *sum = (float)qs * *scale;
}

/* the activation block size: one per weight block (32 inputs for int8, 64 for int4) */
INLINE int act_block(int bits, int abits) { (void)abits; return bits == 8 ? 32 : 64; }

static int xq_alloc(xq_t *xq, int M, int Kp, int XB, int abits) {
    xq->M = M; xq->Kp = Kp; xq->XB = XB; xq->KB = Kp / XB; xq->abits = abits;
    size_t nq = (size_t)M * Kp * sizeof(int16_t), nf = (size_t)M * xq->KB * sizeof(float);
    nq = (nq + 63) & ~(size_t)63;
    char *p = aligned_alloc(64, nq + 2 * ((nf + 63) & ~(size_t)63) + 64);
    if (!p) return -1;
    xq->q = (int16_t *)p;
    xq->q8 = (int8_t *)p;
    xq->scale = (float *)(p + nq);
    xq->sum = (float *)(p + nq + ((nf + 63) & ~(size_t)63));
    return 0;
}

/* one block b of row m from XB floats */
INLINE void xq_put(xq_t *xq, int m, int b, const float *v) {
    long at = (long)m * xq->Kp + (long)b * xq->XB, sb = (long)m * xq->KB + b;
    if (xq->abits == 8) quant_block8(v, xq->XB, xq->q8 + at, xq->scale + sb, xq->sum + sb);
    else quant_block(v, xq->XB, xq->q + at, xq->scale + sb, xq->sum + sb);
}

/* rows of x (logical length k, row stride ldx; bf16 or fp32) -> zero-padded integer blocks */
static void xq_fill(xq_t *xq, const void *x, int bf16, int k, long ldx) {
    float v[64];
    for (int m = 0; m < xq->M; m++) {
        for (int b = 0; b < xq->KB; b++) {
            int base = b * xq->XB;
            if (!bf16 && base + xq->XB <= k) {   /* a whole float32 block: read in place */
                xq_put(xq, m, b, (const float *)x + (long)m * ldx + base);
                continue;
            }
            for (int i = 0; i < xq->XB; i++) {
                int c = base + i;
                v[i] = c < k ? load_act(x, bf16, (long)m * ldx + c) : 0.f;
            }
            xq_put(xq, m, b, v);
        }
    }
}

/* weight bits x activation bits: the block product's kind */
enum { Q8A16, Q8A8, Q4A16, Q4A8 };

#if !defined(DUET_AVX2)
/* The exact int32 product of one weight block (32 bytes: 32 int8 codes, or 64 int4 codes, low
 * nibbles first) with its activation block (int16 or int8 codes): the plain-C builds' block
 * product, in NEON on ARM64 (every kind's partial sums fit their lanes: int8 x int8 pairs at
 * most 2 x 128 x 127 in int16, nibble x int8 quads 4 x 15 x 127). */
INLINE int32_t bdot_c(int kind, const uint8_t *w, const void *x) {
#if defined(DUET_NEON)
    if (kind == Q8A16 || kind == Q4A16) {
        const int16_t *xq = (const int16_t *)x;
        int16x8_t wv[8];
        int n = 0;
        if (kind == Q8A16) {
            for (int h = 0; h < 2; h++) {
                const int8x16_t r = vld1q_s8((const int8_t *)w + 16 * h);
                wv[n++] = vmovl_s8(vget_low_s8(r));
                wv[n++] = vmovl_high_s8(r);
            }
        } else {
            const uint8x16_t low = vdupq_n_u8(15), r0 = vld1q_u8(w), r1 = vld1q_u8(w + 16);
            const uint8x16_t q[4] = {vandq_u8(r0, low), vandq_u8(r1, low), vshrq_n_u8(r0, 4), vshrq_n_u8(r1, 4)};
            for (int h = 0; h < 4; h++) {
                wv[n++] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(q[h])));
                wv[n++] = vreinterpretq_s16_u16(vmovl_high_u8(q[h]));
            }
        }
        int32x4_t a = vdupq_n_s32(0), b = vdupq_n_s32(0);
        for (int i = 0; i < n; i++) {
            const int16x8_t xv = vld1q_s16(xq + 8 * i);
            a = vmlal_s16(a, vget_low_s16(wv[i]), vget_low_s16(xv));
            b = vmlal_high_s16(b, wv[i], xv);
        }
        return vaddvq_s32(vaddq_s32(a, b));
    }
    const int8_t *xq = (const int8_t *)x;
    int8x16_t wv[4];
    int n;
    if (kind == Q8A8) {
        wv[0] = vld1q_s8((const int8_t *)w);
        wv[1] = vld1q_s8((const int8_t *)w + 16);
        n = 2;
    } else {
        const uint8x16_t low = vdupq_n_u8(15), r0 = vld1q_u8(w), r1 = vld1q_u8(w + 16);
        wv[0] = vreinterpretq_s8_u8(vandq_u8(r0, low));
        wv[1] = vreinterpretq_s8_u8(vandq_u8(r1, low));
        wv[2] = vreinterpretq_s8_u8(vshrq_n_u8(r0, 4));
        wv[3] = vreinterpretq_s8_u8(vshrq_n_u8(r1, 4));
        n = 4;
    }
#if defined(__ARM_FEATURE_DOTPROD)
    int32x4_t a = vdupq_n_s32(0);
    for (int i = 0; i < n; i++) a = vdotq_s32(a, wv[i], vld1q_s8(xq + 16 * i));
    return vaddvq_s32(a);
#else
    int16x8_t lo = vdupq_n_s16(0), hi = vdupq_n_s16(0);
    for (int i = 0; i < n; i++) {
        const int8x16_t xv = vld1q_s8(xq + 16 * i);
        lo = vmlal_s8(lo, vget_low_s8(wv[i]), vget_low_s8(xv));
        hi = vmlal_high_s8(hi, wv[i], xv);
    }
    return vaddvq_s32(vpadalq_s16(vpaddlq_s16(lo), hi));
#endif
#else
    int32_t d = 0;
    if (kind == Q8A16 || kind == Q8A8) {
        const int8_t *wq = (const int8_t *)w;
        if (kind == Q8A16) for (int i = 0; i < 32; i++) d += (int32_t)wq[i] * ((const int16_t *)x)[i];
        else for (int i = 0; i < 32; i++) d += (int32_t)wq[i] * ((const int8_t *)x)[i];
    } else if (kind == Q4A16) {
        const int16_t *xq = (const int16_t *)x;
        for (int i = 0; i < 32; i++) d += (int32_t)(w[i] & 15) * xq[i] + (int32_t)(w[i] >> 4) * xq[32 + i];
    } else {
        const int8_t *xq = (const int8_t *)x;
        for (int i = 0; i < 32; i++) d += (int32_t)(w[i] & 15) * xq[i] + (int32_t)(w[i] >> 4) * xq[32 + i];
    }
    return d;
#endif
}
#endif

/* ---------------------------------------------------------------------------------------
 * one weight row against MM activation rows (MM <= 4, a compile-time constant after inlining) */

/* per weight row: t[m][b] = weight scale x activation scale of block b, corr[m] = the
   zero-point / half-step term (uses only the scales and the block sums) */
INLINE void prep_q8(const uint16_t *s, int gs, const xq_t *xq, int m0, int MM, float *t, float *corr) {
    const int KB = xq->KB, per = gs / 32;   /* x blocks (32) per weight group */
    for (int m = 0; m < MM; m++) {
        const float *xs = xq->scale + (long)(m0 + m) * KB, *xm = xq->sum + (long)(m0 + m) * KB;
        float c = 0.f;
        int b0 = 0;
#if defined(DUET_AVX512)
        if (per == 1) {   /* 16 blocks at a time: bf16 scales -> fp32, times the x scales and sums */
            __m512 cv = _mm512_setzero_ps();
            for (; b0 < KB; b0 += 16) {   /* the last step masked to the blocks left */
                __mmask16 k = KB - b0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (KB - b0)) - 1);
                __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, s + b0)), 16));
                _mm512_mask_storeu_ps(t + m * KB + b0, k, _mm512_mul_ps(f, _mm512_maskz_loadu_ps(k, xs + b0)));
                cv = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(k, xm + b0), cv);
            }
            c = _mm512_reduce_add_ps(cv);
        }
#elif defined(DUET_AVX2)
        if (per == 1) {   /* 8 blocks at a time, the rest below */
            __m256 cv = _mm256_setzero_ps();
            for (; b0 + 8 <= KB; b0 += 8) {
                __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + b0))), 16));
                _mm256_storeu_ps(t + m * KB + b0, _mm256_mul_ps(f, _mm256_loadu_ps(xs + b0)));
                cv = _mm256_fmadd_ps(f, _mm256_loadu_ps(xm + b0), cv);
            }
            c = hsum256(cv);
        }
#endif
        if (per == 1) {
            for (int b = b0; b < KB; b++) {
                float f = bf2f(s[b]);
                t[m * KB + b] = f * xs[b];
                c += f * xm[b];
            }
        } else {
            for (int g = 0, b = 0; b < KB; g++) {
                float f = bf2f(s[g]);
                for (int j = 0; j < per; j++, b++) {
                    t[m * KB + b] = f * xs[b];
                    c += f * xm[b];
                }
            }
        }
        corr[m] = 0.5f * c;                   /* w = (j + 0.5) s: the 0.5 s part */
    }
}

INLINE void row_q8(const int8_t *w, const uint16_t *s, int gs, const xq_t *xq, int m0, int MM, float *t, float *out) {
    const int KB = xq->KB, Kp = xq->Kp;
    float corr[MAXM];   /* t: scratch [MM][KB] */
    prep_q8(s, gs, xq, m0, MM, t, corr);
    const int16_t *x0 = xq->q + (long)m0 * Kp;
#if defined(DUET_AVX512)
    /* four accumulators per row: the fma chain, not memory, would limit one */
    __m512 acc[MAXM][4];
    for (int m = 0; m < MM; m++)
        for (int u = 0; u < 4; u++) acc[m][u] = _mm512_setzero_ps();
#define Q8_STEP(bb, u)                                                                              \
    {                                                                                               \
        __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + 32 * (bb))));     \
        for (int m = 0; m < MM; m++) {                                                              \
            __m512i p = _mm512_madd_epi16(wv, _mm512_loadu_si512((const void *)(x0 + (long)m * Kp + 32 * (bb)))); \
            acc[m][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(t[m * KB + (bb)]), acc[m][u]); \
        }                                                                                           \
    }
    int b = 0;
    for (; b + 4 <= KB; b += 4) {
        _mm_prefetch((const char *)(w + 32 * b + DUET_PF), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + 32 * b + DUET_PF + 64), _MM_HINT_T0);
        Q8_STEP(b, 0) Q8_STEP(b + 1, 1) Q8_STEP(b + 2, 2) Q8_STEP(b + 3, 3)
    }
    for (; b < KB; b++) Q8_STEP(b, 0)
#undef Q8_STEP
    for (int m = 0; m < MM; m++)
        out[m] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]),
                                                    _mm512_add_ps(acc[m][2], acc[m][3]))) + corr[m];
#elif defined(DUET_AVX2)
    /* independent accumulators: one fma chain per row would bound the loop, not memory */
    const int U = MM == 1 ? 4 : 2;
    __m256 acc[MAXM][4];
    for (int m = 0; m < MM; m++)
        for (int u = 0; u < 4; u++) acc[m][u] = _mm256_setzero_ps();
#define Q8_STEP(bb, u)                                                                              \
    {                                                                                               \
        __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 32 * (bb))));       \
        __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 32 * (bb) + 16)));  \
        for (int m = 0; m < MM; m++) {                                                              \
            const int16_t *xp = x0 + (long)m * Kp + 32 * (bb);                                      \
            __m256i p = _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)xp)), \
                                         _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(xp + 16)))); \
            acc[m][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(t[m * KB + (bb)]), acc[m][u]); \
        }                                                                                           \
    }
    int b = 0;
    for (; b + 4 <= KB; b += 4) {
        PREFETCH(w + 32 * b + DUET_PF);
        PREFETCH(w + 32 * b + DUET_PF + 64);
        for (int u = 0; u < 4; u++) Q8_STEP(b + u, u % U)
    }
    for (; b < KB; b++) Q8_STEP(b, 0)
#undef Q8_STEP
    for (int m = 0; m < MM; m++)
        out[m] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]), _mm256_add_ps(acc[m][2], acc[m][3])))
                 + corr[m];
#else
    for (int m = 0; m < MM; m++) {
        float a = 0.f;
        const int16_t *xp = x0 + (long)m * Kp;
        for (int b = 0; b < KB; b++)
            a += (float)bdot_c(Q8A16, (const uint8_t *)w + 32 * b, xp + 32 * b) * t[m * KB + b];
        out[m] = a + corr[m];
    }
#endif
}

/* per weight row: t[m][b] = weight scale x activation scale of block b, corr[m] = the
   zero-point / half-step term (uses only the scales and the block sums) */
INLINE void prep_q4(const uint16_t *sz, int gs, const xq_t *xq, int m0, int MM, float *t, float *corr) {
    const int KB = xq->KB, per = gs / 64;   /* x blocks (64) per weight group */
    for (int m = 0; m < MM; m++) {
        const float *xs = xq->scale + (long)(m0 + m) * KB, *xm = xq->sum + (long)(m0 + m) * KB;
        float c = 0.f;
        int g = 0, b = 0;
#if defined(DUET_AVX512)
        if (per == 1) {   /* 16 groups at a time: (scale, zero) pairs as one 32-bit lane each */
            __m512 cv = _mm512_setzero_ps();
            const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
            for (; b < KB; b += 16, g += 16) {   /* the last step masked to the groups left */
                __mmask16 k = KB - b >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (KB - b)) - 1);
                __m512i pair = _mm512_maskz_loadu_epi32(k, sz + 2 * b);
                __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
                __m512 z = _mm512_castsi512_ps(_mm512_and_si512(pair, hi));
                _mm512_mask_storeu_ps(t + m * KB + b, k, _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(k, xs + b)));
                cv = _mm512_fmadd_ps(_mm512_fnmadd_ps(_mm512_set1_ps(8.f), sc, z), _mm512_maskz_loadu_ps(k, xm + b), cv);
            }
            c = _mm512_reduce_add_ps(cv);
        }
#elif defined(DUET_AVX2)
        if (per == 1) {   /* 8 groups at a time: (scale, zero) pairs as one 32-bit lane each */
            __m256 cv = _mm256_setzero_ps();
            const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
            for (; b + 8 <= KB; b += 8, g += 8) {
                __m256i pair = _mm256_loadu_si256((const __m256i *)(sz + 2 * b));
                __m256 sc = _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16));
                __m256 z = _mm256_castsi256_ps(_mm256_and_si256(pair, hi));
                _mm256_storeu_ps(t + m * KB + b, _mm256_mul_ps(sc, _mm256_loadu_ps(xs + b)));
                cv = _mm256_fmadd_ps(_mm256_fnmadd_ps(_mm256_set1_ps(8.f), sc, z), _mm256_loadu_ps(xm + b), cv);
            }
            c = hsum256(cv);
        }
#endif
        for (; b < KB; g++) {
            float sc = bf2f(sz[2 * g]), z8 = bf2f(sz[2 * g + 1]) - 8.f * sc;   /* w = q s + (z - 8 s) */
            for (int j = 0; j < per; j++, b++) {
                t[m * KB + b] = sc * xs[b];
                c += z8 * xm[b];
            }
        }
        corr[m] = c;
    }
}

INLINE void row_q4(const uint8_t *w, const uint16_t *sz, int gs, const xq_t *xq, int m0, int MM, float *t, float *out) {
    const int KB = xq->KB, Kp = xq->Kp;
    float corr[MAXM];   /* t: scratch [MM][KB] */
    prep_q4(sz, gs, xq, m0, MM, t, corr);
    const int16_t *x0 = xq->q + (long)m0 * Kp;
#if defined(DUET_AVX512)
    const __m512i low = _mm512_set1_epi16(15);
    __m512 acc[MAXM][4];   /* four accumulators per row, as in row_q8 */
    for (int m = 0; m < MM; m++)
        for (int u = 0; u < 4; u++) acc[m][u] = _mm512_setzero_ps();
#if defined(__AVX512VNNI__)
#define Q4_HI(p, h, xp) _mm512_dpwssd_epi32(p, h, _mm512_loadu_si512((const void *)(xp)))
#else
#define Q4_HI(p, h, xp) _mm512_add_epi32(p, _mm512_madd_epi16(h, _mm512_loadu_si512((const void *)(xp))))
#endif
#define Q4_STEP(bb, u)                                                                              \
    {                                                                                               \
        __m512i raw = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(w + 32 * (bb))));    \
        __m512i lo = _mm512_and_si512(raw, low), hi = _mm512_srli_epi16(raw, 4);                    \
        for (int m = 0; m < MM; m++) {                                                              \
            const int16_t *xp = x0 + (long)m * Kp + 64 * (bb);                                      \
            __m512i p = _mm512_madd_epi16(lo, _mm512_loadu_si512((const void *)xp));                \
            p = Q4_HI(p, hi, xp + 32);                                                              \
            acc[m][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(t[m * KB + (bb)]), acc[m][u]); \
        }                                                                                           \
    }
    int b = 0;
    for (; b + 4 <= KB; b += 4) {
        _mm_prefetch((const char *)(w + 32 * b + DUET_PF), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + 32 * b + DUET_PF + 64), _MM_HINT_T0);
        Q4_STEP(b, 0) Q4_STEP(b + 1, 1) Q4_STEP(b + 2, 2) Q4_STEP(b + 3, 3)
    }
    for (; b < KB; b++) Q4_STEP(b, 0)
#undef Q4_STEP
#undef Q4_HI
    for (int m = 0; m < MM; m++)
        out[m] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]),
                                                    _mm512_add_ps(acc[m][2], acc[m][3]))) + corr[m];
#elif defined(DUET_AVX2)
    const __m256i low = _mm256_set1_epi16(15);
    const int U = MM == 1 ? 4 : 2;   /* independent accumulators, as in row_q8 */
    __m256 acc[MAXM][4];
    for (int m = 0; m < MM; m++)
        for (int u = 0; u < 4; u++) acc[m][u] = _mm256_setzero_ps();
#define Q4_STEP(bb, u)                                                                              \
    {                                                                                               \
        __m256i r0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(w + 32 * (bb))));       \
        __m256i r1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(w + 32 * (bb) + 16)));  \
        __m256i l0 = _mm256_and_si256(r0, low), h0 = _mm256_srli_epi16(r0, 4);                      \
        __m256i l1 = _mm256_and_si256(r1, low), h1 = _mm256_srli_epi16(r1, 4);                      \
        for (int m = 0; m < MM; m++) {                                                              \
            const int16_t *xp = x0 + (long)m * Kp + 64 * (bb);                                      \
            __m256i p = _mm256_madd_epi16(l0, _mm256_loadu_si256((const __m256i *)xp));             \
            p = _mm256_add_epi32(p, _mm256_madd_epi16(l1, _mm256_loadu_si256((const __m256i *)(xp + 16)))); \
            p = _mm256_add_epi32(p, _mm256_madd_epi16(h0, _mm256_loadu_si256((const __m256i *)(xp + 32)))); \
            p = _mm256_add_epi32(p, _mm256_madd_epi16(h1, _mm256_loadu_si256((const __m256i *)(xp + 48)))); \
            acc[m][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(t[m * KB + (bb)]), acc[m][u]); \
        }                                                                                           \
    }
    int b = 0;
    for (; b + 4 <= KB; b += 4) {
        PREFETCH(w + 32 * b + DUET_PF);
        PREFETCH(w + 32 * b + DUET_PF + 64);
        for (int u = 0; u < 4; u++) Q4_STEP(b + u, u % U)
    }
    for (; b < KB; b++) Q4_STEP(b, 0)
#undef Q4_STEP
    for (int m = 0; m < MM; m++)
        out[m] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]), _mm256_add_ps(acc[m][2], acc[m][3])))
                 + corr[m];
#else
    for (int m = 0; m < MM; m++) {
        float a = 0.f;
        const int16_t *xp = x0 + (long)m * Kp;
        for (int b = 0; b < KB; b++) a += (float)bdot_c(Q4A16, w + 32 * b, xp + 64 * b) * t[m * KB + b];
        out[m] = a + corr[m];
    }
#endif
}

/* ---------------------------------------------------------------------------------------
 * the same with 8-bit activations (xq->abits == 8): llama.cpp's Q8_0 x Q8_0 / Q4_0 x Q8_0
 * products (with one activation scale per 64 inputs for int4, not per 32). int8 weights: maddubs(|w|, sign(x, w)) (|w| <= 128 unsigned, x in
 * -127..127: a pair sums to at most 32512, no saturation); int4: maddubs(q, x) with q in 0..15. */

INLINE void row_q8_a8(const int8_t *w, const uint16_t *s, int gs, const xq_t *xq, int m0, int MM, float *t, float *out) {
    const int KB = xq->KB, Kp = xq->Kp;
    float corr[MAXM];
    prep_q8(s, gs, xq, m0, MM, t, corr);   /* 32-input blocks at either precision */
    const int8_t *x0 = xq->q8 + (long)m0 * Kp;
#if defined(DUET_AVX2)
    const __m256i ones = _mm256_set1_epi16(1);
    const int U = MM == 1 ? 4 : 2;
    __m256 acc[MAXM][4];
    for (int m = 0; m < MM; m++)
        for (int u = 0; u < 4; u++) acc[m][u] = _mm256_setzero_ps();
#define A8_STEP(bb, u)                                                                              \
    {                                                                                               \
        __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 32 * (bb)));                          \
        __m256i aw = _mm256_sign_epi8(wv, wv);                                                      \
        for (int m = 0; m < MM; m++) {                                                              \
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x0 + (long)m * Kp + 32 * (bb)));       \
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones); \
            acc[m][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(t[m * KB + (bb)]), acc[m][u]); \
        }                                                                                           \
    }
    int b = 0;
    for (; b + 4 <= KB; b += 4) {
        PREFETCH(w + 32 * b + DUET_PF);
        PREFETCH(w + 32 * b + DUET_PF + 64);
        for (int u = 0; u < 4; u++) A8_STEP(b + u, u % U)
    }
    for (; b < KB; b++) A8_STEP(b, 0)
#undef A8_STEP
    for (int m = 0; m < MM; m++)
        out[m] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]), _mm256_add_ps(acc[m][2], acc[m][3])))
                 + corr[m];
#else
    for (int m = 0; m < MM; m++) {
        float a = 0.f;
        const int8_t *xp = x0 + (long)m * Kp;
        for (int b = 0; b < KB; b++)
            a += (float)bdot_c(Q8A8, (const uint8_t *)w + 32 * b, xp + 32 * b) * t[m * KB + b];
        out[m] = a + corr[m];
    }
#endif
}

INLINE void row_q4_a8(const uint8_t *w, const uint16_t *sz, int gs, const xq_t *xq, int m0, int MM, float *t, float *out) {
    const int KB = xq->KB, Kp = xq->Kp;   /* 64-input blocks: 32 weight bytes, 64 activation bytes */
    float corr[MAXM];
    prep_q4(sz, gs, xq, m0, MM, t, corr);
    const int8_t *x0 = xq->q8 + (long)m0 * Kp;
#if defined(DUET_AVX2)
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(15);
    const int U = MM == 1 ? 4 : 2;
    __m256 acc[MAXM][4];
    for (int m = 0; m < MM; m++)
        for (int u = 0; u < 4; u++) acc[m][u] = _mm256_setzero_ps();
    /* both halves' u8 x s8 pairs sum in int16 (15 x 127 x 4 < 32767), one madd, one fma */
#define A4_STEP(bb, u)                                                                              \
    {                                                                                               \
        __m256i raw = _mm256_loadu_si256((const __m256i *)(w + 32 * (bb)));                         \
        __m256i lo = _mm256_and_si256(raw, low), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low); \
        for (int m = 0; m < MM; m++) {                                                              \
            const int8_t *xp = x0 + (long)m * Kp + 64 * (bb);                                       \
            __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xp)), \
                                           _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xp + 32)))); \
            __m256i p = _mm256_madd_epi16(p16, ones);                                               \
            acc[m][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(t[m * KB + (bb)]), acc[m][u]); \
        }                                                                                           \
    }
    int b = 0;
    for (; b + 4 <= KB; b += 4) {
        PREFETCH(w + 32 * b + DUET_PF);
        PREFETCH(w + 32 * b + DUET_PF + 64);
        for (int u = 0; u < 4; u++) A4_STEP(b + u, u % U)
    }
    for (; b < KB; b++) A4_STEP(b, 0)
#undef A4_STEP
    for (int m = 0; m < MM; m++)
        out[m] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]), _mm256_add_ps(acc[m][2], acc[m][3])))
                 + corr[m];
#else
    for (int m = 0; m < MM; m++) {
        float a = 0.f;
        const int8_t *xp = x0 + (long)m * Kp;
        for (int b = 0; b < KB; b++) a += (float)bdot_c(Q4A8, w + 32 * b, xp + 64 * b) * t[m * KB + b];
        out[m] = a + corr[m];
    }
#endif
}

#if defined(DUET_AVX2)
/* One weight block's exact int32 lanes against its 64 activation bytes (xa, xb: 32 each): int4
   with 8-bit activations (q4: 32 bytes of nibbles, 64 inputs), or int8 with 16-bit (32 inputs). */
INLINE __m256i pair_lanes(int q4, const uint8_t *w, __m256i xa, __m256i xb) {
    if (q4) {   /* both halves' u8 x s8 pairs sum in int16 (15 x 127 x 4 < 32767) */
        const __m256i low = _mm256_set1_epi8(15), r = _mm256_loadu_si256((const __m256i *)w);
        __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(r, low), xa),
                                     _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(r, 4), low), xb));
        return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
    }
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w)), xa),
                            _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16))), xb));
}

/* Two weight rows against one activation row on AVX2, each activation block loaded once for both
   (a step reads 64 weight bytes per 64 activation bytes, not 32). Measured (AVX2 emulated, 2
   threads, a 2816x2048 weight from memory, against one row at a time): int4 x 8-bit 18.4-18.8
   GB/s against 15.2-17.6, int8 x 16-bit 14.4-15.0 against 13.3-14.2 (read bandwidth 22-26). */
INLINE void row2_avx2(int q4, const void *w0v, const uint16_t *s0, const void *w1v, const uint16_t *s1, int gs,
                      const xq_t *xq, float *t, float *out) {
    const int KB = xq->KB;
    float c0, c1;
    if (q4) {
        prep_q4(s0, gs, xq, 0, 1, t, &c0);
        prep_q4(s1, gs, xq, 0, 1, t + KB, &c1);
    } else {
        prep_q8(s0, gs, xq, 0, 1, t, &c0);
        prep_q8(s1, gs, xq, 0, 1, t + KB, &c1);
    }
    const uint8_t *w0 = (const uint8_t *)w0v, *w1 = (const uint8_t *)w1v;
    const uint8_t *x = q4 ? (const uint8_t *)xq->q8 : (const uint8_t *)xq->q;   /* 64 bytes a block either way */
    __m256 a0[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, a1[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
#define PAIR_STEP(bb, u)                                                                            \
    {                                                                                               \
        const __m256i xa = _mm256_loadu_si256((const __m256i *)(x + 64 * (bb)));                    \
        const __m256i xb = _mm256_loadu_si256((const __m256i *)(x + 64 * (bb) + 32));               \
        a0[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pair_lanes(q4, w0 + 32 * (bb), xa, xb)),          \
                                _mm256_set1_ps(t[bb]), a0[u]);                                      \
        a1[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pair_lanes(q4, w1 + 32 * (bb), xa, xb)),          \
                                _mm256_set1_ps(t[KB + (bb)]), a1[u]);                               \
    }
    int b = 0;
    for (; b + 2 <= KB; b += 2) {
        PREFETCH(w0 + 32 * b + DUET_PF);
        PREFETCH(w1 + 32 * b + DUET_PF);
        PAIR_STEP(b, 0) PAIR_STEP(b + 1, 1)
    }
    for (; b < KB; b++) PAIR_STEP(b, 0)
#undef PAIR_STEP
    out[0] = hsum256(_mm256_add_ps(a0[0], a0[1])) + c0;
    out[1] = hsum256(_mm256_add_ps(a1[0], a1[1])) + c1;
}
#endif

/* Two weight rows (any two: their codes and scales by address) against one activation row.
 * The one-row loop is bound by its loads (the activation block is as many bytes as the
 * weights, from L1); two rows share each activation load: AVX-512's int4 x 16-bit below, AVX2's
 * row2_avx2; elsewhere (AVX-512 int8, measured 8% slower paired; plain C) two calls. */
INLINE void row2(int bits, const void *w0, const uint16_t *s0, const void *w1, const uint16_t *s1, int gs,
                 const xq_t *xq, float *t, float *out) {
    const int KB = xq->KB;
    float c0, c1;
    const float *t0 = t, *t1 = t + KB;
    const int16_t *x0 = xq->q;
#if 1
    /* the scales of the rows a few pairs on: each row starts with them (prep), a miss there
       stalls the row, and the hardware prefetcher does not follow this thin stream */
    for (int i = 0; i < 4; i++) {
        PREFETCH((const char *)s0 + DUET_SPF + 64 * i);
        PREFETCH((const char *)s1 + DUET_SPF + 64 * i);
    }
#endif
    if (xq->abits == 8) {   /* 8-bit activations: int4 rows in pairs, int8 one at a time */
        if (bits == 8) {
            row_q8_a8((const int8_t *)w0, s0, gs, xq, 0, 1, t, out);
            row_q8_a8((const int8_t *)w1, s1, gs, xq, 0, 1, t, out + 1);
        } else {
#if defined(DUET_AVX2)
            row2_avx2(1, w0, s0, w1, s1, gs, xq, t, out);
#else
            row_q4_a8((const uint8_t *)w0, s0, gs, xq, 0, 1, t, out);
            row_q4_a8((const uint8_t *)w1, s1, gs, xq, 0, 1, t, out + 1);
#endif
        }
        return;
    }
    if (bits == 8) {
#if defined(DUET_AVX2) && !defined(DUET_AVX512)
        row2_avx2(0, w0, s0, w1, s1, gs, xq, t, out);
#else
        row_q8((const int8_t *)w0, s0, gs, xq, 0, 1, t, out);
        row_q8((const int8_t *)w1, s1, gs, xq, 0, 1, t, out + 1);
#endif
        return;
    }
#if defined(DUET_AVX512)
    prep_q4(s0, gs, xq, 0, 1, t, &c0);
    prep_q4(s1, gs, xq, 0, 1, t + KB, &c1);
    __m512 a0[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, a1[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int b = 0;
    {
        const uint8_t *v0 = (const uint8_t *)w0, *v1 = (const uint8_t *)w1;
        const __m512i low = _mm512_set1_epi16(15);
#if defined(__AVX512VNNI__)
#define R4_HI(p, h, xv) _mm512_dpwssd_epi32(p, h, xv)
#else
#define R4_HI(p, h, xv) _mm512_add_epi32(p, _mm512_madd_epi16(h, xv))
#endif
#define R4_STEP(bb, u)                                                                              \
    {                                                                                               \
        __m512i xl = _mm512_loadu_si512((const void *)(x0 + 64 * (bb)));                            \
        __m512i xh = _mm512_loadu_si512((const void *)(x0 + 64 * (bb) + 32));                       \
        __m512i r0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(v0 + 32 * (bb))));    \
        __m512i r1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(v1 + 32 * (bb))));    \
        __m512i p0 = R4_HI(_mm512_madd_epi16(_mm512_and_si512(r0, low), xl), _mm512_srli_epi16(r0, 4), xh); \
        __m512i p1 = R4_HI(_mm512_madd_epi16(_mm512_and_si512(r1, low), xl), _mm512_srli_epi16(r1, 4), xh); \
        a0[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_set1_ps(t0[bb]), a0[u]);            \
        a1[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_set1_ps(t1[bb]), a1[u]);            \
    }
        for (; b + 2 <= KB; b += 2) {
            _mm_prefetch((const char *)(v0 + 32 * b + DUET_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(v1 + 32 * b + DUET_PF), _MM_HINT_T0);
            R4_STEP(b, 0) R4_STEP(b + 1, 1)
        }
        for (; b < KB; b++) R4_STEP(b, 0)
#undef R4_STEP
#undef R4_HI
    }
    out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0[0], a0[1])) + c0;
    out[1] = _mm512_reduce_add_ps(_mm512_add_ps(a1[0], a1[1])) + c1;
#else
    (void)t0; (void)t1; (void)x0; (void)c0; (void)c1;
    row_q4((const uint8_t *)w0, s0, gs, xq, 0, 1, t, out);
    row_q4((const uint8_t *)w1, s1, gs, xq, 0, 1, t, out + 1);
#endif
}

/* the codes and scales of row n of a native [N', Kp] matrix */
INLINE void row_at(int bits, const void *w, const uint16_t *s, int Kp, int gs, long n,
                   const void **wr, const uint16_t **sr) {
    const long G = Kp / gs;
    *wr = (const uint8_t *)w + n * (bits == 8 ? Kp : Kp / 2);
    *sr = s + n * G * (bits == 8 ? 1 : 2);
}

/* weight row n of a native matrix against activation rows m0 .. m0+mm-1 */
INLINE void row_dot(int bits, const void *w, const uint16_t *s, int Kp, int gs, long n,
                    const xq_t *xq, int m0, int mm, float *t, float *out) {
    const long G = Kp / gs;
    if (xq->abits == 8) {
        if (bits == 8) {
            const int8_t *wr = (const int8_t *)w + n * Kp;
            const uint16_t *sr = s + n * G;
            switch (mm) {
                case 1: row_q8_a8(wr, sr, gs, xq, m0, 1, t, out); break;
                case 2: row_q8_a8(wr, sr, gs, xq, m0, 2, t, out); break;
                case 3: row_q8_a8(wr, sr, gs, xq, m0, 3, t, out); break;
                default: row_q8_a8(wr, sr, gs, xq, m0, 4, t, out); break;
            }
        } else {
            const uint8_t *wr = (const uint8_t *)w + n * (Kp / 2);
            const uint16_t *sr = s + n * G * 2;
            switch (mm) {
                case 1: row_q4_a8(wr, sr, gs, xq, m0, 1, t, out); break;
                case 2: row_q4_a8(wr, sr, gs, xq, m0, 2, t, out); break;
                case 3: row_q4_a8(wr, sr, gs, xq, m0, 3, t, out); break;
                default: row_q4_a8(wr, sr, gs, xq, m0, 4, t, out); break;
            }
        }
        return;
    }
    if (bits == 8) {
        const int8_t *wr = (const int8_t *)w + n * Kp;
        const uint16_t *sr = s + n * G;
        switch (mm) {
            case 1: row_q8(wr, sr, gs, xq, m0, 1, t, out); break;
            case 2: row_q8(wr, sr, gs, xq, m0, 2, t, out); break;
            case 3: row_q8(wr, sr, gs, xq, m0, 3, t, out); break;
            default: row_q8(wr, sr, gs, xq, m0, 4, t, out); break;
        }
    } else {
        const uint8_t *wr = (const uint8_t *)w + n * (Kp / 2);
        const uint16_t *sr = s + n * G * 2;
        switch (mm) {
            case 1: row_q4(wr, sr, gs, xq, m0, 1, t, out); break;
            case 2: row_q4(wr, sr, gs, xq, m0, 2, t, out); break;
            case 3: row_q4(wr, sr, gs, xq, m0, 3, t, out); break;
            default: row_q4(wr, sr, gs, xq, m0, 4, t, out); break;
        }
    }
}

INLINE void store_out(void *y, int bf16, long i, float v) {
    if (bf16) ((uint16_t *)y)[i] = f2bf(v);
    else ((float *)y)[i] = v;
}

/* y[M, n] (row stride ldy) = x[M, k] W[:n, :k]^T, activations rounded to abits (8 or 16).
 * Returns 0, or -1 when out of memory. */
int duet_gemm(int bits, const void *x, int x_bf16, int M, int k, long ldx,
              const void *w, const uint16_t *s, int Kp, int gs, int n,
              void *y, int y_bf16, long ldy, int nthreads, int abits) {
    if (M <= 0 || n <= 0) return 0;
    xq_t xq;
    if (abits != 8) abits = 16;
    if (xq_alloc(&xq, M, Kp, act_block(bits, abits), abits)) return -1;
    xq_fill(&xq, x, x_bf16, k, ldx);
    if ((long)n * Kp * bits / 8 * M < SMALL_WORK) nthreads = 1;   /* waking the team costs more */
    if (M == 1) {   /* decode: two weight rows per step */
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (long pr = 0; pr < (n + 1) / 2; pr++) {
            long r = 2 * pr;
            if (pr == 0) last_team = omp_get_num_threads();
            float out[2], t[2 * xq.KB];
            const void *w0, *w1;
            const uint16_t *s0, *s1;
            row_at(bits, w, s, Kp, gs, r, &w0, &s0);
            if (r + 1 < n) {
                row_at(bits, w, s, Kp, gs, r + 1, &w1, &s1);
                row2(bits, w0, s0, w1, s1, gs, &xq, t, out);
                store_out(y, y_bf16, r, out[0]);
                store_out(y, y_bf16, r + 1, out[1]);
            } else {
                row_dot(bits, w, s, Kp, gs, r, &xq, 0, 1, t, out);
                store_out(y, y_bf16, r, out[0]);
            }
        }
        free(xq.q);
        return 0;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long r = 0; r < n; r++) {
        float out[MAXM], t[MAXM * xq.KB];
        for (int m0 = 0; m0 < M; m0 += MAXM) {
            int mm = M - m0 < MAXM ? M - m0 : MAXM;
            row_dot(bits, w, s, Kp, gs, r, &xq, m0, mm, t, out);
            for (int i = 0; i < mm; i++) store_out(y, y_bf16, (long)(m0 + i) * ldy + r, out[i]);
        }
    }
    free(xq.q);
    return 0;
}

/* The weight itself: out[n, k] (bf16 or fp32) from a native matrix (for many-row matmuls). */
void duet_dequant(int bits, const void *w, const uint16_t *s, int Kp, int gs, int n, int k,
                  void *out, int out_bf16, int nthreads) {
    const long G = Kp / gs;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long r = 0; r < n; r++) {
        float row[Kp];
        if (bits == 8) {
            const int8_t *wr = (const int8_t *)w + r * Kp;
            const uint16_t *sr = s + r * G;
            for (long g = 0; g < G; g++) {
                float sc = bf2f(sr[g]);
                for (int c = 0; c < gs; c++) row[g * gs + c] = ((float)wr[g * gs + c] + 0.5f) * sc;
            }
        } else {
            const uint8_t *wr = (const uint8_t *)w + r * (Kp / 2);
            const uint16_t *sr = s + r * G * 2;
            for (long g = 0; g < G; g++) {
                float sc = bf2f(sr[2 * g]), z8 = bf2f(sr[2 * g + 1]) - 8.f * sc;
                for (int c = 0; c < gs; c += 64) {
                    const uint8_t *v = wr + (g * gs + c) / 2;
                    float *o = row + g * gs + c;
                    for (int i = 0; i < 32; i++) {
                        o[i] = (float)(v[i] & 15) * sc + z8;
                        o[32 + i] = (float)(v[i] >> 4) * sc + z8;
                    }
                }
            }
        }
        if (out_bf16) {
            uint16_t *o = (uint16_t *)out + r * k;
            for (int c = 0; c < k; c++) o[c] = f2bf(row[c]);
        } else {
            memcpy((float *)out + r * k, row, (size_t)k * sizeof(float));
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Many-row matmul (prefill): y[M, n] = x[M, k] W[:n, :k]^T with the GEMV's integer block
 * products, tiled so that each weight byte is read from memory once per MC activation rows
 * and each activation block from L1/L2 once per TN weight rows.
 *
 *   activations  rounded once per call (xq_t, 8 or 16 bits, as the GEMV's), rows in parallel
 *   threads      split the weight rows in groups of TN (a contiguous range each)
 *   MC rows      of activations at a time: their codes (MC x Kp bytes or shorts) stay in L2
 *                while a thread's weight rows go by
 *   a tile       TM activation rows x TN weight rows: TM*TN float32 accumulators in registers
 *                over the whole K. Per block b the TN weight blocks are unpacked once (wprep)
 *                and multiplied with the TM activation blocks (bdot: exact int32 lanes), each
 *                converted and added with its scale product s_w[n,b] * s_x[m,b].
 * The zero-point / half-step term is a small [TM, TN] product of the weights' per-block
 * offsets (0.5 s for int8, z - 8 s for int4) with the activation block sums, after the loop.
 * Every build computes the same block integers; only the float32 summation order differs. */

#define TM 4                 /* activation rows per tile */
#define TN 4                 /* weight rows per tile */
#define MC 64                /* activation rows per pass over a thread's weight rows */

#if defined(DUET_AVX2)
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#elif defined(__AVXVNNI__)
#define DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#endif

typedef struct { __m256i v[4]; } wblk_t;

/* one 32-byte weight block unpacked for bdot. int8 x 16-bit: its two int16 halves; int8 x 8-bit:
   the codes and their magnitudes (maddubs takes u8 x s8: |w| times x with w's sign); int4 x 8-bit:
   the low and high nibbles as bytes (inputs 0..31, 32..63); int4 x 16-bit: those as int16 quarters */
INLINE wblk_t wprep(int kind, const uint8_t *w) {
    wblk_t r;
    if (kind == Q8A16) {
        r.v[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w));
        r.v[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
    } else if (kind == Q8A8) {
        r.v[0] = _mm256_loadu_si256((const __m256i *)w);
        r.v[1] = _mm256_sign_epi8(r.v[0], r.v[0]);
    } else if (kind == Q4A8) {
        const __m256i low = _mm256_set1_epi8(15);
        __m256i raw = _mm256_loadu_si256((const __m256i *)w);
        r.v[0] = _mm256_and_si256(raw, low);
        r.v[1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
    } else {
        const __m256i low = _mm256_set1_epi16(15);
        __m256i r0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)w));
        __m256i r1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
        r.v[0] = _mm256_and_si256(r0, low);     /* inputs 0..15 */
        r.v[1] = _mm256_and_si256(r1, low);     /* 16..31 */
        r.v[2] = _mm256_srli_epi16(r0, 4);      /* 32..47 */
        r.v[3] = _mm256_srli_epi16(r1, 4);      /* 48..63 */
    }
    return r;
}

/* the block's products with one activation block x: eight int32 lanes summing to the exact dot */
INLINE __m256i bdot(int kind, const wblk_t *wb, const void *x) {
    const __m256i *xv = (const __m256i *)x;
    if (kind == Q8A16)
        return _mm256_add_epi32(_mm256_madd_epi16(wb->v[0], _mm256_loadu_si256(xv)),
                                _mm256_madd_epi16(wb->v[1], _mm256_loadu_si256(xv + 1)));
    if (kind == Q4A16) {
        __m256i p = _mm256_add_epi32(_mm256_madd_epi16(wb->v[0], _mm256_loadu_si256(xv)),
                                     _mm256_madd_epi16(wb->v[1], _mm256_loadu_si256(xv + 1)));
        return _mm256_add_epi32(p, _mm256_add_epi32(_mm256_madd_epi16(wb->v[2], _mm256_loadu_si256(xv + 2)),
                                                    _mm256_madd_epi16(wb->v[3], _mm256_loadu_si256(xv + 3))));
    }
#if defined(DPBUSD)
    if (kind == Q8A8)
        return DPBUSD(_mm256_setzero_si256(), wb->v[1], _mm256_sign_epi8(_mm256_loadu_si256(xv), wb->v[0]));
    return DPBUSD(DPBUSD(_mm256_setzero_si256(), wb->v[0], _mm256_loadu_si256(xv)), wb->v[1],
                  _mm256_loadu_si256(xv + 1));
#else
    const __m256i ones = _mm256_set1_epi16(1);
    if (kind == Q8A8)   /* a pair of products is at most 2 x 128 x 127: no int16 saturation */
        return _mm256_madd_epi16(_mm256_maddubs_epi16(wb->v[1], _mm256_sign_epi8(_mm256_loadu_si256(xv), wb->v[0])),
                                 ones);
    /* int4: both halves' pairs sum in int16 (4 x 15 x 127 < 32767) */
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(wb->v[0], _mm256_loadu_si256(xv)),
                                              _mm256_maddubs_epi16(wb->v[1], _mm256_loadu_si256(xv + 1))), ones);
#endif
}
#endif

/* One tile: out[m][j] = sum_b sp(m, j, b) * dot(w_j block b, x_m block b) + the offset term.
 * ws/wo [KB][TN]: the weight rows' per-block scale and offset (the offset term: w = s (j + 0.5)
 * for int8, s q + (z - 8 s) for int4, times the block sums); x: tm activation rows of xrow
 * bytes, blocks of xblk bytes; xs/xm: their block scales and sums (row stride KB).
 * AVX2: wv holds the TN rows' blocks already unpacked (wprep) as [KB][TN][WV] vectors; the four
 * rows' int32 lanes of one activation block are folded by three hadds into one vector (lanes
 * j and 4 + j: row j's two halves), so each block costs one conversion and one fma per activation
 * row, not four. Plain C: wr[j], row j's codes. */
INLINE void prefill_tile(int kind, int tm, const __attribute__((unused)) void *wsrc, const float *ws,
                         const float *wo, const uint8_t *x, long xrow, int xblk, const float *xs,
                         const float *xm, int KB, float out[TM][TN]) {
#if defined(DUET_AVX2)
    const int WV = kind == Q4A16 ? 4 : 2;
    const __m256i *wv = (const __m256i *)wsrc;
    __m256 acc[TM];
    for (int m = 0; m < tm; m++) acc[m] = _mm256_setzero_ps();
    for (int b = 0; b < KB; b++) {
        const __m256 s4 = _mm256_broadcast_ps((const __m128 *)(ws + b * TN));   /* [s_0..s_3, s_0..s_3] */
        const __m256i *wb = wv + (long)b * TN * WV;
        for (int m = 0; m < tm; m++) {
            const uint8_t *xb = x + m * xrow + (long)b * xblk;
            __m256i d[TN];
            for (int j = 0; j < TN; j++) d[j] = bdot(kind, (const wblk_t *)(wb + j * WV), xb);
            __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(d[0], d[1]), _mm256_hadd_epi32(d[2], d[3]));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_mul_ps(s4, _mm256_set1_ps(xs[(long)m * KB + b])),
                                     acc[m]);
        }
    }
    for (int m = 0; m < tm; m++) {   /* the two halves, plus the offsets (below) four rows at a time */
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
        for (int b = 0; b < KB; b++) r = _mm_fmadd_ps(_mm_loadu_ps(wo + b * TN), _mm_set1_ps(xm[(long)m * KB + b]), r);
        _mm_storeu_ps(out[m], r);
    }
#else
    const uint8_t *const *wr = (const uint8_t *const *)wsrc;
    float acc[TM][TN] = {{0.f}};
    for (int b = 0; b < KB; b++)
        for (int j = 0; j < TN; j++)
            for (int m = 0; m < tm; m++)
                acc[m][j] += (float)bdot_c(kind, wr[j] + 32L * b, x + m * xrow + (long)b * xblk)
                             * (ws[b * TN + j] * xs[(long)m * KB + b]);
    for (int m = 0; m < tm; m++)
        for (int j = 0; j < TN; j++) {
            float c = 0.f;
            for (int b = 0; b < KB; b++) c += wo[b * TN + j] * xm[(long)m * KB + b];
            out[m][j] = acc[m][j] + c;
        }
#endif
}

/* activation rows m0 .. m1-1 against the TN weight rows from n0 (nj of them stored), full tiles
 * then the rest: one call per kind, the tile's shape constant inside */
INLINE void prefill_rows(int kind, const void *wsrc, const float *ws, const float *wo, const uint8_t *x,
                         long xrow, int xblk, const float *xs, const float *xm, int KB, int m0, int m1,
                         long n0, int nj, void *y, int y_bf16, long ldy) {
    float out[TM][TN];
    for (int m = m0; m < m1; m += TM) {
        const int tm = m1 - m < TM ? m1 - m : TM;
        const uint8_t *xr = x + m * xrow;
        const float *sr = xs + (long)m * KB, *mr = xm + (long)m * KB;
        if (tm == TM) prefill_tile(kind, TM, wsrc, ws, wo, xr, xrow, xblk, sr, mr, KB, out);
        else if (tm == 1) prefill_tile(kind, 1, wsrc, ws, wo, xr, xrow, xblk, sr, mr, KB, out);
        else if (tm == 2) prefill_tile(kind, 2, wsrc, ws, wo, xr, xrow, xblk, sr, mr, KB, out);
        else prefill_tile(kind, 3, wsrc, ws, wo, xr, xrow, xblk, sr, mr, KB, out);
        for (int i = 0; i < tm; i++)
            for (int j = 0; j < nj; j++) store_out(y, y_bf16, (long)(m + i) * ldy + n0 + j, out[i][j]);
    }
}

static void prefill_rows_any(int kind, const void *wsrc, const float *ws, const float *wo, const uint8_t *x,
                             long xrow, int xblk, const float *xs, const float *xm, int KB, int m0, int m1,
                             long n0, int nj, void *y, int y_bf16, long ldy) {
#define ROWS(K) prefill_rows(K, wsrc, ws, wo, x, xrow, xblk, xs, xm, KB, m0, m1, n0, nj, y, y_bf16, ldy)
    switch (kind) {
        case Q8A16: ROWS(Q8A16); break;
        case Q8A8: ROWS(Q8A8); break;
        case Q4A16: ROWS(Q4A16); break;
        default: ROWS(Q4A8); break;
    }
#undef ROWS
}

/* the TN weight rows from n0: their codes, and per block their scale and offset as float32 [KB][TN] */
static void prefill_weights(int bits, const void *w, const uint16_t *s, int Kp, int gs, int XB, long n0,
                            const uint8_t **wr, float *ws, float *wo) {
    const int KB = Kp / XB, per = gs / XB;
    for (int j = 0; j < TN; j++) {
        const void *wj;
        const uint16_t *sj;
        row_at(bits, w, s, Kp, gs, n0 + j, &wj, &sj);
        wr[j] = (const uint8_t *)wj;
        for (int b = 0; b < KB; b++) {
            int g = b / per;
            float sc = bf2f(bits == 8 ? sj[g] : sj[2 * g]);
            ws[b * TN + j] = sc;
            wo[b * TN + j] = bits == 8 ? 0.5f * sc : bf2f(sj[2 * g + 1]) - 8.f * sc;
        }
    }
}

#if defined(DUET_AVX2)
INLINE void unpack_kind(int kind, const uint8_t *const *wr, int KB, __m256i *wv) {
    const int WV = kind == Q4A16 ? 4 : 2;
    for (int b = 0; b < KB; b++)
        for (int j = 0; j < TN; j++) {
            wblk_t wb = wprep(kind, wr[j] + 32L * b);
            for (int i = 0; i < WV; i++) _mm256_store_si256(wv + ((long)b * TN + j) * WV + i, wb.v[i]);
        }
}

/* the TN rows' blocks unpacked for bdot, [KB][TN][WV] vectors (read by prefill_tile) */
static void unpack_weights(int kind, const uint8_t *const *wr, int KB, __m256i *wv) {
    switch (kind) {
        case Q8A16: unpack_kind(Q8A16, wr, KB, wv); break;
        case Q8A8: unpack_kind(Q8A8, wr, KB, wv); break;
        case Q4A16: unpack_kind(Q4A16, wr, KB, wv); break;
        default: unpack_kind(Q4A8, wr, KB, wv); break;
    }
}
#endif

INLINE int tiled_kind(int bits, int abits) {
    return bits == 8 ? (abits == 8 ? Q8A8 : Q8A16) : (abits == 8 ? Q4A8 : Q4A16);
}

/* One thread's share of a tiled matmul: y[m, g*TN ..] for every activation row of xq and the
 * weight row groups g0 .. g1-1 (TN rows each) of a native [n, Kp] matrix. wr/ws/wv: the
 * thread's scratch (TN row pointers, 2*TN*KB floats, 4*TN*KB vectors on AVX2); wsrc: what
 * prefill_tile reads (wv unpacked, or wr in place). */
static void tiled_groups(int kind, int bits, const void *w, const uint16_t *s, int gs, int n, const xq_t *xq,
                         long g0, long g1, const uint8_t **wr, float *ws, void *wv, const void *wsrc,
                         void *y, int y_bf16, long ldy) {
    const int XB = xq->XB, KB = xq->KB, Kp = xq->Kp, M = xq->M;
    const long xrow = (long)Kp * xq->abits / 8;        /* bytes per activation row */
    const int xblk = XB * xq->abits / 8;               /* bytes per activation block */
    const uint8_t *xcodes = xq->abits == 8 ? (const uint8_t *)xq->q8 : (const uint8_t *)xq->q;
    float *wo = ws + TN * KB;
    (void)wv;
    for (int m0 = 0; m0 < M; m0 += MC) {
        const int m1 = M - m0 < MC ? M : m0 + MC;
        for (long g = g0; g < g1; g++) {
            prefill_weights(bits, w, s, Kp, gs, XB, g * TN, wr, ws, wo);
#if defined(DUET_AVX2)
            unpack_weights(kind, wr, KB, (__m256i *)wv);
#endif
            const int nj = n - g * TN < TN ? (int)(n - g * TN) : TN;
            prefill_rows_any(kind, wsrc, ws, wo, xcodes, xrow, xblk, xq->scale, xq->sum, KB, m0, m1,
                             g * TN, nj, y, y_bf16, ldy);
        }
    }
}

/* y[M, n] (row stride ldy) = x[M, k] W[:n, :k]^T for many rows, activations rounded to abits
 * (8 or 16) per block as duet_gemm's. W's padded rows (N' >= n, a multiple of 16) are read, not
 * stored. Returns 0, or -1 when out of memory. */
int duet_gemm_tiled(int bits, const void *x, int x_bf16, int M, int k, long ldx,
                    const void *w, const uint16_t *s, int Kp, int gs, int n,
                    void *y, int y_bf16, long ldy, int nthreads, int abits) {
    if (M <= 0 || n <= 0) return 0;
    xq_t xq;
    if (abits != 8) abits = 16;
    const int XB = act_block(bits, abits), KB = Kp / XB;
    if (xq_alloc(&xq, M, Kp, XB, abits)) return -1;
    const int kind = tiled_kind(bits, abits);
    const long groups = (n + TN - 1) / TN;
    if ((long)n * Kp * M < 4 * SMALL_WORK) nthreads = 1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        if (id == 0) last_team = nt;
        float v[64];
        for (int m = id; m < M; m += nt)   /* the activations, a row at a time per thread */
            for (int b = 0; b < KB; b++) {
                for (int i = 0; i < XB; i++) {
                    int c = b * XB + i;
                    v[i] = c < k ? load_act(x, x_bf16, (long)m * ldx + c) : 0.f;
                }
                xq_put(&xq, m, b, v);
            }
#pragma omp barrier
        const long g0 = groups * id / nt, g1 = groups * (id + 1) / nt;
        const uint8_t *wr[TN];
        float *ws = malloc(sizeof(float) * 2 * TN * KB);
#if defined(DUET_AVX2)
        __m256i *wv = aligned_alloc(32, sizeof(__m256i) * 4 * TN * KB);   /* the TN rows' blocks, unpacked */
        const void *wsrc = wv;
        const int ok = ws && wv;
#else
        void *wv = NULL;                                                  /* plain C reads the codes in place */
        const void *wsrc = wr;
        const int ok = ws != NULL;
#endif
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        } else {
            tiled_groups(kind, bits, w, s, gs, n, &xq, g0, g1, wr, ws, wv, wsrc, y, y_bf16, ldy);
        }
        free(ws);
        free(wv);
    }
    free(xq.q);
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------
 * fused batch-1 MoE step: y = sum_e wt_e * W2_e (silu(G_e x) * (U_e x)), W13_e = [G_e; U_e]
 *
 * table [E][4]: per expert the addresses of its W13 codes, W13 scales, W2 codes, W2 scales
 * (native layouts, one mode and group size); inter[E]: I_e (gate rows 0..I_e-1, up rows
 * I_e..2I_e-1 of W13); ip[E]: the padded K of W2_e (>= I_e). The token's k experts are
 * idx[0..k-1] with weights wts[0..k-1]; shared >= 0 adds table row `shared` with weight 1.
 * Hp: the padded K of W13; H: rows of y (<= padded N of W2). */
int duet_moe(int bits, const int64_t *table, const int32_t *inter_t, const int32_t *ip_t,
             const int64_t *idx, const float *wts_k, int k, int shared, int gs,
             const void *x, int x_bf16, int H, int Hp, void *y, int y_bf16, int nthreads, int abits) {
    int n_e = k + (shared >= 0);
    if (k < 0 || n_e <= 0 || n_e > 64) return -2;
    int64_t ptrs[64 * 4];
    int32_t inter[64], ip[64];
    float wts[64];
    for (int e = 0; e < n_e; e++) {
        int64_t row = e < k ? idx[e] : shared;
        memcpy(ptrs + 4 * e, table + 4 * row, 4 * sizeof(int64_t));
        inter[e] = inter_t[row];
        ip[e] = ip_t[row];
        wts[e] = e < k ? wts_k[e] : 1.f;
    }
    if (abits != 8) abits = 16;
    const int XB = act_block(bits, abits);
    long off13[65], offh[65];
    off13[0] = offh[0] = 0;
    for (int e = 0; e < n_e; e++) {
        off13[e + 1] = off13[e] + 2L * inter[e];
        offh[e + 1] = offh[e] + ip[e];
    }
    const long R = off13[n_e], HT = offh[n_e], TB = HT / XB;
    xq_t xq, hq[64];
    if (xq_alloc(&xq, 1, Hp, XB, abits)) return -1;
    float *gu = aligned_alloc(64, ((R * sizeof(float)) + 63) & ~(size_t)63);
    float *yacc = aligned_alloc(64, (((H + 1) * sizeof(float)) + 63) & ~(size_t)63);
    xq_t hall;   /* all experts' hidden vectors, one after the other: [HT] */
    if (!gu || !yacc || xq_alloc(&hall, 1, (int)HT, XB, abits)) { free(xq.q); free(gu); free(yacc); return -1; }
    for (int e = 0; e < n_e; e++) {   /* views of hall, one per expert */
        hq[e] = hall;
        hq[e].Kp = ip[e];
        hq[e].KB = ip[e] / XB;
        hq[e].q = hall.q + offh[e];
        hq[e].q8 = hall.q8 + offh[e];
        hq[e].scale = hall.scale + offh[e] / XB;
        hq[e].sum = hall.sum + offh[e] / XB;
    }
    xq_fill(&xq, x, x_bf16, H, 0);
    int tmax = Hp / XB;
    for (int e = 0; e < n_e; e++) tmax = ip[e] / XB > tmax ? ip[e] / XB : tmax;
#pragma omp parallel num_threads(nthreads)
    {
        float t[2 * tmax];
#pragma omp for schedule(static)
        for (long pr = 0; pr < (R + 1) / 2; pr++) {   /* gate and up rows of every expert, two at a time */
            const void *wr[2];
            const uint16_t *sr[2];
            long r = 2 * pr;
            int e = 0;
            for (int i = 0; i < 2 && r + i < R; i++) {
                while (r + i >= off13[e + 1]) e++;
                const int64_t *p = ptrs + 4 * e;
                row_at(bits, (const void *)p[0], (const uint16_t *)p[1], Hp, gs, r + i - off13[e], &wr[i], &sr[i]);
            }
            if (r + 1 < R) {
                row2(bits, wr[0], sr[0], wr[1], sr[1], gs, &xq, t, gu + r);
            } else {
                const int64_t *p = ptrs + 4 * e;
                row_dot(bits, (const void *)p[0], (const uint16_t *)p[1], Hp, gs, r - off13[e], &xq, 0, 1, t, gu + r);
            }
        }
#pragma omp for schedule(static)
        for (long b = 0; b < TB; b++) {  /* silu(gate) * up, as int16 blocks */
            int e = 0;
            long c0 = b * XB;
            while (c0 >= offh[e + 1]) e++;
            const float *g = gu + off13[e], *u = g + inter[e];
            float v[64];
            for (int i = 0; i < XB; i++) {
                long c = c0 - offh[e] + i;
                v[i] = c < inter[e] ? g[c] / (1.f + expf(-g[c])) * u[c] : 0.f;
            }
            xq_put(&hall, 0, (int)b, v);
        }
        /* down projections, weighted, summed: expert by expert so that each thread streams one
           matrix at a time; every loop below splits 0..H-1 the same way (static schedule, same
           bounds), so a thread only ever touches its own rows of yacc and needs no barrier */
        const long HP = (H + 1) / 2;   /* row pairs */
#pragma omp for schedule(static) nowait
        for (long pr = 0; pr < HP; pr++) yacc[2 * pr] = yacc[2 * pr + 1] = 0.f;
        for (int e = 0; e < n_e; e++) {
            const int64_t *p = ptrs + 4 * e;
#pragma omp for schedule(static) nowait
            for (long pr = 0; pr < HP; pr++) {
                long n = 2 * pr;
                float o[2];
                if (n + 1 < H) {
                    const void *w0, *w1;
                    const uint16_t *s0, *s1;
                    row_at(bits, (const void *)p[2], (const uint16_t *)p[3], ip[e], gs, n, &w0, &s0);
                    row_at(bits, (const void *)p[2], (const uint16_t *)p[3], ip[e], gs, n + 1, &w1, &s1);
                    row2(bits, w0, s0, w1, s1, gs, &hq[e], t, o);
                    yacc[n] += wts[e] * o[0];
                    yacc[n + 1] += wts[e] * o[1];
                } else {
                    row_dot(bits, (const void *)p[2], (const uint16_t *)p[3], ip[e], gs, n, &hq[e], 0, 1, t, o);
                    yacc[n] += wts[e] * o[0];
                }
            }
        }
#pragma omp for schedule(static)
        for (long pr = 0; pr < HP; pr++) {
            store_out(y, y_bf16, 2 * pr, yacc[2 * pr]);
            if (2 * pr + 1 < H) store_out(y, y_bf16, 2 * pr + 1, yacc[2 * pr + 1]);
        }
    }
    free(yacc);
    free(xq.q);
    free(hall.q);
    free(gu);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Many tokens through the routed experts in one call (prefill): y[t] = sum over t's k slots of
 * wt * W2_e (silu(G_e x_t) * (U_e x_t)). The N*k slots come sorted by expert: tok[j] (the token
 * of slot j) and wt[j] (its routing weight), expert e's slots off[e] .. off[e+1]-1 (table rows as
 * duet_moe's); at[t*k + i]: where token t's i-th choice sits in that order. Each token's
 * activations are rounded to blocks once (not once per expert); threads take (expert, up to MC
 * slots) items in turn, each running the tiled matmul on one thread: w13 -> silu * up (rounded
 * to blocks) -> w2 -> the slot's own output row. Each token then sums its k rows in its choices'
 * order: the result does not depend on which thread ran what. The block products are
 * duet_gemm_tiled's. Returns 0, -1 when out of memory, -2 on a bad argument. */
int duet_moe_many(int bits, const int64_t *table, const int32_t *inter_t, const int32_t *ip_t, int E,
                  const int64_t *tok, const float *wt, const int64_t *off, const int64_t *at, int k, int gs,
                  const void *x, int x_bf16, int N, int H, int Hp, void *y, int y_bf16, int nthreads, int abits) {
    if (N <= 0 || E <= 0) return N < 0 || E < 0 ? -2 : 0;
    if (k <= 0 || off[E] != (long)N * k) return -2;
    if (abits != 8) abits = 16;
    const int XB = act_block(bits, abits), kind = tiled_kind(bits, abits);
    int ipmax = 0, imax = 0;
    long items = 0;
    for (int e = 0; e < E; e++) {
        if (off[e + 1] < off[e]) return -2;
        ipmax = ip_t[e] > ipmax ? ip_t[e] : ipmax;
        imax = inter_t[e] > imax ? inter_t[e] : imax;
        items += (off[e + 1] - off[e] + MC - 1) / MC;
    }
    const int kmax = Hp > ipmax ? Hp : ipmax;
    xq_t xq;
    if (xq_alloc(&xq, N, Hp, XB, abits)) return -1;
    long *item = malloc(sizeof(long) * 2 * (items + 1));      /* (expert, first slot) */
    float *ys = malloc(sizeof(float) * (size_t)N * k * H);    /* each slot's output row */
    if (!item || !ys) { free(xq.q); free(item); free(ys); return -1; }
    long it = 0;
    for (int e = 0; e < E; e++)
        for (long j = off[e]; j < off[e + 1]; j += MC) { item[2 * it] = e; item[2 * it + 1] = j; it++; }
    int failed = 0;
    long next = 0;
    const long cb = (long)xq.Kp * abits / 8;   /* code bytes per token row */
#pragma omp parallel num_threads(nthreads)
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        if (id == 0) last_team = nt;
        float v[64];
        for (int m = id; m < N; m += nt)   /* each token's activations, rounded once */
            for (int b = 0; b < xq.KB; b++) {
                for (int i = 0; i < XB; i++) {
                    int c = b * XB + i;
                    v[i] = c < H ? load_act(x, x_bf16, (long)m * H + c) : 0.f;
                }
                xq_put(&xq, m, b, v);
            }
#pragma omp barrier
        xq_t gx = {0}, ga = {0};   /* an item's token rows gathered; its hidden rows (silu * up) */
        const int kb = kmax / XB;
        const uint8_t *wr[TN];
        float *ws = malloc(sizeof(float) * 2 * TN * kb);
        float *gu = malloc(sizeof(float) * MC * 2 * (size_t)imax);
        int ok = ws && gu;
        ok = ok && !xq_alloc(&gx, MC, Hp, XB, abits);
        ok = ok && !xq_alloc(&ga, MC, ipmax, XB, abits);
#if defined(DUET_AVX2)
        __m256i *wv = ok ? aligned_alloc(32, sizeof(__m256i) * 4 * TN * kb) : NULL;
        const void *wsrc = wv;
        ok = ok && wv;
#else
        void *wv = NULL;
        const void *wsrc = wr;
#endif
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        } else {
            for (;;) {   /* items in turn (a counter, not an omp for: a thread without scratch stays out) */
                long i;
#pragma omp atomic capture
                i = next++;
                if (i >= items) break;
                const int e = (int)item[2 * i];
                const long j0 = item[2 * i + 1], j1 = off[e + 1] - j0 < MC ? off[e + 1] : j0 + MC;
                const int c = (int)(j1 - j0), I = inter_t[e], Ip = ip_t[e];
                const int64_t *p = table + 4 * e;
                gx.M = c;   /* gather the slots' token rows */
                for (int r = 0; r < c; r++) {
                    const long t = tok[j0 + r];
                    memcpy((uint8_t *)gx.q + r * cb, (const uint8_t *)xq.q + t * cb, cb);
                    memcpy(gx.scale + (long)r * gx.KB, xq.scale + t * xq.KB, sizeof(float) * xq.KB);
                    memcpy(gx.sum + (long)r * gx.KB, xq.sum + t * xq.KB, sizeof(float) * xq.KB);
                }
                tiled_groups(kind, bits, (const void *)p[0], (const uint16_t *)p[1], gs, 2 * I, &gx, 0,
                             (2L * I + TN - 1) / TN, wr, ws, wv, wsrc, gu, 0, 2L * I);
                ga.M = c; ga.Kp = Ip; ga.KB = Ip / XB;   /* silu(gate) * up, rounded per block */
                for (int r = 0; r < c; r++) {
                    const float *g = gu + (long)r * 2 * I, *u = g + I;
                    for (int b = 0; b < ga.KB; b++) {
                        for (int q = 0; q < XB; q++) {
                            const int cc = b * XB + q;
                            v[q] = cc < I ? g[cc] / (1.f + expf(-g[cc])) * u[cc] : 0.f;
                        }
                        xq_put(&ga, r, b, v);
                    }
                }
                tiled_groups(kind, bits, (const void *)p[2], (const uint16_t *)p[3], gs, H, &ga, 0,
                             (H + TN - 1) / TN, wr, ws, wv, wsrc, ys + j0 * H, 0, H);
            }
        }
        free(ws); free(gu); free(wv); free(gx.q); free(ga.q);
#pragma omp barrier
        if (!failed) {
            float acc[H];
#pragma omp for schedule(static)
            for (long t = 0; t < N; t++) {
                for (int h = 0; h < H; h++) acc[h] = 0.f;
                for (int i = 0; i < k; i++) {
                    const long j = at[t * k + i];
                    const float wgt = wt[j], *o = ys + j * H;
                    for (int h = 0; h < H; h++) acc[h] += wgt * o[h];
                }
                for (int h = 0; h < H; h++) store_out(y, y_bf16, t * H + h, acc[h]);
            }
        }
    }
    free(xq.q);
    free(item);
    free(ys);
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Per-head GEMV with bf16 weights (MLA's absorbed decode): y[h, :] = x[h, :] · W[h]
 * x float32 [H, K], W bf16 [H, K, N] (row-major), y float32 [H, N]. One thread per head range;
 * a head's output is built in column tiles of 128 held in registers while its K rows stream.
 */
#define HG_TILE 128

static void head_gemv_tile(const float *x, const uint16_t *w, float *y, int K, int N, int j0, int nj) {
#if defined(DUET_AVX512)
    if (nj == HG_TILE) {
        __m512 acc[HG_TILE / 16];
        for (int c = 0; c < HG_TILE / 16; c++) acc[c] = _mm512_setzero_ps();
        for (int i = 0; i < K; i++) {
            const __m512 xv = _mm512_set1_ps(x[i]);
            const uint16_t *row = w + (long)i * N + j0;
            _mm_prefetch((const char *)(row + 4L * N), _MM_HINT_T0);
            for (int c = 0; c < HG_TILE / 16; c++) {
                __m256i h = _mm256_loadu_si256((const __m256i *)(row + 16 * c));
                __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
                acc[c] = _mm512_fmadd_ps(xv, wv, acc[c]);
            }
        }
        for (int c = 0; c < HG_TILE / 16; c++) _mm512_storeu_ps(y + j0 + 16 * c, acc[c]);
        return;
    }
#endif
    for (int j = j0; j < j0 + nj; j++) y[j] = 0.f;
    for (int i = 0; i < K; i++) {
        const float xi = x[i];
        const uint16_t *row = w + (long)i * N;
        for (int j = j0; j < j0 + nj; j++) y[j] += xi * bf2f(row[j]);
    }
}

void duet_head_gemv(const float *x, const uint16_t *w, float *y, int H, int K, int N, int threads) {
    const long tiles = (N + HG_TILE - 1) / HG_TILE;
    const long work = (long)H * tiles;
    if (threads < 1 || (long)H * K * N * 2 < SMALL_WORK) threads = 1;
    last_team = threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long t = 0; t < work; t++) {
        const int h = (int)(t / tiles), j0 = (int)(t % tiles) * HG_TILE;
        const int nj = N - j0 < HG_TILE ? N - j0 : HG_TILE;
        head_gemv_tile(x + (long)h * K, w + (long)h * K * N, y + (long)h * N, K, N, j0, nj);
    }
}

/* ---------------------------------------------------------------------------------------------
 * One token through bf16 SwiGLU experts (unquantized models): the k routed experts, weighted,
 * plus the shared one, in one call. table int64 [E, 2]: addresses of w13 bf16 [2I_e, H] and
 * w2 bf16 [H, I_e]; inter int32 [E]. x float32 [H]; y float32 [H]. Activations stay float32 (the
 * bf16 weights widen exactly): a little more precise than the PyTorch bf16 path, which rounds the
 * gate/up outputs and their product to bf16.
 */
static float dot_bf16(const uint16_t *w, const float *x, int k) {
    int i = 0;
    float s = 0.f;
#if defined(DUET_AVX512)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
#define BF_W(off) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32( \
                      _mm256_loadu_si256((const __m256i *)(w + i + (off)))), 16))
    for (; i + 64 <= k; i += 64) {
        _mm_prefetch((const char *)(w + i) + DUET_PF, _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(BF_W(0), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(BF_W(16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(BF_W(32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(BF_W(48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= k; i += 16) a0 = _mm512_fmadd_ps(BF_W(0), _mm512_loadu_ps(x + i), a0);
#undef BF_W
    s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(DUET_AVX2)
    /* bf16 -> float32 is a 16-bit shift: 8 lanes, four independent accumulators */
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
#define BF_W(off) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32( \
                      _mm_loadu_si128((const __m128i *)(w + i + (off)))), 16))
    for (; i + 32 <= k; i += 32) {
        PREFETCH((const char *)(w + i) + DUET_PF);
        a0 = _mm256_fmadd_ps(BF_W(0), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(BF_W(8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(BF_W(16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(BF_W(24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= k; i += 8) a0 = _mm256_fmadd_ps(BF_W(0), _mm256_loadu_ps(x + i), a0);
#undef BF_W
    s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#elif defined(DUET_NEON)
    /* the same shift (a widening one): 4 lanes, four independent accumulators */
    float32x4_t a0 = vdupq_n_f32(0.f), a1 = a0, a2 = a0, a3 = a0;
#define BF_W(off) vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(w + i + (off)), 16))
    for (; i + 16 <= k; i += 16) {
        PREFETCH((const char *)(w + i) + DUET_PF);
        a0 = vfmaq_f32(a0, BF_W(0), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, BF_W(4), vld1q_f32(x + i + 4));
        a2 = vfmaq_f32(a2, BF_W(8), vld1q_f32(x + i + 8));
        a3 = vfmaq_f32(a3, BF_W(12), vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= k; i += 4) a0 = vfmaq_f32(a0, BF_W(0), vld1q_f32(x + i));
#undef BF_W
    s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
#else
    {   /* plain C: eight independent lanes, which the compiler vectorises */
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (; i + 8 <= k; i += 8)
            for (int j = 0; j < 8; j++) acc[j] += bf2f(w[i + j]) * x[i + j];
        s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
#endif
    for (; i < k; i++) s += bf2f(w[i]) * x[i];
    return s;
}

int duet_moe_bf16(const int64_t *table, const int32_t *inter, const int64_t *idx, const float *wts, int k,
                  int shared, const float *x, int H, float *y, int threads) {
    const int n_e = k + (shared >= 0);
    int ids[64];
    float wt[64];
    long off[65];
    if (n_e > 64) return 2;
    off[0] = 0;
    for (int e = 0; e < n_e; e++) {
        ids[e] = e < k ? (int)idx[e] : shared;
        wt[e] = e < k ? wts[e] : 1.f;
        off[e + 1] = off[e] + 2L * inter[ids[e]];   /* gate/up rows of expert e start at off[e] */
    }
    float *gu = malloc(sizeof(float) * (off[n_e] + 16));
    if (!gu) return 1;
    if (threads < 1) threads = 1;
    last_team = threads;
#pragma omp parallel num_threads(threads)
    {
        /* gate and up rows of every selected expert, all threads over all rows */
#pragma omp for schedule(static)
        for (long r = 0; r < off[n_e]; r++) {
            int e = 0;
            while (r >= off[e + 1]) e++;
            const uint16_t *w13 = (const uint16_t *)table[2 * ids[e]];
            gu[r] = dot_bf16(w13 + (r - off[e]) * H, x, H);
        }
        /* h = silu(gate) * up, in place over the gate half */
#pragma omp for schedule(static)
        for (int e = 0; e < n_e; e++) {
            const int I = inter[ids[e]];
            float *g = gu + off[e], *u = g + I;
            for (int c = 0; c < I; c++) g[c] = g[c] / (1.f + expf(-g[c])) * u[c];
        }
        /* down projections, weighted and summed per output row */
#pragma omp for schedule(static)
        for (int n = 0; n < H; n++) {
            float acc = 0.f;
            for (int e = 0; e < n_e; e++) {
                const int I = inter[ids[e]];
                const uint16_t *w2 = (const uint16_t *)table[2 * ids[e] + 1];
                acc += wt[e] * dot_bf16(w2 + (long)n * I, gu + off[e], I);
            }
            y[n] = acc;
        }
    }
    free(gu);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * RMSNorm over rows: y = x / sqrt(mean(x^2) + eps) * w, in float32, rounded once into y's type
 * (as F.rms_norm does). x, y [rows, dim] (bf16 or float32, same type); w [dim] (bf16 or float32).
 * Decode norms one row of a few thousand values: torch's composite op costs ~20 us there.
 */
void duet_rms_norm(const void *x, const void *w, void *y, int bf16, int w_bf16, long rows, int dim,
                   float eps) {
    for (long r = 0; r < rows; r++) {
        const uint16_t *xh = (const uint16_t *)x + r * dim;
        const float *xf = (const float *)x + r * dim;
        double ss = 0.0;
        for (int i = 0; i < dim; i++) {
            const float v = bf16 ? bf2f(xh[i]) : xf[i];
            ss += (double)v * v;
        }
        const float inv = 1.f / sqrtf((float)(ss / dim) + eps);
        for (int i = 0; i < dim; i++) {
            const float v = (bf16 ? bf2f(xh[i]) : xf[i]) * inv;
            const float g = w_bf16 ? bf2f(((const uint16_t *)w)[i]) : ((const float *)w)[i];
            if (bf16) ((uint16_t *)y)[r * dim + i] = f2bf(v * g);
            else ((float *)y)[r * dim + i] = v * g;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * One decode step of an MLA attention block, one token of batch 1, in one call (the PyTorch
 * path makes ~60 small calls for it, and on a small model their dispatch is the step's time):
 *     h      = x + wo(absorbed_attention(rms_norm(x)))        (writes the latent cache row)
 *     normed = rms_norm(h) with the block's ffn_norm weight
 * float32 inside; x, h, normed bf16 or float32 (``act_bf16``). Each linear is a descriptor
 * (lin_desc): a native int8/int4 matrix (duet_gemm) or a dense float32/bf16 one.
 */
typedef struct {
    int64_t kind;      /* 8, 4: native int8/int4; 32: dense float32 [n, k]; 16: dense bf16; 0: absent;
                        * LIN_GGUF: GGUF blocks, run by kernels/kquant.py's library (below) */
    int64_t w, s;      /* addresses: codes (or the dense matrix) and scales (GGUF: its kq_gemm) */
    int64_t kp, gs, n, k;   /* GGUF: kp the row stride in bytes, gs the ggml type | activation bits << 8 */
} lin_desc;

/* GGUF matrices are read by the kquant library's own entry points, passed in by address (the
 * libraries stay apart, as kq_moe takes the i-quants' row dot product): its kq_gemm for a
 * linear, its kq_moe for experts (an FFN of kind LIN_GGUF, ffn_step) */
enum { LIN_GGUF = 64 };
typedef int (*kq_gemm_fn)(int type, const float *x, int M, int k, const uint8_t *w, long stride, long n, float *y,
                          long ldy, int nthreads, int act);
typedef int (*kq_moe_fn)(const int64_t *table, const int *types, long gst, long ust, long dst_, int inter,
                         int hidden, const int64_t *idx, const float *wts, int k, int shared, const float *x,
                         float *y, int nthreads, int act, const void *iq_dot_addr, const int64_t *grids);

/* dims (int32): hidden, heads, nope, rope, v, q_lora (0: wq straight from x), kv_lora,
 * interleaved rope, cache row stride, cache bf16, W_uk/W_uvT bf16, abits int8, abits int4;
 * pos: the token's position (its cache row) */
enum { D_HIDDEN, D_HEADS, D_NOPE, D_ROPE, D_V, D_QLORA, D_KVLORA, D_INTERLEAVED, D_STRIDE,
       D_CACHE_BF16, D_ABS_BF16, D_ABITS8, D_ABITS4, D_COUNT };
/* norms: addresses of attn_norm, q_norm (0 without q_lora), kv_norm, ffn_norm weights; their
 * bf16 flags in norm_bf16[4]; eps[4] likewise; scale = the softmax scale */

INLINE float wval(const void *w, int bf16, long i) {
    return bf16 ? bf2f(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

static void rms_f32(const float *x, const void *w, int w_bf16, float *y, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float inv = 1.f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] * inv) * wval(w, w_bf16, i);
}

/* dot of a float32 vector with a float32 one (8 independent lanes, vectorised) or a bf16 one (dot_bf16) */
/* float32 dot product: four independent accumulators, so the loop runs at the FMA units'
   throughput, not at one FMA chain's latency (with one chain, a V2-Lite int8 decode step at 8k
   context took 58 ms, with four 49: the attention scores use it, as do the router and the
   float32 linears). One loop for every SIMD width. */
#if defined(DUET_AVX512)
typedef __m512 vf_t;
#define VF_W 16
#define VF_ZERO() _mm512_setzero_ps()
#define VF_FMA(a, p, q) _mm512_fmadd_ps(_mm512_loadu_ps(p), _mm512_loadu_ps(q), a)
#define VF_SUM(v) _mm512_reduce_add_ps(v)
#define VF_ADD _mm512_add_ps
#define VF_LD(p) _mm512_loadu_ps(p)
#define VF_LDB(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VF_SET1(v) _mm512_set1_ps(v)
#define VF_MAD(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VF_ST(p, v) _mm512_storeu_ps(p, v)
#elif defined(DUET_AVX2)
typedef __m256 vf_t;
#define VF_W 8
#define VF_ZERO() _mm256_setzero_ps()
#define VF_FMA(a, p, q) _mm256_fmadd_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(q), a)
#define VF_SUM(v) hsum256(v)
#define VF_ADD _mm256_add_ps
#define VF_LD(p) _mm256_loadu_ps(p)
#define VF_LDB(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VF_SET1(v) _mm256_set1_ps(v)
#define VF_MAD(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VF_ST(p, v) _mm256_storeu_ps(p, v)
#elif defined(DUET_NEON)
typedef float32x4_t vf_t;
#define VF_W 4
#define VF_ZERO() vdupq_n_f32(0.f)
#define VF_FMA(a, p, q) vfmaq_f32(a, vld1q_f32(p), vld1q_f32(q))
#define VF_SUM(v) vaddvq_f32(v)
#define VF_ADD vaddq_f32
#define VF_LD(p) vld1q_f32(p)
#define VF_LDB(p) vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16))
#define VF_SET1(v) vdupq_n_f32(v)
#define VF_MAD(a, b, c) vfmaq_f32(c, a, b)
#define VF_ST(p, v) vst1q_f32(p, v)
#endif

static float dot_f32(const float *f, const float *x, int k) {
    int i = 0;
    float s = 0.f;
#if defined(VF_W)
    vf_t a0 = VF_ZERO(), a1 = VF_ZERO(), a2 = VF_ZERO(), a3 = VF_ZERO();
    for (; i + 4 * VF_W <= k; i += 4 * VF_W) {
        a0 = VF_FMA(a0, f + i, x + i);
        a1 = VF_FMA(a1, f + i + VF_W, x + i + VF_W);
        a2 = VF_FMA(a2, f + i + 2 * VF_W, x + i + 2 * VF_W);
        a3 = VF_FMA(a3, f + i + 3 * VF_W, x + i + 3 * VF_W);
    }
    for (; i + VF_W <= k; i += VF_W) a0 = VF_FMA(a0, f + i, x + i);
    s = VF_SUM(VF_ADD(VF_ADD(a0, a1), VF_ADD(a2, a3)));
#else
    {   /* plain C: 32 independent lanes, which the compiler vectorises */
        float acc[32] = {0.f};
        for (; i + 32 <= k; i += 32)
            for (int j = 0; j < 32; j++) acc[j] += f[i + j] * x[i + j];
        for (int j = 0; j < 8; j++) acc[j] = (acc[j] + acc[j + 8]) + (acc[j + 16] + acc[j + 24]);
        s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
#endif
    for (; i < k; i++) s += f[i] * x[i];
    return s;
}

INLINE float dot_any(const void *w, int bf16, const float *x, int k) {
    return bf16 ? dot_bf16((const uint16_t *)w, x, k) : dot_f32((const float *)w, x, k);
}

/* y[:n] += a * w[:n] (w float32 or bf16) */
INLINE void axpy_any(float *y, float a, const void *w, int bf16, int n) {
    if (bf16) {
        const uint16_t *h = (const uint16_t *)w;
        for (int i = 0; i < n; i++) y[i] += a * bf2f(h[i]);
    } else {
        const float *f = (const float *)w;
        for (int i = 0; i < n; i++) y[i] += a * f[i];
    }
}

static int lin_run(const lin_desc *L, const float *x, float *y, int threads, int abits8, int abits4) {
    if (L->kind == LIN_GGUF)
        return ((kq_gemm_fn)L->s)((int)(L->gs & 255), x, 1, (int)L->k, (const uint8_t *)L->w, (long)L->kp,
                                  (long)L->n, y, (long)L->n, threads, (int)(L->gs >> 8)) ? 1 : 0;
    if (L->kind == 8 || L->kind == 4)
        return duet_gemm((int)L->kind, x, 0, 1, (int)L->k, L->k, (const void *)L->w, (const uint16_t *)L->s,
                         (int)L->kp, (int)L->gs, (int)L->n, y, 0, L->n, threads, L->kind == 8 ? abits8 : abits4);
    const int n = (int)L->n, k = (int)L->k, bf16 = L->kind == 16;
    const char *w = (const char *)L->w;
    const long row = (long)k * (bf16 ? 2 : 4);
    if ((long)n * row < SMALL_WORK) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int r = 0; r < n; r++) y[r] = dot_any(w + r * row, bf16, x, k);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The two attention products that grow with the context, over rows s0..s1-1 of the latent
 * cache (float32 or bf16 rows of `stride` elements: [latent (KV), rope key]). A row is read once
 * for several heads (a tile of 2 rows x 4 heads of accumulators for the scores, 4 heads x 2
 * vectors for the latent sums), so loads stay below the FMAs: a head at a time, every FMA needed
 * a load of the row and one of the query, and the long-context decode ran at a third of the
 * FMA units' rate. cbf is a constant at each call (the functions are inlined twice). */
#define ROW(c, cbf, s, stride) ((const char *)(c) + (long)(s) * (stride) * ((cbf) ? 2 : 4))
#if defined(VF_W)
#define ROWV(r, cbf, d) ((cbf) ? VF_LDB((const uint16_t *)(r) + (d)) : VF_LD((const float *)(r) + (d)))
#endif

INLINE float row_val(const char *r, int cbf, int d) {
    return cbf ? bf2f(((const uint16_t *)r)[d]) : ((const float *)r)[d];
}

/* sc[h * S + s] = scale * (row_s[0:D] . qf[h * D : (h + 1) * D]) */
INLINE void attn_scores(const void *cache, const int cbf, int stride, int s0, int s1, const float *qf, int H,
                        int D, float scale, float *sc, int S) {
    int s = s0;
#if defined(VF_W)
    const int Dv = D - D % VF_W;
    for (; s + 2 <= s1; s += 2) {
        const char *r0 = ROW(cache, cbf, s, stride), *r1 = ROW(cache, cbf, s + 1, stride);
        for (int h = 0; h < H; h += 4) {
            const int nh = H - h < 4 ? H - h : 4;
            const float *q = qf + (long)h * D;
            vf_t a[2][4];
            for (int j = 0; j < 4; j++) a[0][j] = a[1][j] = VF_ZERO();
            if (nh == 4) {
                for (int d = 0; d < Dv; d += VF_W) {
                    const vf_t x0 = ROWV(r0, cbf, d), x1 = ROWV(r1, cbf, d);
                    for (int j = 0; j < 4; j++) {
                        const vf_t qv = VF_LD(q + (long)j * D + d);
                        a[0][j] = VF_MAD(x0, qv, a[0][j]);
                        a[1][j] = VF_MAD(x1, qv, a[1][j]);
                    }
                }
            } else {
                for (int d = 0; d < Dv; d += VF_W) {
                    const vf_t x0 = ROWV(r0, cbf, d), x1 = ROWV(r1, cbf, d);
                    for (int j = 0; j < nh; j++) {
                        const vf_t qv = VF_LD(q + (long)j * D + d);
                        a[0][j] = VF_MAD(x0, qv, a[0][j]);
                        a[1][j] = VF_MAD(x1, qv, a[1][j]);
                    }
                }
            }
            for (int j = 0; j < nh; j++) {
                float v0 = VF_SUM(a[0][j]), v1 = VF_SUM(a[1][j]);
                for (int d = Dv; d < D; d++) {
                    v0 += row_val(r0, cbf, d) * q[(long)j * D + d];
                    v1 += row_val(r1, cbf, d) * q[(long)j * D + d];
                }
                sc[(long)(h + j) * S + s] = v0 * scale;
                sc[(long)(h + j) * S + s + 1] = v1 * scale;
            }
        }
    }
#endif
    for (; s < s1; s++) {
        const char *r = ROW(cache, cbf, s, stride);
        for (int h = 0; h < H; h++) sc[(long)h * S + s] = dot_any(r, cbf, qf + (long)h * D, D) * scale;
    }
}

/* acc[h * KV + c] += sum over s of p[h * S + s] * row_s[c], c < KV; rows in blocks that stay in
   cache while every head reads them */
INLINE void attn_latent(const void *cache, const int cbf, int stride, int s0, int s1, const float *p, int H,
                        int KV, int S, float *acc) {
#if defined(VF_W)
    const int Cv = KV - KV % (2 * VF_W);
    for (int b0 = s0; b0 < s1; b0 += 32) {
        const int b1 = s1 - b0 < 32 ? s1 : b0 + 32;
        for (int h = 0; h < H; h += 4) {
            const int nh = H - h < 4 ? H - h : 4;
            for (int c = 0; c < Cv; c += 2 * VF_W) {
                vf_t a[4][2];
                for (int j = 0; j < nh; j++) {
                    a[j][0] = VF_LD(acc + (long)(h + j) * KV + c);
                    a[j][1] = VF_LD(acc + (long)(h + j) * KV + c + VF_W);
                }
                for (int s = b0; s < b1; s++) {
                    const char *r = ROW(cache, cbf, s, stride);
                    const vf_t x0 = ROWV(r, cbf, c), x1 = ROWV(r, cbf, c + VF_W);
                    for (int j = 0; j < nh; j++) {
                        const vf_t w = VF_SET1(p[(long)(h + j) * S + s]);
                        a[j][0] = VF_MAD(w, x0, a[j][0]);
                        a[j][1] = VF_MAD(w, x1, a[j][1]);
                    }
                }
                for (int j = 0; j < nh; j++) {
                    VF_ST(acc + (long)(h + j) * KV + c, a[j][0]);
                    VF_ST(acc + (long)(h + j) * KV + c + VF_W, a[j][1]);
                }
            }
            for (int j = 0; j < nh; j++)
                for (int s = b0; s < b1; s++) {
                    const char *r = ROW(cache, cbf, s, stride);
                    const float w = p[(long)(h + j) * S + s];
                    for (int c = Cv; c < KV; c++) acc[(long)(h + j) * KV + c] += w * row_val(r, cbf, c);
                }
        }
    }
#else
    for (int s = s0; s < s1; s++) {
        const char *r = ROW(cache, cbf, s, stride);
        for (int h = 0; h < H; h++) axpy_any(acc + (long)h * KV, p[(long)h * S + s], r, cbf, KV);
    }
#endif
}

/* One query's absorbed attention over cache rows 0..S-1: qf [H, D] (D = KV + rope: each head's
 * latent query, then its rope query), scores scaled by `scale`, softmax, and the latent output
 * lat [H, KV]. Scratch: sc [H, S], part [threads, H, KV]. The rows are split across threads by S
 * alone, so a query at a given position gets the same sums from every caller: the decode step
 * below and duet_mla_attention (a chunk's queries, one at a time) agree bit for bit. */
static void mla_attend(const float *qf, int H, int KV, int D, const void *cache, int cbf, int stride, int S,
                       float scale, float *sc, float *part, float *lat, int threads) {
    const int at = (long)H * S * D * (cbf ? 2 : 4) < SMALL_WORK ? 1 : threads;
    (void)at;   /* used by the OpenMP pragmas only */
#pragma omp parallel num_threads(at)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int s0 = (int)((long)S * t / nt), s1 = (int)((long)S * (t + 1) / nt);
        if (cbf) attn_scores(cache, 1, stride, s0, s1, qf, H, D, scale, sc, S);
        else attn_scores(cache, 0, stride, s0, s1, qf, H, D, scale, sc, S);
    }
#pragma omp parallel for schedule(static) num_threads(at)
    for (int h = 0; h < H; h++) {   /* softmax per head */
        float *r = sc + (long)h * S, m = r[0], z = 0.f;
        for (int s = 1; s < S; s++) m = r[s] > m ? r[s] : m;
        for (int s = 0; s < S; s++) z += (r[s] = expf(r[s] - m));
        const float inv = 1.f / z;
        for (int s = 0; s < S; s++) r[s] *= inv;
    }
    /* latent output: lat[h] = sum_s p[h, s] c_kv[s], each thread over a range of rows */
#pragma omp parallel num_threads(at)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *acc = part + (long)t * H * KV;
        memset(acc, 0, sizeof(float) * H * KV);
        const int s0 = (int)((long)S * t / nt), s1 = (int)((long)S * (t + 1) / nt);
        if (cbf) attn_latent(cache, 1, stride, s0, s1, sc, H, KV, S, acc);
        else attn_latent(cache, 0, stride, s0, s1, sc, H, KV, S, acc);
#pragma omp barrier
#pragma omp for schedule(static)
        for (long i = 0; i < (long)H * KV; i++) {
            float v = 0.f;
            for (int u = 0; u < nt; u++) v += part[(long)u * H * KV + i];
            lat[i] = v;
        }
    }
}

/* Absorbed MLA attention of T queries per batch row over the latent cache, causal: query t sits
 * at position start + t and reads rows 0..start + t. q [B, T, H, D] and out [B, T, H, KV] float32;
 * the cache float32 or bf16 (cbf), rows of `stride` elements, `bstride` elements per batch row.
 * Each query runs as mla_attend (the decode step's attention at its position). Returns 1 when
 * scratch cannot be had. */
int duet_mla_attention(const float *q, int B, int T, int H, int KV, int rope, const void *cache, int cbf,
                       int stride, long bstride, int start, float scale, float *out, int threads) {
    const int D = KV + rope, Smax = start + T;
    if (threads < 1) threads = 1;
    float *buf = malloc(sizeof(float) * ((long)H * Smax + (long)threads * H * KV + 16));
    if (!buf) return 1;
    float *sc = buf, *part = sc + (long)H * Smax;
    for (int b = 0; b < B; b++) {
        const char *cb = (const char *)cache + (long)b * bstride * (cbf ? 2 : 4);
        for (int t = 0; t < T; t++) {
            const long i = (long)b * T + t;
            mla_attend(q + i * H * D, H, KV, D, cb, cbf, stride, start + t + 1, scale, sc, part,
                       out + i * H * KV, threads);
        }
    }
    free(buf);
    return 0;
}

/* rotate pairs of x [rope] by this position's angles (cos/sin [rope/2]) */
static void rope_f32(float *x, const float *cs, const float *sn, int rope, int interleaved) {
    const int half = rope / 2;
    for (int i = 0; i < half; i++) {
        float *pa = interleaved ? x + 2 * i : x + i, *pb = interleaved ? x + 2 * i + 1 : x + i + half;
        const float a = *pa, b = *pb;
        *pa = a * cs[i] - b * sn[i];
        *pb = b * cs[i] + a * sn[i];
    }
}

int duet_mla_step(const lin_desc *lin /* wq_a or wq, wq_b (kind 0 without q_lora), wkv_a, wo */,
                  const int64_t *norms, const int32_t *norm_bf16, const float *eps, float scale,
                  const int32_t *dims, int pos, const float *cs, const float *sn, void *cache,
                  const void *w_uk, const void *w_uv_t, const void *x, void *h_out, void *normed,
                  int act_bf16, int threads) {
    const int Hd = dims[D_HIDDEN], H = dims[D_HEADS], nope = dims[D_NOPE], rope = dims[D_ROPE], V = dims[D_V];
    const int QL = dims[D_QLORA], KV = dims[D_KVLORA], stride = dims[D_STRIDE];
    const int cbf = dims[D_CACHE_BF16], abf = dims[D_ABS_BF16], a8 = dims[D_ABITS8], a4 = dims[D_ABITS4];
    const int qk = nope + rope, S = pos + 1, D = KV + rope;
    if (threads < 1) threads = 1;
    /* scratch: xf, xn [Hd]; ql [QL]; q [H qk]; kv [D]; qlat [H KV]; sc [H S]; lat [H KV];
       out [H V]; y [Hd]; per-thread latent sums [threads][H KV]; qf [H D] */
    const long need = 3L * Hd + QL + (long)H * qk + D + 2L * H * KV + (long)H * S + (long)H * V
                      + (long)threads * H * KV + (long)H * D + 64;
    float *buf = malloc(sizeof(float) * need);
    if (!buf) return 1;
    float *xf = buf, *xn = xf + Hd, *y = xn + Hd, *ql = y + Hd, *q = ql + QL, *kv = q + (long)H * qk;
    float *qlat = kv + D, *sc = qlat + (long)H * KV, *lat = sc + (long)H * S, *out = lat + (long)H * KV;
    float *part = out + (long)H * V, *qf = part + (long)threads * H * KV;
    int rc = 0;
    for (int i = 0; i < Hd; i++) xf[i] = load_act(x, act_bf16, i);
    rms_f32(xf, (const void *)norms[0], norm_bf16[0], xn, Hd, eps[0]);
    /* queries and the new latent */
    if (QL) {
        rc |= lin_run(&lin[0], xn, ql, threads, a8, a4);
        rms_f32(ql, (const void *)norms[1], norm_bf16[1], ql, QL, eps[1]);
        rc |= lin_run(&lin[1], ql, q, threads, a8, a4);
    } else {
        rc |= lin_run(&lin[0], xn, q, threads, a8, a4);
    }
    rc |= lin_run(&lin[2], xn, kv, threads, a8, a4);
    if (rc) { free(buf); return 1; }
    rms_f32(kv, (const void *)norms[2], norm_bf16[2], kv, KV, eps[2]);
    for (int h = 0; h < H; h++) rope_f32(q + (long)h * qk + nope, cs, sn, rope, dims[D_INTERLEAVED]);
    rope_f32(kv + KV, cs, sn, rope, dims[D_INTERLEAVED]);
    /* the cache row of this position: [latent, rope key] */
    if (cbf) {
        uint16_t *row = (uint16_t *)cache + (long)pos * stride;
        for (int i = 0; i < D; i++) row[i] = f2bf(kv[i]);
    } else {
        memcpy((float *)cache + (long)pos * stride, kv, sizeof(float) * D);
    }
    const int ht = (long)H * nope * KV * (abf ? 2 : 4) < SMALL_WORK ? 1 : threads;
    (void)ht;   /* used by the OpenMP pragmas only */
    /* absorbed query: qlat[h] = q_nope[h] · W_uk[h]   (W_uk [H, nope, KV]) */
#pragma omp parallel for schedule(static) num_threads(ht)
    for (int h = 0; h < H; h++) {
        float *o = qlat + (long)h * KV;
        const char *wh = (const char *)w_uk + (long)h * nope * KV * (abf ? 2 : 4);
        for (int c = 0; c < KV; c++) o[c] = 0.f;
        for (int j = 0; j < nope; j++)
            axpy_any(o, q[(long)h * qk + j], wh + (long)j * KV * (abf ? 2 : 4), abf, KV);
    }
    /* each head's query as one row [latent query, rope query], against the rows [latent, rope key] */
    for (int h = 0; h < H; h++) {
        memcpy(qf + (long)h * D, qlat + (long)h * KV, sizeof(float) * KV);
        memcpy(qf + (long)h * D + KV, q + (long)h * qk + nope, sizeof(float) * rope);
    }
    mla_attend(qf, H, KV, D, cache, cbf, stride, S, scale, sc, part, lat, threads);
    /* out[h] = lat[h] · W_uvT[h]   (W_uvT [H, KV, V]) */
#pragma omp parallel for schedule(static) num_threads(ht)
    for (int h = 0; h < H; h++) {
        float *o = out + (long)h * V;
        const char *wh = (const char *)w_uv_t + (long)h * KV * V * (abf ? 2 : 4);
        for (int c = 0; c < V; c++) o[c] = 0.f;
        for (int j = 0; j < KV; j++) axpy_any(o, lat[(long)h * KV + j], wh + (long)j * V * (abf ? 2 : 4), abf, V);
    }
    if (lin_run(&lin[3], out, y, threads, a8, a4)) { free(buf); return 1; }
    for (int i = 0; i < Hd; i++) xf[i] += y[i];          /* the residual */
    rms_f32(xf, (const void *)norms[3], norm_bf16[3], xn, Hd, eps[3]);
    for (int i = 0; i < Hd; i++) {
        if (act_bf16) {
            ((uint16_t *)h_out)[i] = f2bf(xf[i]);
            ((uint16_t *)normed)[i] = f2bf(xn[i]);
        } else {
            ((float *)h_out)[i] = xf[i];
            ((float *)normed)[i] = xn[i];
        }
    }
    free(buf);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The MoE router for one token: logits = W x (W float32 [E, hidden]); scores sigmoid (V3) or
 * softmax (V2); selection on scores + bias (V3's noaux_tc); groups: n_group > 1 keeps the
 * topk_group best groups (group score: the sum of its two best (method 2, noaux_tc) or its best
 * (method 1)); method 0: greedy. The top-k chosen by descending selection score; their weights
 * are the scores, normalised to sum 1 when ``norm`` (and k > 1), times route_scale.
 */
int duet_gate(const float *x, const float *w, const float *bias, int E, int hidden, int sigmoid,
              int n_group, int topk_group, int method, int topk, int norm, float route_scale,
              int64_t *idx, float *wts) {
    float sc[1024], ch[1024];
    if (E > 1024 || topk > E || topk < 1) return 2;
    for (int e = 0; e < E; e++) sc[e] = dot_any(w + (long)e * hidden, 0, x, hidden);
    if (sigmoid) {
        for (int e = 0; e < E; e++) sc[e] = 1.f / (1.f + expf(-sc[e]));
    } else {
        float m = sc[0], z = 0.f;
        for (int e = 1; e < E; e++) m = sc[e] > m ? sc[e] : m;
        for (int e = 0; e < E; e++) z += (sc[e] = expf(sc[e] - m));
        for (int e = 0; e < E; e++) sc[e] /= z;
    }
    for (int e = 0; e < E; e++) ch[e] = bias ? sc[e] + bias[e] : sc[e];
    if (n_group > 1 && method != 0) {
        const int per = E / n_group;
        float gs[1024];
        int keep[1024];
        for (int g = 0; g < n_group; g++) {
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int j = 0; j < per; j++) {
                const float v = ch[g * per + j];
                if (v > b1) { b2 = b1; b1 = v; } else if (v > b2) b2 = v;
            }
            gs[g] = method == 2 ? b1 + b2 : b1;
            keep[g] = 0;
        }
        for (int t = 0; t < topk_group; t++) {
            int best = -1;
            for (int g = 0; g < n_group; g++)
                if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
            keep[best] = 1;
        }
        for (int g = 0; g < n_group; g++)
            if (!keep[g]) for (int j = 0; j < per; j++) ch[g * per + j] = -INFINITY;
    }
    float total = 0.f;
    int taken[1024];
    memset(taken, 0, sizeof(int) * E);
    for (int t = 0; t < topk; t++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || ch[e] > ch[best])) best = e;
        taken[best] = 1;
        idx[t] = best;
        wts[t] = sc[best];
        total += sc[best];
    }
    if (norm && topk > 1)
        for (int t = 0; t < topk; t++) wts[t] /= (total + 1e-20f);
    for (int t = 0; t < topk; t++) wts[t] *= route_scale;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * A whole decode layer for one token, one call: the attention block (duet_mla_step), then
 *     out = h + ffn(normed)
 * where ffn is a MoE layer (the router, duet_gate, then its routed and shared experts in one
 * duet_moe / duet_moe_bf16) or a dense SwiGLU MLP (a one-expert table, row 0). What the Python
 * path between these calls did (allocations, index casts, the residual add) is gone with it.
 * x, out: bf16 or float32 (act_bf16), like h and normed in between; the experts' sum is float32
 * and is added to h once. ffn: the descriptor below (int64). */
enum { F_KIND /* 8, 4: native int8/int4 experts; 16: dense bf16 ones; LIN_GGUF: GGUF blocks */, F_TABLE, F_INTER, F_IP, F_SHARED,
       F_GS, F_HIDDEN, F_HP, F_ABITS, F_GATE_W /* 0: a dense MLP */, F_GATE_BIAS, F_EXPERTS, F_SIGMOID,
       F_NGROUP, F_TOPKGROUP, F_METHOD, F_TOPK, F_NORM, F_ROUTE_SCALE /* float32 bits */, F_COUNT };
/* An FFN of GGUF blocks (F_KIND LIN_GGUF) goes on with two experts' tables for kq_moe (its address
 * G_MOE, the activation bits F_ABITS): the routed experts (F_TABLE, F_TABLE's rows gate, up and
 * down addresses) and the shared expert or dense MLP (a one-row table; 0: none); per table its
 * types (int32 [3]), the row strides of gate, up and down, the intermediate size, and the
 * i-quants' grids (int64 [3]); G_IQ_DOT the i-quant row dot product (0: none). */
enum { G_MOE = F_COUNT, G_IQ_DOT, G_TYPES, G_GST, G_UST, G_DST, G_INTER, G_GRIDS,
       G_S_TABLE, G_S_TYPES, G_S_GST, G_S_UST, G_S_DST, G_S_INTER, G_S_GRIDS, G_COUNT };

/* y = the routed experts' weighted sum (k chosen, idx / wts) + the shared expert / dense MLP */
static int gguf_ffn(const int64_t *f, const int64_t *idx, const float *wts, int k, const float *xn, float *y,
                    int threads) {
    const kq_moe_fn moe = (kq_moe_fn)f[G_MOE];
    const int Hd = (int)f[F_HIDDEN], act = (int)f[F_ABITS];
    const void *iq = (const void *)f[G_IQ_DOT];
    memset(y, 0, sizeof(float) * Hd);
    if (k > 0 && moe((const int64_t *)f[F_TABLE], (const int *)f[G_TYPES], (long)f[G_GST], (long)f[G_UST],
                     (long)f[G_DST], (int)f[G_INTER], Hd, idx, wts, k, -1, xn, y, threads, act, iq,
                     (const int64_t *)f[G_GRIDS]))
        return 1;
    if (!f[G_S_TABLE]) return 0;
    float *ys = malloc(sizeof(float) * Hd);
    if (!ys) return 1;
    const int rc = moe((const int64_t *)f[G_S_TABLE], (const int *)f[G_S_TYPES], (long)f[G_S_GST], (long)f[G_S_UST],
                       (long)f[G_S_DST], (int)f[G_S_INTER], Hd, idx, wts, 0, 0, xn, ys, threads, act, iq,
                       (const int64_t *)f[G_S_GRIDS]);
    for (int i = 0; i < Hd; i++) y[i] += ys[i];
    free(ys);
    return rc ? 1 : 0;
}

static int ffn_step(const int64_t *f, const void *h, const void *normed, void *out, int act_bf16, int threads) {
    const int Hd = (int)f[F_HIDDEN];
    float *buf = malloc(sizeof(float) * 2 * Hd);
    if (!buf) return 1;
    float *xn = buf, *y = buf + Hd;
    for (int i = 0; i < Hd; i++) xn[i] = load_act(normed, act_bf16, i);
    int64_t idx[64];
    float wts[64];
    int k = 0, shared = (int)f[F_SHARED], rc = 0;
    if (f[F_GATE_W]) {
        float scale;
        const int32_t bits = (int32_t)f[F_ROUTE_SCALE];
        memcpy(&scale, &bits, sizeof scale);
        k = (int)f[F_TOPK];
        if (k > 64) { free(buf); return 2; }
        rc = duet_gate(xn, (const float *)f[F_GATE_W], (const float *)f[F_GATE_BIAS], (int)f[F_EXPERTS], Hd,
                       (int)f[F_SIGMOID], (int)f[F_NGROUP], (int)f[F_TOPKGROUP], (int)f[F_METHOD], k, (int)f[F_NORM],
                       scale, idx, wts);
    } else {
        shared = 0;   /* a dense MLP: table row 0 alone */
    }
    if (!rc && f[F_KIND] == LIN_GGUF)
        rc = gguf_ffn(f, idx, wts, k, xn, y, threads);
    else if (!rc && f[F_KIND] == 16)
        rc = duet_moe_bf16((const int64_t *)f[F_TABLE], (const int32_t *)f[F_INTER], idx, wts, k, shared, xn, Hd,
                           y, threads);
    else if (!rc)
        rc = duet_moe((int)f[F_KIND], (const int64_t *)f[F_TABLE], (const int32_t *)f[F_INTER],
                      (const int32_t *)f[F_IP], idx, wts, k, shared, (int)f[F_GS], xn, 0, Hd, (int)f[F_HP], y, 0,
                      threads, (int)f[F_ABITS]);
    if (!rc) {
        for (int i = 0; i < Hd; i++) {
            const float v = load_act(h, act_bf16, i) + y[i];
            if (act_bf16) ((uint16_t *)out)[i] = f2bf(v);
            else ((float *)out)[i] = v;
        }
    }
    free(buf);
    return rc;
}

static int layer_step(const lin_desc *lin, const int64_t *norms, const int32_t *norm_bf16, const float *eps,
                      float scale, const int32_t *dims, int pos, const float *cs, const float *sn, void *cache,
                      const void *w_uk, const void *w_uv_t, const int64_t *ffn, const void *x, void *out,
                      int act_bf16, int threads) {
    const long bytes = (long)dims[D_HIDDEN] * (act_bf16 ? 2 : 4);
    char *buf = malloc(2 * bytes);
    if (!buf) return 1;
    int rc = duet_mla_step(lin, norms, norm_bf16, eps, scale, dims, pos, cs, sn, cache, w_uk, w_uv_t, x, buf,
                           buf + bytes, act_bf16, threads);
    if (!rc) rc = ffn_step(ffn, buf, buf + bytes, out, act_bf16, threads);
    free(buf);
    return rc;
}


/* ---------------------------------------------------------------------------------------------
 * Every decode layer of a model for one token, one call: layer_step (one layer: the MLA block, then the FFN) for each row of
 * ``layers`` [n][L_COUNT] (int64: the addresses and values its arguments take), x -> out
 * (bf16 or float32, [hidden]), the layers' hidden states passing through two scratch rows. */
enum { L_LIN, L_NORMS, L_NORM_BF16, L_EPS, L_SCALE /* float32 bits */, L_DIMS, L_CACHE, L_UK, L_UV_T, L_FFN,
       L_COUNT };

int duet_layers_step(const int64_t *layers, int n, int pos, const float *cs, const float *sn, const void *x,
                     void *out, int act_bf16, int threads) {
    if (n < 1) return 2;
    const long bytes = (long)((const int32_t *)layers[L_DIMS])[D_HIDDEN] * (act_bf16 ? 2 : 4);
    char *buf = malloc(2 * bytes);
    if (!buf) return 1;
    const void *in = x;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const int64_t *l = layers + (long)i * L_COUNT;
        void *to = i == n - 1 ? out : buf + (i % 2) * bytes;
        float scale;
        const int32_t bits = (int32_t)l[L_SCALE];
        memcpy(&scale, &bits, sizeof scale);
        rc = layer_step((const lin_desc *)l[L_LIN], (const int64_t *)l[L_NORMS], (const int32_t *)l[L_NORM_BF16],
                             (const float *)l[L_EPS], scale, (const int32_t *)l[L_DIMS], pos, cs, sn,
                             (void *)l[L_CACHE], (const void *)l[L_UK], (const void *)l[L_UV_T],
                             (const int64_t *)l[L_FFN], in, to, act_bf16, threads);
        in = to;
    }
    free(buf);
    return rc;
}

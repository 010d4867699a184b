/* ggml's i-quants dequantized to float32 (kernels/iquant.py builds, loads and documents this).

   int iq_dequant(type, src, src_stride, rows, cols, dst, dst_stride, grid, nthreads, out_bf16)
       rows of `cols` weights in ggml blocks of type `type` (16 IQ2_XXS, 17 IQ2_XS, 18 IQ3_XXS,
       19 IQ1_S, 21 IQ3_S, 22 IQ2_S, 29 IQ1_M), row r at src + r * src_stride bytes, written to
       dst + r * dst_stride elements: float32, or with out_bf16 bf16 (each float rounded to
       nearest even, as torch rounds: bf16.h), for bf16 prefill tiles without a second pass. `grid` is the type's codebook as kernels/iquant.py decodes
       it: points of 8 (IQ3: 4) uint8 levels, int8 -1/0/1 for IQ1. 0 on success, -1 for an
       unknown type or a row that is not whole blocks.

   Every value is computed in ggml's order -- d * (0.5 + s) * 0.25, times the level, then the
   sign -- and the library is built with -ffp-contract=off, so no fused multiply-add changes a
   weight: the output equals ggml's dequantize_row_iq* bit for bit. (AVX2 builds compute each
   block in vectors, iquant_dot.h's iq_dequant_vec: code x sub-scale x factor, products that are
   exact in float32 as ggml's steps are, so the same bits.) Fields are read byte by byte
   (little-endian, as the file stores them), whatever the host. */

#include <stdint.h>

#include "bf16.h"   /* f2bf */

#define QK_K 256
#define IQ1S_DELTA 0.125f

/* IEEE half -> float, exactly (subnormals, infinities and NaNs included). */
static float f16(const uint8_t *p) {
    uint32_t h = (uint32_t)p[0] | (uint32_t)p[1] << 8;
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 31, mant = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0) {                          /* zero or subnormal: mant x 2^-24, exact in float */
        v.f = (float)mant * 0x1p-24f;
        v.u |= sign;
    } else if (exp == 31) {
        v.u = sign | 0x7f800000u | mant << 13;
    } else {
        v.u = sign | (exp + 112) << 23 | mant << 13;
    }
    return v.f;
}

static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const uint8_t *p) { return le16(p) | le16(p + 2) << 16; }

/* 7 stored sign bits -> 8: the eighth makes the number of minus signs even. */
static uint32_t ksigns(uint32_t s) {
    uint32_t p = s ^ (s >> 4);
    p ^= p >> 2;
    p ^= p >> 1;
    return s | (p & 1) << 7;
}

/* n weights: scale x level, negated where the sign mask has the weight's bit (ggml multiplies
   by -1, an exact negation: here the float's sign bit flips, which compilers vectorise). */
static void put_signed(float *y, float db, const uint8_t *lv, uint32_t signs, int n) {
    for (int j = 0; j < n; j++) {
        union { float f; uint32_t u; } v = {db * (float)lv[j]};
        v.u ^= (signs >> j & 1) << 31;
        y[j] = v.f;
    }
}

/* IQ2_XXS, 66 bytes: d; per 32 weights 4 grid indices (bytes) and a word of 4 x 7 sign bits
   with the 4-bit scale in its top bits. */
static void iq2_xxs(const uint8_t *b, float *y, const uint8_t *grid) {
    float d = f16(b);
    for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
        const uint8_t *q = b + 2 + 8 * ib;
        uint32_t aux = le32(q + 4);
        float db = d * (0.5f + (float)(aux >> 28)) * 0.25f;
        for (int l = 0; l < 4; l++)
            put_signed(y + 8 * l, db, grid + 8 * q[l], ksigns(aux >> 7 * l & 127), 8);
    }
}

/* IQ2_XS, 74 bytes: d; 32 words of a 9-bit grid index and 7 sign bits; 8 bytes of two 4-bit
   scales (one per 16 weights). */
static void iq2_xs(const uint8_t *b, float *y, const uint8_t *grid) {
    float d = f16(b);
    const uint8_t *sc = b + 66;
    for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
        float db[2] = {d * (0.5f + (float)(sc[ib] & 15)) * 0.25f, d * (0.5f + (float)(sc[ib] >> 4)) * 0.25f};
        for (int l = 0; l < 4; l++) {
            uint32_t q = le16(b + 2 + 2 * (4 * ib + l));
            put_signed(y + 8 * l, db[l / 2], grid + 8 * (q & 511), ksigns(q >> 9), 8);
        }
    }
}

/* IQ2_S, 82 bytes: d; 32 low index bytes; 32 sign bytes (all 8 signs stored); 8 bytes of four
   2-bit high index parts; 8 bytes of two 4-bit scales. */
static void iq2_s(const uint8_t *b, float *y, const uint8_t *grid) {
    float d = f16(b);
    const uint8_t *qs = b + 2, *signs = b + 34, *qh = b + 66, *sc = b + 74;
    for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
        float db[2] = {d * (0.5f + (float)(sc[ib] & 15)) * 0.25f, d * (0.5f + (float)(sc[ib] >> 4)) * 0.25f};
        for (int l = 0; l < 4; l++) {
            uint32_t idx = qs[4 * ib + l] | (qh[ib] >> 2 * l & 3) << 8;
            put_signed(y + 8 * l, db[l / 2], grid + 8 * idx, signs[4 * ib + l], 8);
        }
    }
}

/* IQ3_XXS, 98 bytes: d; 64 grid indices (4 weights each); per 32 weights a word of 4 x 7 sign
   bits and the 4-bit scale. */
static void iq3_xxs(const uint8_t *b, float *y, const uint8_t *grid) {
    float d = f16(b);
    for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
        const uint8_t *q = b + 2 + 8 * ib;
        uint32_t aux = le32(b + 66 + 4 * ib);
        float db = d * (0.5f + (float)(aux >> 28)) * 0.5f;
        for (int l = 0; l < 4; l++) {
            uint32_t s = ksigns(aux >> 7 * l & 127);
            put_signed(y + 8 * l, db, grid + 4 * q[2 * l], s, 4);
            put_signed(y + 8 * l + 4, db, grid + 4 * q[2 * l + 1], s >> 4, 4);
        }
    }
}

/* IQ3_S, 110 bytes: d; 64 low index bytes; 8 bytes of ninth index bits; 32 sign bytes; 4 bytes
   of two 4-bit scales d (1 + 2 s), one per 32 weights. */
static void iq3_s(const uint8_t *b, float *y, const uint8_t *grid) {
    float d = f16(b);
    const uint8_t *qs = b + 2, *qh = b + 66, *signs = b + 74, *sc = b + 106;
    for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
        float db = d * (float)(1 + 2 * (sc[ib / 2] >> 4 * (ib % 2) & 15));
        for (int l = 0; l < 4; l++) {
            uint32_t s = signs[4 * ib + l];
            uint32_t i0 = qs[8 * ib + 2 * l] | (qh[ib] >> 2 * l & 1) << 8;
            uint32_t i1 = qs[8 * ib + 2 * l + 1] | (qh[ib] >> (2 * l + 1) & 1) << 8;
            put_signed(y + 8 * l, db, grid + 4 * i0, s, 4);
            put_signed(y + 8 * l + 4, db, grid + 4 * i1, s >> 4, 4);
        }
    }
}

/* 8 IQ1 weights: dl x (ternary level + delta). */
static void put_shifted(float *y, float dl, const int8_t *lv, float delta) {
    for (int j = 0; j < 8; j++)
        y[j] = dl * ((float)lv[j] + delta);
}

/* IQ1_S, 50 bytes: d; 32 low index bytes; per 32 weights a word: 4 x 3 high index bits, a
   3-bit scale (bits 12-14) and the sign of the delta (bit 15). */
static void iq1_s(const uint8_t *b, float *y, const int8_t *grid) {
    float d = f16(b);
    for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
        uint32_t qh = le16(b + 34 + 2 * ib);
        float dl = d * (float)(2 * (qh >> 12 & 7) + 1);
        float delta = qh & 0x8000 ? -IQ1S_DELTA : IQ1S_DELTA;
        for (int l = 0; l < 4; l++) {
            uint32_t idx = b[2 + 4 * ib + l] | (qh >> 3 * l & 7) << 8;
            put_shifted(y + 8 * l, dl, grid + 8 * idx, delta);
        }
    }
}

/* IQ1_M, 56 bytes: 32 low index bytes; 16 bytes of a nibble per index (3 high bits, then the
   delta's sign); 4 scale words of four 3-bit scales (one per 16 weights), whose top nibbles
   together are the block's fp16 scale. */
static void iq1_m(const uint8_t *b, float *y, const int8_t *grid) {
    const uint8_t *qs = b, *qh = b + 32, *scp = b + 48;
    uint32_t sc[4];
    for (int k = 0; k < 4; k++)
        sc[k] = le16(scp + 2 * k);
    uint32_t bits = sc[0] >> 12 | (sc[1] >> 8 & 0x00f0) | (sc[2] >> 4 & 0x0f00) | (sc[3] & 0xf000);
    uint8_t half[2] = {(uint8_t)bits, (uint8_t)(bits >> 8)};
    float d = f16(half);
    for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
        uint32_t s = sc[ib / 2] >> 6 * (ib % 2);
        float dl[2] = {d * (float)(2 * (s & 7) + 1), d * (float)(2 * (s >> 3 & 7) + 1)};
        for (int l = 0; l < 4; l++) {
            uint32_t h = qh[2 * ib + l / 2] >> 4 * (l % 2) & 15;
            uint32_t idx = qs[4 * ib + l] | (h & 7) << 8;
            put_shifted(y + 8 * l, dl[l / 2], grid + 8 * idx, h & 8 ? -IQ1S_DELTA : IQ1S_DELTA);
        }
    }
}

static int block_bytes(int type) {
    switch (type) {
    case 16: return 66;
    case 17: return 74;
    case 18: return 98;
    case 19: return 50;
    case 21: return 110;
    case 22: return 82;
    case 29: return 56;
    default: return 0;
    }
}

/* the few-row matmul and, on AVX2, the block unpacked in vectors (iq_dequant_vec) */
#include "iquant_dot.h"

static void dequant_block(int type, const uint8_t *b, float *y, const void *grid) {
#if defined(IQ_AVX2)
    switch (type) {   /* a constant type in each call, so iq_group's switch goes */
    case 16: iq_dequant_vec(16, b, grid, y); return;
    case 17: iq_dequant_vec(17, b, grid, y); return;
    case 18: iq_dequant_vec(18, b, grid, y); return;
    case 19: iq_dequant_vec(19, b, grid, y); return;
    case 21: iq_dequant_vec(21, b, grid, y); return;
    case 22: iq_dequant_vec(22, b, grid, y); return;
    case 29: iq_dequant_vec(29, b, grid, y); return;
    }
#endif
    switch (type) {
    case 16: iq2_xxs(b, y, grid); break;
    case 17: iq2_xs(b, y, grid); break;
    case 18: iq3_xxs(b, y, grid); break;
    case 19: iq1_s(b, y, grid); break;
    case 21: iq3_s(b, y, grid); break;
    case 22: iq2_s(b, y, grid); break;
    case 29: iq1_m(b, y, grid); break;
    }
}

int iq_dequant(int type, const uint8_t *src, long src_stride, long rows, long cols, void *dst,
               long dst_stride, const void *grid, int nthreads, int out_bf16) {
    int bb = block_bytes(type);
    if (bb == 0 || cols % QK_K)
        return -1;
    long nb = cols / QK_K, total = rows * nb;
    (void)nthreads;
    /* blocks are independent: threads split them (a tile's worth of blocks; few blocks: one thread) */
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) if (total >= 64)
    for (long t = 0; t < total; t++) {
        long r = t / nb, i = t % nb;
        const uint8_t *b = src + r * src_stride + i * bb;
        if (out_bf16) {
            float y[QK_K];
            uint16_t *o = (uint16_t *)dst + r * dst_stride + i * QK_K;
            dequant_block(type, b, y, grid);
            for (int j = 0; j < QK_K; j++) o[j] = f2bf(y[j]);
        } else {
            dequant_block(type, b, (float *)dst + r * dst_stride + i * QK_K, grid);
        }
    }
    return 0;
}

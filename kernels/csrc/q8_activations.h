/* Activations rounded to llama.cpp's 8-bit blocks, one block at a time: Q8_0 (32 values,
 * d = absmax / 127, q = roundf(x / d): ggml's quantize_row_q8_0_ref) and Q8_K (256 values,
 * d = -max / 127 with max the element of largest magnitude, sign kept, q = min(127,
 * nearest_int(x / d)): quantize_row_q8_K_ref). With ``r`` (16 bits), each code q has a second,
 * the rounding of the remainder (x / d - q) x 128, and the scale is d / 128.
 * Shared by kquant_dot.h and iquant_dot.h, so both libraries round activations alike.
 * Needs <math.h>, <stdint.h>, <string.h>. */

#ifndef DUET_Q8_ACTIVATIONS_H
#define DUET_Q8_ACTIVATIONS_H

static inline int nearest_int(float f) {   /* round half to even, as ggml's */
    float v = f + 12582912.f;
    int i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static inline int8_t rest(float t, int q) {   /* the second code: (t - q) x 128, rounded */
    int v = (int)roundf((t - (float)q) * 128.f);
    return (int8_t)(v > 127 ? 127 : (v < -127 ? -127 : v));
}

static void quant_q8_0(const float *x, int8_t *q, int8_t *r, float *d) {
    float amax = 0.f;
    for (int i = 0; i < 32; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    const float dd = amax / 127.f, id = dd != 0.f ? 1.f / dd : 0.f;
    for (int i = 0; i < 32; i++) {
        const float t = x[i] * id;
        q[i] = (int8_t)roundf(t);
        if (r) r[i] = rest(t, q[i]);
    }
    *d = r ? dd / 128.f : dd;
}

static void quant_q8_k(const float *x, int8_t *q, int8_t *r, float *d) {
    float amax = 0.f, max = 0.f;
    for (int i = 0; i < 256; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; max = x[i]; }
    }
    if (amax == 0.f) {
        memset(q, 0, 256);
        if (r) memset(r, 0, 256);
        *d = 0.f;
        return;
    }
    const float iscale = -127.f / max;
    for (int i = 0; i < 256; i++) {
        const float t = iscale * x[i];
        int v = nearest_int(t);
        q[i] = (int8_t)(v > 127 ? 127 : v);
        if (r) r[i] = rest(t, q[i]);
    }
    *d = r ? 1.f / iscale / 128.f : 1.f / iscale;
}

#endif

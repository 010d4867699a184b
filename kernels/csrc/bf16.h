/* float32 -> bf16, round to nearest even (NaN kept quiet): what torch's .to(torch.bfloat16)
 * gives. Shared by kquant.c and iquant.c (their dequantized tiles for bf16 prefill). */
#ifndef DUET_BF16_H
#define DUET_BF16_H

#include <stdint.h>
#include <string.h>

static inline __attribute__((always_inline)) uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif

/* The few C library functions kernels/csrc needs from outside libm and string.h, for a static
 * aarch64 image that tests/arm64/emulator.py runs function by function (no operating system:
 * no threads, no files). malloc hands out memory from one arena that the emulator empties
 * between calls; free does nothing. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ARENA (96u << 20)
static unsigned char arena[ARENA] __attribute__((aligned(64)));
size_t duet_emu_used = 0;   /* bytes handed out; the emulator sets it to 0 before a call */

void *aligned_alloc(size_t align, size_t n) {
    size_t at = (duet_emu_used + align - 1) & ~(align - 1);
    if (at + n > ARENA) return NULL;
    duet_emu_used = at + n;
    return arena + at;
}
void *malloc(size_t n) { return aligned_alloc(16, n); }
void *calloc(size_t k, size_t n) {
    void *p = malloc(k * n);
    if (p) memset(p, 0, k * n);
    return p;
}
void free(void *p) { (void)p; }
int main(void) { return 0; }   /* never run: the emulator calls the functions directly */

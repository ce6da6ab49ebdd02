/* A stand-in for libFuzzer where clang is missing: mutates seed files (bit flips, random
 * bytes, u32 / u64 fields set to edge values, truncation, growth) and feeds each mutant to
 * LLVMFuzzerTestOneInput, for SECONDS seconds; built with ASan/UBSan it stops at the first
 * memory error. Not coverage guided.   fuzz_driver SECONDS SEED_FILE... */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s SECONDS SEED_FILE...\n", argv[0]); return 2; }
    double limit = atof(argv[1]);
    int nseeds = argc - 2;
    unsigned char **seed = calloc((size_t)nseeds, sizeof *seed);
    size_t *len = calloc((size_t)nseeds, sizeof *len), cap = 0;
    for (int i = 0; i < nseeds; i++) {
        FILE *f = fopen(argv[i + 2], "rb");
        if (!f) { perror(argv[i + 2]); return 2; }
        fseek(f, 0, SEEK_END);
        len[i] = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        seed[i] = malloc(len[i] + 1);
        if (fread(seed[i], 1, len[i], f) != len[i]) return 2;
        fclose(f);
        if (len[i] > cap) cap = len[i];
    }
    unsigned char *buf = malloc(cap + 4096);
    static const uint64_t edge[] = {0, 1, 2, 3, 7, 8, 63, 64, 127, 128, 255, 0x7fffffff, 0x80000000u, 0xffffffffu,
                                    0xfffffffffffffff0ull, 0xffffffffffffffffull};
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long long runs = 0;
    for (;;) {
        int s = (int)(next() % (uint64_t)nseeds);
        size_t n = len[s];
        memcpy(buf, seed[s], n);
        int muts = 1 + (int)(next() % 4);
        for (int k = 0; k < muts && n > 0; k++) {
            /* bias towards the header and the table, where the checks are */
            size_t hot = n < 4096 ? n : 4096, pos = (next() % 4 ? next() % hot : next() % n);
            switch (next() % 6) {
            case 0: buf[pos] ^= (unsigned char)(1u << (next() % 8)); break;
            case 1: buf[pos] = (unsigned char)next(); break;
            case 2: pos &= ~(size_t)3; if (pos + 4 <= n) { uint32_t v = (uint32_t)edge[next() % 16]; memcpy(buf + pos, &v, 4); } break;
            case 3: pos &= ~(size_t)7; if (pos + 8 <= n) { uint64_t v = edge[next() % 16]; memcpy(buf + pos, &v, 8); } break;
            case 4: n = next() % (n + 1); break;
            case 5: { size_t add = next() % 256; for (size_t j = 0; j < add; j++) buf[n + j] = (unsigned char)next(); n += add; } break;
            }
        }
        LLVMFuzzerTestOneInput(buf, n);
        runs++;
        if (runs % 64 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((double)(t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) * 1e-9 >= limit) break;
        }
    }
    printf("fuzz_driver: %llu inputs, no crash\n", runs);
    for (int i = 0; i < nseeds; i++) free(seed[i]);
    free(seed); free(len); free(buf);
    return 0;
}

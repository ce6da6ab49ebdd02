/* y[M, N] = x[M, K] W[K, N] + b with the library's sgemm (builtin or OpenBLAS, as compiled):
 * best of 5 x 300 calls.   bench_gemm M K N */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int M = atoi(argv[1]), K = atoi(argv[2]), N = atoi(argv[3]);
    float *w = malloc(sizeof(float) * K * N), *b = calloc(N, 4), *x = malloc(sizeof(float) * M * K), *y = malloc(sizeof(float) * M * N);
    for (long i = 0; i < (long)K * N; i++) w[i] = (i % 7) * 0.01f;
    for (long i = 0; i < (long)M * K; i++) x[i] = (i % 5) * 0.1f;
    bx_linear l = {w, b, NULL, K, N, argc > 4 ? atoi(argv[4]) : BX_ACT_NONE};
    bx_pack(&l);
    size_t panels = bx_panels(&l);
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t = now();
        for (int i = 0; i < 300; i++) bx_linear_panels(&l, x, M, y, NULL, 0, panels);
        t = (now() - t) / 300;
        if (t < best) best = t;
    }
    printf("%s M=%d K=%d N=%d: %.1f us, %.1f GFLOP/s\n", bx_blas_name(), M, K, N, best * 1e6, 2.0 * M * K * N / best / 1e9);
    return 0;
}

/* One row of SEQ tokens through berxit_run (no exit check: every layer), best and median of
 * 7 x ITERS calls.   bench_run ARTIFACT_DIR SEQ THREADS ITERS [FLUSH_MIB]
 * FLUSH_MIB > 0: write that many MiB between calls (untimed), so the weights come from memory
 * as they do when other models run in between (the weights do not fit the last-level cache)
 * Build: cc -std=c11 -O3 -march=native -Iruntime/native runtime/native/tests/bench_run.c \
 *        runtime/native/[a-z]*.c -lm -lpthread */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "berxit.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: %s ARTIFACT_DIR SEQ THREADS ITERS\n", argv[0]); return 2; }
    int32_t seq = atoi(argv[2]), threads = atoi(argv[3]), iters = atoi(argv[4]);
    berxit_model *m;
    if (berxit_open(argv[1], &m) != BERXIT_OK) { fprintf(stderr, "error: %s\n", berxit_open_errmsg()); return 1; }
    berxit_set_threads(m, threads);
    int64_t *ids = calloc((size_t)seq, 8), *tt = calloc((size_t)seq, 8), *mask = calloc((size_t)seq, 8);
    for (int32_t i = 0; i < seq; i++) { ids[i] = i == 0 ? 101 : (i == seq - 1 ? 102 : 1000 + 37 * i); mask[i] = 1; }
    float logits[16];
    int32_t label, layer, status;
    berxit_result res = {&label, NULL, &layer, &status, logits, NULL, NULL, NULL};
    berxit_policy pol = {BERXIT_POLICY_NONE, 0.0f, 0, 0, NULL, 0};
    size_t flush = argc > 5 ? (size_t)atoi(argv[5]) << 20 : 0;
    unsigned char *junk = flush ? malloc(flush) : NULL;
    double t[7];
    for (int rep = 0; rep < 7; rep++) {
        double sum = 0.0;
        for (int i = 0; i < iters; i++) {
            if (junk) for (size_t k = 0; k < flush; k += 64) junk[k] = (unsigned char)(junk[k] + 1);
            double t0 = now();
            if (berxit_run(m, ids, tt, mask, 1, seq, &pol, &res) != BERXIT_OK) {
                fprintf(stderr, "%s\n", berxit_errmsg(m));
                free(junk); free(ids); free(tt); free(mask); berxit_close(m);
                return 1;
            }
            sum += now() - t0;
        }
        t[rep] = sum / iters * 1e3;
    }
    qsort(t, 7, sizeof t[0], cmp);
    printf("seq=%d threads=%d: best %.3f ms, median %.3f ms (logit0 %.6f label %d)\n", seq, threads, t[0], t[3], logits[0], label);
    free(junk); free(ids); free(tt); free(mask);
    berxit_close(m);
    return 0;
}

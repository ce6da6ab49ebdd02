/* Two threads for the builtin sgemm: a workspace may own one helper thread (berxit_set_threads
 * 2) that computes the second half of each matrix product's column panels while the calling
 * thread computes the first half; both stream half of the weights (at batch 1 the products are
 * bound by memory bandwidth as much as by arithmetic). Hand-offs go through two atomic
 * generation counters: the helper spins on `gen` for a bounded time after each product (a
 * forward pass posts the next product within microseconds), then sleeps on a condition
 * variable; the caller likewise spins a bounded time for `finished`. The sleeping side sets a
 * flag under the mutex before its last check, so a post is never lost (sequentially
 * consistent atomics on both sides). The helper is joined when the workspace is freed. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <time.h>

#include "internal.h"

#define HELPER_SPIN_NS 100000L  /* the helper waits this long for the next product before sleeping */
#define CALLER_SPIN_NS 2000000L /* the caller waits this long for the helper's half before sleeping */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* spin until *v != old (want_change) or *v == old (!want_change), at most `ns`; 1 if it happened */
static int spin_until(atomic_uint *v, unsigned val, int equal, const atomic_int *quit, long ns) {
    long long t0 = 0;
    for (unsigned i = 0;; i++) {
        unsigned cur = atomic_load(v);
        if ((cur == val) == equal) return 1;
        if (quit && atomic_load(quit)) return 1;
        if ((i & 63) == 63) {
            long long t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 > ns) return 0;
        }
        cpu_relax();
    }
}

static void *helper_main(void *p) {
    berxit_workspace *ws = p;
    unsigned seen = 0;
    for (;;) {
        if (!spin_until(&ws->gen, seen, 0, &ws->quit, HELPER_SPIN_NS)) {
            pthread_mutex_lock(&ws->tmu);
            atomic_store(&ws->helper_sleeping, 1);
            while (atomic_load(&ws->gen) == seen && !atomic_load(&ws->quit)) pthread_cond_wait(&ws->cv_go, &ws->tmu);
            atomic_store(&ws->helper_sleeping, 0);
            pthread_mutex_unlock(&ws->tmu);
        }
        if (atomic_load(&ws->quit)) break;
        seen = atomic_load(&ws->gen);
        if (ws->job_l)
            bx_linear_panels(ws->job_l, ws->job_x, ws->job_rows, ws->job_y, ws->job_res, ws->job_p0, ws->job_p1);
        else
            bx_attention_heads(ws, (int32_t)ws->job_p0, (int32_t)ws->job_p1, ws->scores + ws->cap_seq + 8,
                               ws->kt + (ws->cap_seq + 8) * (size_t)(ws->m->cfg.hidden / ws->m->cfg.heads));
        atomic_store(&ws->finished, seen);
        if (atomic_load(&ws->caller_sleeping)) {
            pthread_mutex_lock(&ws->tmu);
            pthread_cond_signal(&ws->cv_done);
            pthread_mutex_unlock(&ws->tmu);
        }
    }
    return NULL;
}

static int start_helper(berxit_workspace *ws) {
    if (pthread_mutex_init(&ws->tmu, NULL)) return 0;
    if (pthread_cond_init(&ws->cv_go, NULL)) { pthread_mutex_destroy(&ws->tmu); return 0; }
    if (pthread_cond_init(&ws->cv_done, NULL)) { pthread_cond_destroy(&ws->cv_go); pthread_mutex_destroy(&ws->tmu); return 0; }
    atomic_store(&ws->gen, 0);
    atomic_store(&ws->finished, 0);
    atomic_store(&ws->quit, 0);
    atomic_store(&ws->helper_sleeping, 0);
    atomic_store(&ws->caller_sleeping, 0);
    if (pthread_create(&ws->helper, NULL, helper_main, ws)) {
        pthread_cond_destroy(&ws->cv_done); pthread_cond_destroy(&ws->cv_go); pthread_mutex_destroy(&ws->tmu);
        return 0;
    }
    return 1;
}

/* the helper's part: posted, run by the caller's part, then waited for */
static unsigned post(berxit_workspace *ws) {
    unsigned g = atomic_load(&ws->gen) + 1;
    atomic_store(&ws->gen, g); /* publishes the job fields (release, as seq_cst) */
    if (atomic_load(&ws->helper_sleeping)) {
        pthread_mutex_lock(&ws->tmu);
        pthread_cond_signal(&ws->cv_go);
        pthread_mutex_unlock(&ws->tmu);
    }
    return g;
}

static void wait_helper(berxit_workspace *ws, unsigned g) {
    if (!spin_until(&ws->finished, g, 1, NULL, CALLER_SPIN_NS)) {
        pthread_mutex_lock(&ws->tmu);
        atomic_store(&ws->caller_sleeping, 1);
        while (atomic_load(&ws->finished) != g) pthread_cond_wait(&ws->cv_done, &ws->tmu);
        atomic_store(&ws->caller_sleeping, 0);
        pthread_mutex_unlock(&ws->tmu);
    }
}

static int helper_ready(berxit_workspace *ws) {
    if (ws->threads < 2) return 0;
    if (!ws->helper_up) ws->helper_up = start_helper(ws) ? 1 : -1; /* -1: no thread could be made: one from now on */
    return ws->helper_up > 0;
}

void bx_linear_forward(berxit_workspace *ws, const bx_linear *l, const float *x, int32_t rows, float *y,
                       const float *res) {
    size_t panels = bx_panels(l);
    /* small products (exit heads, tiny models) are not worth a hand-off */
    if (ws->threads < 2 || panels < 2 || (size_t)rows * l->in * l->out < (1u << 16) || !helper_ready(ws)) {
        bx_linear_panels(l, x, rows, y, res, 0, panels);
        return;
    }
    size_t half = panels / 2;
    ws->job_l = l; ws->job_x = x; ws->job_y = y; ws->job_res = res; ws->job_rows = rows;
    ws->job_p0 = half; ws->job_p1 = panels;
    unsigned g = post(ws);
    bx_linear_panels(l, x, rows, y, res, 0, half);
    wait_helper(ws, g);
}

/* attention over all heads; with two threads the helper takes the second half of the heads
 * (its own scratch: the second halves of `scores` and `kt`) */
void bx_attention_forward(berxit_workspace *ws) {
    int32_t nh = ws->m->cfg.heads;
    if (nh < 2 || ws->tokens < 8 || !helper_ready(ws)) {
        bx_attention_heads(ws, 0, nh, ws->scores, ws->kt);
        return;
    }
    ws->job_l = NULL; ws->job_p0 = (size_t)(nh / 2); ws->job_p1 = (size_t)nh;
    unsigned g = post(ws);
    bx_attention_heads(ws, 0, nh / 2, ws->scores, ws->kt);
    wait_helper(ws, g);
}

void bx_threads_stop(berxit_workspace *ws) {
    if (ws->helper_up != 1) return;
    pthread_mutex_lock(&ws->tmu);
    atomic_store(&ws->quit, 1);
    pthread_cond_signal(&ws->cv_go);
    pthread_mutex_unlock(&ws->tmu);
    pthread_join(ws->helper, NULL);
    pthread_cond_destroy(&ws->cv_done); pthread_cond_destroy(&ws->cv_go); pthread_mutex_destroy(&ws->tmu);
    ws->helper_up = 0;
}

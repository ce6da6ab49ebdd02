/* Two threads for the builtin sgemm and the attention: a workspace may own one helper thread
 * (berxit_set_threads 2). Each matrix product (units: column panels) and each attention (units:
 * heads) is cut into chunks that both threads claim from one atomic counter, so the work is
 * shared when the helper runs, and the calling thread does it alone when the helper is slow to
 * start (another process's threads on the other core): the caller only ever waits for chunks
 * the helper has already claimed. The counter carries the job's generation in its high bits, so
 * a late claim on a finished job fails. Hand-offs: the helper spins on `gen` for a bounded time
 * after each job (a forward pass posts the next one within microseconds), then sleeps on a
 * condition variable; the caller likewise spins a bounded time for the helper's last chunk. The
 * sleeping side sets a flag under the mutex before its last check, so a wake-up is never lost
 * (sequentially consistent atomics on both sides). The helper is joined when the workspace is
 * freed. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

#ifndef HELPER_SPIN_NS
#define HELPER_SPIN_NS 100000L /* the helper waits this long for the next job before sleeping */
#endif
#ifndef CALLER_SPIN_NS
#define CALLER_SPIN_NS 1000000L /* the caller waits this long for the helper's last chunk before sleeping */
#endif

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* tests widen the window between the first and the last store of a job's hand-off
 * (-DBERXIT_TEST_RACE_WINDOW=N: N pause instructions), where a late claim would race */
#ifdef BERXIT_TEST_RACE_WINDOW
static void race_window(void) {
    for (volatile int i = 0; i < BERXIT_TEST_RACE_WINDOW; i++) cpu_relax();
}
#else
#define race_window() ((void)0)
#endif

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

static void run_unit(berxit_workspace *ws, int helper, uint32_t u0, uint32_t u1) {
    if (ws->job_l) {
        bx_linear_panels(ws->job_l, ws->job_x, ws->job_rows, ws->job_y, ws->job_res, u0, u1);
    } else {
        size_t d = (size_t)(ws->m->cfg.hidden / ws->m->cfg.heads), off = helper ? ws->cap_seq + 8 : 0;
        bx_attention_heads(ws, (int32_t)u0, (int32_t)u1, ws->scores + 2 * off, ws->kt + off * d);
    }
}

/* run chunks of job generation g until none is left; 1 if this thread completed the job's last unit */
static int work(berxit_workspace *ws, unsigned g, int helper) {
    int last = 0;
    for (;;) {
        unsigned long long v = atomic_load(&ws->next);
        if ((unsigned)(v >> 32) != g) break;
        uint32_t u0 = (uint32_t)v;
        if (helper) race_window();
        uint32_t units = atomic_load(&ws->job_units), chunk = atomic_load(&ws->job_chunk);
        if (u0 >= units) break; /* (the size of a newer job: `next` has moved on, the exchange below fails) */
        uint32_t u1 = u0 + chunk < units ? u0 + chunk : units;
        if (!atomic_compare_exchange_weak(&ws->next, &v, ((unsigned long long)g << 32) | u1)) continue;
        /* claimed: the job cannot finish (nor its fields change) before this chunk is counted */
        run_unit(ws, helper, u0, u1);
        if (atomic_fetch_add(&ws->done_units, u1 - u0) + (u1 - u0) == units) last = 1;
    }
    return last;
}

static void *helper_main(void *p) {
    berxit_workspace *ws = p;
    unsigned seen = 0, pokes = 0;
    for (;;) {
        if (!spin_until(&ws->gen, seen, 0, &ws->quit, HELPER_SPIN_NS)) {
            pthread_mutex_lock(&ws->tmu);
            atomic_store(&ws->helper_sleeping, 1);
            while (atomic_load(&ws->gen) == seen && ws->pokes == pokes && !atomic_load(&ws->quit))
                pthread_cond_wait(&ws->cv_go, &ws->tmu);
            atomic_store(&ws->helper_sleeping, 0);
            pokes = ws->pokes;
            pthread_mutex_unlock(&ws->tmu);
            if (atomic_load(&ws->gen) == seen && !atomic_load(&ws->quit)) continue; /* woken ahead of a job */
        }
        if (atomic_load(&ws->quit)) break;
        seen = atomic_load(&ws->gen);
        if (work(ws, seen, 1) && atomic_load(&ws->caller_sleeping)) {
            pthread_mutex_lock(&ws->tmu);
            pthread_cond_signal(&ws->cv_done);
            pthread_mutex_unlock(&ws->tmu);
        }
    }
    return NULL;
}

/* a run is starting: wake a sleeping helper now, so that it is spinning (not still waking, tens
 * of microseconds on a virtual machine) when the first product of the run is posted */
void bx_threads_warm(berxit_workspace *ws) {
    if (ws->helper_up != 1 || ws->threads < 2 || !atomic_load(&ws->helper_sleeping)) return;
    pthread_mutex_lock(&ws->tmu);
    ws->pokes++;
    pthread_cond_signal(&ws->cv_go);
    pthread_mutex_unlock(&ws->tmu);
}

static int start_helper(berxit_workspace *ws) {
    if (pthread_mutex_init(&ws->tmu, NULL)) return 0;
    if (pthread_cond_init(&ws->cv_go, NULL)) { pthread_mutex_destroy(&ws->tmu); return 0; }
    if (pthread_cond_init(&ws->cv_done, NULL)) { pthread_cond_destroy(&ws->cv_go); pthread_mutex_destroy(&ws->tmu); return 0; }
    atomic_store(&ws->gen, 0);
    atomic_store(&ws->next, 0);
    atomic_store(&ws->done_units, 0);
    atomic_store(&ws->quit, 0);
    atomic_store(&ws->helper_sleeping, 0);
    atomic_store(&ws->caller_sleeping, 0);
    ws->pokes = 0;
    if (pthread_create(&ws->helper, NULL, helper_main, ws)) {
        pthread_cond_destroy(&ws->cv_done); pthread_cond_destroy(&ws->cv_go); pthread_mutex_destroy(&ws->tmu);
        return 0;
    }
    return 1;
}

/* post the job (its fields set), share its chunks, wait for the helper's claimed ones */
static void run_job(berxit_workspace *ws, uint32_t units, uint32_t chunk) {
    unsigned g = atomic_load(&ws->gen) + 1;
    /* `next` moves to the new generation before the job's size changes: a helper still in the
     * previous job's claim loop that reads the new size then fails its exchange on `next`
     * (otherwise it could claim panels of this job against the old generation and count them
     * twice: the job would never reach its unit count) */
    atomic_store(&ws->next, (unsigned long long)g << 32);
    race_window();
    atomic_store(&ws->job_units, units);
    atomic_store(&ws->job_chunk, chunk);
    atomic_store(&ws->done_units, 0);
    atomic_store(&ws->gen, g); /* publishes the job (seq_cst) */
    if (atomic_load(&ws->helper_sleeping)) {
        pthread_mutex_lock(&ws->tmu);
        pthread_cond_signal(&ws->cv_go);
        pthread_mutex_unlock(&ws->tmu);
    }
    work(ws, g, 0);
    if (!spin_until(&ws->done_units, units, 1, NULL, CALLER_SPIN_NS)) {
        pthread_mutex_lock(&ws->tmu);
        atomic_store(&ws->caller_sleeping, 1);
        while (atomic_load(&ws->done_units) != units) pthread_cond_wait(&ws->cv_done, &ws->tmu);
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
    if (ws->threads < 2 || panels < 2 || panels > UINT32_MAX || (size_t)rows * l->in * l->out < (1u << 16) ||
        !helper_ready(ws)) {
        bx_linear_panels(l, x, rows, y, res, 0, panels);
        return;
    }
    ws->job_l = l; ws->job_x = x; ws->job_y = y; ws->job_res = res; ws->job_rows = rows;
    size_t chunk = (panels + 11) / 12; /* about 12 chunks a product */
    run_job(ws, (uint32_t)panels, (uint32_t)chunk);
}

/* attention over all heads (one head a chunk; the helper has its own scratch: the second
 * halves of `scores` and `kt`) */
void bx_attention_forward(berxit_workspace *ws) {
    int32_t nh = ws->m->cfg.heads;
    if (nh < 2 || ws->tokens < 8 || !helper_ready(ws)) {
        bx_attention_heads(ws, 0, nh, ws->scores, ws->kt);
        return;
    }
    ws->job_l = NULL;
    run_job(ws, (uint32_t)nh, 1);
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
